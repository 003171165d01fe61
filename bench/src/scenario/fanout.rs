//! `fanout`: one sender writes to one group whose M members are all connected to the
//! same edge. Deliveries per second count every member's copy.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use petrel_client::{SendResult, To};
use tokio_util::sync::CancellationToken;

use super::{Ctx, Tally, receive, wait_for};
use crate::report::Report;

pub(crate) async fn run(
    ctx: &Ctx<'_>,
    members: usize,
    rate: u64,
    duration: u64,
    size: usize,
) -> anyhow::Result<Report> {
    anyhow::ensure!(
        members > 0 && rate > 0,
        "--members and --rate must be above 0"
    );
    let run = &ctx.run;
    let group = format!("{run}-fan");
    let sender_name = format!("{run}-fs");
    let mut users: Vec<String> = (0..members).map(|i| format!("{run}-fm{i}")).collect();
    users.push(sender_name.clone());
    ctx.set_group(&group, &users).await?;
    let clients = ctx
        .connect_many(0, members, |i| format!("{run}-fm{i}"))
        .await?;
    let sender = ctx.connect(0, &sender_name, members, Vec::new()).await?;
    let stop = CancellationToken::new();
    let delivered = Arc::new(AtomicU64::new(0));
    let subject =
        petrel_core::subject::group_subject(&petrel_core::GroupId::parse(group.as_str())?);
    let tallies: Vec<_> = clients
        .into_iter()
        .map(|c| {
            let subject = subject.clone();
            receive(
                c,
                move |m| m.subject == subject,
                delivered.clone(),
                stop.clone(),
            )
        })
        .collect();
    let send = sender.sender();
    let drain = receive(sender, |_| false, Arc::default(), stop.clone());

    let started = Instant::now();
    let end = started + Duration::from_secs(duration);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut answers = Vec::new();
    let pb = super::progress(rate * duration, "sending");
    let mut n = 0u64;
    while Instant::now() < end {
        tick.tick().await;
        answers.push(
            send.start_send_to(
                To::Group(&group),
                &format!("f{n}"),
                crate::stamped(size),
                "application/octet-stream",
            )
            .await?,
        );
        n += 1;
        pb.set_position(n);
    }
    pb.finish_and_clear();
    let sent = n;
    let mut stored = 0u64;
    for a in answers {
        if let Ok(SendResult::Stored { .. } | SendResult::Queued { .. }) = a.await {
            stored += 1;
        }
    }
    let want = stored * members as u64;
    wait_for(&delivered, want, Duration::from_secs(10), "delivering").await;
    stop.cancel();
    let mut total = Tally::default();
    for t in tallies {
        total.add(&t.await?);
    }
    // The sender's connection ends once its last handle is gone.
    drop(send);
    drain.await?;
    let window = total
        .last
        .map(|l| l.duration_since(started))
        .unwrap_or_else(|| started.elapsed());
    let mut r = Report::new(
        "fanout",
        &ctx.transport.to_string(),
        serde_json::json!({"members": members, "rate": rate, "duration_s": duration, "size": size}),
    );
    r.seconds = window.as_secs_f64();
    r.sent = sent;
    r.delivered = total.delivered;
    r.lost = want.saturating_sub(total.delivered);
    r.duplicates = total.duplicates;
    r.rate = total.delivered as f64 / r.seconds;
    r.rate_unit = "deliveries/s".into();
    r.latency = total.latency.summary();
    r.set("stored", stored);
    Ok(r)
}
