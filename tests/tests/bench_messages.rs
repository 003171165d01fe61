//! Benchmark (ignored in the test run): the message service against the gateway it
//! follows. (1) Archive write rate against stored sends per second in the same run:
//! 4 senders pipeline direct messages through one gateway, first with the worker
//! archiving as they go (how far behind it is when the sends end), then with the
//! worker stopped and started on the backlog (its write rate, unthrottled by the
//! senders). (2) The conversation-list query for a user with 1,000 conversations:
//! p50 and p99 of a 50-conversation page through the gateway. See BENCHMARKS.md for
//! the command.

use std::time::{Duration, Instant};

use petrel_client::{SendOptions, SendResult, To, TransportKind::*};
use petrel_core::wire::{Meta, Recipient, StoredMessage};
use petrel_core::{UserId, subject};
use petrel_tests::{TestTopology, Topology};

const SENDERS: usize = 4;
const PER_SENDER: usize = 2500;
const CONVERSATIONS: usize = 1000;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or(0.0)
}

async fn archived(url: &str) -> anyhow::Result<i64> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    let driving = tokio::spawn(conn);
    let n: i64 = client
        .query_one("SELECT count(*) FROM archive", &[])
        .await?
        .get(0);
    drop(client);
    let _ = driving.await;
    Ok(n)
}

/// Messages in the hub's message stream.
async fn in_stream(js: &async_nats::jetstream::Context) -> anyhow::Result<u64> {
    let mut stream = js.get_stream("USER_MESSAGES").await?;
    Ok(stream.info().await?.state.messages)
}

/// Pipelines `PER_SENDER` direct messages from each sender (`round` keeps the ids
/// apart); returns how long until the hub held every copy. (A burst's later sends
/// wait in the edge's outbox longer than its QUEUED threshold: they are answered
/// QUEUED first, so the hub's count says when they are all stored.)
async fn send_all(
    senders: &[petrel_client::Sender],
    js: &async_nats::jetstream::Context,
    round: &str,
) -> anyhow::Result<f64> {
    let want = in_stream(js).await? + 2 * (senders.len() * PER_SENDER) as u64;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, sender) in senders.iter().enumerate() {
        let sender = sender.clone();
        let round = round.to_string();
        tasks.push(tokio::spawn(async move {
            let mut answers = Vec::with_capacity(PER_SENDER);
            for n in 0..PER_SENDER {
                let rx = sender
                    .start_send_with(
                        To::User(&format!("r{i}")),
                        &format!("{round}-{n}"),
                        b"benchmark message".to_vec(),
                        "text/plain",
                        SendOptions::default(),
                    )
                    .await?;
                answers.push(rx);
            }
            for a in answers {
                let r = a.await?;
                anyhow::ensure!(
                    matches!(r, SendResult::Stored { .. } | SendResult::Queued { .. }),
                    "{r:?}"
                );
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    eprintln!(
        "bench: every send answered after {:.2} s",
        started.elapsed().as_secs_f64()
    );
    loop {
        let n = in_stream(js).await?;
        if n >= want {
            return Ok(started.elapsed().as_secs_f64());
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "{n} of {want} in the stream"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the archive holds `want` rows; returns when (seconds after `since`).
async fn archived_by(url: &str, want: i64, since: Instant) -> anyhow::Result<f64> {
    loop {
        let n = archived(url).await?;
        if n >= want {
            return Ok(since.elapsed().as_secs_f64());
        }
        anyhow::ensure!(
            since.elapsed() < Duration::from_secs(600),
            "{n} of {want} archived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --run-ignored only"]
async fn archive_rate_against_stored_sends_and_the_conversation_list_query() -> anyhow::Result<()> {
    let topo = Topology::start_with(1, |cfg, _| {
        cfg.limits.send_rate_per_sec = 0;
        Ok(())
    })
    .await?;
    let (mut svc, _dir) = petrel_tests::message_service(&topo).await?;
    let url = svc.postgres.url.clone();
    // Each sender's own device hears of its sends too: its events are read (and
    // dropped), or the client would stop reading and the connection stall.
    let mut senders = Vec::new();
    let mut readers = Vec::new();
    for i in 0..SENDERS {
        let mut c = topo.connect(0, Quic, &format!("s{i}"), "phone").await?;
        senders.push(c.sender());
        readers.push(tokio::spawn(async move {
            while c.next_event().await.is_some() {}
        }));
    }
    let js = async_nats::jetstream::with_domain(topo.hub_client.clone(), "hub");
    let messages = (SENDERS * PER_SENDER) as f64;
    // Each direct message is two archive rows (the recipient's copy, the sender's own).
    let rows = 2 * (SENDERS * PER_SENDER) as i64;

    // (1a) Live: the worker archives while the senders send.
    let before = archived(&url).await?;
    eprintln!("bench: live round, {messages} messages…");
    let started = Instant::now();
    let stored_secs = send_all(&senders, &js, "live").await?;
    let at_end = archived(&url).await? - before;
    let archived_secs = archived_by(&url, before + rows, started).await?;
    println!(
        "live: {messages} stored in {stored_secs:.2} s = {:.0} sends/s; archive {:.1}% done when the sends ended, all {rows} rows by {archived_secs:.2} s ({:.2} s behind)",
        messages / stored_secs,
        100.0 * at_end as f64 / rows as f64,
        archived_secs - stored_secs,
    );

    // (1b) Backlog: the same load with the worker stopped, then its drain rate.
    svc.stop_worker().await?;
    let before = archived(&url).await?;
    eprintln!("bench: backlog round, worker stopped, {messages} messages…");
    let stored_secs = send_all(&senders, &js, "backlog").await?;
    let drain = Instant::now();
    svc.start_worker()?;
    let drain_secs = archived_by(&url, before + rows, drain).await?;
    println!(
        "backlog: {messages} stored in {stored_secs:.2} s = {:.0} sends/s; one worker archived them ({rows} rows) in {drain_secs:.2} s = {:.0} messages/s; archive / stored = {:.2}x",
        messages / stored_secs,
        messages / drain_secs,
        stored_secs / drain_secs,
    );
    drop(senders);
    for r in readers {
        r.abort();
    }

    // (2) 1,000 conversations for bob: one message from each of 1,000 senders, stored
    // on the hub as a gateway stores them.
    eprintln!("bench: {CONVERSATIONS} conversations for bob…");
    let bob = UserId::parse("bob")?;
    let mut acks = Vec::new();
    for i in 0..CONVERSATIONS {
        let from = UserId::parse(format!("friend{i:04}"))?;
        let m = StoredMessage {
            from,
            to: Recipient::User(bob.clone()),
            from_device: "phone".into(),
            client_msg_id: format!("hello{i}"),
            content: bytes::Bytes::from(format!("hello from friend {i}")),
            content_type: "text/plain".into(),
            time_ms: petrel_core::time::unix_ms(),
            gateway_id: "bench".into(),
            notification: None,
            receipt: None,
            meta: Meta::default(),
        };
        acks.push(js.publish(subject::private_inbox(&bob), m.encode()).await?);
    }
    for a in acks {
        a.await?;
    }
    let reader = topo.connect(0, WebSocket, "bob", "phone").await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let page = reader
            .conversations(CONVERSATIONS as u32 - 1, 1, false)
            .await?;
        if !page.conversations.is_empty() {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the 1,000 conversations never appeared"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    reader.close().await;
    eprintln!("bench: listing…");
    // 25 devices of bob, 20 pages each: within each connection's burst of list
    // requests (the session allows 10 a second, 20 at once).
    let mut took = Vec::new();
    for d in 0..25 {
        let device = topo.connect(0, WebSocket, "bob", &format!("d{d}")).await?;
        for i in 0..20 {
            let t = Instant::now();
            let page = device.conversations(i * 50, 50, false).await?;
            took.push(t.elapsed().as_secs_f64() * 1000.0);
            anyhow::ensure!(
                page.conversations.len() == 50,
                "page {i}: {} conversations",
                page.conversations.len()
            );
        }
        device.close().await;
    }
    took.sort_by(f64::total_cmp);
    println!(
        "conversation list, 1,000 conversations, pages of 50 through the gateway: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} requests)",
        percentile(&took, 0.5),
        percentile(&took, 0.99),
        took.last().copied().unwrap_or(0.0),
        took.len()
    );
    Ok(())
}
