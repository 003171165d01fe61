//! The TCP listeners of the WebSocket transport (the fallback where QUIC is blocked):
//! over TLS, or plain on a second listener for a TLS-terminating proxy in front (and
//! development).
//!
//! Binary messages carry the same length-prefixed frames, treated as one byte stream.
//! The close code is 4000 + the error code.

use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use petrel_core::ErrorCode;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::{
    CloseFrame, WebSocketConfig, frame::coding::CloseCode,
};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::connection::admission::{Admission, Pending};
use crate::connection::{
    Connection, FrameReader, FrameWriter, NoDatagrams, Shared, TransportError, next_id,
};

/// The path clients connect to.
pub const PATH: &str = "/ws";

/// A byte stream a WebSocket can run on (TLS or plain TCP).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// Reading half.
pub struct WsReader<S: Io>(SplitStream<WebSocketStream<S>>);
/// Writing half.
pub struct WsWriter<S: Io>(SplitSink<WebSocketStream<S>, Message>);

impl<S: Io> FrameReader for WsReader<S> {
    type Datagrams = NoDatagrams;

    fn datagrams(&self) -> Option<NoDatagrams> {
        None
    }

    async fn recv(&mut self) -> Result<Option<Bytes>, TransportError> {
        loop {
            return match self.0.next().await {
                Some(Ok(Message::Binary(b))) => Ok(Some(b)),
                // Text is not part of the protocol: refused, not decoded.
                Some(Ok(Message::Text(_))) => Err(TransportError::NotBinary),
                Some(Ok(Message::Close(_))) | None => Ok(None),
                Some(Ok(_)) => continue, // ping/pong are answered by tungstenite
                Some(Err(tungstenite::Error::Capacity(_))) => Err(TransportError::TooLarge),
                Some(Err(e)) => Err(TransportError::Io(e.to_string())),
            };
        }
    }
}

impl<S: Io> FrameWriter for WsWriter<S> {
    async fn abort(&mut self, code: ErrorCode, reason: &str) {
        // The socket is full, so the close frame may not get out; the TCP connection
        // closes when the task ends either way.
        let frame = CloseFrame {
            code: CloseCode::from(code.websocket_close_code()),
            reason: reason.chars().take(100).collect::<String>().into(),
        };
        let _ = tokio::time::timeout(
            std::time::Duration::from_millis(200),
            self.0.send(Message::Close(Some(frame))),
        )
        .await;
    }

    async fn send(&mut self, data: Bytes) -> Result<(), TransportError> {
        use tungstenite::error::ProtocolError;
        self.0
            .send(Message::Binary(data))
            .await
            .map_err(|e| match e {
                // The client's close frame arrived: the close handshake is under way.
                tungstenite::Error::Protocol(ProtocolError::SendAfterClosing)
                | tungstenite::Error::ConnectionClosed
                | tungstenite::Error::AlreadyClosed => TransportError::PeerClosed,
                e => TransportError::Io(e.to_string()),
            })
    }

    async fn finish(&mut self) {
        // Sends the answer to the client's close frame that tungstenite queued.
        let _ = self.0.close().await;
    }

    async fn close(&mut self, code: ErrorCode, reason: &str) {
        let frame = CloseFrame {
            code: CloseCode::from(code.websocket_close_code()),
            // Close reasons are limited to 123 bytes.
            reason: reason.chars().take(100).collect::<String>().into(),
        };
        let _ = self.0.send(Message::Close(Some(frame))).await;
        let _ = self.0.close().await;
    }
}

/// Accepts WebSocket connections until `shutdown`: over TLS when `tls` is given,
/// plain otherwise.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    admission: Arc<Admission>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(v) => v,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let pending = match admission.admit(peer.ip()) {
            Ok(p) => p,
            Err(refusal) => {
                debug!(%peer, reason = refusal.as_str(), "refusing a WebSocket connection");
                shared.count_refused(refusal);
                tracker.spawn(refuse(tcp, tls.clone()));
                continue;
            }
        };
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        let tls = tls.clone();
        tracker.spawn(async move {
            let _ = tcp.set_nodelay(true);
            let handshake = shared.session.handshake_timeout;
            let deadline = tokio::time::Instant::now() + handshake;
            match tls {
                Some(tls) => match tokio::time::timeout_at(deadline, tls.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        run(
                            stream,
                            "websocket",
                            peer,
                            deadline,
                            shared,
                            shutdown,
                            pending,
                        )
                        .await
                    }
                    Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => debug!(%peer, "TLS handshake timed out"),
                },
                None => {
                    run(
                        tcp,
                        "websocket-plain",
                        peer,
                        deadline,
                        shared,
                        shutdown,
                        pending,
                    )
                    .await
                }
            }
        });
    }
}

/// The WebSocket handshake on `stream` (path [`PATH`] only), then the connection.
async fn run<S: Io>(
    stream: S,
    transport: &'static str,
    peer: std::net::SocketAddr,
    deadline: tokio::time::Instant,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    pending: Pending,
) {
    let max = shared.session.max_frame_bytes;
    let mut config = WebSocketConfig::default();
    // One message may hold at most one maximal frame plus its prefix.
    config.max_message_size = Some(max + 8);
    config.max_frame_size = Some(max + 8);
    // tungstenite reads in 128 KiB chunks and buffers writes up to 128 KiB by default:
    // per idle connection that is most of its memory. Messaging frames are small; the
    // gateway writes whole batches and flushes each.
    config.read_buffer_size = 4 * 1024;
    config.write_buffer_size = 0;
    // The callback's signature (and its large error type) is tungstenite's.
    #[allow(clippy::result_large_err)]
    let check_path = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        if req.uri().path() == PATH {
            Ok(resp)
        } else {
            let mut r = ErrorResponse::new(Some(format!("use {PATH}")));
            *r.status_mut() = tungstenite::http::StatusCode::NOT_FOUND;
            Err(r)
        }
    };
    let accepted = tokio::time::timeout_at(
        deadline,
        tokio_tungstenite::accept_hdr_async_with_config(stream, check_path, Some(config)),
    )
    .await;
    let ws = match accepted {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "WebSocket handshake failed");
            return;
        }
        Err(_) => {
            debug!(%peer, "WebSocket handshake timed out");
            return;
        }
    };
    let (sink, stream) = ws.split();
    Connection {
        id: next_id(),
        transport,
        peer,
        reader: WsReader(stream),
        writer: WsWriter(sink),
        shared,
        shutdown,
        admission: Some(pending),
    }
    .run()
    .await;
}

/// A connection over the admission budget: HTTP 503 before any upgrade (after TLS
/// where the listener has it), bounded in time, then closed.
async fn refuse(tcp: tokio::net::TcpStream, tls: Option<TlsAcceptor>) {
    use tokio::io::AsyncWriteExt;
    const BUSY: &[u8] =
        b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 1\r\nContent-Length: 0\r\n\r\n";
    let limit = std::time::Duration::from_secs(2);
    let _ = tokio::time::timeout(limit, async {
        match tls {
            Some(tls) => {
                if let Ok(mut s) = tls.accept(tcp).await {
                    let _ = s.write_all(BUSY).await;
                    let _ = s.shutdown().await;
                }
            }
            None => {
                let mut tcp = tcp;
                let _ = tcp.write_all(BUSY).await;
                let _ = tcp.shutdown().await;
            }
        }
    })
    .await;
}
