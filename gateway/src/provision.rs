//! `petrel provision`: creates or updates the hub's streams, idempotently.
//!
//! | stream | subjects | storage, retention | re-publish |
//! |---|---|---|---|
//! | USER_MESSAGES | `msg.private.*`, `msg.group.*` | file, 7 days | `msg.>` → `live.msg.>` |
//! | SYSTEM_NOTIFICATIONS | `notif.*.*` | file, 3 days | `notif.>` → `live.notif.>` |
//! | ONLINE_STATUS | `status.online.*`, `status.typing.*` | memory, 5 minutes | — |
//! | PUSH | `push.*` | file, work queue, 1 day | — |
//! | RECEIPT_CLAIMS | `receipt.claim.*.*.*.*` | file, 1 message per subject (a second refused), 8 days | — |
//!
//! The two message streams' names, subjects and re-publish come from
//! [`petrel_core::subject::stream_layouts`], the one place subjects are defined.
//!
//! Run at deploy time (and by `petrel dev`), never on the publish path.

use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::{
    self,
    stream::{Config, DiscardPolicy, Republish, RetentionPolicy, StorageType},
};

/// Largest message any stream accepts (a frame's content plus envelope).
pub const MAX_STORED_MESSAGE: i32 = 128 * 1024;

/// Dedup window of USER_MESSAGES: a Send retried within it is stored once.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(10 * 60);

/// The stream configurations, for `replicas` (1 for one hub server, 3 for a cluster).
pub fn streams(replicas: usize) -> Vec<Config> {
    let day = Duration::from_secs(24 * 3600);
    let [messages, notifications] = petrel_core::subject::stream_layouts();
    let republish = |l: &petrel_core::subject::StreamLayout| {
        Some(Republish {
            source: l.republish_source.clone(),
            destination: l.republish_destination.clone(),
            headers_only: false,
        })
    };
    vec![
        Config {
            name: messages.name.into(),
            description: Some("Direct and group messages (Petrel)".into()),
            subjects: messages.subjects.clone(),
            storage: StorageType::File,
            retention: RetentionPolicy::Limits,
            discard: DiscardPolicy::Old,
            max_age: 7 * day,
            max_message_size: MAX_STORED_MESSAGE,
            duplicate_window: DUPLICATE_WINDOW,
            allow_direct: true,
            num_replicas: replicas,
            republish: republish(&messages),
            ..Default::default()
        },
        Config {
            name: notifications.name.into(),
            description: Some("Notifications from business services (Petrel)".into()),
            subjects: notifications.subjects.clone(),
            storage: StorageType::File,
            retention: RetentionPolicy::Limits,
            discard: DiscardPolicy::Old,
            max_age: 3 * day,
            max_message_size: MAX_STORED_MESSAGE,
            duplicate_window: Duration::from_secs(120),
            allow_direct: true,
            num_replicas: replicas,
            republish: republish(&notifications),
            ..Default::default()
        },
        Config {
            name: "ONLINE_STATUS".into(),
            description: Some("Presence and typing, short-lived (Petrel)".into()),
            subjects: vec!["status.online.*".into(), "status.typing.*".into()],
            storage: StorageType::Memory,
            retention: RetentionPolicy::Limits,
            discard: DiscardPolicy::Old,
            max_age: Duration::from_secs(300),
            max_message_size: 4 * 1024,
            num_replicas: replicas,
            ..Default::default()
        },
        Config {
            name: petrel_core::subject::RECEIPT_CLAIM_STREAM.into(),
            description: Some(
                "One claim per stored receipt: a second receipt of a kind for a message is refused (Petrel)".into(),
            ),
            subjects: vec![petrel_core::subject::RECEIPT_CLAIMS.into()],
            storage: StorageType::File,
            retention: RetentionPolicy::Limits,
            discard: DiscardPolicy::New,
            discard_new_per_subject: true,
            max_messages_per_subject: 1,
            // Longer than USER_MESSAGES keeps a message: a receipt about an older one is
            // refused anyway (the message is no longer in the inbox).
            max_age: 8 * day,
            max_message_size: 64,
            num_replicas: replicas,
            ..Default::default()
        },
        Config {
            name: "PUSH".into(),
            description: Some("Work queue for the push service (Petrel)".into()),
            subjects: vec!["push.*".into()],
            storage: StorageType::File,
            retention: RetentionPolicy::WorkQueue,
            discard: DiscardPolicy::Old,
            max_age: day,
            max_message_size: MAX_STORED_MESSAGE,
            num_replicas: replicas,
            ..Default::default()
        },
    ]
}

/// What provisioning did to one stream.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Provisioned {
    /// Stream name.
    pub stream: String,
    /// `created` or `updated`.
    pub action: &'static str,
}

/// Creates or updates every stream through `client` in JetStream `domain`.
pub async fn provision(
    client: &async_nats::Client,
    domain: &str,
    replicas: usize,
) -> anyhow::Result<Vec<Provisioned>> {
    let js = jetstream::with_domain(client.clone(), domain);
    let mut done = Vec::new();
    for cfg in streams(replicas) {
        let name = cfg.name.clone();
        let action = match js.get_stream(&name).await {
            Ok(_) => {
                js.update_stream(&cfg)
                    .await
                    .with_context(|| format!("updating stream {name}"))?;
                "updated"
            }
            Err(e)
                if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(j)
                    if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
            {
                js.create_stream(cfg)
                    .await
                    .with_context(|| format!("creating stream {name}"))?;
                "created"
            }
            Err(e) => {
                return Err(anyhow::anyhow!(e)).with_context(|| {
                    format!("looking up stream {name} in JetStream domain {domain:?}")
                });
            }
        };
        done.push(Provisioned {
            stream: name,
            action,
        });
    }
    Ok(done)
}
