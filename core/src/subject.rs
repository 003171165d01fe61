//! NATS subjects and message ids, built only from validated ids.
//!
//! | what | subject |
//! |---|---|
//! | a user's inbox (stream USER_MESSAGES) | `msg.private.{user}` |
//! | its live re-publish | `live.msg.private.{user}` |

use crate::ids::{ClientMsgId, UserId};

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
    }
}
