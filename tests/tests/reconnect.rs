//! The reconnecting client on the real topology: a gateway killed with SIGKILL and
//! started again while a listener (QUIC) and a sender (WebSocket) run. Nobody acts:
//! the listener notices the dead path by its probe, both reconnect, unanswered sends
//! go again with their ids, and every message reaches the listener once, in order.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure};
use petrel_client::{
    Client, ClientOptions, Event, SendOptions, SendResult, To, TransportKind::*, session,
};
use petrel_devkit::Topology;
use petrel_tests::{GatewayProcess, TestTopology};

async fn connected(c: &mut Client) -> anyhow::Result<()> {
    petrel_tests::until_connected(c, Duration::from_secs(20)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_and_a_sender_ride_out_a_gateway_killed_with_sigkill() -> anyhow::Result<()> {
    const N: usize = 300;
    const KILL_AT: usize = 100;
    let topo = Topology::start(0).await?;
    let dir = topo.dir().join("edgep");
    let leaf = topo.start_extra_leaf(&dir.join("leaf"), "leafp").await?;
    let mut gw = GatewayProcess::start(&dir, &leaf.client_url, topo.leaf_auth(), &[]).await?;
    // Short probes so the test is quick; the defaults (20 s + 5 s) are for batteries.
    let timers = session::Config {
        keepalive: Duration::from_secs(1),
        probe_timeout: Duration::from_secs(1),
        backoff_initial: Duration::from_millis(100),
        backoff_max: Duration::from_millis(500),
        ..session::Config::default()
    };
    let options = |transport, user: &str| {
        let mut o = ClientOptions::new(vec![gw.endpoint(transport)], topo.token(user), "phone");
        o.session = timers.clone();
        o
    };
    let mut bob = Client::start(options(Quic, "bob"))?;
    let mut alice = Client::start(options(WebSocket, "alice"))?;
    connected(&mut bob).await?;
    connected(&mut alice).await?;
    let sender = alice.handle();
    // alice's events are drained (a client whose events are not read stalls).
    let alice_connects = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let alice_events = tokio::spawn({
        let connects = alice_connects.clone();
        async move {
            while let Some(ev) = alice.next_event().await {
                if matches!(ev, Event::Connected { .. }) {
                    connects.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
    });

    // bob reads everything: messages, and when the connection went and came back.
    let reader = tokio::spawn(async move {
        let mut ids = Vec::new();
        let mut seen = HashSet::new();
        let mut lost_at = None;
        let mut connects = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        while ids.len() < N {
            match tokio::time::timeout_at(deadline, bob.next_event()).await {
                Ok(Some(Event::Message(m))) => {
                    ensure!(seen.insert((m.subject.clone(), m.seq)), "seen twice: {m:?}");
                    ids.push(m.client_msg_id);
                }
                Ok(Some(Event::Disconnected {
                    retry_in: Some(_), ..
                })) => {
                    lost_at.get_or_insert_with(Instant::now);
                }
                Ok(Some(Event::Connected { .. })) => connects += 1,
                Ok(Some(Event::Disconnected { reason, .. })) => bail!("bob stopped: {reason}"),
                Ok(Some(_)) => {}
                Ok(None) => bail!("bob's client stopped"),
                Err(_) => bail!("bob got {} of {N} messages within 90 s", ids.len()),
            }
        }
        bob.close().await;
        Ok((ids, lost_at, connects))
    });

    // alice sends every 10 ms, each answer awaited in the background.
    let mut answers = Vec::new();
    let mut killed_at = None;
    for i in 0..N {
        if i == KILL_AT {
            gw.kill().await;
            killed_at = Some(Instant::now());
            println!("gateway killed with SIGKILL after {i} sends");
        }
        if i == KILL_AT + 50 {
            gw.restart().await?;
            println!("gateway started again");
        }
        let id = format!("a{i:04}");
        let pending = sender
            .start_send(
                To::User("bob"),
                &id,
                format!("message {i}"),
                "text/plain",
                SendOptions::default(),
            )
            .await?;
        answers.push(tokio::spawn(async move {
            tokio::time::timeout(Duration::from_secs(90), pending.result()).await
        }));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for (i, a) in answers.into_iter().enumerate() {
        match a.await? {
            Ok(Ok(SendResult::Stored { .. } | SendResult::Queued { .. })) => {}
            other => bail!("send {i}: {other:?}"),
        }
    }
    let (ids, lost_at, connects) = reader.await??;
    let expected: Vec<String> = (0..N).map(|i| format!("a{i:04}")).collect();
    ensure!(
        ids == expected,
        "bob's messages out of order or missing: {ids:?}"
    );
    ensure!(connects >= 1, "bob never reconnected");
    let (Some(killed), Some(lost)) = (killed_at, lost_at) else {
        bail!("bob never noticed the gateway was gone");
    };
    println!(
        "bob (QUIC) noticed the dead gateway {:.2} s after the kill (keepalive {:?}, probe {:?}); \
         bob reconnected {connects} time(s), alice {} time(s); {N} messages once each, in order",
        lost.duration_since(killed).as_secs_f64(),
        timers.keepalive,
        timers.probe_timeout,
        alice_connects.load(std::sync::atomic::Ordering::Relaxed),
    );
    alice_events.abort();
    Ok(())
}

/// `petrel client --state FILE …` as its own process: each run is an app start.
fn cli(
    gw: &GatewayProcess,
    token: &str,
    state: &std::path::Path,
    args: &[&str],
) -> anyhow::Result<Vec<serde_json::Value>> {
    let out = std::process::Command::new(petrel_tests::petrel_bin()?)
        .args(["client", "--user", "alice", "--transport", "quic"])
        .args([
            "--endpoint",
            &gw.quic.to_string(),
            "--cert-sha256",
            gw.cert_sha256(),
        ])
        .args(["--token", token])
        .arg("--state")
        .arg(state)
        .args(args)
        .env("PETREL_LOG", "warn")
        .output()?;
    ensure!(
        out.status.success(),
        "petrel client {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)?
        .lines()
        .map(|l| Ok(serde_json::from_str(l)?))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_made_offline_survive_app_restarts_and_are_stored_once_in_order() -> anyhow::Result<()>
{
    let topo = Topology::start(0).await?;
    let dir = topo.dir().join("edgep");
    let leaf = topo.start_extra_leaf(&dir.join("leaf"), "leafp").await?;
    let mut gw = GatewayProcess::start(&dir, &leaf.client_url, topo.leaf_auth(), &[]).await?;
    let token = topo.token("alice");
    let state = dir.join("alice.db");
    gw.kill().await;
    // Five app runs while the gateway is down: each puts one send in the outbox.
    for i in 0..5 {
        let out = cli(
            &gw,
            &token,
            &state,
            &[
                "send",
                "--queue",
                "--to",
                "bob",
                "--id",
                &format!("q{i}"),
                &format!("offline {i}"),
            ],
        )?;
        ensure!(out.len() == 1 && out[0]["status"] == "pending", "{out:?}");
    }
    gw.restart().await?;
    let answers = cli(&gw, &token, &state, &["flush", "--timeout", "30"])?;
    let ids: Vec<&str> = answers.iter().filter_map(|a| a["id"].as_str()).collect();
    ensure!(
        ids == ["q0", "q1", "q2", "q3", "q4"],
        "answers: {answers:?}"
    );
    ensure!(
        answers.iter().all(|a| a["status"] == "stored"),
        "{answers:?}"
    );
    let seqs: Vec<u64> = answers.iter().filter_map(|a| a["seq"].as_u64()).collect();
    ensure!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "stored out of order: {seqs:?}"
    );
    // Nothing is left to send, and nothing goes twice.
    ensure!(cli(&gw, &token, &state, &["flush", "--timeout", "10"])?.is_empty());
    let bob = petrel_client::Connection::connect(petrel_client::ConnectOptions::new(
        gw.endpoint(Quic),
        topo.token("bob"),
        "phone",
    ))
    .await?;
    let page = bob.history("msg.private.bob", false, 0, 100).await?;
    let got: Vec<&str> = page
        .messages
        .iter()
        .map(|m| m.client_msg_id.as_str())
        .collect();
    ensure!(
        got == ["q0", "q1", "q2", "q3", "q4"],
        "bob's inbox: {got:?}"
    );
    bob.close().await;
    Ok(())
}

/// The next message on `c`, failing on a reconnect (nothing here may cause one).
async fn next_message_no_reconnect(c: &mut Client) -> anyhow::Result<petrel_client::Message> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), c.next_event()).await {
            Ok(Some(Event::Message(m))) => return Ok(m),
            Ok(Some(e @ (Event::Disconnected { .. } | Event::Connected { .. }))) => {
                bail!("unexpected {e:?}")
            }
            Ok(Some(_)) => {}
            Ok(None) => bail!("client stopped"),
            Err(_) => bail!("no message within 10 s"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_change_moves_quic_to_a_new_socket_and_the_session_goes_on() -> anyhow::Result<()>
{
    let topo = Topology::start(1).await?;
    let mut bob = Client::start(ClientOptions::new(
        vec![topo.endpoint(0, Quic)],
        topo.token("bob"),
        "phone",
    ))?;
    connected(&mut bob).await?;
    let alice = topo.connect(0, Quic, "alice", "laptop").await?;
    let mut ports = vec![bob.local_address().await?.map(|a| a.port())];
    for round in 0..3 {
        bob.network_changed().await?;
        let port = bob.local_address().await?.map(|a| a.port());
        ensure!(
            port.is_some() && !ports.contains(&port),
            "round {round}: still on {port:?} ({ports:?})"
        );
        ports.push(port);
        for i in 0..10 {
            let id = format!("n{round}-{i}");
            ensure!(matches!(
                alice.send("bob", &id, "after a switch").await?,
                SendResult::Stored { .. }
            ));
            let m = next_message_no_reconnect(&mut bob).await?;
            ensure!(
                m.client_msg_id == id,
                "expected {id}, got {}",
                m.client_msg_id
            );
        }
    }
    println!(
        "bob's QUIC moved through local ports {ports:?} with no reconnect; 30 messages once each, in order"
    );
    alice.close().await;
    bob.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_udp_blocked_the_client_is_on_websocket_within_its_quic_timeout_and_loses_nothing()
-> anyhow::Result<()> {
    let topo = Topology::start(1).await?;
    // UDP blocked: QUIC packets go to a socket that never answers.
    let blackhole = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let mut quic = topo.endpoint(0, Quic);
    quic.address = blackhole.local_addr()?.to_string();
    let mut opts = ClientOptions::new(
        vec![quic, topo.endpoint(0, WebSocket)],
        topo.token("bob"),
        "phone",
    );
    opts.session.quic_timeout = Duration::from_secs(1);
    let started = Instant::now();
    let mut bob = Client::start(opts)?;
    let transport = loop {
        match tokio::time::timeout(Duration::from_secs(10), bob.next_event()).await {
            Ok(Some(Event::Connected { transport, .. })) => break transport,
            Ok(Some(_)) => {}
            other => bail!("not connected: {other:?}"),
        }
    };
    let took = started.elapsed();
    ensure!(transport == WebSocket, "connected over {transport}");
    let alice = topo.connect(0, Quic, "alice", "laptop").await?;
    for i in 0..50 {
        let id = format!("u{i}");
        ensure!(matches!(
            alice.send("bob", &id, "while UDP is blocked").await?,
            SendResult::Stored { .. }
        ));
        let m = next_message_no_reconnect(&mut bob).await?;
        ensure!(
            m.client_msg_id == id,
            "expected {id}, got {}",
            m.client_msg_id
        );
    }
    println!(
        "UDP blocked: on WebSocket {:.2} s after start (QUIC timeout 1 s); 50 messages once each, in order",
        took.as_secs_f64()
    );
    drop(blackhole);
    alice.close().await;
    bob.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_to_the_same_gateway_goes_out_in_0_rtt_and_the_session_is_whole()
-> anyhow::Result<()> {
    let topo = Topology::start(1).await?;
    let mut bob = Client::start(ClientOptions::new(
        vec![topo.endpoint(0, Quic)],
        topo.token("bob"),
        "phone",
    ))?;
    connected(&mut bob).await?;
    let early = |c: &Client| {
        c.stats()
            .zero_rtt_connects
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    ensure!(
        early(&bob) == 0,
        "a first connection has no ticket to resume"
    );
    let alice = topo.connect(0, Quic, "alice", "laptop").await?;
    for round in 0..2 {
        bob.reconnect().await?;
        connected(&mut bob).await?;
        ensure!(early(&bob) == round + 1, "reconnect {round} was not 0-RTT");
        let id = format!("z{round}");
        ensure!(matches!(
            alice.send("bob", &id, "after a 0-RTT reconnect").await?,
            SendResult::Stored { .. }
        ));
        let m = next_message_no_reconnect(&mut bob).await?;
        ensure!(
            m.client_msg_id == id,
            "expected {id}, got {}",
            m.client_msg_id
        );
    }
    alice.close().await;
    bob.close().await;
    Ok(())
}
