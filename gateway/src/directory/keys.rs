//! Every Redis key Petrel reads or writes: the group service's (its contract is
//! docs/groups.md), the gateways' own presence directory ([`super::presence`]) and
//! acked cursors ([`super::acks`]), and the push service's coalescing state.

use petrel_core::{GroupId, UserId};

/// Set of the user ids in group `g` (written by the group service).
pub fn members_key(g: &GroupId) -> String {
    format!("group:{g}:members")
}

/// Set of the group ids user `u` is in (written by the group service).
pub fn groups_key(u: &UserId) -> String {
    format!("user:{u}:groups")
}

/// Set of the user ids `u` may see (presence, typing), written by the application.
pub fn contacts_key(u: &UserId) -> String {
    format!("contacts:{u}")
}

/// Hash of `u`'s connected devices: device → `{gateway_id}|{last_seen_ms}`.
pub fn presence_key(u: &UserId) -> String {
    format!("presence:{u}")
}

/// Hash of what device `d` of `u` acknowledged: stored subject → cursor.
pub fn acked_key(u: &UserId, d: &str) -> String {
    format!("acked:{u}:{d}")
}

/// The push service's coalescing state of device `d` of `u`, one key per part:
/// `pending` (sorted set of undelivered messages `{subject}|{seq}`, by time),
/// `count` (messages since the last push), `due` (held by the worker that will send
/// the next push), `latest` (what that push announces), `last` (when the last push
/// went).
pub fn push_device_keys(u: &UserId, d: &str) -> PushDeviceKeys {
    let base = format!("push:{u}:{d}");
    PushDeviceKeys {
        pending: format!("{base}:pending"),
        count: format!("{base}:count"),
        due: format!("{base}:due"),
        latest: format!("{base}:latest"),
        last: format!("{base}:last"),
    }
}

/// See [`push_device_keys`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushDeviceKeys {
    /// Undelivered messages.
    pub pending: String,
    /// Messages since the last push.
    pub count: String,
    /// The next push's owner.
    pub due: String,
    /// What the next push announces.
    pub latest: String,
    /// When the last push went (ms).
    pub last: String,
}

/// A member of the `pending` set: a message on `subject` at `seq`.
pub fn pending_member(subject: &str, seq: u64) -> String {
    format!("{subject}|{seq}")
}

/// Reads a `pending` member back.
pub fn parse_pending_member(m: &str) -> Option<(&str, u64)> {
    let (s, q) = m.rsplit_once('|')?;
    Some((s, q.parse().ok()?))
}
