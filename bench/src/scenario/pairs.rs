//! `pairs`: N senders on edge 0, each writing to its own receiver on edge 1, at a set
//! total rate. Latency is send call → receiving app.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use petrel_client::SendResult;
use tokio_util::sync::CancellationToken;

use super::{Ctx, Tally, receive, wait_for};
use crate::report::Report;

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
    let mut tallies = Vec::new();
    for (i, c) in receivers.into_iter().enumerate() {
        let from = format!("{run}-ps{i}");
        tallies.push(receive(
            c,
            move |m| m.from == from,
            delivered.clone(),
            stop.clone(),
        ));
    }
    // The senders get their own copies (their inbox): drained, not counted.
    let ignored = Arc::new(AtomicU64::new(0));
    let mut send_tasks = Vec::new();
    let stored = Arc::new(AtomicU64::new(0));
    let rejected = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let period = Duration::from_secs_f64(pairs as f64 / rate as f64);
    let end = Instant::now() + Duration::from_secs(duration);
    let started = Instant::now();
    let mut drains = Vec::new();
    for (i, c) in senders.into_iter().enumerate() {
        let sender = c.sender();
        drains.push(receive(c, |_| false, ignored.clone(), stop.clone()));
        let to = format!("{run}-pr{i}");
        let (stored, rejected, sent) = (stored.clone(), rejected.clone(), sent.clone());
        send_tasks.push(tokio::spawn(async move {
            // Spread the pairs' ticks over one period.
            tokio::time::sleep(period.mul_f64(i as f64 / pairs as f64)).await;
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut answers = Vec::new();
            let mut n = 0u64;
            while Instant::now() < end {
                tick.tick().await;
                let id = format!("m{n}");
                n += 1;
                match sender
                    .start_send(&to, &id, crate::stamped(size), "application/octet-stream")
                    .await
                {
                    Ok(rx) => {
                        sent.fetch_add(1, Ordering::Relaxed);
                        answers.push(rx);
                    }
                    Err(_) => break,
                }
            }
            for a in answers {
                match a.await {
                    Ok(SendResult::Stored { .. } | SendResult::Queued { .. }) => {
                        stored.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        rejected.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
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
    let want = stored.load(Ordering::Relaxed);
    wait_for(&delivered, want, Duration::from_secs(10), "delivering").await;
    stop.cancel();
    let mut total = Tally::default();
    for t in tallies {
        total.add(&t.await?);
    }
    for d in drains {
        d.await?;
    }
    let sent = sent.load(Ordering::Relaxed);
    let mut r = Report::new(
        "pairs",
        &ctx.transport.to_string(),
        serde_json::json!({"pairs": pairs, "rate": rate, "duration_s": duration, "size": size}),
    );
    r.seconds = sending.as_secs_f64();
    r.sent = sent;
    r.delivered = total.delivered;
    r.lost = want.saturating_sub(total.delivered);
    r.duplicates = total.duplicates;
    r.rate = total.delivered as f64 / r.seconds;
    r.rate_unit = "msgs/s".into();
    r.latency = total.latency.summary();
    r.set("rejected", rejected.load(Ordering::Relaxed));
    r.set("wire_duplicates_dropped_by_sdk", total.wire_duplicates);
    Ok(r)
}
