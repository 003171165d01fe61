//! Delivered and read receipts: sent by the recipient, stored in the original
//! sender's inbox, delivered to the sender's devices, and resumed by a sender that was
//! offline when they were sent.

use std::time::Duration;

use petrel_client::{ConnectOptions, Connection, Event, ReceiptKind, TransportKind::*};
use petrel_tests::{TestTopology, Topology, next_message_on};

async fn next_receipt(c: &mut Connection) -> anyhow::Result<petrel_client::Message> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), c.next_event()).await {
            Ok(Some(Event::Message(m))) if m.receipt.is_some() => return Ok(m),
            Ok(Some(Event::Message(_))) => {}
            Ok(other) => anyhow::bail!("unexpected {other:?}"),
            Err(_) => anyhow::bail!("no receipt within 10 s"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_reach_the_sender_also_after_it_reconnects() -> anyhow::Result<()> {
    let topo = Topology::start(2).await?;
    let mut alice = topo.connect(0, Quic, "alice", "phone").await?;
    let mut bob = topo.connect(1, WebSocket, "bob", "phone").await?;
    alice.send("bob", "m1", "hello").await?;
    let m1 = next_message_on(&mut bob, "msg.private.bob", 10).await?;
    bob.receipt(ReceiptKind::Delivered, &m1).await?;
    bob.receipt(ReceiptKind::Read, &m1).await?;
    // A repeated receipt is stored once.
    bob.receipt(ReceiptKind::Read, &m1).await?;
    for want in [ReceiptKind::Delivered, ReceiptKind::Read] {
        let r = next_receipt(&mut alice).await?;
        let rc = r.receipt.as_ref().unwrap();
        anyhow::ensure!(r.from == "bob" && r.subject == "msg.private.alice");
        anyhow::ensure!(
            rc.kind == want && rc.client_msg_id == "m1" && rc.seq == m1.seq,
            "{rc:?}"
        );
    }
    let cursor = {
        anyhow::ensure!(
            tokio::time::timeout(Duration::from_millis(300), next_receipt(&mut alice))
                .await
                .is_err(),
            "the repeated read receipt was stored once"
        );
        alice.close().await;
        // The last sequence alice processed on her inbox: the read receipt.
        let js = async_nats::jetstream::with_domain(topo.hub_client.clone(), "hub");
        let stream = js.get_stream("USER_MESSAGES").await?;
        stream
            .direct_get_last_for_subject("msg.private.alice")
            .await?
            .sequence
    };

    // alice is offline: bob reads m2.
    let sender = topo.connect(1, Quic, "alice", "laptop").await?;
    sender.send("bob", "m2", "second").await?;
    sender.close().await;
    let m2 = next_message_on(&mut bob, "msg.private.bob", 10).await?;
    bob.receipt(ReceiptKind::Read, &m2).await?;
    // Receipts about someone else's inbox are refused (non-fatal).
    let mut forged = m2.clone();
    forged.subject = "msg.private.carol".into();
    bob.receipt(ReceiptKind::Read, &forged).await?;
    match tokio::time::timeout(Duration::from_secs(5), bob.next_event()).await {
        Ok(Some(Event::Error { code, .. })) => anyhow::ensure!(code == "PROTOCOL"),
        other => anyhow::bail!("expected an error for the forged receipt, got {other:?}"),
    }
    // alice's phone comes back with its cursor and finds the read receipt for m2.
    let opts = ConnectOptions {
        cursors: vec![("msg.private.alice".into(), cursor)],
        ..ConnectOptions::new(topo.endpoint(0, Quic), topo.token("alice"), "phone")
    };
    let mut alice = Connection::connect(opts).await?;
    let r = next_receipt(&mut alice).await?;
    let rc = r.receipt.as_ref().unwrap();
    anyhow::ensure!(
        rc.kind == ReceiptKind::Read && rc.client_msg_id == "m2",
        "{rc:?}"
    );
    topo.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipt_about_a_message_that_is_not_in_the_inbox_is_refused() -> anyhow::Result<()> {
    let topo = Topology::start(1).await?;
    let mut alice = topo.connect(0, Quic, "alice", "phone").await?;
    let mut mallory = topo.connect(0, WebSocket, "mallory", "phone").await?;
    alice.send("mallory", "real", "hello").await?;
    let real = next_message_on(&mut mallory, "msg.private.mallory", 10).await?;
    let before = topo.subject_counts("msg.private.alice").await?;
    // Forged: a message id alice never sent, a sequence that is not that message, a
    // sender other than the message's.
    let forgeries = [
        petrel_client::Message {
            client_msg_id: "never-sent".into(),
            ..real.clone()
        },
        petrel_client::Message {
            seq: real.seq + 1000,
            ..real.clone()
        },
        petrel_client::Message {
            from: "carol".into(),
            ..real.clone()
        },
    ];
    for forged in &forgeries {
        mallory.receipt(ReceiptKind::Read, forged).await?;
        match tokio::time::timeout(Duration::from_secs(10), mallory.next_event()).await {
            Ok(Some(Event::Error { code, .. })) => {
                anyhow::ensure!(code == "FORBIDDEN", "{code} for {forged:?}")
            }
            other => anyhow::bail!("no refusal for {forged:?}: {other:?}"),
        }
    }
    // The real one is stored, and it is the only receipt alice gets.
    mallory.receipt(ReceiptKind::Read, &real).await?;
    let r = next_receipt(&mut alice).await?;
    anyhow::ensure!(
        r.receipt
            .as_ref()
            .is_some_and(|rc| rc.client_msg_id == "real")
    );
    let after = topo.subject_counts("msg.private.alice").await?;
    let count = |c: &std::collections::HashMap<String, usize>| {
        c.get("msg.private.alice").copied().unwrap_or(0)
    };
    anyhow::ensure!(
        count(&after) == count(&before) + 1,
        "{before:?} → {after:?}"
    );
    topo.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipt_repeated_after_the_duplicate_window_is_still_stored_once() -> anyhow::Result<()>
{
    let topo = Topology::start(1).await?;
    // A short duplicate window, so that it can pass within the test: past it, the
    // receipt's message id no longer dedups, and only its claim does.
    topo.set_duplicate_window(Duration::from_millis(500))
        .await?;
    let js = async_nats::jetstream::with_domain(topo.hub_client.clone(), "hub");
    let mut alice = topo.connect(0, Quic, "alice", "phone").await?;
    let mut bob = topo.connect(0, WebSocket, "bob", "phone").await?;
    alice.send("bob", "late", "hello").await?;
    let m = next_message_on(&mut bob, "msg.private.bob", 10).await?;
    bob.receipt(ReceiptKind::Read, &m).await?;
    let first = next_receipt(&mut alice).await?;
    anyhow::ensure!(first.receipt.is_some());
    let stored = || async {
        let info = topo.subject_counts("msg.private.alice").await?;
        anyhow::Ok(info.get("msg.private.alice").copied().unwrap_or(0))
    };
    let before = stored().await?;
    // Wait until the hub has forgotten the receipt's message id: a probe with an id of
    // its own, published twice a window apart, is stored twice.
    let probe = |n: u32| {
        let js = js.clone();
        async move {
            let mut h = async_nats::HeaderMap::new();
            h.insert(async_nats::header::NATS_MESSAGE_ID, "probe-late");
            let ack = js
                .publish_with_headers("msg.private.probe", h, bytes::Bytes::from(n.to_string()))
                .await?
                .await?;
            anyhow::Ok(ack.duplicate)
        }
    };
    anyhow::ensure!(!probe(0).await?);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut n = 1;
    while probe(n).await? {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the window never passed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        n += 1;
    }
    // The window that covered the receipt has passed: bob's device repeats it (the
    // conversation opened again), and a delivered receipt for the first time.
    bob.receipt(ReceiptKind::Read, &m).await?;
    bob.receipt(ReceiptKind::Delivered, &m).await?;
    let next = next_receipt(&mut alice).await?;
    let rc = next.receipt.as_ref().map(|r| r.kind);
    anyhow::ensure!(rc == Some(ReceiptKind::Delivered), "{next:?}");
    anyhow::ensure!(
        tokio::time::timeout(Duration::from_millis(500), next_receipt(&mut alice))
            .await
            .is_err(),
        "the repeated read receipt was delivered again"
    );
    anyhow::ensure!(
        stored().await? == before + 1,
        "the repeated read receipt was stored again"
    );
    topo.stop().await;
    Ok(())
}
