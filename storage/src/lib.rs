//! Petrel's edge cache on RocksDB.
//!
//! Layout: one database per gateway, one column family per kind of data, each with a
//! typed API so no caller builds keys by hand:
//! - `cursors` — per device, the last acknowledged sequence per subject
//!   (key `user/device \0 subject`, value u64 big-endian);
//! - `recent` — recent messages per subject (key `subject \0 seq` big-endian so a
//!   range scan returns a subject's messages in order);
//! - `outbox` — sends accepted at the edge but not yet stored on the hub (filled by
//!   the offline work; the family exists from the start so the on-disk format does
//!   not change under operators).
//!
//! A value that does not decode is an error ([`StorageError::Corrupt`]), never a panic.

use std::path::Path;

use bytes::Bytes;
use rocksdb::{ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, WriteOptions};

/// Column family names.
pub const CF_CURSORS: &str = "cursors";
/// Recent messages per subject.
pub const CF_RECENT: &str = "recent";
/// Sends not yet stored on the hub.
pub const CF_OUTBOX: &str = "outbox";

/// Errors from the edge cache.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// RocksDB reported an error (I/O, lock held by another process, ...).
    #[error("rocksdb: {0}")]
    Db(#[from] rocksdb::Error),
    /// A stored value does not decode.
    #[error("corrupt value in {cf} at key {key:?}: {why}")]
    Corrupt {
        /// Column family.
        cf: &'static str,
        /// Key (lossy UTF-8).
        key: String,
        /// What is wrong.
        why: String,
    },
    /// A key component contains the separator byte.
    #[error("key component contains a NUL byte")]
    BadKey,
}

/// The edge cache.
pub struct EdgeStore {
    db: DB,
}

impl std::fmt::Debug for EdgeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeStore")
            .field("path", &self.db.path())
            .finish()
    }
}

fn key2(a: &str, b: &[u8]) -> Result<Vec<u8>, StorageError> {
    if a.as_bytes().contains(&0) {
        return Err(StorageError::BadKey);
    }
    let mut k = Vec::with_capacity(a.len() + 1 + b.len());
    k.extend_from_slice(a.as_bytes());
    k.push(0);
    k.extend_from_slice(b);
    Ok(k)
}

fn u64_value(cf: &'static str, key: &[u8], v: &[u8]) -> Result<u64, StorageError> {
    let arr: [u8; 8] = v.try_into().map_err(|_| StorageError::Corrupt {
        cf,
        key: String::from_utf8_lossy(key).into_owned(),
        why: format!("expected 8 bytes, found {}", v.len()),
    })?;
    Ok(u64::from_be_bytes(arr))
}

impl EdgeStore {
    /// Opens (or creates) the cache at `path`. Works after a crash: RocksDB replays its
    /// write-ahead log.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StorageError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        let cfs = [CF_CURSORS, CF_RECENT, CF_OUTBOX]
            .into_iter()
            .map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
        let db = DB::open_cf_descriptors(&opts, path, cfs)?;
        Ok(Self { db })
    }

    fn cf(&self, name: &'static str) -> Result<&rocksdb::ColumnFamily, StorageError> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| StorageError::Corrupt {
                cf: name,
                key: String::new(),
                why: "column family missing".into(),
            })
    }

    /// Records a device's cursor on `subject` (cumulative ack). Not synced: cursors are
    /// also kept by the client, a lost update only means a re-delivery.
    pub fn save_cursor(
        &self,
        device_key: &str,
        subject: &str,
        seq: u64,
    ) -> Result<(), StorageError> {
        let key = key2(device_key, subject.as_bytes())?;
        self.db
            .put_cf(self.cf(CF_CURSORS)?, key, seq.to_be_bytes())?;
        Ok(())
    }

    /// All cursors of a device.
    pub fn cursors(&self, device_key: &str) -> Result<Vec<(String, u64)>, StorageError> {
        let prefix = key2(device_key, b"")?;
        let mut out = Vec::new();
        let iter = self.db.iterator_cf(
            self.cf(CF_CURSORS)?,
            IteratorMode::From(&prefix, Direction::Forward),
        );
        for item in iter {
            let (k, v) = item?;
            if !k.starts_with(&prefix) {
                break;
            }
            let subject = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            out.push((subject, u64_value(CF_CURSORS, &k, &v)?));
        }
        Ok(out)
    }

    /// Caches a message of `subject` at `seq`.
    pub fn put_recent(&self, subject: &str, seq: u64, payload: &[u8]) -> Result<(), StorageError> {
        let key = key2(subject, &seq.to_be_bytes())?;
        let mut w = WriteOptions::default();
        w.set_sync(false);
        self.db.put_cf_opt(self.cf(CF_RECENT)?, key, payload, &w)?;
        Ok(())
    }

    /// Up to `limit` cached messages of `subject` with sequence greater than `after`, in order.
    pub fn recent_after(
        &self,
        subject: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Bytes)>, StorageError> {
        let prefix = key2(subject, b"")?;
        let start = key2(subject, &after.saturating_add(1).to_be_bytes())?;
        let mut out = Vec::new();
        let iter = self.db.iterator_cf(
            self.cf(CF_RECENT)?,
            IteratorMode::From(&start, Direction::Forward),
        );
        for item in iter {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item?;
            if !k.starts_with(&prefix) {
                break;
            }
            let seq = u64_value(CF_RECENT, &k, &k[prefix.len()..])?;
            out.push((seq, Bytes::copy_from_slice(&v)));
        }
        Ok(out)
    }

    /// Writes a raw value (tests use it to plant corruption).
    #[doc(hidden)]
    pub fn put_raw(&self, cf: &'static str, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        self.db.put_cf(self.cf(cf)?, key, value)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = EdgeStore::open(dir.path()).unwrap();
            s.save_cursor("alice/phone", "msg.private.alice", 5)
                .unwrap();
            s.save_cursor("alice/phone", "msg.private.alice", 9)
                .unwrap();
            s.save_cursor("alice/tablet", "msg.private.alice", 2)
                .unwrap();
        }
        let s = EdgeStore::open(dir.path()).unwrap();
        assert_eq!(
            s.cursors("alice/phone").unwrap(),
            vec![("msg.private.alice".to_string(), 9)]
        );
        assert_eq!(s.cursors("alice/tablet").unwrap().len(), 1);
        assert!(s.cursors("bob/phone").unwrap().is_empty());
    }

    #[test]
    fn recent_is_ordered_per_subject() {
        let dir = tempfile::tempdir().unwrap();
        let s = EdgeStore::open(dir.path()).unwrap();
        for seq in [3u64, 1, 300, 2] {
            s.put_recent("msg.private.bob", seq, format!("m{seq}").as_bytes())
                .unwrap();
        }
        s.put_recent("msg.private.bobby", 4, b"other").unwrap();
        let got: Vec<u64> = s
            .recent_after("msg.private.bob", 1, 10)
            .unwrap()
            .into_iter()
            .map(|(q, _)| q)
            .collect();
        assert_eq!(got, vec![2, 3, 300]);
        assert_eq!(s.recent_after("msg.private.bob", 0, 2).unwrap().len(), 2);
    }

    #[test]
    fn corrupt_value_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let s = EdgeStore::open(dir.path()).unwrap();
        s.put_raw(CF_CURSORS, b"alice/phone\0msg.private.alice", b"xyz")
            .unwrap();
        assert!(matches!(
            s.cursors("alice/phone"),
            Err(StorageError::Corrupt { .. })
        ));
        assert!(matches!(
            s.save_cursor("a\0b", "s", 1),
            Err(StorageError::BadKey)
        ));
    }
}
