//! Store-and-forward policy for the edge outbox: which accepted sends to put on the
//! wire to the hub, when to tell a sender its message is QUEUED, when to retry. No
//! I/O: keys and times in, [`Step`]s out, so it is tested with a fake clock.
//!
//! Every send is first made durable in the edge's outbox (keys in acceptance order),
//! then forwarded:
//! - **Healthy**: entries are published in key order, many in flight (up to
//!   `window`), acknowledged concurrently — but at most one per **lane** (a stored
//!   subject and the sender: one sender's messages in one conversation). An entry
//!   waits while an earlier one of its lane is unacknowledged. Across a JetStream
//!   leader change the hub can lose one publish and store the next one pipelined
//!   behind it; with one per lane in flight, the next one of that lane is only sent
//!   once the first is stored, so a lane's messages are stored in acceptance order
//!   whatever fails. Different lanes have no order between them and pipeline freely.
//! - **Degraded** (a publish failed or timed out: hub or leaf link away): nothing new
//!   goes on the wire until the in-flight publishes have settled; then only the
//!   oldest entry is tried, with exponential backoff. When it is stored the hub is
//!   back, and everything left is forwarded in order again. Retrying the oldest
//!   first keeps each conversation's order: an entry is never published ahead of one
//!   accepted before it that is not yet stored.
//!
//! Retries reuse each copy's `Nats-Msg-Id`, so the hub stores a retried message once
//! as long as the retry falls inside its duplicate window; see
//! [`needs_stream_check`] for retries that might not.
//!
//! A sender is told QUEUED (its message is durable here, not yet on the hub) once an
//! entry has waited `queue_after` without being stored, or at once while degraded.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

/// Tuning of the forwarder.
#[derive(Debug, Clone)]
pub struct ForwarderConfig {
    /// Publishes in flight at once while healthy.
    pub window: usize,
    /// How long a sender waits for STORED before being told QUEUED.
    pub queue_after: Duration,
    /// First retry delay while degraded.
    pub retry_min: Duration,
    /// Longest retry delay while degraded.
    pub retry_max: Duration,
}

impl Default for ForwarderConfig {
    fn default() -> Self {
        Self {
            window: 4096,
            queue_after: Duration::from_secs(1),
            retry_min: Duration::from_millis(250),
            retry_max: Duration::from_secs(5),
        }
    }
}

/// What the caller must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Publish every copy of entry `key` (same `Nats-Msg-Id`s as any earlier try) and
    /// report with [`Forwarder::on_stored`] or [`Forwarder::on_failed`].
    Publish(u64),
    /// Tell the sender of entry `key` (if still connected) that it is QUEUED.
    TellQueued(u64),
}

#[derive(Debug)]
struct Entry {
    key: u64,
    /// The lanes it is stored in ([`crate::subject::ordering_lane`] of each copy).
    lanes: Vec<u64>,
    accepted: Instant,
    in_flight: bool,
    told_queued: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Healthy,
    Degraded {
        retry_at: Instant,
        backoff: Duration,
        /// The entry being retried, if a retry is in flight.
        probe: Option<u64>,
    },
}

/// The forwarding state of one edge's outbox.
#[derive(Debug)]
pub struct Forwarder {
    cfg: ForwarderConfig,
    /// Entries not yet stored, in key order.
    entries: VecDeque<Entry>,
    in_flight: usize,
    mode: Mode,
}

impl Forwarder {
    /// An empty outbox, healthy.
    pub fn new(cfg: ForwarderConfig) -> Self {
        Self {
            cfg,
            entries: VecDeque::new(),
            in_flight: 0,
            mode: Mode::Healthy,
        }
    }

    /// Entries not yet stored on the hub.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether everything accepted is stored.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether the last publish failed and the hub has not answered since.
    pub fn is_degraded(&self) -> bool {
        matches!(self.mode, Mode::Degraded { .. })
    }

    /// A durable entry `key` (larger than any before), accepted at `accepted`, stored
    /// in `lanes`. Entries restored at start are pushed with their acceptance time too.
    pub fn push(&mut self, key: u64, accepted: Instant, lanes: Vec<u64>) {
        debug_assert!(self.entries.back().is_none_or(|e| e.key < key));
        self.entries.push_back(Entry {
            key,
            lanes,
            accepted,
            in_flight: false,
            told_queued: false,
        });
    }

    /// Entry `key` is stored on the hub (every copy). Returns true when this ended a
    /// degraded period (the hub is back: callers may want to re-check what they
    /// missed meanwhile).
    pub fn on_stored(&mut self, key: u64) -> bool {
        if let Some(i) = self.position(key) {
            if self.entries[i].in_flight {
                self.in_flight -= 1;
            }
            self.entries.remove(i);
        }
        let recovered = self.is_degraded();
        self.mode = Mode::Healthy;
        recovered
    }

    /// Publishing entry `key` failed (refused, or not acknowledged in time): it stays,
    /// and the forwarder degrades (or backs off further if the retry failed).
    pub fn on_failed(&mut self, key: u64, now: Instant) {
        if let Some(i) = self.position(key)
            && self.entries[i].in_flight
        {
            self.entries[i].in_flight = false;
            self.in_flight -= 1;
        }
        let backoff = match self.mode {
            Mode::Healthy => self.cfg.retry_min,
            // Only a failed retry lengthens the wait: the stragglers of a pipelined
            // burst failing one by one do not.
            Mode::Degraded {
                backoff,
                probe: Some(p),
                ..
            } if p == key => (backoff * 2).min(self.cfg.retry_max),
            Mode::Degraded { backoff, .. } => backoff,
        };
        self.mode = Mode::Degraded {
            retry_at: now + backoff,
            backoff,
            probe: None,
        };
    }

    /// What to do now: publishes (in key order) and QUEUED answers due.
    pub fn poll(&mut self, now: Instant) -> Vec<Step> {
        let mut out = Vec::new();
        let degraded = self.is_degraded();
        for e in &mut self.entries {
            if !e.told_queued && (degraded || now >= e.accepted + self.cfg.queue_after) {
                e.told_queued = true;
                out.push(Step::TellQueued(e.key));
            }
        }
        match self.mode {
            Mode::Healthy => {
                // Lanes with an earlier entry not yet stored: nothing more of them goes.
                let mut busy: HashSet<u64> = HashSet::new();
                for e in &mut self.entries {
                    if self.in_flight >= self.cfg.window {
                        break;
                    }
                    let free = e.lanes.iter().all(|l| !busy.contains(l));
                    busy.extend(e.lanes.iter().copied());
                    if !e.in_flight && free {
                        e.in_flight = true;
                        self.in_flight += 1;
                        out.push(Step::Publish(e.key));
                    }
                }
            }
            Mode::Degraded {
                retry_at,
                ref mut probe,
                ..
            } => {
                if self.in_flight == 0
                    && now >= retry_at
                    && let Some(head) = self.entries.front_mut()
                {
                    head.in_flight = true;
                    self.in_flight += 1;
                    *probe = Some(head.key);
                    out.push(Step::Publish(head.key));
                }
            }
        }
        out
    }

    /// When [`Forwarder::poll`] next has something to do without new input (a retry or
    /// a QUEUED answer), if ever.
    pub fn next_wakeup(&self) -> Option<Instant> {
        let queued = self
            .entries
            .iter()
            .find(|e| !e.told_queued)
            .map(|e| e.accepted + self.cfg.queue_after);
        let retry = match self.mode {
            Mode::Degraded { retry_at, .. } if self.in_flight == 0 && !self.entries.is_empty() => {
                Some(retry_at)
            }
            _ => None,
        };
        match (queued, retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn position(&self, key: u64) -> Option<usize> {
        // Keys are increasing: binary search.
        self.entries.binary_search_by_key(&key, |e| e.key).ok()
    }
}

/// Whether a retry of a message first accepted at `created_ms` must look in the
/// stream before publishing, because an earlier try may have been stored (its
/// acknowledgement lost) longer ago than the hub's duplicate window remembers.
///
/// The hub drops a `Nats-Msg-Id` from its window `window` after storing it. Any try
/// happened after acceptance, so while `now - created < window` every possible earlier
/// copy is still remembered and the hub deduplicates by itself. Half the window is
/// used as the limit, leaving the other half as margin for clock skew between edge
/// and hub and for the time a check takes.
pub fn needs_stream_check(created_ms: u64, now_ms: u64, window: Duration) -> bool {
    now_ms.saturating_sub(created_ms) >= (window.as_millis() / 2) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ForwarderConfig {
        ForwarderConfig {
            window: 3,
            queue_after: Duration::from_secs(1),
            retry_min: Duration::from_millis(100),
            retry_max: Duration::from_millis(400),
        }
    }

    fn publishes(steps: &[Step]) -> Vec<u64> {
        steps
            .iter()
            .filter_map(|s| match s {
                Step::Publish(k) => Some(*k),
                _ => None,
            })
            .collect()
    }

    fn told(steps: &[Step]) -> Vec<u64> {
        steps
            .iter()
            .filter_map(|s| match s {
                Step::TellQueued(k) => Some(*k),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn healthy_pipelines_in_order_within_the_window() {
        let t = Instant::now();
        let mut f = Forwarder::new(cfg());
        for k in 1..=5 {
            f.push(k, t, vec![k]);
        }
        assert_eq!(publishes(&f.poll(t)), vec![1, 2, 3]);
        assert!(f.poll(t).is_empty(), "window full");
        f.on_stored(2);
        assert_eq!(publishes(&f.poll(t)), vec![4]);
        f.on_stored(1);
        f.on_stored(3);
        assert_eq!(publishes(&f.poll(t)), vec![5]);
        f.on_stored(4);
        f.on_stored(5);
        assert!(f.is_empty());
        assert_eq!(f.next_wakeup(), None);
    }

    #[test]
    fn queued_is_told_once_after_queue_after() {
        let t = Instant::now();
        let mut f = Forwarder::new(cfg());
        f.push(1, t, vec![1]);
        f.push(2, t + Duration::from_millis(500), vec![2]);
        assert!(told(&f.poll(t)).is_empty());
        assert_eq!(f.next_wakeup(), Some(t + Duration::from_secs(1)));
        assert_eq!(told(&f.poll(t + Duration::from_secs(1))), vec![1]);
        assert_eq!(told(&f.poll(t + Duration::from_millis(1500))), vec![2]);
        assert!(told(&f.poll(t + Duration::from_secs(5))).is_empty());
        f.on_stored(1);
        f.on_stored(2);
        assert!(f.is_empty());
    }

    #[test]
    fn degraded_retries_only_the_oldest_with_backoff_then_resumes_in_order() {
        let t = Instant::now();
        let mut f = Forwarder::new(cfg());
        for k in 1..=4 {
            f.push(k, t, vec![k]);
        }
        assert_eq!(publishes(&f.poll(t)), vec![1, 2, 3]);
        // The hub goes away: 2 fails first; 1 and 3 are still in flight.
        f.on_failed(2, t);
        assert!(f.is_degraded());
        let steps = f.poll(t);
        assert!(
            publishes(&steps).is_empty(),
            "wait for the in-flight to settle"
        );
        assert_eq!(
            told(&steps),
            vec![1, 2, 3, 4],
            "degraded: all told QUEUED at once"
        );
        f.on_failed(1, t);
        f.on_failed(3, t);
        // Nothing before the backoff; then the oldest alone.
        assert!(f.poll(t + Duration::from_millis(50)).is_empty());
        assert_eq!(f.next_wakeup(), Some(t + Duration::from_millis(100)));
        let t1 = t + Duration::from_millis(100);
        assert_eq!(publishes(&f.poll(t1)), vec![1]);
        assert!(f.poll(t1).is_empty(), "one retry at a time");
        f.on_failed(1, t1);
        // Backoff doubles after a failed retry, up to retry_max.
        assert!(f.poll(t1 + Duration::from_millis(150)).is_empty());
        let t2 = t1 + Duration::from_millis(200);
        assert_eq!(publishes(&f.poll(t2)), vec![1]);
        f.on_failed(1, t2);
        let t3 = t2 + Duration::from_millis(400);
        assert_eq!(publishes(&f.poll(t3)), vec![1]);
        f.on_failed(1, t3);
        assert_eq!(
            f.next_wakeup(),
            Some(t3 + Duration::from_millis(400)),
            "capped"
        );
        let t4 = t3 + Duration::from_millis(400);
        assert_eq!(publishes(&f.poll(t4)), vec![1]);
        // New sends while degraded are told QUEUED at once and wait their turn.
        f.push(5, t4, vec![5]);
        assert_eq!(told(&f.poll(t4)), vec![5]);
        assert!(f.on_stored(1), "the hub is back");
        assert!(!f.is_degraded());
        assert_eq!(publishes(&f.poll(t4)), vec![2, 3, 4]);
        f.on_stored(2);
        assert_eq!(publishes(&f.poll(t4)), vec![5]);
    }

    #[test]
    fn one_unacknowledged_publish_per_lane() {
        let t = Instant::now();
        let mut f = Forwarder::new(ForwarderConfig {
            window: 10,
            ..cfg()
        });
        // Lanes: 1 and 3 share lane A; 2 is in B; 4 is in A and C (a direct message's
        // two copies); 5 is in C only.
        let (a, b, c) = (10, 20, 30);
        f.push(1, t, vec![a]);
        f.push(2, t, vec![b]);
        f.push(3, t, vec![a]);
        f.push(4, t, vec![a, c]);
        f.push(5, t, vec![c]);
        assert_eq!(
            publishes(&f.poll(t)),
            vec![1, 2],
            "3, 4 wait behind 1; 5 behind 4"
        );
        f.on_stored(2);
        assert!(publishes(&f.poll(t)).is_empty());
        f.on_stored(1);
        assert_eq!(publishes(&f.poll(t)), vec![3]);
        f.on_stored(3);
        assert_eq!(publishes(&f.poll(t)), vec![4]);
        // 4 is lost (a leader change): nothing behind it in its lanes went out, so
        // nothing can be stored ahead of it.
        f.on_failed(4, t);
        let t1 = t + Duration::from_millis(100);
        assert_eq!(publishes(&f.poll(t1)), vec![4], "the retry");
        f.on_stored(4);
        assert_eq!(publishes(&f.poll(t1)), vec![5]);
    }

    #[test]
    fn stream_check_only_past_half_the_window() {
        let w = Duration::from_secs(600);
        assert!(!needs_stream_check(1_000, 1_000 + 299_999, w));
        assert!(needs_stream_check(1_000, 1_000 + 300_000, w));
        assert!(!needs_stream_check(5_000, 1_000, w), "clock went back");
    }
}
