//! The HTTP/3 part of WebTransport on the UDP listener: SETTINGS, then the browser's
//! `CONNECT` request, answered 200 on [`PATH`] and 404 elsewhere. What follows is the
//! same as native QUIC ([`super::quic`]).

use std::net::SocketAddr;

use tokio::time::Instant;
use tracing::debug;
use web_transport_quinn::Session;

/// The WebTransport ALPN (HTTP/3).
pub const ALPN_H3: &[u8] = b"h3";

/// The path of WebTransport sessions: `https://host:port/wt`.
pub const PATH: &str = "/wt";

/// Accepts the WebTransport session of a handshaken HTTP/3 connection, by `deadline`.
pub(super) async fn accept(
    conn: quinn::Connection,
    peer: SocketAddr,
    deadline: Instant,
) -> Option<Session> {
    let request =
        match tokio::time::timeout_at(deadline, web_transport_quinn::Request::accept(conn)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                debug!(%peer, error = %e, "WebTransport handshake failed");
                return None;
            }
            Err(_) => {
                debug!(%peer, "WebTransport handshake timed out");
                return None;
            }
        };
    if request.url.path() != PATH {
        debug!(%peer, url = %request.url, "WebTransport request for an unknown path");
        let _ = request
            .reject(web_transport_quinn::http::StatusCode::NOT_FOUND)
            .await;
        return None;
    }
    match request.ok().await {
        Ok(session) => Some(session),
        Err(e) => {
            debug!(%peer, error = %e, "WebTransport session not established");
            None
        }
    }
}
