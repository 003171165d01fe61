//! This connection's memory of whom its user may see (the directory's answers, see
//! `directory::visibility`): typing asks up to several times a second, so answers are
//! kept for a short while, bounded, and forgotten whenever group membership changes.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use petrel_core::UserId;

/// How long an answer is trusted (a contact removed stops seeing within this).
const TTL: Duration = Duration::from_secs(30);

/// Answers kept at most (a watch list holds up to 256 users).
const MAX: usize = 512;

/// Cached visibility answers.
#[derive(Debug, Default)]
pub(super) struct Visible {
    known: HashMap<UserId, (bool, Instant)>,
}

impl Visible {
    /// The answer for `user`, if fresh.
    pub(super) fn get(&self, user: &UserId, now: Instant) -> Option<bool> {
        self.known
            .get(user)
            .filter(|(_, at)| now.saturating_duration_since(*at) < TTL)
            .map(|(v, _)| *v)
    }

    /// Remembers an answer; when full, starts over rather than grow.
    pub(super) fn put(&mut self, user: UserId, visible: bool, now: Instant) {
        if self.known.len() >= MAX && !self.known.contains_key(&user) {
            self.known.clear();
        }
        self.known.insert(user, (visible, now));
    }

    /// Forgets everything (membership changed).
    pub(super) fn forget(&mut self) {
        self.known.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> UserId {
        UserId::parse(s.to_string()).unwrap()
    }

    #[test]
    fn answers_expire_are_bounded_and_can_be_forgotten() {
        let mut v = Visible::default();
        let t0 = Instant::now();
        v.put(u("bob"), true, t0);
        assert_eq!(v.get(&u("bob"), t0 + Duration::from_secs(29)), Some(true));
        assert_eq!(v.get(&u("bob"), t0 + TTL), None);
        for i in 0..MAX + 10 {
            v.put(u(&format!("u{i}")), false, t0);
        }
        assert!(v.known.len() <= MAX);
        v.forget();
        assert_eq!(v.get(&u("u1"), t0), None);
    }
}
