//! Presence: a Redis directory of connected devices; a user is online while any
//! device is; watchers get the state and then every change; with Redis down messages
//! still flow and presence is unknown; when Redis returns the directory is rebuilt.

use std::time::Duration;

use petrel_client::{Client, Event, SendResult, TransportKind::*};
use petrel_tests::{TestTopology, Topology, next_message_on};

async fn next_presence(c: &mut Client, ms: u64) -> Option<(String, String)> {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
    loop {
        match tokio::time::timeout_at(deadline, c.next_event()).await {
            Ok(Some(Event::Presence { user, state })) => return Some((user, state)),
            Ok(Some(_)) => {}
            _ => return None,
        }
    }
}

/// Watches bob and returns the state reported now.
async fn state_of_bob(alice: &mut Client) -> anyhow::Result<String> {
    alice.watch(&["bob"]).await?;
    match next_presence(alice, 5_000).await {
        Some((u, s)) if u == "bob" => Ok(s),
        other => anyhow::bail!("no presence answer: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_while_any_device_is_and_redis_down_only_makes_it_unknown() -> anyhow::Result<()> {
    let mut topo = Topology::start_with(2, |cfg, _| {
        cfg.redis.presence_heartbeat_secs = 1;
        Ok(())
    })
    .await?;
    let mut alice = topo.connect(0, Quic, "alice", "phone").await?;
    anyhow::ensure!(state_of_bob(&mut alice).await? == "OFFLINE");

    let phone = topo.connect(1, Quic, "bob", "phone").await?;
    anyhow::ensure!(
        next_presence(&mut alice, 5_000).await == Some(("bob".into(), "ONLINE".into()))
    );
    let laptop = topo.connect(0, WebSocket, "bob", "laptop").await?;
    phone.close().await;
    anyhow::ensure!(
        next_presence(&mut alice, 500).await.is_none(),
        "no change while the laptop is connected"
    );
    anyhow::ensure!(state_of_bob(&mut alice).await? == "ONLINE");
    laptop.close().await;
    anyhow::ensure!(
        next_presence(&mut alice, 5_000).await == Some(("bob".into(), "OFFLINE".into()))
    );

    // Redis goes away: messaging goes on, presence is unknown.
    topo.kill_redis().await;
    let mut bob = topo.connect(1, Quic, "bob", "phone").await?;
    match alice.send("bob", "while-redis-down", "still here").await? {
        SendResult::Stored { .. } => {}
        other => anyhow::bail!("{other:?}"),
    }
    anyhow::ensure!(
        next_message_on(&mut bob, "msg.private.bob", 10)
            .await?
            .client_msg_id
            == "while-redis-down"
    );
    anyhow::ensure!(state_of_bob(&mut alice).await? == "UNKNOWN");

    // Redis returns empty; the gateways' heartbeats rebuild it.
    topo.restart_redis().await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let s = state_of_bob(&mut alice).await?;
        if s == "ONLINE" {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "presence not rebuilt: {s}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    topo.stop().await;
    Ok(())
}
