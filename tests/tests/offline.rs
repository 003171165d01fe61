//! Store-and-forward: sends accepted while the hub or the leaf link is away come back
//! QUEUED and are stored once, in order, when it returns; a gateway killed with
//! SIGKILL mid-stream loses nothing it answered for; a retry so late that the hub's
//! duplicate window has forgotten the first try is checked against the stream.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use petrel_client::{ConnectOptions, Connection, Event, SendResult, TransportKind::*};
use petrel_tests::{GatewayProcess, TestTopology, Topology, next_message_on};

const INBOX: &str = "msg.private.bob";

enum Outage {
    Hub,
    Leaf,
}

/// bob (QUIC) and alice (WebSocket) on one edge; the hub or the leaf goes away for
/// 30 s while alice keeps sending (two messages a second).
async fn sends_during_an_outage(outage: Outage) -> anyhow::Result<()> {
    let mut topo = Topology::start(1).await?;
    let mut bob = topo.connect(0, Quic, "bob", "phone").await?;
    let mut alice = topo.connect(0, WebSocket, "alice", "laptop").await?;
    // bob has a position on his inbox before the outage.
    ensure!(matches!(
        alice.send("bob", "warm", "hello").await?,
        SendResult::Stored { .. }
    ));
    next_message_on(&mut bob, INBOX, 10).await?;
    let stored_before = topo.stored_messages().await?;

    match outage {
        Outage::Hub => topo.stop_hub().await,
        Outage::Leaf => topo.stop_leaf(0).await,
    }
    let started = Instant::now();
    let mut ids = Vec::new();
    while started.elapsed() < Duration::from_secs(30) {
        let id = format!("q-{}", ids.len());
        match alice.send("bob", &id, format!("{id} while away")).await? {
            SendResult::Queued { msg_id } => ensure!(msg_id == format!("dm:alice:{id}")),
            other => bail!("{id}: expected QUEUED while the hub is away, got {other:?}"),
        }
        ids.push(id);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let depth = topo.counter(0, "outbox_depth").await?;
    ensure!(
        depth == ids.len() as u64,
        "outbox holds {depth}, expected {}",
        ids.len()
    );
    ensure!(topo.counter(0, "sends_queued").await? >= ids.len() as u64);

    match outage {
        Outage::Hub => topo.restart_hub().await?,
        Outage::Leaf => topo.restart_leaf(0).await?,
    }
    // alice hears STORED for each, as the hub stores them (in order).
    let mut stored: HashMap<String, u64> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while stored.len() < ids.len() {
        match tokio::time::timeout_at(deadline, alice.next_event()).await {
            Ok(Some(Event::SendResult {
                id,
                result: SendResult::Stored { seq, .. },
            })) => {
                stored.insert(id, seq);
            }
            Ok(Some(Event::Message(_))) => {} // alice's own copies
            Ok(other) => bail!("alice: unexpected {other:?}"),
            Err(_) => bail!("only {} of {} sends were stored", stored.len(), ids.len()),
        }
    }
    let seqs: Vec<u64> = ids.iter().map(|id| stored[id]).collect();
    ensure!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "stored out of order: {seqs:?}"
    );
    // bob gets every one once, in order.
    for (i, id) in ids.iter().enumerate() {
        let m = next_message_on(&mut bob, INBOX, 30).await?;
        ensure!(
            &m.client_msg_id == id,
            "message {i}: got {} (seq {})",
            m.client_msg_id,
            m.seq
        );
        ensure!(m.seq == seqs[i]);
    }
    // Each send stored once: its two copies, nothing more.
    ensure!(topo.stored_messages().await? == stored_before + 2 * ids.len() as u64);
    ensure!(
        topo.wait_counter(0, "outbox_depth", 10, |v| v == 0).await? == 0,
        "outbox not emptied"
    );
    println!(
        "{} sends queued during the outage, all stored once and delivered in order",
        ids.len()
    );
    topo.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_stopped_for_30_s_sends_are_queued_then_stored_once_in_order() -> anyhow::Result<()> {
    sends_during_an_outage(Outage::Hub).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaf_stopped_for_30_s_sends_are_queued_then_stored_once_in_order() -> anyhow::Result<()> {
    sends_during_an_outage(Outage::Leaf).await
}

/// What alice heard about each send.
#[derive(Debug, Clone)]
enum Heard {
    Stored,
    Queued,
    Nothing,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_killed_with_5000_in_flight_loses_nothing_it_answered_for() -> anyhow::Result<()> {
    const N: usize = 5_000;
    let topo = Topology::start(0).await?;
    let dir = topo.dir().join("edgep");
    let leaf = topo.start_extra_leaf(&dir.join("leaf"), "leafp").await?;
    let mut gw = GatewayProcess::start(
        &dir,
        &leaf.client_url,
        topo.leaf_auth(),
        &[
            ("PETREL_LIMITS_SEND_RATE_PER_SEC", "0"),
            ("PETREL_LIMITS_USER_SEND_RATE_PER_SEC", "0"),
            ("PETREL_LIMITS_MAX_INFLIGHT_SENDS", "256"),
        ],
    )
    .await?;
    let endpoint = gw.endpoint(Quic); // the same after a restart (ports, certificate)
    let connect = |user: &str, device: &str, cursors: Vec<(String, u64)>| {
        let opts = ConnectOptions {
            cursors,
            ..ConnectOptions::new(endpoint.clone(), topo.token(user), device)
        };
        Connection::connect(opts)
    };
    let mut bob = connect("bob", "phone", vec![]).await?;
    let alice = connect("alice", "laptop", vec![]).await?;
    ensure!(matches!(
        alice.send("bob", "warm", "hello").await?,
        SendResult::Stored { .. }
    ));
    let warm = next_message_on(&mut bob, INBOX, 10).await?;
    let stored_before = topo.stored_messages().await?;

    // bob reads until his connection dies.
    let bob_reader = tokio::spawn(async move {
        let mut got: Vec<(String, u64)> = Vec::new();
        while let Some(Event::Message(m)) = bob.next_event().await {
            if m.subject == INBOX {
                got.push((m.client_msg_id, m.seq));
            }
        }
        let wire = bob
            .stats()
            .wire_messages
            .load(std::sync::atomic::Ordering::Relaxed);
        let dropped = bob
            .stats()
            .duplicates_dropped
            .load(std::sync::atomic::Ordering::Relaxed);
        (got, wire, dropped)
    });
    // alice pipelines N sends; a collector reads the results in order and asks for
    // the kill once 2,000 are in.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let alice_sender = alice.sender();
    // alice's own copies come back to her: read them so her client keeps reading.
    let alice_events = tokio::spawn(async move {
        let mut alice = alice;
        while alice.next_event().await.is_some() {}
    });
    let sender = tokio::spawn(async move {
        let alice = alice_sender;
        for i in 0..N {
            let id = format!("k-{i:04}");
            let r = alice
                .start_send("bob", &id, format!("{id} ").repeat(8), "text/plain")
                .await
                .ok();
            if tx.send(r).is_err() {
                break;
            }
        }
        alice
    });
    let (kill_tx, kill_rx) = tokio::sync::oneshot::channel();
    let collector = tokio::spawn(async move {
        let mut heard = Vec::with_capacity(N);
        let mut kill_tx = Some(kill_tx);
        while let Some(r) = rx.recv().await {
            heard.push(match r {
                Some(rx) => match rx.await {
                    Ok(SendResult::Stored { .. }) => Heard::Stored,
                    Ok(SendResult::Queued { .. }) => Heard::Queued,
                    Ok(SendResult::Rejected { code, detail }) => {
                        panic!("rejected: {code}: {detail}")
                    }
                    Err(_) => Heard::Nothing,
                },
                None => Heard::Nothing,
            });
            if heard.len() == 2_000
                && let Some(k) = kill_tx.take()
            {
                let _ = k.send(());
            }
        }
        heard
    });
    kill_rx.await.context("the sends never got going")?;
    gw.kill().await;
    drop(sender.await?);
    alice_events.await?;
    let heard = collector.await?;
    let (mut got, wire1, dropped1) = bob_reader.await?;
    let answered = heard
        .iter()
        .filter(|h| !matches!(h, Heard::Nothing))
        .count();
    let queued = heard.iter().filter(|h| matches!(h, Heard::Queued)).count();
    println!(
        "at the kill: {answered} of {N} sends answered ({queued} QUEUED), bob had {} messages",
        got.len()
    );
    ensure!((2_000..N).contains(&answered), "the kill came mid-stream");

    gw.restart().await?;
    // alice's SDK would re-send what it never heard about, with the same ids.
    let alice = connect("alice", "laptop", vec![]).await?;
    let alice_sender = alice.sender();
    let alice_events = tokio::spawn(async move {
        let mut alice = alice;
        while alice.next_event().await.is_some() {}
    });
    let alice = alice_sender;
    let mut resent = Vec::new();
    for (i, h) in heard.iter().enumerate() {
        if matches!(h, Heard::Nothing) {
            let id = format!("k-{i:04}");
            resent.push(
                alice
                    .start_send("bob", &id, format!("{id} ").repeat(8), "text/plain")
                    .await?,
            );
        }
    }
    let mut duplicates = 0;
    for r in resent {
        match r.await? {
            SendResult::Stored { duplicate, .. } => duplicates += usize::from(duplicate),
            SendResult::Queued { .. } => {}
            other => bail!("resend: {other:?}"),
        }
    }
    // bob comes back with his cursor and gets the rest.
    let cursor = got.last().map_or(warm.seq, |(_, s)| *s);
    let mut bob = connect("bob", "phone", vec![(INBOX.to_string(), cursor)]).await?;
    while got.len() < N {
        let m = next_message_on(&mut bob, INBOX, 30)
            .await
            .with_context(|| format!("bob has {} of {N}", got.len()))?;
        got.push((m.client_msg_id, m.seq));
    }
    let wire = wire1
        + bob
            .stats()
            .wire_messages
            .load(std::sync::atomic::Ordering::Relaxed);
    let dropped = dropped1
        + bob
            .stats()
            .duplicates_dropped
            .load(std::sync::atomic::Ordering::Relaxed);
    for (i, (id, _)) in got.iter().enumerate() {
        ensure!(id == &format!("k-{i:04}"), "app message {i} is {id}");
    }
    ensure!(
        got.windows(2).all(|w| w[0].1 < w[1].1),
        "sequences increase"
    );
    println!(
        "bob: {N} messages to the app, each once and in order; {wire} on the wire, {dropped} wire duplicates dropped by the SDK; alice re-sent {} unanswered ids, {duplicates} of them already stored",
        heard.len() - answered
    );
    // No send stored twice: two copies each.
    ensure!(topo.stored_messages().await? == stored_before + 2 * N as u64);
    gw.kill().await;
    alice_events.abort();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_past_the_duplicate_window_checks_the_stream_first() -> anyhow::Result<()> {
    use async_nats::jetstream;
    use petrel_storage::{CF_OUTBOX, EdgeStore, OutboxEntry};
    let mut topo = Topology::start(0).await?;
    // A short duplicate window, so that it can pass within the test.
    topo.set_duplicate_window(Duration::from_secs(1)).await?;
    let js = jetstream::with_domain(topo.hub_client.clone(), "hub");

    // "x" was stored on the hub but the edge never heard (ack lost), and "y" never
    // reached it; both are still in the edge's outbox.
    let payload = bytes::Bytes::from_static(b"not decoded in this test");
    let copies = |id: &str| {
        vec![
            ("msg.private.bob".to_string(), format!("dm:alice:{id}")),
            (
                "msg.private.alice".to_string(),
                format!("dm:alice:{id}:self"),
            ),
        ]
    };
    let created_ms = petrel_core::time::unix_ms();
    for (subject, msg_id) in copies("x") {
        let mut h = async_nats::HeaderMap::new();
        h.insert(async_nats::header::NATS_MESSAGE_ID, msg_id.as_str());
        js.publish_with_headers(subject, h, payload.clone())
            .await?
            .await?;
    }
    // Wait until the hub has forgotten those ids: a probe id published after them is
    // accepted as new again.
    let probe = || async {
        let mut h = async_nats::HeaderMap::new();
        h.insert(async_nats::header::NATS_MESSAGE_ID, "probe");
        anyhow::Ok(
            js.publish_with_headers("msg.private.probe", h, payload.clone())
                .await?
                .await?
                .duplicate,
        )
    };
    probe().await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while probe().await? {
        ensure!(Instant::now() < deadline, "duplicate window never passed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    {
        let edir = topo.edge_dir(0);
        std::fs::create_dir_all(&edir)?;
        let store = EdgeStore::open(edir.join("edge-cache"))?;
        store.outbox_append(
            ["x", "y"]
                .iter()
                .map(|id| OutboxEntry {
                    key: 0,
                    created_ms,
                    copies: copies(id),
                    payload: payload.clone(),
                })
                .collect(),
        )?;
        // And one entry nobody can read.
        store.put_raw(CF_OUTBOX, &0u64.to_be_bytes(), b"\x01")?;
    }
    // The edge starts and forwards its outbox.
    topo.add_edge().await?;
    ensure!(topo.wait_counter(0, "outbox_depth", 20, |v| v == 0).await? == 0);
    ensure!(
        topo.counter(0, "outbox_found_stored").await? == 2,
        "x's two copies found"
    );
    ensure!(topo.counter(0, "outbox_corrupt").await? == 1);
    let counts = topo.subject_counts("msg.private.>").await?;
    ensure!(
        counts.get("msg.private.bob") == Some(&2) && counts.get("msg.private.alice") == Some(&2),
        "x once and y once in each inbox: {counts:?}"
    );
    topo.stop().await;
    Ok(())
}
