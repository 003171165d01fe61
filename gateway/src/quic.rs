//! Native QUIC transport (quinn, ALPN `petrel/1`).
//!
//! The client opens one bidirectional stream, the control stream, carrying the
//! length-prefixed frames. Idle detection and keep-alive are QUIC's own.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use petrel_core::ErrorCode;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::conn::{Connection, FrameReader, FrameWriter, Shared, TransportError, next_id};

/// Reading half: the control stream.
pub struct QuicReader(pub quinn::RecvStream);

/// Writing half: the control stream and its connection (for the close code).
pub struct QuicWriter(pub quinn::SendStream, pub quinn::Connection);

impl FrameReader for QuicReader {
    async fn recv(&mut self) -> Result<Option<Bytes>, TransportError> {
        match self.0.read_chunk(64 * 1024, true).await {
            Ok(Some(c)) => Ok(Some(c.bytes)),
            Ok(None) => Ok(None),
            Err(e) => Err(TransportError::Io(e.to_string())),
        }
    }
}

impl FrameWriter for QuicWriter {
    async fn send(&mut self, data: Bytes) -> Result<(), TransportError> {
        self.0
            .write_chunk(data)
            .await
            .map_err(|e| TransportError::Io(e.to_string()))
    }

    async fn close(mut self, code: ErrorCode, reason: &str) {
        let _ = self.0.finish();
        // Give the last frames (the Error frame) a moment to be acknowledged: closing
        // the connection at once would discard unacknowledged stream data.
        let _ = tokio::time::timeout(Duration::from_secs(1), self.0.stopped()).await;
        self.1
            .close(code.quic_close_code().into(), reason.as_bytes());
    }
}

/// Server-side QUIC transport parameters.
pub fn transport_config(idle: Duration) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    if let Ok(idle) = quinn::IdleTimeout::try_from(idle) {
        t.max_idle_timeout(Some(idle));
    }
    // One control stream per connection today; a few more for per-conversation
    // streams later, never an unbounded number.
    t.max_concurrent_bidi_streams(8u32.into());
    t.max_concurrent_uni_streams(8u32.into());
    t
}

/// Accepts QUIC connections until `shutdown`.
pub async fn serve(
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    limit: Arc<Semaphore>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    loop {
        let incoming = tokio::select! {
            _ = shutdown.cancelled() => break,
            i = endpoint.accept() => match i { Some(i) => i, None => break },
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            warn!("connection limit reached; refusing QUIC connection");
            incoming.refuse();
            continue;
        };
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        let handshake = shared.session.handshake_timeout;
        tracker.spawn(async move {
            let _permit = permit;
            let peer = incoming.remote_address();
            let deadline = tokio::time::Instant::now() + handshake;
            let conn = match tokio::time::timeout_at(deadline, incoming).await {
                Ok(Ok(conn)) => conn,
                Ok(Err(e)) => {
                    debug!(%peer, error = %e, "QUIC handshake failed");
                    return;
                }
                Err(_) => {
                    debug!(%peer, "QUIC handshake timed out");
                    return;
                }
            };
            // A QUIC stream is invisible until the client writes to it, so a silent
            // client has no stream to carry an Error frame: close with the code alone.
            let (send, recv) = match tokio::time::timeout_at(deadline, conn.accept_bi()).await {
                Ok(Ok(streams)) => streams,
                Ok(Err(e)) => {
                    debug!(%peer, error = %e, "QUIC connection ended before its control stream");
                    return;
                }
                Err(_) => {
                    let code = ErrorCode::HandshakeTimeout;
                    conn.close(
                        code.quic_close_code().into(),
                        b"no control stream within the handshake timeout",
                    );
                    debug!(%peer, "no control stream within the handshake timeout");
                    return;
                }
            };
            Connection {
                id: next_id(),
                transport: "quic",
                peer,
                reader: QuicReader(recv),
                writer: QuicWriter(send, conn),
                shared,
                shutdown,
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
