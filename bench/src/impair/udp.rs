//! UDP side of the impairment proxy (QUIC, WebTransport).
//!
//! Each client address is a flow with its own socket toward the gateway. A switch
//! gives every flow a new socket on a new loopback address (127.0.0.10 and up, then a
//! new port): the gateway sees the client's packets come from elsewhere, as after a
//! network change, and what it still sends to the old address is lost.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Impairment, Shaper, Stats, release};

/// A bound UDP proxy, not yet running.
pub struct UdpProxy {
    listen: Arc<UdpSocket>,
    upstream: SocketAddr,
    imp: Impairment,
}

type Sched = mpsc::UnboundedSender<(Instant, SocketAddr, Bytes)>;

struct Flow {
    /// The socket toward the gateway now (replaced by a switch).
    socket: Arc<Mutex<Arc<UdpSocket>>>,
    up: Shaper,
    up_tx: Sched,
    down: Arc<Mutex<Shaper>>,
    reader: tokio::task::JoinHandle<()>,
}

impl UdpProxy {
    /// Binds the client-facing socket at `listen`, forwarding to `upstream`.
    pub async fn bind(
        listen: SocketAddr,
        upstream: SocketAddr,
        imp: Impairment,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            listen: Arc::new(UdpSocket::bind(listen).await?),
            upstream,
            imp,
        })
    }

    /// Where clients send.
    pub fn local_addr(&self) -> SocketAddr {
        self.listen
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Runs until `stop` (spawned; `id` seeds the flows apart from other proxies).
    pub fn run(self, stop: CancellationToken, id: u64) -> Arc<Stats> {
        let stats = Arc::new(Stats::default());
        let st = stats.clone();
        tokio::spawn(async move {
            let (down_tx, down_rx) = mpsc::unbounded_channel();
            let listen = self.listen.clone();
            let down_stats = st.clone();
            let down = tokio::spawn(release(down_rx, move |to, data| {
                if listen.try_send_to(&data, to).is_ok() {
                    down_stats.forwarded.fetch_add(1, Ordering::Relaxed);
                }
            }));
            let mut flows: HashMap<SocketAddr, Flow> = HashMap::new();
            let mut buf = vec![0u8; 65_536];
            let mut switch = super::Switches::new(&self.imp);
            let mut generation = 0u32;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = switch.next() => {
                        generation += 1;
                        for (client, f) in flows.iter_mut() {
                            match socket_toward(self.upstream, generation).await {
                                Ok(s) => {
                                    f.reader.abort();
                                    if let Ok(mut cur) = f.socket.lock() {
                                        *cur = s.clone();
                                    }
                                    f.reader = read_down(s, *client, f.down.clone(), down_tx.clone(), st.clone());
                                    st.switches.fetch_add(1, Ordering::Relaxed);
                                }
                                Err(e) => tracing::warn!(error = %e, "impair: no new socket for a switch"),
                            }
                        }
                    }
                    r = self.listen.recv_from(&mut buf) => {
                        let Ok((n, client)) = r else { continue };
                        if !flows.contains_key(&client) {
                            let Ok(s) = socket_toward(self.upstream, generation).await else { continue };
                            let seed = id << 32 | flows.len() as u64;
                            let holder = Arc::new(Mutex::new(s.clone()));
                            let (up_tx, up_rx) = mpsc::unbounded_channel();
                            let h = holder.clone();
                            let up_stats = st.clone();
                            tokio::spawn(release(up_rx, move |_, data| {
                                let sock = h.lock().ok().map(|g| g.clone());
                                if let Some(sock) = sock
                                    && sock.try_send(&data).is_ok()
                                {
                                    up_stats.forwarded.fetch_add(1, Ordering::Relaxed);
                                }
                            }));
                            let down_shaper = Arc::new(Mutex::new(Shaper::new(&self.imp, seed * 2 + 1, false)));
                            st.flows.fetch_add(1, Ordering::Relaxed);
                            flows.insert(client, Flow {
                                reader: read_down(s, client, down_shaper.clone(), down_tx.clone(), st.clone()),
                                socket: holder,
                                up: Shaper::new(&self.imp, seed * 2, false),
                                up_tx,
                                down: down_shaper,
                            });
                        }
                        if let Some(f) = flows.get_mut(&client) {
                            match f.up.schedule(n) {
                                Some(at) => {
                                    let _ = f.up_tx.send((at, self.upstream, Bytes::copy_from_slice(&buf[..n])));
                                }
                                None => {
                                    st.dropped.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                    }
                }
            }
            for (_, f) in flows {
                f.reader.abort();
            }
            down.abort();
        });
        stats
    }
}

/// A socket connected to `upstream` from loopback address 127.0.0.(10 + generation).
async fn socket_toward(upstream: SocketAddr, generation: u32) -> std::io::Result<Arc<UdpSocket>> {
    let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 10 + (generation % 200) as u8));
    let s = UdpSocket::bind(SocketAddr::new(ip, 0)).await?;
    s.connect(upstream).await?;
    Ok(Arc::new(s))
}

/// Reads what the gateway sends on `sock` and schedules it toward `client`.
fn read_down(
    sock: Arc<UdpSocket>,
    client: SocketAddr,
    shaper: Arc<Mutex<Shaper>>,
    tx: Sched,
    stats: Arc<Stats>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok(n) = sock.recv(&mut buf).await {
            let due = shaper.lock().ok().and_then(|mut s| s.schedule(n));
            match due {
                Some(at) => {
                    if tx
                        .send((at, client, Bytes::copy_from_slice(&buf[..n])))
                        .is_err()
                    {
                        return;
                    }
                }
                None => {
                    stats.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    })
}
