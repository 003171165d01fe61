//! `ingest`: S connections pipeline group messages (one stored copy each) as fast as
//! the gateway answers; stored sends per second and send → STORED latency. The group's
//! members are the senders themselves, so each also receives every message: a send
//! answered QUEUED (the hub took longer than the gateway's `queue_after_ms`) counts as
//! delivered only once every member has received it.

use std::time::Instant;

use futures::StreamExt;
use petrel_client::{SendResult, To};

use super::Ctx;
use crate::hist::Latency;
use crate::report::Report;

/// Sends one connection keeps unanswered (the gateway's default limit is 64).
const WINDOW: usize = 48;

pub(crate) async fn run(
    ctx: &Ctx<'_>,
    senders: usize,
    messages: u64,
    size: usize,
) -> anyhow::Result<Report> {
    anyhow::ensure!(
        senders > 0 && messages > 0,
        "--senders and --messages must be above 0"
    );
    let run = &ctx.run;
    let group = format!("{run}-in");
    let names: Vec<String> = (0..senders).map(|i| format!("{run}-is{i}")).collect();
    ctx.set_group(&group, &names).await?;
    let clients = ctx
        .connect_many(0, senders, |i| format!("{run}-is{i}"))
        .await?;
    let stop = tokio_util::sync::CancellationToken::new();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let pb = super::progress(messages, "stored");
    let per = messages / senders as u64;
    let started = Instant::now();
    let mut tasks = Vec::new();
    let mut drains = Vec::new();
    for (i, c) in clients.into_iter().enumerate() {
        let send = c.sender();
        drains.push(super::receive(c, |_| true, count.clone(), stop.clone()));
        let group = group.clone();
        let pb = pb.clone();
        let n = if i == 0 {
            messages - per * (senders as u64 - 1)
        } else {
            per
        };
        tasks.push(tokio::spawn(async move {
            let mut lat = Latency::new();
            let mut stored = 0u64;
            let mut queued = 0u64;
            let mut rejected = 0u64;
            let mut inflight = futures::stream::FuturesUnordered::new();
            let mut next = 0u64;
            while next < n || !inflight.is_empty() {
                while next < n && inflight.len() < WINDOW {
                    let t = Instant::now();
                    let rx = send
                        .start_send_to(
                            To::Group(&group),
                            &format!("i{i}-{next}"),
                            crate::stamped(size),
                            "application/octet-stream",
                        )
                        .await?;
                    inflight.push(async move { (t, rx.await) });
                    next += 1;
                }
                if let Some((t, r)) = inflight.next().await {
                    match r {
                        Ok(SendResult::Stored { .. }) => {
                            stored += 1;
                            lat.record(t.elapsed());
                            pb.inc(1);
                        }
                        Ok(SendResult::Queued { .. }) => {
                            queued += 1;
                            pb.inc(1);
                        }
                        _ => rejected += 1,
                    }
                }
            }
            anyhow::Ok((stored, queued, rejected, lat))
        }));
    }
    let mut stored = 0;
    let mut queued = 0;
    let mut rejected = 0;
    let mut lat = Latency::new();
    for t in tasks {
        let (s, q, r, l) = t.await??;
        stored += s;
        queued += q;
        rejected += r;
        lat.merge(&l);
    }
    let elapsed = started.elapsed();
    pb.finish_and_clear();
    // Every member receives every accepted message; a queued one reaches them once the
    // outbox has handed it to the hub.
    let expected = (stored + queued) * senders as u64;
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    while count.load(std::sync::atomic::Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    stop.cancel();
    let mut received = u64::MAX;
    let mut duplicates = 0;
    for d in drains {
        let t = d.await?;
        received = received.min(t.delivered);
        duplicates += t.duplicates;
    }
    let mut r = Report::new(
        "ingest",
        &ctx.transport.to_string(),
        serde_json::json!({"senders": senders, "messages": messages, "size": size}),
    );
    r.seconds = elapsed.as_secs_f64();
    r.sent = messages;
    r.delivered = received.min(messages);
    r.lost = messages - r.delivered;
    r.duplicates = duplicates;
    r.rate = stored as f64 / r.seconds;
    r.rate_unit = "stored sends/s".into();
    r.latency = lat.summary();
    r.set("queued", queued);
    r.set("rejected", rejected);
    Ok(r)
}
