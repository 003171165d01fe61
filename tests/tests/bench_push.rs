//! Benchmark (ignored in the test run): one worker pushing to 600 offline devices
//! (a third each APNs, FCM, Web Push) against the local fake providers — pushes per
//! second and stored → push-received latency. One message per device, pipelined by
//! one sender: the pushes/s it reports is bounded by how fast that sender stores them,
//! not the worker's ceiling. See BENCHMARKS.md for the command.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use petrel_client::SendResult;
use petrel_tests::push::{Rig, apns, fcm, webpush};

const DEVICES: usize = 600;

fn percentile(sorted: &[u64], p: f64) -> u64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --run-ignored only"]
async fn pushes_per_second_and_latency_of_one_worker() -> anyhow::Result<()> {
    let rig = Rig::start(1).await?;
    // No grace: the figure is the pipeline's own latency (production adds its grace).
    let _worker = rig.worker("grace_ms = 0\nconcurrency = 256\n").await?;
    let mut tokens = Vec::new();
    for i in 0..DEVICES {
        let user = format!("u{i:04}");
        let (target, token) = match i % 3 {
            0 => (apns(&format!("{i:08x}")), format!("{i:08x}")),
            1 => (fcm(&format!("fcm-{i}")), format!("fcm-{i}")),
            _ => {
                let id = format!("wp-{i}");
                (webpush(&rig.fakes, &id), id)
            }
        };
        rig.register(&user, "phone", target, None).await?;
        tokens.push((user, token));
    }
    let alice = rig
        .topo
        .connect(0, petrel_client::TransportKind::Quic, "alice", "laptop")
        .await?;
    let started = Instant::now();
    let mut answers = Vec::new();
    for (user, _) in &tokens {
        answers.push((
            user.clone(),
            alice
                .start_send(user, &format!("m-{user}"), "hello", "text/plain")
                .await?,
        ));
    }
    // Each answer's time as it arrives (all awaited at once).
    let answered = futures::future::join_all(answers.into_iter().map(|(user, a)| async move {
        let r = a.await;
        (user, r, petrel_core::time::unix_ms())
    }))
    .await;
    let mut stored_at: HashMap<String, u64> = HashMap::new();
    for (user, r, at) in answered {
        anyhow::ensure!(matches!(r?, SendResult::Stored { .. }));
        stored_at.insert(user, at);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let got = rig
            .fakes
            .received()
            .iter()
            .filter(|r| (200..300).contains(&r.status))
            .count();
        if got >= DEVICES {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{got} of {DEVICES} pushes arrived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let received = rig.fakes.received();
    let by_token: HashMap<&str, u64> = received
        .iter()
        .map(|r| (r.token.as_str(), r.at_ms))
        .collect();
    let mut latencies: Vec<u64> = tokens
        .iter()
        .filter_map(|(u, t)| Some(by_token.get(t.as_str())?.saturating_sub(*stored_at.get(u)?)))
        .collect();
    latencies.sort_unstable();
    let first = received.iter().map(|r| r.at_ms).min().unwrap_or(0);
    let last = received.iter().map(|r| r.at_ms).max().unwrap_or(0);
    let secs = (last.saturating_sub(first)).max(1) as f64 / 1000.0;
    println!(
        "push bench: {DEVICES} devices (APNs/FCM/Web Push thirds), sends took {:?}; {} pushes in {secs:.2} s = {:.0} pushes/s on one worker; stored -> received p50 {} ms, p99 {} ms, max {} ms",
        started.elapsed(),
        received.len(),
        received.len() as f64 / secs,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(0),
    );

    Ok(())
}
