//! Petrel's Rust client SDK.
//!
//! Layout:
//! - [`transport`] — raw byte connections over native QUIC or WebSocket/TLS, and how
//!   the gateway closed one ([`CloseInfo`], its error code named the same way on both);
//! - [`tls`] — certificate trust (SHA-256 pin or CA file);
//! - this file — [`Connection`]: Hello/Welcome, `send` resolving with the SendResult, a
//!   stream of [`Event`]s, acks, and duplicate suppression (a message whose
//!   `(subject, seq)` the app has already seen is dropped and counted). Error codes
//!   are spelled as everywhere else: `UNAUTHENTICATED` ([`petrel_proto::error_code_name`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), petrel_client::ClientError> {
//! use petrel_client::{Connection, ConnectOptions, Endpoint, TransportKind, Trust};
//! let endpoint = Endpoint {
//!     transport: TransportKind::Quic,
//!     address: "127.0.0.1:4433".into(),
//!     trust: Trust::from_hex_sha256(&"00".repeat(32))?,
//!     server_name: None,
//!     connect_timeout: std::time::Duration::from_secs(5),
//!     local_ip: None,
//! };
//! let mut client = Connection::connect(ConnectOptions::new(endpoint, "JWT", "phone")).await?;
//! let result = client.send("bob", "msg-1", "hello").await?;
//! while let Some(event) = client.next_event().await { println!("{event:?}"); }
//! # Ok(()) }
//! ```

mod frames;
mod link;
mod reconnecting;
pub mod session;
pub mod state;
pub mod tls;
pub mod transport;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use petrel_proto::pb;
use prost_free::decode_server;
use tokio::sync::{mpsc, oneshot};

pub use reconnecting::{Client, ClientOptions, Handle, PendingSend};
pub use tls::Trust;
pub use transport::{CloseInfo, Endpoint, RawReader, RawWriter, Read, TransportKind, connect_raw};

/// Client errors.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// Bad options (hash, URL, transport name).
    #[error("configuration: {0}")]
    Config(String),
    /// The transport could not be established.
    #[error("connect: {0}")]
    Connect(String),
    /// The gateway refused the connection or a request with this error.
    #[error("refused by the gateway: {code}: {message}")]
    Refused {
        /// Error code name, e.g. `UNAUTHENTICATED` ([`petrel_proto::error_code_name`]).
        code: String,
        /// Gateway's message.
        message: String,
    },
    /// The connection is gone.
    #[error("connection closed: {0}")]
    Closed(String),
    /// The gateway sent something this client does not understand.
    #[error("protocol: {0}")]
    Protocol(String),
}

/// Delivery streams asked for by default (see [`ConnectOptions::delivery_streams`]).
pub const DEFAULT_DELIVERY_STREAMS: u32 = 8;

/// What `connect` needs.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Transport endpoint.
    pub endpoint: Endpoint,
    /// JWT.
    pub token: String,
    /// Device id.
    pub device: String,
    /// Resume cursors (subject, last seen sequence).
    pub cursors: Vec<(String, u64)>,
    /// Maximum frame size accepted from the gateway.
    pub max_frame_bytes: usize,
    /// QUIC: how many unidirectional streams to take deliveries on (one conversation's
    /// lost packet then holds up only the conversations sharing its stream); 0 keeps
    /// everything on the control stream. Ignored on WebSocket.
    pub delivery_streams: u32,
}

impl ConnectOptions {
    /// Options with defaults for everything but endpoint, token and device.
    pub fn new(endpoint: Endpoint, token: impl Into<String>, device: impl Into<String>) -> Self {
        Self {
            endpoint,
            token: token.into(),
            device: device.into(),
            cursors: Vec::new(),
            max_frame_bytes: 1024 * 1024,
            delivery_streams: DEFAULT_DELIVERY_STREAMS,
        }
    }
}

/// A delivered message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Stored subject, e.g. `msg.private.bob`.
    pub subject: String,
    /// Stream sequence.
    pub seq: u64,
    /// Previous sequence on the subject (0 = unknown).
    pub prev_seq: u64,
    /// Sender.
    pub from: String,
    /// Recipient (empty for a group message).
    pub to: String,
    /// The group, for a group message (subject `msg.group.{group}`).
    pub group: Option<String>,
    /// A system notification (subject `notif.{category}.{user}`; `from` is the
    /// category).
    pub notification: Option<Box<Notification>>,
    /// A receipt about a message this user sent (`from` is the reader).
    pub receipt: Option<Box<Receipt>>,
    /// Sender's device.
    pub from_device: String,
    /// Time accepted at the sender's gateway (ms since epoch).
    pub time_ms: u64,
    /// Sender's message id.
    pub client_msg_id: String,
    /// Content.
    pub content: Bytes,
    /// Media type.
    pub content_type: String,
    /// The message it replies to: subject and sequence.
    pub reply_to: Option<(String, u64)>,
    /// Users it mentions.
    pub mentions: Vec<String>,
    /// It edits (or, `true`, recalls) the sender's message with this client_msg_id:
    /// apply it to that message wherever it is shown.
    pub amends: Option<(String, bool)>,
    /// A read mark of this user (from any of its devices): the conversation — a user
    /// or `group:{g}` — read up to a sequence.
    pub read: Option<(String, u64)>,
    /// From the archive: edited at this time (ms; 0: never).
    pub edited_ms: u64,
    /// From the archive: recalled (its content is gone).
    pub recalled: bool,
}

/// One conversation of the user, as the message service keeps it (see
/// [`Connection::conversations`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    /// The other user, for a direct conversation.
    pub user: Option<String>,
    /// The group, for a group conversation.
    pub group: Option<String>,
    /// Its newest message, as it reads now (edited, or empty when recalled).
    pub last: Option<Message>,
    /// Messages from others after the read position.
    pub unread: u32,
    /// Of those, the ones mentioning the user.
    pub unread_mentions: u32,
    /// The read position (a sequence on the conversation's subject).
    pub read_seq: u64,
    /// Pinned.
    pub pinned: bool,
    /// Muted.
    pub muted: bool,
    /// When it last changed (ms).
    pub updated_ms: u64,
}

/// A page of the conversation list.
#[derive(Debug, Clone)]
pub struct ConversationPage {
    /// Pinned first, then the most recent first.
    pub conversations: Vec<Conversation>,
    /// More after this page.
    pub more: bool,
    /// ([`Client`] only) Read from the device's state file while not connected: the
    /// list as last heard, not the service's answer.
    pub cached: bool,
}

/// What a send may carry besides its content.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendOptions {
    /// The message it replies to: subject and sequence.
    pub reply_to: Option<(String, u64)>,
    /// Users it mentions (at most 32).
    pub mentions: Vec<String>,
}

/// Delivered or read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiptKind {
    /// The message reached a device of the recipient.
    Delivered,
    /// The recipient read it.
    Read,
}

/// A receipt about a message this user sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// Delivered or read.
    pub kind: ReceiptKind,
    /// The message's id (this user's client_msg_id).
    pub client_msg_id: String,
    /// Where the recipient got it: its inbox and sequence.
    pub subject: String,
    /// Sequence there.
    pub seq: u64,
}

/// A system notification from a business service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// The service's id for it.
    pub id: String,
    /// Title.
    pub title: String,
    /// Body.
    pub body: String,
    /// What tapping it does (e.g. a deep link).
    pub action: String,
    /// Priority name: `PRIORITY_NORMAL`, `PRIORITY_LOW` or `PRIORITY_HIGH`.
    pub priority: String,
    /// Badge count (0 = leave as is).
    pub badge: u32,
    /// Extra key/value pairs, sorted by key.
    pub data: Vec<(String, String)>,
    /// Creation time at the service (ms since epoch).
    pub time_ms: u64,
}

/// The answer to a send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendResult {
    /// Durable on the hub.
    Stored {
        /// Stored subject.
        subject: String,
        /// Sequence.
        seq: u64,
        /// Stored message id.
        msg_id: String,
        /// The hub already had it.
        duplicate: bool,
    },
    /// Durable at the edge, not yet on the hub.
    Queued {
        /// Stored message id.
        msg_id: String,
    },
    /// Refused.
    Rejected {
        /// Error code name.
        code: String,
        /// Detail.
        detail: String,
    },
}

/// Something that happened on the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// ([`Client`] only) Connected, after Welcome; also after every reconnect.
    Connected {
        /// The transport it runs on.
        transport: TransportKind,
        /// What the gateway said.
        welcome: Welcome,
    },
    /// ([`Client`] only) The connection is gone. `retry_in`: the next attempt starts
    /// then, by itself; `None`: no more attempts (the reason says why, e.g. a token
    /// refused), and the events end.
    Disconnected {
        /// Why.
        reason: String,
        /// When the next attempt starts.
        retry_in: Option<std::time::Duration>,
    },
    /// ([`Client`] only) A send made while not connected is in the outbox; it is
    /// written, and re-sent with its id until answered, once connected.
    SendPending {
        /// The send's client message id.
        id: String,
    },
    /// A new message (never one the app has seen).
    Message(Message),
    /// The final result of a send answered earlier as [`SendResult::Queued`] (the
    /// hub stored it after all), or any result nobody was waiting for.
    SendResult {
        /// The send's client message id.
        id: String,
        /// The result.
        result: SendResult,
    },
    /// `from` is (no longer) typing, to this user or in `group`. Live only.
    Typing {
        /// Who.
        from: String,
        /// The group, or `None` for the direct conversation with `from`.
        group: Option<String>,
        /// Typing now.
        typing: bool,
    },
    /// A watched user's presence (after [`Connection::watch`]): `ONLINE`, `OFFLINE` or
    /// `UNKNOWN` (the directory cannot be read).
    Presence {
        /// Who.
        user: String,
        /// `ONLINE`, `OFFLINE` or `UNKNOWN`.
        state: String,
    },
    /// One of the user's conversations changed (after [`Connection::conversations`] with
    /// `follow`): a new message, a read position moved on another device, an edit.
    Conversation(Conversation),
    /// A non-fatal error frame.
    Error {
        /// Code name.
        code: String,
        /// Message.
        message: String,
    },
    /// The connection ended.
    Closed {
        /// Why.
        reason: String,
    },
}

/// Session facts from Welcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// User.
    pub user: String,
    /// Device.
    pub device: String,
    /// Connection id.
    pub connection_id: String,
    /// Gateway id.
    pub gateway_id: String,
    /// Max frame size the gateway accepts.
    pub max_frame_bytes: u32,
    /// Where delivery resumes per subject; below the client's own cursor when the
    /// stream was recreated (move state files back to it).
    pub cursors: Vec<(String, u64)>,
    /// Delivery streams the gateway may open besides the control stream.
    pub delivery_streams: u32,
}

/// Where a send goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum To<'a> {
    /// A user (direct message; a copy also goes to the sender's inbox).
    User(&'a str),
    /// A group the sender is a member of.
    Group(&'a str),
}

/// Sends on a [`Connection`]'s connection from another task.
#[derive(Clone, Debug)]
pub struct Sender {
    cmd: mpsc::Sender<Cmd>,
}

impl Sender {
    /// Queues a send and returns the receiver for its result without waiting (see
    /// [`Connection::start_send`]).
    pub async fn start_send(
        &self,
        to: &str,
        id: &str,
        content: impl Into<Bytes>,
        content_type: &str,
    ) -> Result<oneshot::Receiver<SendResult>, ClientError> {
        self.start_send_to(To::User(to), id, content, content_type)
            .await
    }

    /// Queues a send to a user or a group (see [`To`]).
    pub async fn start_send_to(
        &self,
        to: To<'_>,
        id: &str,
        content: impl Into<Bytes>,
        content_type: &str,
    ) -> Result<oneshot::Receiver<SendResult>, ClientError> {
        self.start_send_with(to, id, content, content_type, SendOptions::default())
            .await
    }

    /// Queues a send with a reply reference and mentions (see [`SendOptions`]).
    pub async fn start_send_with(
        &self,
        to: To<'_>,
        id: &str,
        content: impl Into<Bytes>,
        content_type: &str,
        options: SendOptions,
    ) -> Result<oneshot::Receiver<SendResult>, ClientError> {
        let frame = frames::send(to, id, content.into(), content_type, options);
        self.send_frame(id, frame).await
    }

    /// Queues an edit (`Some(content)`) or recall (`None`) of this user's message
    /// `target`, as the new message `id`; answered like a send (REJECTED with
    /// FORBIDDEN outside the gateway's amend window).
    pub async fn start_amend(
        &self,
        id: &str,
        target: &str,
        content: Option<Bytes>,
    ) -> Result<oneshot::Receiver<SendResult>, ClientError> {
        let frame = frames::amend(id, target, content);
        self.send_frame(id, frame).await
    }

    async fn send_frame(
        &self,
        id: &str,
        frame: Bytes,
    ) -> Result<oneshot::Receiver<SendResult>, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(Cmd::Send {
                id: id.to_string(),
                frame,
                reply: tx,
            })
            .await
            .map_err(|_| ClientError::Closed("connection closed".into()))?;
        Ok(rx)
    }

    /// Sends to a group the user is a member of and waits for the result.
    pub async fn send_group(
        &self,
        group: &str,
        id: &str,
        content: impl Into<Bytes>,
    ) -> Result<SendResult, ClientError> {
        let rx = self
            .start_send_to(To::Group(group), id, content, "text/plain")
            .await?;
        rx.await
            .map_err(|_| ClientError::Closed("connection closed before the SendResult".into()))
    }

    /// Sends and waits for the result (see [`Connection::send`]).
    pub async fn send(
        &self,
        to: &str,
        id: &str,
        content: impl Into<Bytes>,
    ) -> Result<SendResult, ClientError> {
        let rx = self.start_send(to, id, content, "text/plain").await?;
        rx.await
            .map_err(|_| ClientError::Closed("connection closed before the SendResult".into()))
    }
}

/// How often an otherwise quiet client pings the gateway.
pub const PING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(20);

enum Cmd {
    Send {
        id: String,
        frame: Bytes,
        reply: oneshot::Sender<SendResult>,
    },
    Frame(Bytes),
    Sync {
        id: u64,
        frame: Bytes,
        reply: oneshot::Sender<Result<HistoryPage, ClientError>>,
    },
    Push {
        id: u64,
        frame: Bytes,
        reply: oneshot::Sender<Result<(), ClientError>>,
    },
    Conversations {
        id: u64,
        frame: Bytes,
        reply: oneshot::Sender<Result<ConversationPage, ClientError>>,
    },
}

/// Where this device is woken while it is offline (see [`Connection::register_push`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushTarget {
    /// APNs: the device token (hex), the app's bundle id, sandbox or production.
    Apns {
        /// Device token.
        token: String,
        /// Bundle id.
        topic: String,
        /// A development token.
        sandbox: bool,
    },
    /// FCM: the registration token.
    Fcm {
        /// Registration token.
        token: String,
    },
    /// A browser's PushSubscription.
    WebPush {
        /// Push resource URL.
        endpoint: String,
        /// Public key, base64url.
        p256dh: String,
        /// Auth secret, base64url.
        auth: String,
    },
}

/// A page of history (see [`Connection::history`]).
#[derive(Debug, Clone)]
pub struct HistoryPage {
    /// Messages in the order asked for.
    pub messages: Vec<Message>,
    /// The page was full: ask again from its last message.
    pub more: bool,
}

static NEXT_SYNC: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Counters kept by the client.
#[derive(Debug, Default)]
pub struct Stats {
    /// Deliveries that arrived on the wire.
    pub wire_messages: AtomicU64,
    /// Deliveries dropped because the app had seen them.
    pub duplicates_dropped: AtomicU64,
    /// ([`Client`]) QUIC connections that went out in 0-RTT.
    pub zero_rtt_connects: AtomicU64,
}

/// A connected client.
pub struct Connection {
    cmd: mpsc::Sender<Cmd>,
    events: mpsc::Receiver<Event>,
    welcome: Welcome,
    transport: TransportKind,
    stats: Arc<Stats>,
    driver: tokio::task::JoinHandle<()>,
    /// The QUIC connection, for datagrams (typing); `None` on WebSocket.
    datagrams: Option<quinn::Connection>,
}

mod prost_free {
    //! Tiny decode helper (keeps `prost::Message` out of the public API).
    use petrel_proto::pb;
    use prost::Message as _;

    pub fn decode_server(b: bytes::Bytes) -> Result<pb::ServerFrame, String> {
        pb::ServerFrame::decode(b).map_err(|e| e.to_string())
    }
}

use petrel_proto::error_code_name as code_name;

use frames::client_frame;

impl Connection {
    /// Connects, authenticates and waits for Welcome.
    pub async fn connect(opts: ConnectOptions) -> Result<Self, ClientError> {
        let (reader, mut writer) = connect_raw(&opts.endpoint).await?;
        let hello = frames::hello(
            &opts.token,
            &opts.device,
            &opts.cursors,
            opts.delivery_streams,
        );
        writer.write(hello).await?;
        let mut link = link::Link::new(reader, opts.max_frame_bytes);
        let welcome = loop {
            match link.next_control().await {
                Ok(pb::server_frame::Kind::Welcome(w)) => break welcome_of(w),
                Ok(pb::server_frame::Kind::Error(e)) => {
                    return Err(ClientError::Refused {
                        code: code_name(e.code),
                        message: e.message,
                    });
                }
                Ok(_) => continue,
                Err(e) => return Err(ClientError::Closed(format!("before Welcome: {}", e.reason))),
            }
        };
        let (cmd_tx, cmd_rx) = mpsc::channel(256);
        let (ev_tx, ev_rx) = mpsc::channel(1024);
        let stats = Arc::new(Stats::default());
        let mut seen: HashMap<String, u64> = opts.cursors.iter().cloned().collect();
        // The gateway may have moved a cursor back (a recreated stream).
        for (subject, seq) in &welcome.cursors {
            seen.insert(subject.clone(), *seq);
        }
        let datagrams = link.quic().cloned();
        // Read only after Welcome: what the gateway sent on delivery streams waits in
        // QUIC until then, so nothing is handed to the app before Welcome.
        link.start_deliveries(welcome.delivery_streams);
        let driver = tokio::spawn(drive(link, writer, cmd_rx, ev_tx, stats.clone(), seen));
        Ok(Self {
            cmd: cmd_tx,
            events: ev_rx,
            welcome,
            transport: opts.endpoint.transport,
            stats,
            driver,
            datagrams,
        })
    }

    /// What the gateway said in Welcome.
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// The transport in use.
    pub fn transport(&self) -> TransportKind {
        self.transport
    }

    /// Wire vs. app counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The counters, shared: they stay readable after the client has moved elsewhere.
    pub fn stats_handle(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Sends `content` to user `to` with the client message id `id`; resolves with the
    /// gateway's SendResult. Retrying with the same id is safe: it is stored once.
    pub async fn send(
        &self,
        to: &str,
        id: &str,
        content: impl Into<Bytes>,
    ) -> Result<SendResult, ClientError> {
        self.sender().send(to, id, content).await
    }

    /// Sends to a group the user is a member of; resolves with the SendResult
    /// (REJECTED `FORBIDDEN` for a non-member).
    pub async fn send_group(
        &self,
        group: &str,
        id: &str,
        content: impl Into<Bytes>,
    ) -> Result<SendResult, ClientError> {
        self.sender().send_group(group, id, content).await
    }

    /// Follows these users' presence (replacing any earlier list; at most 256): one
    /// [`Event::Presence`] each now, then one per change.
    pub async fn watch(&self, users: &[&str]) -> Result<(), ClientError> {
        let frame = frames::watch(users);
        self.cmd
            .send(Cmd::Frame(frame))
            .await
            .map_err(|_| ClientError::Closed("connection closed".into()))
    }

    /// Says this user is (no longer) typing to a user or in a group. Live only, not
    /// answered; the gateway drops more than 5 a second.
    pub async fn typing(&self, to: To<'_>, typing: bool) -> Result<(), ClientError> {
        let frame = frames::typing(to, typing);
        // Unreliable and unordered is fine for typing: a datagram where QUIC offers
        // one, so a lost packet never holds up the stream.
        if let Some(conn) = &self.datagrams
            && conn
                .max_datagram_size()
                .is_some_and(|max| frame.len() <= max)
            && conn.send_datagram(frame.clone()).is_ok()
        {
            return Ok(());
        }
        self.cmd
            .send(Cmd::Frame(frame))
            .await
            .map_err(|_| ClientError::Closed("connection closed".into()))
    }

    /// Tells the sender of `message` (a direct message in this user's inbox) that it
    /// was delivered or read. Stored in the sender's inbox; not answered.
    pub async fn receipt(&self, kind: ReceiptKind, message: &Message) -> Result<(), ClientError> {
        let frame = frames::receipt(kind, message);
        self.cmd
            .send(Cmd::Frame(frame))
            .await
            .map_err(|_| ClientError::Closed("connection closed".into()))
    }

    /// A page of history on `subject`: newest first (messages before `from`; 0 = from
    /// the newest) or oldest first (after `from`). Independent of live delivery and
    /// cursors.
    pub async fn history(
        &self,
        subject: &str,
        newest_first: bool,
        from: u64,
        limit: u32,
    ) -> Result<HistoryPage, ClientError> {
        self.sync(subject.to_string(), "", newest_first, from, limit)
            .await
    }

    async fn sync(
        &self,
        subject: String,
        with: &str,
        newest_first: bool,
        from: u64,
        limit: u32,
    ) -> Result<HistoryPage, ClientError> {
        let id = NEXT_SYNC.fetch_add(1, Ordering::Relaxed);
        let frame = client_frame(pb::client_frame::Kind::Sync(pb::Sync {
            request_id: id,
            subject,
            newest_first,
            before: if newest_first { from } else { 0 },
            after: if newest_first { 0 } else { from },
            limit,
            with: with.to_string(),
        }));
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(Cmd::Sync {
                id,
                frame,
                reply: tx,
            })
            .await
            .map_err(|_| ClientError::Closed("client stopped".into()))?;
        rx.await
            .map_err(|_| ClientError::Closed("connection closed before the history page".into()))?
    }

    /// A page of the direct conversation with `with` (from the message service's
    /// archive): newest first before `from` (0: the newest) or oldest first after it.
    pub async fn conversation_history(
        &self,
        with: &str,
        newest_first: bool,
        from: u64,
        limit: u32,
    ) -> Result<HistoryPage, ClientError> {
        // The gateway takes an empty subject with `with` as this user's inbox.
        self.sync(String::new(), with, newest_first, from, limit)
            .await
    }

    /// A page of the user's conversation list (pinned first, then the most recent):
    /// `offset` skips that many. With `follow`, [`Event::Conversation`] reports every
    /// change from now on.
    pub async fn conversations(
        &self,
        offset: u32,
        limit: u32,
        follow: bool,
    ) -> Result<ConversationPage, ClientError> {
        let id = NEXT_SYNC.fetch_add(1, Ordering::Relaxed);
        let frame = client_frame(pb::client_frame::Kind::ListConversations(
            pb::ListConversations {
                request_id: id,
                offset,
                limit,
                follow,
            },
        ));
        self.conversation_request(id, frame, "the conversation list")
            .await
    }

    /// Sends a request answered by a ConversationList and waits for it.
    async fn conversation_request(
        &self,
        id: u64,
        frame: Bytes,
        what: &str,
    ) -> Result<ConversationPage, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(Cmd::Conversations {
                id,
                frame,
                reply: tx,
            })
            .await
            .map_err(|_| ClientError::Closed("client stopped".into()))?;
        rx.await
            .map_err(|_| ClientError::Closed(format!("connection closed before {what}")))?
    }

    /// Pins or unpins (`pinned`), mutes or unmutes (`muted`) the conversation with a
    /// user or a group for every device of this user; `None` leaves it as it is.
    /// Returns the conversation as it is now (`None` for a group with no message yet).
    pub async fn set_conversation(
        &self,
        conversation: To<'_>,
        pinned: Option<bool>,
        muted: Option<bool>,
    ) -> Result<Option<Conversation>, ClientError> {
        use pb::set_conversation::Conversation as C;
        let id = NEXT_SYNC.fetch_add(1, Ordering::Relaxed);
        let frame = client_frame(pb::client_frame::Kind::SetConversation(
            pb::SetConversation {
                request_id: id,
                conversation: Some(match conversation {
                    To::User(u) => C::User(u.to_string()),
                    To::Group(g) => C::Group(g.to_string()),
                }),
                pinned,
                muted,
            },
        ));
        let page = self
            .conversation_request(id, frame, "the conversation's settings")
            .await?;
        Ok(page.conversations.into_iter().next())
    }

    /// Marks the conversation with a user (`To::User`) or a group read up to `seq`
    /// (0: up to its newest message) on every device of this user.
    pub async fn mark_read(&self, conversation: To<'_>, seq: u64) -> Result<(), ClientError> {
        let frame = frames::mark_read(conversation, seq);
        self.cmd
            .send(Cmd::Frame(frame))
            .await
            .map_err(|_| ClientError::Closed("connection closed".into()))
    }

    /// Registers this device's push target (replacing the one it had), or removes it
    /// with `None` (on logout). `preview`: `Some(true)` lets the text of messages
    /// leave the system in pushes, `Some(false)` never, `None` the service's default.
    /// Returns once the registry on the hub has it.
    pub async fn register_push(
        &self,
        target: Option<PushTarget>,
        locale: &str,
        preview: Option<bool>,
    ) -> Result<(), ClientError> {
        use pb::register_push::{Preview, Target};
        let id = NEXT_SYNC.fetch_add(1, Ordering::Relaxed);
        let target = target.map(|t| match t {
            PushTarget::Apns {
                token,
                topic,
                sandbox,
            } => Target::Apns(pb::ApnsTarget {
                device_token: token,
                topic,
                sandbox,
            }),
            PushTarget::Fcm { token } => Target::Fcm(pb::FcmTarget { token }),
            PushTarget::WebPush {
                endpoint,
                p256dh,
                auth,
            } => Target::Webpush(pb::WebPushTarget {
                endpoint,
                p256dh,
                auth,
            }),
        });
        let preview = match preview {
            None => Preview::Default,
            Some(true) => Preview::Show,
            Some(false) => Preview::Hide,
        };
        let frame = client_frame(pb::client_frame::Kind::RegisterPush(pb::RegisterPush {
            request_id: id,
            target,
            locale: locale.to_string(),
            preview: preview as i32,
        }));
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(Cmd::Push {
                id,
                frame,
                reply: tx,
            })
            .await
            .map_err(|_| ClientError::Closed("client stopped".into()))?;
        rx.await.map_err(|_| {
            ClientError::Closed(
                "connection closed before the push registration was answered".into(),
            )
        })?
    }

    /// Queues a send and returns the receiver for its result without waiting, so many
    /// sends can be in flight (pipelining).
    pub async fn start_send(
        &self,
        to: &str,
        id: &str,
        content: impl Into<Bytes>,
        content_type: &str,
    ) -> Result<oneshot::Receiver<SendResult>, ClientError> {
        self.sender()
            .start_send(to, id, content, content_type)
            .await
    }

    /// A handle that sends from another task while this one reads events (a client
    /// whose events are not read stops reading the connection once its event queue
    /// is full, and then hears no SendResults either).
    pub fn sender(&self) -> Sender {
        Sender {
            cmd: self.cmd.clone(),
        }
    }

    /// Acknowledges everything up to `seq` on `subject`.
    pub async fn ack(&self, subject: &str, seq: u64) -> Result<(), ClientError> {
        let frame = frames::ack([(subject.to_string(), seq)]);
        self.cmd
            .send(Cmd::Frame(frame))
            .await
            .map_err(|_| ClientError::Closed("connection closed".into()))
    }

    /// The next event; `None` once the connection is closed and all events were read.
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// Closes the connection.
    pub async fn close(self) {
        drop(self.cmd);
        let _ = self.driver.await;
    }
}

async fn drive(
    mut link: link::Link,
    mut writer: RawWriter,
    mut cmds: mpsc::Receiver<Cmd>,
    events: mpsc::Sender<Event>,
    stats: Arc<Stats>,
    mut seen: HashMap<String, u64>,
) {
    let mut pending: HashMap<String, Vec<oneshot::Sender<SendResult>>> = HashMap::new();
    // Keeps the connection inside the gateway's idle timeout (60 s by default) when
    // nothing else is sent. QUIC has its own keep-alive too; WebSocket relies on this.
    let mut ping = tokio::time::interval(PING_INTERVAL);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    let mut nonce = 0u64;
    // Writes happen in their own task, so that reading never waits for a write: a
    // client blocked writing while the gateway is blocked writing to it would deadlock.
    let (wtx, mut wrx) = mpsc::channel::<Bytes>(64);
    let mut write_task = tokio::spawn(async move {
        while let Some(frame) = wrx.recv().await {
            writer.write(frame).await?;
        }
        writer.close().await;
        Ok::<(), ClientError>(())
    });
    let mut outgoing: VecDeque<Bytes> = VecDeque::new();
    let mut syncs: HashMap<u64, oneshot::Sender<Result<HistoryPage, ClientError>>> = HashMap::new();
    let mut pushes: HashMap<u64, oneshot::Sender<Result<(), ClientError>>> = HashMap::new();
    let mut lists: HashMap<u64, oneshot::Sender<Result<ConversationPage, ClientError>>> =
        HashMap::new();
    let reason: Option<String> = loop {
        tokio::select! {
            _ = ping.tick() => {
                nonce += 1;
                outgoing.push_back(frames::ping(nonce));
            }
            // Take new commands only while few frames wait for the writer, so a
            // stalled connection pushes back on `send` instead of queueing without end.
            cmd = cmds.recv(), if outgoing.len() < 64 => match cmd {
                Some(Cmd::Send { id, frame, reply }) => {
                    pending.entry(id).or_default().push(reply);
                    outgoing.push_back(frame);
                }
                Some(Cmd::Frame(frame)) => outgoing.push_back(frame),
                Some(Cmd::Sync { id, frame, reply }) => {
                    syncs.insert(id, reply);
                    outgoing.push_back(frame);
                }
                Some(Cmd::Push { id, frame, reply }) => {
                    pushes.insert(id, reply);
                    outgoing.push_back(frame);
                }
                Some(Cmd::Conversations { id, frame, reply }) => {
                    lists.insert(id, reply);
                    outgoing.push_back(frame);
                }
                None => break None,
            },
            permit = wtx.reserve(), if !outgoing.is_empty() => match permit {
                Ok(permit) => {
                    if let Some(frame) = outgoing.pop_front() {
                        permit.send(frame);
                    }
                }
                Err(_) => break Some("writer stopped".into()),
            },
            written = &mut write_task => {
                break Some(match written {
                    Ok(Err(e)) => e.to_string(),
                    _ => "writer stopped".into(),
                });
            }
            frame = link.next() => match frame {
                Ok(kind) => {
                    if let pb::server_frame::Kind::SyncBatch(b) = kind {
                        if let Some(reply) = syncs.remove(&b.request_id) {
                            let _ = reply.send(history_page(b));
                        }
                    } else if let pb::server_frame::Kind::PushRegistered(r) = kind {
                        if let Some(reply) = pushes.remove(&r.request_id) {
                            let _ = reply.send(if r.error == 0 {
                                Ok(())
                            } else {
                                Err(ClientError::Refused {
                                    code: code_name(r.error),
                                    message: r.detail,
                                })
                            });
                        }
                    } else if let pb::server_frame::Kind::ConversationList(l) = kind {
                        if let Some(reply) = lists.remove(&l.request_id) {
                            let _ = reply.send(conversation_page(l));
                        }
                    } else if !handle(kind, &mut pending, &events, &stats, &mut seen).await {
                        break Some("event receiver dropped".into());
                    }
                }
                Err(e) => break Some(e.reason),
            },
        }
    };
    let Some(reason) = reason else {
        // The app dropped the client: write what is queued, then close.
        for frame in outgoing.drain(..) {
            if wtx.send(frame).await.is_err() {
                break;
            }
        }
        drop(wtx);
        let _ = write_task.await;
        return;
    };
    write_task.abort();
    let _ = events.send(Event::Closed { reason }).await;
}

fn welcome_of(w: pb::Welcome) -> Welcome {
    Welcome {
        cursors: w.cursors.into_iter().map(|c| (c.subject, c.seq)).collect(),
        user: w.user,
        device: w.device,
        connection_id: w.connection_id,
        gateway_id: w.gateway_id,
        max_frame_bytes: w.max_frame_bytes,
        delivery_streams: w.delivery_streams,
    }
}

fn to_message(m: pb::Message) -> Message {
    Message {
        subject: m.subject,
        seq: m.seq,
        prev_seq: m.prev_seq,
        from: m.from,
        to: m.to,
        group: (!m.group.is_empty()).then_some(m.group),
        receipt: m.receipt.map(|r| {
            Box::new(Receipt {
                kind: if r.kind == pb::receipt::Kind::Read as i32 {
                    ReceiptKind::Read
                } else {
                    ReceiptKind::Delivered
                },
                client_msg_id: r.client_msg_id,
                subject: r.subject,
                seq: r.seq,
            })
        }),
        notification: m.notification.map(|n| {
            let mut data: Vec<(String, String)> = n.data.into_iter().collect();
            data.sort();
            Box::new(Notification {
                priority: pb::notification::Priority::try_from(n.priority)
                    .map(|p| p.as_str_name().to_string())
                    .unwrap_or_else(|_| format!("PRIORITY_{}", n.priority)),
                id: n.id,
                title: n.title,
                body: n.body,
                action: n.action,
                badge: n.badge,
                data,
                time_ms: n.time_ms,
            })
        }),
        from_device: m.from_device,
        time_ms: m.time_ms,
        client_msg_id: m.client_msg_id,
        content: m.content,
        content_type: m.content_type,
        reply_to: m.reply_to.map(|r| (r.subject, r.seq)),
        mentions: m.mentions,
        amends: m.amends.map(|a| (a.target, a.recall)),
        read: m.read.map(|r| {
            let c = match r.conversation {
                Some(pb::read_mark::Conversation::User(u)) => u,
                Some(pb::read_mark::Conversation::Group(g)) => format!("group:{g}"),
                None => String::new(),
            };
            (c, r.seq)
        }),
        edited_ms: m.edited_ms,
        recalled: m.recalled,
    }
}

fn to_conversation(c: pb::Conversation) -> Conversation {
    let (user, group) = match c.with {
        Some(pb::conversation::With::User(u)) => (Some(u), None),
        Some(pb::conversation::With::Group(g)) => (None, Some(g)),
        None => (None, None),
    };
    Conversation {
        user,
        group,
        last: c.last.map(to_message),
        unread: c.unread,
        unread_mentions: c.unread_mentions,
        read_seq: c.read_seq,
        pinned: c.pinned,
        muted: c.muted,
        updated_ms: c.updated_ms,
    }
}

fn conversation_page(l: pb::ConversationList) -> Result<ConversationPage, ClientError> {
    if l.error != 0 {
        return Err(ClientError::Refused {
            code: code_name(l.error),
            message: l.detail,
        });
    }
    Ok(ConversationPage {
        conversations: l.conversations.into_iter().map(to_conversation).collect(),
        more: l.more,
        cached: false,
    })
}

fn history_page(b: pb::SyncBatch) -> Result<HistoryPage, ClientError> {
    if b.error != 0 {
        return Err(ClientError::Refused {
            code: code_name(b.error),
            message: b.detail,
        });
    }
    Ok(HistoryPage {
        messages: b.messages.into_iter().map(to_message).collect(),
        more: b.more,
    })
}

/// A SendResult frame as the app sees it: the send's id and its result.
fn send_result_of(r: pb::SendResult) -> (String, SendResult) {
    let result = match pb::send_result::Status::try_from(r.status) {
        Ok(pb::send_result::Status::Stored) => SendResult::Stored {
            subject: r.subject,
            seq: r.seq,
            msg_id: r.msg_id,
            duplicate: r.duplicate,
        },
        Ok(pb::send_result::Status::Queued) => SendResult::Queued { msg_id: r.msg_id },
        _ => SendResult::Rejected {
            code: code_name(r.reason),
            detail: r.detail,
        },
    };
    (r.client_msg_id, result)
}

/// The event of a frame that needs no state to become one: presence, typing, a
/// conversation's update.
fn plain_event(kind: pb::server_frame::Kind) -> Option<Event> {
    use pb::server_frame::Kind;
    match kind {
        Kind::Presence(p) => Some(Event::Presence {
            user: p.user,
            state: match pb::presence::State::try_from(p.state) {
                Ok(pb::presence::State::Online) => "ONLINE",
                Ok(pb::presence::State::Offline) => "OFFLINE",
                _ => "UNKNOWN",
            }
            .to_string(),
        }),
        Kind::Typing(t) => Some(Event::Typing {
            from: t.from,
            group: (!t.group.is_empty()).then_some(t.group),
            typing: t.typing,
        }),
        Kind::ConversationUpdate(u) => u
            .conversation
            .map(|c| Event::Conversation(to_conversation(c))),
        _ => None,
    }
}

async fn handle(
    kind: pb::server_frame::Kind,
    pending: &mut HashMap<String, Vec<oneshot::Sender<SendResult>>>,
    events: &mpsc::Sender<Event>,
    stats: &Stats,
    seen: &mut HashMap<String, u64>,
) -> bool {
    use pb::server_frame::Kind;
    match kind {
        Kind::SendResult(r) => {
            let (id, result) = send_result_of(r);
            if let Some(waiters) = pending.get_mut(&id)
                && !waiters.is_empty()
            {
                let _ = waiters.remove(0).send(result);
                if waiters.is_empty() {
                    pending.remove(&id);
                }
                return true;
            }
            events.send(Event::SendResult { id, result }).await.is_ok()
        }
        Kind::Deliver(d) => {
            for m in d.messages {
                stats.wire_messages.fetch_add(1, Ordering::Relaxed);
                let last = seen.entry(m.subject.clone()).or_default();
                if m.seq <= *last {
                    stats.duplicates_dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                *last = m.seq;
                let msg = to_message(m);
                if events.send(Event::Message(msg)).await.is_err() {
                    return false;
                }
            }
            true
        }
        Kind::Error(e) => events
            .send(Event::Error {
                code: code_name(e.code),
                message: e.message,
            })
            .await
            .is_ok(),
        other => match plain_event(other) {
            Some(ev) => events.send(ev).await.is_ok(),
            None => true,
        },
    }
}
