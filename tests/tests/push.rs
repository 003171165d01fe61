//! The push service end to end: a 3-node hub, Redis and gateways; push workers (in
//! this process, or `petrel push` processes where one is killed); the fake providers
//! of `petrel_devkit::push`, which speak the real protocols (APNs over HTTP/2 and TLS
//! with the provider token checked, FCM's OAuth grant and v1 API, Web Push with the
//! VAPID token checked and the payload decrypted with the subscription's key).

use std::time::Duration;

use petrel_client::{SendResult, TransportKind::*};
use petrel_devkit::push::Received;
use petrel_tests::petrel_bin;
use petrel_tests::push::{Rig, apns, fcm, header, scrape, send, wait_healthy, webpush, wp_id};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_message_wakes_each_offline_device_once_and_never_an_online_one() -> anyhow::Result<()>
{
    let rig = Rig::start(1).await?;
    let _worker = rig.worker("").await?;
    let browser = webpush(&rig.fakes, "bob-browser");
    rig.register("bob", "phone", apns("b0b0"), None).await?;
    rig.register("bob", "tablet", fcm("bob-tablet-token"), None)
        .await?;
    rig.register("bob", "browser", browser.clone(), None)
        .await?;
    let alice = rig.topo.connect(0, Quic, "alice", "laptop").await?;

    send(&alice, "bob", "m1", "hi").await?;
    let wait = Duration::from_secs(15);
    let phone = rig.fakes.wait_delivered("b0b0", 1, wait).await?;
    let tablet = rig
        .fakes
        .wait_delivered("bob-tablet-token", 1, wait)
        .await?;
    let web = rig.fakes.wait_delivered("bob-browser", 1, wait).await?;

    let p = &phone[0];
    anyhow::ensure!(p.version == "HTTP/2.0", "APNs over {}", p.version);
    anyhow::ensure!(header(p, "apns-topic") == "com.example.petrel");
    anyhow::ensure!(header(p, "apns-push-type") == "alert");
    anyhow::ensure!(header(p, "apns-priority") == "10");
    anyhow::ensure!(!header(p, "apns-collapse-id").is_empty());
    let exp: u64 = header(p, "apns-expiration").parse()?;
    anyhow::ensure!(
        exp > petrel_core::time::unix_ms() / 1000,
        "apns-expiration {exp} is past"
    );
    anyhow::ensure!(p.body["aps"]["alert"]["title"] == "alice", "{}", p.body);
    anyhow::ensure!(p.body["aps"]["alert"]["body"] == "hi", "{}", p.body);
    anyhow::ensure!(p.body["aps"]["badge"] == 1, "{}", p.body);

    let t = &tablet[0];
    anyhow::ensure!(t.body["notification"]["body"] == "hi", "{}", t.body);
    anyhow::ensure!(t.body["android"]["priority"] == "HIGH", "{}", t.body);
    anyhow::ensure!(
        t.body["android"]["collapse_key"] == header(p, "apns-collapse-id"),
        "{}",
        t.body
    );
    anyhow::ensure!(
        t.body["android"]["ttl"]
            .as_str()
            .is_some_and(|s| s.ends_with('s'))
    );

    let w = &web[0];
    anyhow::ensure!(
        w.body["title"] == "alice" && w.body["body"] == "hi",
        "decrypted {}",
        w.body
    );
    anyhow::ensure!(header(w, "urgency") == "high" && !header(w, "ttl").is_empty());
    anyhow::ensure!(header(w, "topic") == header(p, "apns-collapse-id"));
    anyhow::ensure!(!w.raw.contains("hi\""), "the Web Push body is encrypted");

    // bob opens the app on the phone: the phone hears it live, the others are woken.
    let mut on_phone = rig.topo.connect(0, Quic, "bob", "phone").await?;
    send(&alice, "bob", "m2", "again").await?;
    let live = petrel_tests::next_message_on(&mut on_phone, "msg.private.bob", 10).await?;
    on_phone.ack(&live.subject, live.seq).await?;
    rig.fakes
        .wait_delivered("bob-tablet-token", 2, wait)
        .await?;
    rig.fakes.wait_delivered(&wp_id(&browser), 2, wait).await?;
    // Past the grace and window again: still nothing more for the phone.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let phone_now = rig.fakes.delivered_to("b0b0");
    anyhow::ensure!(
        phone_now.len() == 1,
        "the online phone was pushed: {phone_now:?}"
    );
    for token in ["b0b0", "bob-tablet-token", "bob-browser"] {
        let all: Vec<_> = rig
            .fakes
            .received()
            .into_iter()
            .filter(|r| r.token == token)
            .collect();
        anyhow::ensure!(
            all.iter().all(|r| (200..300).contains(&r.status)),
            "{token}: {all:?}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_message_wakes_each_offline_member_once_never_the_sender() -> anyhow::Result<()> {
    let rig = Rig::start(1).await?;
    let _worker = rig.worker("").await?;
    for u in ["alice", "carol", "dave"] {
        rig.topo.set_member("team", u, true).await?;
    }
    rig.register("alice", "phone", fcm("alice-phone"), None)
        .await?;
    rig.register("carol", "phone", fcm("carol-phone"), None)
        .await?;
    rig.register("dave", "phone", apns("da7e"), None).await?;
    let alice = rig.topo.connect(0, Quic, "alice", "laptop").await?;
    match alice
        .send_group("team", "g1", b"standup in 5".to_vec())
        .await?
    {
        SendResult::Stored { .. } => {}
        other => anyhow::bail!("{other:?}"),
    }
    let wait = Duration::from_secs(15);
    let carol = rig.fakes.wait_delivered("carol-phone", 1, wait).await?;
    rig.fakes.wait_delivered("da7e", 1, wait).await?;
    anyhow::ensure!(
        carol[0].body["notification"]["title"] == "alice in team",
        "{}",
        carol[0].body
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    anyhow::ensure!(rig.fakes.delivered_to("carol-phone").len() == 1);
    anyhow::ensure!(rig.fakes.delivered_to("da7e").len() == 1);
    anyhow::ensure!(
        rig.fakes
            .received()
            .iter()
            .all(|r| r.token != "alice-phone"),
        "the sender's own device was pushed"
    );
    Ok(())
}

/// Every `petrel_push_*` name the alert rules and the dashboard use is on a worker's
/// `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_and_dashboard_use_only_push_metrics_that_exist() -> anyhow::Result<()> {
    let rig = Rig::start(1).await?;
    let (path, metrics) = rig.config("metrics", "")?;
    let stop = CancellationToken::new();
    tokio::spawn(petrel_push::run(
        petrel_push::PushConfig::load(&path)?,
        stop.clone(),
    ));
    wait_healthy(metrics).await?;
    let text = scrape(metrics).await?;
    let known = petrel_tests::series_names(&text);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut used = 0;
    for file in [
        "deploy/prometheus/alerts.yml",
        "deploy/grafana/petrel-dashboard.json",
    ] {
        let text = std::fs::read_to_string(root.join(file))?;
        for name in petrel_tests::names_used(&text, "petrel_push_") {
            used += 1;
            anyhow::ensure!(
                known.contains(&name),
                "{file} uses {name}; a worker has {known:?}"
            );
        }
    }
    anyhow::ensure!(used >= 5, "only {used} push metrics used");
    stop.cancel();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_a_hundred_makes_a_few_pushes_the_last_with_the_count() -> anyhow::Result<()> {
    let rig = Rig::start(1).await?;
    let _worker = rig.worker("").await?;
    rig.register("bob", "tablet", fcm("bob-tablet"), None)
        .await?;
    let alice = rig.topo.connect(0, Quic, "alice", "laptop").await?;
    let started = std::time::Instant::now();
    let mut answers = Vec::new();
    for i in 0..100 {
        answers.push(
            alice
                .start_send(
                    "bob",
                    &format!("burst-{i}"),
                    format!("message {i}"),
                    "text/plain",
                )
                .await?,
        );
    }
    for a in answers {
        let r = a.await?;
        anyhow::ensure!(matches!(r, SendResult::Stored { .. }), "{r:?}");
    }
    let took = started.elapsed();
    // Wait until the count adds up to the hundred (or time runs out).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let pushes = loop {
        let got = rig.fakes.delivered_to("bob-tablet");
        let counted: u64 = got.iter().map(count_of).sum();
        if counted >= 100 || tokio::time::Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let pushes_after = rig.fakes.delivered_to("bob-tablet");
    anyhow::ensure!(
        pushes_after.len() == pushes.len(),
        "more pushes after the count was reached"
    );
    let counts: Vec<u64> = pushes.iter().map(count_of).collect();
    println!(
        "100 sends in {took:?} made {} pushes, counts {counts:?}",
        pushes.len()
    );
    anyhow::ensure!(counts.iter().sum::<u64>() == 100, "counts {counts:?}");
    let max = 1 + took.as_millis() as usize / 1000 + 1;
    anyhow::ensure!(
        pushes.len() <= max,
        "{} pushes for a {took:?} burst (at most {max})",
        pushes.len()
    );
    let last = pushes.last().map(|p| p.body.clone()).unwrap_or_default();
    anyhow::ensure!(
        last["data"]["badge"] == "100",
        "the last push's badge: {last}"
    );
    anyhow::ensure!(
        last["android"]["notification"]["notification_count"] == 100,
        "{last}"
    );
    Ok(())
}

fn count_of(r: &Received) -> u64 {
    r.body["data"]["count"]
        .as_str()
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_targets_are_pruned_retries_deliver_once_and_failures_are_dead_lettered()
-> anyhow::Result<()> {
    let rig = Rig::start(1).await?;
    let _worker = rig.worker("").await?;
    // Scripted tokens: `gone…` (`dead…` for hex APNs tokens) answers 410 /
    // UNREGISTERED, `flaky…` one 503, `broken…` 500.
    rig.register("carol", "tablet", fcm("gone-tablet"), None)
        .await?;
    rig.register("carol", "old-phone", apns("dead01"), None)
        .await?;
    rig.register("carol", "phone", fcm("flaky-phone"), None)
        .await?;
    let broken = webpush(&rig.fakes, "broken-browser");
    rig.register("carol", "browser", broken, None).await?;
    let alice = rig.topo.connect(0, Quic, "alice", "laptop").await?;
    send(&alice, "carol", "c1", "first").await?;

    let wait = Duration::from_secs(20);
    // 503 then 200: delivered once after the retry.
    rig.fakes.wait_delivered("flaky-phone", 1, wait).await?;
    let tries: Vec<u16> = rig
        .fakes
        .received()
        .iter()
        .filter(|r| r.token == "flaky-phone")
        .map(|r| r.status)
        .collect();
    anyhow::ensure!(tries == [503, 200], "flaky: {tries:?}");
    // Always 500: dead-lettered with the reason after the configured 3 attempts.
    let letter = wait_dead_letter(&rig, "webpush", wait).await?;
    anyhow::ensure!(
        letter["user"] == "carol" && letter["device"] == "browser",
        "{letter}"
    );
    anyhow::ensure!(letter["attempts"] == 3, "{letter}");
    anyhow::ensure!(
        letter["reason"].as_str().is_some_and(|r| r.contains("500")),
        "{letter}"
    );
    let broken_tries = rig
        .fakes
        .received()
        .iter()
        .filter(|r| r.token == "broken-browser")
        .count();
    anyhow::ensure!(broken_tries == 3, "broken: {broken_tries} attempts");
    // 404 UNREGISTERED: removed from the registry, and never tried again.
    let registry = petrel_gateway::hub::PushRegistry::new(
        rig.topo.hub_client.clone(),
        "hub",
        Duration::from_secs(5),
    );
    let carol = petrel_core::UserId::parse("carol")?;
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let d = registry.devices(&carol).await?.devices;
        if !d.contains_key("tablet") && !d.contains_key("old-phone") {
            anyhow::ensure!(
                d.contains_key("phone") && d.contains_key("browser"),
                "{d:?}"
            );
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "dead targets never pruned: {d:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let tried = |t: &str| rig.fakes.received().iter().filter(|r| r.token == t).count();
    anyhow::ensure!(
        tried("gone-tablet") == 1 && tried("dead01") == 1,
        "dead targets tried more than once"
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    send(&alice, "carol", "c2", "second").await?;
    rig.fakes.wait_delivered("flaky-phone", 2, wait).await?;
    anyhow::ensure!(
        tried("gone-tablet") == 1 && tried("dead01") == 1,
        "a pruned target was tried again"
    );
    Ok(())
}

/// The last dead letter on `push.dead.{platform}`, waiting for one.
async fn wait_dead_letter(
    rig: &Rig,
    platform: &str,
    wait: Duration,
) -> anyhow::Result<serde_json::Value> {
    let js = async_nats::jetstream::with_domain(rig.topo.hub_client.clone(), "hub");
    let stream = js
        .get_stream(petrel_core::subject::PUSH_DEAD_LETTER_STREAM)
        .await?;
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if let Ok(m) = stream
            .get_last_raw_message_by_subject(&petrel_core::subject::push_dead_letter(platform))
            .await
        {
            return Ok(serde_json::from_slice(&m.payload)?);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no dead letter for {platform}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preview_off_keeps_the_text_out_of_every_provider_request() -> anyhow::Result<()> {
    let rig = Rig::start(1).await?;
    // Default hide for devices that leave it to the service; the browser asks to hide.
    let _worker = rig.worker("preview = \"hide\"\n").await?;
    let browser = webpush(&rig.fakes, "bob-browser");
    rig.register("bob", "phone", apns("0b0b"), None).await?;
    rig.register("bob", "tablet", fcm("bob-tablet"), None)
        .await?;
    rig.register("bob", "browser", browser, Some(false)).await?;
    let alice = rig.topo.connect(0, Quic, "alice", "laptop").await?;
    send(&alice, "bob", "s1", "the launch code is swordfish").await?;
    let wait = Duration::from_secs(15);
    let mut all = Vec::new();
    all.extend(rig.fakes.wait_delivered("0b0b", 1, wait).await?);
    all.extend(rig.fakes.wait_delivered("bob-tablet", 1, wait).await?);
    all.extend(rig.fakes.wait_delivered("bob-browser", 1, wait).await?);
    for r in &all {
        let seen = format!("{} {} {:?}", r.raw, r.body, r.headers);
        anyhow::ensure!(
            !seen.contains("swordfish"),
            "{}: text left the system: {seen}",
            r.provider
        );
        anyhow::ensure!(
            !seen.contains("alice"),
            "{}: the sender left the system: {seen}",
            r.provider
        );
    }
    anyhow::ensure!(
        all[0].body["aps"]["alert"]["body"] == "New message",
        "{}",
        all[0].body
    );
    // A device that asks for previews gets them even under the hide default.
    rig.register("bob", "phone", apns("0b0b"), Some(true))
        .await?;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    send(&alice, "bob", "s2", "visible now").await?;
    let phone = rig.fakes.wait_delivered("0b0b", 2, wait).await?;
    anyhow::ensure!(
        phone[1].body["aps"]["alert"]["body"] == "visible now",
        "{}",
        phone[1].body
    );
    Ok(())
}

/// A `petrel push` process.
struct WorkerProcess {
    child: tokio::process::Child,
    metrics: std::net::SocketAddr,
}

async fn spawn_worker(rig: &Rig, name: &str) -> anyhow::Result<WorkerProcess> {
    let (config, metrics) = rig.config(name, "")?;
    let log = std::fs::File::create(rig.dir.path().join(format!("{name}.log")))?;
    let mut cmd = tokio::process::Command::new(petrel_bin()?);
    cmd.arg("push")
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "petrel_push=debug,info")
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true);
    let child = cmd.spawn()?;
    wait_healthy(metrics).await?;
    Ok(WorkerProcess { child, metrics })
}

fn messages_taken(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("petrel_push_messages_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_the_load_and_one_killed_mid_batch_loses_nothing() -> anyhow::Result<()> {
    let rig = Rig::start(1).await?;
    let mut a = spawn_worker(&rig, "worker-a").await?;
    let b = spawn_worker(&rig, "worker-b").await?;
    let users: Vec<String> = (0..30).map(|i| format!("user{i:02}")).collect();
    for u in &users {
        rig.register(u, "phone", fcm(&format!("{u}-phone")), None)
            .await?;
    }
    let alice = rig.topo.connect(0, Quic, "alice", "laptop").await?;
    let wait = Duration::from_secs(30);

    // Round one: both workers take messages.
    for u in &users {
        send(&alice, u, &format!("one-{u}"), "round one").await?;
    }
    for u in &users {
        rig.fakes
            .wait_delivered(&format!("{u}-phone"), 1, wait)
            .await?;
    }
    let (taken_a, taken_b) = (
        messages_taken(&scrape(a.metrics).await?),
        messages_taken(&scrape(b.metrics).await?),
    );
    println!("round one: worker a took {taken_a}, worker b took {taken_b}");
    anyhow::ensure!(
        taken_a > 0 && taken_b > 0,
        "one worker took everything: {taken_a} / {taken_b}"
    );

    // Round two: worker a is killed while it holds messages (inside the grace).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for u in &users {
        send(&alice, u, &format!("two-{u}"), "round two").await?;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    a.child.start_kill()?;
    let _ = a.child.wait().await;
    let mut duplicates = 0;
    for u in &users {
        let got = rig
            .fakes
            .wait_delivered(&format!("{u}-phone"), 2, wait)
            .await?;
        duplicates += got.len().saturating_sub(2);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let extra: usize = users
        .iter()
        .map(|u| {
            rig.fakes
                .delivered_to(&format!("{u}-phone"))
                .len()
                .saturating_sub(2)
        })
        .sum();
    let taken_b2 = messages_taken(&scrape(b.metrics).await?);
    println!(
        "round two: worker b took {} stored messages (its own and worker a's redelivered)",
        taken_b2 - taken_b
    );
    println!(
        "round two: worker a killed; every device pushed; {extra} pushes beyond one per message (collapsed by the provider's collapse key), {duplicates} seen by the first check"
    );
    // A repeat carries the same collapse key as the push it repeats.
    for u in &users {
        let got = rig.fakes.delivered_to(&format!("{u}-phone"));
        let keys: std::collections::HashSet<_> = got
            .iter()
            .map(|r| r.body["android"]["collapse_key"].clone())
            .collect();
        anyhow::ensure!(
            keys.len() == 1,
            "{u}: pushes of one conversation with different collapse keys"
        );
    }
    drop(b);
    Ok(())
}
