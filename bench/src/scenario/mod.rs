//! The scenarios of `petrel bench`, their command-line arguments, and what they share:
//! connecting many clients, receiving and tallying, showing progress.

mod fanout;
mod idle;
mod ingest;
mod pairs;
mod resume;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use petrel_client::{ConnectOptions, Connection, Event, TransportKind};
use tokio_util::sync::CancellationToken;

use crate::hist::Latency;
use crate::impair::{Impairment, Proxies};
pub(crate) use crate::measure::{progress, wait_for};
use crate::report::Report;
use crate::topo::Target;

/// `petrel bench`: measure a Petrel topology under load.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// What to measure.
    #[command(subcommand)]
    pub scenario: Scenario,
    /// Transports to measure, comma-separated (each gets its own run and report).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "quic,websocket",
        global = true
    )]
    pub transport: Vec<TransportKind>,
    /// Measure a running `petrel dev` (its directory) instead of starting a fresh one.
    #[arg(long, value_name = "DIR", global = true)]
    pub dev: Option<std::path::PathBuf>,
    /// Print one JSON object per report on stdout instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Spread client connections over this many loopback source addresses
    /// (127.0.0.2 …), so that many connections do not run out of ports.
    #[arg(long, default_value_t = 8, value_name = "N", global = true)]
    pub sources: usize,
    /// Put the impairment proxy between the clients and the gateway, e.g.
    /// `loss=10%,delay=100ms,jitter=10ms,switch=30s,seed=7` (see `petrel impair --help`).
    #[arg(long, value_name = "SPEC", global = true)]
    pub impair: Option<Impairment>,
    /// Also measure what users would pick instead, in the same run, and print the
    /// ratios: fanout — nats-server WebSocket clients and Mosquitto MQTT QoS 1;
    /// pairs — the raw async-nats path; ingest — raw JetStream publishing.
    #[arg(long, global = true)]
    pub compare: bool,
    /// Hub nodes of the fresh topology (3: the production cluster, streams R3).
    #[arg(long, default_value_t = 1, value_name = "N", global = true)]
    pub hub_nodes: usize,
    /// The fresh topology's JetStream sync_interval (`always`, or e.g. `2m`).
    #[arg(
        long,
        default_value = "always",
        value_name = "always|DURATION",
        global = true
    )]
    pub sync_interval: String,
}

/// A scenario.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Scenario {
    /// N pairs exchanging direct messages at a set total rate, across two edges:
    /// end-to-end latency (send call → app), lost and duplicated messages.
    Pairs {
        /// Sender/receiver pairs.
        #[arg(long, default_value_t = 50)]
        pairs: usize,
        /// Messages per second, all pairs together.
        #[arg(long, default_value_t = 5000)]
        rate: u64,
        /// Seconds of sending.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Message size, bytes.
        #[arg(long, default_value_t = 100)]
        size: usize,
    },
    /// One sender to one group of M members connected to one edge: deliveries per
    /// second and latency.
    Fanout {
        /// Group members (connections).
        #[arg(long, default_value_t = 1000)]
        members: usize,
        /// Group messages per second.
        #[arg(long, default_value_t = 200)]
        rate: u64,
        /// Seconds of sending.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Message size, bytes.
        #[arg(long, default_value_t = 100)]
        size: usize,
    },
    /// N idle connections: the gateway's memory per connection (the kernel's socket
    /// memory is reported separately).
    Idle {
        /// Connections.
        #[arg(long, default_value_t = 5000)]
        connections: usize,
    },
    /// A client comes back after missing K messages: time until all K are delivered.
    Resume {
        /// Messages missed.
        #[arg(long, default_value_t = 1000)]
        missed: usize,
        /// Repetitions.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// No other device of the user stays connected, so the edge has not cached
        /// the inbox and the messages come from the hub.
        #[arg(long)]
        cold: bool,
    },
    /// Sends stored per second: S senders pipelining group messages.
    Ingest {
        /// Sending connections.
        #[arg(long, default_value_t = 4)]
        senders: usize,
        /// Messages in all.
        #[arg(long, default_value_t = 50_000)]
        messages: u64,
        /// Message size, bytes.
        #[arg(long, default_value_t = 100)]
        size: usize,
    },
}

impl Scenario {
    fn name(&self) -> &'static str {
        match self {
            Self::Pairs { .. } => "pairs",
            Self::Fanout { .. } => "fanout",
            Self::Idle { .. } => "idle",
            Self::Resume { .. } => "resume",
            Self::Ingest { .. } => "ingest",
        }
    }

    fn edges(&self) -> usize {
        match self {
            Self::Pairs { .. } => 2,
            _ => 1,
        }
    }
}

/// Runs `args`: one report per transport, printed as they complete.
pub async fn run(args: BenchArgs) -> anyhow::Result<Vec<Report>> {
    let fds = crate::topo::raise_fd_limit();
    tracing::debug!(fds, "open-file limit");
    // A fresh topology per transport (unless --dev): a gateway process that served
    // one transport keeps the memory it freed, which would flatter the next.
    let fresh = || async {
        match &args.dev {
            Some(dir) => Target::existing(dir),
            None => {
                eprintln!(
                    "petrel bench: starting a {}-edge petrel dev topology (hub: {} node(s), sync_interval {})…",
                    args.scenario.edges(),
                    args.hub_nodes,
                    args.sync_interval
                );
                Target::spawn(args.scenario.edges(), args.hub_nodes, &args.sync_interval).await
            }
        }
    };
    let mut target = fresh().await?;
    let mut reports = Vec::new();
    let mut failure = None;
    for (i, transport) in args.transport.iter().enumerate() {
        if i > 0 && args.dev.is_none() {
            target.stop().await;
            target = fresh().await?;
        }
        let ctx = Ctx {
            target: &target,
            transport: *transport,
            sources: args.sources,
            run: format!("r{}{}", std::process::id() % 10_000, i),
            proxies: match &args.impair {
                Some(imp) => Some(Proxies::start(&target, *transport, imp.clone()).await?),
                None => None,
            },
        };
        for (e, edge) in target.edges().iter().enumerate() {
            eprintln!("petrel bench: edge {e} metrics at {}/metrics", edge.http);
        }
        eprintln!(
            "petrel bench: {} over {transport}{}…",
            args.scenario.name(),
            args.impair
                .as_ref()
                .map(|i| format!(" through the impairment proxy ({i})"))
                .unwrap_or_default()
        );
        let r = match &args.scenario {
            Scenario::Pairs {
                pairs,
                rate,
                duration,
                size,
            } => pairs::run(&ctx, *pairs, *rate, *duration, *size).await,
            Scenario::Fanout {
                members,
                rate,
                duration,
                size,
            } => fanout::run(&ctx, *members, *rate, *duration, *size).await,
            Scenario::Idle { connections } => idle::run(&ctx, *connections).await,
            Scenario::Resume {
                missed,
                rounds,
                cold,
            } => resume::run(&ctx, *missed, *rounds, *cold).await,
            Scenario::Ingest {
                senders,
                messages,
                size,
            } => ingest::run(&ctx, *senders, *messages, *size).await,
        };
        let proxy_figures = ctx.proxies.map(|p| {
            let sum =
                |f: fn(&crate::impair::Stats) -> u64| p.stats.iter().map(|s| f(s)).sum::<u64>();
            let figures = (
                sum(|s| s.dropped.load(Ordering::Relaxed)),
                sum(|s| s.switches.load(Ordering::Relaxed)),
                sum(|s| s.flows.load(Ordering::Relaxed)),
            );
            p.stop();
            figures
        });
        match r {
            Ok(mut report) => {
                if let Some(imp) = &args.impair {
                    report.set("impairment", imp.to_string());
                }
                if let Some((dropped, switches, flows)) = proxy_figures {
                    report.set("proxy_dropped", dropped);
                    report.set("proxy_switches", switches);
                    report.set("proxy_flows", flows);
                }
                if args.json {
                    println!("{}", serde_json::to_string(&report)?);
                } else {
                    report.print();
                }
                reports.push(report);
            }
            Err(e) => {
                failure = Some(e.context(format!("{} over {transport}", args.scenario.name())));
                break;
            }
        }
    }
    if failure.is_none() && args.compare {
        let run_id = format!("c{}", std::process::id() % 10_000);
        let peers: Vec<anyhow::Result<Report>> = match &args.scenario {
            Scenario::Fanout {
                members,
                rate,
                duration,
                size,
            } => {
                eprintln!("petrel bench: fanout on nats-server's WebSocket listener…");
                let a =
                    crate::peers::nats_websocket_fanout(*members, *rate, *duration, *size).await;
                eprintln!("petrel bench: fanout on Mosquitto (MQTT QoS 1)…");
                let b = crate::peers::mqtt_fanout(*members, *rate, *duration, *size).await;
                vec![a, b]
            }
            Scenario::Pairs {
                pairs,
                rate,
                duration,
                size,
            } => {
                eprintln!("petrel bench: pairs on the raw async-nats path…");
                vec![
                    crate::peers::raw_nats_pairs(&target, &run_id, *pairs, *rate, *duration, *size)
                        .await,
                ]
            }
            Scenario::Ingest {
                senders,
                messages,
                size,
            } => {
                eprintln!("petrel bench: raw JetStream publishing…");
                vec![
                    crate::peers::raw_jetstream_ingest(
                        &target, &run_id, *senders, *messages, *size,
                    )
                    .await,
                ]
            }
            _ => {
                eprintln!(
                    "petrel bench: no peer to compare {} with",
                    args.scenario.name()
                );
                Vec::new()
            }
        };
        let ours = reports.clone();
        for p in peers {
            match p {
                Ok(peer) => {
                    if args.json {
                        println!("{}", serde_json::to_string(&peer)?);
                    } else {
                        peer.print();
                    }
                    for o in &ours {
                        crate::report::compare(
                            &format!("{} ({}), {}", o.rate_unit, o.system, o.scenario),
                            o.rate,
                            peer.rate,
                            &peer.system,
                        );
                        if let (Some(a), Some(b)) = (&o.latency, &peer.latency) {
                            crate::report::compare(
                                &format!("p99 latency ms ({})", o.system),
                                a.p99_ms,
                                b.p99_ms,
                                &peer.system,
                            );
                        }
                    }
                    reports.push(peer);
                }
                Err(e) => {
                    failure = Some(e.context("measuring the peer"));
                }
            }
        }
    }
    target.stop().await;
    match failure {
        Some(e) => Err(e),
        None => Ok(reports),
    }
}

/// What a scenario runs against.
pub(crate) struct Ctx<'a> {
    pub target: &'a Target,
    pub transport: TransportKind,
    pub sources: usize,
    /// Unique per run: prefixes user ids and message ids, so runs against one
    /// long-lived `petrel dev` do not see each other's messages.
    pub run: String,
    /// The impairment proxy in front of each edge, if any.
    pub proxies: Option<Proxies>,
}

impl Ctx<'_> {
    /// Connects `user` to edge `edge` (through the proxy when there is one).
    pub async fn connect(
        &self,
        edge: usize,
        user: &str,
        i: usize,
        cursors: Vec<(String, u64)>,
    ) -> anyhow::Result<Connection> {
        let mut endpoint = self.target.endpoint(
            edge,
            self.transport,
            crate::topo::source_ip(i, self.sources),
        )?;
        if let Some(p) = &self.proxies {
            endpoint.address = p.address(edge, &endpoint.address);
        }
        let mut opts = ConnectOptions::new(endpoint, self.target.token(user)?, "bench");
        opts.cursors = cursors;
        Connection::connect(opts)
            .await
            .with_context(|| format!("connecting {user}"))
    }

    /// Where and as whom `user` connects to `edge` (through the proxy when there is
    /// one): for tasks that reconnect on their own.
    pub fn spec(&self, edge: usize, user: &str, i: usize) -> anyhow::Result<ConnectSpec> {
        let mut endpoint = self.target.endpoint(
            edge,
            self.transport,
            crate::topo::source_ip(i, self.sources),
        )?;
        if let Some(p) = &self.proxies {
            endpoint.address = p.address(edge, &endpoint.address);
        }
        Ok(ConnectSpec {
            endpoint,
            token: self.target.token(user)?,
        })
    }

    /// Connects `n` users named by `name(i)` to `edge`, a few at a time, with progress.
    pub async fn connect_many(
        &self,
        edge: usize,
        n: usize,
        name: impl Fn(usize) -> String,
    ) -> anyhow::Result<Vec<Connection>> {
        let pb = progress(n as u64, "connecting");
        let clients: Vec<anyhow::Result<Connection>> = futures::stream::iter(0..n)
            .map(|i| {
                let user = name(i);
                let pb = pb.clone();
                async move {
                    let c = self.connect(edge, &user, i, Vec::new()).await;
                    pb.inc(1);
                    c
                }
            })
            .buffered(32)
            .collect()
            .await;
        pb.finish_and_clear();
        clients.into_iter().collect()
    }

    /// Puts `users` in `group` (Redis, as the group service would).
    pub async fn set_group(&self, group: &str, users: &[String]) -> anyhow::Result<()> {
        let url = self
            .target
            .endpoints
            .redis
            .clone()
            .context("this petrel dev has no Redis")?;
        let dir = petrel_gateway::directory::Directory::new(Some(&url))?;
        let g = petrel_core::GroupId::parse(group)?;
        for u in users {
            dir.add(&g, &petrel_core::UserId::parse(u.as_str())?)
                .await
                .with_context(|| format!("adding {u} to {group}"))?;
        }
        Ok(())
    }
}

/// How to connect one user, owned (for tasks that reconnect).
#[derive(Clone)]
pub(crate) struct ConnectSpec {
    pub endpoint: petrel_client::Endpoint,
    pub token: String,
}

impl ConnectSpec {
    /// Connects, retrying every 100 ms until it works or `stop`; `None` if stopped.
    pub async fn connect(
        &self,
        cursors: Vec<(String, u64)>,
        stop: &CancellationToken,
    ) -> Option<Connection> {
        loop {
            let mut opts = ConnectOptions::new(self.endpoint.clone(), self.token.clone(), "bench");
            opts.cursors = cursors.clone();
            tokio::select! {
                _ = stop.cancelled() => return None,
                c = Connection::connect(opts) => match c {
                    Ok(c) => return Some(c),
                    Err(e) => tracing::debug!(error = %e, "reconnect failed; trying again"),
                },
            }
            tokio::select! {
                _ = stop.cancelled() => return None,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }
}

/// Like [`receive`], but when the connection drops (a network switch cuts TCP) it
/// connects again with its cursors, counting in `reconnects`.
pub(crate) fn receive_resilient(
    spec: ConnectSpec,
    first: Connection,
    keep: impl Fn(&petrel_client::Message) -> bool + Send + 'static,
    count: Arc<AtomicU64>,
    reconnects: Arc<AtomicU64>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<Tally> {
    tokio::spawn(async move {
        let mut t = Tally::default();
        let mut seen: HashSet<(String, u64)> = HashSet::new();
        let mut cursors: std::collections::BTreeMap<String, u64> = Default::default();
        let mut client = Some(first);
        while let Some(mut c) = client.take() {
            loop {
                let ev = tokio::select! {
                    _ = stop.cancelled() => None,
                    ev = c.next_event() => ev,
                };
                match ev {
                    Some(Event::Message(m)) => {
                        let cur = cursors.entry(m.subject.clone()).or_default();
                        *cur = (*cur).max(m.seq);
                        if !keep(&m) {
                            continue;
                        }
                        t.take(&mut seen, m, &count);
                    }
                    Some(Event::Closed { .. }) | None => break,
                    Some(_) => {}
                }
            }
            t.wire_duplicates += c.stats().duplicates_dropped.load(Ordering::Relaxed);
            if stop.is_cancelled() {
                c.close().await;
                break;
            }
            reconnects.fetch_add(1, Ordering::Relaxed);
            let cur: Vec<(String, u64)> = cursors.iter().map(|(k, v)| (k.clone(), *v)).collect();
            client = spec.connect(cur, &stop).await;
        }
        t
    })
}

/// What one receiving client saw.
#[derive(Default)]
pub(crate) struct Tally {
    pub delivered: u64,
    pub duplicates: u64,
    pub latency: Latency,
    pub last: Option<Instant>,
    pub wire_duplicates: u64,
}

impl Tally {
    /// Counts one delivered message: new (latency, `count` + 1) or seen before.
    fn take(
        &mut self,
        seen: &mut HashSet<(String, u64)>,
        m: petrel_client::Message,
        count: &AtomicU64,
    ) {
        let age = crate::age(&m.content);
        if seen.insert((m.subject, m.seq)) {
            if let Some(age) = age {
                self.latency.record(age);
            }
            self.delivered += 1;
            self.last = Some(Instant::now());
            count.fetch_add(1, Ordering::Relaxed);
        } else {
            self.duplicates += 1;
        }
    }

    pub fn add(&mut self, o: &Tally) {
        self.delivered += o.delivered;
        self.duplicates += o.duplicates;
        self.wire_duplicates += o.wire_duplicates;
        self.latency.merge(&o.latency);
        self.last = self.last.max(o.last);
    }
}

/// Reads `client`'s events until `stop`, tallying the messages `keep` accepts;
/// `count` goes up by one per new one. Everything else is drained (a client whose
/// events are not read stalls).
pub(crate) fn receive(
    mut client: Connection,
    keep: impl Fn(&petrel_client::Message) -> bool + Send + 'static,
    count: Arc<AtomicU64>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<Tally> {
    tokio::spawn(async move {
        let mut t = Tally::default();
        let mut seen: HashSet<(String, u64)> = HashSet::new();
        loop {
            let ev = tokio::select! {
                _ = stop.cancelled() => break,
                ev = client.next_event() => ev,
            };
            match ev {
                Some(Event::Message(m)) if keep(&m) => t.take(&mut seen, m, &count),
                Some(_) => {}
                None => break,
            }
        }
        t.wire_duplicates = client.stats().duplicates_dropped.load(Ordering::Relaxed);
        client.close().await;
        t
    })
}
