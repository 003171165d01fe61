//! The message service as a gateway asks it: NATS requests through the leaf to
//! `svc.messages.*` (any `petrel messages` worker answers), each bounded by
//! `messages.request_timeout_ms`. Conversation lists, archived history pages, an
//! amend's original; the encodings are `petrel_core::conversation::api`.

use std::time::Duration;

use bytes::Bytes;
use petrel_core::conversation::api::{
    ConversationsQuery, HistoryQuery, OriginalQuery, SettingsQuery, decode_history_page,
    decode_original, decode_unread_total,
};
use petrel_core::session::Original;
use petrel_core::subject;
use petrel_core::wire::Delivery;
use petrel_core::{ClientMsgId, UserId};

use super::HubError;

/// The gateway's client of the message service.
#[derive(Debug, Clone)]
pub struct MessageService {
    client: async_nats::Client,
    timeout: Duration,
}

impl MessageService {
    /// Asks through `client` (the leaf), waiting at most `timeout` per request.
    pub fn new(client: async_nats::Client, timeout: Duration) -> Self {
        Self { client, timeout }
    }

    async fn request(
        &self,
        what: &'static str,
        subject: &'static str,
        body: Bytes,
    ) -> Result<Bytes, HubError> {
        let unavailable = |detail: String| HubError::Unavailable {
            op: format!("the message service ({what})"),
            detail,
        };
        match tokio::time::timeout(self.timeout, self.client.request(subject, body)).await {
            Ok(Ok(m)) => Ok(m.payload),
            Ok(Err(e)) => Err(unavailable(e.to_string())),
            Err(_) => Err(unavailable(format!("no answer within {:?}", self.timeout))),
        }
    }

    /// A page of the archive.
    pub async fn history(&self, q: &HistoryQuery) -> Result<(Vec<Delivery>, bool), HubError> {
        let answer = self
            .request("history", subject::MESSAGES_HISTORY, q.encode())
            .await?;
        decode_history_page(answer).map_err(|detail| HubError::Unavailable {
            op: "the archive".into(),
            detail,
        })
    }

    /// A page of the conversation list: the service's encoded `ConversationList`.
    pub async fn conversations(&self, q: &ConversationsQuery) -> Result<Bytes, HubError> {
        self.request("conversations", subject::MESSAGES_CONVERSATIONS, q.encode())
            .await
    }

    /// Changes a conversation's settings: the service's encoded `ConversationList`
    /// holding the conversation as it is now.
    pub async fn set_conversation(&self, q: &SettingsQuery) -> Result<Bytes, HubError> {
        self.request("settings", subject::MESSAGES_SETTINGS, q.encode())
            .await
    }

    /// `user`'s unread total over its conversations and those of `groups`.
    pub async fn unread_total(
        &self,
        user: &UserId,
        groups: Vec<petrel_core::GroupId>,
    ) -> Result<u32, HubError> {
        let q = ConversationsQuery {
            user: user.clone(),
            groups,
            offset: 0,
            limit: 1,
        };
        let answer = self
            .request("unread", subject::MESSAGES_UNREAD, q.encode())
            .await?;
        decode_unread_total(answer).map_err(|detail| HubError::Unavailable {
            op: "the archive".into(),
            detail,
        })
    }

    /// Where `user`'s message `id` went and when (`None`: the archive has no such
    /// message of this user).
    pub async fn original(
        &self,
        user: &UserId,
        id: &ClientMsgId,
    ) -> Result<Option<Original>, HubError> {
        let q = OriginalQuery {
            user: user.clone(),
            client_msg_id: id.clone(),
        };
        let answer = self
            .request("original", subject::MESSAGES_ORIGINAL, q.encode())
            .await?;
        decode_original(answer).map_err(|detail| HubError::Unavailable {
            op: "the archive".into(),
            detail,
        })
    }
}
