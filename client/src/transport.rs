//! Byte-level connections to a gateway: the same length-prefixed frames over a native
//! QUIC bidirectional stream or over WebSocket binary messages.
//!
//! [`connect_raw`] gives a [`RawReader`]/[`RawWriter`] pair that moves bytes without
//! interpreting them; the [`crate::Client`] builds on it, and tests use it to send
//! garbage.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt, stream::SplitSink, stream::SplitStream};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage, protocol::CloseFrame};

use crate::ClientError;
use crate::tls::{Trust, client_config};

/// Which transport to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// Native QUIC (ALPN `petrel/1`), one bidirectional control stream.
    Quic,
    /// WebSocket over TLS, binary messages.
    WebSocket,
}

impl std::str::FromStr for TransportKind {
    type Err = ClientError;
    fn from_str(s: &str) -> Result<Self, ClientError> {
        match s {
            "quic" => Ok(Self::Quic),
            "websocket" | "ws" | "wss" => Ok(Self::WebSocket),
            other => Err(ClientError::Config(format!(
                "unknown transport {other:?} (expected quic or websocket)"
            ))),
        }
    }
}

impl std::fmt::Display for TransportKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Quic => "quic",
            Self::WebSocket => "websocket",
        })
    }
}

/// Where and how to connect, below the protocol level.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Transport.
    pub transport: TransportKind,
    /// `host:port` for QUIC, `wss://host:port/path` for WebSocket.
    pub address: String,
    /// Certificate trust.
    pub trust: Trust,
    /// TLS server name (defaults to the host in `address`).
    pub server_name: Option<String>,
    /// Time allowed for the transport and TLS handshakes.
    pub connect_timeout: Duration,
    /// Local address to connect from (any port); `None`: the system's choice. Load
    /// generators spread many connections over 127.0.0.x this way.
    pub local_ip: Option<std::net::IpAddr>,
}

type WsStream = WebSocketStream<TlsStream<TcpStream>>;

/// How the gateway closed the connection, when it said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseInfo {
    /// QUIC application code, or WebSocket close code, as received.
    pub code: u32,
    /// The error code it carries, spelled as everywhere else (`SLOW_CONSUMER`; see
    /// [`petrel_proto::error_code_name`]); the same for both transports. `None` for a
    /// normal close.
    pub error: Option<String>,
    /// Reason text.
    pub reason: String,
}

impl CloseInfo {
    /// A WebSocket close (`4000 + code` carries an error code).
    fn websocket(close: u16, reason: String) -> Self {
        Self {
            code: u32::from(close),
            error: petrel_proto::error_code_of_websocket_close(close)
                .filter(|c| *c != 0)
                .map(petrel_proto::error_code_name),
            reason,
        }
    }

    /// A QUIC or WebTransport close (the application code is the error code).
    fn quic(code: u64, reason: String) -> Self {
        let code = u32::try_from(code).unwrap_or(u32::MAX);
        Self {
            code,
            error: i32::try_from(code)
                .ok()
                .filter(|c| *c != 0)
                .map(petrel_proto::error_code_name),
            reason,
        }
    }
}

/// Reading half of a raw connection.
pub enum RawReader {
    /// QUIC stream.
    Quic(quinn::RecvStream, quinn::Connection),
    /// WebSocket.
    Ws(SplitStream<WsStream>),
}

/// Writing half of a raw connection.
pub enum RawWriter {
    /// QUIC stream (the endpoint is kept alive with it).
    Quic(quinn::SendStream, quinn::Connection, quinn::Endpoint),
    /// WebSocket.
    Ws(SplitSink<WsStream, WsMessage>),
}

/// What a read returned.
#[derive(Debug)]
pub enum Read {
    /// Some bytes of the frame stream.
    Data(Bytes),
    /// The gateway closed; with its code when it gave one.
    Closed(Option<CloseInfo>),
}

fn host_port(address: &str) -> Result<(String, String), ClientError> {
    let rest = address
        .strip_prefix("wss://")
        .or_else(|| address.strip_prefix("https://"))
        .unwrap_or(address);
    let hostport = rest.split('/').next().unwrap_or(rest);
    let (host, _) = hostport
        .rsplit_once(':')
        .ok_or_else(|| ClientError::Config(format!("{address:?} has no port")))?;
    Ok((
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
        hostport.to_string(),
    ))
}

async fn resolve(hostport: &str) -> Result<SocketAddr, ClientError> {
    tokio::net::lookup_host(hostport)
        .await
        .map_err(|e| ClientError::Connect(format!("resolve {hostport}: {e}")))?
        .next()
        .ok_or_else(|| ClientError::Connect(format!("{hostport} resolves to no address")))
}

/// A UDP endpoint for QUIC connections to `addr`, bound as `ep` asks.
fn quic_endpoint(ep: &Endpoint, addr: SocketAddr) -> Result<quinn::Endpoint, ClientError> {
    let bind = SocketAddr::new(
        ep.local_ip.unwrap_or(if addr.is_ipv6() {
            std::net::Ipv6Addr::UNSPECIFIED.into()
        } else {
            std::net::Ipv4Addr::UNSPECIFIED.into()
        }),
        0,
    );
    quinn::Endpoint::client(bind).map_err(|e| ClientError::Connect(e.to_string()))
}

/// The QUIC client config for `ep`; `early_data` lets a resumed session send its
/// first bytes in 0-RTT.
fn quic_client_config(ep: &Endpoint, early_data: bool) -> Result<quinn::ClientConfig, ClientError> {
    let mut tls = client_config(&ep.trust, &[petrel_proto::ALPN_QUIC])?;
    tls.enable_early_data = early_data;
    let quic_tls = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| ClientError::Config(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic_tls));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_secs(10)));
    cfg.transport_config(Arc::new(transport));
    Ok(cfg)
}

/// A QUIC connection and its control stream; `true` when it went out in 0-RTT (a
/// resumed session: the stream's first bytes leave with the handshake).
async fn connect_quic(
    endpoint: &quinn::Endpoint,
    cfg: quinn::ClientConfig,
    addr: SocketAddr,
    server_name: &str,
) -> Result<(RawReader, RawWriter, bool), ClientError> {
    let connecting = endpoint
        .connect_with(cfg, addr, server_name)
        .map_err(|e| ClientError::Connect(e.to_string()))?;
    let (conn, early) = match connecting.into_0rtt() {
        Ok((conn, _accepted)) => (conn, true),
        Err(connecting) => (
            connecting
                .await
                .map_err(|e| ClientError::Connect(format!("QUIC handshake with {addr}: {e}")))?,
            false,
        ),
    };
    let (send, recv) = conn
        .open_bi()
        .await
        .map_err(|e| ClientError::Connect(format!("open stream: {e}")))?;
    Ok((
        RawReader::Quic(recv, conn.clone()),
        RawWriter::Quic(send, conn, endpoint.clone()),
        early,
    ))
}

/// What a long-lived client keeps across its QUIC connections: one UDP endpoint (so a
/// network change moves every later connection too) and, per gateway address, one TLS
/// config whose session store keeps the tickets that let a reconnect go out in 0-RTT.
/// Tickets live as long as the client: rustls offers no stable way to write them to
/// disk.
#[derive(Default)]
pub struct QuicContext {
    endpoint: Option<quinn::Endpoint>,
    configs: std::collections::HashMap<String, quinn::ClientConfig>,
}

impl QuicContext {
    /// Opens a QUIC connection to `ep`, in 0-RTT when `zero_rtt` and a ticket from an
    /// earlier connection allow; the `bool` says whether it did.
    pub fn connect(
        &mut self,
        ep: &Endpoint,
        zero_rtt: bool,
    ) -> impl std::future::Future<Output = Result<(RawReader, RawWriter, bool), ClientError>> + use<>
    {
        let prepared = self.prepare(ep, zero_rtt);
        let ep = ep.clone();
        async move {
            let (endpoint, cfg) = prepared?;
            let (host, hostport) = host_port(&ep.address)?;
            let server_name = ep.server_name.clone().unwrap_or(host);
            let addr = resolve(&hostport).await?;
            tokio::time::timeout(
                ep.connect_timeout,
                connect_quic(&endpoint, cfg, addr, &server_name),
            )
            .await
            .map_err(|_| ClientError::Connect(format!("timed out connecting to {}", ep.address)))?
        }
    }

    fn prepare(
        &mut self,
        ep: &Endpoint,
        zero_rtt: bool,
    ) -> Result<(quinn::Endpoint, quinn::ClientConfig), ClientError> {
        let endpoint = match &self.endpoint {
            Some(e) => e.clone(),
            None => {
                let any = SocketAddr::from(([0, 0, 0, 0], 0));
                let e = quic_endpoint(ep, any)?;
                self.endpoint = Some(e.clone());
                e
            }
        };
        let cfg = match self.configs.get(&ep.address) {
            Some(c) => c.clone(),
            None => {
                let c = quic_client_config(ep, zero_rtt)?;
                self.configs.insert(ep.address.clone(), c.clone());
                c
            }
        };
        Ok((endpoint, cfg))
    }
}

/// Opens a transport connection to the gateway.
pub async fn connect_raw(ep: &Endpoint) -> Result<(RawReader, RawWriter), ClientError> {
    tokio::time::timeout(ep.connect_timeout, connect_inner(ep))
        .await
        .map_err(|_| ClientError::Connect(format!("timed out connecting to {}", ep.address)))?
}

async fn connect_inner(ep: &Endpoint) -> Result<(RawReader, RawWriter), ClientError> {
    let (host, hostport) = host_port(&ep.address)?;
    let server_name = ep.server_name.clone().unwrap_or(host);
    let addr = resolve(&hostport).await?;
    match ep.transport {
        TransportKind::Quic => {
            let endpoint = quic_endpoint(ep, addr)?;
            let cfg = quic_client_config(ep, false)?;
            let (r, w, _) = connect_quic(&endpoint, cfg, addr, &server_name).await?;
            Ok((r, w))
        }
        TransportKind::WebSocket => {
            let tls = client_config(&ep.trust, &[b"http/1.1"])?;
            let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
            let tcp = match ep.local_ip {
                None => TcpStream::connect(addr).await,
                Some(ip) => {
                    let s = if addr.is_ipv6() {
                        tokio::net::TcpSocket::new_v6()
                    } else {
                        tokio::net::TcpSocket::new_v4()
                    }
                    .map_err(|e| ClientError::Connect(format!("TCP socket: {e}")))?;
                    s.bind(SocketAddr::new(ip, 0))
                        .map_err(|e| ClientError::Connect(format!("bind {ip}: {e}")))?;
                    s.connect(addr).await
                }
            }
            .map_err(|e| ClientError::Connect(format!("TCP connect {addr}: {e}")))?;
            let _ = tcp.set_nodelay(true);
            let name = rustls::pki_types::ServerName::try_from(server_name)
                .map_err(|e| ClientError::Config(format!("bad server name: {e}")))?;
            let tls = connector
                .connect(name, tcp)
                .await
                .map_err(|e| ClientError::Connect(format!("TLS handshake with {addr}: {e}")))?;
            let (ws, _resp) = tokio_tungstenite::client_async(ep.address.as_str(), tls)
                .await
                .map_err(|e| ClientError::Connect(format!("WebSocket handshake: {e}")))?;
            let (sink, stream) = ws.split();
            Ok((RawReader::Ws(stream), RawWriter::Ws(sink)))
        }
    }
}

impl RawWriter {
    /// Writes bytes (one WebSocket message; a chunk of the QUIC stream).
    pub async fn write(&mut self, data: Bytes) -> Result<(), ClientError> {
        match self {
            Self::Quic(send, _, _) => send
                .write_all(&data)
                .await
                .map_err(|e| ClientError::Closed(e.to_string())),
            Self::Ws(sink) => sink
                .send(WsMessage::Binary(data))
                .await
                .map_err(|e| ClientError::Closed(e.to_string())),
        }
    }

    /// Ends the stream (QUIC: finish; WebSocket: send a close frame).
    pub async fn finish(&mut self) -> Result<(), ClientError> {
        match self {
            Self::Quic(send, _, _) => send
                .finish()
                .map_err(|e| ClientError::Closed(e.to_string())),
            Self::Ws(sink) => sink
                .send(WsMessage::Close(Some(CloseFrame {
                    code: tungstenite::protocol::frame::coding::CloseCode::Normal,
                    reason: "bye".into(),
                })))
                .await
                .map_err(|e| ClientError::Closed(e.to_string())),
        }
    }

    /// Closes the connection now.
    pub async fn close(mut self) {
        match &mut self {
            Self::Quic(_, conn, endpoint) => {
                conn.close(0u32.into(), b"bye");
                // Let the close frame leave before the endpoint is dropped.
                let _ =
                    tokio::time::timeout(Duration::from_millis(200), endpoint.wait_idle()).await;
            }
            Self::Ws(_) => {
                let _ = self.finish().await;
            }
        }
    }
}

impl RawWriter {
    /// The QUIC endpoint (to move it to a new socket when the network changes), or
    /// `None` on WebSocket.
    pub fn quic_endpoint(&self) -> Option<quinn::Endpoint> {
        match self {
            Self::Quic(_, _, endpoint) => Some(endpoint.clone()),
            _ => None,
        }
    }
}

impl RawReader {
    /// The QUIC connection (for datagrams), or `None` on WebSocket.
    pub fn datagram_connection(&self) -> Option<quinn::Connection> {
        match self {
            Self::Quic(_, conn) => Some(conn.clone()),
            _ => None,
        }
    }

    /// Reads the next bytes of the frame stream.
    pub async fn read(&mut self) -> Result<Read, ClientError> {
        match self {
            Self::Quic(recv, conn) => match recv.read_chunk(64 * 1024, true).await {
                Ok(Some(chunk)) => Ok(Read::Data(chunk.bytes)),
                Ok(None) => {
                    // The gateway finishes the stream, then closes the connection with
                    // its code: wait briefly for that close to learn the code.
                    let reason = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
                    Ok(Read::Closed(match reason {
                        Ok(e) => quic_error(&e),
                        Err(_) => quic_close(conn),
                    }))
                }
                Err(quinn::ReadError::ConnectionLost(e)) => Ok(Read::Closed(quic_error(&e))),
                Err(e) => Err(ClientError::Closed(e.to_string())),
            },
            Self::Ws(stream) => loop {
                match stream.next().await {
                    Some(Ok(WsMessage::Binary(b))) => return Ok(Read::Data(b)),
                    Some(Ok(WsMessage::Close(frame))) => {
                        return Ok(Read::Closed(frame.map(|f| {
                            CloseInfo::websocket(u16::from(f.code), f.reason.to_string())
                        })));
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(ClientError::Closed(e.to_string())),
                    None => return Ok(Read::Closed(None)),
                }
            },
        }
    }
}

fn quic_error(e: &quinn::ConnectionError) -> Option<CloseInfo> {
    match e {
        quinn::ConnectionError::ApplicationClosed(c) => Some(CloseInfo::quic(
            c.error_code.into_inner(),
            String::from_utf8_lossy(&c.reason).into_owned(),
        )),
        _ => None,
    }
}

fn quic_close(conn: &quinn::Connection) -> Option<CloseInfo> {
    conn.close_reason().as_ref().and_then(quic_error)
}
