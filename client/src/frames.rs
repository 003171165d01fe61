//! The client's frames, encoded once for both [`crate::Connection`] and
//! [`crate::Client`].

use bytes::Bytes;
use petrel_proto::{encode_frame, pb};

use crate::{Message, ReceiptKind, SendOptions, To};

pub(crate) fn client_frame(kind: pb::client_frame::Kind) -> Bytes {
    encode_frame(&pb::ClientFrame { kind: Some(kind) })
}

/// Hello with the resume cursors; `delivery_streams` is ignored by a WebSocket
/// gateway, so 0 there.
pub(crate) fn hello(
    token: &str,
    device: &str,
    cursors: &[(String, u64)],
    delivery_streams: u32,
) -> Bytes {
    client_frame(pb::client_frame::Kind::Hello(pb::Hello {
        token: token.to_string(),
        device: device.to_string(),
        cursors: cursors
            .iter()
            .map(|(subject, seq)| pb::Cursor {
                subject: subject.clone(),
                seq: *seq,
            })
            .collect(),
        protocol_version: petrel_proto::PROTOCOL_VERSION,
        delivery_streams,
    }))
}

pub(crate) fn ping(nonce: u64) -> Bytes {
    client_frame(pb::client_frame::Kind::Ping(pb::Ping { nonce }))
}

pub(crate) fn send(
    to: To<'_>,
    id: &str,
    content: Bytes,
    content_type: &str,
    options: SendOptions,
) -> Bytes {
    let to = match to {
        To::User(u) => pb::send::To::User(u.to_string()),
        To::Group(g) => pb::send::To::Group(g.to_string()),
    };
    client_frame(pb::client_frame::Kind::Send(pb::Send {
        client_msg_id: id.to_string(),
        to: Some(to),
        content,
        content_type: content_type.to_string(),
        reply_to: options
            .reply_to
            .map(|(subject, seq)| pb::MessageRef { subject, seq }),
        mentions: options.mentions,
    }))
}

/// An edit (`Some(content)`) or recall (`None`) of the sender's message `target`.
pub(crate) fn amend(id: &str, target: &str, content: Option<Bytes>) -> Bytes {
    client_frame(pb::client_frame::Kind::Amend(pb::Amend {
        client_msg_id: id.to_string(),
        target: target.to_string(),
        recall: content.is_none(),
        content_type: if content.is_some() {
            "text/plain".into()
        } else {
            String::new()
        },
        content: content.unwrap_or_default(),
    }))
}

pub(crate) fn ack(cursors: impl IntoIterator<Item = (String, u64)>) -> Bytes {
    client_frame(pb::client_frame::Kind::Ack(pb::Ack {
        cursors: cursors
            .into_iter()
            .map(|(subject, seq)| pb::Cursor { subject, seq })
            .collect(),
    }))
}

pub(crate) fn watch(users: &[&str]) -> Bytes {
    client_frame(pb::client_frame::Kind::Watch(pb::Watch {
        users: users.iter().map(|u| u.to_string()).collect(),
    }))
}

pub(crate) fn typing(to: To<'_>, typing: bool) -> Bytes {
    let to = match to {
        To::User(u) => pb::typing::To::User(u.to_string()),
        To::Group(g) => pb::typing::To::Group(g.to_string()),
    };
    client_frame(pb::client_frame::Kind::Typing(pb::Typing {
        to: Some(to),
        typing,
    }))
}

pub(crate) fn receipt(kind: ReceiptKind, message: &Message) -> Bytes {
    client_frame(pb::client_frame::Kind::Receipt(pb::Receipt {
        kind: match kind {
            ReceiptKind::Delivered => pb::receipt::Kind::Delivered,
            ReceiptKind::Read => pb::receipt::Kind::Read,
        } as i32,
        subject: message.subject.clone(),
        seq: message.seq,
        sender: message.from.clone(),
        client_msg_id: message.client_msg_id.clone(),
    }))
}

pub(crate) fn mark_read(conversation: To<'_>, seq: u64) -> Bytes {
    use pb::mark_read::Conversation as C;
    let conversation = match conversation {
        To::User(u) => C::User(u.to_string()),
        To::Group(g) => C::Group(g.to_string()),
    };
    client_frame(pb::client_frame::Kind::MarkRead(pb::MarkRead {
        conversation: Some(conversation),
        seq,
    }))
}

/// A request for a page of the conversation list (no live follow: the list is asked
/// again after a reconnect).
pub(crate) fn list_conversations(request_id: u64, offset: u32, limit: u32) -> Bytes {
    client_frame(pb::client_frame::Kind::ListConversations(
        pb::ListConversations {
            request_id,
            offset,
            limit,
            follow: false,
        },
    ))
}
