//! `idle`: N connections that do nothing; the gateway process's resident memory per
//! connection, and the kernel's socket memory (both ends, on this machine) apart.

use std::time::{Duration, Instant};

use super::Ctx;
use crate::report::Report;
use crate::topo::{rss_bytes, socket_memory};

pub(crate) async fn run(ctx: &Ctx<'_>, connections: usize) -> anyhow::Result<Report> {
    anyhow::ensure!(connections > 0, "--connections must be above 0");
    let pid = ctx.target.gateway_pid();
    let run = &ctx.run;
    let label = match ctx.transport {
        petrel_client::TransportKind::Quic => "quic",
        petrel_client::TransportKind::WebSocket => "websocket",
    };
    let series = format!("petrel_connections{{transport=\"{label}\"}}");
    let base_conns = ctx.target.metric(0, &series).await?;
    let rss0 = rss_bytes(pid)?;
    let sock0 = socket_memory();
    let started = Instant::now();
    let clients = ctx
        .connect_many(0, connections, |i| format!("{run}-idle{i}"))
        .await?;
    let connect_time = started.elapsed();
    // The gateway has them all once its gauge says so; then let its memory settle
    // (allocations of the handshakes freed) by waiting for two equal readings.
    let deadline = Instant::now() + Duration::from_secs(30);
    while ctx.target.metric(0, &series).await? < base_conns + connections as f64 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the gateway never counted {connections} connections"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut rss1 = rss_bytes(pid)?;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = rss_bytes(pid)?;
        if now.abs_diff(rss1) < 64 * 1024 {
            rss1 = now;
            break;
        }
        rss1 = now;
    }
    let sock1 = socket_memory();
    let per_conn = rss1.saturating_sub(rss0) as f64 / connections as f64;
    let mut r = Report::new(
        "idle",
        &ctx.transport.to_string(),
        serde_json::json!({"connections": connections}),
    );
    r.seconds = connect_time.as_secs_f64();
    r.sent = connections as u64;
    r.rate = per_conn / 1024.0;
    r.rate_unit = "KiB gateway RSS per connection".into();
    r.set("gateway_rss_before_mib", rss0 as f64 / 1048576.0);
    r.set("gateway_rss_after_mib", rss1 as f64 / 1048576.0);
    r.set(
        "connects_per_s",
        connections as f64 / connect_time.as_secs_f64(),
    );
    for (proto, after) in &sock1 {
        let before = sock0.get(proto).copied().unwrap_or(0);
        r.set(
            &format!("kernel_{}_socket_kib_per_connection", proto.to_lowercase()),
            after.saturating_sub(before) as f64 / 1024.0 / connections as f64,
        );
    }
    futures::future::join_all(clients.into_iter().map(|c| c.close())).await;
    Ok(r)
}
