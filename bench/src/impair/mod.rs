//! The impairment proxy: a weak network in user space (this kernel has no netem).
//!
//! It sits between clients and a gateway, for UDP (QUIC, WebTransport: [`udp`]) and
//! TCP (WebSocket: [`tcp`]), and applies an [`Impairment`] to each direction:
//!
//! - **delay** one way (so `delay=100ms` is a 200 ms round trip) with **jitter**
//!   (uniform ± jitter, which also reorders datagrams);
//! - **loss**: a UDP datagram is dropped. TCP cannot lose bytes above the kernel, so a
//!   "lost" TCP chunk is held for a retransmission time (max(200 ms, 2 × delay), Linux's
//!   minimum RTO or a round trip) and everything behind it waits, as TCP's in-order
//!   delivery makes it;
//! - **reorder**: that share of datagrams gets an extra delay of half the one-way delay
//!   (at least 5 ms);
//! - **rate**: a bandwidth limit per direction (serialisation time queues packets);
//! - **switch**: every so often the proxy moves each flow to a new source port and
//!   address toward the gateway, as a phone does moving from Wi-Fi to LTE. A QUIC
//!   connection migrates; a TCP connection cannot, so the proxy cuts it (the client
//!   must reconnect).
//!
//! Random choices come from a seeded generator per flow and direction, so a run can
//! be repeated (as far as packet arrival order repeats).

pub mod tcp;
pub mod udp;

use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use rand::{Rng, SeedableRng, rngs::StdRng};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// What the proxy does to traffic.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Impairment {
    /// Share of packets lost (0–1).
    pub loss: f64,
    /// One-way delay.
    pub delay: Duration,
    /// Uniform ± jitter on the delay.
    pub jitter: Duration,
    /// Share of packets delayed extra (reordered), 0–1.
    pub reorder: f64,
    /// Bandwidth limit per direction, bits per second.
    pub rate_bps: Option<u64>,
    /// Move flows to a new source address this often.
    pub switch_every: Option<Duration>,
    /// Random seed.
    pub seed: u64,
}

fn parse_duration(v: &str) -> Result<Duration, String> {
    let (num, unit) = v
        .find(|c: char| c.is_ascii_alphabetic())
        .map(|i| v.split_at(i))
        .unwrap_or((v, "ms"));
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{v:?} is not a duration (e.g. 100ms, 2s)"))?;
    let secs = match unit {
        "us" => n / 1e6,
        "ms" => n / 1e3,
        "s" => n,
        "m" | "min" => n * 60.0,
        _ => return Err(format!("unknown unit in {v:?} (us, ms, s, min)")),
    };
    if !(0.0..=86_400.0).contains(&secs) {
        return Err(format!("{v:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_share(v: &str) -> Result<f64, String> {
    let x = match v.strip_suffix('%') {
        Some(p) => p.parse::<f64>().map(|p| p / 100.0),
        None => v.parse::<f64>(),
    }
    .map_err(|_| format!("{v:?} is not a share (e.g. 10% or 0.1)"))?;
    if !(0.0..=1.0).contains(&x) {
        return Err(format!("{v:?} must be between 0 and 100%"));
    }
    Ok(x)
}

fn parse_rate(v: &str) -> Result<u64, String> {
    let lower = v.to_ascii_lowercase();
    let (num, mult) = if let Some(n) = lower.strip_suffix("gbit") {
        (n, 1e9)
    } else if let Some(n) = lower.strip_suffix("mbit") {
        (n, 1e6)
    } else if let Some(n) = lower.strip_suffix("kbit") {
        (n, 1e3)
    } else if let Some(n) = lower.strip_suffix("bit") {
        (n, 1.0)
    } else {
        return Err(format!("{v:?}: give a rate like 1mbit, 500kbit"));
    };
    let n: f64 = num.parse().map_err(|_| format!("{v:?} is not a rate"))?;
    if n <= 0.0 {
        return Err(format!("{v:?} must be above 0"));
    }
    Ok((n * mult) as u64)
}

impl std::str::FromStr for Impairment {
    type Err = String;

    /// `loss=10%,delay=100ms,jitter=10ms,reorder=1%,rate=2mbit,switch=30s,seed=7`
    /// (any subset, any order).
    fn from_str(s: &str) -> Result<Self, String> {
        let mut imp = Impairment {
            seed: 1,
            ..Default::default()
        };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: expected key=value"))?;
            match k {
                "loss" => imp.loss = parse_share(v)?,
                "delay" => imp.delay = parse_duration(v)?,
                "jitter" => imp.jitter = parse_duration(v)?,
                "reorder" => imp.reorder = parse_share(v)?,
                "rate" => imp.rate_bps = Some(parse_rate(v)?),
                "switch" => imp.switch_every = Some(parse_duration(v)?).filter(|d| !d.is_zero()),
                "seed" => {
                    imp.seed = v
                        .parse()
                        .map_err(|_| format!("seed {v:?} is not a number"))?
                }
                _ => {
                    return Err(format!(
                        "unknown key {k:?} (loss, delay, jitter, reorder, rate, switch, seed)"
                    ));
                }
            }
        }
        if imp.jitter > imp.delay {
            return Err("jitter must not exceed delay".into());
        }
        Ok(imp)
    }
}

impl std::fmt::Display for Impairment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "loss={}%,delay={}ms,jitter={}ms,reorder={}%",
            self.loss * 100.0,
            self.delay.as_millis(),
            self.jitter.as_millis(),
            self.reorder * 100.0
        )?;
        if let Some(r) = self.rate_bps {
            write!(f, ",rate={}kbit", r / 1000)?;
        }
        if let Some(s) = self.switch_every {
            write!(f, ",switch={}s", s.as_secs_f64())?;
        }
        write!(f, ",seed={}", self.seed)
    }
}

/// Decides, per packet, whether and when it goes on: one per flow and direction.
pub struct Shaper {
    imp: Impairment,
    rng: StdRng,
    /// When the link is free again (bandwidth limit).
    link_free: Instant,
    /// TCP: nothing may overtake what is already scheduled.
    in_order: bool,
    last_due: Instant,
}

impl Shaper {
    /// A shaper for one direction of one flow (`stream` seeds it).
    pub fn new(imp: &Impairment, stream: u64, in_order: bool) -> Self {
        let now = Instant::now();
        Self {
            rng: StdRng::seed_from_u64(imp.seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            imp: imp.clone(),
            link_free: now,
            in_order,
            last_due: now,
        }
    }

    /// When a packet of `len` bytes arriving now is delivered; `None`: lost.
    pub fn schedule(&mut self, len: usize) -> Option<Instant> {
        let now = Instant::now();
        let lost = self.imp.loss > 0.0 && self.rng.random_bool(self.imp.loss);
        if lost && !self.in_order {
            return None;
        }
        let mut leave = now;
        if let Some(bps) = self.imp.rate_bps {
            let ser = Duration::from_secs_f64(len as f64 * 8.0 / bps as f64);
            leave = self.link_free.max(now) + ser;
            self.link_free = leave;
        }
        let mut delay = self.imp.delay;
        if !self.imp.jitter.is_zero() {
            let j = self.imp.jitter.as_secs_f64();
            let d = delay.as_secs_f64() + self.rng.random_range(-j..=j);
            delay = Duration::from_secs_f64(d.max(0.0));
        }
        if self.imp.reorder > 0.0 && self.rng.random_bool(self.imp.reorder) {
            delay += (self.imp.delay / 2).max(Duration::from_millis(5));
        }
        if lost {
            // TCP: the segment is retransmitted after a timeout or a round trip.
            delay += (self.imp.delay * 2).max(Duration::from_millis(200));
        }
        let mut due = leave + delay;
        if self.in_order {
            due = due.max(self.last_due);
            self.last_due = due;
        }
        Some(due)
    }
}

/// The switch timer of an impairment: ticks every `switch` (first after one period),
/// never without one.
pub(crate) struct Switches(Option<tokio::time::Interval>);

impl Switches {
    pub(crate) fn new(imp: &Impairment) -> Self {
        Self(imp.switch_every.map(|d| {
            let mut i = tokio::time::interval_at(Instant::now() + d, d);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        }))
    }

    /// Waits for the next switch.
    pub(crate) async fn next(&mut self) {
        match self.0.as_mut() {
            Some(i) => {
                i.tick().await;
            }
            None => std::future::pending().await,
        }
    }
}

/// A packet waiting for its time.
struct Due {
    at: Instant,
    seq: u64,
    to: SocketAddr,
    data: Bytes,
}

impl PartialEq for Due {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Due {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        // Earliest first out of the max-heap; equal times keep arrival order.
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

/// Releases packets at their due times, in due order (arrival order for equal
/// times), to `out`. Ends when `rx` closes and everything is out.
pub(crate) async fn release(
    mut rx: mpsc::UnboundedReceiver<(Instant, SocketAddr, Bytes)>,
    out: impl Fn(SocketAddr, Bytes) + Send,
) {
    let mut heap: BinaryHeap<Due> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut open = true;
    loop {
        let next_at = heap.peek().map(|d| d.at);
        tokio::select! {
            biased;
            _ = async {
                match next_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {
                let now = Instant::now();
                while heap.peek().is_some_and(|d| d.at <= now) {
                    if let Some(d) = heap.pop() {
                        out(d.to, d.data);
                    }
                }
            }
            m = rx.recv(), if open => match m {
                Some((at, to, data)) => {
                    seq += 1;
                    heap.push(Due { at, seq, to, data });
                }
                None => open = false,
            },
        }
        if !open && heap.is_empty() {
            return;
        }
    }
}

/// The proxies a bench run puts in front of each edge for one transport.
pub struct Proxies {
    /// (original address, proxy address) per edge.
    pub by_edge: Vec<(SocketAddr, SocketAddr)>,
    stop: tokio_util::sync::CancellationToken,
    /// Counters, per edge.
    pub stats: Vec<std::sync::Arc<Stats>>,
}

/// What a proxy did.
#[derive(Debug, Default)]
pub struct Stats {
    /// Packets (UDP) or chunks (TCP) forwarded.
    pub forwarded: std::sync::atomic::AtomicU64,
    /// Dropped (UDP loss).
    pub dropped: std::sync::atomic::AtomicU64,
    /// Address switches carried out (per flow).
    pub switches: std::sync::atomic::AtomicU64,
    /// Flows (client addresses or TCP connections) seen.
    pub flows: std::sync::atomic::AtomicU64,
}

impl Proxies {
    /// Starts a proxy per edge of `target` for `transport`.
    pub async fn start(
        target: &crate::topo::Target,
        transport: petrel_client::TransportKind,
        imp: Impairment,
    ) -> anyhow::Result<Self> {
        let stop = tokio_util::sync::CancellationToken::new();
        let mut by_edge = Vec::new();
        let mut stats = Vec::new();
        for (i, e) in target.edges().iter().enumerate() {
            let (upstream, proxy, st) = match transport {
                petrel_client::TransportKind::Quic => {
                    let up: SocketAddr = e.quic.parse()?;
                    let p = udp::UdpProxy::bind("127.0.0.1:0".parse()?, up, imp.clone()).await?;
                    (up, p.local_addr(), p.run(stop.clone(), i as u64))
                }
                petrel_client::TransportKind::WebSocket => {
                    let up: SocketAddr = host_port(&e.websocket)?.parse()?;
                    let p = tcp::TcpProxy::bind("127.0.0.1:0".parse()?, up, imp.clone()).await?;
                    (up, p.local_addr(), p.run(stop.clone(), i as u64))
                }
            };
            by_edge.push((upstream, proxy));
            stats.push(st);
        }
        Ok(Self {
            by_edge,
            stop,
            stats,
        })
    }

    /// `address` (edge `edge`'s) rewritten to go through its proxy.
    pub fn address(&self, edge: usize, address: &str) -> String {
        match self.by_edge.get(edge) {
            Some((up, proxy)) => address.replace(&up.to_string(), &proxy.to_string()),
            None => address.to_string(),
        }
    }

    /// Stops the proxies.
    pub fn stop(self) {
        self.stop.cancel();
    }
}

fn host_port(url: &str) -> anyhow::Result<&str> {
    let rest = url.split("://").nth(1).unwrap_or(url);
    rest.split('/')
        .next()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| anyhow::anyhow!("no host:port in {url}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_bad_ones_are_explained() {
        let i: Impairment =
            "loss=10%,delay=100ms,jitter=10ms,reorder=1%,rate=2mbit,switch=30s,seed=7"
                .parse()
                .unwrap();
        assert_eq!(i.loss, 0.1);
        assert_eq!(i.delay, Duration::from_millis(100));
        assert_eq!(i.jitter, Duration::from_millis(10));
        assert_eq!(i.rate_bps, Some(2_000_000));
        assert_eq!(i.switch_every, Some(Duration::from_secs(30)));
        assert_eq!(i.seed, 7);
        assert_eq!(i.to_string().parse::<Impairment>().unwrap(), i);
        for bad in [
            "loss=110%",
            "delay=fast",
            "jitter=20ms,delay=10ms",
            "speed=1",
            "loss",
        ] {
            assert!(bad.parse::<Impairment>().is_err(), "{bad}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn same_seed_same_fate_and_tcp_keeps_order() {
        let imp: Impairment = "loss=30%,delay=50ms,jitter=20ms,seed=3".parse().unwrap();
        let fates = |seed_stream| {
            let mut s = Shaper::new(&imp, seed_stream, false);
            (0..200)
                .map(|_| s.schedule(100).is_some())
                .collect::<Vec<_>>()
        };
        assert_eq!(fates(1), fates(1));
        let lost = fates(1).iter().filter(|k| !**k).count();
        assert!((30..90).contains(&lost), "{lost} of 200 lost at 30%");
        // In order (TCP): nothing lost, due times never go back.
        let mut s = Shaper::new(&imp, 1, true);
        let dues: Vec<_> = (0..200).map(|_| s.schedule(100)).collect();
        assert!(dues.iter().all(Option::is_some));
        assert!(dues.windows(2).all(|w| w[0] <= w[1]));
    }

    #[tokio::test(start_paused = true)]
    async fn bandwidth_limit_spaces_packets() {
        let imp: Impairment = "rate=1mbit".parse().unwrap();
        let mut s = Shaper::new(&imp, 0, false);
        let t0 = Instant::now();
        let last = (0..10).filter_map(|_| s.schedule(1250)).last().unwrap();
        // 10 × 1,250 bytes = 100 kbit at 1 Mbit/s: 100 ms.
        assert_eq!(last - t0, Duration::from_millis(100));
    }
}
