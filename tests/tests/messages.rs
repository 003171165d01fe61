//! The message service end to end, against a real hub, Redis and PostgreSQL: a new
//! device's conversation list with unread counts, read positions shared live by a
//! user's devices, mentions and replies, edits and recalls within the window (and
//! refused outside it), and history that pages past the stream's retention into the
//! archive without a gap or a repeat at the seam.

use std::time::{Duration, Instant};

use petrel_client::{
    Connection, Conversation, Event, SendOptions, SendResult, To, TransportKind::*,
};
use petrel_devkit::messages::MessageService;
use petrel_tests::{TestTopology, Topology};

/// A topology with one edge (amend window `window_secs`) and the message service.
async fn start(window_secs: u64) -> anyhow::Result<(Topology, MessageService, tempfile::TempDir)> {
    let topo = Topology::start_with(1, move |cfg, _| {
        cfg.messages.amend_window_secs = window_secs;
        Ok(())
    })
    .await?;
    let (svc, dir) = petrel_tests::message_service(&topo).await?;
    Ok((topo, svc, dir))
}

async fn send(
    c: &Connection,
    to: To<'_>,
    id: &str,
    text: &str,
    o: SendOptions,
) -> anyhow::Result<u64> {
    let rx = c
        .sender()
        .start_send_with(to, id, text.as_bytes().to_vec(), "text/plain", o)
        .await?;
    match rx.await? {
        SendResult::Stored { seq, .. } => Ok(seq),
        other => anyhow::bail!("{id}: {other:?}"),
    }
}

fn text(c: &Conversation) -> String {
    c.last
        .as_ref()
        .map(|m| String::from_utf8_lossy(&m.content).into_owned())
        .unwrap_or_default()
}

/// Polls `c`'s conversation list until `ok` holds (the archive catches up within
/// milliseconds; 15 s is the bound).
async fn list_until(
    c: &Connection,
    ok: impl Fn(&[Conversation]) -> bool,
) -> anyhow::Result<Vec<Conversation>> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let page = c.conversations(0, 50, false).await?;
        if ok(&page.conversations) {
            return Ok(page.conversations);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the conversation list never got there: {:#?}",
            page.conversations
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

fn with_user<'a>(cs: &'a [Conversation], u: &str) -> Option<&'a Conversation> {
    cs.iter().find(|c| c.user.as_deref() == Some(u))
}

fn with_group<'a>(cs: &'a [Conversation], g: &str) -> Option<&'a Conversation> {
    cs.iter().find(|c| c.group.as_deref() == Some(g))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_device_lists_its_conversations_and_a_read_on_one_device_clears_them_live()
-> anyhow::Result<()> {
    let (topo, _svc, _dir) = start(900).await?;
    for u in ["bob", "carol"] {
        topo.set_member("team", u, true).await?;
    }
    let alice = topo.connect(0, Quic, "alice", "phone").await?;
    let carol = topo.connect(0, WebSocket, "carol", "phone").await?;
    for i in 1..=3 {
        send(
            &alice,
            To::User("bob"),
            &format!("a{i}"),
            &format!("hi {i}"),
            SendOptions::default(),
        )
        .await?;
    }
    for i in 1..=2 {
        send(
            &carol,
            To::Group("team"),
            &format!("c{i}"),
            &format!("team {i}"),
            SendOptions::default(),
        )
        .await?;
    }
    // bob's brand-new phone: no cursor, no state; the list comes from the service.
    let phone = topo.connect(0, Quic, "bob", "phone").await?;
    let list = list_until(&phone, |cs| {
        with_user(cs, "alice").is_some_and(|c| c.unread == 3)
            && with_group(cs, "team").is_some_and(|c| c.unread == 2)
    })
    .await?;
    anyhow::ensure!(list.len() == 2, "{list:#?}");
    // The group spoke last: it comes first.
    anyhow::ensure!(list[0].group.as_deref() == Some("team"), "{list:#?}");
    anyhow::ensure!(
        text(&list[0]) == "team 2" && text(&list[1]) == "hi 3",
        "{list:#?}"
    );
    let last = list[0].last.as_ref().map(|m| m.from.as_str());
    anyhow::ensure!(last == Some("carol"), "{list:#?}");
    // The phone follows its list; the laptop reads the group.
    let mut phone = phone;
    phone.conversations(0, 50, true).await?;
    let laptop = topo.connect(0, WebSocket, "bob", "laptop").await?;
    laptop.mark_read(To::Group("team"), 0).await?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, phone.next_event()).await {
            Ok(Some(Event::Conversation(c)))
                if c.group.as_deref() == Some("team") && c.unread == 0 =>
            {
                break;
            }
            Ok(Some(_)) => continue,
            Ok(None) => anyhow::bail!("the phone's connection closed"),
            Err(_) => anyhow::bail!("the phone never saw the group read"),
        }
    }
    // And a fresh list agrees: the group read, alice's messages still unread.
    let list = phone.conversations(0, 50, false).await?.conversations;
    anyhow::ensure!(
        with_group(&list, "team").map(|c| c.unread) == Some(0),
        "{list:#?}"
    );
    anyhow::ensure!(
        with_user(&list, "alice").map(|c| c.unread) == Some(3),
        "{list:#?}"
    );
    // bob replies to alice: his own message means he read her conversation.
    send(
        &phone,
        To::User("alice"),
        "b1",
        "hello alice",
        SendOptions::default(),
    )
    .await?;
    list_until(&phone, |cs| {
        with_user(cs, "alice").is_some_and(|c| c.unread == 0)
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_or_mute_on_one_device_shows_on_every_device_and_pinned_comes_first()
-> anyhow::Result<()> {
    let (topo, _svc, _dir) = start(900).await?;
    for u in ["bob", "carol"] {
        topo.set_member("team", u, true).await?;
    }
    let alice = topo.connect(0, Quic, "alice", "phone").await?;
    let carol = topo.connect(0, WebSocket, "carol", "phone").await?;
    send(
        &alice,
        To::User("bob"),
        "a1",
        "older",
        SendOptions::default(),
    )
    .await?;
    send(
        &carol,
        To::Group("team"),
        "c1",
        "newer",
        SendOptions::default(),
    )
    .await?;
    let mut phone = topo.connect(0, Quic, "bob", "phone").await?;
    let list = list_until(&phone, |cs| cs.len() == 2).await?;
    anyhow::ensure!(list[0].group.as_deref() == Some("team"), "{list:#?}");
    phone.conversations(0, 50, true).await?;

    // The laptop pins alice: the answer says so, the phone hears it, and the list
    // puts her first although the group spoke last.
    let laptop = topo.connect(0, WebSocket, "bob", "laptop").await?;
    let pinned = laptop
        .set_conversation(To::User("alice"), Some(true), None)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no conversation with alice in the answer"))?;
    anyhow::ensure!(pinned.pinned && !pinned.muted, "{pinned:#?}");
    anyhow::ensure!(text(&pinned) == "older", "{pinned:#?}");
    wait_update(&mut phone, |c| {
        c.user.as_deref() == Some("alice") && c.pinned
    })
    .await?;
    let list = phone.conversations(0, 50, false).await?.conversations;
    anyhow::ensure!(list[0].user.as_deref() == Some("alice"), "{list:#?}");

    // Muting the group leaves its pin alone (not pinned) and shows on the phone.
    let muted = laptop
        .set_conversation(To::Group("team"), None, Some(true))
        .await?
        .ok_or_else(|| anyhow::anyhow!("no group conversation in the answer"))?;
    anyhow::ensure!(muted.muted && !muted.pinned, "{muted:#?}");
    wait_update(&mut phone, |c| {
        c.group.as_deref() == Some("team") && c.muted
    })
    .await?;

    // Unpinned, alice goes back below the newer group; her mute was never set.
    laptop
        .set_conversation(To::User("alice"), Some(false), None)
        .await?;
    let list = phone.conversations(0, 50, false).await?.conversations;
    anyhow::ensure!(list[0].group.as_deref() == Some("team"), "{list:#?}");
    anyhow::ensure!(
        with_user(&list, "alice").is_some_and(|c| !c.pinned && !c.muted),
        "{list:#?}"
    );
    anyhow::ensure!(
        with_group(&list, "team").is_some_and(|c| c.muted),
        "{list:#?}"
    );

    // A group bob is not in is refused in plain words.
    match laptop
        .set_conversation(To::Group("other"), Some(true), None)
        .await
    {
        Err(petrel_client::ClientError::Refused { code, message }) => {
            anyhow::ensure!(code == "FORBIDDEN", "{code}: {message}");
            anyhow::ensure!(message.contains("not a member of group other"), "{message}");
        }
        other => anyhow::bail!("pinning a group bob is not in: {other:?}"),
    }
    Ok(())
}

/// Waits for a ConversationUpdate on `client` that `ok` accepts.
async fn wait_update(
    client: &mut petrel_client::Connection,
    ok: impl Fn(&petrel_client::Conversation) -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, client.next_event()).await {
            Ok(Some(Event::Conversation(c))) if ok(&c) => return Ok(()),
            Ok(Some(_)) => continue,
            Ok(None) => anyhow::bail!("the connection closed"),
            Err(_) => anyhow::bail!("no such conversation update within 15 s"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mentions_count_and_replies_keep_their_reference_through_history() -> anyhow::Result<()> {
    let (topo, _svc, _dir) = start(900).await?;
    for u in ["bob", "carol", "dave"] {
        topo.set_member("team", u, true).await?;
    }
    let carol = topo.connect(0, Quic, "carol", "phone").await?;
    let alice = topo.connect(0, Quic, "alice", "phone").await?;
    let mention = SendOptions {
        mentions: vec!["bob".into()],
        ..Default::default()
    };
    send(&carol, To::Group("team"), "c1", "@bob look", mention).await?;
    send(
        &carol,
        To::Group("team"),
        "c2",
        "anyone?",
        SendOptions::default(),
    )
    .await?;
    let first = send(
        &alice,
        To::User("bob"),
        "a1",
        "lunch?",
        SendOptions::default(),
    )
    .await?;
    let reply = SendOptions {
        reply_to: Some(("msg.private.bob".into(), first)),
        ..Default::default()
    };
    send(&alice, To::User("bob"), "a2", "at noon", reply).await?;
    let bob = topo.connect(0, WebSocket, "bob", "phone").await?;
    let list = list_until(&bob, |cs| {
        with_group(cs, "team").is_some_and(|c| c.unread == 2)
            && with_user(cs, "alice").is_some_and(|c| c.unread == 2)
    })
    .await?;
    anyhow::ensure!(
        with_group(&list, "team").map(|c| c.unread_mentions) == Some(1),
        "{list:#?}"
    );
    // dave was not mentioned.
    let dave = topo.connect(0, Quic, "dave", "phone").await?;
    let dl = list_until(&dave, |cs| with_group(cs, "team").is_some()).await?;
    anyhow::ensure!(with_group(&dl, "team").map(|c| (c.unread, c.unread_mentions)) == Some((2, 0)));
    // The reply's reference, from the archive's conversation history and from the
    // stream's history of the inbox.
    let page = bob.conversation_history("alice", true, 0, 10).await?;
    let ids: Vec<&str> = page
        .messages
        .iter()
        .map(|m| m.client_msg_id.as_str())
        .collect();
    anyhow::ensure!(ids == ["a2", "a1"], "{ids:?}");
    anyhow::ensure!(
        page.messages[0].reply_to == Some(("msg.private.bob".into(), first)),
        "{:?}",
        page.messages[0]
    );
    let stream = bob.history("msg.private.bob", true, 0, 10).await?;
    let a2 = stream.messages.iter().find(|m| m.client_msg_id == "a2");
    anyhow::ensure!(a2.and_then(|m| m.reply_to.clone()) == Some(("msg.private.bob".into(), first)));
    let c1 = bob.history("msg.group.team", false, 0, 10).await?;
    anyhow::ensure!(c1.messages[0].mentions == ["bob"], "{:?}", c1.messages[0]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_and_recalls_inside_the_window_reach_every_device_and_history_outside_it_are_refused()
-> anyhow::Result<()> {
    let window = Duration::from_secs(3);
    let (topo, _svc, _dir) = start(window.as_secs()).await?;
    let alice = topo.connect(0, Quic, "alice", "phone").await?;
    let mut bob = topo.connect(0, WebSocket, "bob", "phone").await?;
    let sent = Instant::now();
    send(
        &alice,
        To::User("bob"),
        "e1",
        "helo",
        SendOptions::default(),
    )
    .await?;
    send(
        &alice,
        To::User("bob"),
        "e2",
        "oops",
        SendOptions::default(),
    )
    .await?;
    // The archive knows both before an amend can find them.
    list_until(&bob, |cs| {
        with_user(cs, "alice").is_some_and(|c| text(c) == "oops")
    })
    .await?;
    let edit = alice
        .sender()
        .start_amend("e1-edit", "e1", Some("hello".into()))
        .await?;
    anyhow::ensure!(matches!(edit.await?, SendResult::Stored { .. }));
    let recall = alice.sender().start_amend("e2-recall", "e2", None).await?;
    anyhow::ensure!(matches!(recall.await?, SendResult::Stored { .. }));
    // bob's device gets both messages and both amendments, in order.
    let mut amendments = Vec::new();
    while amendments.len() < 2 {
        let m = petrel_tests::next_message(&mut bob, 10).await?;
        if let Some(a) = m.amends.clone() {
            amendments.push((a, String::from_utf8_lossy(&m.content).into_owned()));
        }
    }
    anyhow::ensure!(
        amendments
            == [
                (("e1".into(), false), "hello".into()),
                (("e2".into(), true), String::new())
            ],
        "{amendments:?}"
    );
    // History from the archive shows the result.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let page = bob.conversation_history("alice", false, 0, 10).await?;
        let e1 = page.messages.iter().find(|m| m.client_msg_id == "e1");
        let e2 = page.messages.iter().find(|m| m.client_msg_id == "e2");
        if let (Some(e1), Some(e2)) = (e1, e2)
            && &e1.content[..] == b"hello"
            && e1.edited_ms > 0
            && e2.recalled
        {
            anyhow::ensure!(e2.content.is_empty());
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "history never showed the edit: {page:?}"
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    // The list's last message is the recalled one: empty.
    let list = bob.conversations(0, 10, false).await?.conversations;
    let last = with_user(&list, "alice").and_then(|c| c.last.clone());
    anyhow::ensure!(
        last.is_some_and(|m| m.recalled && m.content.is_empty()),
        "{list:#?}"
    );
    // Someone else's message, and a recalled one, cannot be amended.
    let bobs = bob
        .sender()
        .start_amend("x1", "e1", Some("mine now".into()))
        .await?;
    let refused =
        |r: SendResult| matches!(r, SendResult::Rejected { ref code, .. } if code == "FORBIDDEN");
    anyhow::ensure!(refused(bobs.await?));
    let again = alice
        .sender()
        .start_amend("e2-again", "e2", Some("back".into()))
        .await?;
    anyhow::ensure!(refused(again.await?));
    // Past the window: refused with a clear error.
    tokio::time::sleep_until((sent + window + Duration::from_millis(200)).into()).await;
    let late = alice
        .sender()
        .start_amend("e1-late", "e1", Some("too late".into()))
        .await?;
    match late.await? {
        SendResult::Rejected { code, detail } => {
            anyhow::ensure!(
                code == "FORBIDDEN" && detail.contains("no longer"),
                "{code}: {detail}"
            );
        }
        other => anyhow::bail!("a late edit was not refused: {other:?}"),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_past_the_streams_retention_into_the_archive_without_a_gap_or_a_repeat()
-> anyhow::Result<()> {
    let (topo, _svc, _dir) = start(900).await?;
    let alice = topo.connect(0, Quic, "alice", "phone").await?;
    let bob = topo.connect(0, WebSocket, "bob", "phone").await?;
    let mut want = Vec::new();
    for i in 0..12 {
        want.push(
            send(
                &alice,
                To::User("bob"),
                &format!("old{i}"),
                "old",
                SendOptions::default(),
            )
            .await?,
        );
    }
    list_until(&bob, |cs| {
        with_user(cs, "alice").is_some_and(|c| c.unread == 12)
    })
    .await?;
    // Shrink the stream's retention to seconds: what it held so far ages out.
    let js = async_nats::jetstream::with_domain(topo.hub_client.clone(), "hub");
    let mut stream = js.get_stream("USER_MESSAGES").await?;
    let mut cfg = stream.info().await?.config.clone();
    cfg.max_age = Duration::from_secs(2);
    cfg.duplicate_window = Duration::from_secs(1);
    js.update_stream(cfg).await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while stream.info().await?.state.first_sequence <= *want.last().unwrap_or(&0) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the stream never dropped the old messages"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // New ones the stream still holds.
    for i in 0..5 {
        want.push(
            send(
                &alice,
                To::User("bob"),
                &format!("new{i}"),
                "new",
                SendOptions::default(),
            )
            .await?,
        );
    }
    // Scroll back from the newest in pages of 4, across the seam; then forward.
    let got = all_pages(&bob, true, 4).await?;
    want.reverse();
    anyhow::ensure!(got == want, "scrolling back: got {got:?}, want {want:?}");
    let fwd = all_pages(&bob, false, 5).await?;
    want.reverse();
    anyhow::ensure!(fwd == want, "forward: got {fwd:?}, want {want:?}");
    Ok(())
}

/// Every page of bob's inbox history in one direction until an empty one: the
/// sequences of alice's messages.
async fn all_pages(bob: &Connection, newest_first: bool, size: u32) -> anyhow::Result<Vec<u64>> {
    let mut out = Vec::new();
    let mut from = 0;
    for _ in 0..100 {
        let page = bob
            .history("msg.private.bob", newest_first, from, size)
            .await?;
        let Some(last) = page.messages.last() else {
            return Ok(out);
        };
        from = last.seq;
        out.extend(
            page.messages
                .iter()
                .filter(|m| m.from == "alice")
                .map(|m| m.seq),
        );
    }
    anyhow::bail!("history never ended: {out:?}")
}

/// Counts in the archive: rows, and (subject, seq) keys held more than once.
async fn archive_counts(url: &str) -> anyhow::Result<(i64, i64)> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    let driving = tokio::spawn(conn);
    let rows: i64 = client
        .query_one("SELECT count(*) FROM archive", &[])
        .await?
        .get(0);
    let twice: i64 = client
        .query_one(
            "SELECT count(*) FROM (SELECT 1 FROM archive GROUP BY subject, seq HAVING count(*) > 1) d",
            &[],
        )
        .await?
        .get(0);
    drop(client);
    let _ = driving.await;
    Ok((rows, twice))
}

/// `n` sends from alice to bob, `per_tick` at a time, ids `{tag}{i}`.
async fn load(alice: &Connection, tag: &str, n: usize) -> anyhow::Result<()> {
    let mut answers = Vec::new();
    for i in 0..n {
        answers.push(
            alice
                .sender()
                .start_send_with(
                    To::User("bob"),
                    &format!("{tag}{i}"),
                    b"load".to_vec(),
                    "text/plain",
                    SendOptions::default(),
                )
                .await?,
        );
    }
    for a in answers {
        anyhow::ensure!(matches!(
            a.await?,
            SendResult::Stored { .. } | SendResult::Queued { .. }
        ));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_worker_killed_under_load_and_restarted_archives_every_message_once()
-> anyhow::Result<()> {
    let (topo, mut svc, dir) = start(900).await?;
    // The worker as its own process, so that it can be SIGKILLed.
    svc.stop_worker().await?;
    let bin = petrel_tests::petrel_bin()?;
    let spawn = || -> anyhow::Result<tokio::process::Child> {
        let log = std::fs::File::create(dir.path().join(format!(
            "worker-{}.log",
            petrel_devkit::process::free_port()?
        )))?;
        let mut cmd = tokio::process::Command::new(&bin);
        cmd.arg("messages")
            .arg("--config")
            .arg(&svc.config)
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        Ok(cmd.spawn()?)
    };
    let mut worker = spawn()?;
    let alice = topo.connect(0, Quic, "alice", "phone").await?;
    let bob = topo.connect(0, WebSocket, "bob", "phone").await?;
    let sending = {
        let alice = alice.sender();
        tokio::spawn(async move {
            let c = alice;
            let mut answers = Vec::new();
            for i in 0..400 {
                answers.push(
                    c.start_send_with(
                        To::User("bob"),
                        &format!("k{i}"),
                        b"load".to_vec(),
                        "text/plain",
                        SendOptions::default(),
                    )
                    .await?,
                );
                if i % 20 == 19 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            for a in answers {
                anyhow::ensure!(matches!(
                    a.await?,
                    SendResult::Stored { .. } | SendResult::Queued { .. }
                ));
            }
            anyhow::Ok(())
        })
    };
    // Kill it while the load runs, once it has archived some of it.
    let deadline = Instant::now() + Duration::from_secs(20);
    while archive_counts(&svc.postgres.url).await?.0 < 100 {
        anyhow::ensure!(Instant::now() < deadline, "the worker never archived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    worker.start_kill()?;
    let _ = worker.wait().await;
    let _worker = spawn()?;
    sending.await??;
    load(&alice, "after", 50).await?;
    // alice→bob: two copies each (bob's inbox, alice's own).
    let want = 2 * (400 + 50);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (rows, twice) = archive_counts(&svc.postgres.url).await?;
        anyhow::ensure!(twice == 0, "{twice} messages archived twice");
        if rows == want {
            break;
        }
        anyhow::ensure!(rows < want, "{rows} rows, more than the {want} stored");
        anyhow::ensure!(Instant::now() < deadline, "{rows} of {want} archived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let list = list_until(&bob, |cs| {
        with_user(cs, "alice").is_some_and(|c| c.unread >= 450)
    })
    .await?;
    anyhow::ensure!(
        with_user(&list, "alice").map(|c| c.unread) == Some(450),
        "{list:#?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_postgres_away_for_30_s_messaging_goes_on_and_the_archive_catches_up()
-> anyhow::Result<()> {
    let (topo, mut svc, _dir) = start(900).await?;
    let alice = topo.connect(0, Quic, "alice", "phone").await?;
    let mut bob = topo.connect(0, WebSocket, "bob", "phone").await?;
    load(&alice, "before", 20).await?;
    list_until(&bob, |cs| {
        with_user(cs, "alice").is_some_and(|c| c.unread == 20)
    })
    .await?;
    svc.postgres.stop().await;
    let away = Instant::now();
    // Messages are stored and delivered meanwhile.
    let mut delivered = 0;
    let mut n = 0;
    while away.elapsed() < Duration::from_secs(30) {
        load(&alice, &format!("away{n}-"), 10).await?;
        n += 1;
        while delivered < 20 + 10 * n {
            let m = petrel_tests::next_message(&mut bob, 10).await?;
            if m.from == "alice" {
                delivered += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The list is unavailable, not wrong.
    match bob.conversations(0, 10, false).await {
        Err(petrel_client::ClientError::Refused { code, .. }) => {
            anyhow::ensure!(code == "UNAVAILABLE")
        }
        other => anyhow::bail!("with PostgreSQL away: {other:?}"),
    }
    svc.postgres.resume().await?;
    let total = 20 + 10 * n as u32;
    list_until(&bob, |cs| {
        with_user(cs, "alice").is_some_and(|c| c.unread == total)
    })
    .await?;
    let (rows, twice) = archive_counts(&svc.postgres.url).await?;
    anyhow::ensure!(
        twice == 0 && rows == 2 * i64::from(total),
        "{rows} rows, {twice} twice"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alerts_use_only_message_metrics_that_exist() -> anyhow::Result<()> {
    let (_topo, svc, _dir) = start(900).await?;
    let addr = svc
        .metrics
        .trim_start_matches("http://")
        .trim_end_matches("/metrics")
        .to_string();
    let (status, text) = petrel_devkit::http_get(&addr, "/metrics").await?;
    anyhow::ensure!(status == 200, "{status}");
    let known = petrel_tests::series_names(&text);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let alerts = std::fs::read_to_string(root.join("deploy/prometheus/alerts.yml"))?;
    let used = petrel_tests::names_used(&alerts, "petrel_messages_");
    anyhow::ensure!(used.len() >= 2, "{used:?}");
    for name in used {
        anyhow::ensure!(
            known.contains(&name),
            "alerts.yml uses {name}; a worker has {known:?}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconnecting_client_keeps_the_conversation_list_and_shows_it_offline()
-> anyhow::Result<()> {
    use petrel_client::{Client, ClientOptions};
    let (topo, _svc, dir) = start(900).await?;
    let alice = topo.connect(0, Quic, "alice", "phone").await?;
    for i in 0..2 {
        send(
            &alice,
            To::User("bob"),
            &format!("c{i}"),
            "see you",
            SendOptions::default(),
        )
        .await?;
    }
    let state = dir.path().join("bob-phone.db");
    let mut opts = ClientOptions::new(vec![topo.endpoint(0, Quic)], topo.token("bob"), "phone");
    opts.state = Some(state.clone());
    let bob = Client::start(opts)?;
    let deadline = Instant::now() + Duration::from_secs(15);
    let online = loop {
        // Answered from the state file until connected; then by the service.
        let page = bob.conversations(0, 50).await?;
        if !page.cached && with_user(&page.conversations, "alice").is_some_and(|c| c.unread == 2) {
            break page;
        }
        anyhow::ensure!(Instant::now() < deadline, "never listed: {page:#?}");
        tokio::time::sleep(Duration::from_millis(150)).await;
    };
    bob.close().await;
    // The app opened again with no network: the gateway's address leads nowhere.
    let nowhere = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let mut ep = topo.endpoint(0, Quic);
    ep.address = nowhere.local_addr()?.to_string();
    let mut opts = ClientOptions::new(vec![ep], topo.token("bob"), "phone");
    opts.state = Some(state);
    let bob = Client::start(opts)?;
    let offline = bob.conversations(0, 50).await?;
    anyhow::ensure!(offline.cached, "answered by a service it cannot reach");
    anyhow::ensure!(
        offline.conversations == online.conversations,
        "offline {:#?} online {:#?}",
        offline.conversations,
        online.conversations
    );
    bob.close().await;
    Ok(())
}
