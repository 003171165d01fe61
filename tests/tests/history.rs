//! History pages (Sync): scrolling back newest first and forward oldest first, on the
//! user's own subject only; independent of live delivery.

use petrel_client::{ClientError, SendResult, TransportKind::*};
use petrel_tests::{TestTopology, Topology};

const INBOX: &str = "msg.private.bob";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_both_ways_and_only_for_ones_own_subject() -> anyhow::Result<()> {
    let t = Topology::start(2).await?;
    let alice = t.connect(0, Quic, "alice", "phone").await?;
    let mut seqs = Vec::new();
    for i in 0..30 {
        match alice
            .send("bob", &format!("h{i}"), format!("hello {i}"))
            .await?
        {
            SendResult::Stored { seq, .. } => seqs.push(seq),
            other => anyhow::bail!("not stored: {other:?}"),
        }
    }
    // A new device on the other edge scrolls back from the newest, 12 at a time.
    let bob = t.connect(1, WebSocket, "bob", "new").await?;
    let mut got = Vec::new();
    let mut before = 0;
    loop {
        let page = bob.history(INBOX, true, before, 12).await?;
        let ids: Vec<u64> = page.messages.iter().map(|m| m.seq).collect();
        assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");
        got.extend(page.messages.iter().map(|m| m.client_msg_id.clone()));
        match page.messages.last() {
            Some(last) if page.more => before = last.seq,
            _ => break,
        }
    }
    let want: Vec<String> = (0..30).rev().map(|i| format!("h{i}")).collect();
    assert_eq!(got, want);

    // Forward from a sequence, oldest first.
    let page = bob.history(INBOX, false, seqs[9], 5).await?;
    let ids: Vec<String> = page
        .messages
        .iter()
        .map(|m| m.client_msg_id.clone())
        .collect();
    assert_eq!(ids, ["h10", "h11", "h12", "h13", "h14"]);
    assert!(page.more);

    // Someone else's subject is refused.
    match bob.history("msg.private.alice", true, 0, 5).await {
        Err(ClientError::Refused { code, .. }) => assert!(code.contains("PROTOCOL"), "{code}"),
        other => anyhow::bail!("expected a refusal, got {other:?}"),
    }
    // An empty subject's history is empty.
    let carol = t.connect(0, Quic, "carol", "phone").await?;
    let page = carol.history("msg.private.carol", true, 0, 5).await?;
    assert!(page.messages.is_empty() && !page.more);
    t.stop().await;
    Ok(())
}
