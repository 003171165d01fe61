//! What a stored message means for the message service, without I/O: which
//! conversation it belongs to, how it is archived, and what it changes — a
//! conversation's time, a read position, an earlier message (edit, recall).
//!
//! A direct message is stored twice (the recipient's inbox and the sender's own copy),
//! so each user's copy names its own conversation: in `bob`'s inbox a message from
//! `alice` is in bob's conversation with alice, and alice's copy in hers with bob. A
//! group's one copy is every member's conversation with the group.

pub mod api;

use crate::ids::{GroupId, Seq, UserId};
use crate::subject::Subject;
use crate::wire::{Amendment, Recipient, StoredMessage};

/// What kind of archived row a stored message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowKind {
    /// A message someone wrote: counted, shown, the conversation's last.
    Message = 0,
    /// A delivered/read receipt.
    Receipt = 1,
    /// An edit or recall of an earlier message.
    Amendment = 2,
    /// A read mark in its owner's inbox.
    ReadMark = 3,
}

/// One archived row's placement: whose subject it is on and which conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// What it is.
    pub kind: RowKind,
    /// Direct: the inbox's owner and the other party (the same user for a note to
    /// oneself; for a read mark, the conversation it marks). `None` on a group subject.
    pub direct: Option<(UserId, UserId)>,
    /// The group, on a group subject.
    pub group: Option<GroupId>,
}

/// What archiving a stored message changes besides adding its row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// `owner`'s direct conversation with `with` has a new message at `time_ms`; when
    /// the owner wrote it, the owner has read up to it.
    DirectMessage {
        /// Whose conversation.
        owner: UserId,
        /// The other party.
        with: UserId,
        /// When it was sent.
        time_ms: u64,
        /// The owner's own message: its read position moves to it.
        read_to: Option<Seq>,
    },
    /// The group has a new message at `seq`; its sender has read up to it.
    GroupMessage {
        /// The group.
        group: GroupId,
        /// Who wrote it.
        sender: UserId,
        /// Its sequence on the group's subject.
        seq: Seq,
        /// When it was sent.
        time_ms: u64,
    },
    /// `owner` read its conversation `with` up to `seq` (on that conversation's
    /// subject); `Seq(0)` on a group: up to the newest message archived.
    Read {
        /// Whose read position.
        owner: UserId,
        /// The conversation.
        with: Recipient,
        /// Up to here.
        seq: Seq,
        /// When it was read.
        time_ms: u64,
    },
    /// `sender` edited or recalled its message `amendment.target`.
    Amend {
        /// Whose message.
        sender: UserId,
        /// What changed.
        amendment: Amendment,
        /// When.
        time_ms: u64,
    },
}

/// Places the stored message at `seq` on `subject` and lists its effects. `None` for a
/// subject that is not a message subject (notifications are not conversations).
pub fn archive(subject: &str, seq: Seq, m: &StoredMessage) -> Option<(Placement, Vec<Effect>)> {
    let parsed = Subject::parse(subject).ok()?;
    match parsed {
        Subject::Inbox(owner) => Some(inbox(owner, seq, m)),
        Subject::Group(group) => {
            let kind = if m.meta.amends.is_some() {
                RowKind::Amendment
            } else {
                RowKind::Message
            };
            let effects = match &m.meta.amends {
                Some(a) => vec![Effect::Amend {
                    sender: m.from.clone(),
                    amendment: a.clone(),
                    time_ms: m.time_ms,
                }],
                None => vec![Effect::GroupMessage {
                    group: group.clone(),
                    sender: m.from.clone(),
                    seq,
                    time_ms: m.time_ms,
                }],
            };
            Some((
                Placement {
                    kind,
                    direct: None,
                    group: Some(group),
                },
                effects,
            ))
        }
        Subject::Notification { .. } => None,
    }
}

fn inbox(owner: UserId, seq: Seq, m: &StoredMessage) -> (Placement, Vec<Effect>) {
    let to = m.to.user().cloned().unwrap_or_else(|| owner.clone());
    if let Some(read) = &m.meta.read {
        let seq = match (&read.conversation, read.seq) {
            // Up to the newest: in a direct conversation, everything before the mark
            // on the same inbox.
            (Recipient::User(_), Seq(0)) => Seq(seq.0.saturating_sub(1)),
            (_, s) => s,
        };
        let with = match &read.conversation {
            Recipient::User(u) => u.clone(),
            Recipient::Group(_) => owner.clone(),
        };
        let effects = vec![Effect::Read {
            owner: owner.clone(),
            with: read.conversation.clone(),
            seq,
            time_ms: m.time_ms,
        }];
        return (placed(RowKind::ReadMark, owner, with), effects);
    }
    if let Some(r) = &m.receipt {
        // In the sender's inbox, from the reader: a READ moves the reader's position in
        // its conversation with the sender (its own inbox's sequence).
        let effects = match r.kind {
            crate::wire::ReceiptKind::Read => vec![Effect::Read {
                owner: m.from.clone(),
                with: Recipient::User(owner.clone()),
                seq: r.seq,
                time_ms: m.time_ms,
            }],
            crate::wire::ReceiptKind::Delivered => Vec::new(),
        };
        return (placed(RowKind::Receipt, owner, m.from.clone()), effects);
    }
    // The other party: the sender, or for the owner's own copy, the recipient.
    let with = if m.from == owner { to } else { m.from.clone() };
    if let Some(a) = &m.meta.amends {
        let effects = vec![Effect::Amend {
            sender: m.from.clone(),
            amendment: a.clone(),
            time_ms: m.time_ms,
        }];
        return (placed(RowKind::Amendment, owner, with), effects);
    }
    let effects = vec![Effect::DirectMessage {
        owner: owner.clone(),
        with: with.clone(),
        time_ms: m.time_ms,
        read_to: (m.from == owner).then_some(seq),
    }];
    (placed(RowKind::Message, owner, with), effects)
}

fn placed(kind: RowKind, owner: UserId, with: UserId) -> Placement {
    Placement {
        kind,
        direct: Some((owner, with)),
        group: None,
    }
}

/// A short text for a conversation list's last message: the first line of a text
/// message, at most `max` characters; empty for other content.
pub fn preview(content_type: &str, content: &[u8], max: usize) -> String {
    if !(content_type.is_empty() || content_type.starts_with("text/")) {
        return String::new();
    }
    let text = String::from_utf8_lossy(content);
    text.lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(max)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ClientMsgId;
    use crate::wire::{Meta, ReadMark, Receipt, ReceiptKind};
    use bytes::Bytes;

    fn u(s: &str) -> UserId {
        UserId::parse(s).unwrap()
    }

    fn msg(from: &str, to: Recipient, meta: Meta) -> StoredMessage {
        StoredMessage {
            from: u(from),
            to,
            from_device: "d".into(),
            client_msg_id: "m1".into(),
            content: Bytes::from_static(b"hi"),
            content_type: "text/plain".into(),
            time_ms: 10,
            gateway_id: "g".into(),
            notification: None,
            receipt: None,
            meta,
        }
    }

    #[test]
    fn each_copy_of_a_direct_message_is_its_owners_conversation() {
        let m = msg("alice", Recipient::User(u("bob")), Meta::default());
        let (p, e) = archive("msg.private.bob", Seq(4), &m).unwrap();
        assert_eq!(p.kind, RowKind::Message);
        assert_eq!(p.direct, Some((u("bob"), u("alice"))));
        assert_eq!(
            e,
            vec![Effect::DirectMessage {
                owner: u("bob"),
                with: u("alice"),
                time_ms: 10,
                read_to: None
            }]
        );
        // alice's own copy: her conversation with bob, read up to it.
        let (p, e) = archive("msg.private.alice", Seq(5), &m).unwrap();
        assert_eq!(p.direct, Some((u("alice"), u("bob"))));
        assert!(matches!(
            &e[0],
            Effect::DirectMessage {
                read_to: Some(Seq(5)),
                ..
            }
        ));
    }

    #[test]
    fn a_read_receipt_moves_the_readers_position_and_a_mark_its_owners() {
        let mut m = msg("bob", Recipient::User(u("alice")), Meta::default());
        m.receipt = Some(Receipt {
            kind: ReceiptKind::Read,
            subject: "msg.private.bob".into(),
            seq: Seq(4),
            sender: u("alice"),
            client_msg_id: ClientMsgId::parse("m1").unwrap(),
        });
        let (p, e) = archive("msg.private.alice", Seq(9), &m).unwrap();
        assert_eq!(p.kind, RowKind::Receipt);
        assert_eq!(
            e,
            vec![Effect::Read {
                owner: u("bob"),
                with: Recipient::User(u("alice")),
                seq: Seq(4),
                time_ms: 10
            }]
        );
        let g = GroupId::parse("team").unwrap();
        let mark = msg(
            "bob",
            Recipient::User(u("bob")),
            Meta {
                read: Some(ReadMark {
                    conversation: Recipient::User(u("alice")),
                    seq: Seq(0),
                }),
                ..Meta::default()
            },
        );
        let (p, e) = archive("msg.private.bob", Seq(12), &mark).unwrap();
        assert_eq!(p.kind, RowKind::ReadMark);
        // "Up to the newest" in a direct conversation: everything before the mark.
        assert!(matches!(&e[0], Effect::Read { seq: Seq(11), .. }));
        let mark = msg(
            "bob",
            Recipient::User(u("bob")),
            Meta {
                read: Some(ReadMark {
                    conversation: Recipient::Group(g.clone()),
                    seq: Seq(0),
                }),
                ..Meta::default()
            },
        );
        let (_, e) = archive("msg.private.bob", Seq(13), &mark).unwrap();
        assert_eq!(
            e,
            vec![Effect::Read {
                owner: u("bob"),
                with: Recipient::Group(g),
                seq: Seq(0),
                time_ms: 10
            }]
        );
    }

    #[test]
    fn group_messages_and_amendments() {
        let g = GroupId::parse("team").unwrap();
        let m = msg("carol", Recipient::Group(g.clone()), Meta::default());
        let (p, e) = archive("msg.group.team", Seq(3), &m).unwrap();
        assert_eq!(p.group, Some(g.clone()));
        assert!(matches!(&e[0], Effect::GroupMessage { seq: Seq(3), .. }));
        let amend = msg(
            "carol",
            Recipient::Group(g),
            Meta {
                amends: Some(Amendment {
                    target: ClientMsgId::parse("m0").unwrap(),
                    recall: true,
                }),
                ..Meta::default()
            },
        );
        let (p, e) = archive("msg.group.team", Seq(4), &amend).unwrap();
        assert_eq!(p.kind, RowKind::Amendment);
        assert!(matches!(&e[0], Effect::Amend { .. }));
        assert!(archive("notif.friend.bob", Seq(1), &m).is_none());
    }

    #[test]
    fn previews_are_the_first_line_of_text() {
        assert_eq!(preview("text/plain", b"hello\nworld", 3), "hel");
        assert_eq!(preview("image/png", b"\x89PNG", 10), "");
        assert_eq!(preview("", b"hi", 10), "hi");
    }
}
