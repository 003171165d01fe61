//! System notifications: a business service (here a stand-in using async-nats)
//! publishes to `notif.{category}.{user}`; every device of the user gets it, on any
//! edge, and a device that was away resumes the ones it missed.

use std::time::Duration;

use async_nats::jetstream;
use petrel_client::{ConnectOptions, Connection, Event, TransportKind::*};
use petrel_core::wire::Notification;
use petrel_tests::{TestTopology, Topology};

/// What the business service does: publish the protobuf with its id as Nats-Msg-Id.
async fn publish(
    js: &jetstream::Context,
    category: &str,
    user: &str,
    id: &str,
    title: &str,
) -> anyhow::Result<u64> {
    let n = Notification {
        id: id.into(),
        title: title.into(),
        body: format!("{title} (body)"),
        action: "app://open".into(),
        priority: 2,
        badge: 1,
        data: vec![("k".into(), "v".into())],
        time_ms: 1,
    };
    let mut h = async_nats::HeaderMap::new();
    h.insert(async_nats::header::NATS_MESSAGE_ID, id);
    let ack = js
        .publish_with_headers(format!("notif.{category}.{user}"), h, n.encode())
        .await?
        .await?;
    Ok(ack.sequence)
}

async fn next_notification(c: &mut Connection) -> anyhow::Result<petrel_client::Message> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), c.next_event()).await {
            Ok(Some(Event::Message(m))) if m.notification.is_some() => return Ok(m),
            Ok(Some(Event::Message(_))) => {}
            Ok(other) => anyhow::bail!("unexpected {other:?}"),
            Err(_) => anyhow::bail!("no notification within 10 s"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_reaches_every_device_and_is_resumed() -> anyhow::Result<()> {
    let topo = Topology::start(2).await?;
    let js = jetstream::with_domain(topo.hub_client.clone(), "hub");
    let mut phone = topo.connect(0, Quic, "bob", "phone").await?;
    let mut laptop = topo.connect(1, WebSocket, "bob", "laptop").await?;
    let mut alice = topo.connect(0, Quic, "alice", "phone").await?;

    let s1 = publish(&js, "friend", "bob", "n1", "Friend request").await?;
    for device in [&mut phone, &mut laptop] {
        let m = next_notification(device).await?;
        let n = m.notification.as_ref().unwrap();
        anyhow::ensure!(m.subject == "notif.friend.bob" && m.from == "friend");
        anyhow::ensure!(
            (
                n.id.as_str(),
                n.title.as_str(),
                n.priority.as_str(),
                n.badge
            ) == ("n1", "Friend request", "PRIORITY_HIGH", 1),
            "{n:?}"
        );
        anyhow::ensure!(n.data == vec![("k".to_string(), "v".to_string())]);
    }
    // Not alice's.
    anyhow::ensure!(
        tokio::time::timeout(Duration::from_millis(300), next_notification(&mut alice))
            .await
            .is_err(),
        "alice got bob's notification"
    );

    // The phone goes away; two more arrive (two categories); a retried publish with
    // the same id is stored once.
    phone.close().await;
    let s2 = publish(&js, "system", "bob", "n2", "Maintenance").await?;
    let s3 = publish(&js, "friend", "bob", "n3", "Accepted").await?;
    anyhow::ensure!(publish(&js, "friend", "bob", "n3", "Accepted").await? == s3);
    // The laptop sees both live.
    let a = next_notification(&mut laptop).await?;
    let b = next_notification(&mut laptop).await?;
    anyhow::ensure!([a.seq, b.seq] == [s2, s3]);
    // Back with cursors: friend at n1's sequence, system with nothing yet (0).
    let opts = ConnectOptions {
        cursors: vec![
            ("notif.friend.bob".into(), s1),
            ("notif.system.bob".into(), 0),
        ],
        ..ConnectOptions::new(topo.endpoint(0, Quic), topo.token("bob"), "phone")
    };
    let mut phone = Connection::connect(opts).await?;
    let mut got = vec![
        next_notification(&mut phone).await?.client_msg_id,
        next_notification(&mut phone).await?.client_msg_id,
    ];
    got.sort();
    anyhow::ensure!(got == ["n2", "n3"], "resumed {got:?}");
    anyhow::ensure!(
        tokio::time::timeout(Duration::from_millis(300), next_notification(&mut phone))
            .await
            .is_err(),
        "nothing more (n3's retry was stored once)"
    );
    topo.stop().await;
    Ok(())
}
