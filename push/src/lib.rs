//! Petrel's push service: wakes offline devices through APNs, FCM and Web Push.
//!
//! Layout:
//! - [`config`] — the `[push]` TOML and its `PETREL_PUSH_*` overrides;
//! - [`worker`] — one worker: the shared durable consumers on the message and
//!   notification streams, who is woken for each stored message, sending, retries,
//!   pruning, dead letters;
//! - [`coalesce`] — per-device coalescing shared by every worker through Redis: one
//!   owner per push, bursts counted into it, the badge;
//! - [`providers`] — the APNs, FCM and Web Push clients (with RFC 8291 encryption);
//! - [`metrics`] — Prometheus metrics and `/healthz`.
//!
//! The decisions that need no I/O — who a message wakes, what a push says under the
//! preview preference, the retry policy, the registry's value — are in
//! `petrel_core::push`; the registry itself (one value per user in the hub's stream `PUSH_TARGETS`) is
//! `petrel_gateway::hub::PushRegistry`, which gateways write and workers read.

pub mod coalesce;
pub mod config;
pub mod metrics;
pub mod providers;
pub mod worker;

use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

pub use config::PushConfig;

/// Runs one worker of `cfg` until `shutdown`.
pub async fn run(cfg: PushConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let cfg = cfg.push;
    let providers = providers::Providers::from_config(&cfg)?;
    let client = petrel_gateway::hub::login::connect(&cfg.nats_url, cfg.nats_ca_file.as_deref())
        .await
        .context("push.nats_url")?;
    let directory = petrel_gateway::directory::Directory::new(Some(&cfg.redis_url))?;
    let metrics = Arc::new(metrics::Metrics::new());
    let listener = metrics::bind(cfg.metrics_listen).await?;
    tracing::info!(metrics = %listener.local_addr()?, ?providers, "push service starting");
    let worker = Arc::new(worker::Worker::new(
        cfg,
        client,
        directory,
        providers,
        metrics.clone(),
    ));
    let serving = tokio::spawn(metrics::serve(listener, metrics, shutdown.clone()));
    let worked = worker.run(shutdown.clone()).await;
    shutdown.cancel();
    match serving.await {
        Ok(Err(e)) if worked.is_ok() => Err(e),
        _ => worked,
    }
}
