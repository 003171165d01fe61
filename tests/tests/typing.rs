//! Typing indicators: live only (core NATS, never in a stream), to the other party
//! across edges and to a group's members, rate-limited.

use petrel_client::{To, TransportKind::*};
use petrel_tests::{TestTopology, Topology, next_typing};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_reaches_the_other_party_and_is_never_stored() -> anyhow::Result<()> {
    let topo = Topology::start(2).await?;
    topo.set_member("team", "alice", true).await?;
    topo.set_member("team", "bob", true).await?;
    let mut alice = topo.connect(0, Quic, "alice", "phone").await?;
    let mut bob = topo.connect(1, WebSocket, "bob", "phone").await?;
    let mut carol = topo.connect(1, Quic, "carol", "phone").await?;
    let stored_before = topo.stored_in_every_stream().await?;

    alice.typing(To::User("bob"), true).await?;
    anyhow::ensure!(
        next_typing(&mut bob, 5_000).await == Some(("alice".into(), None, true)),
        "bob sees alice typing"
    );
    alice.typing(To::User("bob"), false).await?;
    anyhow::ensure!(next_typing(&mut bob, 5_000).await == Some(("alice".into(), None, false)));
    // alice is on QUIC: her typing went to her edge as a datagram.
    anyhow::ensure!(
        topo.counter(0, "datagrams_in").await? >= 2,
        "typing in by datagram"
    );
    // In a group: members only (carol is not one and gets nothing).
    bob.typing(To::Group("team"), true).await?;
    anyhow::ensure!(
        next_typing(&mut alice, 5_000).await == Some(("bob".into(), Some("team".into()), true))
    );
    // ... and reached alice (QUIC) as a datagram, bob (WebSocket) on the stream.
    anyhow::ensure!(
        topo.counter(0, "datagrams_out").await? >= 1,
        "typing out by datagram"
    );
    anyhow::ensure!(next_typing(&mut carol, 300).await.is_none());
    // A non-member's typing in the group goes nowhere.
    carol.typing(To::Group("team"), true).await?;
    anyhow::ensure!(next_typing(&mut alice, 300).await.is_none());

    // Rate limit: of 50 in a burst, at most the burst (5) plus what refills arrive.
    for i in 0..50 {
        alice.typing(To::User("bob"), i % 2 == 0).await?;
    }
    let mut got = 0;
    while next_typing(&mut bob, 500).await.is_some() {
        got += 1;
    }
    anyhow::ensure!(
        (1..=10).contains(&got),
        "{got} of 50 typing events passed the limit"
    );

    // Nothing of it is in any stream.
    let stored = topo.stored_in_every_stream().await?;
    anyhow::ensure!(
        stored == stored_before,
        "typing was stored: {stored} messages in the hub's streams, {stored_before} before"
    );
    topo.stop().await;
    Ok(())
}
