//! Petrel's message service (`petrel messages`): every stored message archived once in
//! PostgreSQL, each user's conversations (last message, unread counts, mentions, read
//! positions shared by all its devices), edits and recalls applied, history past
//! JetStream's retention.
//!
//! Layout:
//! - [`config`] — the `[messages]` TOML and its `PETREL_MESSAGES_*` overrides;
//! - [`store`] — PostgreSQL: the migrations (`messages/migrations/`), archiving a batch
//!   in one transaction, the queries;
//! - [`worker`] — the shared durable consumer on `USER_MESSAGES`: batches in, archived,
//!   acknowledged, changed conversations published to their followers;
//! - [`api`] — the gateways' requests on `svc.messages.*` (history, conversation lists,
//!   an amend's original);
//! - [`metrics`] — Prometheus metrics and `/healthz`.
//!
//! What a stored message means — its conversation, its row, what it changes — is
//! decided without I/O in `petrel_core::conversation`; the request and answer
//! encodings are `petrel_core::conversation::api`.

pub mod api;
pub mod config;
pub mod metrics;
pub mod store;
pub mod worker;

use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

pub use config::MessagesConfig;

/// Runs one worker of `cfg` until `shutdown`.
pub async fn run(cfg: MessagesConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let cfg = cfg.messages;
    let store = Arc::new(
        store::Store::open(&cfg.postgres_url, cfg.pool_size, cfg.unread_cap)
            .await
            .context("messages.postgres_url")?,
    );
    let client = petrel_gateway::hub::login::connect(&cfg.nats_url, cfg.nats_ca_file.as_deref())
        .await
        .context("messages.nats_url")?;
    let directory = petrel_gateway::directory::Directory::new(cfg.redis_url.as_deref())?;
    let metrics = Arc::new(metrics::Metrics::new());
    let listener =
        petrel_gateway::metrics::bind(cfg.metrics_listen, "messages.metrics_listen").await?;
    tracing::info!(metrics = %listener.local_addr()?, "message service starting");
    let serving = tokio::spawn(metrics::serve(listener, metrics.clone(), shutdown.clone()));
    let answering = tokio::spawn(api::serve(
        client.clone(),
        store.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    let worker = Arc::new(worker::Worker::new(cfg, client, store, directory, metrics));
    let worked = worker.run(shutdown.clone()).await;
    shutdown.cancel();
    let answered = answering.await;
    let served = serving.await;
    worked?;
    answered.context("request task")??;
    served.context("metrics task")??;
    Ok(())
}
