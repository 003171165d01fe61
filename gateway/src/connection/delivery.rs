//! Getting messages to the client: live frames batched into few writes, fetches
//! (resume, holes, catch-up) scheduled page by page, history requests bounded, and
//! every write bounded by the write timeout.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use petrel_core::delivery::{Fetch, Live, Order};
use petrel_core::session::{PublishOutcome, PublishRequest};
use petrel_core::wire::{Delivery, Receipt, Reply, SyncRequest, encode_deliver, encode_reply};
use petrel_core::{ErrorCode, Seq};
use tracing::{debug, warn};

use super::transport::{FrameReader, FrameWriter, TransportError};
use super::{Driver, End, Joined};
use crate::hub::catchup::estimated_size;
use crate::hub::{CatchUp, HubError, LiveItem};

/// Messages asked per fetch (a resume or a hole is filled page by page, each written
/// before the next is fetched, so memory stays bounded).
const FETCH_PAGE: usize = 256;

/// History requests one connection may have in progress.
const MAX_SYNCS: usize = 4;

/// Bytes of message content per Deliver frame when writing fetched messages.
const DELIVER_FRAME_BUDGET: usize = 32 * 1024;

/// Most bytes coalesced into one write when several live frames are queued.
const MAX_BATCH: usize = 64 * 1024;

type FetchResult = (Fetch, Result<(Vec<Delivery>, bool), HubError>);

/// Receipts one connection may have being checked at once.
const MAX_RECEIPT_CHECKS: usize = 16;
/// Pause before repeating a fetch that brought nothing new.
const EMPTY_FETCH_PAUSE: Duration = Duration::from_millis(200);

/// A receipt's check: whether its message is what the receipt says.
pub(super) type ReceiptCheck = (PublishRequest, Result<ReceiptVerdict, HubError>);

/// What checking a receipt found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReceiptVerdict {
    /// About a real message, and the first of its kind: store it.
    First,
    /// This reader's receipt of this kind for the message is already stored.
    Repeated,
    /// No such message from that sender in the reader's inbox.
    NoSuchMessage,
}

/// A connection's fetches and history requests in progress, and the delivery order
/// that decides what is delivered, skipped or fetched.
#[derive(Default)]
pub(super) struct Deliveries {
    pub(super) order: Order,
    // Boxed: `FuturesUnordered` keeps a stub slot the size of its future type in
    // every connection, idle or not (measured with heaptrack: ~3 KB each unboxed).
    pub(super) fetches: FuturesUnordered<BoxFuture<'static, FetchResult>>,
    pub(super) syncs: FuturesUnordered<BoxFuture<'static, Reply>>,
    pub(super) receipts: FuturesUnordered<BoxFuture<'static, ReceiptCheck>>,
    /// Amends waiting for the message service to find their original.
    pub(super) originals: FuturesUnordered<BoxFuture<'static, OriginalFound>>,
}

/// An amend's request id and what the message service said of its original.
pub(super) type OriginalFound = (
    u64,
    Result<Option<petrel_core::session::Original>, (ErrorCode, String)>,
);

impl Deliveries {
    /// Starts fetching `f`, after `delay` (a retry).
    pub(super) fn fetch(&mut self, catchup: &Arc<CatchUp>, f: Fetch, delay: Duration) {
        let catchup = catchup.clone();
        self.fetches.push(Box::pin(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let r = catchup.fetch(&f.subject, f.after, FETCH_PAGE).await;
            (f, r)
        }));
    }
}

/// How writes to one connection are bounded and counted.
pub(super) struct WriteCfg {
    pub(super) limit: Duration,
    pub(super) metrics: crate::metrics::TransportMetrics,
}

/// Writes `frames` encoded frames on delivery stream `stream` (`None`: the control
/// stream) within the write timeout; a client that stopped reading altogether is
/// closed with SLOW_CONSUMER (memory stays bounded either way, but its connection
/// would otherwise be held forever).
pub(super) async fn write_on<W: FrameWriter>(
    w: &mut W,
    stream: Option<usize>,
    data: Bytes,
    frames: u64,
    cfg: &WriteCfg,
) -> Result<(), TransportError> {
    let len = data.len() as u64;
    let sent = tokio::time::timeout(cfg.limit, async {
        match stream {
            Some(i) => w.send_delivery(i, data).await,
            None => w.send(data).await,
        }
    })
    .await;
    match sent {
        Ok(Ok(())) => {
            cfg.metrics.frames_out.inc_by(frames);
            cfg.metrics.bytes_out.inc_by(len);
            Ok(())
        }
        Ok(Err(e)) => Err(e),
        Err(_) => {
            w.abort(ErrorCode::SlowConsumer, "not reading: write timed out")
                .await;
            Err(TransportError::Stalled)
        }
    }
}

/// Encodes fetched deliveries into Deliver frames of bounded size.
fn encode_pages(items: &[Delivery]) -> Vec<Bytes> {
    let mut frames = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, d) in items.iter().enumerate() {
        bytes += estimated_size(d);
        if bytes >= DELIVER_FRAME_BUDGET {
            frames.push(encode_deliver(&items[start..=i]));
            start = i + 1;
            bytes = 0;
        }
    }
    if start < items.len() {
        frames.push(encode_deliver(&items[start..]));
    }
    frames
}

/// Frames gathered from the live queue, one buffer per stream they go on, written
/// with one write each.
#[derive(Default)]
struct Batch {
    parts: Vec<(Option<usize>, BytesMut, u64)>,
    bytes: usize,
    /// When the hub stored each message in the batch (for the delivery latency).
    stored_at: Vec<std::time::SystemTime>,
}

impl Batch {
    fn push(&mut self, stream: Option<usize>, frame: &[u8]) {
        self.bytes += frame.len();
        match self.parts.iter_mut().find(|(s, _, _)| *s == stream) {
            Some((_, buf, n)) => {
                buf.extend_from_slice(frame);
                *n += 1;
            }
            None => self.parts.push((stream, BytesMut::from(frame), 1)),
        }
    }

    async fn write<W: FrameWriter>(
        self,
        w: &mut W,
        cfg: &WriteCfg,
        latency: &prometheus_client::metrics::histogram::Histogram,
    ) -> Result<(), TransportError> {
        for (stream, buf, frames) in self.parts {
            write_on(w, stream, buf.freeze(), frames, cfg).await?;
        }
        let now = std::time::SystemTime::now();
        for at in self.stored_at {
            if let Ok(d) = now.duration_since(at) {
                latency.observe(d.as_secs_f64());
            }
        }
        Ok(())
    }
}

impl<R: FrameReader, W: FrameWriter> Driver<R, W> {
    /// Writes on the control stream.
    pub(super) async fn write(&mut self, frame: Bytes) -> Result<(), End> {
        Ok(write_on(&mut self.writer, None, frame, 1, &self.wcfg).await?)
    }

    /// A live message and whatever else is queued behind it (up to [`MAX_BATCH`]),
    /// coalesced into one write per stream; each stored message goes through the
    /// delivery order (duplicates, holes, catch-up).
    pub(super) async fn on_live(&mut self, first: Arc<LiveItem>) -> Result<(), End> {
        let mut batch = Batch::default();
        let mut next = Some(first);
        while let Some(item) = next.take() {
            self.live
                .queued
                .fetch_sub(item.frame.len(), Ordering::AcqRel);
            if item.seq.0 == 0 {
                // Ephemeral (typing, presence): no sequence, written as it comes;
                // typing as a datagram where the transport has them.
                if item.datagram && self.writer.send_datagram(item.frame.clone()) {
                    self.shared.datagrams_out.fetch_add(1, Ordering::Relaxed);
                } else {
                    batch.push(None, &item.frame);
                }
            } else {
                match self
                    .deliveries
                    .order
                    .on_live(&item.subject, item.seq, item.prev)
                {
                    Live::Deliver => {
                        batch.push(self.writer.delivery_stream(&item.subject), &item.frame);
                        batch.stored_at.extend(item.stored_at);
                    }
                    Live::Skip => {}
                    Live::Fetch(f) => {
                        debug!(subject = %f.subject, after = %f.after, seq = %item.seq, "hole before a live message; fetching it");
                        self.deliveries
                            .fetch(&self.shared.catchup, f, Duration::ZERO);
                    }
                }
            }
            if batch.bytes < MAX_BATCH {
                next = self.live.rx.try_recv().ok();
            }
        }
        let latency = &self.shared.metrics.delivery_latency;
        Ok(batch.write(&mut self.writer, &self.wcfg, latency).await?)
    }

    /// The live queue overflowed (a slow reader): catch up from the hub at the
    /// reader's pace instead of buffering without bound.
    pub(super) fn on_lost(&mut self) {
        debug!("live queue overflowed; catching up from the hub");
        self.shared
            .metrics
            .slow_consumers
            .get_or_create(&crate::metrics::SlowLabel { action: "catch_up" })
            .inc();
        for f in self.deliveries.order.lost() {
            self.deliveries
                .fetch(&self.shared.catchup, f, Duration::ZERO);
        }
    }

    /// A fetched page: writes what is new, then fetches the next page if there is one;
    /// a failed fetch is retried after a second from where delivery stands.
    pub(super) async fn on_fetched(
        &mut self,
        f: Fetch,
        result: Result<(Vec<Delivery>, bool), HubError>,
    ) -> Result<(), End> {
        let (items, more) = match result {
            Ok(page) => page,
            Err(e) => {
                warn!(subject = %f.subject, after = %f.after, error = %e, "fetch from the hub failed; retrying");
                let after = self.deliveries.order.last(&f.subject).unwrap_or(f.after);
                let again = Fetch { after, ..f };
                self.deliveries
                    .fetch(&self.shared.catchup, again, Duration::from_secs(1));
                return Ok(());
            }
        };
        let order = &mut self.deliveries.order;
        let fresh: Vec<Delivery> = items
            .into_iter()
            .filter(|d| order.on_fetched(&d.subject, d.seq))
            .collect();
        let stream = self.writer.delivery_stream(&f.subject);
        for frame in encode_pages(&fresh) {
            write_on(&mut self.writer, stream, frame, 1, &self.wcfg).await?;
        }
        if let Some(next) = self.deliveries.order.fetch_done(&f.subject, more) {
            // A fetch that brought nothing new while more is expected (the replica
            // answering lags behind the live stream, e.g. just after a leader change)
            // is repeated after a pause, not in a tight loop of consumers.
            let pause = if fresh.is_empty() {
                EMPTY_FETCH_PAUSE
            } else {
                Duration::ZERO
            };
            self.deliveries.fetch(&self.shared.catchup, next, pause);
        }
        Ok(())
    }

    /// Starts reading a page of history, or answers RATE_LIMITED when
    /// [`MAX_SYNCS`] are already in progress.
    pub(super) async fn sync(&mut self, req: SyncRequest) -> Result<(), End> {
        if self.deliveries.syncs.len() >= MAX_SYNCS {
            let why = format!("at most {MAX_SYNCS} history requests at a time");
            let busy = Reply::sync_refused(req, ErrorCode::RateLimited, why);
            return self.write(encode_reply(&busy)).await;
        }
        let Some(user) = self.joined.as_ref().map(|j| j.user.clone()) else {
            return Ok(());
        };
        let (catchup, jetstream, messages) = (
            self.shared.catchup.clone(),
            self.shared.jetstream.clone(),
            self.shared.messages.clone(),
        );
        self.deliveries.syncs.push(Box::pin(async move {
            let r = history(&catchup, &jetstream, &messages, user, &req).await;
            let (messages, more, error) = match r {
                Ok((m, more)) => (m, more, None),
                Err(e) => (Vec::new(), false, Some((e.code(), e.to_string()))),
            };
            Reply::SyncBatch {
                request_id: req.request_id,
                subject: req.subject,
                messages,
                more,
                error,
            }
        }));
        Ok(())
    }

    /// Starts asking the message service to change a conversation's settings; the
    /// answer is the conversation as it is now (followers get it as an update too).
    pub(super) async fn set_conversation(
        &mut self,
        request_id: u64,
        q: petrel_core::conversation::api::SettingsQuery,
    ) -> Result<(), End> {
        if self.deliveries.syncs.len() >= MAX_SYNCS {
            let why = format!("at most {MAX_SYNCS} history and list requests at a time");
            let busy = Reply::Conversations {
                request_id,
                page: Err((ErrorCode::RateLimited, why)),
            };
            return self.write(encode_reply(&busy)).await;
        }
        let messages = self.shared.messages.clone();
        self.deliveries.syncs.push(Box::pin(async move {
            Reply::Conversations {
                request_id,
                page: messages
                    .set_conversation(&q)
                    .await
                    .map_err(|e| (e.code(), e.to_string())),
            }
        }));
        Ok(())
    }

    /// Starts asking the message service for a page of the conversation list; with
    /// `follow`, this connection gets its user's conversation updates from now on
    /// (subscribed before asking, so no change falls between the page and them).
    pub(super) async fn list_conversations(
        &mut self,
        request: petrel_core::wire::ConversationsRequest,
        user: petrel_core::UserId,
        groups: Vec<petrel_core::GroupId>,
    ) -> Result<(), End> {
        if self.deliveries.syncs.len() >= MAX_SYNCS {
            let why = format!("at most {MAX_SYNCS} history and list requests at a time");
            let busy = Reply::Conversations {
                request_id: request.request_id,
                page: Err((ErrorCode::RateLimited, why)),
            };
            return self.write(encode_reply(&busy)).await;
        }
        if request.follow
            && !self.following
            && let Some(j) = &self.joined
        {
            let handle = j.handle.clone();
            self.shared
                .live
                .join(
                    &crate::hub::LiveKey::Conversations(user.clone()),
                    self.id,
                    handle,
                )
                .await;
            self.following = true;
        }
        let messages = self.shared.messages.clone();
        self.deliveries.syncs.push(Box::pin(async move {
            let q = petrel_core::conversation::api::ConversationsQuery {
                user,
                groups,
                offset: request.offset,
                limit: request.limit,
            };
            Reply::Conversations {
                request_id: request.request_id,
                page: messages
                    .conversations(&q)
                    .await
                    .map_err(|e| (e.code(), e.to_string())),
            }
        }));
        Ok(())
    }

    /// Starts asking the message service where the amended message `target` went.
    pub(super) fn find_original(
        &mut self,
        req: u64,
        user: petrel_core::UserId,
        target: petrel_core::ClientMsgId,
    ) {
        if self.deliveries.originals.len() >= MAX_RECEIPT_CHECKS {
            let why = format!("at most {MAX_RECEIPT_CHECKS} edits and recalls at a time");
            let out = self.session.on_original(
                req,
                Err((ErrorCode::RateLimited, why)),
                petrel_core::session::Now::system(),
            );
            self.actions.extend(out);
            return;
        }
        let messages = self.shared.messages.clone();
        self.deliveries.originals.push(Box::pin(async move {
            let found = messages
                .original(&user, &target)
                .await
                .map_err(|e| (e.code(), format!("{e}; try again")));
            (req, found)
        }));
    }

    /// Starts checking that `receipt` is about a message in the reader's inbox, from
    /// its sender with its id (the edge cache first, the hub otherwise).
    pub(super) fn check_receipt(&mut self, receipt: Receipt, publish: PublishRequest) {
        if self.deliveries.receipts.len() >= MAX_RECEIPT_CHECKS {
            let why = format!("at most {MAX_RECEIPT_CHECKS} receipts at a time");
            let out = self
                .session
                .on_receipt_refused(publish.req, ErrorCode::RateLimited, why);
            self.actions.extend(out);
            return;
        }
        let Some(Joined { user: reader, .. }) = &self.joined else {
            return;
        };
        let claim = petrel_core::subject::receipt_claim(
            reader,
            receipt.kind.as_str(),
            &receipt.sender,
            &receipt.client_msg_id,
        );
        let (catchup, jetstream) = (self.shared.catchup.clone(), self.shared.jetstream.clone());
        self.deliveries.receipts.push(Box::pin(async move {
            let verdict = async {
                let found = catchup.message_at(&receipt.subject, receipt.seq).await?;
                let real = found.is_some_and(|m| {
                    m.from == receipt.sender
                        && m.client_msg_id == receipt.client_msg_id.as_str()
                        && m.receipt.is_none()
                        && m.notification.is_none()
                });
                if !real {
                    return Ok(ReceiptVerdict::NoSuchMessage);
                }
                // Claimed before it is stored: a crash between the two loses this one
                // receipt (the claim stays), never stores it twice.
                Ok(match jetstream.claim(claim).await? {
                    true => ReceiptVerdict::First,
                    false => ReceiptVerdict::Repeated,
                })
            }
            .await;
            (publish, verdict)
        }));
    }

    /// A receipt was checked: published if it is about a real message, else refused.
    pub(super) async fn on_receipt_checked(&mut self, check: ReceiptCheck) {
        let (publish, verdict) = check;
        let refusal = match verdict {
            Ok(ReceiptVerdict::First) => None,
            Ok(ReceiptVerdict::Repeated) => {
                // Already stored: nothing to do, and nothing to tell (receipts are not
                // answered).
                let stored = PublishOutcome::Stored {
                    seq: Seq(0),
                    duplicate: true,
                };
                let out = self.session.on_published(publish.req, stored);
                self.actions.extend(out);
                return;
            }
            Ok(ReceiptVerdict::NoSuchMessage) => Some((
                ErrorCode::Forbidden,
                "no such message from that sender in your inbox: receipt not stored".to_string(),
            )),
            Err(e) => Some((
                ErrorCode::Unavailable,
                format!("the receipt could not be checked ({e}); send it again later"),
            )),
        };
        match refusal {
            None => {
                let outcomes = self.outcomes_tx.clone();
                self.shared.outbox.submit(publish, outcomes).await;
            }
            Some((code, why)) => {
                let out = self.session.on_receipt_refused(publish.req, code, why);
                self.actions.extend(out);
            }
        }
    }
}

/// A page of history: a direct conversation (`with`) from the archive; a subject from
/// the edge cache and the hub's stream, and from the archive for what the stream no
/// longer holds (below its first sequence), continuous at the seam.
async fn history(
    catchup: &CatchUp,
    jetstream: &crate::hub::JetStream,
    messages: &crate::hub::MessageService,
    user: petrel_core::UserId,
    req: &SyncRequest,
) -> Result<(Vec<Delivery>, bool), crate::hub::HubError> {
    let limit = req.limit as usize;
    let archive = |newest_first, before: Seq, after: Seq, limit: usize| {
        petrel_core::conversation::api::HistoryQuery {
            user: user.clone(),
            subject: req.subject.clone(),
            with: req.with.clone(),
            newest_first,
            before,
            after,
            limit: limit as u32,
        }
    };
    if req.with.is_some() {
        let q = archive(req.newest_first, req.before, req.after, limit);
        return messages.history(&q).await;
    }
    if req.newest_first {
        let (mut page, more) = catchup
            .history(&req.subject, true, req.before, req.after, limit)
            .await?;
        if more || page.len() >= limit || page.last().is_some_and(|d| d.seq.0 <= 1) {
            return Ok((page, more));
        }
        let first = jetstream.first_seq(&req.subject).await?;
        if first <= 1 {
            return Ok((page, more));
        }
        // The rest is older than anything the stream holds.
        let below = page.last().map_or(
            match req.before.0 {
                0 => first,
                b => b.min(first),
            },
            |d| d.seq.0,
        );
        let q = archive(true, Seq(below), Seq(0), limit - page.len());
        match messages.history(&q).await {
            Ok((older, more)) => {
                page.extend(older.into_iter().filter(|d| d.seq.0 < below));
                Ok((page, more))
            }
            // What the stream has is still an answer; the client asks again later.
            Err(e) if !page.is_empty() => {
                debug!(error = %e, "archive unavailable; the stream's page only");
                Ok((page, true))
            }
            Err(e) => Err(e),
        }
    } else {
        let first = jetstream.first_seq(&req.subject).await?;
        let mut out = Vec::new();
        let mut after = req.after;
        if after.0.saturating_add(1) < first {
            // Older than the stream: the archive, up to where the stream begins.
            let q = archive(false, Seq(0), after, limit);
            let (older, _) = messages.history(&q).await?;
            out.extend(older.into_iter().filter(|d| d.seq.0 < first));
            if out.len() >= limit {
                return Ok((out, true));
            }
            after = Seq(first - 1);
        }
        let (page, more) = catchup
            .history(&req.subject, false, Seq(0), after, limit - out.len())
            .await?;
        out.extend(page);
        Ok((out, more))
    }
}
