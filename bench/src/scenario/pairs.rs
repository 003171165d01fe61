//! `pairs`: N senders on edge 0, each writing to its own receiver on edge 1, at a set
//! total rate. Latency is send call → receiving app. Both sides reconnect when their
//! connection drops (a network switch cuts TCP): the receiver resumes from its
//! cursors, the sender sends what was unanswered again with the same ids (stored
//! once); reconnects are counted.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use petrel_client::SendResult;
use tokio_util::sync::CancellationToken;

use super::{ConnectSpec, Ctx, Tally, receive, receive_resilient, wait_for};
use crate::report::Report;

#[derive(Default)]
struct Counts {
    sent: AtomicU64,
    stored: AtomicU64,
    rejected: AtomicU64,
    reconnects: AtomicU64,
}

pub(crate) async fn run(
    ctx: &Ctx<'_>,
    pairs: usize,
    rate: u64,
    duration: u64,
    size: usize,
) -> anyhow::Result<Report> {
    anyhow::ensure!(pairs > 0 && rate > 0, "--pairs and --rate must be above 0");
    let run = &ctx.run;
    let receivers = ctx
        .connect_many(1, pairs, |i| format!("{run}-pr{i}"))
        .await?;
    let senders = ctx
        .connect_many(0, pairs, |i| format!("{run}-ps{i}"))
        .await?;
    let stop = CancellationToken::new();
    let delivered = Arc::new(AtomicU64::new(0));
    let counts = Arc::new(Counts::default());
    let receiver_reconnects = Arc::new(AtomicU64::new(0));
    let mut tallies = Vec::new();
    for (i, c) in receivers.into_iter().enumerate() {
        let from = format!("{run}-ps{i}");
        tallies.push(receive_resilient(
            ctx.spec(1, &format!("{run}-pr{i}"), i)?,
            c,
            move |m| m.from == from,
            delivered.clone(),
            receiver_reconnects.clone(),
            stop.clone(),
        ));
    }
    let period = Duration::from_secs_f64(pairs as f64 / rate as f64);
    let end = Instant::now() + Duration::from_secs(duration);
    let started = Instant::now();
    let mut send_tasks = Vec::new();
    for (i, c) in senders.into_iter().enumerate() {
        let spec = ctx.spec(0, &format!("{run}-ps{i}"), pairs + i)?;
        let to = format!("{run}-pr{i}");
        let counts = counts.clone();
        let stop = stop.clone();
        send_tasks.push(tokio::spawn(async move {
            // Spread the pairs' ticks over one period.
            tokio::time::sleep(period.mul_f64(i as f64 / pairs as f64)).await;
            send_resilient(spec, c, to, period, end, size, counts, stop).await
        }));
    }
    let pb = super::progress(duration, "sending (s)");
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(200)).await;
        pb.set_position(started.elapsed().as_secs().min(duration));
    }
    pb.finish_and_clear();
    for t in send_tasks {
        t.await?;
    }
    let sending = started.elapsed();
    let want = counts.stored.load(Ordering::Relaxed);
    // Through a lossy proxy a QUIC path whose probes were lost too backs off for
    // seconds between retransmissions: 30 s without progress before calling it lost.
    wait_for(&delivered, want, Duration::from_secs(30), "delivering").await;
    stop.cancel();
    let mut total = Tally::default();
    for t in tallies {
        total.add(&t.await?);
    }
    let mut r = Report::new(
        "pairs",
        &ctx.transport.to_string(),
        serde_json::json!({"pairs": pairs, "rate": rate, "duration_s": duration, "size": size}),
    );
    r.seconds = sending.as_secs_f64();
    r.sent = counts.sent.load(Ordering::Relaxed);
    r.delivered = total.delivered;
    r.lost = want.saturating_sub(total.delivered);
    r.duplicates = total.duplicates;
    r.rate = total.delivered as f64 / r.seconds;
    r.rate_unit = "msgs/s".into();
    r.latency = total.latency.summary();
    r.set("rejected", counts.rejected.load(Ordering::Relaxed));
    r.set(
        "reconnects",
        counts.reconnects.load(Ordering::Relaxed) + receiver_reconnects.load(Ordering::Relaxed),
    );
    r.set("wire_duplicates_dropped_by_sdk", total.wire_duplicates);
    Ok(r)
}

/// Sends to `to` every `period` until `end`; when the connection drops, connects again
/// and sends every unanswered message again (same id, same body: stored once, its
/// latency counts the outage). Returns when everything sent has an answer.
#[allow(clippy::too_many_arguments)]
async fn send_resilient(
    spec: ConnectSpec,
    first: petrel_client::Connection,
    to: String,
    period: Duration,
    end: Instant,
    size: usize,
    counts: Arc<Counts>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Unanswered: id → body, in send order.
    let mut pending: BTreeMap<u64, bytes::Bytes> = BTreeMap::new();
    let mut next = 0u64;
    let mut client = Some(first);
    let grace = end + Duration::from_secs(30);
    'conn: while let Some(c) = client.take() {
        let sender = c.sender();
        // Its own copies (its inbox) are drained, not counted.
        let drain_stop = stop.child_token();
        let drain = receive(c, |_| false, Arc::default(), drain_stop.clone());
        let mut answers = futures::stream::FuturesUnordered::new();
        let mut broken = false;
        // Again, in order, whatever the last connection left unanswered.
        for (n, body) in &pending {
            match sender
                .start_send(
                    &to,
                    &format!("m{n}"),
                    body.clone(),
                    "application/octet-stream",
                )
                .await
            {
                Ok(rx) => answers.push(answer(*n, rx)),
                Err(_) => {
                    broken = true;
                    break;
                }
            }
        }
        while !broken && (Instant::now() < end || !pending.is_empty()) {
            if Instant::now() >= grace {
                break 'conn;
            }
            tokio::select! {
                _ = tick.tick(), if Instant::now() < end => {
                    let n = next;
                    next += 1;
                    let body = crate::stamped(size);
                    pending.insert(n, body.clone());
                    counts.sent.fetch_add(1, Ordering::Relaxed);
                    match sender
                        .start_send(&to, &format!("m{n}"), body, "application/octet-stream")
                        .await
                    {
                        Ok(rx) => answers.push(answer(n, rx)),
                        Err(_) => broken = true,
                    }
                }
                Some((n, r)) = answers.next(), if !answers.is_empty() => match r {
                    Ok(SendResult::Stored { .. } | SendResult::Queued { .. }) => {
                        if pending.remove(&n).is_some() {
                            counts.stored.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(SendResult::Rejected { .. }) => {
                        if pending.remove(&n).is_some() {
                            counts.rejected.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    // The connection went away before the answer.
                    Err(_) => broken = true,
                },
                _ = tokio::time::sleep(Duration::from_millis(100)), if Instant::now() >= end => {}
            }
        }
        drop(sender);
        drain_stop.cancel();
        let _ = drain.await;
        if !broken {
            break;
        }
        counts.reconnects.fetch_add(1, Ordering::Relaxed);
        client = spec.connect(Vec::new(), &stop).await;
    }
}

async fn answer(
    n: u64,
    rx: tokio::sync::oneshot::Receiver<SendResult>,
) -> (
    u64,
    Result<SendResult, tokio::sync::oneshot::error::RecvError>,
) {
    (n, rx.await)
}
