//! The message service's Prometheus metrics, served with `/healthz` on
//! `messages.metrics_listen`.
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `petrel_messages_archived_total` | — | stored messages added to the archive (a redelivery adds nothing) |
//! | `petrel_messages_seen_total` | — | stored messages taken from the consumer |
//! | `petrel_messages_archive_seconds` | — | archiving one batch (one transaction) |
//! | `petrel_messages_lag` | — | stored messages not archived yet (the consumer's pending and unacknowledged) |
//! | `petrel_messages_postgres_up` | — | 1 while PostgreSQL answers |
//! | `petrel_messages_query_seconds` | `query` | answering a gateway: `history`, `conversations`, `original`, `unread` |
//! | `petrel_messages_errors_total` | `stage` | `postgres`, `hub`, `decode` failures |

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// `query=…`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueryLabel {
    /// Which request.
    pub query: &'static str,
}

/// `stage=…`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabel {
    /// Where it failed.
    pub stage: &'static str,
}

/// Every metric of one worker.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// New archive rows.
    pub archived: Counter,
    /// Stored messages taken.
    pub seen: Counter,
    /// One batch's transaction.
    pub archive_seconds: Histogram,
    /// Not archived yet.
    pub lag: Gauge,
    /// PostgreSQL answers.
    pub postgres_up: Gauge,
    query_seconds: Family<QueryLabel, Histogram>,
    errors: Family<StageLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// All series, at zero.
    pub fn new() -> Self {
        let mut root = Registry::with_prefix("petrel_messages");
        let registry = &mut root;
        let archived = Counter::default();
        registry.register(
            "archived",
            "Stored messages added to the archive",
            archived.clone(),
        );
        let seen = Counter::default();
        registry.register(
            "seen",
            "Stored messages taken from the consumer",
            seen.clone(),
        );
        let archive_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 14));
        registry.register_with_unit(
            "archive",
            "Archiving one batch",
            Unit::Seconds,
            archive_seconds.clone(),
        );
        let lag = Gauge::default();
        registry.register("lag", "Stored messages not archived yet", lag.clone());
        let postgres_up = Gauge::default();
        registry.register(
            "postgres_up",
            "1 while PostgreSQL answers",
            postgres_up.clone(),
        );
        let query_seconds = Family::<QueryLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0002, 2.0, 16))
        });
        registry.register_with_unit(
            "query",
            "Answering a gateway's request",
            Unit::Seconds,
            query_seconds.clone(),
        );
        let errors = Family::default();
        registry.register(
            "errors",
            "Failures (the batch or request is retried)",
            errors.clone(),
        );
        for query in ["history", "conversations", "original", "unread"] {
            let _ = query_seconds.get_or_create(&QueryLabel { query });
        }
        for stage in ["postgres", "hub", "decode"] {
            let _ = errors.get_or_create(&StageLabel { stage });
        }
        Self {
            registry: root,
            archived,
            seen,
            archive_seconds,
            lag,
            postgres_up,
            query_seconds,
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

    /// Records one answered request.
    pub fn observe_query(&self, query: &'static str, took: Duration) {
        self.query_seconds
            .get_or_create(&QueryLabel { query })
            .observe(took.as_secs_f64());
    }
}

/// Serves `/metrics` and `/healthz` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    petrel_gateway::metrics::serve_text(listener, move || metrics.encode(), shutdown).await
}
