//! The message service's NATS API (request/reply on `svc.messages.*`): the queries a
//! gateway sends and the answers, protobuf at this boundary and domain types on both
//! sides of it.

use bytes::Bytes;
use petrel_proto::pb;
use prost::Message as _;

use crate::ids::{ClientMsgId, GroupId, Seq, UserId};
use crate::session::Original;
use crate::wire::{Delivery, PayloadError, Recipient, decode_stored, message_to_pb};

fn decode_err(e: prost::DecodeError) -> PayloadError {
    PayloadError::Decode(e.to_string())
}

fn recipient(user: String, group: String) -> Result<Recipient, PayloadError> {
    Ok(if group.is_empty() {
        Recipient::User(UserId::parse(user)?)
    } else {
        Recipient::Group(GroupId::parse(group)?)
    })
}

/// A page of the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryQuery {
    /// Who asks (the gateway checked the subject is the user's).
    pub user: UserId,
    /// The subject.
    pub subject: String,
    /// On the inbox: only the conversation with this user.
    pub with: Option<UserId>,
    /// Newest first, before `before` (0: from the newest); else oldest first after `after`.
    pub newest_first: bool,
    /// See `newest_first`.
    pub before: Seq,
    /// See `newest_first`.
    pub after: Seq,
    /// Most messages.
    pub limit: u32,
}

impl HistoryQuery {
    /// Request bytes.
    pub fn encode(&self) -> Bytes {
        pb::HistoryQuery {
            user: self.user.to_string(),
            subject: self.subject.clone(),
            with: self
                .with
                .as_ref()
                .map(|u| u.to_string())
                .unwrap_or_default(),
            newest_first: self.newest_first,
            before: self.before.0,
            after: self.after.0,
            limit: self.limit,
        }
        .encode_to_vec()
        .into()
    }

    /// Reads a request.
    pub fn decode(bytes: Bytes) -> Result<Self, PayloadError> {
        let q = pb::HistoryQuery::decode(bytes).map_err(decode_err)?;
        Ok(Self {
            user: UserId::parse(q.user)?,
            subject: q.subject,
            with: match q.with.as_str() {
                "" => None,
                _ => Some(UserId::parse(q.with)?),
            },
            newest_first: q.newest_first,
            before: Seq(q.before),
            after: Seq(q.after),
            limit: q.limit.clamp(1, crate::wire::MAX_SYNC_LIMIT),
        })
    }
}

/// One archived message as the archive holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archived {
    /// Stored subject.
    pub subject: String,
    /// Stream sequence.
    pub seq: Seq,
    /// The stored payload, as the hub stored it.
    pub payload: Bytes,
    /// When last edited (0: never).
    pub edited_ms: u64,
    /// Recalled.
    pub recalled: bool,
    /// The content now, when edited.
    pub content: Option<(Bytes, String)>,
}

/// Encodes a page of the archive (or why there is none).
pub fn encode_history_page(page: Result<(&[Archived], bool), String>) -> Bytes {
    let out = match page {
        Ok((rows, more)) => pb::HistoryPage {
            messages: rows
                .iter()
                .map(|a| pb::ArchivedMessage {
                    subject: a.subject.clone(),
                    seq: a.seq.0,
                    payload: a.payload.clone(),
                    edited_ms: a.edited_ms,
                    recalled: a.recalled,
                    content: a.content.as_ref().map(|c| c.0.clone()).unwrap_or_default(),
                    content_type: a.content.as_ref().map(|c| c.1.clone()).unwrap_or_default(),
                })
                .collect(),
            more,
            error: String::new(),
        },
        Err(error) => pb::HistoryPage {
            error,
            ..Default::default()
        },
    };
    out.encode_to_vec().into()
}

/// Reads a page of the archive as deliveries, edits applied (`prev_seq` is 0: the
/// archive's pages are history, not a delivery chain). `Err` carries the service's
/// refusal or a decoding failure.
pub fn decode_history_page(bytes: Bytes) -> Result<(Vec<Delivery>, bool), String> {
    let page = pb::HistoryPage::decode(bytes).map_err(|e| e.to_string())?;
    if !page.error.is_empty() {
        return Err(page.error);
    }
    let mut out = Vec::with_capacity(page.messages.len());
    for a in page.messages {
        out.push(
            archived_delivery(Archived {
                subject: a.subject,
                seq: Seq(a.seq),
                payload: a.payload,
                edited_ms: a.edited_ms,
                recalled: a.recalled,
                content: (a.edited_ms > 0 && !a.recalled).then_some((a.content, a.content_type)),
            })
            .map_err(|e| e.to_string())?,
        );
    }
    Ok((out, page.more))
}

/// An archived message as a delivery, as it reads now: edited content, or none when
/// recalled.
pub fn archived_delivery(a: Archived) -> Result<Delivery, PayloadError> {
    let mut message = decode_stored(&a.subject, a.payload)?;
    if a.recalled {
        message.content = Bytes::new();
    } else if let Some((content, content_type)) = a.content {
        message.content = content;
        message.content_type = content_type;
    }
    message.meta.edited_ms = a.edited_ms;
    message.meta.recalled = a.recalled;
    Ok(Delivery {
        subject: a.subject,
        seq: a.seq,
        prev_seq: Seq(0),
        message,
    })
}

/// A page of the user's conversation list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationsQuery {
    /// Whose.
    pub user: UserId,
    /// The groups it is in.
    pub groups: Vec<GroupId>,
    /// How many to skip.
    pub offset: u32,
    /// Page size.
    pub limit: u32,
}

impl ConversationsQuery {
    /// Request bytes.
    pub fn encode(&self) -> Bytes {
        pb::ConversationsQuery {
            user: self.user.to_string(),
            groups: self.groups.iter().map(|g| g.to_string()).collect(),
            offset: self.offset,
            limit: self.limit,
        }
        .encode_to_vec()
        .into()
    }

    /// Reads a request.
    pub fn decode(bytes: Bytes) -> Result<Self, PayloadError> {
        let q = pb::ConversationsQuery::decode(bytes).map_err(decode_err)?;
        Ok(Self {
            user: UserId::parse(q.user)?,
            groups: parse_groups(q.groups)?,
            offset: q.offset,
            limit: q.limit.clamp(1, crate::wire::MAX_CONVERSATIONS_LIMIT),
        })
    }
}

/// What a user changes about one of their conversations (a field left `None` stays).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The other user, or the group.
    pub with: Recipient,
    /// Pin (true) or unpin.
    pub pinned: Option<bool>,
    /// Mute (true) or unmute.
    pub muted: Option<bool>,
}

/// A [`Settings`] change for `user`, answered like a [`ConversationsQuery`] with the
/// changed conversation alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingsQuery {
    /// Whose.
    pub user: UserId,
    /// The groups it is in (for the answer's view).
    pub groups: Vec<GroupId>,
    /// The change.
    pub settings: Settings,
}

impl SettingsQuery {
    /// Request bytes.
    pub fn encode(&self) -> Bytes {
        use pb::settings_query::Conversation;
        pb::SettingsQuery {
            user: self.user.to_string(),
            groups: self.groups.iter().map(|g| g.to_string()).collect(),
            conversation: Some(match &self.settings.with {
                Recipient::User(u) => Conversation::WithUser(u.to_string()),
                Recipient::Group(g) => Conversation::WithGroup(g.to_string()),
            }),
            pinned: self.settings.pinned,
            muted: self.settings.muted,
        }
        .encode_to_vec()
        .into()
    }

    /// Reads a request.
    pub fn decode(bytes: Bytes) -> Result<Self, PayloadError> {
        use pb::settings_query::Conversation;
        let q = pb::SettingsQuery::decode(bytes).map_err(decode_err)?;
        let with = match q.conversation {
            Some(Conversation::WithUser(u)) => Recipient::User(UserId::parse(u)?),
            Some(Conversation::WithGroup(g)) => Recipient::Group(GroupId::parse(g)?),
            None => return Err(PayloadError::Decode("no conversation".into())),
        };
        Ok(Self {
            user: UserId::parse(q.user)?,
            groups: parse_groups(q.groups)?,
            settings: Settings {
                with,
                pinned: q.pinned,
                muted: q.muted,
            },
        })
    }
}

/// One conversation of a user, as the message service computes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationView {
    /// The other user, or the group.
    pub with: Recipient,
    /// Its newest message, as it reads now.
    pub last: Option<Delivery>,
    /// Messages from others after the read position (capped by the service).
    pub unread: u32,
    /// Of those, the ones mentioning the user.
    pub unread_mentions: u32,
    /// The read position.
    pub read_seq: Seq,
    /// Pinned.
    pub pinned: bool,
    /// Muted.
    pub muted: bool,
    /// When it last changed (ms).
    pub updated_ms: u64,
}

impl ConversationView {
    fn to_pb(&self) -> pb::Conversation {
        pb::Conversation {
            with: Some(match &self.with {
                Recipient::User(u) => pb::conversation::With::User(u.to_string()),
                Recipient::Group(g) => pb::conversation::With::Group(g.to_string()),
            }),
            last: self.last.as_ref().map(message_to_pb),
            unread: self.unread,
            unread_mentions: self.unread_mentions,
            read_seq: self.read_seq.0,
            pinned: self.pinned,
            muted: self.muted,
            updated_ms: self.updated_ms,
        }
    }
}

/// The service's answer to a [`ConversationsQuery`] (the gateway sets the request id).
pub fn encode_conversation_list(page: Result<(&[ConversationView], bool), String>) -> Bytes {
    let list = match page {
        Ok((views, more)) => pb::ConversationList {
            conversations: views.iter().map(ConversationView::to_pb).collect(),
            more,
            ..Default::default()
        },
        Err(detail) => pb::ConversationList {
            error: crate::ErrorCode::Unavailable.to_wire() as i32,
            detail,
            ..Default::default()
        },
    };
    list.encode_to_vec().into()
}

/// A ConversationUpdate frame (length-prefixed), encoded once by the service and
/// forwarded as is by every gateway with a follower.
pub fn encode_conversation_update(view: &ConversationView) -> Bytes {
    petrel_proto::encode_frame(&pb::ServerFrame {
        kind: Some(pb::server_frame::Kind::ConversationUpdate(
            pb::ConversationUpdate {
                conversation: Some(view.to_pb()),
            },
        )),
    })
}

/// The answer to an unread-total request (a [`ConversationsQuery`]).
pub fn encode_unread_total(total: Result<u32, String>) -> Bytes {
    let t = match total {
        Ok(total) => pb::UnreadTotal {
            total,
            error: String::new(),
        },
        Err(error) => pb::UnreadTotal { total: 0, error },
    };
    t.encode_to_vec().into()
}

/// Reads an [`encode_unread_total`] answer.
pub fn decode_unread_total(bytes: Bytes) -> Result<u32, String> {
    let t = pb::UnreadTotal::decode(bytes).map_err(|e| e.to_string())?;
    if !t.error.is_empty() {
        return Err(t.error);
    }
    Ok(t.total)
}

/// Where a sender's message went, for an amend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginalQuery {
    /// The sender.
    pub user: UserId,
    /// Its message id.
    pub client_msg_id: ClientMsgId,
}

impl OriginalQuery {
    /// Request bytes.
    pub fn encode(&self) -> Bytes {
        pb::OriginalQuery {
            user: self.user.to_string(),
            client_msg_id: self.client_msg_id.to_string(),
        }
        .encode_to_vec()
        .into()
    }

    /// Reads a request.
    pub fn decode(bytes: Bytes) -> Result<Self, PayloadError> {
        let q = pb::OriginalQuery::decode(bytes).map_err(decode_err)?;
        Ok(Self {
            user: UserId::parse(q.user)?,
            client_msg_id: ClientMsgId::parse(q.client_msg_id)?,
        })
    }
}

/// The asker's groups, as the gateway sent them.
fn parse_groups(groups: Vec<String>) -> Result<Vec<GroupId>, PayloadError> {
    Ok(groups
        .into_iter()
        .map(GroupId::parse)
        .collect::<Result<_, _>>()?)
}

/// The answer to an [`OriginalQuery`]: found or not, or the service's error.
pub fn encode_original(found: Result<Option<&Original>, String>) -> Bytes {
    let o = match found {
        Ok(Some(o)) => pb::Original {
            found: true,
            to: o.to.user().map(|u| u.to_string()).unwrap_or_default(),
            group: match &o.to {
                Recipient::Group(g) => g.to_string(),
                Recipient::User(_) => String::new(),
            },
            time_ms: o.time_ms,
            recalled: o.recalled,
            error: String::new(),
        },
        Ok(None) => pb::Original::default(),
        Err(error) => pb::Original {
            error,
            ..Default::default()
        },
    };
    o.encode_to_vec().into()
}

/// Reads an [`encode_original`] answer.
pub fn decode_original(bytes: Bytes) -> Result<Option<Original>, String> {
    let o = pb::Original::decode(bytes).map_err(|e| e.to_string())?;
    if !o.error.is_empty() {
        return Err(o.error);
    }
    if !o.found {
        return Ok(None);
    }
    Ok(Some(Original {
        to: recipient(o.to, o.group).map_err(|e| e.to_string())?,
        time_ms: o.time_ms,
        recalled: o.recalled,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Meta, StoredMessage};

    #[test]
    fn archived_pages_read_back_with_their_edits() {
        let m = StoredMessage {
            from: UserId::parse("alice").unwrap(),
            to: Recipient::User(UserId::parse("bob").unwrap()),
            from_device: "phone".into(),
            client_msg_id: "m1".into(),
            content: Bytes::from_static(b"helo"),
            content_type: "text/plain".into(),
            time_ms: 5,
            gateway_id: "e".into(),
            notification: None,
            receipt: None,
            meta: Meta::default(),
        };
        let rows = [
            Archived {
                subject: "msg.private.bob".into(),
                seq: Seq(3),
                payload: m.encode(),
                edited_ms: 9,
                recalled: false,
                content: Some((Bytes::from_static(b"hello"), "text/plain".into())),
            },
            Archived {
                subject: "msg.private.bob".into(),
                seq: Seq(4),
                payload: m.encode(),
                edited_ms: 10,
                recalled: true,
                content: None,
            },
        ];
        let (out, more) = decode_history_page(encode_history_page(Ok((&rows, true)))).unwrap();
        assert!(more);
        assert_eq!(&out[0].message.content[..], b"hello");
        assert_eq!(out[0].message.meta.edited_ms, 9);
        assert!(out[1].message.content.is_empty() && out[1].message.meta.recalled);
        assert_eq!(
            decode_history_page(encode_history_page(Err("down".into()))),
            Err("down".to_string())
        );
    }

    #[test]
    fn originals_round_trip() {
        let o = Original {
            to: Recipient::Group(GroupId::parse("team").unwrap()),
            time_ms: 7,
            recalled: false,
        };
        assert_eq!(decode_original(encode_original(Ok(Some(&o)))), Ok(Some(o)));
        assert_eq!(decode_original(encode_original(Ok(None))), Ok(None));
        assert!(decode_original(encode_original(Err("x".into()))).is_err());
    }
}
