//! Delivery streams on QUIC: Deliver frames travel on unidirectional streams the
//! gateway opens, each subject always on the same one and in order, so one
//! conversation's lost packets hold up only the conversations sharing its stream.
//! Everything else stays on the control stream. WebSocket has one stream only.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use petrel_client::{Read, SendResult, To, TransportKind::*};
use petrel_proto::{FrameDecoder, pb};
use petrel_tests::{TestTopology, Topology};
use prost::Message as _;

const GROUPS: [&str; 6] = ["g0", "g1", "g2", "g3", "g4", "g5"];
const ROUNDS: usize = 20;

/// What a raw client saw on one stream.
#[derive(Debug)]
enum Seen {
    /// A delivered message: the stream it came on (`None`: control), subject, seq, id.
    Message(Option<u64>, String, u64, String),
    /// Any other frame on the control stream.
    Control(&'static str),
}

fn kind_name(k: &pb::server_frame::Kind) -> &'static str {
    use pb::server_frame::Kind::*;
    match k {
        Welcome(_) => "welcome",
        SendResult(_) => "send_result",
        Deliver(_) => "deliver",
        Pong(_) => "pong",
        Error(_) => "error",
        SyncBatch(_) => "sync_batch",
        Typing(_) => "typing",
        Presence(_) => "presence",
        PushRegistered(_) => "push_registered",
        ConversationList(_) => "conversation_list",
        ConversationUpdate(_) => "conversation_update",
        GoAway(_) => "go_away",
    }
}

fn frames(decoder: &mut FrameDecoder, stream: Option<u64>) -> anyhow::Result<Vec<Seen>> {
    let mut out = Vec::new();
    while let Some(f) = decoder.next_frame()? {
        match pb::ServerFrame::decode(f)?.kind {
            Some(pb::server_frame::Kind::Deliver(d)) => {
                for m in d.messages {
                    out.push(Seen::Message(stream, m.subject, m.seq, m.client_msg_id));
                }
            }
            Some(k) => out.push(Seen::Control(kind_name(&k))),
            None => {}
        }
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_subject_keeps_to_one_delivery_stream_in_order() -> anyhow::Result<()> {
    let t = Topology::start(1).await?;
    for g in GROUPS {
        t.set_member(g, "alice", true).await?;
        t.set_member(g, "bob", true).await?;
    }
    let alice = t.connect(0, Quic, "alice", "phone").await?;
    let mut bob = t.raw_hello(0, "bob", "phone", 16).await?;
    anyhow::ensure!(bob.welcome.delivery_streams == 16);

    // Everything bob receives, from every stream, in the order each stream gave it.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<anyhow::Result<Vec<Seen>>>();
    let conn = bob
        .reader
        .datagram_connection()
        .ok_or_else(|| anyhow::anyhow!("no QUIC connection"))?;
    let accept_tx = tx.clone();
    let acceptor = tokio::spawn(async move {
        while let Ok(mut recv) = conn.accept_uni().await {
            let tx = accept_tx.clone();
            let id = recv.id().index();
            tokio::spawn(async move {
                let mut decoder = FrameDecoder::new(1 << 22);
                while let Ok(Some(c)) = recv.read_chunk(64 * 1024, true).await {
                    decoder.push(&c.bytes);
                    if tx.send(frames(&mut decoder, Some(id))).is_err() {
                        return;
                    }
                }
            });
        }
    });
    let mut control_decoder = std::mem::replace(&mut bob.decoder, FrameDecoder::new(1));
    let mut control_reader = bob.reader;
    let control = tokio::spawn(async move {
        let _ = tx.send(frames(&mut control_decoder, None));
        while let Ok(Read::Data(d)) = control_reader.read().await {
            control_decoder.push(&d);
            if tx.send(frames(&mut control_decoder, None)).is_err() {
                return;
            }
        }
    });

    // Interleaved: a direct message and one message to each group per round.
    let sender = alice.sender();
    let mut answers = Vec::new();
    for round in 0..ROUNDS {
        let dm = format!("dm-{round}");
        answers.push(
            sender
                .start_send_to(To::User("bob"), &dm, "to bob", "text/plain")
                .await?,
        );
        for g in GROUPS {
            let id = format!("{g}-{round}");
            answers.push(
                sender
                    .start_send_to(To::Group(g), &id, "to all", "text/plain")
                    .await?,
            );
        }
    }
    for a in answers {
        match a.await? {
            SendResult::Stored { .. } => {}
            other => anyhow::bail!("send not stored: {other:?}"),
        }
    }
    let want = ROUNDS * (GROUPS.len() + 1);
    let mut by_subject: BTreeMap<String, Vec<(Option<u64>, u64, String)>> = BTreeMap::new();
    let mut control_frames = Vec::new();
    let mut got = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while got < want {
        let seen = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .map_err(|_| anyhow::anyhow!("only {got} of {want} messages arrived"))?
            .ok_or_else(|| anyhow::anyhow!("all streams ended after {got} messages"))??;
        for s in seen {
            match s {
                Seen::Message(stream, subject, seq, id) => {
                    got += 1;
                    by_subject
                        .entry(subject)
                        .or_default()
                        .push((stream, seq, id));
                }
                Seen::Control(k) => control_frames.push(k),
            }
        }
    }
    anyhow::ensure!(got == want, "{got} messages for {want} sent");

    let mut streams_used = BTreeSet::new();
    for (subject, msgs) in &by_subject {
        // One stream per subject, never the control stream.
        let streams: BTreeSet<_> = msgs.iter().map(|(s, _, _)| *s).collect();
        anyhow::ensure!(
            streams.len() == 1,
            "{subject} came on several streams: {streams:?}"
        );
        let stream = streams
            .into_iter()
            .next()
            .flatten()
            .ok_or_else(|| anyhow::anyhow!("{subject} came on the control stream"))?;
        streams_used.insert(stream);
        // In order, and exactly the ids sent to it, in the order sent.
        anyhow::ensure!(
            msgs.windows(2).all(|w| w[0].1 < w[1].1),
            "{subject} out of order"
        );
        let prefix = subject
            .strip_prefix("msg.group.")
            .map(str::to_string)
            .unwrap_or_else(|| "dm".into());
        let ids: Vec<_> = msgs.iter().map(|(_, _, id)| id.clone()).collect();
        let sent: Vec<_> = (0..ROUNDS).map(|r| format!("{prefix}-{r}")).collect();
        anyhow::ensure!(ids == sent, "{subject}: got {ids:?}");
    }
    anyhow::ensure!(by_subject.len() == GROUPS.len() + 1);
    // Seven subjects over sixteen streams: they do not all share one.
    anyhow::ensure!(
        streams_used.len() > 1,
        "all subjects on one stream: {streams_used:?}"
    );
    anyhow::ensure!(
        !control_frames.contains(&"deliver"),
        "a Deliver came on the control stream: {control_frames:?}"
    );
    acceptor.abort();
    control.abort();
    t.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_streams_are_granted_on_quic_only_and_capped() -> anyhow::Result<()> {
    let t = Topology::start(1).await?;
    let quic = t.connect(0, Quic, "alice", "phone").await?;
    anyhow::ensure!(quic.welcome().delivery_streams == petrel_client::DEFAULT_DELIVERY_STREAMS);
    let ws = t.connect(0, WebSocket, "alice", "laptop").await?;
    anyhow::ensure!(
        ws.welcome().delivery_streams == 0,
        "WebSocket has no delivery streams"
    );
    let greedy = t.raw_hello(0, "alice", "greedy", 1000).await?;
    anyhow::ensure!(greedy.welcome.delivery_streams == 16, "capped at 16");
    let none = t.raw_hello(0, "alice", "plain", 0).await?;
    anyhow::ensure!(none.welcome.delivery_streams == 0);
    t.stop().await;
    Ok(())
}
