//! Benchmark (ignored in the test run): the message service against the gateway it
//! follows. (1) Archive write rate against stored sends per second in the same run:
//! 4 senders pipeline direct messages through one gateway while one worker archives;
//! both rates over the same messages. (2) The conversation-list query for a user with
//! 1,000 conversations: p50 and p99 of a 50-conversation page through the gateway.
//! See BENCHMARKS.md for the command.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --run-ignored only"]
async fn archive_rate_against_stored_sends_and_the_conversation_list_query() -> anyhow::Result<()> {
    let topo = Topology::start_with(1, |cfg, _| {
        cfg.limits.send_rate_per_sec = 0;
        Ok(())
    })
    .await?;
    let (svc, _dir) = petrel_tests::message_service(&topo).await?;
    let before = archived(&svc.postgres.url).await?;

    // (1) Stored sends per second, and the archive's rate over the same messages.
    let mut clients = Vec::new();
    for i in 0..SENDERS {
        clients.push(topo.connect(0, Quic, &format!("s{i}"), "phone").await?);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        let sender = c.sender();
        tasks.push(tokio::spawn(async move {
            let mut answers = Vec::with_capacity(PER_SENDER);
            for n in 0..PER_SENDER {
                let rx = sender
                    .start_send_with(
                        To::User(&format!("r{i}")),
                        &format!("m{n}"),
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
    let stored_secs = started.elapsed().as_secs_f64();
    let messages = (SENDERS * PER_SENDER) as f64;
    // Each direct message is two archive rows (the recipient's copy, the sender's own).
    let want = before + 2 * (SENDERS * PER_SENDER) as i64;
    loop {
        let n = archived(&svc.postgres.url).await?;
        if n >= want {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(300),
            "{n} of {want} archived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let archived_secs = started.elapsed().as_secs_f64();
    println!(
        "stored sends: {messages} in {stored_secs:.2} s = {:.0}/s; archived (both copies) by {archived_secs:.2} s = {:.0} messages/s; ratio {:.2}",
        messages / stored_secs,
        messages / archived_secs,
        stored_secs / archived_secs,
    );

    // (2) 1,000 conversations for bob: one message from each of 1,000 senders, stored
    // on the hub as a gateway stores them.
    let js = async_nats::jetstream::with_domain(topo.hub_client.clone(), "hub");
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
    // 25 devices of bob, 20 pages each: within each connection's burst of list
    // requests (the session allows 10 a second, 20 at once).
    let mut took = Vec::new();
    for d in 0..25 {
        let device = topo.connect(0, WebSocket, "bob", &format!("d{d}")).await?;
        for i in 0..20 {
            let t = Instant::now();
            let page = device.conversations(i * 50, 50, false).await?;
            took.push(t.elapsed().as_secs_f64() * 1000.0);
            anyhow::ensure!(page.conversations.len() == 50);
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
