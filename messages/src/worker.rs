//! One archiving worker: takes stored messages from the shared durable consumer on
//! `USER_MESSAGES` in batches, archives each batch in one transaction, acknowledges it,
//! then publishes the changed conversations to their followers.
//!
//! A batch that fails (PostgreSQL away, a conflict) is not acknowledged: JetStream gives
//! it again after the ack wait, to this worker or another, and archiving it again is a
//! no-op for what was committed. Messaging does not wait for any of this.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::{self, AckKind, consumer::pull};
use futures::StreamExt;
use petrel_core::conversation::{self, api};
use petrel_core::subject::{self, MESSAGE_STREAM};
use petrel_core::wire::{Recipient, decode_stored};
use petrel_core::{GroupId, Seq};
use petrel_gateway::directory::Directory;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::MessagesSection;
use crate::metrics::Metrics;
use crate::store::{Changed, Incoming, Store};

/// How long to wait after a failed batch before pulling again.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// Live conversation updates computed at once after a batch (each one query).
const UPDATES_IN_FLIGHT: usize = 8;

/// How often the consumer's backlog is read for the metrics.
const PENDING_EVERY: Duration = Duration::from_secs(2);

/// One worker.
pub struct Worker {
    cfg: MessagesSection,
    nats: async_nats::Client,
    js: jetstream::Context,
    store: Arc<Store>,
    directory: Directory,
    metrics: Arc<Metrics>,
}

impl Worker {
    /// A worker on `nats` (the hub) and `store`.
    pub fn new(
        cfg: MessagesSection,
        nats: async_nats::Client,
        store: Arc<Store>,
        directory: Directory,
        metrics: Arc<Metrics>,
    ) -> Self {
        let js = jetstream::with_domain(nats.clone(), "hub");
        Self {
            cfg,
            nats,
            js,
            store,
            directory,
            metrics,
        }
    }

    async fn consumer(&self) -> anyhow::Result<jetstream::consumer::PullConsumer> {
        let s = self.js.get_stream(MESSAGE_STREAM).await.with_context(|| {
            format!("looking up stream {MESSAGE_STREAM} (run `petrel provision`)")
        })?;
        s.get_or_create_consumer(
            &self.cfg.consumer,
            pull::Config {
                durable_name: Some(self.cfg.consumer.clone()),
                description: Some("Petrel message service: the archive".into()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(self.cfg.ack_wait_secs),
                max_ack_pending: 20_000,
                // Everything the stream holds: the archive starts complete.
                deliver_policy: jetstream::consumer::DeliverPolicy::All,
                ..Default::default()
            },
        )
        .await
        .context("creating the messages consumer")
    }

    /// Archives until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) -> anyhow::Result<()> {
        let consumer = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            c = self.consumer() => c?,
        };
        info!(consumer = %self.cfg.consumer, batch = self.cfg.batch, "archiving");
        let pending = tokio::spawn(
            self.clone()
                .watch_pending(consumer.clone(), shutdown.clone()),
        );
        let r = self.consume(consumer, shutdown).await;
        pending.abort();
        r
    }

    async fn consume(
        &self,
        consumer: jetstream::consumer::PullConsumer,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        loop {
            let batch = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                b = consumer
                    .fetch()
                    .max_messages(self.cfg.batch)
                    .expires(Duration::from_secs(1))
                    .messages() => b,
            };
            let mut batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    debug!(error = %e, "pulling a batch");
                    self.metrics.error("hub");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(RETRY_PAUSE) => {}
                    }
                    continue;
                }
            };
            let mut msgs = Vec::with_capacity(self.cfg.batch);
            // The batch ends at its expiry as the hub sees it; a slow hub must not
            // hold up a shutdown meanwhile.
            loop {
                let m = tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    m = batch.next() => m,
                };
                match m {
                    Some(Ok(m)) => msgs.push(m),
                    Some(Err(e)) => {
                        debug!(error = %e, "a batch ended early");
                        break;
                    }
                    None => break,
                }
            }
            if msgs.is_empty() {
                continue;
            }
            // Cut short at shutdown, a batch is simply given again (nothing of it is
            // committed, or all of it is and its redelivery is a no-op).
            let handled = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                r = self.handle(msgs) => r,
            };
            if let Err(e) = handled {
                warn!(error = %format!("{e:#}"), "archiving a batch failed; it is retried");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(RETRY_PAUSE) => {}
                }
            }
        }
    }

    /// Archives one batch, acknowledges it, publishes what changed.
    async fn handle(&self, msgs: Vec<jetstream::Message>) -> anyhow::Result<()> {
        let mut rows = Vec::with_capacity(msgs.len());
        for m in &msgs {
            match incoming(m) {
                Some(r) => rows.push(r),
                None => self.metrics.error("decode"),
            }
        }
        let started = std::time::Instant::now();
        let (new, changed) = match self.store.archive(&rows).await {
            Ok(v) => v,
            Err(e) => {
                self.metrics.error("postgres");
                // Back soon, to whichever worker pulls next, rather than after the
                // whole ack wait.
                for m in &msgs {
                    let _ = m.ack_with(AckKind::Nak(Some(RETRY_PAUSE))).await;
                }
                return Err(e);
            }
        };
        self.metrics
            .archive_seconds
            .observe(started.elapsed().as_secs_f64());
        self.metrics.archived.inc_by(new as u64);
        self.metrics.seen.inc_by(rows.len() as u64);
        for m in &msgs {
            if let Err(e) = m.ack().await {
                debug!(error = %e, "ack (the batch is archived; a redelivery is a no-op)");
            }
        }
        futures::stream::iter(changed)
            .for_each_concurrent(UPDATES_IN_FLIGHT, |c| self.publish_update(c))
            .await;
        Ok(())
    }

    /// Publishes the new view of a changed conversation to its owner's followers (for
    /// a group: to each member's, up to the configured group size).
    async fn publish_update(&self, c: Changed) {
        let (owners, with) = match c {
            Changed::Direct { owner, with } => (vec![owner], with),
            Changed::Group(g) => match self.directory.members(&g).await {
                Ok(m) if m.len() <= self.cfg.live_update_max_members => {
                    (m.into_iter().collect(), Recipient::Group(g))
                }
                Ok(_) => return,
                Err(e) => {
                    debug!(group = %g, error = %e, "no live conversation updates: members unknown");
                    return;
                }
            },
        };
        let groups: Vec<GroupId> = match &with {
            Recipient::Group(g) => vec![g.clone()],
            Recipient::User(_) => Vec::new(),
        };
        for owner in owners {
            match self
                .store
                .conversations(&owner, &groups, Some(&with), 0, 1)
                .await
            {
                Ok((views, _)) => {
                    for v in views {
                        let frame = api::encode_conversation_update(&v);
                        if let Err(e) = self
                            .nats
                            .publish(subject::live_conversations(&owner), frame)
                            .await
                        {
                            debug!(error = %e, "publishing a conversation update");
                        }
                    }
                }
                Err(e) => debug!(error = %format!("{e:#}"), "reading a changed conversation"),
            }
        }
    }

    async fn watch_pending(
        self: Arc<Self>,
        mut consumer: jetstream::consumer::PullConsumer,
        shutdown: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(PENDING_EVERY);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Ok(info) = consumer.info().await {
                let lag = info.num_pending + info.num_ack_pending as u64;
                self.metrics.lag.set(lag as i64);
            }
            let up = self.store.ping().await.is_ok();
            self.metrics.postgres_up.set(i64::from(up));
        }
    }
}

/// A stored message as a row to archive; `None` (logged) when it cannot be read.
fn incoming(m: &jetstream::Message) -> Option<Incoming> {
    let info = m.info().ok()?;
    let subject = m.subject.to_string();
    let seq = Seq(info.stream_sequence);
    let message = match decode_stored(&subject, m.payload.clone()) {
        Ok(x) => x,
        Err(e) => {
            warn!(%subject, %seq, error = %e, "not archived: the stored message does not decode");
            return None;
        }
    };
    let (placement, effects) = conversation::archive(&subject, seq, &message)?;
    Some(Incoming {
        subject,
        seq,
        stored_at: info.published,
        payload: m.payload.clone(),
        message,
        placement,
        effects,
    })
}
