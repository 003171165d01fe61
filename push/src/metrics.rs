//! The push service's Prometheus metrics, served with `/healthz` on
//! `push.metrics_listen`.
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `petrel_push_messages_total` | `stream` | stored messages taken from the consumers |
//! | `petrel_push_sent_total` | `provider`, `result` | provider answers: delivered, gone, retry, failed |
//! | `petrel_push_provider_seconds` | `provider` | one provider request |
//! | `petrel_push_retries_total` | `provider` | attempts after the first |
//! | `petrel_push_pruned_total` | `provider` | dead targets removed from the registry |
//! | `petrel_push_dead_letters_total` | `provider` | pushes given up on |
//! | `petrel_push_skipped_total` | `reason` | owned pushes not sent: `online`, `acknowledged` |
//! | `petrel_push_consumer_pending` | `stream` | messages the shared consumer has not delivered yet |
//! | `petrel_push_errors_total` | `stage` | registry, Redis or hub failures (the message is retried) |

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use tokio_util::sync::CancellationToken;

/// `stream="USER_MESSAGES|SYSTEM_NOTIFICATIONS"`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabel {
    /// Stream name.
    pub stream: &'static str,
}

/// `provider="apns|fcm|webpush"`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabel {
    /// Provider.
    pub provider: &'static str,
}

/// A provider's answer.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SentLabels {
    /// Provider.
    pub provider: &'static str,
    /// delivered | gone | retry | failed.
    pub result: &'static str,
}

/// `reason=…`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Why.
    pub reason: &'static str,
}

/// `stage=…`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabel {
    /// Where it failed.
    pub stage: &'static str,
}

/// The metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Stored messages taken.
    pub messages: Family<StreamLabel, Counter>,
    /// Provider answers.
    pub sent: Family<SentLabels, Counter>,
    /// Provider request latency.
    pub provider_seconds: Family<ProviderLabel, Histogram>,
    /// Retries.
    pub retries: Family<ProviderLabel, Counter>,
    /// Pruned targets.
    pub pruned: Family<ProviderLabel, Counter>,
    /// Dead letters.
    pub dead_letters: Family<ProviderLabel, Counter>,
    /// Owned pushes not sent.
    pub skipped: Family<ReasonLabel, Counter>,
    /// The consumers' backlog.
    pub pending: Family<StreamLabel, Gauge>,
    /// Failures that make a message be redelivered.
    pub errors: Family<StageLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("petrel_push");
        let messages = Family::default();
        registry.register(
            "messages",
            "Stored messages taken from the shared consumers",
            messages.clone(),
        );
        let sent = Family::default();
        registry.register("sent", "Provider answers by result", sent.clone());
        let provider_seconds = Family::<ProviderLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 16))
        });
        registry.register_with_unit(
            "provider",
            "One provider request",
            Unit::Seconds,
            provider_seconds.clone(),
        );
        let retries = Family::default();
        registry.register(
            "retries",
            "Provider attempts after the first",
            retries.clone(),
        );
        let pruned = Family::default();
        registry.register(
            "pruned",
            "Dead targets removed from the registry",
            pruned.clone(),
        );
        let dead_letters = Family::default();
        registry.register(
            "dead_letters",
            "Pushes given up on (dead-letter stream)",
            dead_letters.clone(),
        );
        let skipped = Family::default();
        registry.register(
            "skipped",
            "Owned pushes not sent: the device was online or had acknowledged",
            skipped.clone(),
        );
        let pending = Family::default();
        registry.register(
            "consumer_pending",
            "Messages the shared consumer has not delivered yet",
            pending.clone(),
        );
        let errors = Family::default();
        registry.register(
            "errors",
            "Failures that leave a message to be redelivered",
            errors.clone(),
        );
        // Every series that exists at all exists from the start (at zero), so rates and
        // alerts see a provider that never answered yet.
        for stream in [
            petrel_core::subject::MESSAGE_STREAM,
            petrel_core::subject::NOTIFICATION_STREAM,
        ] {
            let _ = messages.get_or_create(&StreamLabel { stream });
            let _ = pending.get_or_create(&StreamLabel { stream });
        }
        for provider in ["apns", "fcm", "webpush"] {
            for result in ["delivered", "gone", "retry", "failed"] {
                let _ = sent.get_or_create(&SentLabels { provider, result });
            }
            let p = ProviderLabel { provider };
            let _ = provider_seconds.get_or_create(&p);
            let _ = retries.get_or_create(&p);
            let _ = pruned.get_or_create(&p);
            let _ = dead_letters.get_or_create(&p);
        }
        for reason in ["online", "acknowledged"] {
            let _ = skipped.get_or_create(&ReasonLabel { reason });
        }
        for stage in ["registry", "redis", "hub"] {
            let _ = errors.get_or_create(&StageLabel { stage });
        }
        Self {
            registry,
            messages,
            sent,
            provider_seconds,
            retries,
            pruned,
            dead_letters,
            skipped,
            pending,
            errors,
        }
    }

    /// OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Counts a failure at `stage`.
    pub fn error(&self, stage: &'static str) {
        self.errors.get_or_create(&StageLabel { stage }).inc();
    }
}

/// Serves `/metrics` and `/healthz` on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    petrel_gateway::metrics::serve_text(listener, move || metrics.encode(), shutdown).await
}

/// Binds the metrics listener.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    petrel_gateway::metrics::bind(addr, "push.metrics_listen").await
}
