//! Presence: a Redis directory of connected devices; a user is online while any
//! device is; watchers get the state and then every change; with Redis down messages
//! still flow and presence is unknown; when Redis returns the directory is rebuilt.

use petrel_client::{Connection, SendResult, To, TransportKind::*};
use petrel_tests::{TestTopology, Topology, next_message_on, next_presence, next_typing};

/// Watches bob and returns the state reported now.
async fn state_of_bob(alice: &mut Connection) -> anyhow::Result<String> {
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
    topo.set_contacts("alice", "bob", true).await?;
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

    // Redis returns empty; the gateways' heartbeats rebuild it (and the application
    // its contacts).
    topo.restart_redis().await?;
    topo.set_contacts("alice", "bob", true).await?;
    // Watched once (watch lists are rate-limited): the state now, then the change
    // the rebuild announces.
    let now = state_of_bob(&mut alice).await?;
    if now != "ONLINE" {
        anyhow::ensure!(
            next_presence(&mut alice, 15_000).await == Some(("bob".into(), "ONLINE".into())),
            "presence not rebuilt (it said {now} after the restart)"
        );
    }
    topo.stop().await;
    Ok(())
}

/// The next `n` states reported (each within 5 s), in order.
async fn presence_answers(c: &mut Connection, n: usize) -> Vec<(String, String)> {
    let mut out = Vec::new();
    while out.len() < n
        && let Some(p) = next_presence(c, 5_000).await
    {
        out.push(p);
    }
    out
}

fn pair(u: &str, s: &str) -> (String, String) {
    (u.to_string(), s.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_and_typing_reach_only_contacts_and_members_of_a_shared_group()
-> anyhow::Result<()> {
    let topo = Topology::start(1).await?;
    let mut alice = topo.connect(0, Quic, "alice", "phone").await?;
    let mut bob = topo.connect(0, WebSocket, "bob", "phone").await?;
    // A stranger: unknown (never online or offline), not followed, and typing to him
    // goes nowhere.
    alice.watch(&["bob", "alice"]).await?;
    assert_eq!(
        presence_answers(&mut alice, 2).await,
        vec![pair("bob", "UNKNOWN"), pair("alice", "ONLINE")]
    );
    alice.typing(To::User("bob"), true).await?;
    assert_eq!(
        next_typing(&mut bob, 500).await,
        None,
        "typing to a stranger"
    );
    bob.close().await;
    assert_eq!(
        next_presence(&mut alice, 500).await,
        None,
        "a stranger is not followed"
    );

    // A contact (the next watch list reads the directory again).
    topo.set_contacts("alice", "bob", true).await?;
    alice.watch(&["bob"]).await?;
    assert_eq!(
        next_presence(&mut alice, 5_000).await,
        Some(pair("bob", "OFFLINE"))
    );
    let mut bob = topo.connect(0, WebSocket, "bob", "phone").await?;
    assert_eq!(
        next_presence(&mut alice, 5_000).await,
        Some(pair("bob", "ONLINE"))
    );
    alice.typing(To::User("bob"), true).await?;
    assert_eq!(
        next_typing(&mut bob, 5_000).await,
        Some(("alice".into(), None, true))
    );

    // A member of a shared group, until she leaves it.
    topo.set_member("team", "alice", true).await?;
    topo.set_member("team", "carol", true).await?;
    alice.watch(&["bob", "carol", "dave"]).await?;
    assert_eq!(
        presence_answers(&mut alice, 3).await,
        vec![
            pair("bob", "ONLINE"),
            pair("carol", "OFFLINE"),
            pair("dave", "UNKNOWN")
        ]
    );
    topo.set_member("team", "carol", false).await?;
    assert_eq!(
        next_presence(&mut alice, 5_000).await,
        Some(pair("carol", "UNKNOWN")),
        "no longer visible once the group is no longer shared"
    );
    let _carol = topo.connect(0, Quic, "carol", "phone").await?;
    assert_eq!(
        next_presence(&mut alice, 500).await,
        None,
        "carol no longer followed"
    );
    topo.stop().await;
    Ok(())
}
