//! Store-and-forward: every Send is written to the edge's outbox (RocksDB) before it
//! is published, and one forwarder task publishes the outbox to the hub in acceptance
//! order until each message is stored.
//!
//! Durability is paid for only where it is promised: the append reaches RocksDB's
//! write-ahead log in the operating system (it survives `kill -9` of the gateway), and
//! the log is synced to disk (one fsync for everything so far) before any sender is
//! told QUEUED. A STORED answer needs no edge durability — the hub has the message —
//! so the common path has no fsync in it; an unanswered send lost with the machine is
//! re-sent by its client with the same id.
//!
//! Connections hand their sends to [`Outbox::submit`] with a channel for the
//! outcomes: QUEUED when the hub has not stored it within `queue_after` (or at once
//! while the hub is away), then the final STORED (or a rejection when the outbox is
//! full or the disk failed). The policy — what to publish, when to retry, when to say
//! QUEUED — is `petrel_core::outbox::Forwarder`; this module carries it out: group
//! commits to RocksDB, publishes through [`JetStream::publish`], removes stored entries, and
//! on start forwards whatever a crash or shutdown left.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use petrel_core::outbox::{Forwarder, ForwarderConfig, Step, needs_stream_check};
use petrel_core::session::{Copy, PublishOutcome, PublishRequest};
use petrel_core::{ErrorCode, Seq};
use petrel_storage::OutboxEntry;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use petrel_core::time::unix_ms;
use petrel_storage::EdgeStore;

use crate::hub::{JetStream, Live};

/// Where a connection receives the outcomes of its sends: `(req, outcome)`, possibly
/// two per send (QUEUED, then STORED). Unbounded because the forwarder must never
/// wait on a connection; what it holds is bounded by the outbox's size.
pub type Outcomes = mpsc::UnboundedSender<(u64, PublishOutcome)>;

/// Limits and timing of the outbox.
#[derive(Debug, Clone)]
pub struct OutboxConfig {
    /// The forwarding policy.
    pub forwarder: ForwarderConfig,
    /// Most messages waiting for the hub; more sends are rejected (UNAVAILABLE).
    pub max_messages: usize,
    /// Most payload bytes waiting for the hub.
    pub max_bytes: usize,
    /// The hub's duplicate window, used when the stream cannot be asked for it.
    pub duplicate_window: Duration,
}

/// Counters for `/readyz`.
#[derive(Debug, Default)]
pub struct OutboxStats {
    /// Messages waiting for the hub now.
    pub depth: AtomicU64,
    /// Sends answered QUEUED.
    pub queued: AtomicU64,
    /// Publishes that failed and will be retried.
    pub retries: AtomicU64,
    /// Messages found already stored by a stream check (not published again).
    pub found_stored: AtomicU64,
    /// Outbox entries that could not be read (logged, removed).
    pub corrupt: AtomicU64,
    /// Sends refused because the outbox was full or could not be written.
    pub refused: AtomicU64,
}

struct Submit {
    req: PublishRequest,
    reply: Outcomes,
}

/// The connections' side of the outbox.
#[derive(Clone, Debug)]
pub struct Outbox {
    tx: mpsc::Sender<Submit>,
    /// Counters.
    pub stats: Arc<OutboxStats>,
}

/// The forwarder, to be run by the gateway ([`Forwarding::run`]).
pub struct Forwarding {
    rx: mpsc::Receiver<Submit>,
    /// What a crash or shutdown left, oldest first.
    left: Vec<OutboxEntry>,
    stats: Arc<OutboxStats>,
    cfg: OutboxConfig,
    store: Arc<EdgeStore>,
    hub: Arc<JetStream>,
    /// Told to re-check every connection when the hub stores again.
    live: Arc<Live>,
}

/// Creates the outbox handle and its forwarder, reading what the outbox holds from an
/// earlier run (so `/readyz` shows it from the start).
pub fn outbox(
    store: Arc<EdgeStore>,
    hub: Arc<JetStream>,
    live: Arc<Live>,
    cfg: OutboxConfig,
) -> anyhow::Result<(Outbox, Forwarding)> {
    let (tx, rx) = mpsc::channel(1024);
    let stats = Arc::new(OutboxStats::default());
    let (left, errors) = store
        .outbox_load()
        .map_err(|e| anyhow::anyhow!("reading the outbox: {e}"))?;
    for e in errors {
        stats.corrupt.fetch_add(1, Ordering::Relaxed);
        warn!(error = %e, "dropping an unreadable outbox entry");
    }
    if !left.is_empty() {
        info!(
            count = left.len(),
            "sends left in the outbox will be forwarded"
        );
    }
    stats.depth.store(left.len() as u64, Ordering::Relaxed);
    Ok((
        Outbox {
            tx,
            stats: stats.clone(),
        },
        Forwarding {
            rx,
            left,
            stats,
            cfg,
            store,
            hub,
            live,
        },
    ))
}

impl Outbox {
    /// Hands a send to the forwarder; its outcomes arrive on `reply` under `req.req`.
    pub async fn submit(&self, req: PublishRequest, reply: Outcomes) {
        if let Err(mpsc::error::SendError(s)) = self.tx.send(Submit { req, reply }).await {
            let _ = s.reply.send((
                s.req.req,
                PublishOutcome::Failed {
                    code: ErrorCode::Unavailable,
                    detail: "gateway is shutting down".into(),
                },
            ));
        }
    }
}

/// The ordering lanes of an entry's copies.
fn lanes(entry: &OutboxEntry) -> Vec<u64> {
    entry
        .copies
        .iter()
        .map(|(subject, msg_id)| petrel_core::subject::ordering_lane(subject, msg_id))
        .collect()
}

/// One entry held in memory while it waits for the hub.
struct Pending {
    entry: OutboxEntry,
    /// The sender's connection and its request number, while it may still listen.
    reply: Option<(Outcomes, u64)>,
}

impl Pending {
    fn tell(&mut self, outcome: PublishOutcome) {
        if let Some((tx, req)) = &self.reply
            && tx.send((*req, outcome)).is_err()
        {
            self.reply = None; // the connection is gone
        }
    }
}

type Attempt = BoxFuture<'static, (u64, PublishOutcome)>;

impl Forwarding {
    /// Forwards until `shutdown`. What is not stored by then stays in the outbox and
    /// is forwarded on the next start.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let store = self.store.clone();
        let mut fwd = Forwarder::new(self.cfg.forwarder.clone());
        let mut pending: HashMap<u64, Pending> = HashMap::new();
        let mut bytes = 0usize;
        let window = self.duplicate_window().await;

        let (now, now_ms) = (Instant::now(), unix_ms());
        for entry in std::mem::take(&mut self.left) {
            let age = Duration::from_millis(now_ms.saturating_sub(entry.created_ms));
            fwd.push(
                entry.key,
                now.checked_sub(age).unwrap_or(now),
                lanes(&entry),
            );
            bytes += entry.payload.len();
            pending.insert(entry.key, Pending { entry, reply: None });
        }

        let mut attempts: FuturesUnordered<Attempt> = FuturesUnordered::new();
        let mut done: Vec<u64> = Vec::new();
        let mut batch: Vec<Submit> = Vec::new();
        loop {
            self.stats
                .depth
                .store(pending.len() as u64, Ordering::Relaxed);
            let steps = fwd.poll(Instant::now());
            let mut synced = true;
            if steps.iter().any(|s| matches!(s, Step::TellQueued(_))) {
                // QUEUED promises the message survives the edge: sync first. If that
                // fails, say nothing (STORED still follows when the hub has it).
                let store = store.clone();
                let r = tokio::task::spawn_blocking(move || store.sync_outbox())
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| e.to_string()));
                if let Err(e) = r {
                    warn!(error = %e, "syncing the outbox failed; not answering QUEUED");
                    synced = false;
                }
            }
            for step in steps {
                match step {
                    Step::TellQueued(key) if !synced => {
                        debug!(key, "QUEUED withheld");
                    }
                    Step::TellQueued(key) => {
                        if let Some(p) = pending.get_mut(&key) {
                            if p.reply.is_some() {
                                self.stats.queued.fetch_add(1, Ordering::Relaxed);
                            }
                            p.tell(PublishOutcome::Queued);
                        }
                    }
                    Step::Publish(key) => {
                        let Some(p) = pending.get(&key) else { continue };
                        let attempt = self.attempt(&p.entry, window).await;
                        attempts.push(attempt);
                    }
                }
            }
            if !done.is_empty() {
                // Not synced and not awaited on a blocking thread: a small write to
                // the memtable; losing it in a crash means one deduplicated retry.
                if let Err(e) = store.outbox_remove(&done) {
                    warn!(error = %e, "removing stored sends from the outbox failed");
                }
                done.clear();
            }

            let wake = fwd.next_wakeup();
            let room = pending.len() < self.cfg.max_messages && bytes < self.cfg.max_bytes;
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some((key, outcome)) = attempts.next(), if !attempts.is_empty() => {
                    match outcome {
                        PublishOutcome::Stored { seq, duplicate } => {
                            if fwd.on_stored(key) {
                                info!("the hub stores again; forwarding the outbox");
                                self.live.resync_all();
                            }
                            if let Some(mut p) = pending.remove(&key) {
                                bytes -= p.entry.payload.len();
                                p.tell(PublishOutcome::Stored { seq, duplicate });
                            }
                            done.push(key);
                        }
                        PublishOutcome::Failed { detail, .. } => {
                            if !fwd.is_degraded() {
                                warn!(error = %detail, "the hub did not store a send; queueing at the edge and retrying");
                            } else {
                                debug!(error = %detail, "retry not stored");
                            }
                            self.stats.retries.fetch_add(1, Ordering::Relaxed);
                            fwd.on_failed(key, Instant::now());
                        }
                        PublishOutcome::Queued => {}
                    }
                }
                n = self.rx.recv_many(&mut batch, 512), if room => {
                    if n == 0 {
                        break; // every handle dropped
                    }
                    self.accept(&mut batch, &mut fwd, &mut pending, &mut bytes);
                }
                _ = crate::sleep_until(wake), if wake.is_some() => {}
            }
        }
        // Outcomes of publishes in flight are not awaited: their entries stay in the
        // outbox and are forwarded again (deduplicated) on the next start.
        if !done.is_empty() {
            let _ = store.outbox_remove(&done);
        }
    }

    /// Writes a batch of sends to the outbox (one write) and queues them.
    fn accept(
        &self,
        batch: &mut Vec<Submit>,
        fwd: &mut Forwarder,
        pending: &mut HashMap<u64, Pending>,
        bytes: &mut usize,
    ) {
        let created_ms = unix_ms();
        let mut take = Vec::with_capacity(batch.len());
        for s in batch.drain(..) {
            if pending.len() + take.len() >= self.cfg.max_messages || *bytes >= self.cfg.max_bytes {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                let _ = s.reply.send((
                    s.req.req,
                    PublishOutcome::Failed {
                        code: ErrorCode::Unavailable,
                        detail: format!(
                            "the edge outbox is full ({} messages waiting for the hub); retry later with the same id",
                            pending.len()
                        ),
                    },
                ));
                continue;
            }
            *bytes += s.req.payload.len();
            take.push(s);
        }
        if take.is_empty() {
            return;
        }
        let entries: Vec<OutboxEntry> = take
            .iter()
            .map(|s| OutboxEntry {
                key: 0,
                created_ms,
                copies: s
                    .req
                    .copies
                    .iter()
                    .map(|c| (c.subject.clone(), c.msg_id.clone()))
                    .collect(),
                payload: s.req.payload.clone(),
            })
            .collect();
        // Not synced (see the module doc), so quick enough to do here.
        match self.store.outbox_append(entries) {
            Ok(entries) => {
                let now = Instant::now();
                for (entry, s) in entries.into_iter().zip(take) {
                    fwd.push(entry.key, now, lanes(&entry));
                    pending.insert(
                        entry.key,
                        Pending {
                            entry,
                            reply: Some((s.reply, s.req.req)),
                        },
                    );
                }
            }
            Err(e) => {
                warn!(error = %e, "writing to the outbox failed; refusing the sends");
                for s in take {
                    *bytes -= s.req.payload.len();
                    self.stats.refused.fetch_add(1, Ordering::Relaxed);
                    let _ = s.reply.send((
                        s.req.req,
                        PublishOutcome::Failed {
                            code: ErrorCode::Unavailable,
                            detail: "the edge could not store the message; retry with the same id"
                                .into(),
                        },
                    ));
                }
            }
        }
    }

    /// One try at storing `entry`: its copies go on the wire now (in order with every
    /// other publish); the returned future settles with the hub's answer.
    async fn attempt(&self, entry: &OutboxEntry, window: Duration) -> Attempt {
        let key = entry.key;
        let mut copies: Vec<Copy> = entry
            .copies
            .iter()
            .map(|(subject, msg_id)| Copy {
                subject: subject.clone(),
                msg_id: msg_id.clone(),
            })
            .collect();
        // So old that the hub may have forgotten an earlier try's id: look first.
        let mut first_found: Option<Seq> = None;
        if needs_stream_check(entry.created_ms, unix_ms(), window) {
            // Allow for the edge's clock running ahead of the hub's.
            let since = entry.created_ms.saturating_sub(60_000);
            let mut keep = Vec::with_capacity(copies.len());
            for (i, c) in copies.into_iter().enumerate() {
                match self.hub.find_stored(&c.subject, &c.msg_id, since).await {
                    Ok(Some(seq)) => {
                        self.stats.found_stored.fetch_add(1, Ordering::Relaxed);
                        debug!(msg_id = %c.msg_id, %seq, "already stored; not publishing it again");
                        if i == 0 {
                            first_found = Some(seq);
                        }
                    }
                    Ok(None) => keep.push(c),
                    Err(e) => {
                        let outcome = PublishOutcome::Failed {
                            code: ErrorCode::Unavailable,
                            detail: format!("checking the stream before a late retry: {e}"),
                        };
                        return Box::pin(async move { (key, outcome) });
                    }
                }
            }
            copies = keep;
        }
        if copies.is_empty() {
            let seq = first_found.unwrap_or_default();
            return Box::pin(async move {
                (
                    key,
                    PublishOutcome::Stored {
                        seq,
                        duplicate: true,
                    },
                )
            });
        }
        let acked = self
            .hub
            .publish(PublishRequest {
                req: key,
                copies,
                payload: entry.payload.clone(),
            })
            .await;
        Box::pin(async move {
            let (key, outcome) = acked.await;
            let outcome = match (outcome, first_found) {
                (PublishOutcome::Stored { .. }, Some(seq)) => PublishOutcome::Stored {
                    seq,
                    duplicate: true,
                },
                (o, _) => o,
            };
            (key, outcome)
        })
    }

    /// The stream's duplicate window, or the configured one if the hub cannot say.
    async fn duplicate_window(&self) -> Duration {
        match tokio::time::timeout(Duration::from_secs(2), self.hub.duplicate_window()).await {
            Ok(Ok(w)) if !w.is_zero() => w,
            Ok(Ok(_)) => self.cfg.duplicate_window,
            Ok(Err(e)) => {
                debug!(error = %e, "stream's duplicate window unknown; using the configured one");
                self.cfg.duplicate_window
            }
            Err(_) => self.cfg.duplicate_window,
        }
    }
}
