//! The chaos harness: a steady two-way load between users on two edges of a 3-node
//! hub, every send's answer and every delivery recorded, and the verdict — each send
//! answered STORED or QUEUED reaches every device of its recipient exactly once, in
//! the sender's order, and the stream holds it once.
//!
//! Users come in pairs: `aI` on edge 0 (QUIC) and `bI` on edge 1 (WebSocket), sending
//! to each other every `interval`. `b0` has a second device, on edge 0. Message ids are
//! `{sender}-{n}`, `n` counting up, so order and duplicates are read off the ids.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use petrel_client::{Event, SendResult, TransportKind};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{SECRET, Topology, TopologyBuilder, test_config};

/// `edges` edges on a hub of `nodes` nodes, with the test config and no per-connection
/// send rate limit (the scenarios pipeline sends as fast as the gateway takes them).
pub async fn topology(nodes: usize, edges: usize) -> anyhow::Result<Topology> {
    TopologyBuilder::new(edges, SECRET.as_bytes())
        .hub_nodes(nodes)
        .customize(|cfg, _| {
            test_config(cfg);
            cfg.limits.send_rate_per_sec = 0;
            Ok(())
        })
        .start()
        .await
}

/// What a sender heard about one send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Not answered (yet).
    Nothing,
    /// STORED.
    Stored,
    /// QUEUED (durable at the edge).
    Queued,
    /// Refused, with the code.
    Rejected(String),
}

/// One send.
#[derive(Debug, Clone)]
pub struct Sent {
    /// Its number in the sender's sequence.
    pub n: u64,
    /// When it was handed to the SDK.
    pub at: Instant,
    /// The first answer.
    pub answer: Answer,
}

/// One delivery to the app.
#[derive(Debug, Clone)]
pub struct Got {
    /// Sender.
    pub from: String,
    /// Number in the sender's sequence.
    pub n: u64,
    /// When the app got it.
    pub at: Instant,
}

/// A device taking part: who it is and what it got.
pub struct Device {
    /// User.
    pub user: String,
    got: Arc<Mutex<Vec<Got>>>,
    stats: Arc<petrel_client::Stats>,
    task: JoinHandle<()>,
}

struct Sender {
    user: String,
    to: String,
    log: Arc<Mutex<Vec<Sent>>>,
    task: JoinHandle<()>,
}

/// A running load.
pub struct Load {
    devices: Vec<Device>,
    senders: Vec<Sender>,
    stop_sending: CancellationToken,
    started: Instant,
}

/// The counts a scenario reports.
#[derive(Debug, Default, Clone)]
pub struct Verdict {
    /// Sends handed to the SDK.
    pub sent: usize,
    /// Answered STORED.
    pub stored: usize,
    /// Answered QUEUED.
    pub queued: usize,
    /// Refused (never promised).
    pub rejected: usize,
    /// Not answered.
    pub unanswered: usize,
    /// App deliveries, over every device.
    pub delivered: usize,
    /// Deliveries that arrived twice on the wire and were dropped by the SDK.
    pub wire_duplicates: u64,
    /// Deliveries the app saw twice.
    pub app_duplicates: usize,
    /// Deliveries that came before an earlier send of the same sender.
    pub reordered: usize,
    /// Acknowledged sends some device of the recipient never got.
    pub missing: usize,
    /// Copies in the stream beyond one per stored send and subject.
    pub stream_extra: i64,
    /// The longest a device went without a delivery while the load ran.
    pub longest_pause: Duration,
    /// The longest from a send to its delivery.
    pub longest_wait: Duration,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sent {}, acknowledged {} (stored {}, queued {}), rejected {}, unanswered {}, delivered {}, wire duplicates {}, app duplicates {}, reordered {}, missing {}, extra stream copies {}, longest pause {} ms, longest wait {} ms",
            self.sent,
            self.stored + self.queued,
            self.stored,
            self.queued,
            self.rejected,
            self.unanswered,
            self.delivered,
            self.wire_duplicates,
            self.app_duplicates,
            self.reordered,
            self.missing,
            self.stream_extra,
            self.longest_pause.as_millis(),
            self.longest_wait.as_millis()
        )
    }
}

impl Verdict {
    /// Fails unless the promise held: nothing acknowledged missing, no app duplicate,
    /// nothing reordered, nothing stored twice.
    pub fn ensure_kept(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.missing == 0
                && self.app_duplicates == 0
                && self.reordered == 0
                && self.stream_extra == 0,
            "the promise was broken: {self}"
        );
        anyhow::ensure!(self.stored + self.queued > 0, "nothing was acknowledged");
        Ok(())
    }
}

/// Connects `user`/`dev` on `edge` and records what its app gets from others; returns
/// the device and a handle to send with.
async fn device(
    topo: &Topology,
    edge: usize,
    transport: TransportKind,
    user: &str,
    dev: &str,
) -> anyhow::Result<(Device, petrel_client::Sender)> {
    let mut client = topo.connect(edge, transport, user, dev).await?;
    let inbox = petrel_core::subject::private_inbox(&petrel_core::UserId::parse(user)?);
    let got: Arc<Mutex<Vec<Got>>> = Arc::default();
    let (stats, sender) = (client.stats_handle(), client.sender());
    let task = tokio::spawn({
        let (got, user) = (got.clone(), user.to_string());
        async move {
            while let Some(ev) = client.next_event().await {
                if let Event::Message(m) = ev
                    && m.subject == inbox
                    && m.from != user
                    && let Some(n) = m
                        .client_msg_id
                        .rsplit_once('-')
                        .and_then(|(_, n)| n.parse().ok())
                    && let Ok(mut g) = got.lock()
                {
                    g.push(Got {
                        from: m.from.clone(),
                        n,
                        at: Instant::now(),
                    });
                }
            }
        }
    });
    Ok((
        Device {
            user: user.into(),
            got,
            stats,
            task,
        },
        sender,
    ))
}

/// Sends from `client` to `to` every `interval` until `stop`; records every answer.
fn send_loop(
    sender: petrel_client::Sender,
    user: String,
    to: String,
    interval: Duration,
    stop: CancellationToken,
) -> (Arc<Mutex<Vec<Sent>>>, JoinHandle<()>) {
    let log: Arc<Mutex<Vec<Sent>>> = Arc::default();
    let task = tokio::spawn({
        let log = log.clone();
        async move {
            let mut tick = tokio::time::interval(interval);
            let mut pending = futures::stream::FuturesUnordered::new();
            let mut n = 0u64;
            let record = |n: u64, answer: Answer| {
                if let Ok(mut l) = log.lock()
                    && let Some(s) = l.get_mut(n as usize)
                    && s.answer == Answer::Nothing
                {
                    s.answer = answer;
                }
            };
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => {
                        let id = format!("{user}-{n}");
                        if let Ok(mut l) = log.lock() {
                            l.push(Sent { n, at: Instant::now(), answer: Answer::Nothing });
                        }
                        match sender.start_send(&to, &id, format!("{id} to {to}"), "text/plain").await {
                            Ok(rx) => pending.push(async move { (n, rx.await) }),
                            Err(e) => record(n, Answer::Rejected(format!("{e}"))),
                        }
                        n += 1;
                    }
                    Some((n, r)) = pending.next(), if !pending.is_empty() => {
                        record(n, answer_of(r));
                    }
                }
            }
            // Late answers still count (bounded).
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while let Ok(Some((n, r))) = tokio::time::timeout_at(deadline, pending.next()).await {
                record(n, answer_of(r));
            }
        }
    });
    (log, task)
}

fn answer_of(r: Result<SendResult, impl std::fmt::Debug>) -> Answer {
    match r {
        Ok(SendResult::Stored { .. }) => Answer::Stored,
        Ok(SendResult::Queued { .. }) => Answer::Queued,
        Ok(SendResult::Rejected { code, .. }) => Answer::Rejected(code),
        Err(_) => Answer::Nothing,
    }
}

impl Load {
    /// `pairs` pairs sending to each other every `interval`.
    pub async fn start(topo: &Topology, pairs: usize, interval: Duration) -> anyhow::Result<Self> {
        let stop_sending = CancellationToken::new();
        let mut devices = Vec::new();
        let mut senders = Vec::new();
        for i in 0..pairs {
            let (a, b) = (format!("a{i}"), format!("b{i}"));
            let (da, sa) = device(topo, 0, TransportKind::Quic, &a, "phone").await?;
            let (db, sb) = device(topo, 1, TransportKind::WebSocket, &b, "phone").await?;
            devices.push(da);
            devices.push(db);
            if i == 0 {
                devices.push(device(topo, 0, TransportKind::Quic, &b, "tablet").await?.0);
            }
            for (user, to, sender) in [(&a, &b, sa), (&b, &a, sb)] {
                let (log, task) = send_loop(
                    sender,
                    user.clone(),
                    to.clone(),
                    interval,
                    stop_sending.clone(),
                );
                senders.push(Sender {
                    user: user.clone(),
                    to: to.clone(),
                    log,
                    task,
                });
            }
        }
        Ok(Self {
            devices,
            senders,
            stop_sending,
            started: Instant::now(),
        })
    }

    /// Sends acknowledged so far.
    pub fn acknowledged(&self) -> usize {
        self.senders
            .iter()
            .map(|s| {
                s.log.lock().map_or(0, |l| {
                    l.iter()
                        .filter(|x| matches!(x.answer, Answer::Stored | Answer::Queued))
                        .count()
                })
            })
            .sum()
    }

    /// Sends answered QUEUED so far.
    pub fn queued(&self) -> usize {
        self.senders
            .iter()
            .map(|s| {
                s.log.lock().map_or(0, |l| {
                    l.iter().filter(|x| x.answer == Answer::Queued).count()
                })
            })
            .sum()
    }

    /// Runs the load for `d` more.
    pub async fn run_for(&self, d: Duration) {
        tokio::time::sleep(d).await;
    }

    /// Stops sending, waits (up to `settle`) until every acknowledged send reached every
    /// device of its recipient, and judges, counting copies in `topo`'s stream.
    pub async fn finish(self, topo: &Topology, settle: Duration) -> anyhow::Result<Verdict> {
        let load_ended = Instant::now();
        self.stop_sending.cancel();
        for s in &self.senders {
            // Each sender waits for its own late answers, bounded.
            while !s.task.is_finished() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let deadline = Instant::now() + settle;
        loop {
            let v = self.judge(load_ended);
            if v.missing == 0 || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let mut v = self.judge(load_ended);
        v.stream_extra = self.stream_extra(topo).await?;
        for d in &self.devices {
            d.task.abort();
        }
        Ok(v)
    }

    fn judge(&self, load_ended: Instant) -> Verdict {
        let mut v = Verdict::default();
        // Sends by (sender, recipient).
        let mut acked: HashMap<(&str, &str), Vec<u64>> = HashMap::new();
        let mut at: HashMap<(&str, u64), Instant> = HashMap::new();
        for s in &self.senders {
            let Ok(log) = s.log.lock() else { continue };
            for x in log.iter() {
                v.sent += 1;
                match &x.answer {
                    Answer::Stored => v.stored += 1,
                    Answer::Queued => v.queued += 1,
                    Answer::Rejected(_) => v.rejected += 1,
                    Answer::Nothing => v.unanswered += 1,
                }
                if matches!(x.answer, Answer::Stored | Answer::Queued) {
                    acked
                        .entry((s.user.as_str(), s.to.as_str()))
                        .or_default()
                        .push(x.n);
                }
                at.insert((s.user.as_str(), x.n), x.at);
            }
        }
        for d in &self.devices {
            v.wire_duplicates += d
                .stats
                .duplicates_dropped
                .load(std::sync::atomic::Ordering::Relaxed);
            let Ok(got) = d.got.lock() else { continue };
            v.delivered += got.len();
            let mut seen: HashSet<(&str, u64)> = HashSet::new();
            let mut last: HashMap<&str, u64> = HashMap::new();
            let mut prev_at: Option<Instant> = Some(self.started);
            for g in got.iter() {
                if !seen.insert((g.from.as_str(), g.n)) {
                    v.app_duplicates += 1;
                }
                if let Some(l) = last.get(g.from.as_str())
                    && g.n < *l
                {
                    v.reordered += 1;
                }
                last.insert(g.from.as_str(), g.n);
                if let Some(p) = prev_at
                    && g.at <= load_ended
                {
                    v.longest_pause = v.longest_pause.max(g.at.duration_since(p));
                }
                prev_at = Some(g.at);
                if let Some(sent) = at.get(&(g.from.as_str(), g.n)) {
                    v.longest_wait = v.longest_wait.max(g.at.saturating_duration_since(*sent));
                }
            }
            for ((from, to), ns) in &acked {
                if *to == d.user {
                    v.missing += ns.iter().filter(|n| !seen.contains(&(*from, **n))).count();
                }
            }
        }
        v
    }

    /// Copies in the stream beyond one per acknowledged-or-delivered send and subject:
    /// each send is stored as the recipient's copy and the sender's own.
    async fn stream_extra(&self, topo: &Topology) -> anyhow::Result<i64> {
        let counts = topo
            .subject_counts("msg.private.*")
            .await
            .context("counting the stream's subjects")?;
        let mut stored: HashMap<String, HashSet<u64>> = HashMap::new();
        for s in &self.senders {
            let Ok(log) = s.log.lock() else { continue };
            let set = stored.entry(s.user.clone()).or_default();
            set.extend(
                log.iter()
                    .filter(|x| matches!(x.answer, Answer::Stored | Answer::Queued))
                    .map(|x| x.n),
            );
        }
        // Delivered without an answer (the answer lost): stored too.
        for d in &self.devices {
            let Ok(got) = d.got.lock() else { continue };
            for g in got.iter() {
                stored.entry(g.from.clone()).or_default().insert(g.n);
            }
        }
        let mut extra = 0i64;
        for s in &self.senders {
            let n = stored.get(&s.user).map_or(0, |x| x.len()) as i64;
            let to_me = stored.get(&s.to).map_or(0, |x| x.len()) as i64;
            let subject = format!("msg.private.{}", s.user);
            let have = counts.get(&subject).copied().unwrap_or(0) as i64;
            // msg.private.U holds U's own copies and what its peer sent to U.
            extra += have - (n + to_me);
        }
        Ok(extra)
    }
}
