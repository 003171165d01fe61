//! `/metrics`: the Prometheus endpoint shows what the gateway is doing — connections by
//! transport, frames and bytes, sends by result, delivery and publish latencies, the
//! leaf link, the outbox, the cache, slow consumers and refused tokens.

use petrel_client::{SendResult, TransportKind::*};
use petrel_tests::{TestTopology, Topology, metric_sample as sample, next_message_on};

fn must(text: &str, series: &str) -> anyhow::Result<f64> {
    sample(text, series).ok_or_else(|| anyhow::anyhow!("no {series} in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_connections_sends_latencies_and_refusals() -> anyhow::Result<()> {
    let t = Topology::start(1).await?;
    let before = t.http_get(0, "/metrics").await?;
    anyhow::ensure!(must(&before, "petrel_leaf_connected")? == 1.0);
    anyhow::ensure!(
        sample(&before, "petrel_sends_total{result=\"stored\",reason=\"\"}") == Some(0.0)
    );

    let alice = t.connect(0, Quic, "alice", "phone").await?;
    let mut bob = t.connect(0, WebSocket, "bob", "laptop").await?;
    for i in 0..10 {
        match alice.send("bob", &format!("m{i}"), "hello").await? {
            SendResult::Stored { .. } => {}
            other => anyhow::bail!("{other:?}"),
        }
    }
    for _ in 0..10 {
        next_message_on(&mut bob, "msg.private.bob", 10).await?;
    }
    // A non-member's group send is rejected, and a bad token is refused.
    match alice.send_group("nobody-here", "g1", "hi").await? {
        SendResult::Rejected { .. } => {}
        other => anyhow::bail!("{other:?}"),
    }
    anyhow::ensure!(
        t.connect_with_token(0, Quic, "not-a-token", "x")
            .await
            .is_err()
    );

    // The refused connection is gone once the gateway has finished closing it.
    t.wait_metric(0, "petrel_connections{transport=\"quic\"}", |v| v == 1.0)
        .await?;
    let m = t.http_get(0, "/metrics").await?;
    anyhow::ensure!(must(&m, "petrel_connections{transport=\"websocket\"}")? == 1.0);
    anyhow::ensure!(must(&m, "petrel_connects_total{transport=\"quic\"}")? == 2.0);
    anyhow::ensure!(must(&m, "petrel_sends_total{result=\"stored\",reason=\"\"}")? == 10.0);
    anyhow::ensure!(
        must(
            &m,
            "petrel_sends_total{result=\"rejected\",reason=\"FORBIDDEN\"}"
        )? == 1.0
    );
    anyhow::ensure!(must(&m, "petrel_auth_failures_total{code=\"UNAUTHENTICATED\"}")? == 1.0);
    // Two copies per direct message (the recipient's inbox and the sender's).
    anyhow::ensure!(must(&m, "petrel_jetstream_publish_seconds_count")? >= 20.0);
    // bob's 10, and alice's own copies on her other device (this one).
    anyhow::ensure!(must(&m, "petrel_delivery_latency_seconds_count")? >= 10.0);
    anyhow::ensure!(must(&m, "petrel_frames_received_total{transport=\"quic\"}")? >= 12.0);
    anyhow::ensure!(must(&m, "petrel_frames_sent_total{transport=\"websocket\"}")? >= 11.0);
    anyhow::ensure!(must(&m, "petrel_sent_bytes_total{transport=\"websocket\"}")? > 0.0);
    anyhow::ensure!(must(&m, "petrel_outbox_depth")? == 0.0);
    anyhow::ensure!(m.contains("# TYPE petrel_cache_hits counter"));

    drop(alice);
    bob.close().await;
    let closed = t
        .wait_metric(
            0,
            "petrel_disconnects_total{transport=\"websocket\",reason=\"client\"}",
            |v| v >= 1.0,
        )
        .await?;
    anyhow::ensure!(closed >= 1.0);
    t.stop().await;
    Ok(())
}

/// Every `petrel_*` series the alert rules and the dashboard use exists on `/metrics`
/// (so a renamed metric breaks this test, not a dashboard in production).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_and_dashboard_use_only_metrics_that_exist() -> anyhow::Result<()> {
    let t = Topology::start(1).await?;
    let alice = t.connect(0, Quic, "alice", "phone").await?;
    alice.send("alice", "self", "hi").await?;
    let m = t.http_get(0, "/metrics").await?;
    let known = petrel_tests::series_names(&m);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for file in [
        "deploy/prometheus/alerts.yml",
        "deploy/grafana/petrel-dashboard.json",
    ] {
        let text = std::fs::read_to_string(root.join(file))?;
        if file.ends_with(".json") {
            serde_json::from_str::<serde_json::Value>(&text)?;
        }
        let mut used = 0;
        for name in petrel_tests::names_used(&text, "petrel_") {
            // The push and message workers' metrics are checked against a worker
            // (tests/tests/push.rs, tests/tests/messages.rs).
            if name.starts_with("petrel_push_") || name.starts_with("petrel_messages_") {
                continue;
            }
            used += 1;
            anyhow::ensure!(
                known.contains(&name),
                "{file} uses {name}, which /metrics does not have"
            );
        }
        anyhow::ensure!(used >= 6, "{file} uses only {used} metrics");
    }
    t.stop().await;
    Ok(())
}
