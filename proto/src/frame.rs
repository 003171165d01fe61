//! Length-prefixed framing shared by all transports.
//!
//! A frame is `varint(len) || protobuf(len bytes)`. The same framing runs over a QUIC
//! stream, a WebTransport stream and WebSocket binary messages (which are treated as a
//! byte stream, so a message may carry several frames or part of one).

use bytes::{Buf, Bytes, BytesMut};
use prost::Message;

/// Why a byte stream could not be split into frames.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length prefix is not a valid varint (more than 5 bytes, or over u32).
    #[error("malformed length prefix")]
    BadLength,
    /// The announced frame length exceeds the configured maximum.
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Announced length.
        len: u64,
        /// Configured maximum.
        max: usize,
    },
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame ({buffered} bytes buffered)")]
    Truncated {
        /// How many bytes of the unfinished frame were buffered.
        buffered: usize,
    },
}

/// Encodes one message with its varint length prefix.
pub fn encode_frame<M: Message>(msg: &M) -> Bytes {
    let len = msg.encoded_len();
    let mut buf = BytesMut::with_capacity(len + prost::length_delimiter_len(len));
    // Encoding into a BytesMut that grows cannot fail.
    let _ = msg.encode_length_delimited(&mut buf);
    buf.freeze()
}

/// Incremental frame splitter: push bytes as they arrive, pop whole frames.
///
/// It never buffers more than `max + 5` bytes of one frame: an oversize length is
/// rejected as soon as the prefix has been read.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    max: usize,
}

impl FrameDecoder {
    /// A decoder that refuses frames longer than `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max,
        }
    }

    /// The configured maximum frame size.
    pub fn max_frame_bytes(&self) -> usize {
        self.max
    }

    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes buffered but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Returns the next whole frame's payload, `Ok(None)` when more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, FrameError> {
        let mut len: u64 = 0;
        let mut prefix = 0usize;
        loop {
            let Some(&byte) = self.buf.get(prefix) else {
                return Ok(None);
            };
            if prefix == 5 {
                return Err(FrameError::BadLength);
            }
            len |= u64::from(byte & 0x7f) << (7 * prefix);
            prefix += 1;
            if byte & 0x80 == 0 {
                break;
            }
        }
        if len > u64::from(u32::MAX) {
            return Err(FrameError::BadLength);
        }
        if len > self.max as u64 {
            return Err(FrameError::TooLarge { len, max: self.max });
        }
        let len = len as usize;
        if self.buf.len() < prefix + len {
            // Reserve once so a large frame arriving in small pieces does not reallocate often.
            self.buf.reserve(prefix + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(prefix);
        Ok(Some(self.buf.split_to(len).freeze()))
    }

    /// Call when the peer finished sending: an unfinished frame is an error.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Truncated {
                buffered: self.buf.len(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::{self, client_frame::Kind};
    use proptest::prelude::*;

    fn send_frame(id: String, to: String, content: Vec<u8>) -> pb::ClientFrame {
        pb::ClientFrame {
            kind: Some(Kind::Send(pb::Send {
                client_msg_id: id,
                to: Some(pb::send::To::User(to)),
                content: content.into(),
                content_type: "text/plain".into(),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn oversize_prefix_is_rejected_before_the_body_arrives() {
        let mut d = FrameDecoder::new(100);
        d.push(&[0x80, 0x01]); // 128
        assert_eq!(
            d.next_frame(),
            Err(FrameError::TooLarge { len: 128, max: 100 })
        );
    }

    #[test]
    fn overlong_varint_is_bad_length() {
        let mut d = FrameDecoder::new(100);
        d.push(&[0xff; 6]);
        assert_eq!(d.next_frame(), Err(FrameError::BadLength));
    }

    #[test]
    fn truncated_frame_is_reported_on_finish() {
        let mut d = FrameDecoder::new(100);
        d.push(&[10, 1, 2]);
        assert_eq!(d.next_frame(), Ok(None));
        assert_eq!(d.finish(), Err(FrameError::Truncated { buffered: 3 }));
    }

    proptest! {
        #[test]
        fn round_trip_in_arbitrary_chunks(
            frames in proptest::collection::vec(("[A-Za-z0-9_-]{1,64}", "[A-Za-z0-9_-]{1,64}", proptest::collection::vec(any::<u8>(), 0..2000)), 1..8),
            chunk in 1usize..300,
        ) {
            let msgs: Vec<_> = frames.into_iter().map(|(a, b, c)| send_frame(a, b, c)).collect();
            let mut wire = Vec::new();
            for m in &msgs { wire.extend_from_slice(&encode_frame(m)); }
            let mut d = FrameDecoder::new(4096);
            let mut out = Vec::new();
            for piece in wire.chunks(chunk) {
                d.push(piece);
                while let Some(f) = d.next_frame().unwrap() {
                    out.push(pb::ClientFrame::decode(f).unwrap());
                }
            }
            prop_assert!(d.finish().is_ok());
            prop_assert_eq!(out, msgs);
        }

        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..4096), chunk in 1usize..64) {
            let mut d = FrameDecoder::new(1024);
            'outer: for piece in data.chunks(chunk) {
                d.push(piece);
                loop {
                    match d.next_frame() {
                        Ok(Some(f)) => {
                            prop_assert!(f.len() <= 1024);
                            let _ = pb::ClientFrame::decode(f.clone());
                            let _ = pb::ServerFrame::decode(f);
                        }
                        Ok(None) => break,
                        Err(_) => break 'outer,
                    }
                }
            }
            prop_assert!(d.buffered() <= data.len());
        }
    }
}
