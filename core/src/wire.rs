//! The boundary between generated protobuf types and domain types.
//!
//! [`decode_command`] turns a frame's bytes into a validated [`Command`];
//! [`encode_reply`] and [`encode_deliver`] turn domain replies into frame bytes.
//! Nothing outside this module needs to touch `petrel_proto::pb`.

use bytes::Bytes;
use petrel_proto::{encode_frame, pb};
use prost::Message as _;

use crate::error::ErrorCode;
use crate::ids::{ClientMsgId, GroupId, Seq, UserId};

/// A validated client frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Authenticate the connection.
    Hello {
        /// The JWT.
        token: String,
        /// Device id as sent (validated with the token).
        device: String,
        /// The protocol version the client speaks.
        protocol_version: u32,
        /// Resume cursors as sent (validated by the session).
        cursors: Vec<(String, Seq)>,
        /// Delivery streams the client reads (capped by the session at
        /// [`MAX_DELIVERY_STREAMS`]).
        delivery_streams: u32,
    },
    /// Send a direct message.
    Send(SendCommand),
    /// A Send that failed validation: answered with a rejected SendResult, not fatal.
    BadSend {
        /// The client's message id as sent, echoed back.
        client_msg_id: String,
        /// Why it was refused.
        code: ErrorCode,
        /// Human-readable detail.
        detail: String,
    },
    /// Cumulative acknowledgements.
    Ack(Vec<(String, Seq)>),
    /// Keep-alive.
    Ping(u64),
    /// A page of history.
    Sync(SyncRequest),
    /// A delivered/read receipt about a message the user received.
    Receipt(Receipt),
    /// Follow these users' presence (replacing the earlier list).
    Watch(Vec<UserId>),
    /// Register this device's push target, or remove it (`target` `None`).
    RegisterPush(PushRequest),
    /// Typing started or stopped in a conversation.
    Typing {
        /// The other party or the group.
        to: Recipient,
        /// Typing now.
        typing: bool,
    },
    /// Edit or recall one of the sender's earlier messages.
    Amend(AmendCommand),
    /// The user read a conversation up to a sequence.
    MarkRead(ReadMark),
    /// A page of the user's conversation list (and, with `follow`, live updates).
    ListConversations(ConversationsRequest),
    /// Pin, unpin, mute or unmute a conversation; a malformed one is answered on its
    /// request id (a ConversationList with the error).
    SetConversation {
        /// Echoed in the answer.
        request_id: u64,
        /// The change, or why it is refused.
        settings: Result<crate::conversation::api::Settings, (ErrorCode, String)>,
    },
    /// A frame that is well-formed but carries an invalid field: answered with a
    /// non-fatal Error.
    Invalid {
        /// Code.
        code: ErrorCode,
        /// Detail.
        detail: String,
    },
}

/// A `RegisterPush` frame: the target is validated by the session
/// ([`crate::push::Registration::new`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushRequest {
    /// Echoed in the answer.
    pub request_id: u64,
    /// `None`: unregister.
    pub target: Option<crate::push::PushTarget>,
    /// BCP 47 tag.
    pub locale: String,
    /// Preview preference.
    pub preview: crate::push::Preview,
}

impl PushRequest {
    fn from_pb(r: pb::RegisterPush) -> Self {
        use crate::push::{Preview, PushTarget};
        use pb::register_push::Target;
        let target = r.target.map(|t| match t {
            Target::Apns(a) => PushTarget::Apns {
                token: a.device_token,
                topic: a.topic,
                sandbox: a.sandbox,
            },
            Target::Fcm(f) => PushTarget::Fcm { token: f.token },
            Target::Webpush(w) => PushTarget::WebPush {
                endpoint: w.endpoint,
                p256dh: w.p256dh,
                auth: w.auth,
            },
        });
        let preview = match pb::register_push::Preview::try_from(r.preview) {
            Ok(pb::register_push::Preview::Show) => Preview::Show,
            Ok(pb::register_push::Preview::Hide) => Preview::Hide,
            _ => Preview::Default,
        };
        Self {
            request_id: r.request_id,
            target,
            locale: r.locale,
            preview,
        }
    }
}

/// Delivered or read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReceiptKind {
    /// The message reached a device.
    Delivered,
    /// The user read it.
    Read,
}

impl ReceiptKind {
    /// Short name, used in message ids.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Read => "read",
        }
    }
}

/// A receipt: `kind` for the message `client_msg_id` from `sender`, which the reader
/// got on `subject` at `seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// Delivered or read.
    pub kind: ReceiptKind,
    /// Where the reader got it (its inbox).
    pub subject: String,
    /// Its sequence there.
    pub seq: Seq,
    /// The original sender.
    pub sender: UserId,
    /// The original sender's message id.
    pub client_msg_id: ClientMsgId,
}

impl Receipt {
    fn from_pb(r: pb::Receipt) -> Result<Self, (ErrorCode, String)> {
        let kind = match pb::receipt::Kind::try_from(r.kind) {
            Ok(pb::receipt::Kind::Delivered) => ReceiptKind::Delivered,
            Ok(pb::receipt::Kind::Read) => ReceiptKind::Read,
            _ => {
                return Err((
                    ErrorCode::Protocol,
                    "receipt kind must be DELIVERED or READ".into(),
                ));
            }
        };
        Ok(Self {
            kind,
            subject: truncate(&r.subject, 200),
            seq: Seq(r.seq),
            sender: UserId::parse(r.sender).map_err(|e| (ErrorCode::InvalidId, e.to_string()))?,
            client_msg_id: ClientMsgId::parse(r.client_msg_id)
                .map_err(|e| (ErrorCode::InvalidId, e.to_string()))?,
        })
    }

    fn to_pb(&self) -> pb::Receipt {
        pb::Receipt {
            kind: match self.kind {
                ReceiptKind::Delivered => pb::receipt::Kind::Delivered,
                ReceiptKind::Read => pb::receipt::Kind::Read,
            } as i32,
            subject: self.subject.clone(),
            seq: self.seq.0,
            sender: self.sender.to_string(),
            client_msg_id: self.client_msg_id.to_string(),
        }
    }
}

/// Most users one connection may watch.
pub const MAX_WATCH: usize = 256;

/// Most unidirectional delivery streams the gateway opens toward one client (QUIC and
/// WebTransport): enough to keep conversations from holding each other up, few enough
/// to stay well inside the peers' stream limits.
pub const MAX_DELIVERY_STREAMS: u32 = 16;

/// A user's presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceState {
    /// The directory cannot be read.
    Unknown,
    /// At least one device connected.
    Online,
    /// No device connected.
    Offline,
}

/// A Presence frame for `user`.
pub fn encode_presence(user: &UserId, state: PresenceState) -> Bytes {
    let state = match state {
        PresenceState::Unknown => pb::presence::State::Unknown,
        PresenceState::Online => pb::presence::State::Online,
        PresenceState::Offline => pb::presence::State::Offline,
    };
    encode_frame(&pb::ServerFrame {
        kind: Some(pb::server_frame::Kind::Presence(pb::Presence {
            user: user.to_string(),
            state: state as i32,
        })),
    })
}

/// Most messages in one history page.
pub const MAX_SYNC_LIMIT: u32 = 200;

/// Most conversations in one page of the list.
pub const MAX_CONVERSATIONS_LIMIT: u32 = 200;

/// Most users one message may mention.
pub const MAX_MENTIONS: usize = 32;

/// A stored message, by where it is stored.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MessageRef {
    /// Its stored subject.
    pub subject: String,
    /// Its stream sequence.
    pub seq: Seq,
}

/// What an amendment does to the sender's message `target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Amendment {
    /// The amended message's `client_msg_id`.
    pub target: ClientMsgId,
    /// Recalled (deleted for everyone) rather than edited.
    pub recall: bool,
}

/// "Read up to `seq`" in a conversation (0: up to its newest message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadMark {
    /// The conversation: the other user, or the group.
    pub conversation: Recipient,
    /// A sequence on the conversation's subject.
    pub seq: Seq,
}

/// Everything a stored message may carry besides its content: what it replies to,
/// whom it mentions, what it amends, a read mark; and, as the archive serves it,
/// whether it was edited or recalled since.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Meta {
    /// The message it replies to.
    pub reply_to: Option<MessageRef>,
    /// Users it mentions.
    pub mentions: Vec<UserId>,
    /// It edits or recalls an earlier message of its sender.
    pub amends: Option<Amendment>,
    /// It is a read mark in its owner's inbox.
    pub read: Option<ReadMark>,
    /// Archive only: when it was last edited (0: never).
    pub edited_ms: u64,
    /// Archive only: it was recalled (its content is gone).
    pub recalled: bool,
}

/// A validated Amend.
#[derive(Debug, Clone, PartialEq)]
pub struct AmendCommand {
    /// The amendment's own id.
    pub id: ClientMsgId,
    /// What it changes.
    pub amendment: Amendment,
    /// The new content (empty for a recall).
    pub content: Bytes,
    /// Its media type.
    pub content_type: String,
}

/// A validated ListConversations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConversationsRequest {
    /// Echoed in the answer.
    pub request_id: u64,
    /// How many to skip.
    pub offset: u32,
    /// Page size, 1..=[`MAX_CONVERSATIONS_LIMIT`].
    pub limit: u32,
    /// Keep sending updates on this connection.
    pub follow: bool,
}

/// Validates a SetConversation.
fn settings(
    c: pb::SetConversation,
) -> Result<crate::conversation::api::Settings, (ErrorCode, String)> {
    use pb::set_conversation::Conversation;
    let with = match c.conversation {
        Some(Conversation::User(u)) => UserId::parse(u).map(Recipient::User),
        Some(Conversation::Group(g)) => GroupId::parse(g).map(Recipient::Group),
        None => {
            return Err((
                ErrorCode::InvalidMessage,
                "SetConversation without a conversation".into(),
            ));
        }
    }
    .map_err(|e| (ErrorCode::InvalidId, e.to_string()))?;
    if c.pinned.is_none() && c.muted.is_none() {
        return Err((
            ErrorCode::InvalidMessage,
            "SetConversation changes nothing: set pinned or muted".into(),
        ));
    }
    Ok(crate::conversation::api::Settings {
        with,
        pinned: c.pinned,
        muted: c.muted,
    })
}

/// A history request (the subject is checked by the session).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncRequest {
    /// Echoed in the answer.
    pub request_id: u64,
    /// Subject asked for.
    pub subject: String,
    /// Newest first (scrolling back) rather than oldest first.
    pub newest_first: bool,
    /// Newest first: only messages before this sequence (0: from the newest).
    pub before: Seq,
    /// Oldest first: only messages after this sequence.
    pub after: Seq,
    /// Page size, 1..=[`MAX_SYNC_LIMIT`].
    pub limit: u32,
    /// On the inbox: only the direct conversation with this user (from the archive).
    pub with: Option<UserId>,
}

/// A validated Send.
#[derive(Debug, Clone, PartialEq)]
pub struct SendCommand {
    /// Dedup key chosen by the client.
    pub id: ClientMsgId,
    /// Recipient: a user or a group.
    pub to: Recipient,
    /// Opaque content.
    pub content: Bytes,
    /// Media type of the content.
    pub content_type: String,
    /// The message it replies to.
    pub reply_to: Option<MessageRef>,
    /// Users it mentions (at most [`MAX_MENTIONS`]).
    pub mentions: Vec<UserId>,
}

/// Where a message goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Recipient {
    /// A user's inbox (direct message).
    User(UserId),
    /// A group's subject (the sender must be a member).
    Group(GroupId),
}

impl Recipient {
    /// The user, for a direct message.
    pub fn user(&self) -> Option<&UserId> {
        match self {
            Self::User(u) => Some(u),
            Self::Group(_) => None,
        }
    }
}

/// A frame that could not be turned into a command; fatal for the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Not a valid protobuf ClientFrame.
    #[error("not a valid protobuf frame: {0}")]
    BadFrame(String),
    /// A ClientFrame whose kind this gateway does not know.
    #[error("unknown frame kind")]
    UnknownFrame,
}

impl WireError {
    /// The client-facing code.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::BadFrame(_) => ErrorCode::BadFrame,
            Self::UnknownFrame => ErrorCode::UnknownFrame,
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// Decodes and validates one client frame.
pub fn decode_command(frame: Bytes) -> Result<Command, WireError> {
    let frame = pb::ClientFrame::decode(frame).map_err(|e| WireError::BadFrame(e.to_string()))?;
    use pb::client_frame::Kind;
    let cursors = |cs: Vec<pb::Cursor>| cs.into_iter().map(|c| (c.subject, Seq(c.seq))).collect();
    Ok(match frame.kind.ok_or(WireError::UnknownFrame)? {
        Kind::Hello(h) => Command::Hello {
            token: h.token,
            device: h.device,
            protocol_version: h.protocol_version,
            cursors: cursors(h.cursors),
            delivery_streams: h.delivery_streams,
        },
        Kind::Send(s) => {
            // Echoed back verbatim so the client can match the answer; the frame size
            // limit bounds it.
            let raw_id = s.client_msg_id.clone();
            let bad = |code, detail: String| Command::BadSend {
                client_msg_id: raw_id.clone(),
                code,
                detail,
            };
            let id = match ClientMsgId::parse(s.client_msg_id) {
                Ok(id) => id,
                Err(e) => return Ok(bad(ErrorCode::InvalidId, e.to_string())),
            };
            let to = match s.to {
                Some(pb::send::To::User(u)) => match UserId::parse(u) {
                    Ok(u) => Recipient::User(u),
                    Err(e) => return Ok(bad(ErrorCode::InvalidId, e.to_string())),
                },
                Some(pb::send::To::Group(g)) => match GroupId::parse(g) {
                    Ok(g) => Recipient::Group(g),
                    Err(e) => return Ok(bad(ErrorCode::InvalidId, e.to_string())),
                },
                None => return Ok(bad(ErrorCode::InvalidMessage, "no recipient".into())),
            };
            if s.mentions.len() > MAX_MENTIONS {
                return Ok(bad(
                    ErrorCode::InvalidMessage,
                    format!("at most {MAX_MENTIONS} mentions"),
                ));
            }
            let mentions = match s.mentions.into_iter().map(UserId::parse).collect() {
                Ok(m) => m,
                Err(e) => return Ok(bad(ErrorCode::InvalidId, e.to_string())),
            };
            Command::Send(SendCommand {
                id,
                to,
                content: s.content,
                content_type: truncate(&s.content_type, 128),
                reply_to: s.reply_to.map(MessageRef::from_pb),
                mentions,
            })
        }
        Kind::Amend(a) => {
            let raw_id = a.client_msg_id.clone();
            let bad = |code, detail: String| Command::BadSend {
                client_msg_id: raw_id.clone(),
                code,
                detail,
            };
            let (id, target) = match (
                ClientMsgId::parse(a.client_msg_id),
                ClientMsgId::parse(a.target),
            ) {
                (Ok(id), Ok(target)) => (id, target),
                (Err(e), _) | (_, Err(e)) => return Ok(bad(ErrorCode::InvalidId, e.to_string())),
            };
            Command::Amend(AmendCommand {
                id,
                amendment: Amendment {
                    target,
                    recall: a.recall,
                },
                content: a.content,
                content_type: truncate(&a.content_type, 128),
            })
        }
        Kind::MarkRead(m) => {
            let conversation = match m.conversation {
                Some(pb::mark_read::Conversation::User(u)) => UserId::parse(u).map(Recipient::User),
                Some(pb::mark_read::Conversation::Group(g)) => {
                    GroupId::parse(g).map(Recipient::Group)
                }
                None => {
                    return Ok(Command::Invalid {
                        code: ErrorCode::Protocol,
                        detail: "MarkRead without a conversation".into(),
                    });
                }
            };
            match conversation {
                Ok(conversation) => Command::MarkRead(ReadMark {
                    conversation,
                    seq: Seq(m.seq),
                }),
                Err(e) => Command::Invalid {
                    code: ErrorCode::InvalidId,
                    detail: e.to_string(),
                },
            }
        }
        Kind::SetConversation(c) => Command::SetConversation {
            request_id: c.request_id,
            settings: settings(c),
        },
        Kind::ListConversations(l) => Command::ListConversations(ConversationsRequest {
            request_id: l.request_id,
            offset: l.offset,
            limit: match l.limit {
                0 => 50,
                n => n.min(MAX_CONVERSATIONS_LIMIT),
            },
            follow: l.follow,
        }),
        Kind::Ack(a) => Command::Ack(cursors(a.cursors)),
        Kind::RegisterPush(r) => Command::RegisterPush(PushRequest::from_pb(r)),
        Kind::Ping(p) => Command::Ping(p.nonce),
        Kind::Watch(w) => {
            if w.users.len() > MAX_WATCH {
                return Ok(Command::Invalid {
                    code: ErrorCode::InvalidMessage,
                    detail: format!("at most {MAX_WATCH} users may be watched"),
                });
            }
            match w
                .users
                .into_iter()
                .map(UserId::parse)
                .collect::<Result<Vec<_>, _>>()
            {
                Ok(users) => Command::Watch(users),
                Err(e) => Command::Invalid {
                    code: ErrorCode::InvalidId,
                    detail: e.to_string(),
                },
            }
        }
        Kind::Typing(t) => {
            let to = match t.to {
                Some(pb::typing::To::User(u)) => UserId::parse(u).map(Recipient::User),
                Some(pb::typing::To::Group(g)) => GroupId::parse(g).map(Recipient::Group),
                None => {
                    return Ok(Command::Invalid {
                        code: ErrorCode::Protocol,
                        detail: "typing without a conversation".into(),
                    });
                }
            };
            match to {
                Ok(to) => Command::Typing {
                    to,
                    typing: t.typing,
                },
                Err(e) => Command::Invalid {
                    code: ErrorCode::InvalidId,
                    detail: e.to_string(),
                },
            }
        }
        Kind::Receipt(r) => match Receipt::from_pb(r) {
            Ok(r) => Command::Receipt(r),
            Err((code, detail)) => Command::Invalid { code, detail },
        },
        Kind::Sync(s) => Command::Sync(SyncRequest {
            with: match s.with.as_str() {
                "" => None,
                w => match UserId::parse(w) {
                    Ok(u) => Some(u),
                    Err(e) => {
                        return Ok(Command::Invalid {
                            code: ErrorCode::InvalidId,
                            detail: e.to_string(),
                        });
                    }
                },
            },
            request_id: s.request_id,
            subject: s.subject,
            newest_first: s.newest_first,
            before: Seq(s.before),
            after: Seq(s.after),
            limit: match s.limit {
                0 => 50,
                n => n.min(MAX_SYNC_LIMIT),
            },
        }),
    })
}

/// Outcome of a Send, as reported to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendStatus {
    /// Durable on the hub.
    Stored {
        /// Stored subject (the recipient's inbox).
        subject: String,
        /// Stream sequence.
        seq: Seq,
        /// `Nats-Msg-Id` it is stored under.
        msg_id: String,
        /// The hub already had it (a retried Send).
        duplicate: bool,
    },
    /// Durable at the edge, not yet stored on the hub; a STORED result follows on
    /// this connection if it is still open when the hub stores it.
    Queued {
        /// Stored subject it will have (the recipient's inbox).
        subject: String,
        /// `Nats-Msg-Id` it will be stored under.
        msg_id: String,
    },
    /// Not stored.
    Rejected {
        /// Why.
        code: ErrorCode,
        /// Detail.
        detail: String,
    },
}

/// Server replies produced by the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Hello accepted.
    Welcome {
        /// User.
        user: String,
        /// Device.
        device: String,
        /// Connection id.
        connection_id: String,
        /// Max frame size.
        max_frame_bytes: u32,
        /// Wall clock.
        server_time_ms: u64,
        /// Gateway id.
        gateway_id: String,
        /// Where delivery resumes per subject (see the .proto).
        cursors: Vec<(String, Seq)>,
        /// Delivery streams granted (see the .proto).
        delivery_streams: u32,
    },
    /// Result of a Send.
    SendResult {
        /// The client's id (as sent).
        client_msg_id: String,
        /// Outcome.
        status: SendStatus,
    },
    /// Answer to Ping.
    Pong {
        /// Echoed nonce.
        nonce: u64,
        /// Wall clock.
        server_time_ms: u64,
    },
    /// A page of history (or why there is none).
    SyncBatch {
        /// The request's id.
        request_id: u64,
        /// Subject.
        subject: String,
        /// Messages in the order asked for.
        messages: Vec<Delivery>,
        /// The page was full.
        more: bool,
        /// Refused: code and detail.
        error: Option<(ErrorCode, String)>,
    },
    /// The answer to a RegisterPush: stored, or why not.
    PushRegistered {
        /// The request's id.
        request_id: u64,
        /// Refused: code and detail.
        error: Option<(ErrorCode, String)>,
    },
    /// A page of the conversation list, as the message service answered it (an
    /// encoded `ConversationList`), or why there is none.
    Conversations {
        /// The request's id.
        request_id: u64,
        /// The service's answer, or the refusal.
        page: Result<Bytes, (ErrorCode, String)>,
    },
    /// An error; `fatal` errors are followed by a close.
    Error {
        /// Code.
        code: ErrorCode,
        /// Message.
        message: String,
        /// Whether the connection closes.
        fatal: bool,
    },
}

impl Reply {
    /// The answer to history request `req` when it is refused: no messages, `code`.
    pub fn sync_refused(req: SyncRequest, code: ErrorCode, message: String) -> Self {
        Self::SyncBatch {
            request_id: req.request_id,
            subject: req.subject,
            messages: Vec::new(),
            more: false,
            error: Some((code, message)),
        }
    }
}

/// Encodes a reply as a length-prefixed ServerFrame.
pub fn encode_reply(reply: &Reply) -> Bytes {
    use pb::server_frame::Kind;
    let kind = match reply {
        Reply::Welcome {
            user,
            device,
            connection_id,
            max_frame_bytes,
            server_time_ms,
            gateway_id,
            cursors,
            delivery_streams,
        } => Kind::Welcome(pb::Welcome {
            delivery_streams: *delivery_streams,
            cursors: cursors
                .iter()
                .map(|(subject, seq)| pb::Cursor {
                    subject: subject.clone(),
                    seq: seq.0,
                })
                .collect(),
            user: user.clone(),
            device: device.clone(),
            connection_id: connection_id.clone(),
            max_frame_bytes: *max_frame_bytes,
            server_time_ms: *server_time_ms,
            gateway_id: gateway_id.clone(),
        }),
        Reply::SendResult {
            client_msg_id,
            status,
        } => Kind::SendResult(match status {
            SendStatus::Stored {
                subject,
                seq,
                msg_id,
                duplicate,
            } => pb::SendResult {
                client_msg_id: client_msg_id.clone(),
                status: pb::send_result::Status::Stored as i32,
                subject: subject.clone(),
                seq: seq.0,
                msg_id: msg_id.clone(),
                duplicate: *duplicate,
                ..Default::default()
            },
            SendStatus::Queued { subject, msg_id } => pb::SendResult {
                client_msg_id: client_msg_id.clone(),
                status: pb::send_result::Status::Queued as i32,
                subject: subject.clone(),
                msg_id: msg_id.clone(),
                ..Default::default()
            },
            SendStatus::Rejected { code, detail } => pb::SendResult {
                client_msg_id: client_msg_id.clone(),
                status: pb::send_result::Status::Rejected as i32,
                reason: code.to_wire() as i32,
                detail: detail.clone(),
                ..Default::default()
            },
        }),
        Reply::Pong {
            nonce,
            server_time_ms,
        } => Kind::Pong(pb::Pong {
            nonce: *nonce,
            server_time_ms: *server_time_ms,
        }),
        Reply::SyncBatch {
            request_id,
            subject,
            messages,
            more,
            error,
        } => Kind::SyncBatch(pb::SyncBatch {
            request_id: *request_id,
            subject: subject.clone(),
            messages: messages.iter().map(to_pb_message).collect(),
            more: *more,
            error: error.as_ref().map_or(0, |(c, _)| c.to_wire() as i32),
            detail: error.as_ref().map(|(_, d)| d.clone()).unwrap_or_default(),
        }),
        Reply::PushRegistered { request_id, error } => Kind::PushRegistered(pb::PushRegistered {
            request_id: *request_id,
            error: error.as_ref().map_or(0, |(c, _)| c.to_wire() as i32),
            detail: error.as_ref().map(|(_, d)| d.clone()).unwrap_or_default(),
        }),
        Reply::Conversations { request_id, page } => {
            let mut list = match page {
                Ok(bytes) => pb::ConversationList::decode(bytes.clone()).unwrap_or_else(|e| {
                    pb::ConversationList {
                        error: ErrorCode::Internal.to_wire() as i32,
                        detail: format!("the message service's answer does not decode: {e}"),
                        ..Default::default()
                    }
                }),
                Err((code, detail)) => pb::ConversationList {
                    error: code.to_wire() as i32,
                    detail: detail.clone(),
                    ..Default::default()
                },
            };
            list.request_id = *request_id;
            Kind::ConversationList(list)
        }
        Reply::Error {
            code,
            message,
            fatal,
        } => Kind::Error(pb::Error {
            code: code.to_wire() as i32,
            message: message.clone(),
            fatal: *fatal,
        }),
    };
    encode_frame(&pb::ServerFrame { kind: Some(kind) })
}

/// A message as stored on the hub (the payload of `msg.private.*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Sender.
    pub from: UserId,
    /// Recipient (user or group).
    pub to: Recipient,
    /// Sender's device.
    pub from_device: String,
    /// Client's id.
    pub client_msg_id: String,
    /// Content.
    pub content: Bytes,
    /// Media type.
    pub content_type: String,
    /// Accept time at the gateway (ms since epoch).
    pub time_ms: u64,
    /// Gateway that accepted it.
    pub gateway_id: String,
    /// Set for a system notification (then `from` is the category, `content` empty).
    pub notification: Option<Notification>,
    /// Set for a receipt (then `from` is the reader, `to` the original sender).
    pub receipt: Option<Receipt>,
    /// Reply, mentions, amendment, read mark.
    pub meta: Meta,
}

impl MessageRef {
    fn from_pb(r: pb::MessageRef) -> Self {
        Self {
            subject: truncate(&r.subject, 200),
            seq: Seq(r.seq),
        }
    }

    fn to_pb(&self) -> pb::MessageRef {
        pb::MessageRef {
            subject: self.subject.clone(),
            seq: self.seq.0,
        }
    }
}

impl ReadMark {
    fn to_pb(&self) -> pb::ReadMark {
        pb::ReadMark {
            conversation: Some(match &self.conversation {
                Recipient::User(u) => pb::read_mark::Conversation::User(u.to_string()),
                Recipient::Group(g) => pb::read_mark::Conversation::Group(g.to_string()),
            }),
            seq: self.seq.0,
        }
    }

    fn from_pb(r: pb::ReadMark) -> Result<Self, PayloadError> {
        Ok(Self {
            conversation: match r.conversation {
                Some(pb::read_mark::Conversation::User(u)) => Recipient::User(UserId::parse(u)?),
                Some(pb::read_mark::Conversation::Group(g)) => Recipient::Group(GroupId::parse(g)?),
                None => {
                    return Err(PayloadError::Decode(
                        "read mark without a conversation".into(),
                    ));
                }
            },
            seq: Seq(r.seq),
        })
    }
}

impl Amendment {
    fn to_pb(&self) -> pb::Amendment {
        pb::Amendment {
            target: self.target.to_string(),
            recall: self.recall,
        }
    }

    fn from_pb(a: pb::Amendment) -> Result<Self, PayloadError> {
        Ok(Self {
            target: ClientMsgId::parse(a.target)?,
            recall: a.recall,
        })
    }
}

impl Meta {
    fn from_stored(m: &mut pb::StoredMessage) -> Result<Self, PayloadError> {
        Ok(Self {
            reply_to: m.reply_to.take().map(MessageRef::from_pb),
            mentions: std::mem::take(&mut m.mentions)
                .into_iter()
                .map(UserId::parse)
                .collect::<Result<_, _>>()?,
            amends: m.amends.take().map(Amendment::from_pb).transpose()?,
            read: m.read.take().map(ReadMark::from_pb).transpose()?,
            edited_ms: 0,
            recalled: false,
        })
    }
}

/// A system notification published by a business service (see docs/notifications.md).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Notification {
    /// The service's id (its `Nats-Msg-Id`).
    pub id: String,
    /// Title.
    pub title: String,
    /// Body.
    pub body: String,
    /// What tapping it does (e.g. a deep link).
    pub action: String,
    /// `petrel.v1.Notification.Priority` value (0 normal, 1 low, 2 high).
    pub priority: i32,
    /// Badge count (0 = leave as is).
    pub badge: u32,
    /// Extra key/value pairs, sorted by key.
    pub data: Vec<(String, String)>,
    /// Creation time at the service (ms since epoch).
    pub time_ms: u64,
}

impl Notification {
    fn from_pb(n: pb::Notification) -> Self {
        let mut data: Vec<(String, String)> = n.data.into_iter().collect();
        data.sort();
        Self {
            id: n.id,
            title: n.title,
            body: n.body,
            action: n.action,
            priority: n.priority,
            badge: n.badge,
            data,
            time_ms: n.time_ms,
        }
    }

    fn to_pb(&self) -> pb::Notification {
        pb::Notification {
            id: self.id.clone(),
            title: self.title.clone(),
            body: self.body.clone(),
            action: self.action.clone(),
            priority: self.priority,
            badge: self.badge,
            data: self.data.iter().cloned().collect(),
            time_ms: self.time_ms,
        }
    }

    /// Protobuf encoding, as business services publish it.
    pub fn encode(&self) -> Bytes {
        self.to_pb().encode_to_vec().into()
    }
}

pub use crate::subject::NOTIFICATION_CATEGORIES;

/// Decodes a stored payload by the kind of its subject: a notification on
/// `notif.{category}.{user}`, a message otherwise.
pub fn decode_stored(subject: &str, bytes: Bytes) -> Result<StoredMessage, PayloadError> {
    let parsed =
        crate::subject::Subject::parse(subject).map_err(|e| PayloadError::Decode(e.to_string()))?;
    let crate::subject::Subject::Notification { category, user } = parsed else {
        return StoredMessage::decode(bytes);
    };
    let n = pb::Notification::decode(bytes).map_err(|e| PayloadError::Decode(e.to_string()))?;
    let n = Notification::from_pb(n);
    Ok(StoredMessage {
        from: UserId::parse(category)?,
        to: Recipient::User(user),
        from_device: String::new(),
        client_msg_id: n.id.clone(),
        content: Bytes::new(),
        content_type: String::new(),
        time_ms: n.time_ms,
        gateway_id: String::new(),
        notification: Some(n),
        receipt: None,
        meta: Meta::default(),
    })
}

/// Why a stored payload could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// Not a StoredMessage.
    #[error("stored message does not decode: {0}")]
    Decode(String),
    /// A field holds an invalid id.
    #[error("stored message has an invalid id: {0}")]
    Id(#[from] crate::ids::IdError),
}

impl StoredMessage {
    /// Protobuf encoding for the hub.
    pub fn encode(&self) -> Bytes {
        pb::StoredMessage {
            from: self.from.to_string(),
            to: self.to.user().map(|u| u.to_string()).unwrap_or_default(),
            group: match &self.to {
                Recipient::Group(g) => g.to_string(),
                Recipient::User(_) => String::new(),
            },
            client_msg_id: self.client_msg_id.clone(),
            content: self.content.clone(),
            content_type: self.content_type.clone(),
            time_ms: self.time_ms,
            from_device: self.from_device.clone(),
            gateway_id: self.gateway_id.clone(),
            receipt: self.receipt.as_ref().map(Receipt::to_pb),
            reply_to: self.meta.reply_to.as_ref().map(MessageRef::to_pb),
            mentions: self.meta.mentions.iter().map(|u| u.to_string()).collect(),
            amends: self.meta.amends.as_ref().map(Amendment::to_pb),
            read: self.meta.read.as_ref().map(ReadMark::to_pb),
        }
        .encode_to_vec()
        .into()
    }

    /// Decodes and validates a hub payload.
    pub fn decode(bytes: Bytes) -> Result<Self, PayloadError> {
        let mut m =
            pb::StoredMessage::decode(bytes).map_err(|e| PayloadError::Decode(e.to_string()))?;
        let meta = Meta::from_stored(&mut m)?;
        Ok(Self {
            meta,
            from: UserId::parse(m.from)?,
            to: if m.group.is_empty() {
                Recipient::User(UserId::parse(m.to)?)
            } else {
                Recipient::Group(GroupId::parse(m.group)?)
            },
            from_device: m.from_device,
            client_msg_id: m.client_msg_id,
            content: m.content,
            content_type: m.content_type,
            time_ms: m.time_ms,
            gateway_id: m.gateway_id,
            notification: None,
            receipt: match m.receipt {
                Some(r) => Some(Receipt::from_pb(r).map_err(|(_, e)| PayloadError::Decode(e))?),
                None => None,
            },
        })
    }
}

/// A message ready to deliver: stored payload plus its place in the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Stored subject, e.g. `msg.private.bob`.
    pub subject: String,
    /// Stream sequence.
    pub seq: Seq,
    /// Previous sequence on the same subject (0 = unknown / first).
    pub prev_seq: Seq,
    /// The message.
    pub message: StoredMessage,
}

fn to_pb_message(d: &Delivery) -> pb::Message {
    pb::Message {
        subject: d.subject.clone(),
        seq: d.seq.0,
        from: d.message.from.to_string(),
        to: d
            .message
            .to
            .user()
            .map(|u| u.to_string())
            .unwrap_or_default(),
        group: match &d.message.to {
            Recipient::Group(g) => g.to_string(),
            Recipient::User(_) => String::new(),
        },
        time_ms: d.message.time_ms,
        client_msg_id: d.message.client_msg_id.clone(),
        content: d.message.content.clone(),
        content_type: d.message.content_type.clone(),
        from_device: d.message.from_device.clone(),
        prev_seq: d.prev_seq.0,
        notification: d.message.notification.as_ref().map(Notification::to_pb),
        receipt: d.message.receipt.as_ref().map(Receipt::to_pb),
        reply_to: d.message.meta.reply_to.as_ref().map(MessageRef::to_pb),
        mentions: d
            .message
            .meta
            .mentions
            .iter()
            .map(|u| u.to_string())
            .collect(),
        amends: d.message.meta.amends.as_ref().map(Amendment::to_pb),
        read: d.message.meta.read.as_ref().map(ReadMark::to_pb),
        edited_ms: d.message.meta.edited_ms,
        recalled: d.message.meta.recalled,
    }
}

/// The protobuf `Message` of a delivery, for the services that answer with messages
/// (the archive's history pages).
pub fn message_to_pb(d: &Delivery) -> pb::Message {
    to_pb_message(d)
}

/// A TypingEvent frame: `from` is typing (or stopped) in the direct conversation with
/// the receiver, or in `group`. Encoded once by the typer's edge; receiving edges
/// forward the bytes.
pub fn encode_typing_event(from: &UserId, group: Option<&GroupId>, typing: bool) -> Bytes {
    encode_frame(&pb::ServerFrame {
        kind: Some(pb::server_frame::Kind::Typing(pb::TypingEvent {
            from: from.to_string(),
            group: group.map(|g| g.to_string()).unwrap_or_default(),
            typing,
        })),
    })
}

/// Encodes deliveries as one Deliver frame. Called once per message for all
/// recipients: fan-out writes the same bytes to every connection.
pub fn encode_deliver(items: &[Delivery]) -> Bytes {
    let messages = items.iter().map(to_pb_message).collect();
    encode_frame(&pb::ServerFrame {
        kind: Some(pb::server_frame::Kind::Deliver(pb::Deliver { messages })),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use petrel_proto::FrameDecoder;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn random_frames_never_panic_and_never_yield_unvalidated_ids(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(Command::Send(s)) = decode_command(Bytes::from(data)) {
                match &s.to {
                    Recipient::User(u) => prop_assert!(UserId::parse(u.as_str()).is_ok()),
                    Recipient::Group(g) => prop_assert!(GroupId::parse(g.as_str()).is_ok()),
                }
                prop_assert!(ClientMsgId::parse(s.id.as_str()).is_ok());
            }
        }
    }

    fn client(kind: pb::client_frame::Kind) -> Bytes {
        pb::ClientFrame { kind: Some(kind) }.encode_to_vec().into()
    }

    #[test]
    fn invalid_ids_in_send_are_soft_rejections() {
        let f = client(pb::client_frame::Kind::Send(pb::Send {
            client_msg_id: "m1".into(),
            to: Some(pb::send::To::User("bob.>".into())),
            content: Bytes::from_static(b"hi"),
            content_type: String::new(),
            ..Default::default()
        }));
        assert!(matches!(
            decode_command(f),
            Ok(Command::BadSend {
                code: ErrorCode::InvalidId,
                ..
            })
        ));
    }

    #[test]
    fn empty_frame_is_unknown_and_garbage_is_bad() {
        assert_eq!(decode_command(Bytes::new()), Err(WireError::UnknownFrame));
        assert!(matches!(
            decode_command(Bytes::from_static(&[0xff, 0xff, 0xff])),
            Err(WireError::BadFrame(_))
        ));
        // Field 15 (unknown to this version) only: decodes as a frame with no kind.
        assert_eq!(
            decode_command(Bytes::from_static(&[0x7a, 0x00])),
            Err(WireError::UnknownFrame)
        );
    }

    #[test]
    fn deliver_encodes_to_a_decodable_frame() {
        let d = Delivery {
            subject: "msg.private.bob".into(),
            seq: Seq(7),
            prev_seq: Seq(3),
            message: StoredMessage {
                from: UserId::parse("alice").unwrap(),
                to: Recipient::User(UserId::parse("bob").unwrap()),
                from_device: "phone".into(),
                client_msg_id: "m1".into(),
                content: Bytes::from_static(b"hello"),
                content_type: "text/plain".into(),
                time_ms: 1,
                gateway_id: "edge".into(),
                notification: None,
                receipt: None,
                meta: Meta {
                    reply_to: Some(MessageRef {
                        subject: "msg.private.bob".into(),
                        seq: Seq(2),
                    }),
                    mentions: vec![UserId::parse("bob").unwrap()],
                    ..Meta::default()
                },
            },
        };
        let stored = StoredMessage::decode(d.message.encode()).unwrap();
        assert_eq!(stored, d.message);
        let mut dec = FrameDecoder::new(1024);
        dec.push(&encode_deliver(std::slice::from_ref(&d)));
        let f = pb::ServerFrame::decode(dec.next_frame().unwrap().unwrap()).unwrap();
        let Some(pb::server_frame::Kind::Deliver(del)) = f.kind else {
            panic!("not a deliver")
        };
        assert_eq!(del.messages[0].seq, 7);
        assert_eq!(del.messages[0].prev_seq, 3);
        assert_eq!(del.messages[0].from, "alice");
    }

    #[test]
    fn notifications_decode_by_subject_and_reach_the_wire() {
        let n = Notification {
            id: "n1".into(),
            title: "Friend request".into(),
            body: "carol wants to be friends".into(),
            action: "app://friends".into(),
            priority: 2,
            badge: 3,
            data: vec![("from".into(), "carol".into())],
            time_ms: 7,
        };
        let m = decode_stored("notif.friend.bob", n.encode()).unwrap();
        assert_eq!(m.from.as_str(), "friend");
        assert_eq!(m.to, Recipient::User(UserId::parse("bob").unwrap()));
        assert_eq!(m.notification.as_ref(), Some(&n));
        assert!(
            decode_stored("notif.friend.a.b", n.encode()).is_err(),
            "bad user id"
        );
        let d = Delivery {
            subject: "notif.friend.bob".into(),
            seq: Seq(4),
            prev_seq: Seq(0),
            message: m,
        };
        let pbm = to_pb_message(&d);
        assert_eq!(
            pbm.notification.map(|x| x.title),
            Some("Friend request".into())
        );
    }
}
