//! One client connection, whatever its transport.
//!
//! Each transport module turns its accepted connection into a [`FrameReader`] and a
//! [`FrameWriter`] (bytes in, bytes out) and hands them to [`Connection::run`], which
//! splits frames, feeds the [`Session`] state machine and carries out its actions.
//! Errors end the task here, logged once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use petrel_core::ErrorCode;
use petrel_core::auth::Authenticator;
use petrel_core::delivery::{Fetch, Live, Order};
use petrel_core::session::{Action, Now, Session, SessionConfig};
use petrel_core::wire::{Delivery, Reply, decode_command, encode_deliver, encode_reply};
use petrel_proto::{FrameDecoder, FrameError};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::hub::{Hub, LiveHandle, LiveItem, LiveKey, Signal};

/// Messages asked of the hub per fetch (a resume or a hole is filled page by page,
/// each written before the next is fetched, so memory stays bounded).
const FETCH_PAGE: usize = 256;

/// History requests one connection may have in progress.
const MAX_SYNCS: usize = 4;

/// Bytes of message content per Deliver frame when writing fetched messages.
const DELIVER_FRAME_BUDGET: usize = 32 * 1024;

type FetchResult = (Fetch, Result<(Vec<Delivery>, bool), String>);

/// Writes with the write timeout; a client that stopped reading altogether is closed
/// with SLOW_CONSUMER (memory stays bounded either way, but its connection would
/// otherwise be held forever).
async fn write<W: FrameWriter>(
    w: &mut W,
    frame: Bytes,
    cfg: &WriteCfg,
) -> Result<(), TransportError> {
    write_on(w, None, frame, 1, cfg).await
}

/// How writes to one connection are bounded and counted.
struct WriteCfg {
    limit: Duration,
    metrics: crate::metrics::TransportMetrics,
}

/// [`write`] of `frames` frames on delivery stream `stream`, or on the control stream
/// for `None`.
async fn write_on<W: FrameWriter>(
    w: &mut W,
    stream: Option<usize>,
    data: Bytes,
    frames: u64,
    cfg: &WriteCfg,
) -> Result<(), TransportError> {
    let len = data.len() as u64;
    let sent = tokio::time::timeout(cfg.limit, async {
        match stream {
            Some(i) => w.send_delivery(i, data).await,
            None => w.send(data).await,
        }
    })
    .await;
    if let Ok(Ok(())) = sent {
        cfg.metrics.frames_out.inc_by(frames);
        cfg.metrics.bytes_out.inc_by(len);
    }
    match sent {
        Ok(r) => r,
        Err(_) => {
            w.abort(ErrorCode::SlowConsumer, "not reading: write timed out")
                .await;
            Err(TransportError::Stalled)
        }
    }
}

impl From<TransportError> for End {
    fn from(e: TransportError) -> Self {
        match e {
            TransportError::Stalled => End::Closed(ErrorCode::SlowConsumer, e.to_string()),
            e => End::Broken(e.to_string()),
        }
    }
}

/// Fetches `f` from the hub, after `delay` (a retry).
async fn fetch(hub: Arc<Hub>, f: Fetch, delay: Duration) -> FetchResult {
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let r = hub.fetch(&f.subject, f.after, FETCH_PAGE).await;
    (f, r)
}

/// Encodes fetched deliveries into Deliver frames of bounded size.
fn encode_pages(items: &[Delivery]) -> Vec<Bytes> {
    let mut frames = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, d) in items.iter().enumerate() {
        bytes += d.message.content.len() + 128;
        if bytes >= DELIVER_FRAME_BUDGET {
            frames.push(encode_deliver(&items[start..=i]));
            start = i + 1;
            bytes = 0;
        }
    }
    if start < items.len() {
        frames.push(encode_deliver(&items[start..]));
    }
    frames
}

/// Frames gathered from the live queue, one buffer per stream they go on, written
/// with one write each.
#[derive(Default)]
struct Batch {
    parts: Vec<(Option<usize>, BytesMut, u64)>,
    bytes: usize,
    /// When the hub stored each message in the batch (for the delivery latency).
    stored_at: Vec<std::time::SystemTime>,
}

impl Batch {
    fn push(&mut self, stream: Option<usize>, frame: &[u8]) {
        self.bytes += frame.len();
        match self.parts.iter_mut().find(|(s, _, _)| *s == stream) {
            Some((_, buf, n)) => {
                buf.extend_from_slice(frame);
                *n += 1;
            }
            None => self.parts.push((stream, BytesMut::from(frame), 1)),
        }
    }

    async fn write<W: FrameWriter>(
        self,
        w: &mut W,
        cfg: &WriteCfg,
        latency: &prometheus_client::metrics::histogram::Histogram,
    ) -> Result<(), TransportError> {
        for (stream, buf, frames) in self.parts {
            write_on(w, stream, buf.freeze(), frames, cfg).await?;
        }
        let now = std::time::SystemTime::now();
        for at in self.stored_at {
            if let Ok(d) = now.duration_since(at) {
                latency.observe(d.as_secs_f64());
            }
        }
        Ok(())
    }
}

/// Why reading from a transport failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The transport refused a message for its size (WebSocket message limit).
    #[error("message too large")]
    TooLarge,
    /// The connection broke.
    #[error("{0}")]
    Io(String),
    /// A write did not complete within the write timeout: the client stopped reading.
    #[error("client stopped reading (write timed out)")]
    Stalled,
}

/// Receives the client's byte stream.
pub trait FrameReader: Send {
    /// Next chunk of bytes; `None` when the client finished cleanly. Must be cancel-safe.
    fn recv(&mut self) -> impl Future<Output = Result<Option<Bytes>, TransportError>> + Send;
    /// The session to read unreliable datagrams from (QUIC, WebTransport); `None` on
    /// transports without them.
    fn datagrams(&self) -> Option<web_transport_quinn::Session> {
        None
    }
}

/// Sends bytes to the client.
pub trait FrameWriter: Send {
    /// Writes encoded frames.
    fn send(&mut self, data: Bytes) -> impl Future<Output = Result<(), TransportError>> + Send;
    /// Sends one encoded frame as an unreliable datagram, if the transport has them
    /// and it fits; false: send it on the stream instead.
    fn send_datagram(&mut self, _frame: Bytes) -> bool {
        false
    }
    /// Sets up to `n` delivery streams (see `quic`); returns how many this transport
    /// grants: none by default (everything on the one stream).
    fn grant_delivery_streams(&mut self, _n: u32) -> u32 {
        0
    }
    /// The delivery stream that carries `subject`; `None`: the control stream.
    fn delivery_stream(&self, _subject: &str) -> Option<usize> {
        None
    }
    /// Writes encoded Deliver frames on delivery stream `i`.
    fn send_delivery(
        &mut self,
        _i: usize,
        data: Bytes,
    ) -> impl Future<Output = Result<(), TransportError>> + Send {
        self.send(data)
    }
    /// Flushes what was written and closes with `code`.
    fn close(self, code: ErrorCode, reason: &str) -> impl Future<Output = ()> + Send;
    /// Closes at once with `code`, without waiting for what is unwritten (the client
    /// stopped reading).
    fn abort(&mut self, code: ErrorCode, reason: &str) -> impl Future<Output = ()> + Send;
}

/// What every connection shares.
#[derive(Debug)]
pub struct Shared {
    /// Session limits.
    pub session: Arc<SessionConfig>,
    /// Token verification.
    pub auth: Arc<Authenticator>,
    /// NATS wiring.
    pub hub: Arc<Hub>,
    /// Where sends go: durable at the edge, then forwarded to the hub.
    pub outbox: crate::outbox::Outbox,
    /// Group membership (Redis).
    pub groups: crate::groups::Directory,
    /// The presence directory (Redis).
    pub presence: Arc<crate::presence::Presence>,
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
}

/// Most bytes coalesced into one write when several frames are queued.
const MAX_BATCH: usize = 64 * 1024;

impl<R: FrameReader, W: FrameWriter> Connection<R, W> {
    /// Runs the connection to its end.
    pub async fn run(self) {
        let span = info_span!("conn", id = self.id, transport = self.transport, peer = %self.peer);
        async move {
            let shared = self.shared.clone();
            let transport = self.transport;
            let m = &shared.metrics;
            let label = crate::metrics::TransportLabel { transport };
            shared.connections.fetch_add(1, Ordering::Relaxed);
            m.connects.get_or_create(&label).inc();
            m.connections.get_or_create(&label).inc();
            let (end, user) = self.drive().await;
            shared.connections.fetch_sub(1, Ordering::Relaxed);
            m.connections.get_or_create(&label).dec();
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

    async fn drive(self) -> (End, Option<String>) {
        let Connection {
            id,
            transport,
            mut reader,
            mut writer,
            shared,
            shutdown,
            ..
        } = self;
        let mut session = Session::new(
            id.to_string(),
            shared.session.clone(),
            shared.auth.clone(),
            Now::system(),
        );
        let mut decoder = FrameDecoder::new(shared.session.max_frame_bytes);
        let datagrams = reader.datagrams();
        let wcfg = WriteCfg {
            limit: shared.write_timeout,
            metrics: shared.metrics.transport(transport),
        };
        let (live_tx, mut live_rx) = mpsc::channel::<Arc<LiveItem>>(shared.send_queue_frames);
        let lost = Arc::new(Signal::default());
        let groups_changed = Arc::new(Signal::default());
        let queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut order = Order::new();
        // Boxed: `FuturesUnordered` keeps a stub slot the size of its future type in
        // every connection, idle or not (measured with heaptrack: ~3 KB each unboxed).
        let mut fetches: FuturesUnordered<futures::future::BoxFuture<'static, FetchResult>> =
            FuturesUnordered::new();
        let mut syncs: FuturesUnordered<futures::future::BoxFuture<'static, Reply>> =
            FuturesUnordered::new();
        let mut live_tx = Some(live_tx);
        // Outcomes of this connection's sends, from the outbox (QUEUED, STORED, ...).
        let (outcomes_tx, mut outcomes) = mpsc::unbounded_channel();
        let mut joined: Option<petrel_core::UserId> = None;
        let mut my_handle: Option<LiveHandle> = None;
        let mut device = String::new();
        let mut watched: std::collections::HashSet<petrel_core::UserId> = Default::default();
        // When to read the user's groups again (the directory was unreachable).
        let mut groups_retry: Option<Instant> = None;
        let mut actions: Vec<Action> = Vec::new();
        let mut last_seen = Instant::now();
        let mut peer_finished = false;

        let end = 'conn: loop {
            // Hand over buffered frames while the session has budget for them.
            while session.wants_frames() {
                match decoder.next_frame() {
                    Ok(Some(frame)) => {
                        wcfg.metrics.frames_in.inc();
                        match decode_command(frame) {
                            Ok(cmd) => actions.extend(session.on_command(cmd, Now::system())),
                            Err(e) => actions.extend(session.on_wire_error(e)),
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let code = match e {
                            FrameError::TooLarge { .. } => ErrorCode::FrameTooLarge,
                            _ => ErrorCode::BadFrame,
                        };
                        actions.extend(session.on_bad_frame(code, e.to_string()));
                    }
                }
            }
            if peer_finished && session.wants_frames() && !session.is_closed() {
                match decoder.finish() {
                    Err(e) => {
                        actions.extend(session.on_bad_frame(ErrorCode::BadFrame, e.to_string()))
                    }
                    Ok(()) if session.inflight() == 0 => break End::Client,
                    Ok(()) => {}
                }
            }

            // Carry out what the session asked for. `Join` may produce more actions.
            let mut i = 0;
            while i < actions.len() {
                let action = actions[i].clone();
                i += 1;
                match action {
                    Action::Reply(reply) => {
                        count_reply(&shared.metrics, &reply);
                        if let Err(e) = write(&mut writer, encode_reply(&reply), &wcfg).await {
                            break 'conn e.into();
                        }
                    }
                    Action::Publish(req) => {
                        // Durable at the edge, then forwarded in order; the outcomes
                        // come back on `outcomes`.
                        shared.outbox.submit(req, outcomes_tx.clone()).await;
                    }
                    Action::Join(identity) => {
                        if let Some(tx) = live_tx.take() {
                            let handle = LiveHandle {
                                tx,
                                lost: lost.clone(),
                                groups_changed: groups_changed.clone(),
                                queued: queued.clone(),
                                max_bytes: shared.send_queue_bytes,
                            };
                            Box::pin(shared.hub.join(
                                &LiveKey::User(identity.user.clone()),
                                id,
                                handle.clone(),
                            ))
                            .await;
                            joined = Some(identity.user.clone());
                            device = identity.device.to_string();
                            Box::pin(shared.presence.connected(&identity.user, &device)).await;
                            groups_retry = Box::pin(refresh_groups(
                                &shared,
                                &mut session,
                                &identity.user,
                                id,
                                &handle,
                            ))
                            .await;
                            my_handle = Some(handle);
                            let granted = writer.grant_delivery_streams(session.delivery_streams());
                            session.grant_delivery_streams(granted);
                        }
                        // A cursor above everything stored on its subject comes from
                        // another incarnation of the stream: resume from what exists.
                        let claimed: Vec<(String, petrel_core::Seq)> =
                            session.cursors().map(|(s, q)| (s.to_string(), q)).collect();
                        for (subject, seq) in claimed {
                            // Bounded: with the hub away this must not hold up Welcome.
                            let checked = tokio::time::timeout(
                                Duration::from_secs(1),
                                Box::pin(shared.hub.last_seq(&subject)),
                            )
                            .await
                            .unwrap_or_else(|_| Err("timed out".into()));
                            match checked {
                                Ok(last) if seq.0 > last => {
                                    warn!(%subject, cursor = %seq, last, "cursor beyond the stream; resuming from its end");
                                    session.reset_cursor(&subject, petrel_core::Seq(last));
                                }
                                Ok(_) => {}
                                Err(e) => {
                                    debug!(%subject, error = %e, "could not check the cursor against the stream")
                                }
                            }
                        }
                        actions.extend(session.on_joined(Now::system()));
                        // Resume: what came after the client's cursors, before live.
                        for (subject, seq) in session.cursors() {
                            let f = order.resume(subject, seq);
                            fetches.push(Box::pin(fetch(shared.hub.clone(), f, Duration::ZERO)));
                        }
                    }
                    Action::Signal { subject, frame } => shared.hub.signal(subject, frame).await,
                    Action::Watch(users) => {
                        let Some(handle) = &my_handle else { continue };
                        let wanted: std::collections::HashSet<_> = users.iter().cloned().collect();
                        for u in watched.difference(&wanted) {
                            shared.hub.leave(&LiveKey::Presence(u.clone()), id);
                        }
                        for u in wanted.difference(&watched) {
                            Box::pin(shared.hub.join(
                                &LiveKey::Presence(u.clone()),
                                id,
                                handle.clone(),
                            ))
                            .await;
                        }
                        watched = wanted;
                        // Subscribed first, then the state now: no change falls between.
                        let states = futures::future::join_all(
                            users.iter().map(|u| shared.presence.state(u)),
                        )
                        .await;
                        let mut frames = BytesMut::new();
                        for (u, state) in users.iter().zip(states) {
                            frames.extend_from_slice(&petrel_core::wire::encode_presence(u, state));
                        }
                        if !frames.is_empty()
                            && let Err(e) = write_on(
                                &mut writer,
                                None,
                                frames.freeze(),
                                users.len() as u64,
                                &wcfg,
                            )
                            .await
                        {
                            break 'conn e.into();
                        }
                    }
                    Action::SaveCursors(cursors) => {
                        if let Some(identity) = session.identity() {
                            let device_key = format!("{}/{}", identity.user, identity.device);
                            for (subject, seq) in cursors {
                                if let Err(e) =
                                    shared.hub.store().save_cursor(&device_key, &subject, seq.0)
                                {
                                    warn!(error = %e, "saving cursor failed");
                                }
                            }
                        }
                    }
                    Action::Sync(req) => {
                        if syncs.len() >= MAX_SYNCS {
                            let busy = Reply::SyncBatch {
                                request_id: req.request_id,
                                subject: req.subject,
                                messages: Vec::new(),
                                more: false,
                                error: Some((
                                    ErrorCode::RateLimited,
                                    format!("at most {MAX_SYNCS} history requests at a time"),
                                )),
                            };
                            if let Err(e) = write(&mut writer, encode_reply(&busy), &wcfg).await {
                                break 'conn e.into();
                            }
                        } else {
                            let hub = shared.hub.clone();
                            syncs.push(Box::pin(async move {
                                let r = hub
                                    .history(
                                        &req.subject,
                                        req.newest_first,
                                        req.before,
                                        req.after,
                                        req.limit as usize,
                                    )
                                    .await;
                                let (messages, more, error) = match r {
                                    Ok((m, more)) => (m, more, None),
                                    Err(e) => {
                                        (Vec::new(), false, Some((ErrorCode::Unavailable, e)))
                                    }
                                };
                                Reply::SyncBatch {
                                    request_id: req.request_id,
                                    subject: req.subject,
                                    messages,
                                    more,
                                    error,
                                }
                            }));
                        }
                    }
                    Action::Close(code, why) => {
                        if joined.is_none()
                            && matches!(
                                code,
                                ErrorCode::Unauthenticated
                                    | ErrorCode::TokenExpired
                                    | ErrorCode::InvalidId
                            )
                        {
                            shared
                                .metrics
                                .auth_failures
                                .get_or_create(&crate::metrics::CodeLabel {
                                    code: code.as_str(),
                                })
                                .inc();
                        }
                        Box::pin(writer.close(code, &why)).await;
                        break 'conn End::Closed(code, why);
                    }
                }
            }
            actions.clear();

            let idle_deadline = last_seen + shared.idle_timeout;
            let deadline = session
                .deadline()
                .map_or(idle_deadline, |d| d.min(idle_deadline));
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    actions.extend(session.shutdown(ErrorCode::GoingAway, "gateway shutting down"));
                }
                _ = groups_changed.wait() => {
                    if let (Some(user), Some(handle)) = (&joined, &my_handle) {
                        groups_retry = Box::pin(refresh_groups(&shared, &mut session, user, id, handle)).await;
                    }
                }
                _ = sleep_until_opt(groups_retry) => {
                    if let (Some(user), Some(handle)) = (&joined, &my_handle) {
                        groups_retry = Box::pin(refresh_groups(&shared, &mut session, user, id, handle)).await;
                    }
                }
                _ = lost.wait() => {
                    // The live queue overflowed (a slow reader): catch up from the hub
                    // at the reader's pace instead of buffering without bound.
                    debug!("live queue overflowed; catching up from the hub");
                    shared
                        .metrics
                        .slow_consumers
                        .get_or_create(&crate::metrics::SlowLabel { action: "catch_up" })
                        .inc();
                    for f in order.lost() {
                        fetches.push(Box::pin(fetch(shared.hub.clone(), f, Duration::ZERO)));
                    }
                }
                Some(reply) = syncs.next(), if !syncs.is_empty() => {
                    if let Err(e) = write(&mut writer, encode_reply(&reply), &wcfg).await {
                        break e.into();
                    }
                }
                Some((f, result)) = fetches.next(), if !fetches.is_empty() => {
                    match result {
                        Ok((items, more)) => {
                            let fresh: Vec<Delivery> = items
                                .into_iter()
                                .filter(|d| order.on_fetched(&d.subject, d.seq))
                                .collect();
                            let stream = writer.delivery_stream(&f.subject);
                            for frame in encode_pages(&fresh) {
                                if let Err(e) = write_on(&mut writer, stream, frame, 1, &wcfg).await {
                                    break 'conn e.into();
                                }
                            }
                            if let Some(next) = order.fetch_done(&f.subject, more) {
                                fetches.push(Box::pin(fetch(shared.hub.clone(), next, Duration::ZERO)));
                            }
                        }
                        Err(e) => {
                            warn!(subject = %f.subject, after = %f.after, error = %e, "fetch from the hub failed; retrying");
                            let again = Fetch { after: order.last(&f.subject).unwrap_or(f.after), ..f };
                            fetches.push(Box::pin(fetch(shared.hub.clone(), again, Duration::from_secs(1))));
                        }
                    }
                }
                Some((req, outcome)) = outcomes.recv() => {
                    actions.extend(session.on_published(req, outcome));
                }
                Some(item) = live_rx.recv() => {
                    // Coalesce whatever else is queued into one write; each message
                    // goes through the delivery order (duplicates, holes, catch-up).
                    let mut batch = Batch::default();
                    let mut next = Some(item);
                    while let Some(item) = next.take() {
                        queued.fetch_sub(item.frame.len(), Ordering::AcqRel);
                        // Ephemeral (typing, presence): no sequence, written as it
                        // comes; typing as a datagram where the transport has them.
                        if item.seq.0 == 0 {
                            if !(item.datagram && writer.send_datagram(item.frame.clone())) {
                                batch.push(None, &item.frame);
                            } else {
                                shared.datagrams_out.fetch_add(1, Ordering::Relaxed);
                            }
                            if batch.bytes < MAX_BATCH {
                                next = live_rx.try_recv().ok();
                            }
                            continue;
                        }
                        match order.on_live(&item.subject, item.seq, item.prev) {
                            Live::Deliver => {
                                batch.push(writer.delivery_stream(&item.subject), &item.frame);
                                batch.stored_at.extend(item.stored_at);
                            }
                            Live::Skip => {}
                            Live::Fetch(f) => {
                                debug!(subject = %f.subject, after = %f.after, seq = %item.seq, "hole before a live message; fetching it");
                                fetches.push(Box::pin(fetch(shared.hub.clone(), f, Duration::ZERO)));
                            }
                        }
                        if batch.bytes < MAX_BATCH {
                            next = live_rx.try_recv().ok();
                        }
                    }
                    if let Err(e) = batch.write(&mut writer, &wcfg, &shared.metrics.delivery_latency).await {
                        break e.into();
                    }
                }
                Some(d) = next_datagram(datagrams.as_ref()) => {
                    // Only typing travels unreliably; anything else on a datagram is
                    // ignored (it needs the ordered stream).
                    shared.datagrams_in.fetch_add(1, Ordering::Relaxed);
                    let mut one = FrameDecoder::new(4096);
                    one.push(&d);
                    if let Ok(Some(frame)) = one.next_frame()
                        && let Ok(cmd @ petrel_core::wire::Command::Typing { .. }) = decode_command(frame)
                    {
                        actions.extend(session.on_command(cmd, Now::system()));
                    }
                }
                r = reader.recv(), if session.wants_frames() && !peer_finished => match r {
                    Ok(Some(data)) => {
                        last_seen = Instant::now();
                        wcfg.metrics.bytes_in.inc_by(data.len() as u64);
                        decoder.push(&data);
                    }
                    Ok(None) => peer_finished = true,
                    Err(TransportError::TooLarge) => {
                        actions.extend(session.on_bad_frame(
                            ErrorCode::FrameTooLarge,
                            format!("message exceeds {} bytes", decoder.max_frame_bytes()),
                        ));
                    }
                    Err(e) => break e.into(),
                },
                _ = tokio::time::sleep_until(deadline.into()) => {
                    actions.extend(session.on_timeout(Now::system()));
                    if actions.is_empty() && last_seen.elapsed() >= shared.idle_timeout {
                        actions.extend(session.shutdown(ErrorCode::GoingAway, "idle timeout"));
                    }
                }
            }
        };
        for u in &watched {
            shared.hub.leave(&LiveKey::Presence(u.clone()), id);
        }
        if let Some(user) = &joined {
            Box::pin(shared.presence.disconnected(user, &device)).await;
            shared.hub.leave(&LiveKey::User(user.clone()), id);
            for g in session.groups() {
                shared.hub.leave(&LiveKey::Group(g.clone()), id);
            }
        }
        (end, joined.map(|u| u.to_string()))
    }
}

/// Reads `user`'s groups from the directory and brings the session and the live
/// subscriptions in line: joins groups added (delivery from now on; a Hello cursor,
/// if any, was resumed), leaves groups removed. Returns when to try again if the
/// directory could not be read.
async fn refresh_groups(
    shared: &Shared,
    session: &mut Session,
    user: &petrel_core::UserId,
    id: u64,
    handle: &LiveHandle,
) -> Option<Instant> {
    if !shared.groups.configured() {
        return None;
    }
    let read = tokio::time::timeout(Duration::from_secs(1), shared.groups.user_groups(user)).await;
    let groups = match read {
        Ok(Ok(g)) => g,
        Ok(Err(e)) => {
            warn!(%user, error = %e, "cannot read the user's groups; trying again in 5 s");
            return Some(Instant::now() + GROUPS_RETRY);
        }
        Err(_) => {
            warn!(%user, "reading the user's groups timed out; trying again in 5 s");
            return Some(Instant::now() + GROUPS_RETRY);
        }
    };
    let (added, removed) = session.set_groups(groups);
    for g in removed {
        debug!(group = %g, "no longer a member; leaving the group");
        shared.hub.leave(&LiveKey::Group(g), id);
    }
    for g in added {
        debug!(group = %g, "member; joining the group");
        shared
            .hub
            .join(&LiveKey::Group(g), id, handle.clone())
            .await;
    }
    None
}

/// Counts a SendResult by its outcome.
fn count_reply(m: &crate::metrics::Metrics, reply: &Reply) {
    use petrel_core::wire::SendStatus;
    let Reply::SendResult { status, .. } = reply else {
        return;
    };
    let (result, reason) = match status {
        SendStatus::Stored { .. } => ("stored", ""),
        SendStatus::Queued { .. } => ("queued", ""),
        SendStatus::Rejected { code, .. } => ("rejected", code.as_str()),
    };
    m.sends
        .get_or_create(&crate::metrics::SendLabels { result, reason })
        .inc();
}

/// How soon to read a user's groups again after the directory failed.
const GROUPS_RETRY: Duration = Duration::from_secs(5);

/// The next datagram from the client; never ready without datagrams or once the
/// session is over (the stream reader reports that).
async fn next_datagram(session: Option<&web_transport_quinn::Session>) -> Option<Bytes> {
    match session {
        Some(s) => match s.read_datagram().await {
            Ok(d) => Some(d),
            Err(_) => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

enum End {
    Client,
    Closed(ErrorCode, String),
    Broken(String),
}
