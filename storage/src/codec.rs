//! The encodings of the edge cache's keys and values, apart from RocksDB so that they
//! can be fuzzed and tested without it.

use bytes::Bytes;

use crate::StorageError;

/// A send accepted at the edge, waiting to be stored on the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// Place in the outbox (assigned by [`EdgeStore::outbox_append`]).
    pub key: u64,
    /// When the edge accepted it (Unix ms). A retry long after this may fall outside
    /// the hub's duplicate window, so the forwarder checks the stream first.
    pub created_ms: u64,
    /// The copies to store: (subject, `Nats-Msg-Id`), recipient first.
    pub copies: Vec<(String, String)>,
    /// The stored message (protobuf `StoredMessage`).
    pub payload: Bytes,
}

impl OutboxEntry {
    /// The stored value (the key is [`OutboxEntry::key`], big-endian).
    pub fn encode(&self) -> Result<Vec<u8>, StorageError> {
        let mut v = Vec::with_capacity(16 + self.payload.len());
        v.extend_from_slice(&self.created_ms.to_be_bytes());
        let n = u8::try_from(self.copies.len()).map_err(|_| StorageError::BadKey)?;
        v.push(n);
        for (subject, id) in &self.copies {
            for part in [subject, id] {
                let len = u16::try_from(part.len()).map_err(|_| StorageError::BadKey)?;
                v.extend_from_slice(&len.to_be_bytes());
                v.extend_from_slice(part.as_bytes());
            }
        }
        v.extend_from_slice(&self.payload);
        Ok(v)
    }

    /// Reads a stored entry back; anything malformed is an error, never a panic.
    pub fn decode(key: &[u8], v: &[u8]) -> Result<Self, String> {
        let key: [u8; 8] = key
            .try_into()
            .map_err(|_| format!("key of {} bytes", key.len()))?;
        let mut rest = v;
        let mut take = |n: usize| -> Result<&[u8], String> {
            if rest.len() < n {
                return Err(format!("value of {} bytes is truncated", v.len()));
            }
            let (a, b) = rest.split_at(n);
            rest = b;
            Ok(a)
        };
        let created_ms = u64::from_be_bytes(take(8)?.try_into().map_err(|_| "header")?);
        let n = take(1)?[0] as usize;
        let mut copies = Vec::with_capacity(n);
        for _ in 0..n {
            let mut part = || -> Result<String, String> {
                let len = u16::from_be_bytes(take(2)?.try_into().map_err(|_| "length")?);
                String::from_utf8(take(len as usize)?.to_vec()).map_err(|e| e.to_string())
            };
            let subject = part()?;
            let id = part()?;
            copies.push((subject, id));
        }
        if copies.is_empty() {
            return Err("no copies".into());
        }
        Ok(Self {
            key: u64::from_be_bytes(key),
            created_ms,
            copies,
            payload: Bytes::copy_from_slice(rest),
        })
    }
}

/// A cached message: its place in the stream and the stored payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recent {
    /// Stream sequence.
    pub seq: u64,
    /// Previous sequence on the same subject (`Nats-Last-Sequence`): lets a reader check
    /// that a run of cached messages has no hole.
    pub prev: u64,
    /// When the edge received it (Unix ms).
    pub at_ms: u64,
    /// The stored message (protobuf `StoredMessage`).
    pub payload: Bytes,
}

impl Recent {
    /// The stored value (the key is the subject, a NUL byte and the big-endian `seq`).
    pub fn encode(&self) -> Vec<u8> {
        let mut value = Vec::with_capacity(16 + self.payload.len());
        value.extend_from_slice(&self.prev.to_be_bytes());
        value.extend_from_slice(&self.at_ms.to_be_bytes());
        value.extend_from_slice(&self.payload);
        value
    }

    /// Reads a stored entry back from its sequence key part and value; anything
    /// malformed is an error, never a panic.
    pub fn decode(seq_key: &[u8], v: &[u8]) -> Result<Self, String> {
        let seq: [u8; 8] = seq_key
            .try_into()
            .map_err(|_| format!("sequence key of {} bytes", seq_key.len()))?;
        if v.len() < 16 {
            return Err(format!(
                "value of {} bytes is shorter than its header",
                v.len()
            ));
        }
        let word = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&v[i..i + 8]);
            u64::from_be_bytes(b)
        };
        Ok(Self {
            seq: u64::from_be_bytes(seq),
            prev: word(0),
            at_ms: word(8),
            payload: Bytes::copy_from_slice(&v[16..]),
        })
    }
}
