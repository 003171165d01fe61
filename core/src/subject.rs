//! NATS subjects and message ids: the one module that formats or reads subject strings.
//!
//! A [`Subject`] is a conversation the hub stores: its stored form is what clients
//! see (cursors, Deliver frames), [`Subject::live`] is the stream's re-publish the
//! edges subscribe to, [`Subject::stream`] the stream that holds it.
//!
//! | what | stored subject | live re-publish | stream |
//! |---|---|---|---|
//! | a user's inbox | `msg.private.{user}` | `live.msg.private.{user}` | `USER_MESSAGES` |
//! | a group's messages | `msg.group.{group}` | `live.msg.group.{group}` | `USER_MESSAGES` |
//! | a user's notifications | `notif.{category}.{user}` | `live.notif.{category}.{user}` | `SYSTEM_NOTIFICATIONS` |
//!
//! Never stored (core NATS only): typing `typing.user.{user}` / `typing.group.{group}`,
//! presence events `presence.{user}`, membership changes `group.changed.{group}`.
//! [`Incoming::classify`] tells what arrived on a live subscription.

use std::fmt;

use crate::ids::{ClientMsgId, GroupId, IdError, UserId};

/// Prefix that the streams re-publish stored messages under.
pub const LIVE_PREFIX: &str = "live.";

/// Stream holding the private and group messages.
pub const MESSAGE_STREAM: &str = "USER_MESSAGES";

/// Stream holding system notifications.
pub const NOTIFICATION_STREAM: &str = "SYSTEM_NOTIFICATIONS";

/// Categories of system notifications (`notif.{category}.{user}`).
pub const NOTIFICATION_CATEGORIES: [&str; 4] = ["friend", "group", "user", "system"];

/// Subscription for every membership change.
pub const GROUP_CHANGED_ALL: &str = "group.changed.*";

const INBOX: &str = "msg.private.";
const GROUP: &str = "msg.group.";
const NOTIF: &str = "notif.";
const TYPING: &str = "typing.";
const PRESENCE: &str = "presence.";
const GROUP_CHANGED: &str = "group.changed.";
const RECEIPT_CLAIM: &str = "receipt.claim.";

/// The stream of pushes the push service gave up on, with the reason (dead letters).
pub const PUSH_DEAD_LETTER_STREAM: &str = "PUSH_DEAD_LETTERS";

/// The subjects of [`PUSH_DEAD_LETTER_STREAM`]: `push.dead.{platform}`.
pub const PUSH_DEAD_LETTERS: &str = "push.dead.*";

/// The dead-letter subject of a push to `platform` (`apns`, `fcm`, `webpush`).
pub fn push_dead_letter(platform: &str) -> String {
    format!("push.dead.{platform}")
}

/// The push registry: one value per user (its devices' push targets), the newest kept.
pub const PUSH_TARGET_STREAM: &str = "PUSH_TARGETS";

/// The subjects of [`PUSH_TARGET_STREAM`].
pub const PUSH_TARGETS: &str = "push.target.*";

/// The registry subject of `user`'s push targets.
pub fn push_registry(user: &UserId) -> String {
    format!("push.target.{user}")
}

/// The stream holding one claim per stored receipt (at most one message per subject).
pub const RECEIPT_CLAIM_STREAM: &str = "RECEIPT_CLAIMS";

/// The subjects of [`RECEIPT_CLAIM_STREAM`].
pub const RECEIPT_CLAIMS: &str = "receipt.claim.*.*.*.*";

/// Why a string is not a stored subject.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    /// Not of any stored kind.
    #[error("{0:?} is not a Petrel subject (msg.private.U, msg.group.G or notif.C.U)")]
    Unknown(String),
    /// A notification category that is not one of [`NOTIFICATION_CATEGORIES`].
    #[error("unknown notification category {0:?}")]
    Category(String),
    /// The id part is not a valid id.
    #[error(transparent)]
    Id(#[from] IdError),
}

/// A conversation the hub stores.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Subject {
    /// A user's inbox: direct messages to the user, copies of its own, receipts.
    Inbox(UserId),
    /// A group's messages.
    Group(GroupId),
    /// A user's system notifications of one category.
    Notification {
        /// One of [`NOTIFICATION_CATEGORIES`].
        category: &'static str,
        /// Whose.
        user: UserId,
    },
}

impl Subject {
    /// A notification subject; the category must be one of [`NOTIFICATION_CATEGORIES`].
    pub fn notification(category: &str, user: UserId) -> Result<Self, SubjectError> {
        let category = NOTIFICATION_CATEGORIES
            .iter()
            .find(|c| **c == category)
            .ok_or_else(|| SubjectError::Category(category.to_string()))?;
        Ok(Self::Notification { category, user })
    }

    /// Reads a stored subject (`msg.private.bob`, `msg.group.team`, `notif.friend.bob`).
    pub fn parse(s: &str) -> Result<Self, SubjectError> {
        if let Some(u) = s.strip_prefix(INBOX) {
            return Ok(Self::Inbox(UserId::parse(u)?));
        }
        if let Some(g) = s.strip_prefix(GROUP) {
            return Ok(Self::Group(GroupId::parse(g)?));
        }
        if let Some((c, u)) = s.strip_prefix(NOTIF).and_then(|r| r.split_once('.')) {
            return Self::notification(c, UserId::parse(u)?);
        }
        Err(SubjectError::Unknown(s.to_string()))
    }

    /// Reads a live re-publish subject (`live.msg.private.bob` → the inbox of bob).
    pub fn parse_live(s: &str) -> Option<Self> {
        Self::parse(s.strip_prefix(LIVE_PREFIX)?).ok()
    }

    /// The live subject the stream re-publishes this one under.
    pub fn live(&self) -> String {
        format!("{LIVE_PREFIX}{self}")
    }

    /// The stream that stores it.
    pub fn stream(&self) -> &'static str {
        match self {
            Self::Inbox(_) | Self::Group(_) => MESSAGE_STREAM,
            Self::Notification { .. } => NOTIFICATION_STREAM,
        }
    }

    /// Whether this is one of `user`'s own subjects (inbox, notifications).
    pub fn belongs_to(&self, user: &UserId) -> bool {
        match self {
            Self::Inbox(u) | Self::Notification { user: u, .. } => u == user,
            Self::Group(_) => false,
        }
    }

    /// The group, for a group subject.
    pub fn group(&self) -> Option<&GroupId> {
        match self {
            Self::Group(g) => Some(g),
            _ => None,
        }
    }
}

impl fmt::Display for Subject {
    /// The stored form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Inbox(u) => write!(f, "{INBOX}{u}"),
            Self::Group(g) => write!(f, "{GROUP}{g}"),
            Self::Notification { category, user } => write!(f, "{NOTIF}{category}.{user}"),
        }
    }
}

/// What arrived on a live subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A stored message's re-publish.
    Stored(Subject),
    /// A typing indicator (ephemeral, may travel as a datagram).
    Typing,
    /// A presence event (ephemeral).
    Presence,
    /// A conversation update from the message service (ephemeral).
    Conversation,
}

impl Incoming {
    /// Classifies a subject received on a live subscription; `None` for anything else.
    pub fn classify(s: &str) -> Option<Self> {
        if s.starts_with(TYPING) {
            Some(Self::Typing)
        } else if s.starts_with(PRESENCE) {
            Some(Self::Presence)
        } else if s.starts_with(LIVE_CONVERSATIONS) {
            Some(Self::Conversation)
        } else {
            Subject::parse_live(s).map(Self::Stored)
        }
    }
}

/// A stream as provisioned on the hub: what it captures and where it re-publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamLayout {
    /// Stream name.
    pub name: &'static str,
    /// The subjects it stores.
    pub subjects: Vec<String>,
    /// Re-publish source filter.
    pub republish_source: String,
    /// Re-publish destination.
    pub republish_destination: String,
}

/// The hub's streams: every stored subject kind in exactly one of them.
pub fn stream_layouts() -> [StreamLayout; 2] {
    [
        StreamLayout {
            name: MESSAGE_STREAM,
            subjects: vec![format!("{INBOX}*"), format!("{GROUP}*")],
            republish_source: "msg.>".into(),
            republish_destination: format!("{LIVE_PREFIX}msg.>"),
        },
        StreamLayout {
            name: NOTIFICATION_STREAM,
            subjects: vec![format!("{NOTIF}*.*")],
            republish_source: format!("{NOTIF}>"),
            republish_destination: format!("{LIVE_PREFIX}{NOTIF}>"),
        },
    ]
}

/// The stored subject of a user's inbox.
pub fn private_inbox(user: &UserId) -> String {
    Subject::Inbox(user.clone()).to_string()
}

/// The live (re-published) subject of a user's inbox.
pub fn live_private_inbox(user: &UserId) -> String {
    Subject::Inbox(user.clone()).live()
}

/// The stored subject of a group's messages.
pub fn group_subject(group: &GroupId) -> String {
    Subject::Group(group.clone()).to_string()
}

/// The live (re-published) subject of a group's messages.
pub fn live_group_subject(group: &GroupId) -> String {
    Subject::Group(group.clone()).live()
}

/// The group of a stored group subject (`msg.group.G` → G), validated.
pub fn group_of(subject: &str) -> Option<GroupId> {
    match Subject::parse(subject) {
        Ok(Subject::Group(g)) => Some(g),
        _ => None,
    }
}

/// Where the group service announces a membership change of `group`.
pub fn group_changed(group: &GroupId) -> String {
    format!("{GROUP_CHANGED}{group}")
}

/// The group of a membership-change subject (`group.changed.G` → G), validated.
pub fn changed_group(subject: &str) -> Option<GroupId> {
    GroupId::parse(subject.strip_prefix(GROUP_CHANGED)?).ok()
}

/// `Nats-Msg-Id` of a group message (one copy, scoped by sender; `gm` keeps it apart
/// from direct messages with the same client id).
pub fn group_msg_id(sender: &UserId, id: &ClientMsgId) -> String {
    format!("gm:{sender}:{id}")
}

/// The live subjects of all of a user's notifications (any category).
pub fn live_notifications(user: &UserId) -> String {
    format!("{LIVE_PREFIX}{NOTIF}*.{user}")
}

/// Whether `subject` is one of `user`'s notification subjects
/// (`notif.{category}.{user}` with a known category).
pub fn is_notification_of(subject: &str, user: &UserId) -> bool {
    matches!(Subject::parse(subject), Ok(Subject::Notification { user: u, .. }) if &u == user)
}

/// `Nats-Msg-Id` of a receipt: one per reader, kind and message, so a repeated receipt
/// is stored once.
pub fn receipt_msg_id(reader: &UserId, kind: &str, sender: &UserId, id: &ClientMsgId) -> String {
    format!("rc:{reader}:{kind}:{sender}:{id}")
}

/// The claim subject of a receipt: one per reader, kind and message. The claim stream
/// keeps at most one message per subject and refuses a second, so a receipt is stored
/// once however late it is repeated (the message id only dedups within the hub's
/// duplicate window).
pub fn receipt_claim(reader: &UserId, kind: &str, sender: &UserId, id: &ClientMsgId) -> String {
    format!("{RECEIPT_CLAIM}{sender}.{id}.{reader}.{kind}")
}

/// Core NATS subject (no stream captures it: never stored) for typing events to a user.
pub fn typing_user(user: &UserId) -> String {
    format!("{TYPING}user.{user}")
}

/// Core NATS subject for typing events in a group.
pub fn typing_group(group: &GroupId) -> String {
    format!("{TYPING}group.{group}")
}

/// Every typing subject (to watch that none is ever stored).
pub const TYPING_ALL: &str = "typing.>";

/// Core NATS subject of a user's online/offline events.
pub fn presence_events(user: &UserId) -> String {
    format!("{PRESENCE}{user}")
}

/// Strips the live prefix: `live.msg.private.bob` → `msg.private.bob`.
pub fn stored_subject(live: &str) -> Option<&str> {
    live.strip_prefix(LIVE_PREFIX)
}

/// The ordering lane of a stored copy: its subject and its sender (read from its
/// `Nats-Msg-Id`, `dm:{sender}:…` or `gm:{sender}:…`). Copies in one lane must be
/// stored in the order they were accepted — one sender's messages in one conversation;
/// copies in different lanes have no order between them. A hash: two lanes that
/// collide only wait for each other.
pub fn ordering_lane(subject: &str, msg_id: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let sender = msg_id.split(':').nth(1).unwrap_or(msg_id);
    let mut h = std::hash::DefaultHasher::new();
    (subject, sender).hash(&mut h);
    h.finish()
}

/// `Nats-Msg-Id` of the recipient's copy of a direct message.
///
/// Scoped by sender, so two senders may use the same client id; the hub's dedup
/// window then stores a retried Send once. `:` cannot occur in an id, so the
/// encoding is unambiguous.
pub fn direct_msg_id(sender: &UserId, id: &ClientMsgId) -> String {
    format!("dm:{sender}:{id}")
}

/// The message service's request subjects (answered by any worker: queue group
/// [`MESSAGES_QUEUE`]).
pub const MESSAGES_HISTORY: &str = "svc.messages.history";
/// See [`MESSAGES_HISTORY`]: a page of the conversation list.
pub const MESSAGES_CONVERSATIONS: &str = "svc.messages.conversations";
/// See [`MESSAGES_HISTORY`]: where a sender's message went (for an amend).
pub const MESSAGES_ORIGINAL: &str = "svc.messages.original";
/// See [`MESSAGES_HISTORY`]: a user's unread total (the push badge).
pub const MESSAGES_UNREAD: &str = "svc.messages.unread";
/// See [`MESSAGES_HISTORY`]: pin or mute a conversation.
pub const MESSAGES_SETTINGS: &str = "svc.messages.settings";
/// Everything the message service answers.
pub const MESSAGES_ALL: &str = "svc.messages.>";
/// The message service's queue group.
pub const MESSAGES_QUEUE: &str = "petrel-messages";

/// Where the message service publishes `user`'s conversation updates (encoded
/// ConversationUpdate frames), for the connections that follow them.
pub fn live_conversations(user: &UserId) -> String {
    format!("{LIVE_CONVERSATIONS}{user}")
}

const LIVE_CONVERSATIONS: &str = "live.conv.";

/// `Nats-Msg-Id` of a read mark in `user`'s inbox about `conversation`.
pub fn read_mark_msg_id(
    user: &UserId,
    conversation: &crate::wire::Recipient,
    id: &ClientMsgId,
) -> String {
    match conversation {
        crate::wire::Recipient::User(u) => format!("rd:{user}:u:{u}:{id}"),
        crate::wire::Recipient::Group(g) => format!("rd:{user}:g:{g}:{id}"),
    }
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
        assert_eq!(group_of("msg.group.team-1"), Some(g.clone()));
        assert_eq!(group_of("msg.group.a.b"), None, "validated");
        assert_eq!(group_of("msg.private.bob"), None);
        assert_eq!(live_notifications(&bob), "live.notif.*.bob");
        assert!(is_notification_of("notif.friend.bob", &bob));
        assert!(!is_notification_of("notif.friend.bobby", &bob));
        assert!(!is_notification_of("notif.other.bob", &bob));
        assert_eq!(changed_group(&group_changed(&g)), Some(g));
    }

    #[test]
    fn parse_round_trips_and_names_the_stream() {
        for s in ["msg.private.bob", "msg.group.team-1", "notif.friend.bob"] {
            let subject = Subject::parse(s).unwrap();
            assert_eq!(subject.to_string(), s);
            assert_eq!(Subject::parse_live(&subject.live()), Some(subject.clone()));
            let expected = if s.starts_with("notif.") {
                NOTIFICATION_STREAM
            } else {
                MESSAGE_STREAM
            };
            assert_eq!(subject.stream(), expected);
        }
        assert!(matches!(
            Subject::parse("notif.other.bob"),
            Err(SubjectError::Category(_))
        ));
        assert!(matches!(
            Subject::parse("msg.private.a.b"),
            Err(SubjectError::Id(_))
        ));
        assert!(matches!(
            Subject::parse("typing.user.bob"),
            Err(SubjectError::Unknown(_))
        ));
    }

    #[test]
    fn incoming_is_classified() {
        assert_eq!(
            Incoming::classify("typing.user.bob"),
            Some(Incoming::Typing)
        );
        assert_eq!(Incoming::classify("presence.bob"), Some(Incoming::Presence));
        assert_eq!(
            Incoming::classify("live.msg.group.g"),
            Some(Incoming::Stored(Subject::Group(
                GroupId::parse("g").unwrap()
            )))
        );
        assert_eq!(Incoming::classify("msg.group.g"), None);
    }

    #[test]
    fn every_stored_kind_is_in_exactly_one_stream() {
        let layouts = stream_layouts();
        for s in ["msg.private.bob", "msg.group.g", "notif.system.bob"] {
            let subject = Subject::parse(s).unwrap();
            let holding: Vec<_> = layouts
                .iter()
                .filter(|l| {
                    l.subjects.iter().any(|f| {
                        let prefix = f.trim_end_matches(['*', '.']);
                        s.starts_with(prefix)
                    })
                })
                .map(|l| l.name)
                .collect();
            assert_eq!(holding, vec![subject.stream()], "{s}");
        }
    }
}
