//! The gateways' requests (`svc.messages.*`, queue group `petrel-messages`: each
//! request goes to one worker): history pages from the archive, conversation lists,
//! an amend's original, a user's unread total, a conversation's settings (pin, mute;
//! the change is also published to the user's followers). Bounded: at most [`MAX_IN_FLIGHT`] at once per worker; beyond
//! that the subscription's buffer holds them.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use petrel_core::conversation::api::{
    ConversationsQuery, HistoryQuery, OriginalQuery, SettingsQuery, encode_conversation_list,
    encode_conversation_update, encode_history_page, encode_original, encode_unread_total,
};
use petrel_core::subject;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::metrics::Metrics;
use crate::store::Store;

/// Requests one worker answers at once.
pub const MAX_IN_FLIGHT: usize = 64;

/// Answers requests until `shutdown`.
pub async fn serve(
    nats: async_nats::Client,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut sub = nats
        .queue_subscribe(subject::MESSAGES_ALL, subject::MESSAGES_QUEUE.into())
        .await
        .map_err(|e| anyhow::anyhow!("subscribing {}: {e}", subject::MESSAGES_ALL))?;
    let limit = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            m = sub.next() => match m {
                Some(m) => m,
                None => anyhow::bail!("the request subscription ended"),
            },
        };
        let Some(reply) = msg.reply.clone() else {
            continue;
        };
        let Ok(permit) = limit.clone().acquire_owned().await else {
            return Ok(());
        };
        let (nats, store, metrics) = (nats.clone(), store.clone(), metrics.clone());
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let (what, answer) = answer(&nats, &store, msg.subject.as_str(), msg.payload).await;
            metrics.observe_query(what, started.elapsed());
            if let Err(e) = nats.publish(reply, answer).await {
                debug!(error = %e, "answering a request");
            }
            drop(permit);
        });
    }
}

async fn answer(
    nats: &async_nats::Client,
    store: &Store,
    subject: &str,
    payload: Bytes,
) -> (&'static str, Bytes) {
    match subject {
        subject::MESSAGES_SETTINGS => ("settings", settings(nats, store, payload).await),
        subject::MESSAGES_HISTORY => ("history", history(store, payload).await),
        subject::MESSAGES_CONVERSATIONS => ("conversations", conversations(store, payload).await),
        subject::MESSAGES_ORIGINAL => ("original", original(store, payload).await),
        subject::MESSAGES_UNREAD => ("unread", unread(store, payload).await),
        _ => (
            "unknown",
            encode_history_page(Err(format!("no such request: {subject}"))),
        ),
    }
}

async fn history(store: &Store, payload: Bytes) -> Bytes {
    let q = match HistoryQuery::decode(payload) {
        Ok(q) => q,
        Err(e) => return encode_history_page(Err(e.to_string())),
    };
    match store.history(&q).await {
        Ok((rows, more)) => encode_history_page(Ok((&rows, more))),
        Err(e) => encode_history_page(Err(format!("the archive: {e:#}"))),
    }
}

async fn conversations(store: &Store, payload: Bytes) -> Bytes {
    let q = match ConversationsQuery::decode(payload) {
        Ok(q) => q,
        Err(e) => return encode_conversation_list(Err(e.to_string())),
    };
    match store
        .conversations(&q.user, &q.groups, None, q.offset, q.limit)
        .await
    {
        Ok((views, more)) => encode_conversation_list(Ok((&views, more))),
        Err(e) => encode_conversation_list(Err(format!("the archive: {e:#}"))),
    }
}

/// Changes a conversation's settings; answers with the conversation as it is now and
/// sends it to the user's followers (every device of the user shows the pin).
async fn settings(nats: &async_nats::Client, store: &Store, payload: Bytes) -> Bytes {
    let q = match SettingsQuery::decode(payload) {
        Ok(q) => q,
        Err(e) => return encode_conversation_list(Err(e.to_string())),
    };
    let changed = async {
        store.set_conversation(&q.user, &q.settings).await?;
        store
            .conversations(&q.user, &q.groups, Some(&q.settings.with), 0, 1)
            .await
    };
    match changed.await {
        Ok((views, more)) => {
            for v in &views {
                if let Err(e) = nats
                    .publish(
                        subject::live_conversations(&q.user),
                        encode_conversation_update(v),
                    )
                    .await
                {
                    debug!(error = %e, "publishing a conversation update");
                }
            }
            encode_conversation_list(Ok((&views, more)))
        }
        Err(e) => encode_conversation_list(Err(format!("the archive: {e:#}"))),
    }
}

async fn original(store: &Store, payload: Bytes) -> Bytes {
    let q = match OriginalQuery::decode(payload) {
        Ok(q) => q,
        Err(e) => return encode_original(Err(e.to_string())),
    };
    match store.original(&q.user, &q.client_msg_id).await {
        Ok(o) => encode_original(Ok(o.as_ref())),
        Err(e) => encode_original(Err(format!("the archive: {e:#}"))),
    }
}

async fn unread(store: &Store, payload: Bytes) -> Bytes {
    let q = match ConversationsQuery::decode(payload) {
        Ok(q) => q,
        Err(e) => return encode_unread_total(Err(e.to_string())),
    };
    match store.unread_total(&q.user, &q.groups).await {
        Ok(t) => encode_unread_total(Ok(t)),
        Err(e) => encode_unread_total(Err(format!("the archive: {e:#}"))),
    }
}
