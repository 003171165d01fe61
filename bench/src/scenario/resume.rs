//! `resume`: a device misses K messages, then reconnects with its cursor; the time from
//! starting to connect until its app has all K, per round. The edge cache serves them
//! when it holds an unbroken run (cache hits are reported): the edge caches what it
//! receives live, so another device of the user stays connected meanwhile (a laptop
//! left open while the phone was away), unless `--cold`.

use std::time::{Duration, Instant};

use petrel_client::{Event, SendResult};

use super::Ctx;
use crate::hist::Latency;
use crate::report::Report;

pub(crate) async fn run(
    ctx: &Ctx<'_>,
    missed: usize,
    rounds: usize,
    cold: bool,
) -> anyhow::Result<Report> {
    anyhow::ensure!(
        missed > 0 && rounds > 0,
        "--missed and --rounds must be above 0"
    );
    let run = &ctx.run;
    let me = format!("{run}-rr");
    let inbox = petrel_core::subject::private_inbox(&petrel_core::UserId::parse(me.as_str())?);
    let sender = ctx.connect(0, &format!("{run}-rs"), 1, Vec::new()).await?;
    let send = sender.sender();
    let drain = super::receive(
        sender,
        |_| false,
        Default::default(),
        tokio_util::sync::CancellationToken::new(),
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let keeper = if cold {
        None
    } else {
        let mut endpoint = ctx.target.endpoint(0, ctx.transport, None)?;
        if let Some(p) = &ctx.proxies {
            endpoint.address = p.address(0, &endpoint.address);
        }
        let c = petrel_client::Connection::connect(petrel_client::ConnectOptions::new(
            endpoint,
            ctx.target.token(&me)?,
            "laptop",
        ))
        .await?;
        Some(super::receive(
            c,
            |_| false,
            Default::default(),
            stop.clone(),
        ))
    };
    // A first message sets the cursor.
    let mut cursor = {
        let mut c = ctx.connect(0, &me, 0, Vec::new()).await?;
        send.start_send(&me, "warm", crate::stamped(8), "application/octet-stream")
            .await?
            .await?;
        let seq = loop {
            match tokio::time::timeout(Duration::from_secs(10), c.next_event()).await {
                Ok(Some(Event::Message(m))) if m.subject == inbox => break m.seq,
                Ok(Some(_)) => continue,
                _ => anyhow::bail!("the warm-up message did not arrive"),
            }
        };
        c.close().await;
        seq
    };
    let hits0 = ctx.target.metric(0, "petrel_cache_hits_total").await?;
    let misses0 = ctx.target.metric(0, "petrel_cache_misses_total").await?;
    let mut times = Latency::new();
    let mut delivered = 0u64;
    let mut duplicates = 0u64;
    let pb = super::progress(rounds as u64, "rounds");
    for round in 0..rounds {
        // K messages while away, all stored before coming back.
        let mut answers = Vec::with_capacity(missed);
        for k in 0..missed {
            answers.push(
                send.start_send(
                    &me,
                    &format!("x{round}-{k}"),
                    crate::stamped(100),
                    "application/octet-stream",
                )
                .await?,
            );
        }
        for a in answers {
            match a.await? {
                // QUEUED (the hub slower than the gateway's `queue_after_ms`, on a
                // loaded machine) is durable at the edge and reaches the device once
                // forwarded: the resume below still waits for every message.
                SendResult::Stored { .. } | SendResult::Queued { .. } => {}
                other => anyhow::bail!("a send was not accepted: {other:?}"),
            }
        }
        let started = Instant::now();
        let mut c = ctx
            .connect(0, &me, 0, vec![(inbox.clone(), cursor)])
            .await?;
        let mut got = 0usize;
        let mut last = cursor;
        while got < missed {
            match tokio::time::timeout(Duration::from_secs(30), c.next_event()).await {
                Ok(Some(Event::Message(m))) if m.subject == inbox => {
                    if m.seq <= last {
                        duplicates += 1;
                    } else {
                        last = m.seq;
                        got += 1;
                    }
                }
                Ok(Some(_)) => {}
                _ => anyhow::bail!("round {round}: only {got} of {missed} arrived"),
            }
        }
        times.record(started.elapsed());
        delivered += got as u64;
        cursor = last;
        c.close().await;
        pb.inc(1);
    }
    pb.finish_and_clear();
    drain.abort();
    stop.cancel();
    if let Some(k) = keeper {
        k.await?;
    }
    let mut r = Report::new(
        "resume",
        &ctx.transport.to_string(),
        serde_json::json!({"missed": missed, "rounds": rounds, "cold": cold}),
    );
    let s = times.summary();
    r.seconds = s
        .as_ref()
        .map(|s| s.mean_ms * rounds as f64 / 1000.0)
        .unwrap_or(0.0);
    r.sent = (missed * rounds) as u64;
    r.delivered = delivered;
    r.lost = r.sent.saturating_sub(delivered);
    r.duplicates = duplicates;
    r.rate = s.as_ref().map(|s| s.p50_ms).unwrap_or(0.0);
    r.rate_unit = "ms to resume (median round, connect included)".into();
    r.latency = s;
    r.set(
        "from_edge_cache",
        ctx.target.metric(0, "petrel_cache_hits_total").await? - hits0,
    );
    r.set(
        "from_hub",
        ctx.target.metric(0, "petrel_cache_misses_total").await? - misses0,
    );
    Ok(r)
}
