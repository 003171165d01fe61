//! TCP side of the impairment proxy (WebSocket).
//!
//! Each accepted connection gets its own connection to the gateway and a pump per
//! direction: chunks are scheduled by an in-order [`Shaper`] (a "lost" chunk stalls
//! everything behind it, as TCP retransmission does) and written at their due time.
//! A switch cuts every connection open at that moment: TCP cannot move to a new
//! address, so the client has to reconnect.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Impairment, Shaper, Stats};

/// A bound TCP proxy, not yet running.
pub struct TcpProxy {
    listener: TcpListener,
    upstream: SocketAddr,
    imp: Impairment,
}

impl TcpProxy {
    /// Binds the client-facing listener at `listen`, forwarding to `upstream`.
    pub async fn bind(
        listen: SocketAddr,
        upstream: SocketAddr,
        imp: Impairment,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            listener: TcpListener::bind(listen).await?,
            upstream,
            imp,
        })
    }

    /// Where clients connect.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Runs until `stop` (spawned; `id` seeds the connections apart from other proxies).
    pub fn run(self, stop: CancellationToken, id: u64) -> Arc<Stats> {
        let stats = Arc::new(Stats::default());
        let st = stats.clone();
        tokio::spawn(async move {
            let mut generation = stop.child_token();
            let mut switch = super::Switches::new(&self.imp);
            let mut n = 0u64;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = switch.next() => {
                        // Every open connection is cut, as a network change cuts TCP.
                        generation.cancel();
                        generation = stop.child_token();
                        st.switches.fetch_add(1, Ordering::Relaxed);
                    }
                    a = self.listener.accept() => {
                        let Ok((client, _)) = a else { continue };
                        n += 1;
                        st.flows.fetch_add(1, Ordering::Relaxed);
                        let seed = id << 32 | n;
                        tokio::spawn(proxy_one(
                            client,
                            self.upstream,
                            self.imp.clone(),
                            seed,
                            generation.clone(),
                            st.clone(),
                        ));
                    }
                }
            }
        });
        stats
    }
}

async fn proxy_one(
    client: TcpStream,
    upstream: SocketAddr,
    imp: Impairment,
    seed: u64,
    cut: CancellationToken,
    stats: Arc<Stats>,
) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let up = pump(cr, sw, Shaper::new(&imp, seed * 2, true), stats.clone());
    let down = pump(sr, cw, Shaper::new(&imp, seed * 2 + 1, true), stats);
    tokio::select! {
        _ = cut.cancelled() => {}
        _ = async { tokio::join!(up, down) } => {}
    }
}

/// Copies `r` to `w`, each chunk at the time the shaper gives it.
async fn pump(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    mut shaper: Shaper,
    stats: Arc<Stats>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Bytes)>();
    let writer = async move {
        while let Some((at, data)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if w.write_all(&data).await.is_err() {
                return;
            }
            stats.forwarded.fetch_add(1, Ordering::Relaxed);
        }
        let _ = w.shutdown().await;
    };
    let reader = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    // In order: never None.
                    let at = shaper.schedule(n).unwrap_or_else(Instant::now);
                    if tx.send((at, Bytes::copy_from_slice(&buf[..n]))).is_err() {
                        return;
                    }
                }
            }
        }
    };
    tokio::join!(reader, writer);
}
