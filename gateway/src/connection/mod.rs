//! One client connection, whatever its transport.
//!
//! Each listener turns its accepted connection into a [`FrameReader`] and a
//! [`FrameWriter`] ([`transport`]) and hands them to [`Connection::run`]. The loop here
//! splits frames, feeds the [`Session`] state machine, carries out its actions
//! (`actions.rs`) and waits for the next thing to happen: a frame, a live message, a
//! fetched page (`delivery.rs`), a send's outcome, a timer. Errors end the task here,
//! logged once.

mod actions;
pub mod admission;
mod delivery;
pub mod transport;
mod visible;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use std::panic::AssertUnwindSafe;

use futures::{FutureExt, StreamExt};
use petrel_core::auth::Authenticator;
use petrel_core::session::{Action, Now, PublishOutcome, Session, SessionConfig};
use petrel_core::wire::{Command, decode_command, encode_reply};
use petrel_core::{ErrorCode, UserId};
use petrel_proto::{FrameDecoder, FrameError};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span};

pub use transport::{Datagrams, FrameReader, FrameWriter, NoDatagrams, TransportError};

use crate::hub::{CatchUp, JetStream, Live, LiveHandle, LiveItem, LiveKey, Signal};
use delivery::{Deliveries, WriteCfg};

/// What every connection shares.
#[derive(Debug)]
pub struct Shared {
    /// Session limits.
    pub session: Arc<SessionConfig>,
    /// Token verification.
    pub auth: Arc<Authenticator>,
    /// The token key set's refresher, when keys come from a JWKS.
    pub key_set: Option<Arc<crate::jwks::KeySetRefresher>>,
    /// The hub's JetStream API.
    pub jetstream: Arc<JetStream>,
    /// Reading what a connection missed (edge cache, then hub).
    pub catchup: Arc<CatchUp>,
    /// Live subscriptions.
    pub live: Arc<Live>,
    /// Where sends go: durable at the edge, then forwarded to the hub.
    pub outbox: crate::outbox::Outbox,
    /// Group membership (Redis).
    pub groups: crate::directory::Directory,
    /// The presence directory (Redis).
    pub presence: Arc<crate::directory::Presence>,
    /// Acked cursors on their way to Redis (for the push service).
    pub acks: Arc<crate::directory::Acks>,
    /// The push registry on the hub.
    pub registry: Arc<crate::hub::PushRegistry>,
    /// The message service (conversation lists, archived history, amends).
    pub messages: crate::hub::MessageService,
    /// Per-user connection counts and send budgets on this edge.
    pub users: Arc<admission::Users>,
    /// Frames queued toward one connection.
    pub send_queue_frames: usize,
    /// Bytes queued toward one connection (live messages) before it catches up instead.
    pub send_queue_bytes: usize,
    /// Idle timeout.
    pub idle_timeout: Duration,
    /// Longest a single write to a client may block before the connection is dropped
    /// as a reader that stopped reading.
    pub write_timeout: Duration,
    /// Live connection count.
    pub connections: AtomicU64,
    /// Prometheus metrics.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Datagrams received from clients (typing).
    pub datagrams_in: AtomicU64,
    /// Frames sent to clients as datagrams (typing).
    pub datagrams_out: AtomicU64,
}

impl Shared {
    /// Counts a connection refused by the admission budgets.
    pub fn count_refused(&self, refusal: admission::Refusal) {
        self.metrics
            .connections_refused
            .get_or_create(&crate::metrics::ReasonLabel {
                reason: refusal.as_str(),
            })
            .inc();
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A new connection id, unique in this process.
pub fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// One accepted connection.
pub struct Connection<R, W> {
    /// Process-unique id.
    pub id: u64,
    /// Transport name for logs.
    pub transport: &'static str,
    /// Peer address for logs.
    pub peer: std::net::SocketAddr,
    /// Reading half.
    pub reader: R,
    /// Writing half.
    pub writer: W,
    /// Shared state.
    pub shared: Arc<Shared>,
    /// Gateway shutdown.
    pub shutdown: CancellationToken,
    /// The unauthenticated slot it was admitted with, traded for an authenticated one
    /// at Hello.
    pub admission: Option<admission::Pending>,
}

/// How a connection ended.
enum End {
    /// The client finished cleanly.
    Client,
    /// The gateway closed it with this code.
    Closed(ErrorCode, String),
    /// The transport broke.
    Broken(String),
}

impl From<TransportError> for End {
    fn from(e: TransportError) -> Self {
        match e {
            TransportError::Stalled => End::Closed(ErrorCode::SlowConsumer, e.to_string()),
            TransportError::PeerClosed => End::Client,
            e => End::Broken(e.to_string()),
        }
    }
}

impl<R: FrameReader, W: FrameWriter> Connection<R, W> {
    /// Runs the connection to its end.
    pub async fn run(self) {
        let span = info_span!("conn", id = self.id, transport = self.transport, peer = %self.peer);
        async move {
            let shared = self.shared.clone();
            let transport = self.transport;
            let m = &shared.metrics;
            m.connects
                .get_or_create(&crate::metrics::TransportLabel { transport })
                .inc();
            let open = Open::count(&shared, transport);
            let (end, user) = Driver::new(self).run().await;
            drop(open);
            let reason = match &end {
                End::Client => "client",
                End::Closed(..) => "gateway",
                End::Broken(_) => "lost",
            };
            m.disconnects
                .get_or_create(&crate::metrics::DisconnectLabels { transport, reason })
                .inc();
            match end {
                End::Client => debug!(?user, "closed by client"),
                End::Closed(code, why) => {
                    if code == ErrorCode::SlowConsumer {
                        m.slow_consumers
                            .get_or_create(&crate::metrics::SlowLabel { action: "closed" })
                            .inc();
                    }
                    info!(?user, %code, %why, "closed by gateway")
                }
                End::Broken(e) => debug!(?user, error = %e, "connection lost"),
            }
        }
        .instrument(span)
        .await
    }
}

/// Counts a connection as open until dropped, whatever ends it (a panic included).
struct Open {
    shared: Arc<Shared>,
    transport: &'static str,
}

impl Open {
    fn count(shared: &Arc<Shared>, transport: &'static str) -> Self {
        shared.connections.fetch_add(1, Ordering::Relaxed);
        let label = crate::metrics::TransportLabel { transport };
        shared.metrics.connections.get_or_create(&label).inc();
        Self {
            shared: shared.clone(),
            transport,
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.shared.connections.fetch_sub(1, Ordering::Relaxed);
        let label = crate::metrics::TransportLabel {
            transport: self.transport,
        };
        self.shared.metrics.connections.get_or_create(&label).dec();
    }
}

/// This connection's end of the live queue: what [`Live`] fills, and the signals it
/// raises.
struct LiveQueue {
    /// Handed to [`Live`] at join (taken then).
    tx: Option<mpsc::Sender<Arc<LiveItem>>>,
    rx: mpsc::Receiver<Arc<LiveItem>>,
    lost: Arc<Signal>,
    groups_changed: Arc<Signal>,
    queued: Arc<AtomicUsize>,
}

/// Who the connection speaks for, once joined.
struct Joined {
    user: UserId,
    device: String,
    handle: LiveHandle,
}

/// A running connection's state; the loop is [`Driver::run`].
struct Driver<R: FrameReader, W> {
    id: u64,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    session: Session,
    decoder: FrameDecoder,
    reader: R,
    datagrams: Option<R::Datagrams>,
    writer: W,
    wcfg: WriteCfg,
    live: LiveQueue,
    deliveries: Deliveries,
    /// Outcomes of this connection's sends, from the outbox (QUEUED, STORED, ...).
    outcomes_tx: crate::outbox::Outcomes,
    outcomes: mpsc::UnboundedReceiver<(u64, PublishOutcome)>,
    joined: Option<Joined>,
    /// Until Hello: the unauthenticated slot; after it, the authenticated one.
    pending: Option<admission::Pending>,
    slot: Option<admission::Slot>,
    user_slot: Option<admission::UserSlot>,
    /// Users whose presence this connection follows (each one visible to its user).
    watched: HashSet<UserId>,
    /// It receives its user's conversation updates.
    following: bool,
    /// Whom this connection's user may see, as the directory last said.
    visible: visible::Visible,
    /// When to read the user's groups again (the directory was unreachable).
    groups_retry: Option<Instant>,
    /// What the session asked for, not yet carried out.
    actions: Vec<Action>,
    last_seen: Instant,
    peer_finished: bool,
}

impl<R: FrameReader, W: FrameWriter> Driver<R, W> {
    fn new(c: Connection<R, W>) -> Self {
        let shared = c.shared;
        let session = Session::new(
            c.id.to_string(),
            shared.session.clone(),
            shared.auth.clone(),
            Now::system(),
        );
        let (tx, rx) = mpsc::channel(shared.send_queue_frames);
        let (outcomes_tx, outcomes) = mpsc::unbounded_channel();
        Self {
            id: c.id,
            decoder: FrameDecoder::new(shared.session.max_frame_bytes),
            datagrams: c.reader.datagrams(),
            wcfg: WriteCfg {
                limit: shared.write_timeout,
                metrics: shared.metrics.transport(c.transport),
            },
            live: LiveQueue {
                tx: Some(tx),
                rx,
                lost: Arc::default(),
                groups_changed: Arc::default(),
                queued: Arc::default(),
            },
            deliveries: Deliveries::default(),
            outcomes_tx,
            outcomes,
            joined: None,
            pending: c.admission,
            slot: None,
            user_slot: None,
            watched: HashSet::new(),
            following: false,
            visible: visible::Visible::default(),
            groups_retry: None,
            actions: Vec::new(),
            last_seen: Instant::now(),
            peer_finished: false,
            session,
            reader: c.reader,
            writer: c.writer,
            shutdown: c.shutdown,
            shared,
        }
    }

    /// Feeds frames, carries out actions, waits for the next event, until the end;
    /// then leaves every live subscription and the presence directory. A panic in a
    /// step (a bug) is caught here: logged once, counted, and the client is closed with
    /// INTERNAL instead of losing its connection without a word.
    async fn run(mut self) -> (End, Option<String>) {
        let end = loop {
            match AssertUnwindSafe(self.step()).catch_unwind().await {
                Ok(None) => {}
                Ok(Some(end)) => break end,
                Err(panic) => break self.on_panic(panic_message(panic.as_ref())).await,
            }
        };
        if matches!(end, End::Client) {
            // Bounded: a client that closed may also have stopped reading.
            let _ = tokio::time::timeout(Duration::from_secs(1), self.writer.finish()).await;
        }
        self.leave().await;
        (end, self.joined.map(|j| j.user.to_string()))
    }

    /// One turn of the loop; `Some` once the connection has ended.
    async fn step(&mut self) -> Option<End> {
        self.feed_frames().await;
        if let Some(end) = self.client_finished() {
            return Some(end);
        }
        if let Err(end) = self.carry_out().await {
            return Some(end);
        }
        self.next_event().await.err()
    }

    async fn on_panic(&mut self, what: String) -> End {
        tracing::error!(panic = %what, "connection task panicked; closing it with INTERNAL");
        self.shared.metrics.connection_panics.inc();
        let why = "internal error".to_string();
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            self.writer.close(ErrorCode::Internal, &why),
        )
        .await;
        End::Closed(ErrorCode::Internal, why)
    }

    /// Hands buffered frames to the session while it has budget for them. A Hello whose
    /// token names a key not in the key set waits for the set to be reloaded first, so
    /// the first client of a rotated key is not refused.
    async fn feed_frames(&mut self) {
        while self.session.wants_frames() {
            match self.decoder.next_frame() {
                Ok(Some(frame)) => {
                    self.wcfg.metrics.frames_in.inc();
                    let out = match decode_command(frame) {
                        Ok(cmd) => {
                            if let (Command::Hello { token, .. }, Some(keys)) =
                                (&cmd, &self.shared.key_set)
                            {
                                keys.before_verify(token).await;
                            }
                            self.session.on_command(cmd, Now::system())
                        }
                        Err(e) => self.session.on_wire_error(e),
                    };
                    self.actions.extend(out);
                }
                Ok(None) => break,
                Err(e) => {
                    let code = match e {
                        FrameError::TooLarge { .. } => ErrorCode::FrameTooLarge,
                        _ => ErrorCode::BadFrame,
                    };
                    let out = self.session.on_bad_frame(code, e.to_string());
                    self.actions.extend(out);
                }
            }
        }
    }

    /// After the client finished its stream: a partial frame is an error; otherwise
    /// the connection ends once nothing is in flight.
    fn client_finished(&mut self) -> Option<End> {
        if !(self.peer_finished && self.session.wants_frames() && !self.session.is_closed()) {
            return None;
        }
        match self.decoder.finish() {
            Err(e) => {
                let out = self
                    .session
                    .on_bad_frame(ErrorCode::BadFrame, e.to_string());
                self.actions.extend(out);
                None
            }
            Ok(()) if self.session.inflight() == 0 => Some(End::Client),
            Ok(()) => None,
        }
    }

    /// Waits for the next thing to happen and takes it in.
    async fn next_event(&mut self) -> Result<(), End> {
        let idle_deadline = self.last_seen + self.shared.idle_timeout;
        let deadline = self
            .session
            .deadline()
            .map_or(idle_deadline, |d| d.min(idle_deadline));
        let reading = self.session.wants_frames() && !self.peer_finished;
        tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => {
                let out = self.session.shutdown(ErrorCode::GoingAway, "gateway shutting down");
                self.actions.extend(out);
            }
            _ = self.live.groups_changed.wait() => {
                self.groups_retry = Box::pin(self.refresh_groups()).await;
                // Who shares a group with whom may have changed too.
                self.visible.forget();
                Box::pin(self.recheck_watched()).await?;
            }
            _ = crate::sleep_until(self.groups_retry) => {
                self.groups_retry = Box::pin(self.refresh_groups()).await;
            }
            _ = self.live.lost.wait() => self.on_lost(),
            Some(reply) = self.deliveries.syncs.next(), if !self.deliveries.syncs.is_empty() => {
                self.write(encode_reply(&reply)).await?;
            }
            Some((f, result)) = self.deliveries.fetches.next(), if !self.deliveries.fetches.is_empty() => {
                self.on_fetched(f, result).await?;
            }
            Some(check) = self.deliveries.receipts.next(), if !self.deliveries.receipts.is_empty() => {
                self.on_receipt_checked(check).await;
            }
            Some((req, found)) = self.deliveries.originals.next(), if !self.deliveries.originals.is_empty() => {
                let out = self.session.on_original(req, found, Now::system());
                self.actions.extend(out);
            }
            Some((req, outcome)) = self.outcomes.recv() => {
                let out = self.session.on_published(req, outcome);
                self.actions.extend(out);
            }
            Some(item) = self.live.rx.recv() => self.on_live(item).await?,
            d = transport::next_datagram(self.datagrams.as_ref()) => self.on_datagram(&d),
            r = self.reader.recv(), if reading => self.on_read(r)?,
            _ = tokio::time::sleep_until(deadline.into()) => self.on_deadline(),
        }
        Ok(())
    }

    /// Bytes from the client.
    fn on_read(&mut self, r: Result<Option<bytes::Bytes>, TransportError>) -> Result<(), End> {
        match r {
            Ok(Some(data)) => {
                self.last_seen = Instant::now();
                self.wcfg.metrics.bytes_in.inc_by(data.len() as u64);
                self.decoder.push(&data);
            }
            Ok(None) => self.peer_finished = true,
            Err(TransportError::TooLarge) => {
                let out = self.session.on_bad_frame(
                    ErrorCode::FrameTooLarge,
                    format!("message exceeds {} bytes", self.decoder.max_frame_bytes()),
                );
                self.actions.extend(out);
            }
            Err(TransportError::NotBinary) => {
                let out = self.session.on_bad_frame(
                    ErrorCode::Protocol,
                    "text messages are not part of the protocol: send frames as binary".into(),
                );
                self.actions.extend(out);
            }
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }

    /// A datagram from the client: only typing travels unreliably; anything else is
    /// ignored (it needs the ordered stream).
    fn on_datagram(&mut self, d: &[u8]) {
        self.shared.datagrams_in.fetch_add(1, Ordering::Relaxed);
        let mut one = FrameDecoder::new(4096);
        one.push(d);
        if let Ok(Some(frame)) = one.next_frame()
            && let Ok(cmd @ Command::Typing { .. }) = decode_command(frame)
        {
            let out = self.session.on_command(cmd, Now::system());
            self.actions.extend(out);
        }
    }

    /// The session's timer (handshake, token expiry) or the idle timeout.
    fn on_deadline(&mut self) {
        let out = self.session.on_timeout(Now::system());
        self.actions.extend(out);
        if self.actions.is_empty() && self.last_seen.elapsed() >= self.shared.idle_timeout {
            let out = self.session.shutdown(ErrorCode::GoingAway, "idle timeout");
            self.actions.extend(out);
        }
    }

    /// Leaves every live subscription and the presence directory.
    async fn leave(&mut self) {
        let live = &self.shared.live;
        for u in &self.watched {
            live.leave(&LiveKey::Presence(u.clone()), self.id);
        }
        if let Some(j) = &self.joined {
            Box::pin(self.shared.presence.disconnected(&j.user, &j.device)).await;
            live.leave(&LiveKey::User(j.user.clone()), self.id);
            if self.following {
                live.leave(&LiveKey::Conversations(j.user.clone()), self.id);
            }
            for g in self.session.groups() {
                live.leave(&LiveKey::Group(g.clone()), self.id);
            }
        }
    }
}

/// What a caught panic said.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}
