//! The transport-independent session state machine.
//!
//! A transport feeds it decoded [`Command`]s and publish outcomes; it answers with
//! [`Action`]s for the transport to carry out (write a reply, publish to the hub,
//! join live delivery, persist an ack, close). It owns no sockets and reads no clock:
//! the caller passes [`Now`], so tests drive it with simulated peers and fake time.
//!
//! ```text
//!  AwaitingHello ──Hello ok──▶ Joining ──joined()──▶ Active
//!        │  └─timeout / bad token / other frame──▶ Closed
//! ```
//! While `Joining` (live subscription being set up) Sends are already accepted; the
//! Welcome is written once live delivery is in place, so a client that sees Welcome
//! knows it will not miss a message published after it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::auth::{AuthError, Authenticator, Identity};
use crate::error::ErrorCode;
use crate::ids::{ClientMsgId, GroupId, Seq, UserId};
use crate::subject;
use crate::wire::{Command, Recipient, Reply, SendCommand, SendStatus, StoredMessage, WireError};

/// Limits and identity of the gateway, shared by all sessions.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Gateway id (shown in Welcome and stored with messages).
    pub gateway_id: String,
    /// Maximum frame size (reported in Welcome; enforced by the decoder).
    pub max_frame_bytes: usize,
    /// Maximum content size of one message.
    pub max_content_bytes: usize,
    /// Sends a connection may have in flight; the transport stops reading beyond it.
    pub max_inflight_sends: usize,
    /// Sends per second a connection may make on average (0 = unlimited); beyond it a
    /// Send is rejected with RATE_LIMITED.
    pub send_rate_per_sec: u32,
    /// Sends a connection may make in a burst above the average rate.
    pub send_burst: u32,
    /// Time allowed between accept and a valid Hello.
    pub handshake_timeout: Duration,
    /// How long after sending a message its sender may still edit or recall it.
    pub amend_window: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            gateway_id: "petrel".into(),
            max_frame_bytes: petrel_proto::DEFAULT_MAX_FRAME_BYTES,
            max_content_bytes: 32 * 1024,
            max_inflight_sends: 64,
            send_rate_per_sec: 100,
            send_burst: 200,
            handshake_timeout: Duration::from_secs(10),
            amend_window: Duration::from_secs(15 * 60),
        }
    }
}

/// The current time, monotonic and wall clock (ms since the Unix epoch).
#[derive(Debug, Clone, Copy)]
pub struct Now {
    /// Monotonic time for deadlines.
    pub mono: Instant,
    /// Wall clock for timestamps.
    pub unix_ms: u64,
}

impl Now {
    /// Reads the system clocks.
    pub fn system() -> Self {
        Self {
            mono: Instant::now(),
            unix_ms: crate::time::unix_ms(),
        }
    }
}

/// One copy of a message to publish (a subject and its dedup id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copy {
    /// Stored subject, e.g. `msg.private.bob`.
    pub subject: String,
    /// `Nats-Msg-Id`.
    pub msg_id: String,
}

/// A message to store on the hub. The first copy is the recipient's: its sequence is
/// the one reported to the sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishRequest {
    /// Session-local request number, echoed in [`Session::on_published`].
    pub req: u64,
    /// Copies, recipient first.
    pub copies: Vec<Copy>,
    /// Encoded [`StoredMessage`].
    pub payload: Bytes,
}

/// What the hub said about a [`PublishRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishOutcome {
    /// Every copy is stored; `seq` is the recipient copy's sequence.
    Stored {
        /// Sequence of the first copy.
        seq: Seq,
        /// The hub already had the first copy.
        duplicate: bool,
    },
    /// Durable at the edge, not yet stored on the hub: the final outcome follows.
    Queued,
    /// At least one copy is not stored.
    Failed {
        /// Client-facing code.
        code: ErrorCode,
        /// Detail.
        detail: String,
    },
}

/// What the transport must do next.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Write this reply.
    Reply(Reply),
    /// Publish to the hub; report back with [`Session::on_published`].
    Publish(PublishRequest),
    /// Register this connection for live delivery of the user's inbox; report back
    /// with [`Session::on_joined`].
    Join(Identity),
    /// Publish `frame` on core NATS `subject` (ephemeral: typing); not stored, no answer.
    Signal {
        /// Subject.
        subject: String,
        /// An encoded server frame for the receivers.
        frame: Bytes,
        /// The one user it is for, when the directory must first allow this user to
        /// see them (presence and typing are private); `None` for a group, whose
        /// membership the session has already checked.
        to: Option<UserId>,
    },
    /// Follow exactly these users' presence from now on.
    Watch(Vec<UserId>),
    /// Read a page of history and answer with a SyncBatch.
    Sync(crate::wire::SyncRequest),
    /// Check that the message `receipt` is about is in the reader's inbox, from that
    /// sender with that id; then publish `publish` (and report back with
    /// [`Session::on_published`]), or report the refusal with
    /// [`Session::on_receipt_refused`].
    CheckReceipt {
        /// What the reader says it received.
        receipt: crate::wire::Receipt,
        /// The receipt's copy in the sender's inbox.
        publish: PublishRequest,
    },
    /// The device acknowledged up to these sequences (its cursors moved forward): the
    /// push service must not wake it for them.
    Acknowledged {
        /// Whose.
        user: UserId,
        /// Which device.
        device: crate::ids::DeviceId,
        /// Subject → the new cursor.
        cursors: Vec<(String, Seq)>,
    },
    /// Store this device's push registration (`None`: remove it) in the registry,
    /// then answer PushRegistered.
    RegisterPush {
        /// Echoed in the answer.
        request_id: u64,
        /// Whose.
        user: UserId,
        /// Which device.
        device: crate::ids::DeviceId,
        /// What to store.
        registration: Option<crate::push::Registration>,
    },
    /// Ask the message service where the sender's message `target` went and when;
    /// report back with [`Session::on_original`].
    FindOriginal {
        /// The amendment's publish request id.
        req: u64,
        /// Whose message.
        user: UserId,
        /// Its client_msg_id.
        target: ClientMsgId,
    },
    /// Ask the message service for a page of the conversation list and answer with
    /// [`Reply::Conversations`]; with `follow`, forward the user's conversation updates
    /// to this connection from now on.
    ListConversations {
        /// The request.
        request: crate::wire::ConversationsRequest,
        /// Whose.
        user: UserId,
        /// The groups it is in.
        groups: Vec<GroupId>,
    },
    /// Ask the message service to change a conversation's settings and answer with
    /// [`Reply::Conversations`] (the conversation as it is now).
    SetConversation {
        /// Echoed in the answer.
        request_id: u64,
        /// Whose.
        user: UserId,
        /// The groups it is in.
        groups: Vec<GroupId>,
        /// The change (a group here is one of `groups`).
        settings: crate::conversation::api::Settings,
    },
    /// Close the connection with this code (after writing any replies before it).
    Close(ErrorCode, String),
}

/// Where a message went and when, as the message service knows it (for an amend).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Original {
    /// The conversation it was sent to.
    pub to: Recipient,
    /// When the gateway accepted it (ms since the epoch).
    pub time_ms: u64,
    /// It is already recalled.
    pub recalled: bool,
}

#[derive(Debug)]
enum State {
    AwaitingHello { deadline: Instant },
    Joining(Identity),
    Active(Identity),
    Closed,
}

#[derive(Debug)]
struct Pending {
    client_msg_id: ClientMsgId,
    subject: String,
    msg_id: String,
    /// Whether the client expects a SendResult (receipts get none).
    answer: bool,
}

/// One client connection's protocol state.
#[derive(Debug)]
pub struct Session {
    id: String,
    cfg: Arc<SessionConfig>,
    auth: Arc<Authenticator>,
    state: State,
    next_req: u64,
    inflight: HashMap<u64, Pending>,
    /// Amends waiting for the message service to find their original.
    amending: HashMap<u64, crate::wire::AmendCommand>,
    /// Sends answered QUEUED, waiting for their final STORED (not counted against
    /// the in-flight budget: they are durable, and the outbox has its own bound).
    queued: HashMap<u64, Pending>,
    cursors: HashMap<String, Seq>,
    /// Delivery streams: asked for in Hello (capped), then what the transport granted.
    delivery_streams: u32,
    /// Groups the user is a member of (from the group directory, kept current by the
    /// gateway): what it may send to, read and acknowledge besides its inbox.
    groups: HashSet<GroupId>,
    /// When the token expires (monotonic); the connection is closed then.
    expires: Option<Instant>,
    sends: Bucket,
    typing: Bucket,
    syncs: Bucket,
    watches: Bucket,
}

/// A non-fatal Error frame: the connection goes on.
fn soft_error(code: ErrorCode, message: String) -> Action {
    Action::Reply(Reply::Error {
        code,
        message,
        fatal: false,
    })
}

/// Typing events per second per connection (and burst).
const TYPING_RATE: u32 = 5;

/// Longest `content_type` of a Send (a MIME type, not a payload).
pub const MAX_CONTENT_TYPE_BYTES: usize = 128;

/// History pages a connection may ask per second (and burst).
const SYNC_RATE: u32 = 10;
const SYNC_BURST: u32 = 20;

/// Watch-list replacements a connection may make per minute (and burst): each one
/// reads every watched user's presence.
const WATCHES_PER_MINUTE: f64 = 10.0;
const WATCH_BURST: f64 = 5.0;

/// Token bucket for the send rate.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Self {
        Self {
            tokens: burst,
            last: now,
        }
    }

    fn take(&mut self, now: Instant, rate: u32, burst: u32) -> bool {
        if rate == 0 {
            return true;
        }
        self.take_f(now, f64::from(rate), f64::from(burst.max(1)))
    }

    /// Like `take`, at `per_sec` (fractions allowed) with a burst of `burst`.
    fn take_f(&mut self, now: Instant, per_sec: f64, burst: f64) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * per_sec).min(burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl Session {
    /// A new session for connection `id`, accepted at `now`.
    pub fn new(
        id: impl Into<String>,
        cfg: Arc<SessionConfig>,
        auth: Arc<Authenticator>,
        now: Now,
    ) -> Self {
        let burst = f64::from(cfg.send_burst.max(1));
        let deadline = now.mono + cfg.handshake_timeout;
        Self {
            id: id.into(),
            cfg,
            auth,
            state: State::AwaitingHello { deadline },
            next_req: 0,
            inflight: HashMap::new(),
            amending: HashMap::new(),
            queued: HashMap::new(),
            cursors: HashMap::new(),
            delivery_streams: 0,
            groups: HashSet::new(),
            expires: None,
            sends: Bucket::full(burst, now.mono),
            typing: Bucket::full(f64::from(TYPING_RATE), now.mono),
            syncs: Bucket::full(f64::from(SYNC_BURST), now.mono),
            watches: Bucket::full(WATCH_BURST, now.mono),
        }
    }

    /// The connection id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The authenticated identity, once Hello succeeded.
    pub fn identity(&self) -> Option<&Identity> {
        match &self.state {
            State::Joining(i) | State::Active(i) => Some(i),
            _ => None,
        }
    }

    /// When the transport must call [`Session::on_timeout`]: the handshake deadline,
    /// then the token's expiry.
    pub fn deadline(&self) -> Option<Instant> {
        match self.state {
            State::AwaitingHello { deadline } => Some(deadline),
            State::Joining(_) | State::Active(_) => self.expires,
            State::Closed => None,
        }
    }

    /// Whether the transport should read and hand over more frames. False while the
    /// in-flight send budget is used up (backpressure to the client) or after close.
    pub fn wants_frames(&self) -> bool {
        !matches!(self.state, State::Closed) && self.inflight.len() < self.cfg.max_inflight_sends
    }

    /// Sends waiting for the hub.
    pub fn inflight(&self) -> usize {
        self.inflight.len()
    }

    /// Whether the session has closed.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    fn close(&mut self, out: &mut Vec<Action>, code: ErrorCode, message: String) {
        out.push(Action::Reply(Reply::Error {
            code,
            message: message.clone(),
            fatal: true,
        }));
        out.push(Action::Close(code, message));
        self.state = State::Closed;
    }

    /// A frame could not be split or decoded: fatal.
    pub fn on_bad_frame(&mut self, code: ErrorCode, detail: String) -> Vec<Action> {
        let mut out = Vec::new();
        if !self.is_closed() {
            self.close(&mut out, code, detail);
        }
        out
    }

    /// A decode error from [`crate::wire::decode_command`].
    pub fn on_wire_error(&mut self, err: WireError) -> Vec<Action> {
        self.on_bad_frame(err.code(), err.to_string())
    }

    /// A deadline from [`Session::deadline`] may have passed.
    pub fn on_timeout(&mut self, now: Now) -> Vec<Action> {
        let mut out = Vec::new();
        match self.state {
            State::AwaitingHello { deadline } if now.mono >= deadline => {
                self.close(
                    &mut out,
                    ErrorCode::HandshakeTimeout,
                    "no Hello within the handshake timeout".into(),
                );
            }
            State::Joining(_) | State::Active(_) if self.expires.is_some_and(|e| now.mono >= e) => {
                self.close(
                    &mut out,
                    ErrorCode::TokenExpired,
                    "token expired; reconnect with a fresh token".into(),
                );
            }
            _ => {}
        }
        out
    }

    /// A decoded client command.
    pub fn on_command(&mut self, cmd: Command, now: Now) -> Vec<Action> {
        let mut out = Vec::new();
        match (&self.state, cmd) {
            (State::Closed, _) => {}
            (
                State::AwaitingHello { .. },
                Command::Hello {
                    protocol_version, ..
                },
            ) if protocol_version != petrel_proto::PROTOCOL_VERSION => {
                self.close(
                    &mut out,
                    ErrorCode::UnsupportedVersion,
                    format!(
                        "protocol_version {protocol_version} is not supported; this gateway speaks {}",
                        petrel_proto::PROTOCOL_VERSION
                    ),
                );
            }
            (
                State::AwaitingHello { .. },
                Command::Hello {
                    token,
                    device,
                    cursors,
                    delivery_streams,
                    ..
                },
            ) => match self.auth.verify(&token, &device, now.unix_ms / 1000) {
                Ok(identity) => {
                    // Group cursors are kept until the membership is known
                    // (`set_groups`), which drops those of other groups.
                    let own = subject::private_inbox(&identity.user);
                    for (subject, seq) in cursors {
                        if subject == own
                            || subject::group_of(&subject).is_some()
                            || subject::is_notification_of(&subject, &identity.user)
                        {
                            self.cursors.insert(subject, seq);
                        }
                    }
                    // Checked: a token may name a time beyond what `Instant` holds.
                    let left = identity.expires_at.saturating_sub(now.unix_ms / 1000);
                    self.expires = now.mono.checked_add(Duration::from_secs(left));
                    self.delivery_streams = delivery_streams.min(crate::wire::MAX_DELIVERY_STREAMS);
                    self.state = State::Joining(identity.clone());
                    out.push(Action::Join(identity));
                }
                Err(e) => {
                    let code = match e {
                        AuthError::Expired => ErrorCode::TokenExpired,
                        AuthError::BadId(_) => ErrorCode::InvalidId,
                        _ => ErrorCode::Unauthenticated,
                    };
                    self.close(&mut out, code, e.to_string());
                }
            },
            (State::AwaitingHello { .. }, _) => {
                self.close(
                    &mut out,
                    ErrorCode::Protocol,
                    "the first frame must be Hello".into(),
                );
            }
            (_, Command::Hello { .. }) => {
                self.close(&mut out, ErrorCode::Protocol, "Hello sent twice".into());
            }
            (State::Joining(id) | State::Active(id), Command::Send(send)) => {
                let sender = id.user.clone();
                let device = id.device.to_string();
                self.on_send(&mut out, sender, device, send, now);
            }
            (
                _,
                Command::BadSend {
                    client_msg_id,
                    code,
                    detail,
                },
            ) => {
                out.push(Action::Reply(Reply::SendResult {
                    client_msg_id,
                    status: SendStatus::Rejected { code, detail },
                }));
            }
            (State::Joining(id) | State::Active(id), Command::Ack(cursors)) => {
                let user = id.user.clone();
                let mut advanced = Vec::new();
                for (subject, seq) in cursors {
                    if !self.owns(&user, &subject) {
                        out.push(Action::Reply(Reply::Error {
                            code: ErrorCode::Protocol,
                            message: format!(
                                "cannot acknowledge {subject:?}: not a subject of this user"
                            ),
                            fatal: false,
                        }));
                        continue;
                    }
                    let cur = self.cursors.entry(subject.clone()).or_default();
                    // Acks are cumulative: an older ack never moves a cursor back.
                    if seq > *cur {
                        *cur = seq;
                        advanced.push((subject, seq));
                    }
                }
                if !advanced.is_empty() {
                    out.push(Action::Acknowledged {
                        user,
                        device: id.device.clone(),
                        cursors: advanced,
                    });
                }
            }
            (State::Joining(_) | State::Active(_), Command::Sync(req))
                if !self.syncs.take(now.mono, SYNC_RATE, SYNC_BURST) =>
            {
                let why = format!("more than {SYNC_RATE} history pages per second; retry later");
                out.push(Action::Reply(Reply::sync_refused(
                    req,
                    ErrorCode::RateLimited,
                    why,
                )));
            }
            (State::Joining(id) | State::Active(id), Command::Sync(mut req)) => {
                // A direct conversation is on the inbox; the subject may be left out.
                if req.with.is_some() && req.subject.is_empty() {
                    req.subject = subject::private_inbox(&id.user);
                }
                if req.with.is_some() && req.subject != subject::private_inbox(&id.user) {
                    let why =
                        "`with` pages a direct conversation: the subject must be the user's inbox"
                            .to_string();
                    out.push(Action::Reply(Reply::sync_refused(
                        req,
                        ErrorCode::Protocol,
                        why,
                    )));
                } else if self.owns(&id.user, &req.subject) {
                    out.push(Action::Sync(req));
                } else {
                    let why = format!("cannot read {:?}: not a subject of this user", req.subject);
                    out.push(Action::Reply(Reply::sync_refused(
                        req,
                        ErrorCode::Protocol,
                        why,
                    )));
                }
            }
            (State::Joining(id) | State::Active(id), Command::RegisterPush(req)) => {
                let registration = match req.target {
                    None => Ok(None),
                    Some(t) => {
                        crate::push::Registration::new(t, req.locale, req.preview, now.unix_ms)
                            .map(Some)
                    }
                };
                match registration {
                    Ok(registration) => out.push(Action::RegisterPush {
                        request_id: req.request_id,
                        user: id.user.clone(),
                        device: id.device.clone(),
                        registration,
                    }),
                    Err(why) => out.push(Action::Reply(Reply::PushRegistered {
                        request_id: req.request_id,
                        error: Some((ErrorCode::InvalidMessage, why)),
                    })),
                }
            }
            (State::Joining(_) | State::Active(_), Command::Watch(users)) => {
                if self
                    .watches
                    .take_f(now.mono, WATCHES_PER_MINUTE / 60.0, WATCH_BURST)
                {
                    out.push(Action::Watch(users));
                } else {
                    out.push(Action::Reply(Reply::Error {
                        code: ErrorCode::RateLimited,
                        message: format!(
                            "more than {WATCHES_PER_MINUTE} watch lists per minute; the last one stays"
                        ),
                        fatal: false,
                    }));
                }
            }
            (State::Joining(id) | State::Active(id), Command::Typing { to, typing }) => {
                // Ephemeral: over the rate, or to a group it is not in, it is dropped
                // without a word.
                if !self.typing.take(now.mono, TYPING_RATE, TYPING_RATE) {
                    return out;
                }
                let from = id.user.clone();
                match to {
                    Recipient::User(u) => out.push(Action::Signal {
                        subject: subject::typing_user(&u),
                        frame: crate::wire::encode_typing_event(&from, None, typing),
                        to: Some(u),
                    }),
                    Recipient::Group(g) if self.groups.contains(&g) => out.push(Action::Signal {
                        subject: subject::typing_group(&g),
                        frame: crate::wire::encode_typing_event(&from, Some(&g), typing),
                        to: None,
                    }),
                    Recipient::Group(_) => {}
                }
            }
            (State::Joining(id) | State::Active(id), Command::Receipt(r)) => {
                let reader = id.user.clone();
                self.on_receipt(&mut out, reader, r, now);
            }
            (State::Joining(id) | State::Active(id), Command::Amend(a)) => {
                let user = id.user.clone();
                self.on_amend(&mut out, user, a, now);
            }
            (State::Joining(id) | State::Active(id), Command::MarkRead(m)) => {
                let user = id.user.clone();
                self.on_mark_read(&mut out, user, m, now);
            }
            (State::Joining(_) | State::Active(_), Command::ListConversations(request))
                if !self.syncs.take(now.mono, SYNC_RATE, SYNC_BURST) =>
            {
                out.push(Action::Reply(Reply::Conversations {
                    request_id: request.request_id,
                    page: Err((
                        ErrorCode::RateLimited,
                        format!(
                            "more than {SYNC_RATE} history or list pages per second; retry later"
                        ),
                    )),
                }));
            }
            (
                State::Joining(id) | State::Active(id),
                Command::SetConversation {
                    request_id,
                    settings,
                },
            ) => {
                let user = id.user.clone();
                self.on_set_conversation(&mut out, user, request_id, settings, now);
            }
            (State::Joining(id) | State::Active(id), Command::ListConversations(request)) => {
                let mut groups: Vec<GroupId> = self.groups.iter().cloned().collect();
                groups.sort();
                out.push(Action::ListConversations {
                    request,
                    user: id.user.clone(),
                    groups,
                });
            }
            (_, Command::Invalid { code, detail }) => out.push(Action::Reply(Reply::Error {
                code,
                message: detail,
                fatal: false,
            })),
            (_, Command::Ping(nonce)) => out.push(Action::Reply(Reply::Pong {
                nonce,
                server_time_ms: now.unix_ms,
            })),
        }
        out
    }

    fn on_send(
        &mut self,
        out: &mut Vec<Action>,
        sender: UserId,
        device: String,
        send: SendCommand,
        now: Now,
    ) {
        let reject = |code, detail: String| {
            Action::Reply(Reply::SendResult {
                client_msg_id: send.id.to_string(),
                status: SendStatus::Rejected { code, detail },
            })
        };
        if let Err((code, detail)) = self
            .take_send(now)
            .and_then(|()| self.check_content(&send.content, &send.content_type))
            .and_then(|()| self.check_reference(&sender, &send.to, send.reply_to.as_ref()))
        {
            out.push(reject(code, detail));
            return;
        }
        let copies = match self.copies(&sender, &send.to, &send.id) {
            Ok(c) => c,
            Err((code, detail)) => {
                out.push(reject(code, detail));
                return;
            }
        };
        let mut payload = self.payload(sender, send.to, device, &send.id, now);
        payload.content = send.content;
        payload.content_type = send.content_type;
        payload.meta.reply_to = send.reply_to;
        payload.meta.mentions = send.mentions;
        let req = self.next_req;
        self.next_req += 1;
        self.publish(out, req, send.id, copies, payload, true);
    }

    /// A message from `from` on `device` to `to`, accepted now by this gateway, with no
    /// content yet.
    fn payload(
        &self,
        from: UserId,
        to: Recipient,
        device: String,
        id: &ClientMsgId,
        now: Now,
    ) -> StoredMessage {
        StoredMessage {
            from,
            to,
            from_device: device,
            client_msg_id: id.to_string(),
            content: Bytes::new(),
            content_type: String::new(),
            time_ms: now.unix_ms,
            gateway_id: self.cfg.gateway_id.clone(),
            notification: None,
            receipt: None,
            meta: crate::wire::Meta::default(),
        }
    }

    /// Takes one send from the connection's rate.
    fn take_send(&mut self, now: Now) -> Result<(), (ErrorCode, String)> {
        if self
            .sends
            .take(now.mono, self.cfg.send_rate_per_sec, self.cfg.send_burst)
        {
            return Ok(());
        }
        Err((
            ErrorCode::RateLimited,
            format!(
                "more than {} sends per second; slow down and retry with the same id",
                self.cfg.send_rate_per_sec
            ),
        ))
    }

    /// A message's content: not empty, within the size limits.
    fn check_content(
        &self,
        content: &Bytes,
        content_type: &str,
    ) -> Result<(), (ErrorCode, String)> {
        if content.is_empty() {
            return Err((ErrorCode::InvalidMessage, "empty content".into()));
        }
        if content_type.len() > MAX_CONTENT_TYPE_BYTES {
            return Err((
                ErrorCode::InvalidMessage,
                format!("content_type longer than {MAX_CONTENT_TYPE_BYTES} bytes"),
            ));
        }
        if content.len() > self.cfg.max_content_bytes {
            return Err((
                ErrorCode::InvalidMessage,
                format!(
                    "content of {} bytes exceeds {}",
                    content.len(),
                    self.cfg.max_content_bytes
                ),
            ));
        }
        Ok(())
    }

    /// A reply refers to a message of its conversation: on one of the sender's own
    /// subjects, or (what a SendResult names) the recipient's copy in its inbox.
    fn check_reference(
        &self,
        sender: &UserId,
        to: &Recipient,
        r: Option<&crate::wire::MessageRef>,
    ) -> Result<(), (ErrorCode, String)> {
        let theirs = |s: &str| to.user().is_some_and(|u| s == subject::private_inbox(u));
        match r {
            Some(r) if !(self.owns(sender, &r.subject) || theirs(&r.subject)) || r.seq.0 == 0 => {
                Err((
                    ErrorCode::InvalidMessage,
                    format!(
                        "reply_to {}:{} is not a message on one of this user's subjects",
                        r.subject, r.seq
                    ),
                ))
            }
            _ => Ok(()),
        }
    }

    /// Where a message from `sender` to `to` is stored: the recipient's inbox and the
    /// sender's own copy, or the group's subject (for a member only).
    fn copies(
        &self,
        sender: &UserId,
        to: &Recipient,
        id: &ClientMsgId,
    ) -> Result<Vec<Copy>, (ErrorCode, String)> {
        Ok(match to {
            Recipient::User(to) => {
                let mut copies = vec![Copy {
                    subject: subject::private_inbox(to),
                    msg_id: subject::direct_msg_id(sender, id),
                }];
                if to != sender {
                    copies.push(Copy {
                        subject: subject::private_inbox(sender),
                        msg_id: subject::direct_self_copy_msg_id(sender, id),
                    });
                }
                copies
            }
            // One copy: every member, the sender's other devices included, reads the
            // group's subject.
            Recipient::Group(group) => {
                if !self.groups.contains(group) {
                    return Err((
                        ErrorCode::Forbidden,
                        format!("not a member of group {group}"),
                    ));
                }
                vec![Copy {
                    subject: subject::group_subject(group),
                    msg_id: subject::group_msg_id(sender, id),
                }]
            }
        })
    }

    /// Publishes `payload` to `copies` as request `req`; `answer`: the client expects a
    /// SendResult for `id`.
    fn publish(
        &mut self,
        out: &mut Vec<Action>,
        req: u64,
        id: ClientMsgId,
        copies: Vec<Copy>,
        payload: StoredMessage,
        answer: bool,
    ) {
        self.inflight.insert(
            req,
            Pending {
                client_msg_id: id,
                subject: copies[0].subject.clone(),
                msg_id: copies[0].msg_id.clone(),
                answer,
            },
        );
        out.push(Action::Publish(PublishRequest {
            req,
            copies,
            payload: payload.encode(),
        }));
    }

    /// An edit or recall: checked here, then the message service is asked where the
    /// original went ([`Session::on_original`] goes on).
    fn on_amend(
        &mut self,
        out: &mut Vec<Action>,
        user: UserId,
        a: crate::wire::AmendCommand,
        now: Now,
    ) {
        let checked = self.take_send(now).and_then(|()| {
            if a.amendment.recall {
                if a.content.is_empty() {
                    Ok(())
                } else {
                    Err((
                        ErrorCode::InvalidMessage,
                        "a recall carries no content".into(),
                    ))
                }
            } else {
                self.check_content(&a.content, &a.content_type)
            }
        });
        if let Err((code, detail)) = checked {
            out.push(Action::Reply(Reply::SendResult {
                client_msg_id: a.id.to_string(),
                status: SendStatus::Rejected { code, detail },
            }));
            return;
        }
        let req = self.next_req;
        self.next_req += 1;
        let target = a.amendment.target.clone();
        self.amending.insert(req, a);
        out.push(Action::FindOriginal { req, user, target });
    }

    /// The message service answered where amend `req`'s original went (`Ok(None)`: it
    /// has no such message of this sender): publish the amendment to the same
    /// conversation, or refuse it.
    pub fn on_original(
        &mut self,
        req: u64,
        found: Result<Option<Original>, (ErrorCode, String)>,
        now: Now,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        let (Some(a), Some(id)) = (self.amending.remove(&req), self.identity().cloned()) else {
            return out;
        };
        let window = self.cfg.amend_window;
        let checked = found.and_then(|o| match o {
            None => Err((
                ErrorCode::Forbidden,
                format!("no message of {} with id {} to amend", id.user, a.amendment.target),
            )),
            Some(o) if o.recalled => Err((
                ErrorCode::Forbidden,
                format!("message {} is recalled", a.amendment.target),
            )),
            Some(o) if now.unix_ms > o.time_ms.saturating_add(window.as_millis() as u64) => {
                Err((
                    ErrorCode::Forbidden,
                    format!(
                        "message {} was sent more than {} s ago: it can no longer be edited or recalled",
                        a.amendment.target,
                        window.as_secs()
                    ),
                ))
            }
            Some(o) => Ok(o),
        });
        let copies = checked.and_then(|o| Ok((self.copies(&id.user, &o.to, &a.id)?, o.to)));
        let (copies, to) = match copies {
            Ok(c) => c,
            Err((code, detail)) => {
                out.push(Action::Reply(Reply::SendResult {
                    client_msg_id: a.id.to_string(),
                    status: SendStatus::Rejected { code, detail },
                }));
                return out;
            }
        };
        let mut payload = self.payload(id.user.clone(), to, id.device.to_string(), &a.id, now);
        payload.content = a.content;
        payload.content_type = a.content_type;
        payload.meta.amends = Some(a.amendment);
        self.publish(&mut out, req, a.id, copies, payload, true);
        out
    }

    /// A SetConversation: answered on its request id, refused for a group the user is
    /// not in, and limited like list pages.
    fn on_set_conversation(
        &mut self,
        out: &mut Vec<Action>,
        user: UserId,
        request_id: u64,
        settings: Result<crate::conversation::api::Settings, (ErrorCode, String)>,
        now: Now,
    ) {
        let refuse = |out: &mut Vec<Action>, code, why: String| {
            out.push(Action::Reply(Reply::Conversations {
                request_id,
                page: Err((code, why)),
            }));
        };
        let settings = match settings {
            Ok(s) => s,
            Err((code, why)) => return refuse(out, code, why),
        };
        if let Recipient::Group(g) = &settings.with
            && !self.groups.contains(g)
        {
            return refuse(
                out,
                ErrorCode::Forbidden,
                format!("not a member of group {g}"),
            );
        }
        if !self.syncs.take(now.mono, SYNC_RATE, SYNC_BURST) {
            return refuse(
                out,
                ErrorCode::RateLimited,
                format!("more than {SYNC_RATE} history or list requests per second; retry later"),
            );
        }
        let mut groups: Vec<GroupId> = self.groups.iter().cloned().collect();
        groups.sort();
        out.push(Action::SetConversation {
            request_id,
            user,
            groups,
            settings,
        });
    }

    /// A read mark: stored in the user's own inbox (every device of the user gets it,
    /// and the message service moves the read position). Not answered.
    fn on_mark_read(
        &mut self,
        out: &mut Vec<Action>,
        user: UserId,
        m: crate::wire::ReadMark,
        now: Now,
    ) {
        let refuse = soft_error;
        if let Recipient::Group(g) = &m.conversation
            && !self.groups.contains(g)
        {
            out.push(refuse(
                ErrorCode::Forbidden,
                format!("not a member of group {g}"),
            ));
            return;
        }
        if let Err((code, detail)) = self.take_send(now) {
            out.push(refuse(code, detail));
            return;
        }
        let Some(device) = self.identity().map(|i| i.device.to_string()) else {
            return;
        };
        // The id names the mark, so a repeated one is stored once; "up to the newest"
        // is a new mark each time it is said.
        let mark_id = match m.seq.0 {
            0 => format!("r{}", now.unix_ms),
            n => format!("r{n}"),
        };
        let Ok(id) = ClientMsgId::parse(mark_id) else {
            return;
        };
        let copy = Copy {
            subject: subject::private_inbox(&user),
            msg_id: subject::read_mark_msg_id(&user, &m.conversation, &id),
        };
        let mut payload = self.payload(user.clone(), Recipient::User(user), device, &id, now);
        payload.meta.read = Some(m);
        let req = self.next_req;
        self.next_req += 1;
        self.publish(out, req, id, vec![copy], payload, false);
    }

    /// A receipt from the reader: stored in the original sender's inbox (through the
    /// outbox like a Send, but not answered). Only about the reader's own inbox, and
    /// within the send rate.
    fn on_receipt(
        &mut self,
        out: &mut Vec<Action>,
        reader: UserId,
        r: crate::wire::Receipt,
        now: Now,
    ) {
        let refuse = soft_error;
        if r.subject != subject::private_inbox(&reader) {
            out.push(refuse(
                ErrorCode::Protocol,
                format!(
                    "receipts are about messages in one's own inbox, not {:?}",
                    r.subject
                ),
            ));
            return;
        }
        if !self
            .sends
            .take(now.mono, self.cfg.send_rate_per_sec, self.cfg.send_burst)
        {
            out.push(refuse(
                ErrorCode::RateLimited,
                "too many sends and receipts per second".into(),
            ));
            return;
        }
        let copy = Copy {
            subject: subject::private_inbox(&r.sender),
            msg_id: subject::receipt_msg_id(&reader, r.kind.as_str(), &r.sender, &r.client_msg_id),
        };
        let device = self
            .identity()
            .map(|i| i.device.to_string())
            .unwrap_or_default();
        let mut payload = self.payload(
            reader,
            Recipient::User(r.sender.clone()),
            device,
            &r.client_msg_id,
            now,
        );
        payload.receipt = Some(r.clone());
        let payload = payload.encode();
        let req = self.next_req;
        self.next_req += 1;
        self.inflight.insert(
            req,
            Pending {
                client_msg_id: r.client_msg_id.clone(),
                subject: copy.subject.clone(),
                msg_id: copy.msg_id.clone(),
                answer: false,
            },
        );
        out.push(Action::CheckReceipt {
            receipt: r,
            publish: PublishRequest {
                req,
                copies: vec![copy],
                payload,
            },
        });
    }

    /// The receipt of publish `req` was not about a message in the reader's inbox (or
    /// could not be checked): nothing is stored; the reader is told, without closing.
    pub fn on_receipt_refused(
        &mut self,
        req: u64,
        code: ErrorCode,
        message: String,
    ) -> Vec<Action> {
        self.inflight.remove(&req);
        vec![Action::Reply(Reply::Error {
            code,
            message,
            fatal: false,
        })]
    }

    /// The hub (or the edge's outbox) answered a publish.
    pub fn on_published(&mut self, req: u64, outcome: PublishOutcome) -> Vec<Action> {
        let mut out = Vec::new();
        let p = match outcome {
            PublishOutcome::Queued => match self.inflight.remove(&req) {
                Some(p) if !p.answer => {
                    self.queued.insert(req, p);
                    return out;
                }
                Some(p) => {
                    let status = SendStatus::Queued {
                        subject: p.subject.clone(),
                        msg_id: p.msg_id.clone(),
                    };
                    let client_msg_id = p.client_msg_id.to_string();
                    self.queued.insert(req, p);
                    if !self.is_closed() {
                        out.push(Action::Reply(Reply::SendResult {
                            client_msg_id,
                            status,
                        }));
                    }
                    return out;
                }
                None => return out,
            },
            _ => match self
                .inflight
                .remove(&req)
                .or_else(|| self.queued.remove(&req))
            {
                Some(p) => p,
                None => return out,
            },
        };
        if self.is_closed() || !p.answer {
            return out;
        }
        let status = match outcome {
            PublishOutcome::Stored { seq, duplicate } => SendStatus::Stored {
                subject: p.subject,
                seq,
                msg_id: p.msg_id,
                duplicate,
            },
            PublishOutcome::Failed { code, detail } => SendStatus::Rejected { code, detail },
            PublishOutcome::Queued => return out,
        };
        out.push(Action::Reply(Reply::SendResult {
            client_msg_id: p.client_msg_id.to_string(),
            status,
        }));
        out
    }

    /// Moves a cursor back: the client's was above anything stored on `subject` (the
    /// stream was recreated). Welcome tells the client.
    pub fn reset_cursor(&mut self, subject: &str, seq: Seq) {
        if let Some(c) = self.cursors.get_mut(subject) {
            *c = seq;
        }
    }

    /// Whether `subject` is one `user` may read: its inbox or a group it is in.
    fn owns(&self, user: &UserId, subject: &str) -> bool {
        subject == subject::private_inbox(user)
            || subject::is_notification_of(subject, user)
            || subject::group_of(subject).is_some_and(|g| self.groups.contains(&g))
    }

    /// The user's groups, from the group directory (at join and after each change).
    /// Cursors on groups it is not in are dropped; returns the groups added and
    /// removed by this call.
    pub fn set_groups(&mut self, groups: HashSet<GroupId>) -> (Vec<GroupId>, Vec<GroupId>) {
        let added: Vec<GroupId> = groups.difference(&self.groups).cloned().collect();
        let removed: Vec<GroupId> = self.groups.difference(&groups).cloned().collect();
        self.groups = groups;
        let groups = &self.groups;
        self.cursors
            .retain(|s, _| subject::group_of(s).is_none_or(|g| groups.contains(&g)));
        (added, removed)
    }

    /// The user's groups as last set.
    pub fn groups(&self) -> &HashSet<GroupId> {
        &self.groups
    }

    /// The client's cursors (from Hello, advanced by its acks), per subject.
    pub fn cursors(&self) -> impl Iterator<Item = (&str, Seq)> {
        self.cursors.iter().map(|(k, v)| (k.as_str(), *v))
    }

    /// Delivery streams the client asked for in Hello (capped).
    pub fn delivery_streams(&self) -> u32 {
        self.delivery_streams
    }

    /// What the transport granted of [`Session::delivery_streams`] (fewer, or none on
    /// WebSocket); Welcome reports it.
    pub fn grant_delivery_streams(&mut self, granted: u32) {
        self.delivery_streams = granted.min(self.delivery_streams);
    }

    /// Live delivery is in place: write Welcome.
    pub fn on_joined(&mut self, now: Now) -> Vec<Action> {
        let mut out = Vec::new();
        if let State::Joining(id) = &self.state {
            let id = id.clone();
            out.push(Action::Reply(Reply::Welcome {
                user: id.user.to_string(),
                device: id.device.to_string(),
                connection_id: self.id.clone(),
                max_frame_bytes: self.cfg.max_frame_bytes as u32,
                server_time_ms: now.unix_ms,
                gateway_id: self.cfg.gateway_id.clone(),
                delivery_streams: self.delivery_streams,
                cursors: {
                    let mut c: Vec<(String, Seq)> =
                        self.cursors.iter().map(|(k, v)| (k.clone(), *v)).collect();
                    c.sort();
                    c
                },
            }));
            self.state = State::Active(id);
        }
        out
    }

    /// The gateway must drop the connection (shutdown, slow consumer, ...).
    pub fn shutdown(&mut self, code: ErrorCode, message: &str) -> Vec<Action> {
        let mut out = Vec::new();
        if !self.is_closed() {
            self.close(&mut out, code, message.to_string());
        }
        out
    }
}
