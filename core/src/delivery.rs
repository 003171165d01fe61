//! Delivery order for one connection: the messages after the client's cursor, each
//! once, in stream order per subject — whether they come from a catch-up fetch from
//! the hub or from the live re-publish.
//!
//! Every stored message carries its sequence and the previous sequence on the same
//! subject (`Nats-Last-Sequence`), so a hole is visible the moment the message after
//! it arrives: `prev > last delivered`. Then live messages of that subject are held
//! back (skipped: the fetch will return them) while the hole is fetched, and live
//! delivery resumes when the fetch has caught up with everything that arrived in the
//! meantime. The same path serves a resume (Hello cursors), a live gap (a message
//! lost between hub and edge) and a slow consumer whose queue overflowed.

use std::collections::HashMap;

use crate::Seq;

/// What to do with a live message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Live {
    /// Write it: it is the next one on its subject.
    Deliver,
    /// Drop it: already delivered, or a fetch in progress will deliver it.
    Skip,
    /// Drop it and fetch from the hub first: something before it is missing.
    Fetch(Fetch),
}

/// Fetch the messages of `subject` after `after` from the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetch {
    /// Stored subject, e.g. `msg.private.bob`.
    pub subject: String,
    /// Last sequence already delivered (0: from the start).
    pub after: Seq,
}

#[derive(Debug, Default)]
struct Track {
    /// Last sequence delivered (or acknowledged by the client before this connection).
    last: Option<Seq>,
    /// A fetch is in progress; live messages wait for it.
    fetching: bool,
    /// Highest live sequence skipped while fetching.
    behind: Option<Seq>,
    /// Live messages were dropped (the queue overflowed) while fetching: their
    /// sequences are unknown, so the fetch goes on once more after it seems done.
    recheck: bool,
}

/// Per-subject delivery state of one connection.
#[derive(Debug, Default)]
pub struct Order {
    subjects: HashMap<String, Track>,
}

impl Order {
    /// A new connection: nothing delivered yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The client has everything on `subject` up to `cursor`: fetch what came after.
    pub fn resume(&mut self, subject: &str, cursor: Seq) -> Fetch {
        let t = self.subjects.entry(subject.to_string()).or_default();
        t.last = Some(t.last.map_or(cursor, |l| l.max(cursor)));
        t.fetching = true;
        Fetch {
            subject: subject.to_string(),
            after: t.last.unwrap_or_default(),
        }
    }

    /// Something was dropped before reaching this connection (its queue overflowed):
    /// every subject with a known position fetches from there. Subjects already
    /// fetching carry on, and fetch once more when they seem done: what was dropped
    /// may lie beyond what the fetch in flight will return.
    pub fn lost(&mut self) -> Vec<Fetch> {
        let mut out = Vec::new();
        for (subject, t) in &mut self.subjects {
            match (t.last, t.fetching) {
                (Some(last), false) => {
                    t.fetching = true;
                    out.push(Fetch {
                        subject: subject.clone(),
                        after: last,
                    });
                }
                (_, true) => t.recheck = true,
                (None, false) => {}
            }
        }
        out
    }

    /// A live message `seq` whose predecessor on `subject` is `prev` (0: none known).
    pub fn on_live(&mut self, subject: &str, seq: Seq, prev: Seq) -> Live {
        let t = self.subjects.entry(subject.to_string()).or_default();
        if t.fetching {
            t.behind = Some(t.behind.map_or(seq, |b| b.max(seq)));
            return Live::Skip;
        }
        match t.last {
            // No cursor: a new device starts from now.
            None => {
                t.last = Some(seq);
                Live::Deliver
            }
            Some(last) if seq <= last => Live::Skip,
            Some(last) if prev <= last => {
                t.last = Some(seq);
                Live::Deliver
            }
            Some(last) => {
                t.fetching = true;
                t.behind = Some(seq);
                Live::Fetch(Fetch {
                    subject: subject.to_string(),
                    after: last,
                })
            }
        }
    }

    /// A message fetched from the hub: deliver it unless it already was.
    pub fn on_fetched(&mut self, subject: &str, seq: Seq) -> bool {
        let t = self.subjects.entry(subject.to_string()).or_default();
        if t.last.is_some_and(|l| seq <= l) {
            return false;
        }
        t.last = Some(seq);
        true
    }

    /// A fetch finished; `more` says the hub had more than it returned. Returns the
    /// next fetch while anything is still missing, else live delivery resumes.
    pub fn fetch_done(&mut self, subject: &str, more: bool) -> Option<Fetch> {
        let t = self.subjects.entry(subject.to_string()).or_default();
        let last = t.last.unwrap_or_default();
        if more || t.behind.is_some_and(|b| b > last) || std::mem::take(&mut t.recheck) {
            return Some(Fetch {
                subject: subject.to_string(),
                after: last,
            });
        }
        t.fetching = false;
        t.behind = None;
        None
    }

    /// Last sequence delivered on `subject`.
    pub fn last(&self, subject: &str) -> Option<Seq> {
        self.subjects.get(subject).and_then(|t| t.last)
    }

    /// Whether `subject` is catching up from the hub.
    pub fn fetching(&self, subject: &str) -> bool {
        self.subjects.get(subject).is_some_and(|t| t.fetching)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: &str = "msg.private.bob";

    fn fetch(after: u64) -> Fetch {
        Fetch {
            subject: S.into(),
            after: Seq(after),
        }
    }

    #[test]
    fn a_new_device_starts_from_now_and_follows_the_chain() {
        let mut o = Order::new();
        assert_eq!(o.on_live(S, Seq(10), Seq(7)), Live::Deliver);
        assert_eq!(o.on_live(S, Seq(12), Seq(10)), Live::Deliver);
        assert_eq!(o.on_live(S, Seq(12), Seq(10)), Live::Skip, "duplicate");
        assert_eq!(o.on_live(S, Seq(11), Seq(10)), Live::Skip, "older");
        assert_eq!(o.last(S), Some(Seq(12)));
    }

    #[test]
    fn a_hole_is_fetched_and_live_waits_for_it() {
        let mut o = Order::new();
        assert_eq!(o.on_live(S, Seq(3), Seq(0)), Live::Deliver);
        // 5 was lost between hub and edge: 8 says its predecessor is 5.
        assert_eq!(o.on_live(S, Seq(8), Seq(5)), Live::Fetch(fetch(3)));
        assert!(o.fetching(S));
        // Live traffic during the fetch is held back.
        assert_eq!(o.on_live(S, Seq(9), Seq(8)), Live::Skip);
        assert!(o.on_fetched(S, Seq(5)));
        assert!(o.on_fetched(S, Seq(8)));
        // 9 arrived during the fetch and was not in it: fetch again.
        assert_eq!(o.fetch_done(S, false), Some(fetch(8)));
        assert!(o.on_fetched(S, Seq(9)));
        assert_eq!(o.fetch_done(S, false), None);
        assert!(!o.fetching(S));
        assert_eq!(o.on_live(S, Seq(9), Seq(8)), Live::Skip);
        assert_eq!(o.on_live(S, Seq(10), Seq(9)), Live::Deliver);
    }

    #[test]
    fn resume_fetches_after_the_cursor_and_never_repeats() {
        let mut o = Order::new();
        assert_eq!(o.resume(S, Seq(40)), fetch(40));
        assert_eq!(o.on_live(S, Seq(45), Seq(44)), Live::Skip);
        assert!(
            !o.on_fetched(S, Seq(40)),
            "the cursor itself was delivered before"
        );
        for s in 41..=45 {
            assert!(o.on_fetched(S, Seq(s)));
        }
        assert_eq!(o.fetch_done(S, false), None);
        assert_eq!(o.on_live(S, Seq(46), Seq(45)), Live::Deliver);
    }

    #[test]
    fn pages_continue_while_the_hub_has_more() {
        let mut o = Order::new();
        o.resume(S, Seq(0));
        assert!(o.on_fetched(S, Seq(1)));
        assert_eq!(o.fetch_done(S, true), Some(fetch(1)));
        assert!(o.on_fetched(S, Seq(2)));
        assert_eq!(o.fetch_done(S, false), None);
    }

    #[test]
    fn a_lost_live_message_makes_every_known_subject_catch_up() {
        let mut o = Order::new();
        assert_eq!(o.on_live(S, Seq(3), Seq(0)), Live::Deliver);
        assert_eq!(o.lost(), vec![fetch(3)]);
        assert_eq!(o.fetch_done(S, false), None);
    }

    #[test]
    fn an_overflow_during_a_fetch_fetches_once_more_at_its_end() {
        let mut o = Order::new();
        assert_eq!(o.on_live(S, Seq(3), Seq(0)), Live::Deliver);
        assert_eq!(o.lost(), vec![fetch(3)]);
        // The queue overflows again while the fetch is out: nothing new to start, but
        // the dropped messages may be past what this fetch returns.
        assert!(o.lost().is_empty(), "already fetching");
        assert!(o.on_fetched(S, Seq(4)));
        assert_eq!(o.fetch_done(S, false), Some(fetch(4)), "once more");
        assert!(o.on_fetched(S, Seq(5)));
        assert_eq!(o.fetch_done(S, false), None);
        assert_eq!(o.on_live(S, Seq(6), Seq(5)), Live::Deliver);
    }
}
