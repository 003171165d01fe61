//! Who is connected here: user → connections, reference-counted so that an edge holds
//! exactly one live subscription per user however many devices are connected, and
//! drops it when the last one leaves (so the leaf stops forwarding that user's
//! traffic to this edge).

use std::collections::HashMap;
use std::hash::Hash;

/// Whether a join/leave changed the set of subscribed keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interest {
    /// First connection for this key: subscribe.
    Subscribe,
    /// Last connection gone: unsubscribe.
    Unsubscribe,
    /// No change to subscriptions.
    Unchanged,
}

/// Reference-counted map of key (a user, a group, a watched user) → connection handles.
#[derive(Debug)]
pub struct Registry<K, H> {
    keys: HashMap<K, Vec<(u64, H)>>,
}

impl<K, H> Default for Registry<K, H> {
    fn default() -> Self {
        Self {
            keys: HashMap::new(),
        }
    }
}

impl<K: Eq + Hash + Clone, H> Registry<K, H> {
    /// Adds connection `conn` under `key`.
    pub fn join(&mut self, key: &K, conn: u64, handle: H) -> Interest {
        let conns = self.keys.entry(key.clone()).or_default();
        let first = conns.is_empty();
        conns.retain(|(c, _)| *c != conn);
        conns.push((conn, handle));
        if first {
            Interest::Subscribe
        } else {
            Interest::Unchanged
        }
    }

    /// Removes connection `conn` from `key`.
    pub fn leave(&mut self, key: &K, conn: u64) -> Interest {
        let Some(conns) = self.keys.get_mut(key) else {
            return Interest::Unchanged;
        };
        let before = conns.len();
        conns.retain(|(c, _)| *c != conn);
        if conns.is_empty() && before > 0 {
            self.keys.remove(key);
            Interest::Unsubscribe
        } else {
            Interest::Unchanged
        }
    }

    /// The connections registered under `key`.
    pub fn targets(&self, key: &K) -> impl Iterator<Item = (u64, &H)> {
        self.keys
            .get(key)
            .into_iter()
            .flatten()
            .map(|(c, h)| (*c, h))
    }

    /// Every registered connection, under whatever key.
    pub fn all(&self) -> impl Iterator<Item = (u64, &H)> {
        self.keys.values().flatten().map(|(c, h)| (*c, h))
    }

    /// Number of keys with at least one connection (= live subscriptions).
    pub fn keys(&self) -> usize {
        self.keys.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_subscription_per_key_however_many_connections() {
        let mut r: Registry<&str, ()> = Registry::default();
        assert_eq!(r.join(&"bob", 1, ()), Interest::Subscribe);
        assert_eq!(r.join(&"bob", 2, ()), Interest::Unchanged);
        assert_eq!(r.join(&"alice", 3, ()), Interest::Subscribe);
        assert_eq!(r.keys(), 2);
        assert_eq!(r.targets(&"bob").count(), 2);
        assert_eq!(r.leave(&"bob", 1), Interest::Unchanged);
        assert_eq!(r.leave(&"bob", 1), Interest::Unchanged);
        assert_eq!(r.leave(&"bob", 2), Interest::Unsubscribe);
        assert_eq!(r.leave(&"bob", 2), Interest::Unchanged);
        assert_eq!(r.keys(), 1);
    }
}
