//! Resume and catch-up from the hub: a client that comes back with its cursor gets
//! exactly what it missed, in order, then live traffic; a reader too slow for its
//! live queue is caught up from the hub instead of being disconnected.

use petrel_client::{Client, ConnectOptions, SendResult, TransportKind::*};
use petrel_tests::{Topology, next_message_on};

const INBOX: &str = "msg.private.bob";

/// Sends `n` messages alice → bob, pipelined; returns bob's-inbox sequences in order.
async fn send_many(
    alice: &Client,
    prefix: &str,
    n: usize,
    size: usize,
) -> anyhow::Result<Vec<u64>> {
    let mut pending = Vec::with_capacity(n);
    for i in 0..n {
        let mut body = format!("{prefix}-{i} ").into_bytes();
        body.resize(size.max(body.len()), b'.');
        pending.push(
            alice
                .start_send("bob", &format!("{prefix}-{i}"), body, "text/plain")
                .await?,
        );
    }
    let mut seqs = Vec::with_capacity(n);
    for p in pending {
        match p.await? {
            SendResult::Stored { seq, .. } => seqs.push(seq),
            other => anyhow::bail!("not stored: {other:?}"),
        }
    }
    Ok(seqs)
}

/// Reads `n` messages on bob's inbox and checks they are `prefix-0..n` in order with
/// strictly increasing sequences.
async fn expect_in_order(
    bob: &mut Client,
    prefix: &str,
    n: usize,
    secs: u64,
) -> anyhow::Result<Vec<u64>> {
    let mut seqs = Vec::with_capacity(n);
    for i in 0..n {
        let m = next_message_on(bob, INBOX, secs).await?;
        anyhow::ensure!(
            m.client_msg_id == format!("{prefix}-{i}"),
            "message {i}: got {} (seq {})",
            m.client_msg_id,
            m.seq
        );
        if let Some(last) = seqs.last() {
            anyhow::ensure!(m.seq > *last, "sequence went back: {} after {last}", m.seq);
        }
        seqs.push(m.seq);
    }
    Ok(seqs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_device_gets_exactly_what_it_missed_then_live() -> anyhow::Result<()> {
    // alice on edge 0, bob on edge 1: the missed messages come from the hub through
    // bob's leaf.
    let t = Topology::start(2).await?;
    let alice = t.connect(0, Quic, "alice", "phone").await?;
    let mut bob = t.connect(1, WebSocket, "bob", "laptop").await?;
    send_many(&alice, "before", 3, 10).await?;
    let seen = expect_in_order(&mut bob, "before", 3, 5).await?;
    let cursor = *seen.last().unwrap_or(&0);
    bob.close().await;

    let sent = send_many(&alice, "missed", 500, 100).await?;

    let mut opts = ConnectOptions::new(t.endpoint(1, Quic), t.token("bob"), "laptop");
    opts.cursors = vec![(INBOX.to_string(), cursor)];
    let mut bob = Client::connect(opts).await?;
    let got = expect_in_order(&mut bob, "missed", 500, 10).await?;
    assert_eq!(
        got, sent,
        "exactly the missed messages, with their sequences"
    );

    // Then live, with no gap and no repeat.
    send_many(&alice, "live", 5, 10).await?;
    expect_in_order(&mut bob, "live", 5, 5).await?;
    let stats = bob.stats();
    assert_eq!(
        stats
            .duplicates_dropped
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "the gateway sent nothing twice"
    );
    assert_eq!(
        stats
            .wire_messages
            .load(std::sync::atomic::Ordering::Relaxed),
        505
    );
    t.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_without_a_cursor_starts_from_now() -> anyhow::Result<()> {
    let t = Topology::start(1).await?;
    let alice = t.connect(0, Quic, "alice", "phone").await?;
    send_many(&alice, "old", 3, 10).await?;
    let mut bob = t.connect(0, Quic, "bob", "new-phone").await?;
    send_many(&alice, "new", 2, 10).await?;
    expect_in_order(&mut bob, "new", 2, 5).await?;
    t.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_too_slow_for_its_queue_is_caught_up_not_dropped() -> anyhow::Result<()> {
    // A live queue of 4 frames per connection; bob does not read while alice sends
    // 600 messages of 16 KB (about 10 MB): transport buffers fill, the gateway's writes
    // to bob block, his queue overflows and live messages are dropped for him.
    let t = Topology::start_with(1, |cfg, _| {
        cfg.limits.send_queue_frames = 4;
        Ok(())
    })
    .await?;
    let alice = t.connect(0, Quic, "alice", "phone").await?;
    let mut bob = t.connect(0, WebSocket, "bob", "slow").await?;
    let mut carol = t.connect(0, Quic, "carol", "phone").await?;
    let sent = send_many(&alice, "flood", 600, 16 * 1024).await?;
    // Others keep receiving while bob lags.
    alice.send("carol", "meanwhile", "hello carol").await?;
    let m = next_message_on(&mut carol, "msg.private.carol", 5).await?;
    assert_eq!(m.client_msg_id, "meanwhile");
    // Now bob reads: everything arrives, in order, once.
    let got = expect_in_order(&mut bob, "flood", 600, 20).await?;
    assert_eq!(got, sent);
    send_many(&alice, "after", 3, 10).await?;
    expect_in_order(&mut bob, "after", 3, 5).await?;
    assert_eq!(
        bob.stats()
            .duplicates_dropped
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    let ready = t.http_get(0, "/readyz").await?;
    let overflows: u64 = ready
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("live_overflows="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(overflows > 0, "bob's queue should have overflowed: {ready}");
    t.stop().await;
    Ok(())
}
