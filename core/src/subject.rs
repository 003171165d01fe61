//! NATS subjects and message ids, built only from validated ids.
//!
//! | what | subject |
//! |---|---|
//! | a user's inbox (stream USER_MESSAGES) | `msg.private.{user}` |
//! | its live re-publish | `live.msg.private.{user}` |
//! | a group's messages (stream USER_MESSAGES) | `msg.group.{group}` |
//! | its live re-publish | `live.msg.group.{group}` |
//! | a membership change (core NATS, from the group service) | `group.changed.{group}` |

use crate::ids::{ClientMsgId, GroupId, UserId};

/// Prefix that the streams re-publish stored messages under.
pub const LIVE_PREFIX: &str = "live.";

/// The stored subject of a user's inbox.
pub fn private_inbox(user: &UserId) -> String {
    format!("msg.private.{user}")
}

/// The live (re-published) subject of a user's inbox.
pub fn live_private_inbox(user: &UserId) -> String {
    format!("{LIVE_PREFIX}msg.private.{user}")
}

/// The stored subject of a group's messages.
pub fn group_subject(group: &GroupId) -> String {
    format!("msg.group.{group}")
}

/// The live (re-published) subject of a group's messages.
pub fn live_group_subject(group: &GroupId) -> String {
    format!("{LIVE_PREFIX}msg.group.{group}")
}

/// The group of a stored group subject (`msg.group.G` → G), validated.
pub fn group_of(subject: &str) -> Option<GroupId> {
    GroupId::parse(subject.strip_prefix("msg.group.")?).ok()
}

/// Where the group service announces a membership change of `group`.
pub fn group_changed(group: &GroupId) -> String {
    format!("group.changed.{group}")
}

/// Subscription for every membership change.
pub const GROUP_CHANGED_ALL: &str = "group.changed.*";

/// `Nats-Msg-Id` of a group message (one copy, scoped by sender; `gm` keeps it apart
/// from direct messages with the same client id).
pub fn group_msg_id(sender: &UserId, id: &ClientMsgId) -> String {
    format!("gm:{sender}:{id}")
}

/// The live subjects of all of a user's notifications (any category).
pub fn live_notifications(user: &UserId) -> String {
    format!("{LIVE_PREFIX}notif.*.{user}")
}

/// Whether `subject` is one of `user`'s notification subjects
/// (`notif.{category}.{user}` with a known category).
pub fn is_notification_of(subject: &str, user: &UserId) -> bool {
    subject
        .strip_prefix("notif.")
        .and_then(|r| r.split_once('.'))
        .is_some_and(|(c, u)| {
            u == user.as_str() && crate::wire::NOTIFICATION_CATEGORIES.contains(&c)
        })
}

/// `Nats-Msg-Id` of a receipt: one per reader, kind and message, so a repeated receipt
/// is stored once.
pub fn receipt_msg_id(reader: &UserId, kind: &str, sender: &UserId, id: &ClientMsgId) -> String {
    format!("rc:{reader}:{kind}:{sender}:{id}")
}

/// Core NATS subject (no stream captures it: never stored) for typing events to a user.
pub fn typing_user(user: &UserId) -> String {
    format!("typing.user.{user}")
}

/// Core NATS subject for typing events in a group.
pub fn typing_group(group: &GroupId) -> String {
    format!("typing.group.{group}")
}

/// Core NATS subject of a user's online/offline events.
pub fn presence_events(user: &UserId) -> String {
    format!("presence.{user}")
}

/// Strips the live prefix: `live.msg.private.bob` → `msg.private.bob`.
pub fn stored_subject(live: &str) -> Option<&str> {
    live.strip_prefix(LIVE_PREFIX)
}

/// `Nats-Msg-Id` of the recipient's copy of a direct message.
///
/// Scoped by sender, so two senders may use the same client id; the hub's dedup
/// window then stores a retried Send once. `:` cannot occur in an id, so the
/// encoding is unambiguous.
pub fn direct_msg_id(sender: &UserId, id: &ClientMsgId) -> String {
    format!("dm:{sender}:{id}")
}

/// `Nats-Msg-Id` of the sender's own copy (in the sender's inbox), which must differ
/// from the recipient copy's id because both live in the same stream.
pub fn direct_self_copy_msg_id(sender: &UserId, id: &ClientMsgId) -> String {
    format!("dm:{sender}:{id}:self")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects() {
        let bob = UserId::parse("bob").unwrap();
        assert_eq!(private_inbox(&bob), "msg.private.bob");
        assert_eq!(live_private_inbox(&bob), "live.msg.private.bob");
        assert_eq!(
            stored_subject("live.msg.private.bob"),
            Some("msg.private.bob")
        );
        assert_eq!(stored_subject("msg.private.bob"), None);
        let g = GroupId::parse("team-1").unwrap();
        assert_eq!(group_subject(&g), "msg.group.team-1");
        assert_eq!(live_group_subject(&g), "live.msg.group.team-1");
        assert_eq!(group_of("msg.group.team-1"), Some(g));
        assert_eq!(group_of("msg.group.a.b"), None, "validated");
        assert_eq!(group_of("msg.private.bob"), None);
        assert_eq!(live_notifications(&bob), "live.notif.*.bob");
        assert!(is_notification_of("notif.friend.bob", &bob));
        assert!(!is_notification_of("notif.friend.bobby", &bob));
        assert!(!is_notification_of("notif.other.bob", &bob));
    }
}
