//! Resume and catch-up from the hub: a client that comes back with its cursor gets
//! exactly what it missed, in order, then live traffic; a reader too slow for its
//! live queue is caught up from the hub instead of being disconnected.

use petrel_client::{ConnectOptions, Connection, SendResult, TransportKind::*};
use petrel_tests::{TestTopology, Topology, next_message_on};

const INBOX: &str = "msg.private.bob";

/// Sends `n` messages alice → bob, pipelined; returns bob's-inbox sequences in order.
async fn send_many(
    alice: &Connection,
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

/// Stores `n` messages alice → bob straight on the hub, pipelined, so the hub
/// re-publishes them to the edge in one burst (a gateway stores one sender's messages
/// to one peer one at a time, to keep their order across hub failures, which is too
/// slow to overflow anything); returns their sequences in order.
async fn flood_on_the_hub(t: &Topology, n: usize, size: usize) -> anyhow::Result<Vec<u64>> {
    let js = async_nats::jetstream::with_domain(t.hub_client.clone(), "hub");
    let mut acks = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("flood-{i}");
        let mut content = format!("{id} ").into_bytes();
        content.resize(size.max(content.len()), b'.');
        let m = petrel_core::wire::StoredMessage {
            from: petrel_core::UserId::parse("alice")?,
            to: petrel_core::wire::Recipient::User(petrel_core::UserId::parse("bob")?),
            from_device: "phone".into(),
            client_msg_id: id,
            content: content.into(),
            content_type: "text/plain".into(),
            time_ms: 1,
            gateway_id: "edge0".into(),
            notification: None,
            receipt: None,
            meta: Default::default(),
        };
        acks.push(js.publish(INBOX, m.encode()).await?);
    }
    let mut seqs = Vec::with_capacity(n);
    for a in acks {
        seqs.push(a.await?.sequence);
    }
    Ok(seqs)
}

/// Reads `n` messages on bob's inbox and checks they are `prefix-0..n` in order with
/// strictly increasing sequences.
async fn expect_in_order(
    bob: &mut Connection,
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
    let mut bob = Connection::connect(opts).await?;
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
    let sent = flood_on_the_hub(&t, 600, 16 * 1024).await?;
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
    let overflows = t.counter(0, "live_overflows").await?;
    assert!(overflows > 0, "bob's queue should have overflowed");
    t.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_is_served_from_the_edge_cache_and_from_the_hub_without_it() -> anyhow::Result<()>
{
    let t = Topology::start(2).await?;
    let alice = t.connect(0, Quic, "alice", "phone").await?;
    // bob's laptop stays online on edge 0, so edge 0 receives (and caches) his inbox
    // while his phone is away.
    let mut laptop = t.connect(0, Quic, "bob", "laptop").await?;
    let mut phone = t.connect(0, WebSocket, "bob", "phone").await?;
    send_many(&alice, "before", 2, 10).await?;
    let cursor = *expect_in_order(&mut phone, "before", 2, 5)
        .await?
        .last()
        .unwrap_or(&0);
    phone.close().await;

    let sent = send_many(&alice, "away", 500, 200).await?;
    expect_in_order(&mut laptop, "before", 2, 5).await?;
    expect_in_order(&mut laptop, "away", 500, 10).await?;
    let (cache0, hub0) = (
        t.counter(0, "fetched_from_cache").await?,
        t.counter(0, "fetched_from_hub").await?,
    );

    let resume = |edge: usize, device: &str| {
        let mut opts = ConnectOptions::new(t.endpoint(edge, Quic), t.token("bob"), device);
        opts.cursors = vec![(INBOX.to_string(), cursor)];
        Connection::connect(opts)
    };
    let mut phone = resume(0, "phone").await?;
    assert_eq!(expect_in_order(&mut phone, "away", 500, 10).await?, sent);
    assert_eq!(
        t.counter(0, "fetched_from_cache").await? - cache0,
        500,
        "all from the edge"
    );
    assert_eq!(t.counter(0, "fetched_from_hub").await? - hub0, 0);

    // Edge 1 never saw bob's inbox: the same resume there comes from the hub.
    let mut tablet = resume(1, "tablet").await?;
    assert_eq!(expect_in_order(&mut tablet, "away", 500, 10).await?, sent);
    assert_eq!(t.counter(1, "fetched_from_hub").await?, 500);
    assert_eq!(t.counter(1, "fetched_from_cache").await?, 0);
    t.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_beyond_the_stream_is_moved_back_and_hides_nothing() -> anyhow::Result<()> {
    // A device remembers cursor 1,000,000 from a previous incarnation of the stream.
    let t = Topology::start(1).await?;
    let alice = t.connect(0, Quic, "alice", "phone").await?;
    let sent = send_many(&alice, "first", 2, 10).await?;
    let mut opts = ConnectOptions::new(t.endpoint(0, WebSocket), t.token("bob"), "old-phone");
    opts.cursors = vec![(INBOX.to_string(), 1_000_000)];
    let mut bob = Connection::connect(opts).await?;
    assert_eq!(
        bob.welcome().cursors,
        vec![(INBOX.to_string(), *sent.last().unwrap_or(&0))],
        "Welcome says where delivery resumes"
    );
    send_many(&alice, "new", 3, 10).await?;
    expect_in_order(&mut bob, "new", 3, 5).await?;
    t.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_altogether_is_closed_as_a_slow_consumer() -> anyhow::Result<()>
{
    use petrel_client::Read;
    use petrel_proto::pb;
    let t = Topology::start_with(1, |cfg, _| {
        cfg.limits.send_queue_frames = 4;
        cfg.limits.write_timeout_secs = 1;
        Ok(())
    })
    .await?;
    let alice = t.connect(0, Quic, "alice", "phone").await?;
    // bob says Hello, reads his Welcome, then never reads again.
    let (mut reader, _writer) = t.raw_welcomed(0, "bob", "stuck").await?;
    // About 6 MB for bob: more than QUIC's receive windows hold.
    send_many(&alice, "flood", 400, 16 * 1024).await?;
    let mut carol = t.connect(0, Quic, "carol", "phone").await?;
    // The gateway gives up on bob after the write timeout; carol is served meanwhile.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    while t.counter(0, "connections").await? > 2 {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the stuck reader was never closed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    alice.send("carol", "still", "hi carol").await?;
    assert_eq!(
        next_message_on(&mut carol, "msg.private.carol", 5)
            .await?
            .client_msg_id,
        "still"
    );
    // When bob finally reads, the close code says why.
    let code = loop {
        match reader.read().await {
            Ok(Read::Data(_)) => continue,
            Ok(Read::Closed(info)) => break info.map(|i| i.code),
            Err(e) => anyhow::bail!("{e}"),
        }
    };
    assert_eq!(code, Some(pb::ErrorCode::SlowConsumer as u32));
    t.stop().await;
    Ok(())
}
