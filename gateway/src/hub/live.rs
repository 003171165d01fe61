//! Live delivery: one core NATS subscription per key with a connection here — a
//! user's inbox (with its notifications and typing), a group with a member here, a
//! watched user's presence — reference-counted in [`petrel_core::route::Registry`];
//! the leaf forwards only what this edge subscribed to. Each live message is written
//! to the edge cache and encoded into a Deliver frame once; the same bytes are queued
//! to every connection registered under the key.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use petrel_core::route::{Interest, Registry};
use petrel_core::subject::{self, Incoming};
use petrel_core::wire::{Delivery, decode_stored, encode_deliver};
use petrel_core::{GroupId, Seq, UserId};
use petrel_storage::EdgeStore;
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use super::jetstream::JetStream;

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

/// What a live subscription is for: a user's inbox or a group.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LiveKey {
    /// `live.msg.private.{user}`, for every connection of the user here.
    User(UserId),
    /// `live.msg.group.{group}`, for every connection here of a member.
    Group(GroupId),
    /// `presence.{user}`, for every connection here watching the user.
    Presence(UserId),
    /// `live.conv.{user}`, for every connection here following its conversation list.
    Conversations(UserId),
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
            Self::Conversations(u) => vec![subject::live_conversations(u)],
        }
    }
}

impl std::fmt::Display for LiveKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::User(u) => write!(f, "user {u}"),
            Self::Group(g) => write!(f, "group {g}"),
            Self::Presence(u) => write!(f, "presence of {u}"),
            Self::Conversations(u) => write!(f, "conversations of {u}"),
        }
    }
}

struct UserSub {
    task: tokio::task::JoinHandle<()>,
    ready: watch::Receiver<bool>,
}

/// The live subscriptions of this edge and the connections registered on them.
pub struct Live {
    hub: Arc<JetStream>,
    registry: Mutex<Registry<LiveKey, LiveHandle>>,
    subs: Mutex<HashMap<LiveKey, UserSub>>,
    store: Arc<EdgeStore>,
    overflows: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live").finish_non_exhaustive()
    }
}

/// Parses a re-published message (`live.msg.private.{u}`) into a delivery.
pub fn parse_live(msg: &async_nats::Message) -> Result<Delivery, String> {
    let stored_subject = subject::Subject::parse_live(msg.subject.as_str())
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

impl Live {
    /// Live delivery through `hub`'s leaf connection, caching into `store`.
    pub fn new(hub: Arc<JetStream>, store: Arc<EdgeStore>) -> Self {
        Self {
            hub,
            registry: Mutex::new(Registry::default()),
            subs: Mutex::new(HashMap::new()),
            store,
            overflows: Default::default(),
        }
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

    /// Publishes an ephemeral frame (typing) on core NATS; lost if the link is down.
    pub async fn signal(&self, subject: String, frame: bytes::Bytes) {
        if let Err(e) = self.hub.client().publish(subject, frame).await {
            debug!(error = %e, "publishing a typing event failed");
        }
    }

    /// After the leaf connection comes back (each `()` on `reconnects`), every
    /// connection re-checks its subjects: live messages re-published while it was
    /// down never arrived.
    pub async fn resync_on_reconnect(
        self: Arc<Self>,
        mut reconnects: mpsc::UnboundedReceiver<()>,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = reconnects.recv() => match r {
                    Some(()) => {
                        tracing::info!("connected to the leaf; connections re-check what they missed");
                        self.resync_all();
                    }
                    None => return,
                },
            }
        }
    }

    /// Asks the hub a question every `every` and makes every connection re-check what
    /// it missed when the hub answers again after it did not. The gateway's link to its
    /// leaf can stay up while the leaf's link to the hub drops (a hub node killed, the
    /// hub's majority away): re-publishes sent meanwhile never reach this edge, and
    /// nothing else would tell a connection whose subjects then go quiet.
    pub async fn resync_when_hub_returns(
        self: Arc<Self>,
        every: Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let mut reachable = true;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let answered = matches!(
                tokio::time::timeout(Duration::from_secs(2), self.hub.round_trip()).await,
                Ok(Ok(()))
            );
            if answered && !reachable {
                tracing::info!("the hub answers again; connections re-check what they missed");
                self.resync_all();
            }
            reachable = answered;
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
            match self.hub.client().subscribe(live).await {
                Ok(s) => subs.push(s),
                Err(e) => {
                    warn!(%key, error = %e, "cannot subscribe to live messages");
                    let _ = ready.send(true);
                    return;
                }
            }
        }
        let mut sub = futures::stream::select_all(subs);
        // Barrier: when the round trip is back, the hub knows this edge wants `live`.
        if let Err(e) = self.hub.round_trip().await {
            debug!(%key, error = %e, "hub round trip failed; live interest not confirmed");
        }
        let _ = ready.send(true);
        while let Some(msg) = sub.next().await {
            let incoming = Incoming::classify(msg.subject.as_str());
            if let Some(kind @ (Incoming::Typing | Incoming::Presence | Incoming::Conversation)) =
                incoming
            {
                // Ephemeral (typing, presence events, conversation updates): the frame
                // as its sender encoded it, to whoever is here now; a full queue drops
                // it (a conversation list is asked for again after a reconnect).
                let item = Arc::new(LiveItem {
                    subject: String::new(),
                    seq: Seq(0),
                    prev: Seq(0),
                    frame: msg.payload.clone(),
                    datagram: kind == Incoming::Typing,
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
            let cached = petrel_storage::Recent {
                seq: delivery.seq.0,
                prev: delivery.prev_seq.0,
                at_ms: petrel_core::time::unix_ms(),
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
