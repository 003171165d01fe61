//! What users would pick instead of Petrel, measured the same way in the same run
//! (`petrel bench --compare`):
//!
//! - `fanout` — clients on nats-server's own WebSocket listener (async-nats over
//!   `ws://`, core NATS, nothing stored), and Mosquitto with MQTT QoS 1 (rumqttc);
//! - `pairs` — the raw async-nats path through the same topology: JetStream publish
//!   on edge 0's leaf, the stream's re-publish received on edge 1's leaf (what the
//!   gateways do, without them);
//! - `ingest` — raw async-nats JetStream publishing, pipelined, on the same hub (the
//!   ceiling of what the gateway's publishing can reach).
//!
//! Same message sizes, rates, member counts and latency stamps as the Petrel runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;

use crate::hist::Latency;
use crate::measure::{progress, wait_for};
use crate::report::Report;
use crate::topo::Target;
use petrel_devkit::process::{Server, which};

/// Tallies of the subscribers of a peer fan-out.
#[derive(Default)]
struct Subs {
    count: Arc<AtomicU64>,
    stop: tokio_util::sync::CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<(Latency, Option<Instant>)>>,
}

async fn finish_fanout(
    mut r: Report,
    subs: Subs,
    sent: u64,
    members: usize,
    started: Instant,
) -> anyhow::Result<Report> {
    let want = sent * members as u64;
    let got = wait_for(&subs.count, want, Duration::from_secs(10), "delivering").await;
    subs.stop.cancel();
    let mut lat = Latency::new();
    let mut last = None;
    for t in subs.tasks {
        let (l, at) = t.await?;
        lat.merge(&l);
        last = last.max(at);
    }
    r.seconds = last
        .map(|l: Instant| l.duration_since(started))
        .unwrap_or_else(|| started.elapsed())
        .as_secs_f64();
    r.sent = sent;
    r.delivered = got;
    r.lost = want.saturating_sub(got);
    r.rate = got as f64 / r.seconds;
    r.rate_unit = "deliveries/s".into();
    r.latency = lat.summary();
    Ok(r)
}

/// Runs `publish` at `rate` per second for `duration`, with progress; returns how many.
async fn paced<F, Fut>(rate: u64, duration: u64, mut publish: F) -> anyhow::Result<u64>
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let end = Instant::now() + Duration::from_secs(duration);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let pb = progress(rate * duration, "sending");
    let mut n = 0;
    while Instant::now() < end {
        tick.tick().await;
        publish(n).await?;
        n += 1;
        pb.set_position(n);
    }
    pb.finish_and_clear();
    Ok(n)
}

/// Fan-out to `members` subscribers on nats-server's WebSocket listener.
pub async fn nats_websocket_fanout(
    members: usize,
    rate: u64,
    duration: u64,
    size: usize,
) -> anyhow::Result<Report> {
    let bin = petrel_devkit::nats::nats_server_bin();
    let server = Server::start(&bin, &["-c"], "ws.conf", |port| {
        format!("listen: \"127.0.0.1:-1\"\nwebsocket {{\n  listen: \"127.0.0.1:{port}\"\n  no_tls: true\n}}\nmax_payload: 1MB\n")
    })
    .await?;
    let url = format!("ws://127.0.0.1:{}", server.port);
    let mut subs = Subs::default();
    let pb = progress(members as u64, "connecting");
    for _ in 0..members {
        let c = async_nats::connect(&url)
            .await
            .with_context(|| format!("connecting to {url}"))?;
        let mut sub = c.subscribe("bench.fan").await?;
        c.flush().await?;
        let count = subs.count.clone();
        let stop = subs.stop.clone();
        subs.tasks.push(tokio::spawn(async move {
            let _keep = c;
            let mut lat = Latency::new();
            let mut last = None;
            while let Some(m) = tokio::select! {
                _ = stop.cancelled() => None,
                m = sub.next() => m,
            } {
                if let Some(a) = crate::age(&m.payload) {
                    lat.record(a);
                }
                last = Some(Instant::now());
                count.fetch_add(1, Ordering::Relaxed);
            }
            (lat, last)
        }));
        pb.inc(1);
    }
    pb.finish_and_clear();
    let publisher = async_nats::connect(&url).await?;
    let started = Instant::now();
    let sent = paced(rate, duration, |_| {
        let p = publisher.clone();
        async move {
            p.publish("bench.fan", crate::stamped(size)).await?;
            Ok(())
        }
    })
    .await?;
    publisher.flush().await?;
    let r = Report::new(
        "fanout",
        "nats-websocket",
        serde_json::json!({"members": members, "rate": rate, "duration_s": duration, "size": size}),
    );
    let r = finish_fanout(r, subs, sent, members, started).await;
    drop(server);
    r
}

/// Fan-out to `members` MQTT QoS 1 subscribers of Mosquitto.
pub async fn mqtt_fanout(
    members: usize,
    rate: u64,
    duration: u64,
    size: usize,
) -> anyhow::Result<Report> {
    let bin = which("mosquitto")
        .context("mosquitto is not installed (scripts/bootstrap.sh installs it from Debian)")?;
    let server = Server::start(&bin, &["-c"], "mosquitto.conf", |port| {
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 100000\nmax_inflight_messages 1000\npersistence false\n"
        )
    })
    .await?;
    let mut subs = Subs::default();
    let pb = progress(members as u64, "connecting");
    for i in 0..members {
        let mut opts = rumqttc::MqttOptions::new(format!("s{i}"), "127.0.0.1", server.port);
        opts.set_keep_alive(Duration::from_secs(60));
        opts.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut events) = rumqttc::AsyncClient::new(opts, 1024);
        client
            .subscribe("bench/fan", rumqttc::QoS::AtLeastOnce)
            .await?;
        // Subscribed once the broker says so.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ev = tokio::time::timeout_at(deadline.into(), events.poll())
                .await
                .context("no SUBACK from mosquitto")?;
            if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) = ev {
                break;
            }
            ev.context("MQTT connection")?;
        }
        let count = subs.count.clone();
        let stop = subs.stop.clone();
        subs.tasks.push(tokio::spawn(async move {
            let _keep = client;
            let mut lat = Latency::new();
            let mut last = None;
            while let Some(Ok(ev)) = tokio::select! {
                _ = stop.cancelled() => None,
                ev = events.poll() => Some(ev),
            } {
                if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) = ev {
                    if let Some(a) = crate::age(&p.payload) {
                        lat.record(a);
                    }
                    last = Some(Instant::now());
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
            (lat, last)
        }));
        pb.inc(1);
    }
    pb.finish_and_clear();
    let opts = rumqttc::MqttOptions::new("publisher", "127.0.0.1", server.port);
    let (publisher, mut pub_events) = rumqttc::AsyncClient::new(opts, 4096);
    let pub_loop = tokio::spawn(async move { while pub_events.poll().await.is_ok() {} });
    let started = Instant::now();
    let sent = paced(rate, duration, |_| {
        let p = publisher.clone();
        async move {
            p.publish(
                "bench/fan",
                rumqttc::QoS::AtLeastOnce,
                false,
                crate::stamped(size).to_vec(),
            )
            .await?;
            Ok(())
        }
    })
    .await?;
    let r = Report::new(
        "fanout",
        "mosquitto-mqtt-qos1",
        serde_json::json!({"members": members, "rate": rate, "duration_s": duration, "size": size}),
    );
    let r = finish_fanout(r, subs, sent, members, started).await;
    pub_loop.abort();
    drop(server);
    r
}

/// The raw async-nats path of `pairs`: JetStream publish on edge 0's leaf, the live
/// re-publish received on edge 1's leaf.
pub async fn raw_nats_pairs(
    target: &Target,
    run: &str,
    pairs: usize,
    rate: u64,
    duration: u64,
    size: usize,
) -> anyhow::Result<Report> {
    let leaf0 = target.edge(0).nats_leaf;
    let leaf1 = target.edge(1).nats_leaf;
    let count = Arc::new(AtomicU64::new(0));
    let stop = tokio_util::sync::CancellationToken::new();
    let mut tasks = Vec::new();
    let mut subjects = Vec::new();
    for i in 0..pairs {
        let user = petrel_core::UserId::parse(format!("{run}-raw{i}"))?;
        let c = petrel_devkit::nats::connect(&leaf1).await?;
        let mut sub = c
            .subscribe(petrel_core::subject::live_private_inbox(&user))
            .await?;
        c.flush().await?;
        let count = count.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let _keep = c;
            let mut lat = Latency::new();
            while let Some(m) = tokio::select! {
                _ = stop.cancelled() => None,
                m = sub.next() => m,
            } {
                if let Some(a) = crate::age(&m.payload) {
                    lat.record(a);
                }
                count.fetch_add(1, Ordering::Relaxed);
            }
            lat
        }));
        subjects.push(petrel_core::subject::private_inbox(&user));
    }
    // The subscriptions have to reach the hub through the leaf links: probe until a
    // message published on edge 0's leaf arrives on edge 1's.
    probe_interest(&leaf0, &leaf1, run).await?;
    let stored = Arc::new(AtomicU64::new(0));
    let mut senders = Vec::new();
    let period = Duration::from_secs_f64(pairs as f64 / rate as f64);
    let end = Instant::now() + Duration::from_secs(duration);
    let started = Instant::now();
    for (i, subject) in subjects.into_iter().enumerate() {
        let js =
            async_nats::jetstream::with_domain(petrel_devkit::nats::connect(&leaf0).await?, "hub");
        let stored = stored.clone();
        let run = run.to_string();
        senders.push(tokio::spawn(async move {
            tokio::time::sleep(period.mul_f64(i as f64 / pairs as f64)).await;
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut acks = Vec::new();
            let mut n = 0u64;
            while Instant::now() < end {
                tick.tick().await;
                let mut h = async_nats::HeaderMap::new();
                h.insert("Nats-Msg-Id", format!("{run}-raw{i}-{n}").as_str());
                n += 1;
                match js
                    .publish_with_headers(subject.clone(), h, crate::stamped(size))
                    .await
                {
                    Ok(ack) => acks.push(ack),
                    Err(_) => break,
                }
            }
            for a in acks {
                if a.await.is_ok() {
                    stored.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for s in senders {
        s.await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let want = stored.load(Ordering::Relaxed);
    let got = wait_for(&count, want, Duration::from_secs(10), "delivering").await;
    stop.cancel();
    let mut lat = Latency::new();
    for t in tasks {
        lat.merge(&t.await?);
    }
    let mut r = Report::new(
        "pairs",
        "raw-async-nats",
        serde_json::json!({"pairs": pairs, "rate": rate, "duration_s": duration, "size": size}),
    );
    r.seconds = seconds;
    r.sent = want;
    r.delivered = got;
    r.lost = want.saturating_sub(got);
    r.rate = got as f64 / seconds;
    r.rate_unit = "msgs/s".into();
    r.latency = lat.summary();
    Ok(r)
}

/// Waits until a subscription on `leaf1` receives what is published on `leaf0` (the
/// interest has propagated through the hub).
async fn probe_interest(leaf0: &str, leaf1: &str, run: &str) -> anyhow::Result<()> {
    // A typing subject: core NATS, and one the gateway's user on the leaf may use.
    let subject =
        petrel_core::subject::typing_user(&petrel_core::UserId::parse(format!("{run}-probe"))?);
    let rx = petrel_devkit::nats::connect(leaf1).await?;
    let mut sub = rx.subscribe(subject.clone()).await?;
    rx.flush().await?;
    let tx = petrel_devkit::nats::connect(leaf0).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        tx.publish(subject.clone(), "probe".into()).await?;
        tx.flush().await?;
        if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(100), sub.next()).await {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no interest across the leaf nodes"
        );
    }
}

/// Raw JetStream publishing on the hub (through edge 0's leaf): `senders` connections,
/// each with up to 48 publishes unacknowledged, `messages` in all.
pub async fn raw_jetstream_ingest(
    target: &Target,
    run: &str,
    senders: usize,
    messages: u64,
    size: usize,
) -> anyhow::Result<Report> {
    let leaf = target.edge(0).nats_leaf;
    let per = messages / senders as u64;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..senders {
        let js =
            async_nats::jetstream::with_domain(petrel_devkit::nats::connect(&leaf).await?, "hub");
        let group = petrel_core::GroupId::parse(format!("{run}-rawin"))?;
        let subject = petrel_core::subject::group_subject(&group);
        let run = run.to_string();
        let n = if i == 0 {
            messages - per * (senders as u64 - 1)
        } else {
            per
        };
        tasks.push(tokio::spawn(async move {
            let mut lat = Latency::new();
            let mut ok = 0u64;
            let mut inflight = futures::stream::FuturesUnordered::new();
            let mut next = 0;
            while next < n || !inflight.is_empty() {
                while next < n && inflight.len() < 48 {
                    let mut h = async_nats::HeaderMap::new();
                    h.insert("Nats-Msg-Id", format!("{run}-ri{i}-{next}").as_str());
                    let t = Instant::now();
                    let ack = js
                        .publish_with_headers(subject.clone(), h, crate::stamped(size))
                        .await?;
                    inflight.push(async move { (t, ack.await) });
                    next += 1;
                }
                if let Some((t, r)) = inflight.next().await
                    && r.is_ok()
                {
                    ok += 1;
                    lat.record(t.elapsed());
                }
            }
            anyhow::Ok((ok, lat))
        }));
    }
    let mut ok = 0;
    let mut lat = Latency::new();
    for t in tasks {
        let (o, l) = t.await??;
        ok += o;
        lat.merge(&l);
    }
    let mut r = Report::new(
        "ingest",
        "raw-jetstream-publish",
        serde_json::json!({"senders": senders, "messages": messages, "size": size}),
    );
    r.seconds = started.elapsed().as_secs_f64();
    r.sent = messages;
    r.delivered = ok;
    r.lost = messages - ok;
    r.rate = ok as f64 / r.seconds;
    r.rate_unit = "stored publishes/s".into();
    r.latency = lat.summary();
    Ok(r)
}
