//! `petrel provision`: creates or updates the hub's streams, idempotently.
//!
//! | stream | subjects | storage, retention | re-publish |
//! |---|---|---|---|
//! | USER_MESSAGES | `msg.private.*`, `msg.group.*` | file, 7 days, 10 M messages / 100 GB | `msg.>` → `live.msg.>` |
//! | SYSTEM_NOTIFICATIONS | `notif.*.*` | file, 3 days, 1 M messages / 10 GB | `notif.>` → `live.notif.>` |
//! | ONLINE_STATUS | `status.online.*`, `status.typing.*` | memory, 5 minutes, 100 k messages | — |
//! | PUSH_DEAD_LETTERS | `push.dead.*` | file, 14 days, 100 k messages | — |
//! | PUSH_TARGETS | `push.target.*`: the push registry, one value per user (its devices' push targets) | file, 1 message per subject, no age limit | — |
//! | RECEIPT_CLAIMS | `receipt.claim.*.*.*.*` | file, 1 message per subject (a second refused), 8 days | — |
//!
//! The two message streams' names, subjects and re-publish come from
//! [`petrel_core::subject::stream_layouts`], the one place subjects are defined.
//!
//! The caps ([`StreamLimits`]) discard the oldest messages when reached, like the age
//! limit: a device resuming from a cursor older than what is left gets what is left
//! (its resume starts at the stream's first message); nothing newer is ever refused.
//! A message larger than the size cap is refused at the gateway before it reaches the
//! stream.
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

/// A stream's count and size caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cap {
    /// Most messages kept.
    pub max_messages: i64,
    /// Most bytes kept.
    pub max_bytes: i64,
}

/// Replicas and caps of the streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    /// Replicas per stream: 1 for one hub server, 3 for a cluster.
    pub replicas: usize,
    /// USER_MESSAGES.
    pub messages: Cap,
    /// SYSTEM_NOTIFICATIONS.
    pub notifications: Cap,
    /// Most presence and typing entries in ONLINE_STATUS.
    pub status_max_messages: i64,
}

const GB: i64 = 1 << 30;

impl StreamLimits {
    /// The production caps: USER_MESSAGES 10 M messages / 100 GB, SYSTEM_NOTIFICATIONS
    /// 1 M / 10 GB, ONLINE_STATUS 100 k.
    pub fn production(replicas: usize) -> Self {
        Self {
            replicas,
            messages: Cap {
                max_messages: 10_000_000,
                max_bytes: 100 * GB,
            },
            notifications: Cap {
                max_messages: 1_000_000,
                max_bytes: 10 * GB,
            },
            status_max_messages: 100_000,
        }
    }

    /// Caps a development machine can reserve (JetStream sets a stream's byte cap
    /// aside in the server's file store): USER_MESSAGES 1 M / 1 GB,
    /// SYSTEM_NOTIFICATIONS 100 k / 256 MB.
    pub fn dev(replicas: usize) -> Self {
        Self {
            replicas,
            messages: Cap {
                max_messages: 1_000_000,
                max_bytes: GB,
            },
            notifications: Cap {
                max_messages: 100_000,
                max_bytes: GB / 4,
            },
            status_max_messages: 100_000,
        }
    }
}

/// The stream configurations under `limits`.
pub fn streams(limits: &StreamLimits) -> Vec<Config> {
    let replicas = limits.replicas;
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
            max_messages: limits.messages.max_messages,
            max_bytes: limits.messages.max_bytes,
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
            max_messages: limits.notifications.max_messages,
            max_bytes: limits.notifications.max_bytes,
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
            max_messages: limits.status_max_messages,
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
            name: petrel_core::subject::PUSH_TARGET_STREAM.into(),
            description: Some(
                "The push registry: each user's devices and their push targets (Petrel)".into(),
            ),
            subjects: vec![petrel_core::subject::PUSH_TARGETS.into()],
            storage: StorageType::File,
            retention: RetentionPolicy::Limits,
            discard: DiscardPolicy::Old,
            max_messages_per_subject: 1,
            max_message_size: 64 * 1024,
            allow_direct: true,
            num_replicas: replicas,
            ..Default::default()
        },
        Config {
            name: petrel_core::subject::PUSH_DEAD_LETTER_STREAM.into(),
            description: Some(
                "Pushes the push service gave up on, with the reason (Petrel)".into(),
            ),
            subjects: vec![petrel_core::subject::PUSH_DEAD_LETTERS.into()],
            storage: StorageType::File,
            retention: RetentionPolicy::Limits,
            discard: DiscardPolicy::Old,
            max_age: 14 * day,
            max_messages: 100_000,
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
    limits: &StreamLimits,
) -> anyhow::Result<Vec<Provisioned>> {
    let js = jetstream::with_domain(client.clone(), domain);
    let mut done = Vec::new();
    for cfg in streams(limits) {
        let name = cfg.name.clone();
        let action = match js.get_stream(&name).await {
            Ok(_) => {
                js.update_stream(&cfg)
                    .await
                    .map_err(|e| storage_hint(e.to_string(), limits))
                    .with_context(|| format!("updating stream {name}"))?;
                "updated"
            }
            Err(e)
                if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(j)
                    if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
            {
                js.create_stream(cfg)
                    .await
                    .map_err(|e| storage_hint(e.to_string(), limits))
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

/// JetStream sets each stream's byte cap aside in every replica's file store; when the
/// store is smaller it answers "insufficient storage resources". Say what to change.
fn storage_hint(error: String, limits: &StreamLimits) -> anyhow::Error {
    if error.contains("insufficient storage") {
        anyhow::anyhow!(
            "{error}: the streams' byte caps (USER_MESSAGES {} bytes, SYSTEM_NOTIFICATIONS {} bytes) must fit in each hub node's jetstream max_file_store; raise it or lower --messages-max-bytes / --notifications-max-bytes",
            limits.messages.max_bytes,
            limits.notifications.max_bytes
        )
    } else {
        anyhow::anyhow!(error)
    }
}
