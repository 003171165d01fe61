//! Benchmark (ignored in the test run): process memory while a client that never reads
//! is sent 64 MiB, after the same 64 MiB went to a client that reads (the control: what
//! the sending path itself costs, since the allocator keeps its peak). The gateway runs
//! in this process; bob is a raw QUIC connection that reads nothing after Welcome (so
//! the client side holds nothing); alice's and carol's messages are drained. If the
//! gateway buffered for bob, resident memory would grow by about what was sent.

use std::time::{Duration, Instant};

use petrel_client::{SendResult, TransportKind::*};
use petrel_tests::{TestTopology, Topology};

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --run-ignored only"]
async fn memory_while_a_reader_never_reads() -> anyhow::Result<()> {
    let t = Topology::start_with(1, |cfg, _| {
        cfg.limits.write_timeout_secs = 600; // keep bob connected throughout
        cfg.limits.send_burst = 10_000;
        cfg.limits.send_rate_per_sec = 10_000;
        Ok(())
    })
    .await?;
    let mut alice = t.connect(0, Quic, "alice", "phone").await?;
    // bob: Hello, Welcome, then never a read again.
    let _bob = t.raw_welcomed(0, "bob", "stuck").await?;
    let mut carol = t.connect(0, Quic, "carol", "phone").await?;
    let drain = tokio::spawn(async move { while carol.next_event().await.is_some() {} });
    let start = rss_mib();
    let (control, control_s) = flood(&mut alice, "carol").await?;
    let (stuck, stuck_s) = flood(&mut alice, "bob").await?;
    println!(
        "64 MiB to a reader that reads: RSS {start:.1} -> {control:.1} MiB (+{:.1}) in {control_s:.1} s; \
         then 64 MiB to a reader that never reads: -> {stuck:.1} MiB (+{:.1}) in {stuck_s:.1} s; live_overflows={}",
        control - start,
        stuck - control,
        t.counter(0, "live_overflows").await?
    );
    drain.abort();
    t.stop().await;
    Ok(())
}

/// Sends 4,096 × 16 KiB from alice to `to`; returns the peak RSS seen and the seconds.
async fn flood(alice: &mut petrel_client::Connection, to: &str) -> anyhow::Result<(f64, f64)> {
    let started = Instant::now();
    let mut peak = rss_mib();
    for chunk in 0..16 {
        let mut pending = Vec::new();
        for i in 0..256 {
            let id = format!("{to}-{}", chunk * 256 + i);
            pending.push(
                alice
                    .start_send(to, &id, vec![b'x'; 16 * 1024], "text/plain")
                    .await?,
            );
        }
        for p in pending {
            anyhow::ensure!(matches!(p.await?, SendResult::Stored { .. }));
        }
        // Drain alice's copies of her own messages.
        while let Ok(Some(_)) =
            tokio::time::timeout(Duration::from_millis(1), alice.next_event()).await
        {}
        peak = peak.max(rss_mib());
    }
    Ok((peak, started.elapsed().as_secs_f64()))
}
