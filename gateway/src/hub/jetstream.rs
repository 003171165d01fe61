//! The hub's JetStream API, through the leaf: publishing a send's copies, reading a
//! subject's stored messages through short-lived consumers, and the few lookups the
//! outbox and resumes need (last sequence, duplicate window, a message by id).

use std::ops::ControlFlow;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::consumer::DeliverPolicy;
use bytes::Bytes;
use futures::StreamExt;
use petrel_core::session::{PublishOutcome, PublishRequest};
use petrel_core::subject::{MESSAGE_STREAM, Subject};
use petrel_core::{ErrorCode, Seq};
use tracing::debug;

/// Why a request to the hub failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HubError {
    /// The hub did not answer, or answered with an error (it is away, the link is
    /// down, the stream is missing).
    #[error("{op}: {detail}")]
    Unavailable {
        /// What was asked.
        op: String,
        /// What went wrong.
        detail: String,
    },
    /// A read asked for messages and none came back before it expired.
    #[error("{op}: nothing came back")]
    Empty {
        /// What was asked.
        op: String,
    },
    /// Not a subject the hub stores.
    #[error("{0}")]
    Subject(#[from] petrel_core::subject::SubjectError),
}

/// Whether a publish was refused because its subject already holds its one message.
fn is_subject_full(e: &async_nats::jetstream::context::PublishError) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<async_nats::jetstream::Error>())
        .is_some_and(|j| {
            j.error_code() == async_nats::jetstream::ErrorCode::STREAM_STORE_FAILED
                && j.to_string().contains("maximum messages per subject")
        })
}

impl HubError {
    fn unavailable(op: impl Into<String>, e: impl std::fmt::Display) -> Self {
        Self::Unavailable {
            op: op.into(),
            detail: e.to_string(),
        }
    }

    /// The code a client is answered with.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Subject(_) => ErrorCode::InvalidMessage,
            _ => ErrorCode::Unavailable,
        }
    }
}

/// Bytes asked of the hub per batch (messages are at most 128 KiB).
pub const PAGE_BYTES: usize = 1024 * 1024;

/// Messages asked of the hub per batch.
const BATCH_MESSAGES: usize = 256;

/// One stored message as a read returns it.
pub struct Stored {
    /// Its stream sequence.
    pub seq: Seq,
    /// Messages of the subject after this one.
    pub pending: u64,
    /// Its `Nats-Msg-Id`, if any.
    pub msg_id: Option<String>,
    /// The payload.
    pub payload: Bytes,
}

/// The JetStream side of the leaf connection.
pub struct JetStream {
    client: async_nats::Client,
    js: jetstream::Context,
    publish_timeout: Duration,
    publish_latency: prometheus_client::metrics::histogram::Histogram,
}

impl std::fmt::Debug for JetStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStream").finish_non_exhaustive()
    }
}

impl JetStream {
    /// JetStream of domain `domain` through `client`; every request bounded by
    /// `publish_timeout`.
    pub fn new(
        client: async_nats::Client,
        domain: &str,
        publish_timeout: Duration,
        publish_latency: prometheus_client::metrics::histogram::Histogram,
    ) -> Self {
        let mut js = jetstream::with_domain(client.clone(), domain);
        js.set_timeout(publish_timeout);
        Self {
            client,
            js,
            publish_timeout,
            publish_latency,
        }
    }

    /// The leaf connection.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// Whether the connection to the leaf is up.
    pub fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// One JetStream API round trip through the leaf. The leaf forwards what this
    /// connection sent before it (a SUB, as leaf interest) first, so when the answer is
    /// back the hub knows about it.
    pub async fn round_trip(&self) -> Result<(), HubError> {
        self.js
            .query_account()
            .await
            .map(|_| ())
            .map_err(|e| HubError::unavailable("account info", e))
    }

    /// Claims a receipt's subject (see `petrel_core::subject::receipt_claim`): true if
    /// this is the first claim, false if one is already stored.
    pub async fn claim(&self, subject: String) -> Result<bool, HubError> {
        let op = || format!("claiming {subject}");
        let ack = self
            .js
            .publish(subject.clone(), bytes::Bytes::new())
            .await
            .map_err(|e| HubError::unavailable(op(), e))?;
        match tokio::time::timeout(self.publish_timeout, ack).await {
            Ok(Ok(_)) => Ok(true),
            // The stream refuses a second message on the subject (discard new per
            // subject): "maximum messages per subject exceeded".
            Ok(Err(e)) if is_subject_full(&e) => Ok(false),
            Ok(Err(e)) => Err(HubError::unavailable(op(), e)),
            Err(_) => Err(HubError::unavailable(op(), "no acknowledgement in time")),
        }
    }

    /// Puts every copy of `req` on the wire, in order, and returns a future for the
    /// hub's acknowledgements. The outbox forwarder awaits this in acceptance order (so
    /// messages of one conversation reach the hub in order) and awaits the returned
    /// futures concurrently (so many sends are in flight; it bounds how many).
    pub async fn publish(
        &self,
        req: PublishRequest,
    ) -> impl Future<Output = (u64, PublishOutcome)> + Send + 'static {
        let id = req.req;
        let timeout = self.publish_timeout;
        let failed = |detail: String| PublishOutcome::Failed {
            code: ErrorCode::Unavailable,
            detail,
        };
        let started = std::time::Instant::now();
        let latency = self.publish_latency.clone();
        let sent = async {
            let mut acks = Vec::with_capacity(req.copies.len());
            for copy in &req.copies {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(async_nats::header::NATS_MESSAGE_ID, copy.msg_id.as_str());
                let ack = self
                    .js
                    .publish_with_headers(copy.subject.clone(), headers, req.payload.clone())
                    .await
                    .map_err(|e| failed(format!("publish to {}: {e}", copy.subject)))?;
                acks.push(ack);
            }
            Ok(acks)
        }
        .await;
        async move {
            let acks = match sent {
                Ok(v) => v,
                Err(outcome) => return (id, outcome),
            };
            let mut first = None;
            for ack in acks {
                match tokio::time::timeout(timeout, ack).await {
                    Ok(Ok(ack)) => {
                        latency.observe(started.elapsed().as_secs_f64());
                        first.get_or_insert((ack.sequence, ack.duplicate));
                    }
                    Ok(Err(e)) => {
                        return (id, failed(format!("hub did not store the message: {e}")));
                    }
                    Err(_) => return (id, failed("hub did not acknowledge in time".into())),
                }
            }
            let outcome = match first {
                Some((seq, duplicate)) => PublishOutcome::Stored {
                    seq: Seq(seq),
                    duplicate,
                },
                None => failed("nothing to publish".into()),
            };
            (id, outcome)
        }
    }

    /// The stream that stores `subject`.
    async fn stream_of(&self, subject: &str) -> Result<jetstream::stream::Stream<()>, HubError> {
        let name = Subject::parse(subject)?.stream();
        self.js
            .get_stream_no_info(name)
            .await
            .map_err(|e| HubError::unavailable(format!("stream {name}"), e))
    }

    /// The last sequence stored on `subject` (0: none).
    pub async fn last_seq(&self, subject: &str) -> Result<u64, HubError> {
        use jetstream::stream::DirectGetErrorKind;
        let stream = self.stream_of(subject).await?;
        match stream.direct_get_last_for_subject(subject).await {
            Ok(m) => Ok(m.sequence),
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(0),
            Err(e) => Err(HubError::unavailable(
                format!("last message of {subject}"),
                e,
            )),
        }
    }

    /// The message stored at `seq`, if it is on `subject`: its payload.
    pub async fn message_at(&self, subject: &str, seq: Seq) -> Result<Option<Bytes>, HubError> {
        use jetstream::stream::DirectGetErrorKind;
        let stream = self.stream_of(subject).await?;
        match stream.direct_get(seq.0).await {
            Ok(m) if m.subject.as_str() == subject => Ok(Some(m.payload)),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
            Err(e) => Err(HubError::unavailable(
                format!("message {seq} of {subject}"),
                e,
            )),
        }
    }

    /// The oldest sequence `subject`'s stream still holds (its retention removed what
    /// is below it; the message service's archive has those).
    pub async fn first_seq(&self, subject: &str) -> Result<u64, HubError> {
        let name = Subject::parse(subject)?.stream();
        Ok(self.stream_info(name).await?.state.first_sequence)
    }

    async fn stream_info(&self, name: &str) -> Result<jetstream::stream::Info, HubError> {
        let op = || format!("stream {name}");
        let mut stream = self
            .js
            .get_stream(name)
            .await
            .map_err(|e| HubError::unavailable(op(), e))?;
        stream
            .info()
            .await
            .cloned()
            .map_err(|e| HubError::unavailable(op(), e))
    }

    /// The message stream's duplicate window (how long the hub remembers a
    /// `Nats-Msg-Id`).
    pub async fn duplicate_window(&self) -> Result<Duration, HubError> {
        Ok(self
            .stream_info(MESSAGE_STREAM)
            .await?
            .config
            .duplicate_window)
    }

    /// Looks for a message stored on `subject` under `Nats-Msg-Id` `msg_id` at or after
    /// `since_ms` (Unix ms): the outbox asks before retrying a send so old that the
    /// hub's duplicate window may have forgotten an earlier copy.
    pub async fn find_stored(
        &self,
        subject: &str,
        msg_id: &str,
        since_ms: u64,
    ) -> Result<Option<Seq>, HubError> {
        let start_time =
            time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(since_ms) * 1_000_000)
                .map_err(|e| HubError::unavailable(format!("reading {subject}"), e))?;
        let mut found = None;
        self.read(subject, DeliverPolicy::ByStartTime { start_time }, |m| {
            if m.msg_id.as_deref() == Some(msg_id) {
                found = Some(m.seq);
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .await?;
        Ok(found)
    }

    /// Up to `limit` messages of `subject` after `after` (at most about [`PAGE_BYTES`]
    /// of them), oldest first, each with the sequence of the one before; the flag says
    /// whether more remain.
    pub async fn page_after(
        &self,
        subject: &str,
        after: Seq,
        limit: usize,
    ) -> Result<(Vec<(Seq, Seq, Bytes)>, bool), HubError> {
        let start = DeliverPolicy::ByStartSequence {
            start_sequence: after.0.saturating_add(1),
        };
        let (mut out, mut prev, mut bytes, mut more) = (Vec::new(), after, 0, false);
        self.read(subject, start, |m| {
            bytes += m.payload.len();
            out.push((m.seq, prev, m.payload));
            prev = m.seq;
            more = m.pending > 0;
            if out.len() >= limit || bytes >= PAGE_BYTES {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .await?;
        Ok((out, more))
    }

    /// Reads `subject` from `start` through a short-lived pull consumer (no acks, in
    /// memory), batch after batch, handing each message to `visit` until it breaks or
    /// the subject has no more; then deletes the consumer.
    async fn read(
        &self,
        subject: &str,
        start: DeliverPolicy,
        mut visit: impl FnMut(Stored) -> ControlFlow<()>,
    ) -> Result<(), HubError> {
        let op = || format!("reading {subject}");
        let stream = self.stream_of(subject).await?;
        let consumer = stream
            .create_consumer(jetstream::consumer::pull::Config {
                filter_subject: subject.to_string(),
                deliver_policy: start,
                ack_policy: jetstream::consumer::AckPolicy::None,
                // Gone by itself if this task dies before deleting it.
                inactive_threshold: Duration::from_secs(30),
                memory_storage: true,
                ..Default::default()
            })
            .await
            .map_err(|e| HubError::unavailable(format!("creating a consumer on {subject}"), e))?;
        let consumer_name = consumer.cached_info().name.clone();
        let mut pending = consumer.cached_info().num_pending;
        let result = async {
            while pending > 0 {
                let mut batch = consumer
                    .batch()
                    .max_messages(
                        usize::try_from(pending)
                            .unwrap_or(usize::MAX)
                            .min(BATCH_MESSAGES),
                    )
                    // Bounded in bytes too, so a batch of large messages stays small.
                    .max_bytes(PAGE_BYTES)
                    .expires(self.publish_timeout)
                    .messages()
                    .await
                    .map_err(|e| HubError::unavailable(op(), e))?;
                let mut received = 0;
                while let Some(msg) = batch.next().await {
                    let msg = match msg {
                        Ok(m) => m,
                        // The byte bound ends a batch with a status; the next batch
                        // goes on from there.
                        Err(_) if received > 0 => break,
                        Err(e) => return Err(HubError::unavailable(op(), e)),
                    };
                    received += 1;
                    let info = msg.info().map_err(|e| HubError::unavailable(op(), e))?;
                    pending = info.pending;
                    let stored = Stored {
                        seq: Seq(info.stream_sequence),
                        pending,
                        msg_id: msg
                            .headers
                            .as_ref()
                            .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
                            .map(|v| v.as_str().to_string()),
                        payload: msg.payload.clone(),
                    };
                    if visit(stored).is_break() {
                        return Ok(());
                    }
                }
                if received == 0 {
                    return Err(HubError::Empty { op: op() });
                }
            }
            Ok(())
        }
        .await;
        // Ephemeral anyway (30 s inactivity); deleting now keeps the hub tidy.
        if let Err(e) = stream.delete_consumer(&consumer_name).await {
            debug!(error = %e, "deleting a read consumer failed");
        }
        result
    }
}
