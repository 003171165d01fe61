//! Chaos on the production shape: two edges on a 3-node hub (R3 streams, fsync before
//! every acknowledgement, TLS leaf links), a steady two-way load, and the hub's nodes,
//! an edge's leaf or a gateway taken away under it. Each scenario prints its verdict
//! (sent / acknowledged / delivered / wire and app duplicates / reordered / the longest
//! pause) and fails unless every acknowledged send reached every device of its
//! recipient once, in order, and the stream holds it once.

use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use futures::StreamExt;
use petrel_client::{ConnectOptions, Connection, Event, SendResult, TransportKind::*};
use petrel_core::subject::MESSAGE_STREAM;
use petrel_tests::chaos::{self, Load, Verdict};
use petrel_tests::{GatewayProcess, next_message_on};

/// Pairs of users (one on each edge) and how often each sends.
const PAIRS: usize = 3;
const EVERY: Duration = Duration::from_millis(100);
/// How long deliveries may take to catch up after the load stops.
const SETTLE: Duration = Duration::from_secs(60);

/// Sends `{prefix}-0`, `{prefix}-1`, … to bob, 48 in flight (the gateway allows 64
/// per connection), until `max` are sent or `stop`; returns how many were sent and how
/// many acknowledged (STORED or QUEUED).
async fn pipeline(
    sender: petrel_client::Sender,
    prefix: &str,
    max: usize,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<(usize, usize)> {
    pipeline_bounded(sender, prefix, max, usize::MAX, stop).await
}

/// [`pipeline`], stopping once `max_queued` sends were answered QUEUED: while the hub
/// is slow the outbox answers at once, and what it queued drains one publish per lane
/// at a time afterwards (a flood of 20,000 takes minutes to deliver).
async fn pipeline_bounded(
    sender: petrel_client::Sender,
    prefix: &str,
    max: usize,
    max_queued: usize,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<(usize, usize)> {
    // (acknowledged, queued) for one answer.
    let answer = |r: Result<SendResult, _>| match r {
        Ok(SendResult::Stored { .. }) => (1, 0),
        Ok(SendResult::Queued { .. }) => (1, 1),
        _ => (0, 0),
    };
    let mut queued = 0usize;
    let mut window = futures::stream::FuturesUnordered::new();
    let (mut sent, mut acked) = (0usize, 0usize);
    while sent < max && !stop.is_cancelled() {
        if queued >= max_queued {
            break;
        }
        while window.len() < 48 && sent < max {
            let id = format!("{prefix}-{sent}");
            window.push(
                sender
                    .start_send("bob", &id, id.clone(), "text/plain")
                    .await?,
            );
            sent += 1;
        }
        if let Some(r) = window.next().await {
            let (a, q) = answer(r);
            acked += a;
            queued += q;
        }
    }
    while let Some(r) = window.next().await {
        acked += answer(r).0;
    }
    Ok((sent, acked))
}

/// Makes USER_MESSAGES' leader step down every 400 ms until `done()` or `max` changes
/// have happened; returns how many did.
async fn step_downs(topo: &petrel_tests::Topology, max: usize, done: impl Fn() -> bool) -> usize {
    let stepdown = format!("$JS.hub.API.STREAM.LEADER.STEPDOWN.{MESSAGE_STREAM}");
    let mut changes = 0;
    while !done() && changes < max {
        tokio::time::sleep(Duration::from_millis(400)).await;
        if let Ok(Ok(_)) = tokio::time::timeout(
            Duration::from_secs(3),
            topo.hub_client.request(stepdown.clone(), "".into()),
        )
        .await
        {
            changes += 1;
        }
    }
    changes
}

fn report(name: &str, v: &Verdict) {
    println!("chaos {name}: {v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_the_stream_leader_under_load_then_restart_it() -> anyhow::Result<()> {
    let mut topo = chaos::topology(3, 2).await?;
    let load = Load::start(&topo, PAIRS, EVERY).await?;
    load.run_for(Duration::from_secs(3)).await;
    let leader = topo
        .hub
        .stream_leader(&topo.hub_client, MESSAGE_STREAM)
        .await?
        .context("USER_MESSAGES has no leader")?;
    let before = load.acknowledged();
    topo.hub.kill_node(leader).await;
    println!("killed {} (the leader) with SIGKILL", topo.hub.name(leader));
    load.run_for(Duration::from_secs(5)).await;
    ensure!(
        load.acknowledged() > before,
        "sends stopped being acknowledged"
    );
    topo.hub.restart_node(leader).await?;
    topo.hub
        .wait_healthy(leader, Duration::from_secs(30))
        .await?;
    load.run_for(Duration::from_secs(3)).await;
    let v = load.finish(&topo, SETTLE).await?;
    report("leader kill -9", &v);
    v.ensure_kept()?;
    topo.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_of_every_hub_node_under_load() -> anyhow::Result<()> {
    let mut topo = chaos::topology(3, 2).await?;
    let load = Load::start(&topo, PAIRS, EVERY).await?;
    load.run_for(Duration::from_secs(2)).await;
    for i in 0..topo.hub.len() {
        topo.hub.stop_node(i).await;
        load.run_for(Duration::from_secs(1)).await;
        topo.hub.restart_node(i).await?;
        // As an operator does: the next node only once this one has caught up.
        topo.hub.wait_healthy(i, Duration::from_secs(30)).await?;
        println!("restarted {}", topo.hub.name(i));
    }
    load.run_for(Duration::from_secs(2)).await;
    let v = load.finish(&topo, SETTLE).await?;
    report("rolling restart", &v);
    v.ensure_kept()?;
    topo.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edges_leaf_then_the_hubs_majority_away_for_30_s_each() -> anyhow::Result<()> {
    let mut topo = chaos::topology(3, 2).await?;
    let load = Load::start(&topo, PAIRS, EVERY).await?;
    load.run_for(Duration::from_secs(2)).await;

    topo.stop_leaf(0).await;
    load.run_for(Duration::from_secs(30)).await;
    ensure!(
        load.queued() > 0,
        "edge 0 answered nothing QUEUED without its leaf"
    );
    topo.restart_leaf(0).await?;
    load.run_for(Duration::from_secs(3)).await;

    let queued_before = load.queued();
    // Two of three nodes: no stream has a quorum.
    topo.hub.stop_node(1).await;
    topo.hub.stop_node(2).await;
    load.run_for(Duration::from_secs(30)).await;
    ensure!(
        load.queued() > queued_before,
        "nothing was QUEUED without the hub's majority"
    );
    topo.hub.restart_node(1).await?;
    topo.hub.restart_node(2).await?;
    for i in [1, 2] {
        topo.hub.wait_healthy(i, Duration::from_secs(60)).await?;
    }
    load.run_for(Duration::from_secs(3)).await;
    let v = load.finish(&topo, SETTLE).await?;
    report("leaf away 30 s, then hub majority away 30 s", &v);
    v.ensure_kept()?;
    topo.stop().await;
    Ok(())
}

/// The edge's own durability: the hub is away, so every send is only QUEUED in the
/// edge's outbox; the gateway is killed with SIGKILL and started again, and nobody
/// re-sends anything. Every QUEUED message must still be stored once and delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_killed_while_the_hub_is_away_forwards_its_queued_sends() -> anyhow::Result<()> {
    const N: usize = 200;
    let mut topo = chaos::topology(3, 1).await?;
    let dir = topo.dir().join("edgep");
    let _leaf = topo.start_extra_leaf(&dir.join("leaf"), "leafp").await?;
    let leaf_url = _leaf.client_url.clone();
    let mut gw = GatewayProcess::start(&dir, &leaf_url, topo.leaf_auth(), &[]).await?;
    let endpoint = gw.endpoint(Quic);
    let alice =
        Connection::connect(ConnectOptions::new(endpoint, topo.token("alice"), "laptop")).await?;
    let mut phone = topo.connect(0, Quic, "bob", "phone").await?;
    let mut laptop = topo.connect(0, WebSocket, "bob", "laptop").await?;
    ensure!(matches!(
        alice.send("bob", "warm", "hello").await?,
        SendResult::Stored { .. }
    ));
    for d in [&mut phone, &mut laptop] {
        next_message_on(d, "msg.private.bob", 10).await?;
    }
    let counts_before = topo.subject_counts("msg.private.*").await?;

    topo.stop_hub().await;
    let started = Instant::now();
    let sender = alice.sender();
    let mut answers = Vec::with_capacity(N);
    for i in 0..N {
        let id = format!("alice-{i}");
        answers.push(
            sender
                .start_send(
                    "bob",
                    &id,
                    format!("{id} while the hub is away"),
                    "text/plain",
                )
                .await?,
        );
    }
    for (i, rx) in answers.into_iter().enumerate() {
        match tokio::time::timeout(Duration::from_secs(10), rx).await {
            Ok(Ok(SendResult::Queued { .. })) => {}
            other => bail!("send {i}: expected QUEUED with the hub away, got {other:?}"),
        }
    }
    gw.kill().await;
    drop(alice);
    println!("{N} sends QUEUED, then the gateway was killed with SIGKILL");
    gw.restart_unready().await?;
    ensure!(
        gw.counter("outbox_depth").await? == N as u64,
        "the restarted gateway does not hold the {N} queued sends"
    );
    topo.restart_hub().await?;
    let hub_back = Instant::now();
    println!("hub back after {:?}", started.elapsed());

    let mut v = Verdict {
        sent: N,
        queued: N,
        ..Default::default()
    };
    for (name, d) in [("phone", &mut phone), ("laptop", &mut laptop)] {
        // Pauses count from the hub's return (deliveries may already be waiting).
        let mut last_at = hub_back;
        for i in 0..N {
            let m = next_message_on(d, "msg.private.bob", 60)
                .await
                .with_context(|| format!("bob's {name} got {i} of {N}"))?;
            let now = Instant::now();
            v.longest_pause = v.longest_pause.max(now.saturating_duration_since(last_at));
            last_at = now;
            v.delivered += 1;
            if m.client_msg_id != format!("alice-{i}") {
                v.reordered += 1;
                println!("bob's {name}: message {i} is {}", m.client_msg_id);
            }
        }
        v.longest_wait = v.longest_wait.max(started.elapsed());
        v.wire_duplicates += d
            .stats()
            .duplicates_dropped
            .load(std::sync::atomic::Ordering::Relaxed);
        // Nothing more: no duplicate reaches the app.
        if let Ok(Some(Event::Message(m))) =
            tokio::time::timeout(Duration::from_millis(500), d.next_event()).await
            && m.subject == "msg.private.bob"
        {
            v.app_duplicates += 1;
        }
    }
    let counts = topo.subject_counts("msg.private.*").await?;
    for user in ["bob", "alice"] {
        let subject = format!("msg.private.{user}");
        let count = |c: &std::collections::HashMap<String, usize>| {
            c.get(&subject).copied().unwrap_or(0) as i64
        };
        v.stream_extra += count(&counts) - count(&counts_before) - N as i64;
    }
    report("gateway SIGKILL while the hub is away", &v);
    v.ensure_kept()?;
    ensure!(
        gw.counter("outbox_depth").await? == 0,
        "the outbox was not emptied"
    );
    gw.kill().await;
    topo.stop().await;
    Ok(())
}

/// The ordering hazard of a cluster: a publish lost in a leader change while the one
/// pipelined behind it is stored would swap two messages of one conversation. alice
/// pipelines sends to bob as fast as the gateway takes them while the stream's leader
/// is made to step down again and again; bob must get them in the order sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_holds_across_leader_changes_under_pipelined_load() -> anyhow::Result<()> {
    const MAX: usize = 20_000;
    let topo = chaos::topology(3, 2).await?;
    let alice = topo.connect(0, Quic, "alice", "laptop").await?;
    let mut bob = topo.connect(1, WebSocket, "bob", "phone").await?;
    let sender = alice.sender();
    let alice_events = tokio::spawn(async move {
        let mut alice = alice;
        while alice.next_event().await.is_some() {}
    });
    let stop = tokio_util::sync::CancellationToken::new();
    let sending = tokio::spawn(pipeline_bounded(sender, "alice", MAX, 2_000, stop.clone()));
    let changes = step_downs(&topo, 8, || false).await;
    stop.cancel();
    let (sent, acked) = sending.await??;
    println!("{changes} leader changes while {sent} sends were pipelined; {acked} acknowledged");
    ensure!(
        changes >= 3,
        "only {changes} leader changes happened during the load"
    );
    let mut v = Verdict {
        sent,
        stored: acked,
        ..Default::default()
    };
    let mut last: Option<usize> = None;
    let mut seen = std::collections::HashSet::new();
    while v.delivered < acked {
        let m = next_message_on(&mut bob, "msg.private.bob", 60)
            .await
            .with_context(|| format!("bob got {} of {acked}", v.delivered))?;
        let n: usize = m
            .client_msg_id
            .strip_prefix("alice-")
            .and_then(|n| n.parse().ok())
            .context("not one of alice's")?;
        if !seen.insert(n) {
            v.app_duplicates += 1;
        }
        if last.is_some_and(|l| n < l) {
            v.reordered += 1;
            println!("swapped: alice-{n} after alice-{}", last.unwrap_or(0));
        }
        last = Some(n);
        v.delivered += 1;
    }
    report("pipelined sends across leader changes", &v);
    v.ensure_kept()?;
    alice_events.abort();
    topo.stop().await;
    Ok(())
}

/// Many senders (many lanes, so pipelining across them) flood bob while the stream's
/// leader steps down again and again: bob gets every acknowledged message once, each
/// sender's in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_senders_flood_across_leader_changes() -> anyhow::Result<()> {
    const SENDERS: usize = 16;
    const EACH: usize = 400;
    let topo = chaos::topology(3, 2).await?;
    let mut bob = topo.connect(1, WebSocket, "bob", "phone").await?;
    let mut tasks = Vec::new();
    for s in 0..SENDERS {
        let c = topo.connect(0, Quic, &format!("s{s}"), "phone").await?;
        tasks.push(tokio::spawn(async move {
            let sender = c.sender();
            let _keep = tokio::spawn(async move {
                let mut c = c;
                while c.next_event().await.is_some() {}
            });
            let (_, acked) = pipeline(sender, &format!("s{s}"), EACH, Default::default()).await?;
            anyhow::Ok(acked)
        }));
    }
    let changes = step_downs(&topo, 10, || tasks.iter().all(|t| t.is_finished())).await;
    let mut acked = 0;
    for t in tasks {
        acked += t.await??;
    }
    println!(
        "{changes} leader changes; {acked} of {} acknowledged",
        SENDERS * EACH
    );
    let mut v = Verdict {
        sent: SENDERS * EACH,
        stored: acked,
        ..Default::default()
    };
    let mut last: std::collections::HashMap<String, usize> = Default::default();
    let mut seen = std::collections::HashSet::new();
    while v.delivered < acked {
        let m = next_message_on(&mut bob, "msg.private.bob", 60)
            .await
            .with_context(|| format!("bob got {} of {acked}", v.delivered))?;
        let (from, n) = m.client_msg_id.split_once('-').context("id")?;
        let n: usize = n.parse()?;
        if !seen.insert(m.client_msg_id.clone()) {
            v.app_duplicates += 1;
        }
        if last.get(from).is_some_and(|l| n < *l) {
            v.reordered += 1;
        }
        last.insert(from.to_string(), n);
        v.delivered += 1;
    }
    report("16 senders flooding across leader changes", &v);
    v.ensure_kept()?;
    topo.stop().await;
    Ok(())
}
