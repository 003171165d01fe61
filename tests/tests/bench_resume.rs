//! Benchmark (ignored in the test run): resume of 1,000 missed messages served from the
//! edge cache vs fetched from the hub, in one run. See BENCHMARKS.md for the command.

use std::time::Instant;

use petrel_client::{ConnectOptions, Connection, SendResult, TransportKind::*};
use petrel_tests::{TestTopology, Topology, next_message_on};

const INBOX: &str = "msg.private.bob";
const MISSED: usize = 1000;

/// Time from starting the connection (Hello with the cursor) to the last missed message.
async fn resume(t: &Topology, edge: usize, device: &str, cursor: u64) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut opts = ConnectOptions::new(t.endpoint(edge, Quic), t.token("bob"), device);
    opts.cursors = vec![(INBOX.to_string(), cursor)];
    let mut bob = Connection::connect(opts).await?;
    for i in 0..MISSED {
        let m = next_message_on(&mut bob, INBOX, 10).await?;
        anyhow::ensure!(m.client_msg_id == format!("m{i}"), "out of order at {i}");
    }
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    bob.close().await;
    Ok(ms)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --run-ignored only"]
async fn resume_1000_from_cache_vs_hub() -> anyhow::Result<()> {
    let t = Topology::start(2).await?;
    let alice = t.connect(0, Quic, "alice", "phone").await?;
    // bob's laptop keeps edge 0 subscribed (and caching); edge 1 has nothing cached.
    let mut laptop = t.connect(0, Quic, "bob", "laptop").await?;
    let mut pending = Vec::new();
    for i in 0..MISSED {
        pending.push(
            alice
                .start_send("bob", &format!("m{i}"), vec![b'x'; 200], "text/plain")
                .await?,
        );
    }
    for p in pending {
        anyhow::ensure!(matches!(p.await?, SendResult::Stored { .. }));
    }
    for _ in 0..MISSED {
        next_message_on(&mut laptop, INBOX, 10).await?;
    }
    let mut rows = Vec::new();
    for run in 0..5 {
        let cache = resume(&t, 0, &format!("phone{run}"), 0).await?;
        let hub = resume(&t, 1, &format!("tablet{run}"), 0).await?;
        rows.push((cache, hub));
    }
    anyhow::ensure!(t.counter(1, "fetched_from_cache").await? == 0);
    for (i, (cache, hub)) in rows.iter().enumerate() {
        println!(
            "run {}: edge cache {cache:.1} ms, hub {hub:.1} ms, hub/cache {:.2}x",
            i + 1,
            hub / cache
        );
    }
    t.stop().await;
    Ok(())
}
