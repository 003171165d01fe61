//! One open connection's frames from the gateway, as one sequence: the control
//! stream, and on QUIC the delivery streams (read only once started, after Welcome)
//! and datagrams (typing). Both the one-connection [`crate::Connection`] and the
//! reconnecting [`crate::Client`] read through it.

use bytes::Bytes;
use petrel_proto::{FrameDecoder, pb};
use tokio::sync::mpsc;

use crate::transport::{CloseInfo, RawReader, Read};
use crate::{ClientError, decode_server};

/// How a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ended {
    /// The close's error code name, when the gateway gave one.
    pub code: Option<String>,
    /// What the app is told.
    pub reason: String,
}

impl Ended {
    fn closed(info: Option<CloseInfo>) -> Self {
        match info {
            Some(CloseInfo {
                error: Some(code),
                reason,
                ..
            }) => Self {
                reason: format!("{code}: {reason}"),
                code: Some(code),
            },
            Some(i) if i.code != 0 && i.code != 1000 => Self {
                code: None,
                reason: format!("close code {}: {}", i.code, i.reason),
            },
            _ => Self {
                code: None,
                reason: "closed by the gateway".into(),
            },
        }
    }
}

impl From<ClientError> for Ended {
    fn from(e: ClientError) -> Self {
        Self {
            code: None,
            reason: e.to_string(),
        }
    }
}

/// The control stream: the handshake and everything not on a delivery stream.
struct Control {
    reader: RawReader,
    decoder: FrameDecoder,
}

impl Control {
    async fn next(&mut self) -> Result<pb::server_frame::Kind, Ended> {
        loop {
            if let Some(frame) = self
                .decoder
                .next_frame()
                .map_err(|e| ClientError::Protocol(e.to_string()))?
            {
                match decode_server(frame).map_err(ClientError::Protocol)?.kind {
                    Some(k) => return Ok(k),
                    None => continue, // a frame kind newer than this client: skip it
                }
            }
            match self.reader.read().await? {
                Read::Data(b) => self.decoder.push(&b),
                Read::Closed(info) => return Err(Ended::closed(info)),
            }
        }
    }
}

/// The frames of one connection.
pub(crate) struct Link {
    control: Control,
    deliveries: Option<DeliveryStreams>,
    datagrams: Option<quinn::Connection>,
    max_frame_bytes: usize,
}

impl Link {
    pub fn new(reader: RawReader, max_frame_bytes: usize) -> Self {
        let datagrams = reader.datagram_connection();
        Self {
            control: Control {
                reader,
                decoder: FrameDecoder::new(max_frame_bytes),
            },
            deliveries: None,
            datagrams,
            max_frame_bytes,
        }
    }

    /// The QUIC connection, for datagrams; `None` on WebSocket.
    pub fn quic(&self) -> Option<&quinn::Connection> {
        self.datagrams.as_ref()
    }

    /// Starts reading the delivery streams the gateway opens (after Welcome: what it
    /// sent on them waits in QUIC until then, so nothing is handed over early).
    pub fn start_deliveries(&mut self, announced: u32) {
        if let (Some(conn), true, None) = (&self.datagrams, announced > 0, &self.deliveries) {
            self.deliveries = Some(DeliveryStreams::start(conn.clone(), self.max_frame_bytes));
        }
    }

    /// The next frame on the control stream only (the handshake).
    pub async fn next_control(&mut self) -> Result<pb::server_frame::Kind, Ended> {
        self.control.next().await
    }

    /// The next frame from anywhere on the connection; each source keeps its order.
    pub async fn next(&mut self) -> Result<pb::server_frame::Kind, Ended> {
        loop {
            tokio::select! {
                Some(d) = next_datagram(self.datagrams.as_ref()) => {
                    // A datagram carries one whole frame (typing from the gateway).
                    if let Some(kind @ pb::server_frame::Kind::Typing(_)) = one_frame(d) {
                        return Ok(kind);
                    }
                }
                Some(frame) = next_delivery(self.deliveries.as_mut()) => {
                    return frame.map_err(Ended::from);
                }
                frame = self.control.next() => return frame,
            }
        }
    }
}

fn one_frame(d: Bytes) -> Option<pb::server_frame::Kind> {
    let mut one = FrameDecoder::new(4096);
    one.push(&d);
    let frame = one.next_frame().ok()??;
    decode_server(frame).ok()?.kind
}

/// The next QUIC datagram; never ready on WebSocket or once the connection is over.
async fn next_datagram(conn: Option<&quinn::Connection>) -> Option<Bytes> {
    match conn {
        Some(c) => match c.read_datagram().await {
            Ok(d) => Some(d),
            Err(_) => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// Reads the delivery streams the gateway opens: one task accepts them, one task per
/// stream splits its frames; all of them go to `rx` in each stream's order. The
/// channel is bounded, so an app that stops reading events stops the stream reads,
/// and QUIC flow control pushes back on the gateway.
struct DeliveryStreams {
    rx: mpsc::Receiver<Result<pb::server_frame::Kind, ClientError>>,
    accept: tokio::task::JoinHandle<()>,
}

impl DeliveryStreams {
    fn start(conn: quinn::Connection, max_frame_bytes: usize) -> Self {
        let (tx, rx) = mpsc::channel(64);
        let accept = tokio::spawn(async move {
            let mut readers = tokio::task::JoinSet::new();
            // Ends when the connection does; dropping `readers` stops the rest.
            while let Ok(recv) = conn.accept_uni().await {
                readers.spawn(read_stream(recv, tx.clone(), max_frame_bytes));
                while readers.try_join_next().is_some() {}
            }
        });
        Self { rx, accept }
    }
}

async fn read_stream(
    mut recv: quinn::RecvStream,
    tx: mpsc::Sender<Result<pb::server_frame::Kind, ClientError>>,
    max_frame_bytes: usize,
) {
    let mut decoder = FrameDecoder::new(max_frame_bytes);
    loop {
        let item = match decoder.next_frame() {
            Ok(Some(frame)) => match decode_server(frame) {
                Ok(pb::ServerFrame { kind: Some(k) }) => Ok(k),
                Ok(_) => continue, // newer than this client: skip it
                Err(e) => Err(ClientError::Protocol(e)),
            },
            Ok(None) => match recv.read_chunk(64 * 1024, true).await {
                Ok(Some(c)) => {
                    decoder.push(&c.bytes);
                    continue;
                }
                // Finished, reset or the connection ended: the control stream
                // reports why.
                _ => return,
            },
            Err(e) => Err(ClientError::Protocol(format!("delivery stream: {e}"))),
        };
        let fatal = item.is_err();
        if tx.send(item).await.is_err() || fatal {
            return;
        }
    }
}

impl Drop for DeliveryStreams {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// The next frame from a delivery stream; never ready without them.
async fn next_delivery(
    d: Option<&mut DeliveryStreams>,
) -> Option<Result<pb::server_frame::Kind, ClientError>> {
    match d {
        Some(d) => match d.rx.recv().await {
            Some(r) => Some(r),
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}
