//! What a connection needs of its transport: bytes in, frames out, and optionally
//! unreliable datagrams and extra delivery streams. Each listener implements these for
//! its own connections (`listeners::quic`, `listeners::websocket`); nothing of quinn or
//! tungstenite shows through.

use bytes::Bytes;
use petrel_core::ErrorCode;

/// Why reading from or writing to a transport failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The transport refused a message for its size (WebSocket message limit).
    #[error("message too large")]
    TooLarge,
    /// A message that is not binary (a WebSocket text message).
    #[error("not a binary message")]
    NotBinary,
    /// The connection broke.
    #[error("{0}")]
    Io(String),
    /// A write did not complete within the write timeout: the client stopped reading.
    #[error("client stopped reading (write timed out)")]
    Stalled,
    /// The client closed the connection; nothing more can be written.
    #[error("the client closed the connection")]
    PeerClosed,
}

/// Unreliable datagrams from the client (QUIC, WebTransport).
pub trait Datagrams: Send + Sync + 'static {
    /// The next datagram; never ready once the session is over (the stream reader
    /// reports that).
    fn recv(&self) -> impl Future<Output = Bytes> + Send;
}

/// For transports without datagrams.
#[derive(Debug, Clone, Copy)]
pub enum NoDatagrams {}

impl Datagrams for NoDatagrams {
    async fn recv(&self) -> Bytes {
        match *self {}
    }
}

/// Receives the client's byte stream.
pub trait FrameReader: Send {
    /// The transport's datagrams ([`NoDatagrams`] where it has none).
    type Datagrams: Datagrams;
    /// Next chunk of bytes; `None` when the client finished cleanly. Must be cancel-safe.
    fn recv(&mut self) -> impl Future<Output = Result<Option<Bytes>, TransportError>> + Send;
    /// Where to read unreliable datagrams from; `None` on transports without them.
    fn datagrams(&self) -> Option<Self::Datagrams>;
}

/// The next datagram from `d`; never ready without datagrams.
pub(super) async fn next_datagram<D: Datagrams>(d: Option<&D>) -> Bytes {
    match d {
        Some(d) => d.recv().await,
        None => std::future::pending().await,
    }
}

/// Sends bytes to the client.
pub trait FrameWriter: Send {
    /// Writes encoded frames on the control stream.
    fn send(&mut self, data: Bytes) -> impl Future<Output = Result<(), TransportError>> + Send;
    /// Sends one encoded frame as an unreliable datagram, if the transport has them
    /// and it fits; false: send it on the stream instead.
    fn send_datagram(&mut self, _frame: Bytes) -> bool {
        false
    }
    /// Sets up to `n` delivery streams; returns how many this transport grants: none
    /// by default (everything on the control stream).
    fn grant_delivery_streams(&mut self, _n: u32) -> u32 {
        0
    }
    /// The delivery stream that carries `subject`; `None`: the control stream.
    fn delivery_stream(&self, _subject: &str) -> Option<usize> {
        None
    }
    /// Writes encoded Deliver frames on delivery stream `i`.
    fn send_delivery(
        &mut self,
        _i: usize,
        data: Bytes,
    ) -> impl Future<Output = Result<(), TransportError>> + Send {
        self.send(data)
    }
    /// The client ended its side: completes the transport's close (WebSocket answers
    /// the client's close frame); nothing by default.
    fn finish(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }
    /// Flushes what was written and closes with `code`; nothing is written after.
    fn close(&mut self, code: ErrorCode, reason: &str) -> impl Future<Output = ()> + Send;
    /// Closes at once with `code`, without waiting for what is unwritten (the client
    /// stopped reading).
    fn abort(&mut self, code: ErrorCode, reason: &str) -> impl Future<Output = ()> + Send;
}
