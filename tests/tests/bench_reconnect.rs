//! Benchmark (ignored; run on its own, figures in BENCHMARKS.md): how long the
//! reconnecting client takes to be connected again, and to notice a gateway that
//! vanished.
//!
//! - Set-up to Welcome at 200 ms RTT (100 ms each way through the impairment proxy),
//!   QUIC and WebSocket: what every reconnect costs on top of its backoff delay.
//! - A gateway killed with SIGKILL, default timers: how long until the client gives the
//!   connection up (QUIC: the probe; WebSocket: the kernel's reset).
//!
//! `cargo nextest run -p petrel-tests --test bench_reconnect --run-ignored only --no-capture`

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::bail;
use petrel_bench::impair::{Impairment, tcp::TcpProxy, udp::UdpProxy};
use petrel_client::{Client, ClientOptions, Endpoint, Event, TransportKind};
use petrel_devkit::Topology;
use petrel_tests::{GatewayProcess, TestTopology};

const RUNS: usize = 10;

async fn until_connected(c: &mut Client) -> anyhow::Result<()> {
    loop {
        match tokio::time::timeout(Duration::from_secs(60), c.next_event()).await {
            Ok(Some(Event::Connected { .. })) => return Ok(()),
            Ok(Some(_)) => {}
            other => bail!("not connected: {other:?}"),
        }
    }
}

fn summary(mut ms: Vec<f64>) -> String {
    ms.sort_by(f64::total_cmp);
    format!(
        "median {:.0} ms, min {:.0} ms, max {:.0} ms ({} runs)",
        ms[ms.len() / 2],
        ms[0],
        ms[ms.len() - 1],
        ms.len()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark"]
async fn set_up_at_200_ms_rtt_and_dead_gateway_detection() -> anyhow::Result<()> {
    let topo = Topology::start(1).await?;
    let stop = tokio_util::sync::CancellationToken::new();
    let rtt = Impairment {
        delay: Duration::from_millis(100),
        ..Impairment::default()
    };
    for transport in [TransportKind::Quic, TransportKind::WebSocket] {
        let mut ep: Endpoint = topo.endpoint(0, transport);
        let local: SocketAddr = "127.0.0.1:0".parse()?;
        match transport {
            TransportKind::Quic => {
                let p = UdpProxy::bind(local, ep.address.parse()?, rtt.clone()).await?;
                ep.address = p.local_addr().to_string();
                p.run(stop.clone(), 0);
            }
            TransportKind::WebSocket => {
                let up = ep
                    .address
                    .trim_start_matches("wss://")
                    .split('/')
                    .next()
                    .unwrap_or("");
                let p = TcpProxy::bind(local, up.parse()?, rtt.clone()).await?;
                ep.address = ep.address.replace(up, &p.local_addr().to_string());
                p.run(stop.clone(), 0);
            }
        }
        let mut times = Vec::new();
        for _ in 0..RUNS {
            let started = Instant::now();
            let mut c = Client::start(ClientOptions::new(
                vec![ep.clone()],
                topo.token("bob"),
                "phone",
            ))?;
            until_connected(&mut c).await?;
            times.push(started.elapsed().as_secs_f64() * 1000.0);
            c.close().await;
        }
        println!(
            "set-up to Welcome, {transport}, 200 ms RTT: {}",
            summary(times)
        );
        // Reconnects of one client (`Handle::reconnect`): QUIC with and without 0-RTT.
        let variants: &[bool] = match transport {
            TransportKind::Quic => &[false, true],
            TransportKind::WebSocket => &[false],
        };
        for &zero_rtt in variants {
            let mut opts = ClientOptions::new(vec![ep.clone()], topo.token("bob"), "phone");
            opts.zero_rtt = zero_rtt;
            let mut c = Client::start(opts)?;
            until_connected(&mut c).await?;
            let mut times = Vec::new();
            for _ in 0..RUNS {
                let started = Instant::now();
                c.reconnect().await?;
                until_connected(&mut c).await?;
                times.push(started.elapsed().as_secs_f64() * 1000.0);
            }
            let early = c
                .stats()
                .zero_rtt_connects
                .load(std::sync::atomic::Ordering::Relaxed);
            let label = match (transport, zero_rtt) {
                (TransportKind::Quic, true) => " 0-RTT allowed",
                (TransportKind::Quic, false) => " 1-RTT",
                _ => "",
            };
            println!(
                "reconnect to Welcome, {transport}{label}, 200 ms RTT: {} ({early} in 0-RTT)",
                summary(times)
            );
            c.close().await;
        }
    }
    stop.cancel();

    let dir = topo.dir().join("edgep");
    let leaf = topo.start_extra_leaf(&dir.join("leaf"), "leafp").await?;
    let mut gw = GatewayProcess::start(&dir, &leaf.client_url, topo.leaf_auth(), &[]).await?;
    for transport in [TransportKind::Quic, TransportKind::WebSocket] {
        let mut times = Vec::new();
        for _ in 0..3 {
            let mut c = Client::start(ClientOptions::new(
                vec![gw.endpoint(transport)],
                topo.token("bob"),
                "phone",
            ))?;
            until_connected(&mut c).await?;
            // Quiet for a moment, as an idle phone would be.
            tokio::time::sleep(Duration::from_secs(2)).await;
            gw.kill().await;
            let killed = Instant::now();
            loop {
                match tokio::time::timeout(Duration::from_secs(120), c.next_event()).await {
                    Ok(Some(Event::Disconnected { .. })) => break,
                    Ok(Some(_)) => {}
                    other => bail!("no Disconnected: {other:?}"),
                }
            }
            times.push(killed.elapsed().as_secs_f64() * 1000.0);
            c.close().await;
            gw.restart().await?;
        }
        println!(
            "dead gateway noticed, {transport}, default timers (keepalive 20 s, probe 5 s): {}",
            summary(times)
        );
    }
    Ok(())
}
