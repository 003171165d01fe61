//! Catch-up: what a connection missed, read from the edge cache when it holds an
//! unbroken run, from the hub's stream otherwise — for resumes, holes in the live
//! stream, slow readers, and history pages.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use petrel_core::Seq;
use petrel_core::wire::{Delivery, decode_stored};
use petrel_storage::EdgeStore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::jetstream::{HubError, JetStream};

/// Content bytes in one history page, so that a page stays far below the clients'
/// frame limits (1 MiB) whatever the messages' sizes.
const HISTORY_PAGE_BYTES: usize = 512 * 1024;

/// What a page's framing adds to each message, for page-size estimates.
pub const PER_MESSAGE_OVERHEAD: usize = 128;

/// Estimated encoded size of a delivery, for bounding pages and frames.
pub fn estimated_size(d: &Delivery) -> usize {
    d.message.content.len() + PER_MESSAGE_OVERHEAD
}

/// Where fetched messages came from.
#[derive(Debug, Default)]
pub struct FetchCounters {
    /// Served from the edge cache (`recent`).
    pub from_cache: AtomicU64,
    /// Fetched from the hub's stream.
    pub from_hub: AtomicU64,
    /// Corrupt or undecodable cache entries met (logged, skipped).
    pub cache_errors: AtomicU64,
}

/// Reads missed messages: edge cache first, the hub for the rest.
#[derive(Debug)]
pub struct CatchUp {
    hub: Arc<JetStream>,
    store: Arc<EdgeStore>,
    /// Messages fetched, by source, and cache read errors.
    pub counters: FetchCounters,
}

impl CatchUp {
    /// Catch-up from `store`, then `hub`.
    pub fn new(hub: Arc<JetStream>, store: Arc<EdgeStore>) -> Self {
        Self {
            hub,
            store,
            counters: FetchCounters::default(),
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
    ) -> Result<(Vec<Delivery>, bool), HubError> {
        let cached = self.cached_run(subject, after, limit);
        if let Some(last) = cached.last() {
            let more = if cached.len() == limit {
                true
            } else {
                // The cache may end before the stream does (nobody was subscribed here
                // for a while): ask the hub for the subject's last sequence.
                self.hub.last_seq(subject).await? > last.seq.0
            };
            self.counters
                .from_cache
                .fetch_add(cached.len() as u64, Ordering::Relaxed);
            return Ok((cached, more));
        }
        let (out, more) = self.hub_page(subject, after, limit).await?;
        self.counters
            .from_hub
            .fetch_add(out.len() as u64, Ordering::Relaxed);
        Ok((out, more))
    }

    /// The message at `seq` on `subject`, from the edge cache or else the hub; `None`
    /// when there is none (or it does not decode).
    pub async fn message_at(
        &self,
        subject: &str,
        seq: Seq,
    ) -> Result<Option<petrel_core::wire::StoredMessage>, HubError> {
        let cached = self
            .store
            .recent_after(subject, seq.0.saturating_sub(1), 1)
            .ok()
            .and_then(|(entries, _)| entries.into_iter().next())
            .filter(|r| r.seq == seq.0);
        let payload = match cached {
            Some(r) => Some(r.payload),
            None => self.hub.message_at(subject, seq).await?,
        };
        Ok(payload.and_then(|p| decode_stored(subject, p).ok()))
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
    ) -> Result<(Vec<Delivery>, bool), HubError> {
        if !newest_first {
            let (mut out, more) = self.fetch(subject, after, limit).await?;
            let cut = fit_page(&mut out);
            return Ok((out, more || cut));
        }
        let (mut out, more) = self.newest_before(subject, before, limit).await?;
        self.counters
            .from_hub
            .fetch_add(out.len() as u64, Ordering::Relaxed);
        let cut = fit_page(&mut out);
        Ok((out, more || cut))
    }

    /// Up to `limit` messages of `subject` before `before` (0: the newest), newest
    /// first. JetStream reads forward only, and a subject's messages are spread thinly
    /// over a shared stream: read a window of stream sequences ending at `before`
    /// (filtered to the subject, so only its messages travel), widening it until it
    /// holds a page or reaches the start of the stream.
    async fn newest_before(
        &self,
        subject: &str,
        before: Seq,
        limit: usize,
    ) -> Result<(Vec<Delivery>, bool), HubError> {
        // Past the last stored message there is nothing to read: clamp there, so a
        // `before` of 2^64 - 1 costs no more than one of 0.
        let end_of_stream = self.hub.last_seq(subject).await?.saturating_add(1);
        let end = match before.0 {
            0 => end_of_stream,
            b => b.min(end_of_stream),
        };
        let mut window = (limit as u64).max(1).saturating_mul(4);
        loop {
            let start = end.saturating_sub(window).max(1);
            let mut found: Vec<Delivery> = Vec::new();
            let mut cursor = Seq(start - 1);
            loop {
                let (page, more) = self.hub_page(subject, cursor, 256).await?;
                let Some(last) = page.last().map(|d| d.seq) else {
                    break;
                };
                found.extend(page.into_iter().filter(|d| d.seq.0 < end));
                if !more || last.0.saturating_add(1) >= end {
                    break;
                }
                cursor = last;
            }
            if found.len() >= limit || start == 1 {
                let more = found.len() > limit || start > 1;
                let keep = found.len().saturating_sub(limit);
                let mut page: Vec<Delivery> = found.drain(keep..).collect();
                page.reverse();
                return Ok((page, more));
            }
            window = window.saturating_mul(8);
        }
    }

    /// A page from the hub's stream, decoded (undecodable messages skipped and logged).
    async fn hub_page(
        &self,
        subject: &str,
        after: Seq,
        limit: usize,
    ) -> Result<(Vec<Delivery>, bool), HubError> {
        let (page, more) = self.hub.page_after(subject, after, limit).await?;
        let out = page
            .into_iter()
            .filter_map(|(seq, prev, payload)| decode(subject, seq, prev, payload))
            .collect();
        Ok((out, more))
    }

    /// The unbroken run of cached messages right after `after`.
    fn cached_run(&self, subject: &str, after: Seq, limit: usize) -> Vec<Delivery> {
        let mut out = Vec::new();
        let (entries, corrupt) = match self.store.recent_after(subject, after.0, limit) {
            Ok(v) => v,
            Err(e) => {
                self.counters.cache_errors.fetch_add(1, Ordering::Relaxed);
                warn!(%subject, error = %e, "reading the edge cache failed; using the hub");
                return out;
            }
        };
        if let Some(e) = corrupt {
            self.counters.cache_errors.fetch_add(1, Ordering::Relaxed);
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
                    self.counters.cache_errors.fetch_add(1, Ordering::Relaxed);
                    warn!(%subject, seq = r.seq, error = %e, "undecodable edge cache entry");
                    break;
                }
            }
            prev = r.seq;
        }
        out
    }
}

fn decode(subject: &str, seq: Seq, prev: Seq, payload: Bytes) -> Option<Delivery> {
    match decode_stored(subject, payload) {
        Ok(message) => Some(Delivery {
            subject: subject.to_string(),
            seq,
            prev_seq: prev,
            message,
        }),
        Err(e) => {
            warn!(%subject, %seq, error = %e, "skipping an undecodable stored message");
            None
        }
    }
}

/// Shortens a page to [`HISTORY_PAGE_BYTES`] (at least one message); true if it cut.
fn fit_page(items: &mut Vec<Delivery>) -> bool {
    let mut bytes = 0;
    for (i, d) in items.iter().enumerate() {
        bytes += estimated_size(d);
        if bytes > HISTORY_PAGE_BYTES && i > 0 {
            items.truncate(i);
            return true;
        }
    }
    false
}

/// How the edge cache is kept small.
#[derive(Debug, Clone, Copy)]
pub struct TrimConfig {
    /// How often to trim.
    pub every: Duration,
    /// Messages kept per subject.
    pub per_subject: usize,
    /// Messages older than this are removed.
    pub max_age: Duration,
}

/// Trims the edge cache (`recent`) by count per subject and by age, every
/// `cfg.every`, until `shutdown`.
pub async fn trim_cache(store: Arc<EdgeStore>, cfg: TrimConfig, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(cfg.every) => {}
        }
        let max_age_ms = u64::try_from(cfg.max_age.as_millis()).unwrap_or(u64::MAX);
        let older_than = petrel_core::time::unix_ms().saturating_sub(max_age_ms);
        let store = store.clone();
        let trimmed =
            tokio::task::spawn_blocking(move || store.trim_recent(cfg.per_subject, older_than))
                .await;
        match trimmed {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => debug!(removed = n, "trimmed the edge cache"),
            Ok(Err(e)) => warn!(error = %e, "trimming the edge cache failed"),
            Err(e) => warn!(error = %e, "trim task failed"),
        }
    }
}
