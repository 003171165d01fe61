//! [`Client`]: the long-lived handle an app keeps. It stays usable across lost
//! connections, gateway restarts and drains: the [`crate::session`] core decides
//! when to connect where, what to resume and what to re-send; this shell opens the
//! transports, moves the frames and hands the app its [`Event`]s.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use petrel_proto::pb;
use tokio::sync::{mpsc, oneshot};

use crate::link::{Ended, Link};
use crate::session::{self, Action, Incoming, Notice, Outgoing, Route, SendStatus, Session};
use crate::state::DeviceState;
use crate::transport::{RawReader, RawWriter};
use crate::{
    ClientError, ConversationPage, Endpoint, Event, Message, ReceiptKind, SendOptions, SendResult,
    Stats, To, TransportKind, Welcome, code_name, connect_raw, frames, plain_event, send_result_of,
    to_message, welcome_of,
};

/// What [`Client::start`] needs.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Gateways, each with its endpoints in order of preference (say QUIC, then
    /// WebSocket on the same machine). A `GoAway` moves on to the next gateway.
    pub gateways: Vec<Vec<Endpoint>>,
    /// JWT.
    pub token: String,
    /// Device id.
    pub device: String,
    /// Resume cursors (subject, last sequence handed to the app) from the device's
    /// state.
    pub cursors: Vec<(String, u64)>,
    /// Timers and limits of the session.
    pub session: session::Config,
    /// Maximum frame size accepted from the gateway.
    pub max_frame_bytes: usize,
    /// QUIC delivery streams asked for (see [`crate::ConnectOptions::delivery_streams`]).
    pub delivery_streams: u32,
    /// Acknowledge each message once it is handed to the app (the default); with
    /// `false` the app calls [`Handle::ack`] after processing.
    pub auto_ack: bool,
    /// The device's state file ([`crate::state::DeviceState`]): cursors, the outbox
    /// and transport memory survive an app restart. Its cursors, when it has any, win
    /// over `cursors`.
    pub state: Option<std::path::PathBuf>,
    /// Reconnect in 0-RTT where a session ticket from an earlier connection to the
    /// same gateway allows (only Hello goes early; see docs/decisions.md).
    pub zero_rtt: bool,
}

impl ClientOptions {
    /// One gateway reached through `endpoints` (in order of preference).
    pub fn new(
        endpoints: Vec<Endpoint>,
        token: impl Into<String>,
        device: impl Into<String>,
    ) -> Self {
        Self {
            gateways: vec![endpoints],
            token: token.into(),
            device: device.into(),
            cursors: Vec::new(),
            session: session::Config::default(),
            max_frame_bytes: 1024 * 1024,
            delivery_streams: crate::DEFAULT_DELIVERY_STREAMS,
            auto_ack: true,
            state: None,
            zero_rtt: true,
        }
    }
}

/// A reconnecting client (see the module docs). Read its events with
/// [`Client::next_event`]; send from anywhere with a [`Handle`].
pub struct Client {
    handle: Handle,
    events: mpsc::Receiver<Event>,
    driver: tokio::task::JoinHandle<()>,
}

/// Sends and other requests on a [`Client`], from any task.
#[derive(Clone, Debug)]
pub struct Handle {
    cmd: mpsc::Sender<Cmd>,
    stats: Arc<Stats>,
}

/// The answer to one send, when it comes (across reconnects).
pub struct PendingSend {
    rx: oneshot::Receiver<SendResult>,
}

impl PendingSend {
    /// Waits for the gateway's answer.
    pub async fn result(self) -> Result<SendResult, ClientError> {
        self.rx.await.map_err(|_| {
            ClientError::Closed("the client stopped before the send was answered".into())
        })
    }
}

enum Cmd {
    Send {
        id: String,
        frame: Bytes,
        accepted: oneshot::Sender<Result<PendingSend, ClientError>>,
    },
    /// A control frame, and the key it is kept by while disconnected (none: dropped).
    Frame(Option<String>, Bytes),
    Watch(Bytes),
    NetworkChanged,
    Outbox(oneshot::Sender<Vec<String>>),
    LocalAddress(oneshot::Sender<Option<std::net::SocketAddr>>),
    Reconnect,
    Close,
    Conversations {
        offset: u32,
        limit: u32,
        reply: oneshot::Sender<Result<ConversationPage, ClientError>>,
    },
}

/// An app waiting for a page of the conversation list.
struct ListWaiter {
    offset: u32,
    limit: u32,
    reply: oneshot::Sender<Result<ConversationPage, ClientError>>,
}

impl Client {
    /// Starts the client: it connects in the background (see [`Event::Connected`]).
    pub fn start(opts: ClientOptions) -> Result<Self, ClientError> {
        let routes: Vec<(Route, Endpoint)> = opts
            .gateways
            .iter()
            .enumerate()
            .flat_map(|(g, eps)| {
                eps.iter().map(move |ep| {
                    let route = Route {
                        transport: ep.transport,
                        gateway: g as u32,
                    };
                    (route, ep.clone())
                })
            })
            .collect();
        if routes.is_empty() {
            return Err(ClientError::Config("no gateway endpoint given".into()));
        }
        let state = opts.state.as_ref().map(DeviceState::open).transpose()?;
        let (mut cursors, mut outbox, mut skip_quic) = (opts.cursors.clone(), Vec::new(), None);
        if let Some(s) = &state {
            let saved = s.cursors()?;
            if !saved.is_empty() {
                cursors = saved;
            }
            outbox = s.outbox()?;
            skip_quic = s.quic_skipped_for()?;
        }
        let now = Instant::now();
        let mut session = Session::new(
            opts.session.clone(),
            routes.iter().map(|(r, _)| *r).collect(),
            cursors,
            outbox,
            Box::new(rand::random::<f64>),
            now,
        );
        if let Some(d) = skip_quic {
            session.skip_quic_until(now + d);
        }
        let (cmd_tx, cmd_rx) = mpsc::channel(256);
        let (ev_tx, ev_rx) = mpsc::channel(1024);
        let stats = Arc::new(Stats::default());
        let driver = Driver {
            session,
            endpoints: routes.into_iter().map(|(_, e)| e).collect(),
            opts,
            events: ev_tx,
            cmds: cmd_rx,
            live: None,
            opening: None,
            waiters: HashMap::new(),
            results: HashMap::new(),
            watch: None,
            current: None,
            stats: stats.clone(),
            state,
            quic: crate::transport::QuicContext::default(),
            lists: HashMap::new(),
            next_request: 0,
        };
        Ok(Self {
            handle: Handle { cmd: cmd_tx, stats },
            events: ev_rx,
            driver: tokio::spawn(driver.run()),
        })
    }

    /// The next event; `None` once the client has stopped and all events were read.
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// A handle for sending from other tasks.
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// Wire vs. app counters.
    pub fn stats(&self) -> &Stats {
        &self.handle.stats
    }

    /// Stops (also while [`Handle`]s are still around): what is in the outbox stays
    /// unsent.
    pub async fn close(self) {
        let _ = self.handle.cmd(Cmd::Close).await;
        drop(self.events);
        let _ = self.driver.await;
    }
}

impl std::ops::Deref for Client {
    type Target = Handle;
    fn deref(&self) -> &Handle {
        &self.handle
    }
}

impl Handle {
    async fn cmd(&self, c: Cmd) -> Result<(), ClientError> {
        self.cmd
            .send(c)
            .await
            .map_err(|_| ClientError::Closed("the client stopped".into()))
    }

    /// Puts a send in the outbox: written now when connected, else once connected
    /// ([`Event::SendPending`] says so), re-sent with the same id until answered.
    /// Refused at once with `DUPLICATE_SEND` for an id still waiting, `OUTBOX_FULL`.
    pub async fn start_send(
        &self,
        to: To<'_>,
        id: &str,
        content: impl Into<Bytes>,
        content_type: &str,
        options: SendOptions,
    ) -> Result<PendingSend, ClientError> {
        let frame = frames::send(to, id, content.into(), content_type, options);
        self.enqueue(id, frame).await
    }

    /// Sends text to a user or a group and waits for the answer.
    pub async fn send(
        &self,
        to: To<'_>,
        id: &str,
        text: impl Into<Bytes>,
    ) -> Result<SendResult, ClientError> {
        self.start_send(to, id, text, "text/plain", SendOptions::default())
            .await?
            .result()
            .await
    }

    /// An edit (`Some(content)`) or recall (`None`) of this user's message `target`,
    /// as the new message `id`, through the outbox like a send.
    pub async fn start_amend(
        &self,
        id: &str,
        target: &str,
        content: Option<Bytes>,
    ) -> Result<PendingSend, ClientError> {
        self.enqueue(id, frames::amend(id, target, content)).await
    }

    async fn enqueue(&self, id: &str, frame: Bytes) -> Result<PendingSend, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.cmd(Cmd::Send {
            id: id.to_string(),
            frame,
            accepted: tx,
        })
        .await?;
        rx.await
            .map_err(|_| ClientError::Closed("the client stopped".into()))?
    }

    /// Acknowledges everything up to `seq` on `subject` (with `auto_ack` off;
    /// dropped while disconnected: the next Hello's cursors say as much).
    pub async fn ack(&self, subject: &str, seq: u64) -> Result<(), ClientError> {
        let frame = frames::ack([(subject.to_string(), seq)]);
        self.cmd(Cmd::Frame(None, frame)).await
    }

    /// A delivered or read receipt for `message` (kept while disconnected, written
    /// after the next Welcome).
    pub async fn receipt(&self, kind: ReceiptKind, message: &Message) -> Result<(), ClientError> {
        let key = format!("receipt {kind:?} {} {}", message.subject, message.seq);
        self.cmd(Cmd::Frame(Some(key), frames::receipt(kind, message)))
            .await
    }

    /// Marks a conversation read up to `seq` (0: its newest) on every device (kept
    /// while disconnected, the latest mark per conversation, written after the next
    /// Welcome).
    pub async fn mark_read(&self, conversation: To<'_>, seq: u64) -> Result<(), ClientError> {
        let key = match conversation {
            To::User(u) => format!("read user {u}"),
            To::Group(g) => format!("read group {g}"),
        };
        self.cmd(Cmd::Frame(Some(key), frames::mark_read(conversation, seq)))
            .await
    }

    /// Says this user is (no longer) typing (live only; dropped while disconnected).
    pub async fn typing(&self, to: To<'_>, typing: bool) -> Result<(), ClientError> {
        self.cmd(Cmd::Frame(None, frames::typing(to, typing))).await
    }

    /// Follows these users' presence, now and after every reconnect.
    pub async fn watch(&self, users: &[&str]) -> Result<(), ClientError> {
        self.cmd(Cmd::Watch(frames::watch(users))).await
    }

    /// A page of the conversation list (pinned first, then the most recent; `offset`
    /// skips that many), from the message service when connected. Kept in the state
    /// file; while not connected (or when the connection drops before the answer) the
    /// kept list answers, marked [`ConversationPage::cached`]. Without a state file
    /// that is `CLOSED`.
    pub async fn conversations(
        &self,
        offset: u32,
        limit: u32,
    ) -> Result<ConversationPage, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.cmd(Cmd::Conversations {
            offset,
            limit,
            reply: tx,
        })
        .await?;
        rx.await
            .map_err(|_| ClientError::Closed("the client stopped".into()))?
    }

    /// Ids of the sends in the outbox (not answered yet), in order.
    pub async fn pending_sends(&self) -> Result<Vec<String>, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.cmd(Cmd::Outbox(tx)).await?;
        rx.await
            .map_err(|_| ClientError::Closed("the client stopped".into()))
    }

    /// The local UDP address QUIC sends from now (`None` off QUIC): it changes with
    /// [`Handle::network_changed`].
    pub async fn local_address(&self) -> Result<Option<std::net::SocketAddr>, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.cmd(Cmd::LocalAddress(tx)).await?;
        rx.await
            .map_err(|_| ClientError::Closed("the client stopped".into()))
    }

    /// Drops the connection and connects again at once (say, after the app's
    /// settings changed); unanswered sends go again with their ids.
    pub async fn reconnect(&self) -> Result<(), ClientError> {
        self.cmd(Cmd::Reconnect).await
    }

    /// The device's network changed or came back: reconnect now if waiting, and
    /// start the backoff over.
    pub async fn network_changed(&self) -> Result<(), ClientError> {
        self.cmd(Cmd::NetworkChanged).await
    }
}

/// Frames waiting for the writer, at most: the session's send window, acks, probes.
const WRITE_QUEUE: usize = 256;

/// The current connection.
struct Live {
    attempt: u64,
    link: Link,
    writer: mpsc::Sender<Bytes>,
    write_task: tokio::task::JoinHandle<Result<(), ClientError>>,
    transport: TransportKind,
    /// QUIC: the endpoint, moved to a new socket when the network changes.
    endpoint: Option<quinn::Endpoint>,
}

type Opened = Result<(RawReader, RawWriter), ClientError>;

struct Driver {
    session: Session,
    endpoints: Vec<Endpoint>,
    opts: ClientOptions,
    events: mpsc::Sender<Event>,
    cmds: mpsc::Receiver<Cmd>,
    live: Option<Live>,
    opening: Option<(u64, tokio::task::JoinHandle<Opened>)>,
    /// The app's waiters for answers, by send id.
    waiters: HashMap<String, oneshot::Sender<SendResult>>,
    /// Answers received and not yet handed on (the session decides when).
    results: HashMap<String, SendResult>,
    /// The presence watch list, re-sent after every Welcome.
    watch: Option<Bytes>,
    /// The message being handed to the session.
    current: Option<Message>,
    stats: Arc<Stats>,
    state: Option<DeviceState>,
    /// One UDP endpoint and the session tickets, across QUIC connections.
    quic: crate::transport::QuicContext,
    /// Conversation list requests on the current connection, by request id.
    lists: HashMap<u64, ListWaiter>,
    next_request: u64,
}

impl Driver {
    async fn run(mut self) {
        loop {
            if !self.apply().await {
                break;
            }
            let deadline = self.session.poll_timeout();
            tokio::select! {
                _ = sleep_until(deadline) => self.session.handle_timeout(Instant::now()),
                (attempt, opened) = join_opening(self.opening.as_mut()) => {
                    self.opening = None;
                    self.opened(attempt, opened);
                }
                frame = next_frame(self.live.as_mut()) => match frame {
                    Ok(kind) => {
                        if !self.frame(kind).await {
                            break;
                        }
                    }
                    Err(e) => self.ended(e),
                },
                cmd = self.cmds.recv() => match cmd {
                    Some(Cmd::Close) | None => {
                        // Closed properly, so the gateway frees the connection now
                        // rather than after its idle timeout.
                        if let Some(live) = self.live.take() {
                            close(live).await;
                        }
                        self.session.close();
                        self.apply().await;
                        break;
                    }
                    Some(c) => {
                        if !self.command(c).await {
                            break;
                        }
                    }
                },
            }
        }
        if let Some((_, task)) = self.opening.take() {
            task.abort();
        }
        if let Some(live) = self.live.take() {
            close(live).await;
        }
    }

    fn opened(&mut self, attempt: u64, opened: Opened) {
        let now = Instant::now();
        match opened {
            Ok((reader, writer)) => {
                let transport = match reader {
                    RawReader::Quic(..) => TransportKind::Quic,
                    RawReader::Ws(_) => TransportKind::WebSocket,
                };
                let (wtx, wrx) = mpsc::channel(WRITE_QUEUE);
                let endpoint = writer.quic_endpoint();
                self.live = Some(Live {
                    endpoint,
                    attempt,
                    link: Link::new(reader, self.opts.max_frame_bytes),
                    writer: wtx,
                    write_task: tokio::spawn(write_all(writer, wrx)),
                    transport,
                });
                self.session.opened(attempt, now);
            }
            Err(e) => self.session.failed(attempt, None, e.to_string(), now),
        }
    }

    fn ended(&mut self, e: Ended) {
        self.lists_from_cache();
        if let Some(live) = self.live.take() {
            let attempt = live.attempt;
            tokio::spawn(close(live));
            self.session
                .failed(attempt, e.code.as_deref(), e.reason, Instant::now());
        }
    }

    /// Carries out an app command; false once the app dropped its events.
    async fn command(&mut self, c: Cmd) -> bool {
        match c {
            Cmd::Send {
                id,
                frame,
                accepted,
            } => {
                let (tx, rx) = oneshot::channel();
                let answer = match self.session.send(id.clone(), frame) {
                    Ok(()) => {
                        self.waiters.insert(id, tx);
                        Ok(PendingSend { rx })
                    }
                    Err(refused) => Err(ClientError::Refused {
                        code: refused.code().into(),
                        message: refused.to_string(),
                    }),
                };
                // The outbox entry is saved before the app hears it was taken.
                let alive = self.apply().await;
                let _ = accepted.send(answer);
                return alive;
            }
            Cmd::Frame(key, f) => self.session.control(key, f),
            Cmd::Conversations {
                offset,
                limit,
                reply,
            } => {
                if self.session.connected().is_some() && self.live.is_some() {
                    self.next_request += 1;
                    let id = self.next_request;
                    self.put(frames::list_conversations(id, offset, limit));
                    self.lists.insert(
                        id,
                        ListWaiter {
                            offset,
                            limit,
                            reply,
                        },
                    );
                } else {
                    let _ = reply.send(self.cached_conversations(offset, limit));
                }
            }
            Cmd::Watch(f) => {
                self.watch = Some(f.clone());
                self.write(f);
            }
            Cmd::NetworkChanged => {
                // QUIC moves to a new socket (a new local address and port, as after a
                // switch from Wi-Fi to cellular): the connection migrates, no new
                // session. A waiting reconnect starts now, with the backoff reset.
                if let Some(e) = self.live.as_ref().and_then(|l| l.endpoint.clone())
                    && let Err(err) = rebind(&e)
                {
                    tracing::warn!(error = %err, "could not move QUIC to a new socket");
                }
                self.session.network_up(Instant::now());
            }
            Cmd::Outbox(reply) => {
                let _ = reply.send(self.session.outbox().map(str::to_string).collect());
            }
            Cmd::LocalAddress(reply) => {
                let addr = self
                    .live
                    .as_ref()
                    .and_then(|l| l.endpoint.as_ref()?.local_addr().ok());
                let _ = reply.send(addr);
            }
            Cmd::Reconnect => {
                self.ended(Ended {
                    code: None,
                    reason: "reconnect asked for by the app".into(),
                });
                self.session.network_up(Instant::now());
            }
            Cmd::Close => {}
        }
        true
    }

    /// Writes on the connection if it has reached Welcome.
    fn write(&mut self, frame: Bytes) {
        if self.session.connected().is_some() {
            self.put(frame);
        }
    }

    /// Queues a frame for the writer. A writer this far behind means a stalled
    /// connection: it is given up (what it held is re-sent on the next), never a
    /// frame dropped quietly.
    fn put(&mut self, frame: Bytes) {
        let Some(live) = &self.live else { return };
        if live.writer.try_send(frame).is_err() {
            self.ended(Ended {
                code: None,
                reason: "the connection stopped taking writes".into(),
            });
        }
    }

    /// Hands a frame to the session; false once the app dropped its events.
    async fn frame(&mut self, kind: pb::server_frame::Kind) -> bool {
        use pb::server_frame::Kind;
        let Some(attempt) = self.live.as_ref().map(|l| l.attempt) else {
            return true;
        };
        let now = Instant::now();
        let incoming = match kind {
            Kind::Welcome(w) => {
                let w = welcome_of(w);
                if let Some(live) = &mut self.live {
                    live.link.start_deliveries(w.delivery_streams);
                }
                let cursors = w.cursors.clone();
                self.session
                    .received(attempt, Incoming::Welcome { cursors }, now);
                if !self.apply().await {
                    return false;
                }
                return self.welcomed(w).await;
            }
            Kind::Deliver(d) => return self.deliver(attempt, d.messages).await,
            Kind::SendResult(r) => {
                let (id, result) = send_result_of(r);
                self.results.insert(id.clone(), result.clone());
                Incoming::SendResult { id, answer: result }
            }
            Kind::ConversationList(l) => {
                self.listed(l);
                Incoming::Other
            }
            Kind::GoAway(g) => Incoming::GoAway {
                reason: g.reason,
                reconnect_after: Duration::from_millis(u64::from(g.reconnect_after_ms)),
            },
            Kind::Error(e) => Incoming::Error {
                code: code_name(e.code),
                message: e.message,
                fatal: e.fatal,
            },
            other => {
                if let Some(ev) = plain_event(other)
                    && self.events.send(ev).await.is_err()
                {
                    return false;
                }
                Incoming::Other
            }
        };
        self.session.received(attempt, incoming, now);
        true
    }

    /// After Welcome: the app hears it, and the watch list goes out again.
    async fn welcomed(&mut self, welcome: Welcome) -> bool {
        let Some(live) = &self.live else { return true };
        if self.session.connected().is_none() {
            return true;
        }
        let transport = live.transport;
        if let Some(w) = self.watch.clone() {
            self.write(w);
        }
        self.events
            .send(Event::Connected { transport, welcome })
            .await
            .is_ok()
    }

    async fn deliver(&mut self, attempt: u64, messages: Vec<pb::Message>) -> bool {
        let now = Instant::now();
        let mut acks: BTreeMap<String, u64> = BTreeMap::new();
        for m in messages {
            self.stats.wire_messages.fetch_add(1, Ordering::Relaxed);
            let (subject, seq) = (m.subject.clone(), m.seq);
            self.current = Some(to_message(m));
            self.session.received(
                attempt,
                Incoming::Message {
                    subject: subject.clone(),
                    seq,
                },
                now,
            );
            if !self.apply().await {
                return false;
            }
            let a = acks.entry(subject).or_default();
            *a = (*a).max(seq);
        }
        if self.opts.auto_ack && !acks.is_empty() {
            self.write(frames::ack(acks));
        }
        true
    }

    /// Carries out the session's actions; false once the app dropped its events or
    /// the session stopped for good.
    async fn apply(&mut self) -> bool {
        while let Some(a) = self.session.poll_action() {
            match a {
                Action::Open { attempt, route } => self.open(attempt, route),
                Action::Write(o) => self.write_out(o),
                Action::Close { .. } => {
                    self.lists_from_cache();
                    if let Some(live) = self.live.take() {
                        tokio::spawn(close(live));
                    }
                    if let Some((_, task)) = self.opening.take() {
                        task.abort();
                    }
                }
                Action::Notify(n) => {
                    let stop = matches!(n, Notice::Disconnected { retry_at: None, .. });
                    if let Some(ev) = self.notice(n)
                        && self.events.send(ev).await.is_err()
                    {
                        return false;
                    }
                    if stop {
                        return false;
                    }
                }
                Action::Save(change) => {
                    if let Some(Err(e)) = self.state.as_mut().map(|s| s.apply(&change)) {
                        // The app must know: what it does now may not survive a restart.
                        let ev = Event::Error {
                            code: "STATE".into(),
                            message: e.to_string(),
                        };
                        if self.events.send(ev).await.is_err() {
                            return false;
                        }
                    }
                }
            }
        }
        true
    }

    fn notice(&mut self, n: Notice) -> Option<Event> {
        match n {
            Notice::Connected { .. } => None, // told with its Welcome
            Notice::Disconnected { reason, retry_at } => Some(Event::Disconnected {
                reason,
                retry_in: retry_at.map(|t| t.saturating_duration_since(Instant::now())),
            }),
            Notice::Deliver { .. } => self.current.take().map(Event::Message),
            Notice::Duplicate { .. } => {
                self.current = None;
                self.stats
                    .duplicates_dropped
                    .fetch_add(1, Ordering::Relaxed);
                None
            }
            Notice::Send {
                id,
                status: SendStatus::Pending,
            } => Some(Event::SendPending { id }),
            Notice::Send {
                id,
                status: SendStatus::Answered(answer),
            } => {
                let result = self.results.remove(&id).unwrap_or(answer);
                match self.waiters.remove(&id) {
                    Some(w) => match w.send(result) {
                        Ok(()) => None,
                        Err(result) => Some(Event::SendResult { id, result }),
                    },
                    None => Some(Event::SendResult { id, result }),
                }
            }
            Notice::Error { code, message } => Some(Event::Error { code, message }),
        }
    }

    fn open(&mut self, attempt: u64, route: usize) {
        if let Some(live) = self.live.take() {
            tokio::spawn(close(live));
        }
        if let Some((_, task)) = self.opening.take() {
            task.abort();
        }
        let ep = self.endpoints[route].clone();
        let task = match ep.transport {
            TransportKind::Quic => {
                let connect = self.quic.connect(&ep, self.opts.zero_rtt);
                let stats = self.stats.clone();
                tokio::spawn(async move {
                    let (r, w, early) = connect.await?;
                    if early {
                        stats.zero_rtt_connects.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok((r, w))
                })
            }
            TransportKind::WebSocket => tokio::spawn(async move { connect_raw(&ep).await }),
        };
        self.opening = Some((attempt, task));
    }

    fn write_out(&mut self, o: Outgoing) {
        let frame = match o {
            Outgoing::Hello { cursors } => {
                let streams = match self.live.as_ref().map(|l| l.transport) {
                    Some(TransportKind::Quic) => self.opts.delivery_streams,
                    _ => 0,
                };
                frames::hello(&self.opts.token, &self.opts.device, &cursors, streams)
            }
            Outgoing::Send { frame, .. } => frame,
            Outgoing::Ping { nonce } => frames::ping(nonce),
            Outgoing::Control(frame) => frame,
        };
        self.put(frame);
    }
}

impl Driver {
    /// A page of the conversation list arrived: kept, and handed to its waiter.
    fn listed(&mut self, l: pb::ConversationList) {
        let Some(w) = self.lists.remove(&l.request_id) else {
            return;
        };
        if l.error == 0
            && let Some(state) = self.state.as_mut()
            && let Err(e) = state.save_conversations(&l.conversations, w.offset == 0 && !l.more)
        {
            tracing::warn!(error = %e, "could not keep the conversation list");
        }
        let _ = w.reply.send(crate::conversation_page(l));
    }

    /// The kept conversation list, for an app asking while not connected.
    fn cached_conversations(
        &self,
        offset: u32,
        limit: u32,
    ) -> Result<ConversationPage, ClientError> {
        let Some(state) = &self.state else {
            return Err(ClientError::Closed(
                "not connected, and no state file keeps the conversation list".into(),
            ));
        };
        let (page, more) = state.conversations(offset, limit)?;
        Ok(ConversationPage {
            conversations: page.into_iter().map(crate::to_conversation).collect(),
            more,
            cached: true,
        })
    }

    /// The connection is gone before the answers: the kept list answers instead.
    fn lists_from_cache(&mut self) {
        for (_, w) in std::mem::take(&mut self.lists) {
            let _ = w.reply.send(self.cached_conversations(w.offset, w.limit));
        }
    }
}

/// Moves a QUIC endpoint to a fresh UDP socket on the same kind of local address.
fn rebind(endpoint: &quinn::Endpoint) -> std::io::Result<()> {
    let local = endpoint.local_addr()?;
    let any: std::net::IpAddr = if local.is_ipv6() {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    };
    let ip = if local.ip().is_unspecified() {
        any
    } else {
        local.ip()
    };
    let socket = std::net::UdpSocket::bind((ip, 0))?;
    endpoint.rebind(socket)
}

async fn write_all(
    mut writer: RawWriter,
    mut frames: mpsc::Receiver<Bytes>,
) -> Result<(), ClientError> {
    while let Some(frame) = frames.recv().await {
        writer.write(frame).await?;
    }
    writer.close().await;
    Ok(())
}

/// Lets the writer send what it has, then close the transport.
async fn close(live: Live) {
    let Live {
        writer, write_task, ..
    } = live;
    drop(writer);
    if !write_task.is_finished() {
        let _ = tokio::time::timeout(Duration::from_secs(1), write_task).await;
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
        None => std::future::pending().await,
    }
}

async fn join_opening(o: Option<&mut (u64, tokio::task::JoinHandle<Opened>)>) -> (u64, Opened) {
    match o {
        Some((attempt, task)) => {
            let r = task
                .await
                .unwrap_or_else(|e| Err(ClientError::Connect(e.to_string())));
            (*attempt, r)
        }
        None => std::future::pending().await,
    }
}

/// The next frame of the connection, or how it ended (its writer failing included).
async fn next_frame(live: Option<&mut Live>) -> Result<pb::server_frame::Kind, Ended> {
    let Some(l) = live else {
        return std::future::pending().await;
    };
    tokio::select! {
        frame = l.link.next() => frame,
        written = &mut l.write_task, if !l.write_task.is_finished() => Err(Ended {
            code: None,
            reason: match written {
                Ok(Err(e)) => e.to_string(),
                _ => "writer stopped".into(),
            },
        }),
    }
}
