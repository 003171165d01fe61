//! Benchmark (ignored in the test run): group fan-out. One sender, one group of 1,000
//! members all connected to one edge over QUIC; deliveries per second (a pipelined
//! burst) and delivery latency (a paced run), measured in one run. See BENCHMARKS.md.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use petrel_client::{Connection, Event, TransportKind::*};
use petrel_tests::{TestTopology, Topology};

const MEMBERS: usize = 1_000;
const GROUP: &str = "big";
const SUBJECT: &str = "msg.group.big";

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// Reads `n` group messages; returns the latency of each (µs since the sender's
/// `base` clock, written in the content, to arrival).
async fn read_n(
    mut c: Connection,
    n: usize,
    base: Instant,
) -> anyhow::Result<(Connection, Vec<f64>)> {
    let mut lat = Vec::with_capacity(n);
    while lat.len() < n {
        match tokio::time::timeout(Duration::from_secs(60), c.next_event()).await {
            Ok(Some(Event::Message(m))) if m.subject == SUBJECT => {
                let now = base.elapsed().as_micros() as f64;
                let sent: f64 = std::str::from_utf8(&m.content)?.trim().parse()?;
                lat.push(now - sent);
            }
            Ok(Some(_)) => {}
            other => anyhow::bail!("member stopped: {other:?} after {}", lat.len()),
        }
    }
    Ok((c, lat))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --run-ignored only"]
async fn group_fanout_1000_members_on_one_edge() -> anyhow::Result<()> {
    let topo = Arc::new(
        Topology::start_with(1, |cfg, _| {
            cfg.limits.send_rate_per_sec = 0;
            cfg.limits.max_inflight_sends = 256;
            Ok(())
        })
        .await?,
    );
    let dir = topo.groups()?;
    let g = petrel_core::GroupId::parse(GROUP)?;
    for i in 0..MEMBERS {
        dir.add(&g, &petrel_core::UserId::parse(format!("m{i}"))?)
            .await?;
    }
    dir.add(&g, &petrel_core::UserId::parse("sender")?).await?;
    let started = Instant::now();
    let members: Vec<Connection> = futures::stream::iter(0..MEMBERS)
        .map(|i| {
            let topo = topo.clone();
            async move { topo.connect(0, Quic, &format!("m{i}"), "d").await }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    println!(
        "{MEMBERS} members connected in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let sender = topo.connect(0, Quic, "sender", "d").await?;
    let base = Instant::now();

    // 1. Throughput: a pipelined burst of 100 messages → 100,000 deliveries.
    const BURST: usize = 100;
    let readers: Vec<_> = members
        .into_iter()
        .map(|c| tokio::spawn(read_n(c, BURST, base)))
        .collect();
    let t0 = Instant::now();
    let mut pending = Vec::new();
    for i in 0..BURST {
        let content = format!("{}", base.elapsed().as_micros());
        pending.push(
            sender
                .sender()
                .start_send_to(
                    petrel_client::To::Group(GROUP),
                    &format!("b{i}"),
                    content,
                    "text/plain",
                )
                .await?,
        );
    }
    for p in pending {
        p.await?;
    }
    let mut members = Vec::new();
    let mut lat_burst = Vec::new();
    for r in readers {
        let (c, l) = r.await??;
        members.push(c);
        lat_burst.extend(l);
    }
    let secs = t0.elapsed().as_secs_f64();
    let deliveries = BURST * MEMBERS;
    println!(
        "burst: {deliveries} deliveries in {secs:.2} s = {:.0} deliveries/s",
        deliveries as f64 / secs
    );

    // 2. Latency: 50 messages paced at 20/s → 50,000 deliveries.
    const PACED: usize = 50;
    let readers: Vec<_> = members
        .into_iter()
        .map(|c| tokio::spawn(read_n(c, PACED, base)))
        .collect();
    for i in 0..PACED {
        let content = format!("{}", base.elapsed().as_micros());
        sender.send_group(GROUP, &format!("p{i}"), content).await?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut lat = Vec::new();
    for r in readers {
        lat.extend(r.await??.1);
    }
    lat.sort_by(f64::total_cmp);
    println!(
        "paced (20 msg/s x {MEMBERS}): p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        pct(&lat, 0.50) / 1000.0,
        pct(&lat, 0.90) / 1000.0,
        pct(&lat, 0.99) / 1000.0,
        lat[lat.len() - 1] / 1000.0
    );
    lat_burst.sort_by(f64::total_cmp);
    println!(
        "burst latency: p50 {:.1} ms, p99 {:.1} ms",
        pct(&lat_burst, 0.50) / 1000.0,
        pct(&lat_burst, 0.99) / 1000.0
    );
    Ok(())
}
