//! The gateway's side of NATS: publishing sends to JetStream on the hub and
//! subscribing to the live re-publish of each connected user's inbox.
//!
//! Everything goes through the local leaf node. One core NATS subscription per user
//! with at least one device connected here, and one per group with a member connected
//! here (reference-counted in
//! [`petrel_core::route::Registry`]); the leaf forwards only what this edge subscribed
//! to. Each live message is encoded into a Deliver frame once and the same bytes are
//! queued to every device of the user. [`Hub::fetch`] reads a subject's messages after
//! a sequence from the hub's stream, for resumes and to fill holes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use futures::StreamExt;
use petrel_core::route::{Interest, Registry};
use petrel_core::session::{PublishOutcome, PublishRequest};
use petrel_core::wire::{Delivery, decode_stored, encode_deliver};
use petrel_core::{ErrorCode, GroupId, Seq, UserId, subject};
use petrel_storage::EdgeStore;
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

/// One live message, encoded once for every connection of its user.
#[derive(Debug)]
pub struct LiveItem {
    /// Stored subject.
    pub subject: String,
    /// Stream sequence.
    pub seq: Seq,
    /// Previous sequence on the subject (`Nats-Last-Sequence`).
    pub prev: Seq,
    /// The Deliver frame.
    pub frame: Bytes,
    /// May go as an unreliable datagram (typing).
    pub datagram: bool,
    /// When the hub stored it (`Nats-Time-Stamp`), for the delivery latency.
    pub stored_at: Option<std::time::SystemTime>,
}

/// The hub's storage time of a re-published message (`Nats-Time-Stamp`, RFC 3339).
pub fn stored_at(msg: &async_nats::Message) -> Option<std::time::SystemTime> {
    let v = msg.headers.as_ref()?.get("Nats-Time-Stamp")?;
    let t = time::OffsetDateTime::parse(v.as_str(), &time::format_description::well_known::Rfc3339)
        .ok()?;
    Some(t.into())
}

/// A flag with a wake-up, raised from anywhere and awaited by one connection: its
/// live queue overflowed (it then catches up from the hub), or its user's group
/// membership may have changed (it then re-reads it).
#[derive(Debug, Default)]
pub struct Signal {
    flag: AtomicBool,
    notify: tokio::sync::Notify,
}

impl Signal {
    /// Records a drop and wakes the connection.
    pub fn raise(&self) {
        self.flag.store(true, Ordering::Release);
        self.notify.notify_one();
    }

    /// Waits for a drop and clears the flag.
    pub async fn wait(&self) {
        loop {
            if self.flag.swap(false, Ordering::AcqRel) {
                return;
            }
            self.notify.notified().await;
        }
    }
}

/// How a connection receives live frames.
#[derive(Clone, Debug)]
pub struct LiveHandle {
    /// Bounded queue of live messages (bounded in count here, in bytes by `queued`).
    pub tx: mpsc::Sender<Arc<LiveItem>>,
    /// Raised when the queue overflowed.
    pub lost: Arc<Signal>,
    /// Raised when the user's group membership may have changed.
    pub groups_changed: Arc<Signal>,
    /// Bytes of frames in the queue; the connection subtracts what it takes out.
    pub queued: Arc<std::sync::atomic::AtomicUsize>,
    /// Most bytes the queue may hold.
    pub max_bytes: usize,
}

impl LiveHandle {
    /// Queues `item` unless that would pass the queue's count or byte bound.
    fn offer(&self, item: &Arc<LiveItem>) -> bool {
        let len = item.frame.len();
        let before = self.queued.fetch_add(len, Ordering::AcqRel);
        // One message always fits, however large, so a big message is not lost forever.
        if (before > 0 && before + len > self.max_bytes) || self.tx.try_send(item.clone()).is_err()
        {
            self.queued.fetch_sub(len, Ordering::AcqRel);
            return false;
        }
        true
    }
}

/// Stream holding the private and group messages.
pub const MESSAGE_STREAM: &str = "USER_MESSAGES";

/// What a live subscription is for: a user's inbox or a group.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LiveKey {
    /// `live.msg.private.{user}`, for every connection of the user here.
    User(UserId),
    /// `live.msg.group.{group}`, for every connection here of a member.
    Group(GroupId),
    /// `presence.{user}`, for every connection here watching the user.
    Presence(UserId),
}

impl LiveKey {
    /// What to subscribe: a user's inbox and notifications, or a group's messages.
    fn live_subjects(&self) -> Vec<String> {
        match self {
            Self::User(u) => vec![
                subject::live_private_inbox(u),
                subject::live_notifications(u),
                subject::typing_user(u),
            ],
            Self::Group(g) => vec![subject::live_group_subject(g), subject::typing_group(g)],
            Self::Presence(u) => vec![subject::presence_events(u)],
        }
    }
}

/// Stream holding system notifications.
pub const NOTIFICATION_STREAM: &str = "SYSTEM_NOTIFICATIONS";

/// The stream a stored subject lives in.
fn stream_for(subject: &str) -> &'static str {
    if subject.starts_with("notif.") {
        NOTIFICATION_STREAM
    } else {
        MESSAGE_STREAM
    }
}

impl std::fmt::Display for LiveKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::User(u) => write!(f, "user {u}"),
            Self::Group(g) => write!(f, "group {g}"),
            Self::Presence(u) => write!(f, "presence of {u}"),
        }
    }
}

struct UserSub {
    task: tokio::task::JoinHandle<()>,
    ready: watch::Receiver<bool>,
}

/// NATS wiring shared by all connections.
pub struct Hub {
    client: async_nats::Client,
    js: jetstream::Context,
    publish_timeout: Duration,
    publish_latency: prometheus_client::metrics::histogram::Histogram,
    registry: Mutex<Registry<LiveKey, LiveHandle>>,
    subs: Mutex<HashMap<LiveKey, UserSub>>,
    store: Arc<EdgeStore>,
    overflows: std::sync::atomic::AtomicU64,
    /// Messages fetched for resumes and holes, by source, and cache read errors.
    pub fetched: FetchCounters,
}

/// Where fetched messages came from.
#[derive(Debug, Default)]
pub struct FetchCounters {
    /// Served from the edge cache (`recent`).
    pub from_cache: std::sync::atomic::AtomicU64,
    /// Fetched from the hub's stream.
    pub from_hub: std::sync::atomic::AtomicU64,
    /// Corrupt or undecodable cache entries met (logged, skipped).
    pub cache_errors: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").finish_non_exhaustive()
    }
}

/// Parses a re-published message (`live.msg.private.{u}`) into a delivery.
pub fn parse_live(msg: &async_nats::Message) -> Result<Delivery, String> {
    let stored_subject = subject::stored_subject(msg.subject.as_str())
        .ok_or_else(|| format!("unexpected subject {}", msg.subject))?
        .to_string();
    let headers = msg
        .headers
        .as_ref()
        .ok_or("no headers (not a JetStream re-publish)")?;
    let num = |name: &str| -> Result<u64, String> {
        headers
            .get(name)
            .map(|v| v.as_str())
            .unwrap_or("0")
            .parse::<u64>()
            .map_err(|e| format!("{name}: {e}"))
    };
    let seq = num("Nats-Sequence")?;
    if seq == 0 {
        return Err("no Nats-Sequence header".into());
    }
    let prev = num("Nats-Last-Sequence")?;
    let message = decode_stored(&stored_subject, msg.payload.clone()).map_err(|e| e.to_string())?;
    Ok(Delivery {
        subject: stored_subject,
        seq: Seq(seq),
        prev_seq: Seq(prev),
        message,
    })
}

/// Bytes asked of the hub per fetch page (messages are at most 128 KiB).
const FETCH_PAGE_BYTES: usize = 1024 * 1024;

/// Content bytes in one history page, so that a page stays far below the clients'
/// frame limits (1 MiB) whatever the messages' sizes.
const HISTORY_PAGE_BYTES: usize = 512 * 1024;

/// Shortens a page to [`HISTORY_PAGE_BYTES`] (at least one message); true if it cut.
fn fit_page(items: &mut Vec<Delivery>) -> bool {
    let mut bytes = 0;
    for (i, d) in items.iter().enumerate() {
        bytes += d.message.content.len() + 128;
        if bytes > HISTORY_PAGE_BYTES && i > 0 {
            items.truncate(i);
            return true;
        }
    }
    false
}

impl Hub {
    /// Wraps a NATS client.
    pub fn new(
        client: async_nats::Client,
        domain: &str,
        publish_timeout: Duration,
        store: Arc<EdgeStore>,
        publish_latency: prometheus_client::metrics::histogram::Histogram,
    ) -> Self {
        let mut js = jetstream::with_domain(client.clone(), domain);
        js.set_timeout(publish_timeout);
        Self {
            client,
            js,
            publish_timeout,
            publish_latency,
            registry: Mutex::new(Registry::default()),
            subs: Mutex::new(HashMap::new()),
            store,
            overflows: Default::default(),
            fetched: Default::default(),
        }
    }

    /// Whether the connection to the leaf is up.
    pub fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Live subscriptions held (one per user with a device connected here, one per
    /// group with a member connected here).
    pub fn live_subscriptions(&self) -> usize {
        self.registry.lock().map(|r| r.keys()).unwrap_or(0)
    }

    /// Of those, the group subscriptions.
    pub fn group_subscriptions(&self) -> usize {
        self.subs
            .lock()
            .map(|s| s.keys().filter(|k| matches!(k, LiveKey::Group(_))).count())
            .unwrap_or(0)
    }

    /// Raises `groups_changed` on every connection registered under `key`.
    pub fn signal_groups_changed(&self, key: &LiveKey) {
        if let Ok(reg) = self.registry.lock() {
            for (_, h) in reg.targets(key) {
                h.groups_changed.raise();
            }
        }
    }

    /// Live messages dropped for a connection whose queue was full (each then caught
    /// up from the hub).
    pub fn live_overflows(&self) -> u64 {
        self.overflows.load(Ordering::Relaxed)
    }

    /// The edge cache.
    pub fn store(&self) -> &EdgeStore {
        &self.store
    }

    /// The edge cache, shared (for blocking work on another thread).
    pub fn store_handle(&self) -> Arc<EdgeStore> {
        self.store.clone()
    }

    /// Puts every copy of `req` on the wire, in order, and returns a future for the
    /// hub's acknowledgements. The outbox forwarder awaits this in acceptance order (so
    /// messages of one conversation reach the hub in order) and awaits the returned
    /// futures concurrently (so many sends are in flight; it bounds how many).
    pub async fn publish(
        &self,
        req: PublishRequest,
    ) -> impl Future<Output = (u64, PublishOutcome)> + Send + 'static {
        let id = req.req;
        let timeout = self.publish_timeout;
        let failed = |detail: String| PublishOutcome::Failed {
            code: ErrorCode::Unavailable,
            detail,
        };
        let started = std::time::Instant::now();
        let latency = self.publish_latency.clone();
        let sent = async {
            let mut acks = Vec::with_capacity(req.copies.len());
            for copy in &req.copies {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(async_nats::header::NATS_MESSAGE_ID, copy.msg_id.as_str());
                let ack = self
                    .js
                    .publish_with_headers(copy.subject.clone(), headers, req.payload.clone())
                    .await
                    .map_err(|e| failed(format!("publish to {}: {e}", copy.subject)))?;
                acks.push(ack);
            }
            Ok(acks)
        }
        .await;
        async move {
            let acks = match sent {
                Ok(v) => v,
                Err(outcome) => return (id, outcome),
            };
            let mut first = None;
            for ack in acks {
                match tokio::time::timeout(timeout, ack).await {
                    Ok(Ok(ack)) => {
                        latency.observe(started.elapsed().as_secs_f64());
                        first.get_or_insert((ack.sequence, ack.duplicate));
                    }
                    Ok(Err(e)) => {
                        return (id, failed(format!("hub did not store the message: {e}")));
                    }
                    Err(_) => return (id, failed("hub did not acknowledge in time".into())),
                }
            }
            let outcome = match first {
                Some((seq, duplicate)) => PublishOutcome::Stored {
                    seq: Seq(seq),
                    duplicate,
                },
                None => failed("nothing to publish".into()),
            };
            (id, outcome)
        }
    }

    /// Up to `limit` messages of `subject` after sequence `after`, oldest first; the
    /// flag says whether more remain. The edge cache answers when it holds an unbroken
    /// run starting right after `after` (each entry's `prev` is the one before); the
    /// hub's stream answers otherwise, and confirms where the cached run ends.
    pub async fn fetch(
        &self,
        subject: &str,
        after: Seq,
        limit: usize,
    ) -> Result<(Vec<Delivery>, bool), String> {
        let cached = self.cached_run(subject, after, limit);
        if let Some(last) = cached.last() {
            let more = if cached.len() == limit {
                true
            } else {
                // The cache may end before the stream does (nobody was subscribed here
                // for a while): ask the hub for the subject's last sequence.
                self.last_seq(subject).await? > last.seq.0
            };
            self.fetched
                .from_cache
                .fetch_add(cached.len() as u64, Ordering::Relaxed);
            return Ok((cached, more));
        }
        let (out, more) = self.fetch_from_hub(subject, after, limit).await?;
        self.fetched
            .from_hub
            .fetch_add(out.len() as u64, Ordering::Relaxed);
        Ok((out, more))
    }

    /// A page of history: oldest first after `after` (as a fetch: cache, then hub), or
    /// newest first before `before` (0: from the newest), from the hub. The flag says
    /// more may follow.
    pub async fn history(
        &self,
        subject: &str,
        newest_first: bool,
        before: Seq,
        after: Seq,
        limit: usize,
    ) -> Result<(Vec<Delivery>, bool), String> {
        if !newest_first {
            let (mut out, more) = self.fetch(subject, after, limit).await?;
            let cut = fit_page(&mut out);
            return Ok((out, more || cut));
        }
        // JetStream reads forward only, and a subject's messages are spread thinly
        // over a shared stream: read a window of stream sequences ending at `before`
        // (filtered to the subject, so only its messages travel), widening it until
        // it holds a page or reaches the start of the stream.
        let end = match before.0 {
            0 => self.last_seq(subject).await? + 1,
            b => b,
        };
        let mut window = (limit as u64).max(1) * 4;
        let (mut out, more) = loop {
            let start = end.saturating_sub(window).max(1);
            let mut found: Vec<Delivery> = Vec::new();
            let mut cursor = Seq(start - 1);
            loop {
                let (page, more) = self.fetch_from_hub(subject, cursor, 256).await?;
                let Some(last) = page.last().map(|d| d.seq) else {
                    break;
                };
                found.extend(page.into_iter().filter(|d| d.seq.0 < end));
                if !more || last.0 + 1 >= end {
                    break;
                }
                cursor = last;
            }
            if found.len() >= limit || start == 1 {
                let more = found.len() > limit || start > 1;
                let keep = found.len().saturating_sub(limit);
                let mut page: Vec<Delivery> = found.drain(keep..).collect();
                page.reverse();
                break (page, more);
            }
            window = window.saturating_mul(8);
        };
        self.fetched
            .from_hub
            .fetch_add(out.len() as u64, Ordering::Relaxed);
        let cut = fit_page(&mut out);
        Ok((out, more || cut))
    }

    /// The unbroken run of cached messages right after `after`.
    fn cached_run(&self, subject: &str, after: Seq, limit: usize) -> Vec<Delivery> {
        let mut out = Vec::new();
        let (entries, corrupt) = match self.store.recent_after(subject, after.0, limit) {
            Ok(v) => v,
            Err(e) => {
                self.fetched.cache_errors.fetch_add(1, Ordering::Relaxed);
                warn!(%subject, error = %e, "reading the edge cache failed; using the hub");
                return out;
            }
        };
        if let Some(e) = corrupt {
            self.fetched.cache_errors.fetch_add(1, Ordering::Relaxed);
            warn!(%subject, error = %e, "corrupt edge cache entry; the hub serves from there");
        }
        let mut prev = after.0;
        for r in entries {
            if r.prev != prev {
                break; // a hole in the cache: the hub fills it
            }
            match decode_stored(subject, r.payload) {
                Ok(message) => out.push(Delivery {
                    subject: subject.to_string(),
                    seq: Seq(r.seq),
                    prev_seq: Seq(r.prev),
                    message,
                }),
                Err(e) => {
                    self.fetched.cache_errors.fetch_add(1, Ordering::Relaxed);
                    warn!(%subject, seq = r.seq, error = %e, "undecodable edge cache entry");
                    break;
                }
            }
            prev = r.seq;
        }
        out
    }

    /// Publishes an ephemeral frame (typing) on core NATS; lost if the link is down.
    pub async fn signal(&self, subject: String, frame: bytes::Bytes) {
        if let Err(e) = self.client.publish(subject, frame).await {
            debug!(error = %e, "publishing a typing event failed");
        }
    }

    /// Tells every connection to re-check its subjects from what it has delivered, as
    /// after a lost live message: called when the hub is reachable again, since live
    /// re-publishes sent while the link was down never arrived.
    pub fn resync_all(&self) {
        if let Ok(reg) = self.registry.lock() {
            for (_, h) in reg.all() {
                h.lost.raise();
            }
        }
    }

    /// Looks for a message stored on `subject` under `Nats-Msg-Id` `msg_id` at or after
    /// `since_ms` (Unix ms): the outbox asks before retrying a send so old that the
    /// hub's duplicate window may have forgotten an earlier copy.
    pub async fn find_stored(
        &self,
        subject: &str,
        msg_id: &str,
        since_ms: u64,
    ) -> Result<Option<Seq>, String> {
        use jetstream::consumer::DeliverPolicy;
        let start_time =
            time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(since_ms) * 1_000_000)
                .map_err(|e| e.to_string())?;
        let (stream, consumer) = self
            .read_consumer(subject, DeliverPolicy::ByStartTime { start_time })
            .await?;
        let name = consumer.cached_info().name.clone();
        let mut pending = consumer.cached_info().num_pending as usize;
        let result = async {
            while pending > 0 {
                let mut batch = consumer
                    .batch()
                    .max_messages(pending.min(256))
                    .max_bytes(FETCH_PAGE_BYTES)
                    .expires(self.publish_timeout)
                    .messages()
                    .await
                    .map_err(|e| format!("reading {subject}: {e}"))?;
                let mut received = 0;
                while let Some(msg) = batch.next().await {
                    let Ok(msg) = msg else { break };
                    received += 1;
                    let info = msg.info().map_err(|e| format!("message info: {e}"))?;
                    pending = info.pending as usize;
                    let id = msg
                        .headers
                        .as_ref()
                        .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
                        .map(|v| v.as_str().to_string());
                    if id.as_deref() == Some(msg_id) {
                        return Ok(Some(Seq(info.stream_sequence)));
                    }
                }
                if received == 0 {
                    return Err(format!("reading {subject}: nothing came back"));
                }
            }
            Ok(None)
        }
        .await;
        if let Err(e) = stream.delete_consumer(&name).await {
            debug!(error = %e, "deleting the lookup consumer failed");
        }
        result
    }

    /// The message stream's duplicate window (how long the hub remembers a
    /// `Nats-Msg-Id`).
    pub async fn duplicate_window(&self) -> Result<Duration, String> {
        let mut stream = self
            .js
            .get_stream(MESSAGE_STREAM)
            .await
            .map_err(|e| format!("stream {MESSAGE_STREAM}: {e}"))?;
        let info = stream.info().await.map_err(|e| e.to_string())?;
        Ok(info.config.duplicate_window)
    }

    /// The last sequence stored on `subject` (0: none).
    pub async fn last_seq(&self, subject: &str) -> Result<u64, String> {
        use jetstream::stream::DirectGetErrorKind;
        let name = stream_for(subject);
        let stream = self
            .js
            .get_stream_no_info(name)
            .await
            .map_err(|e| format!("stream {name}: {e}"))?;
        match stream.direct_get_last_for_subject(subject).await {
            Ok(m) => Ok(m.sequence),
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(0),
            Err(e) => Err(format!("last message of {subject}: {e}")),
        }
    }

    /// A short-lived pull consumer reading `subject` of the message stream from
    /// `start` (no acks, in memory, gone after 30 s idle); callers delete it when done.
    async fn read_consumer(
        &self,
        subject: &str,
        start: jetstream::consumer::DeliverPolicy,
    ) -> Result<
        (
            jetstream::stream::Stream<()>,
            jetstream::consumer::PullConsumer,
        ),
        String,
    > {
        let name = stream_for(subject);
        let stream = self
            .js
            .get_stream_no_info(name)
            .await
            .map_err(|e| format!("stream {name}: {e}"))?;
        let consumer = stream
            .create_consumer(jetstream::consumer::pull::Config {
                filter_subject: subject.to_string(),
                deliver_policy: start,
                ack_policy: jetstream::consumer::AckPolicy::None,
                inactive_threshold: Duration::from_secs(30),
                memory_storage: true,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("creating a consumer on {subject}: {e}"))?;
        Ok((stream, consumer))
    }

    async fn fetch_from_hub(
        &self,
        subject: &str,
        after: Seq,
        limit: usize,
    ) -> Result<(Vec<Delivery>, bool), String> {
        use jetstream::consumer::DeliverPolicy;
        let (stream, consumer) = self
            .read_consumer(
                subject,
                DeliverPolicy::ByStartSequence {
                    start_sequence: after.0 + 1,
                },
            )
            .await?;
        let name = consumer.cached_info().name.clone();
        let pending = consumer.cached_info().num_pending as usize;
        let result = async {
            let mut out = Vec::new();
            if pending == 0 {
                return Ok((out, false));
            }
            let want = pending.min(limit);
            let mut batch = consumer
                .batch()
                .max_messages(want)
                // Bounded in bytes too, so a page of large messages stays small.
                .max_bytes(FETCH_PAGE_BYTES)
                .expires(self.publish_timeout)
                .messages()
                .await
                .map_err(|e| format!("fetching {subject}: {e}"))?;
            let mut prev = after;
            let mut more = pending > want;
            let mut received = 0;
            while let Some(msg) = batch.next().await {
                let msg = match msg {
                    Ok(m) => m,
                    // The byte bound ends a batch with a status; what came is a page.
                    Err(_) if received > 0 => {
                        more = true;
                        break;
                    }
                    Err(e) => return Err(format!("fetching {subject}: {e}")),
                };
                let info = msg.info().map_err(|e| format!("message info: {e}"))?;
                let seq = Seq(info.stream_sequence);
                more = info.pending > 0;
                match decode_stored(subject, msg.payload.clone()) {
                    Ok(message) => out.push(Delivery {
                        subject: subject.to_string(),
                        seq,
                        prev_seq: prev,
                        message,
                    }),
                    Err(e) => {
                        warn!(%subject, %seq, error = %e, "skipping an undecodable stored message")
                    }
                }
                prev = seq;
                received += 1;
                if received >= want {
                    break;
                }
            }
            Ok((out, more))
        }
        .await;
        // Ephemeral anyway (30 s inactivity); deleting now keeps the hub tidy.
        if let Err(e) = stream.delete_consumer(&name).await {
            debug!(error = %e, "deleting the fetch consumer failed");
        }
        result
    }

    /// Registers connection `conn` for live messages under `key`; returns once the
    /// subscription is known to the hub (or after a bounded wait if the hub is away).
    pub async fn join(self: &Arc<Self>, key: &LiveKey, conn: u64, handle: LiveHandle) {
        let mut ready = {
            let Ok(mut reg) = self.registry.lock() else {
                return;
            };
            let Ok(mut subs) = self.subs.lock() else {
                return;
            };
            if reg.join(key, conn, handle) == Interest::Subscribe {
                let (tx, rx) = watch::channel(false);
                let task = tokio::spawn(self.clone().forward(key.clone(), tx));
                subs.insert(key.clone(), UserSub { task, ready: rx });
            }
            match subs.get(key) {
                Some(s) => s.ready.clone(),
                None => return,
            }
        };
        if tokio::time::timeout(Duration::from_secs(5), ready.wait_for(|r| *r))
            .await
            .is_err()
        {
            warn!(%key, "live subscription not confirmed by the hub within 5 s; continuing");
        }
    }

    /// Unregisters `conn` from `key`; drops the subscription with the last connection.
    pub fn leave(&self, key: &LiveKey, conn: u64) {
        let Ok(mut reg) = self.registry.lock() else {
            return;
        };
        if reg.leave(key, conn) == Interest::Unsubscribe
            && let Ok(mut subs) = self.subs.lock()
            && let Some(sub) = subs.remove(key)
        {
            // Dropping the subscriber inside the task sends UNSUB to the leaf.
            sub.task.abort();
        }
    }

    /// Ends every live subscription and waits for their tasks, so that nothing holds
    /// the edge cache once the gateway has stopped.
    pub async fn shutdown(&self) {
        let tasks: Vec<_> = match self.subs.lock() {
            Ok(mut subs) => subs.drain().map(|(_, s)| s.task).collect(),
            Err(_) => return,
        };
        for t in tasks {
            t.abort();
            let _ = t.await;
        }
    }

    async fn forward(self: Arc<Self>, key: LiveKey, ready: watch::Sender<bool>) {
        let mut subs = Vec::new();
        for live in key.live_subjects() {
            match self.client.subscribe(live).await {
                Ok(s) => subs.push(s),
                Err(e) => {
                    warn!(%key, error = %e, "cannot subscribe to live messages");
                    let _ = ready.send(true);
                    return;
                }
            }
        }
        let mut sub = futures::stream::select_all(subs);
        // Barrier: a JetStream API round trip through the leaf. The leaf forwards our
        // SUB (as leaf interest) before the request on the same link, so when the
        // answer is back the hub knows this edge wants `live`.
        if let Err(e) = self.js.query_account().await {
            debug!(%key, error = %e, "hub round trip failed; live interest not confirmed");
        }
        let _ = ready.send(true);
        while let Some(msg) = sub.next().await {
            if msg.subject.as_str().starts_with("typing.")
                || msg.subject.as_str().starts_with("presence.")
            {
                // Ephemeral (typing, presence events): the frame as the sending edge
                // encoded it, to whoever is here now; a full queue drops it.
                let item = Arc::new(LiveItem {
                    subject: String::new(),
                    seq: Seq(0),
                    prev: Seq(0),
                    frame: msg.payload.clone(),
                    datagram: msg.subject.as_str().starts_with("typing."),
                    stored_at: None,
                });
                if let Ok(reg) = self.registry.lock() {
                    for (_, t) in reg.targets(&key) {
                        let _ = t.offer(&item);
                    }
                }
                continue;
            }
            let delivery = match parse_live(&msg) {
                Ok(d) => d,
                Err(e) => {
                    warn!(subject = %msg.subject, error = %e, "skipping undecodable live message");
                    continue;
                }
            };
            let received_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or_default();
            let cached = petrel_storage::Recent {
                seq: delivery.seq.0,
                prev: delivery.prev_seq.0,
                at_ms: received_ms,
                payload: msg.payload.clone(),
            };
            if let Err(e) = self.store.put_recent(&delivery.subject, &cached) {
                warn!(error = %e, "writing the edge cache failed");
            }
            let item = Arc::new(LiveItem {
                datagram: false,
                stored_at: stored_at(&msg),
                frame: encode_deliver(std::slice::from_ref(&delivery)),
                subject: delivery.subject,
                seq: delivery.seq,
                prev: delivery.prev_seq,
            });
            let targets: Vec<LiveHandle> = match self.registry.lock() {
                Ok(reg) => reg.targets(&key).map(|(_, h)| h.clone()).collect(),
                Err(_) => return,
            };
            for t in targets {
                // A full queue drops the message for that connection only; it notices
                // the hole and fetches it from the hub at its own pace.
                if !t.offer(&item) {
                    self.overflows.fetch_add(1, Ordering::Relaxed);
                    t.lost.raise();
                }
            }
        }
    }
}
