//! One push worker: takes stored messages from the shared durable consumers, decides
//! which devices to wake, and sends the pushes it owns.
//!
//! A message is acknowledged to JetStream only when every push it owns has ended
//! (delivered, pruned or dead-lettered); while it waits (the grace, the coalescing
//! window, provider retries) the worker tells JetStream it is still working on it. A
//! worker that dies leaves its messages unacknowledged: after the ack wait they go to
//! another worker, which finds the device's count still there (see [`crate::coalesce`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind, consumer::pull};
use futures::StreamExt;
use petrel_core::UserId;
use petrel_core::push::{Alert, Audience, Latest, Preview, Registration, audience};
use petrel_core::subject::{MESSAGE_STREAM, NOTIFICATION_STREAM, Subject, push_dead_letter};
use petrel_core::time::unix_ms;
use petrel_gateway::directory::Directory;
use petrel_gateway::hub::PushRegistry;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::coalesce::{Coalescer, Noted};
use crate::config::{PreviewDefault, PushSection};
use crate::metrics::{Metrics, ProviderLabel, ReasonLabel, SentLabels, StreamLabel};
use crate::providers::{Outcome, Providers};

/// Devices noted at once for one group message.
const NOTE_PARALLEL: usize = 32;

/// How long a push waits for the message service's unread total (the badge).
const BADGE_TIMEOUT: Duration = Duration::from_millis(500);

/// How often the consumers' backlog is read for the metrics.
const PENDING_EVERY: Duration = Duration::from_secs(5);

/// Everything a message's handling needs.
pub struct Worker {
    cfg: PushSection,
    js: jetstream::Context,
    registry: PushRegistry,
    directory: Directory,
    coalescer: Coalescer,
    providers: Providers,
    metrics: Arc<Metrics>,
    /// The message service, for the badge (the user's unread total).
    messages: petrel_gateway::hub::MessageService,
}

/// Why a message is left for redelivery.
#[derive(Debug, thiserror::Error)]
enum Retry {
    #[error(transparent)]
    Registry(#[from] petrel_gateway::hub::RegistryError),
    #[error(transparent)]
    Coalesce(#[from] crate::coalesce::CoalesceError),
    #[error("directory: {0}")]
    Directory(#[from] petrel_gateway::directory::DirectoryError),
}

impl Retry {
    fn stage(&self) -> &'static str {
        match self {
            Self::Registry(_) => "registry",
            Self::Coalesce(_) | Self::Directory(_) => "redis",
        }
    }
}

impl Worker {
    /// A worker on `client` (the hub), `directory` (the gateways' Redis).
    pub fn new(
        cfg: PushSection,
        client: async_nats::Client,
        directory: Directory,
        providers: Providers,
        metrics: Arc<Metrics>,
    ) -> Self {
        let js = jetstream::with_domain(client.clone(), &cfg.nats_domain);
        let messages = petrel_gateway::hub::MessageService::new(client.clone(), BADGE_TIMEOUT);
        let registry = PushRegistry::new(client, &cfg.nats_domain, Duration::from_secs(5));
        // An owner takes its device's count at most grace + window after noting; one
        // that has not by then is presumed dead. Shorter than the ack wait (the config
        // checks it), so its redelivered message finds `due` free and takes over.
        let due_ttl = cfg.due_ttl();
        Self {
            coalescer: Coalescer::new(directory.clone(), due_ttl),
            cfg,
            js,
            registry,
            directory,
            providers,
            metrics,
            messages,
        }
    }

    /// The shared durable consumer on `stream` (made by the first worker).
    async fn consumer(&self, stream: &str) -> anyhow::Result<jetstream::consumer::PullConsumer> {
        use anyhow::Context;
        let s = self
            .js
            .get_stream(stream)
            .await
            .with_context(|| format!("looking up stream {stream} (run `petrel provision`)"))?;
        s.get_or_create_consumer(
            &self.cfg.consumer,
            pull::Config {
                durable_name: Some(self.cfg.consumer.clone()),
                description: Some("Petrel push workers".into()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: self.ack_wait(),
                max_ack_pending: 20_000,
                deliver_policy: jetstream::consumer::DeliverPolicy::New,
                ..Default::default()
            },
        )
        .await
        .with_context(|| format!("creating the push consumer on {stream}"))
    }

    fn ack_wait(&self) -> Duration {
        Duration::from_secs(self.cfg.ack_wait_secs)
    }

    /// Handles both streams until `shutdown`; then lets what is in hand finish (at most
    /// the ack wait: what does not is redelivered to another worker).
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) -> anyhow::Result<()> {
        let messages = self.consumer(MESSAGE_STREAM).await?;
        let notifications = self.consumer(NOTIFICATION_STREAM).await?;
        info!(consumer = %self.cfg.consumer, concurrency = self.cfg.concurrency, "push worker consuming");
        let limit = Arc::new(Semaphore::new(self.cfg.concurrency));
        let tasks = tokio_util::task::TaskTracker::new();
        let pending = self.clone().watch_pending(
            vec![
                (MESSAGE_STREAM, messages.clone()),
                (NOTIFICATION_STREAM, notifications.clone()),
            ],
            shutdown.clone(),
        );
        let consume = futures::future::try_join(
            self.clone().consume(
                MESSAGE_STREAM,
                messages,
                limit.clone(),
                &tasks,
                shutdown.clone(),
            ),
            self.clone().consume(
                NOTIFICATION_STREAM,
                notifications,
                limit,
                &tasks,
                shutdown.clone(),
            ),
        );
        let (r, ()) = tokio::join!(consume, pending);
        tasks.close();
        if tokio::time::timeout(self.ack_wait(), tasks.wait())
            .await
            .is_err()
        {
            warn!("pushes still in hand at shutdown; their messages go to another worker");
        }
        r.map(|_| ())
    }

    async fn consume(
        self: Arc<Self>,
        stream: &'static str,
        consumer: jetstream::consumer::PullConsumer,
        limit: Arc<Semaphore>,
        tasks: &tokio_util::task::TaskTracker,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        use anyhow::Context;
        let mut incoming = consumer
            .stream()
            .max_messages_per_batch(16)
            .messages()
            .await
            .with_context(|| format!("pulling from {stream}"))?;
        loop {
            let permit = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                p = limit.clone().acquire_owned() => p.context("worker limit closed")?,
            };
            let next = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                n = incoming.next() => n,
            };
            match next {
                Some(Ok(msg)) => {
                    self.metrics
                        .messages
                        .get_or_create(&StreamLabel { stream })
                        .inc();
                    let me = self.clone();
                    tasks.spawn(async move {
                        me.handle(msg).await;
                        drop(permit);
                    });
                }
                Some(Err(e)) => {
                    debug!(stream, error = %e, "pulling (retried by the client)");
                    self.metrics.error("hub");
                }
                None => anyhow::bail!("the consumer on {stream} ended"),
            }
        }
    }

    async fn watch_pending(
        self: Arc<Self>,
        consumers: Vec<(&'static str, jetstream::consumer::PullConsumer)>,
        shutdown: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(PENDING_EVERY);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            for (stream, c) in &consumers {
                let mut c = c.clone();
                if let Ok(info) = c.info().await {
                    self.metrics
                        .pending
                        .get_or_create(&StreamLabel { stream })
                        .set(info.num_pending as i64);
                }
            }
        }
    }

    /// One stored message: note it for every device it should wake, send the pushes
    /// this worker owns, then acknowledge it.
    async fn handle(&self, msg: jetstream::Message) {
        let seq = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
        let subject_str = msg.subject.to_string();
        let stored = Subject::parse(&subject_str).ok().and_then(|subject| {
            let stored =
                petrel_core::wire::decode_stored(&subject_str, msg.payload.clone()).ok()?;
            Some((subject, stored))
        });
        let Some((subject, stored)) = stored else {
            debug!(subject = %subject_str, seq, "not a Petrel message; skipped");
            let _ = msg.ack_with(AckKind::Term).await;
            return;
        };
        let latest = Latest::from_stored(&subject, seq, &stored);
        let owned = match self
            .note(
                &subject,
                stored.from.as_str(),
                stored.receipt.is_some(),
                &latest,
            )
            .await
        {
            Ok(owned) => owned,
            Err(e) => {
                warn!(subject = %subject_str, seq, error = %e, "push decision failed; the message will be redelivered");
                self.metrics.error(e.stage());
                let _ = msg
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                    .await;
                return;
            }
        };
        if !owned.is_empty() {
            let sends = futures::future::join_all(
                owned
                    .into_iter()
                    .map(|(user, device, reg, last)| self.flush(user, device, reg, last, &latest)),
            );
            tokio::pin!(sends);
            let mut progress = tokio::time::interval(self.ack_wait() / 3);
            progress.tick().await;
            let results = loop {
                tokio::select! {
                    r = &mut sends => break r,
                    _ = progress.tick() => { let _ = msg.ack_with(AckKind::Progress).await; }
                }
            };
            if let Some(e) = results.into_iter().find_map(Result::err) {
                warn!(subject = %subject_str, seq, error = %e, "push not finished; the message will be redelivered");
                self.metrics.error(e.stage());
                let _ = msg
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                    .await;
                return;
            }
        }
        if let Err(e) = msg.double_ack().await {
            debug!(error = %e, "ack not confirmed; the message may come again (its push is not repeated)");
        }
    }

    /// Notes `latest` for every device of its audience; returns the devices this worker
    /// owns the next push of.
    async fn note(
        &self,
        subject: &Subject,
        from: &str,
        is_receipt: bool,
        latest: &Latest,
    ) -> Result<Vec<(UserId, String, Registration, u64)>, Retry> {
        let users: Vec<UserId> = match audience(subject, from, is_receipt) {
            Audience::Nobody => return Ok(Vec::new()),
            Audience::User(u) => vec![u],
            Audience::GroupExcept { group, sender } => {
                let mut m: Vec<UserId> = self
                    .directory
                    .members(&group)
                    .await?
                    .into_iter()
                    .filter(|u| *u != sender)
                    .collect();
                m.sort();
                m
            }
        };
        let mut devices = Vec::new();
        for user in users {
            for (device, reg) in self.registry.devices(&user).await?.devices {
                devices.push((user.clone(), device, reg));
            }
        }
        let noted: Vec<Result<Option<_>, Retry>> = futures::stream::iter(devices)
            .map(|(user, device, reg)| async move {
                match self.coalescer.note(&user, &device, latest).await? {
                    Noted::Owner { last_push_ms } => Ok(Some((user, device, reg, last_push_ms))),
                    Noted::Covered => Ok(None),
                }
            })
            .buffer_unordered(NOTE_PARALLEL)
            .collect()
            .await;
        noted.into_iter().filter_map(Result::transpose).collect()
    }

    /// Waits until the device's next push is due, then sends it unless the device is
    /// online or has acknowledged everything.
    async fn flush(
        &self,
        user: UserId,
        device: String,
        reg: Registration,
        last_push_ms: u64,
        first: &Latest,
    ) -> Result<(), Retry> {
        let due_ms = (first.time_ms + self.cfg.grace_ms).max(last_push_ms + self.cfg.coalesce_ms);
        let wait = due_ms.saturating_sub(unix_ms());
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let (count, latest) = self.coalescer.take(&user, &device, unix_ms()).await?;
        let Some(latest) = latest.filter(|_| count > 0) else {
            return Ok(());
        };
        let fresh_ms = 3 * 1000 * self.cfg.presence_heartbeat_secs;
        let seen = self.directory.devices_seen(&user).await?;
        if seen
            .get(&device)
            .is_some_and(|t| unix_ms().saturating_sub(*t) < fresh_ms)
        {
            self.skipped("online");
            return Ok(());
        }
        let acked = self.directory.acked(&user, &device).await?;
        let undelivered = self.coalescer.undelivered(&user, &device, &acked).await?;
        if undelivered == 0 {
            self.skipped("acknowledged");
            return Ok(());
        }
        let badge = self.unread_total(&user).await.unwrap_or(undelivered);
        let show = match reg.preview {
            Preview::Show => true,
            Preview::Hide => false,
            Preview::Default => self.cfg.preview == PreviewDefault::Show,
        };
        let alert = Alert::compose(&latest, count, badge, show);
        self.deliver(&user, &device, &reg, &alert).await
    }

    /// The user's unread total from the message service (read on any device counts);
    /// `None` when it does not answer in time, and the badge is this device's
    /// undelivered count instead.
    async fn unread_total(&self, user: &UserId) -> Option<u32> {
        let groups = self.directory.user_groups(user).await.ok()?;
        match self
            .messages
            .unread_total(user, groups.into_iter().collect())
            .await
        {
            Ok(t) if t > 0 => Some(t),
            Ok(_) => None,
            Err(e) => {
                debug!(%user, error = %e, "badge from this device's undelivered count");
                None
            }
        }
    }

    fn skipped(&self, reason: &'static str) {
        self.metrics
            .skipped
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Sends `alert` with retries; prunes a dead target; dead-letters what fails.
    async fn deliver(
        &self,
        user: &UserId,
        device: &str,
        reg: &Registration,
        alert: &Alert,
    ) -> Result<(), Retry> {
        let provider = reg.target.platform();
        let backoff = self.cfg.backoff();
        let ttl = Duration::from_secs(self.cfg.ttl_secs);
        let mut attempt = 1;
        loop {
            let started = Instant::now();
            let outcome = self.providers.send(&reg.target, alert, ttl).await;
            self.metrics
                .provider_seconds
                .get_or_create(&ProviderLabel { provider })
                .observe(started.elapsed().as_secs_f64());
            self.metrics
                .sent
                .get_or_create(&SentLabels {
                    provider,
                    result: outcome.label(),
                })
                .inc();
            match outcome {
                Outcome::Delivered => {
                    debug!(%user, device, provider, count = alert.count, badge = alert.badge, "pushed");
                    // Only the coalescing window depends on it: a failure is not worth
                    // pushing again for.
                    if let Err(e) = self.coalescer.pushed(user, device, unix_ms()).await {
                        debug!(%user, device, error = %e, "time of the push not recorded");
                        self.metrics.error("redis");
                    }
                    return Ok(());
                }
                Outcome::Gone(reason) => {
                    let removed = self.registry.prune(user, device, &reg.target).await?;
                    if removed {
                        self.metrics
                            .pruned
                            .get_or_create(&ProviderLabel { provider })
                            .inc();
                    }
                    info!(%user, device, provider, reason, "push target is dead; removed from the registry");
                    return Ok(());
                }
                Outcome::Retry { after, reason } => match backoff.next(attempt, after) {
                    Some(delay) => {
                        debug!(%user, device, provider, reason, ?delay, "provider asks to retry");
                        self.metrics
                            .retries
                            .get_or_create(&ProviderLabel { provider })
                            .inc();
                        tokio::time::sleep(delay).await;
                        attempt += 1;
                    }
                    None => {
                        return self
                            .dead_letter(user, device, provider, alert, attempt, reason)
                            .await;
                    }
                },
                Outcome::Failed(reason) => {
                    return self
                        .dead_letter(user, device, provider, alert, attempt, reason)
                        .await;
                }
            }
        }
    }

    async fn dead_letter(
        &self,
        user: &UserId,
        device: &str,
        provider: &'static str,
        alert: &Alert,
        attempts: u32,
        reason: String,
    ) -> Result<(), Retry> {
        warn!(%user, device, provider, attempts, reason, "push given up; dead-lettered");
        self.metrics
            .dead_letters
            .get_or_create(&ProviderLabel { provider })
            .inc();
        let letter = serde_json::json!({
            "user": user.as_str(),
            "device": device,
            "platform": provider,
            "reason": reason,
            "attempts": attempts,
            "seq": alert.seq,
            "count": alert.count,
            "time_ms": unix_ms(),
        });
        let published = self
            .js
            .publish(push_dead_letter(provider), letter.to_string().into())
            .await;
        match published {
            Ok(ack) => {
                if let Err(e) = ack.await {
                    warn!(error = %e, "dead letter not stored");
                    self.metrics.error("hub");
                }
            }
            Err(e) => {
                warn!(error = %e, "dead letter not published");
                self.metrics.error("hub");
            }
        }
        Ok(())
    }
}
