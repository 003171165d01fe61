//! The UDP listener: QUIC transports on one port, told apart by ALPN:
//! - `petrel/1` — native QUIC clients (the Rust SDK, mobile apps);
//! - `h3` — WebTransport from browsers (HTTP/3 `CONNECT` to
//!   [`super::webtransport::PATH`], accepted in [`super::webtransport`]).
//!
//! Both become a [`web_transport_quinn::Session`] (a raw one for native QUIC), so the
//! rest is the same: the client opens one bidirectional stream, the control stream,
//! carrying the length-prefixed frames; the close code is the error code. Idle
//! detection and keep-alive are QUIC's own.
//!
//! Delivery streams: when Hello asks for them, Deliver frames go on up to that many
//! unidirectional streams the gateway opens on first use, a subject always on the same
//! one (by hash), so a packet lost in one conversation holds up only the conversations
//! sharing its stream, and the order within a subject is kept. The control stream has
//! the higher send priority: answers (SendResult, SyncBatch) are not queued behind a
//! backlog of deliveries.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use petrel_core::ErrorCode;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;
use web_transport_quinn::{RecvStream, SendStream, Session};

use super::webtransport::{self, ALPN_H3};
use crate::connection::admission::Admission;
use crate::connection::{
    Connection, Datagrams, FrameReader, FrameWriter, Shared, TransportError, next_id,
};

/// Reading half: the control stream and the session (for datagrams).
pub struct QuicReader(pub RecvStream, pub Session);

/// The datagrams of a QUIC or WebTransport session.
pub struct QuicDatagrams(Session);

impl Datagrams for QuicDatagrams {
    async fn recv(&self) -> Bytes {
        match self.0.read_datagram().await {
            Ok(d) => d,
            Err(_) => std::future::pending().await,
        }
    }
}

/// Writing half: the control stream, its session (for the close code and opening
/// delivery streams) and the delivery streams opened so far.
pub struct QuicWriter {
    control: SendStream,
    session: Session,
    /// One slot per granted delivery stream; opened on its first frame.
    deliveries: Vec<Option<SendStream>>,
}

impl QuicWriter {
    /// A writer on the control stream `control` of `session`, no delivery streams yet.
    pub fn new(control: SendStream, session: Session) -> Self {
        // Answers before bulk deliveries (quinn sends higher priorities first).
        let _ = control.set_priority(1);
        Self {
            control,
            session,
            deliveries: Vec::new(),
        }
    }
}

impl FrameReader for QuicReader {
    type Datagrams = QuicDatagrams;

    fn datagrams(&self) -> Option<QuicDatagrams> {
        Some(QuicDatagrams(self.1.clone()))
    }

    async fn recv(&mut self) -> Result<Option<Bytes>, TransportError> {
        match self.0.read_chunk(64 * 1024, true).await {
            Ok(Some(c)) => Ok(Some(c.bytes)),
            Ok(None) => Ok(None),
            Err(e) => Err(TransportError::Io(e.to_string())),
        }
    }
}

impl FrameWriter for QuicWriter {
    fn send_datagram(&mut self, frame: Bytes) -> bool {
        frame.len() <= self.session.max_datagram_size() && self.session.send_datagram(frame).is_ok()
    }

    fn grant_delivery_streams(&mut self, n: u32) -> u32 {
        self.deliveries = (0..n).map(|_| None).collect();
        n
    }

    fn delivery_stream(&self, subject: &str) -> Option<usize> {
        use std::hash::{Hash, Hasher};
        if self.deliveries.is_empty() {
            return None;
        }
        // Fixed keys: the same subject maps to the same stream for the whole
        // connection (that is what keeps a subject's order).
        let mut h = std::hash::DefaultHasher::new();
        subject.hash(&mut h);
        Some((h.finish() % self.deliveries.len() as u64) as usize)
    }

    async fn send_delivery(&mut self, i: usize, data: Bytes) -> Result<(), TransportError> {
        let Some(slot) = self.deliveries.get_mut(i) else {
            return self.send(data).await;
        };
        let stream = match slot {
            Some(s) => s,
            None => {
                // Waits while the client's stream limit is used up; the caller's
                // write timeout bounds that like any other blocked write.
                let s =
                    self.session.open_uni().await.map_err(|e| {
                        TransportError::Io(format!("opening a delivery stream: {e}"))
                    })?;
                slot.insert(s)
            }
        };
        stream
            .write_chunk(data)
            .await
            .map_err(|e| TransportError::Io(e.to_string()))
    }

    async fn abort(&mut self, code: ErrorCode, reason: &str) {
        self.session
            .close(code.quic_close_code(), reason.as_bytes());
    }

    async fn send(&mut self, data: Bytes) -> Result<(), TransportError> {
        self.control
            .write_chunk(data)
            .await
            .map_err(|e| TransportError::Io(e.to_string()))
    }

    async fn close(&mut self, code: ErrorCode, reason: &str) {
        let _ = self.control.finish();
        for s in self.deliveries.iter_mut().flatten() {
            let _ = s.finish();
        }
        // Give the last frames (the Error frame) a moment to be acknowledged: closing
        // the connection at once would discard unacknowledged stream data.
        let all_stopped = futures::future::join_all(
            std::iter::once(&self.control)
                .chain(self.deliveries.iter().flatten())
                .map(|s| s.stopped()),
        );
        let _ = tokio::time::timeout(Duration::from_secs(1), all_stopped).await;
        self.session
            .close(code.quic_close_code(), reason.as_bytes());
        // WebTransport writes a close capsule before closing the connection.
        let _ = tokio::time::timeout(Duration::from_secs(1), self.session.closed()).await;
    }
}

/// Server-side QUIC transport parameters.
pub fn transport_config(idle: Duration) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    if let Ok(idle) = quinn::IdleTimeout::try_from(idle) {
        t.max_idle_timeout(Some(idle));
    }
    // Streams the client may open: one control stream, never an unbounded number.
    // HTTP/3 needs three unidirectional streams of its own (control, QPACK encoder and
    // decoder) before WebTransport starts. (Delivery streams are opened by the
    // gateway; the client's limit applies to those.)
    // What quinn buffers toward one client that has not acknowledged it (default
    // 10 MiB): a stalled client holds at most this. 2 MiB still fills ~160 Mbit/s at
    // 100 ms RTT, plenty for messaging.
    t.send_window(2 * 1024 * 1024);
    t.max_concurrent_bidi_streams(8u32.into());
    t.max_concurrent_uni_streams(8u32.into());
    t
}

/// Accepts QUIC connections until `shutdown`.
pub async fn serve(
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    admission: Arc<Admission>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    loop {
        let incoming = tokio::select! {
            _ = shutdown.cancelled() => break,
            i = endpoint.accept() => match i { Some(i) => i, None => break },
        };
        let peer = incoming.remote_address();
        let pending = match admission.admit(peer.ip()) {
            Ok(p) => p,
            Err(refusal) => {
                debug!(%peer, reason = refusal.as_str(), "refusing a QUIC connection");
                shared.count_refused(refusal);
                incoming.refuse();
                continue;
            }
        };
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let deadline = Instant::now() + shared.session.handshake_timeout;
            let Some(conn) = handshake(incoming, peer, deadline).await else {
                return;
            };
            let Some((transport, session, send, recv)) = open(conn, peer, deadline).await else {
                return;
            };
            Connection {
                id: next_id(),
                transport,
                peer,
                reader: QuicReader(recv, session.clone()),
                writer: QuicWriter::new(send, session),
                shared,
                shutdown,
                admission: Some(pending),
            }
            .run()
            .await;
        });
    }
    endpoint.close(
        ErrorCode::GoingAway.quic_close_code().into(),
        b"shutting down",
    );
}

/// The connection, as soon as the client's first flight has been read: a resumed
/// client's Hello arrives in 0-RTT and is answered in 0.5-RTT, one round trip sooner.
/// A replayed first flight gains little: rustls takes a TLS 1.3 session out of the
/// stateful cache when it is resumed, so a replay after the client's own flight gets a
/// full handshake and its early data is dropped; one that races ahead gets a session
/// it cannot read, which ends at the handshake timeout.
async fn handshake(
    incoming: quinn::Incoming,
    peer: SocketAddr,
    deadline: Instant,
) -> Option<quinn::Connection> {
    let mut connecting = match incoming.accept() {
        Ok(c) => c,
        Err(e) => {
            debug!(%peer, error = %e, "QUIC connection refused");
            return None;
        }
    };
    // The ALPN is known once the ClientHello is read; `open` needs it.
    if tokio::time::timeout_at(deadline, connecting.handshake_data())
        .await
        .ok()?
        .is_err()
    {
        debug!(%peer, "QUIC handshake failed before the ClientHello was read");
        return None;
    }
    match connecting.into_0rtt() {
        Ok((conn, _)) => Some(conn),
        Err(connecting) => match tokio::time::timeout_at(deadline, connecting).await {
            Ok(Ok(conn)) => Some(conn),
            Ok(Err(e)) => {
                debug!(%peer, error = %e, "QUIC handshake failed");
                None
            }
            Err(_) => {
                debug!(%peer, "QUIC handshake timed out");
                None
            }
        },
    }
}

/// Turns a connection into a session and its control stream, by ALPN.
async fn open(
    conn: quinn::Connection,
    peer: SocketAddr,
    deadline: Instant,
) -> Option<(&'static str, Session, SendStream, RecvStream)> {
    let alpn = conn
        .handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol);
    let (transport, session) = match alpn.as_deref() {
        Some(ALPN_H3) => (
            "webtransport",
            webtransport::accept(conn, peer, deadline).await?,
        ),
        _ => ("quic", Session::raw(conn)),
    };
    // A QUIC stream is invisible until the client writes to it, so a silent client has
    // no stream to carry an Error frame: close with the code alone.
    match tokio::time::timeout_at(deadline, session.accept_bi()).await {
        Ok(Ok((send, recv))) => Some((transport, session, send, recv)),
        Ok(Err(e)) => {
            debug!(%peer, transport, error = %e, "connection ended before its control stream");
            None
        }
        Err(_) => {
            let code = ErrorCode::HandshakeTimeout;
            session.close(
                code.quic_close_code(),
                b"no control stream within the handshake timeout",
            );
            let _ = tokio::time::timeout(Duration::from_secs(1), session.closed()).await;
            debug!(%peer, transport, "no control stream within the handshake timeout");
            None
        }
    }
}
