//! The reconnecting client on a weak network, through the impairment proxy: 10% of
//! packets lost each way, 200 ms RTT, and the path moved to a new source address
//! every 30 s (what the gateway sees of a phone that changed network). Over QUIC the
//! session rides it out: both directions arrive once each and in order, and the
//! client never reconnects.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{bail, ensure};
use petrel_bench::impair::{Impairment, udp::UdpProxy};
use petrel_client::{
    Client, ClientOptions, Event, PendingSend, SendOptions, SendResult, To, TransportKind::*,
};
use petrel_devkit::Topology;
use petrel_tests::TestTopology;

/// Long enough for two switches of the path.
const RUN: Duration = Duration::from_secs(62);
const SWITCH_EVERY: Duration = Duration::from_secs(30);

async fn connected(c: &mut Client) -> anyhow::Result<()> {
    petrel_tests::until_connected(c, Duration::from_secs(30)).await
}

/// Sends `count` messages from `from` to `to`, one every `every`, through the outbox
/// (none waits for the one before), and returns the pending answers in order.
fn pace(
    from: petrel_client::Handle,
    to: &'static str,
    prefix: &'static str,
    every: Duration,
) -> tokio::task::JoinHandle<anyhow::Result<Vec<(String, PendingSend)>>> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        let count = (RUN.as_millis() / every.as_millis()) as usize;
        let mut pending = Vec::with_capacity(count);
        for i in 0..count {
            tick.tick().await;
            let id = format!("{prefix}{i}");
            let p = from
                .start_send(
                    To::User(to),
                    &id,
                    format!("{prefix} {i} on a weak network"),
                    "text/plain",
                    SendOptions::default(),
                )
                .await?;
            pending.push((id, p));
        }
        Ok(pending)
    })
}

/// What one side received from the other, checked once each and in order as it comes.
#[derive(Default)]
struct Received {
    ids: Vec<String>,
    seen: HashSet<String>,
    reconnects: u32,
}

impl Received {
    fn on(&mut self, who: &str, from: &str, e: Event) -> anyhow::Result<()> {
        match e {
            Event::Message(m) if m.from == from => {
                ensure!(
                    self.seen.insert(m.client_msg_id.clone()),
                    "{who} got {} twice",
                    m.client_msg_id
                );
                self.ids.push(m.client_msg_id);
            }
            Event::Connected { .. } | Event::Disconnected { .. } => self.reconnects += 1,
            _ => {}
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_percent_loss_200_ms_rtt_and_a_switch_every_30_s_lose_nothing_and_never_reconnect_quic()
-> anyhow::Result<()> {
    let topo = Topology::start(1).await?;
    let stop = tokio_util::sync::CancellationToken::new();
    let weak = Impairment {
        loss: 0.10,
        delay: Duration::from_millis(100),
        switch_every: Some(SWITCH_EVERY),
        seed: 17,
        ..Impairment::default()
    };
    let mut quic = topo.endpoint(0, Quic);
    let proxy = UdpProxy::bind("127.0.0.1:0".parse()?, quic.address.parse()?, weak).await?;
    quic.address = proxy.local_addr().to_string();
    let path = proxy.run(stop.clone(), 0);

    let mut bob = Client::start(ClientOptions::new(vec![quic], topo.token("bob"), "phone"))?;
    connected(&mut bob).await?;
    let mut alice = Client::start(ClientOptions::new(
        vec![topo.endpoint(0, WebSocket)],
        topo.token("alice"),
        "laptop",
    ))?;
    connected(&mut alice).await?;

    // alice (a good network) → bob 4 a second; bob (the weak one) → alice 1 a second.
    let to_bob = pace(alice.handle(), "bob", "a", Duration::from_millis(250));
    let to_alice = pace(bob.handle(), "alice", "b", Duration::from_secs(1));
    let (mut at_bob, mut at_alice) = (Received::default(), Received::default());
    let (want_bob, want_alice) = ((RUN.as_millis() / 250) as usize, RUN.as_secs() as usize);
    let deadline = tokio::time::Instant::now() + RUN + Duration::from_secs(40);
    while at_bob.ids.len() < want_bob || at_alice.ids.len() < want_alice {
        tokio::select! {
            e = bob.next_event() => match e {
                Some(e) => at_bob.on("bob", "alice", e)?,
                None => bail!("bob's client stopped"),
            },
            e = alice.next_event() => match e {
                Some(e) => at_alice.on("alice", "bob", e)?,
                None => bail!("alice's client stopped"),
            },
            _ = tokio::time::sleep_until(deadline) => bail!(
                "after {} s bob has {}/{want_bob}, alice {}/{want_alice}",
                (RUN + Duration::from_secs(40)).as_secs(),
                at_bob.ids.len(),
                at_alice.ids.len()
            ),
        }
    }
    for (who, sent) in [("alice", to_bob.await??), ("bob", to_alice.await??)] {
        for (id, p) in sent {
            match p.result().await? {
                SendResult::Stored { .. } | SendResult::Queued { .. } => {}
                other => bail!("{who}'s {id}: {other:?}"),
            }
        }
    }
    let in_order =
        |prefix: &str, n: usize| (0..n).map(|i| format!("{prefix}{i}")).collect::<Vec<_>>();
    ensure!(
        at_bob.ids == in_order("a", want_bob),
        "bob's messages out of order"
    );
    ensure!(
        at_alice.ids == in_order("b", want_alice),
        "alice's messages out of order"
    );
    ensure!(
        at_bob.reconnects == 0,
        "bob's QUIC session reconnected {} time(s)",
        at_bob.reconnects
    );
    let (switches, dropped) = (
        path.switches.load(Ordering::Relaxed),
        path.dropped.load(Ordering::Relaxed),
    );
    ensure!(switches >= 2, "the path moved only {switches} time(s)");
    ensure!(dropped > 0, "the proxy dropped nothing");
    println!(
        "10% loss, 200 ms RTT, {switches} path switches, {dropped} packets dropped: \
         bob got {want_bob} and alice {want_alice} messages once each, in order; 0 reconnects"
    );
    stop.cancel();
    alice.close().await;
    bob.close().await;
    Ok(())
}
