//! [`EdgeStore`]: the cache on RocksDB, one column family per kind of data.

use std::path::Path;

use rocksdb::{ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, WriteOptions};

use crate::{CF_OUTBOX, CF_RECENT, OutboxEntry, Recent, StorageError};

/// The edge cache.
pub struct EdgeStore {
    db: DB,
    next_outbox: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for EdgeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeStore")
            .field("path", &self.db.path())
            .finish()
    }
}

/// `a`, a NUL byte, then `b`: the key of a per-subject entry.
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

impl EdgeStore {
    /// Opens (or creates) the cache at `path`. Works after a crash: RocksDB replays its
    /// write-ahead log.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StorageError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        // Column families this version does not use (an older cache's) are opened
        // (RocksDB refuses to open a database without all of them) and dropped.
        let known = [CF_RECENT, CF_OUTBOX];
        let unused: Vec<String> = DB::list_cf(&opts, path.as_ref())
            .unwrap_or_default()
            .into_iter()
            .filter(|n| n != rocksdb::DEFAULT_COLUMN_FAMILY_NAME && !known.contains(&n.as_str()))
            .collect();
        let cfs = known
            .iter()
            .map(|n| n.to_string())
            .chain(unused.iter().cloned())
            .map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
        let mut db = DB::open_cf_descriptors(&opts, path, cfs)?;
        for name in &unused {
            db.drop_cf(name)?;
        }
        // Outbox keys continue after the last one left (entries are deleted once
        // stored, so the largest key is the newest).
        let next = {
            let cf = db
                .cf_handle(CF_OUTBOX)
                .ok_or_else(|| StorageError::Corrupt {
                    cf: CF_OUTBOX,
                    key: String::new(),
                    why: "column family missing".into(),
                })?;
            let mut it = db.iterator_cf(cf, IteratorMode::End);
            match it.next() {
                Some(item) => {
                    let (k, _) = item?;
                    <[u8; 8]>::try_from(&k[..])
                        .map_or(1, |b| u64::from_be_bytes(b).saturating_add(1))
                }
                None => 1,
            }
        };
        Ok(Self {
            db,
            next_outbox: std::sync::atomic::AtomicU64::new(next),
        })
    }

    /// Appends sends to the outbox in one write and returns them with their keys, in
    /// order. The write reaches RocksDB's write-ahead log in the operating system, so it
    /// survives a crash of the process (`kill -9`); to survive a crash of the machine
    /// too, call [`EdgeStore::sync_outbox`] before promising anything about it.
    pub fn outbox_append(
        &self,
        entries: Vec<OutboxEntry>,
    ) -> Result<Vec<OutboxEntry>, StorageError> {
        let cf = self.cf(CF_OUTBOX)?;
        let mut batch = rocksdb::WriteBatch::default();
        let first = self
            .next_outbox
            .fetch_add(entries.len() as u64, std::sync::atomic::Ordering::AcqRel);
        let mut out = Vec::with_capacity(entries.len());
        for (i, mut e) in entries.into_iter().enumerate() {
            e.key = first + i as u64;
            batch.put_cf(cf, e.key.to_be_bytes(), e.encode()?);
            out.push(e);
        }
        self.db.write(batch)?;
        Ok(out)
    }

    /// Syncs the write-ahead log to disk: every outbox entry appended so far survives
    /// a power loss from now on (one fsync however many entries).
    pub fn sync_outbox(&self) -> Result<(), StorageError> {
        self.db.flush_wal(true)?;
        Ok(())
    }

    /// Removes stored sends from the outbox. Not synced: if a crash loses the delete,
    /// the send is forwarded again and the hub recognises it by its `Nats-Msg-Id`.
    pub fn outbox_remove(&self, keys: &[u64]) -> Result<(), StorageError> {
        let cf = self.cf(CF_OUTBOX)?;
        let mut batch = rocksdb::WriteBatch::default();
        for k in keys {
            batch.delete_cf(cf, k.to_be_bytes());
        }
        self.db.write(batch)?;
        Ok(())
    }

    /// Every send in the outbox, oldest first (at start, to forward what a crash or
    /// shutdown left). Corrupt entries cannot be forwarded: they are removed and
    /// returned as errors, to be logged and counted.
    pub fn outbox_load(&self) -> Result<(Vec<OutboxEntry>, Vec<StorageError>), StorageError> {
        let cf = self.cf(CF_OUTBOX)?;
        let mut out = Vec::new();
        let mut errors = Vec::new();
        let mut bad = Vec::new();
        for item in self.db.iterator_cf(cf, IteratorMode::Start) {
            let (k, v) = item?;
            match OutboxEntry::decode(&k, &v) {
                Ok(e) => out.push(e),
                Err(why) => {
                    errors.push(StorageError::Corrupt {
                        cf: CF_OUTBOX,
                        key: format!("{k:02x?}"),
                        why,
                    });
                    bad.push(k);
                }
            }
        }
        for k in bad {
            self.db.delete_cf(cf, k)?;
        }
        Ok((out, errors))
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

    /// Caches a message of `subject` at `seq` whose predecessor on the subject is
    /// `prev`, received at `at_ms` (Unix ms; for trimming by age).
    pub fn put_recent(&self, subject: &str, entry: &Recent) -> Result<(), StorageError> {
        let key = key2(subject, &entry.seq.to_be_bytes())?;
        let value = entry.encode();
        let mut w = WriteOptions::default();
        // A cache: losing the last writes in a crash only means a fetch from the hub.
        w.set_sync(false);
        self.db.put_cf_opt(self.cf(CF_RECENT)?, key, value, &w)?;
        Ok(())
    }

    /// Up to `limit` cached messages of `subject` with sequence greater than `after`, in
    /// order. A corrupt entry ends the list there (the caller fetches the rest from the
    /// hub) and is returned as the error half, to be logged and counted.
    pub fn recent_after(
        &self,
        subject: &str,
        after: u64,
        limit: usize,
    ) -> Result<(Vec<Recent>, Option<StorageError>), StorageError> {
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
            match Recent::decode(&k[prefix.len()..], &v) {
                Ok(r) => out.push(r),
                Err(why) => {
                    let err = StorageError::Corrupt {
                        cf: CF_RECENT,
                        key: String::from_utf8_lossy(&k).into_owned(),
                        why,
                    };
                    return Ok((out, Some(err)));
                }
            }
        }
        Ok((out, None))
    }

    /// Trims `recent`: keeps at most `per_subject` newest entries of each subject and
    /// drops entries received before `older_than_ms`; corrupt entries go too. Returns
    /// how many entries were removed.
    pub fn trim_recent(&self, per_subject: usize, older_than_ms: u64) -> Result<u64, StorageError> {
        let cf = self.cf(CF_RECENT)?;
        // One pass collects each subject's keys (newest last); deletes go in a batch.
        let mut batch = rocksdb::WriteBatch::default();
        let mut removed = 0u64;
        let mut subject: Vec<u8> = Vec::new();
        let mut keys: Vec<Box<[u8]>> = Vec::new();
        let mut flush = |keys: &mut Vec<Box<[u8]>>, batch: &mut rocksdb::WriteBatch| {
            if keys.len() > per_subject {
                for k in keys.drain(..keys.len() - per_subject) {
                    batch.delete_cf(cf, k);
                    removed += 1;
                }
            }
            keys.clear();
        };
        for item in self.db.iterator_cf(cf, IteratorMode::Start) {
            let (k, v) = item?;
            let Some(split) = k.iter().position(|b| *b == 0) else {
                batch.delete_cf(cf, &k);
                continue;
            };
            if k[..split] != subject[..] {
                flush(&mut keys, &mut batch);
                subject = k[..split].to_vec();
            }
            match Recent::decode(&k[split + 1..], &v) {
                Ok(r) if r.at_ms >= older_than_ms => keys.push(k),
                _ => batch.delete_cf(cf, &k),
            }
        }
        flush(&mut keys, &mut batch);
        let aged = batch.len() as u64;
        self.db.write(batch)?;
        Ok(aged.max(removed))
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
    use bytes::Bytes;

    #[test]
    fn an_older_cache_with_a_cursors_column_family_opens() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut opts = Options::default();
            opts.create_if_missing(true);
            opts.create_missing_column_families(true);
            let cfs = ["cursors", CF_RECENT, CF_OUTBOX]
                .map(|n| ColumnFamilyDescriptor::new(n, Options::default()));
            let db = DB::open_cf_descriptors(&opts, dir.path(), cfs).unwrap();
            db.put_cf(db.cf_handle("cursors").unwrap(), b"k", b"v")
                .unwrap();
        }
        let s = EdgeStore::open(dir.path()).unwrap();
        s.put_recent("msg.private.bob", &recent(1, 0, 1)).unwrap();
        drop(s);
        let names = DB::list_cf(&Options::default(), dir.path()).unwrap();
        assert!(!names.iter().any(|n| n == "cursors"), "dropped: {names:?}");
        let s = EdgeStore::open(dir.path()).unwrap();
        assert_eq!(s.recent_after("msg.private.bob", 0, 10).unwrap().0.len(), 1);
    }

    fn recent(seq: u64, prev: u64, at_ms: u64) -> Recent {
        Recent {
            seq,
            prev,
            at_ms,
            payload: Bytes::from(format!("m{seq}")),
        }
    }

    #[test]
    fn recent_is_ordered_per_subject() {
        let dir = tempfile::tempdir().unwrap();
        let s = EdgeStore::open(dir.path()).unwrap();
        for seq in [3u64, 1, 300, 2] {
            s.put_recent("msg.private.bob", &recent(seq, seq - 1, 1))
                .unwrap();
        }
        s.put_recent("msg.private.bobby", &recent(4, 0, 1)).unwrap();
        let (got, err) = s.recent_after("msg.private.bob", 1, 10).unwrap();
        assert!(err.is_none());
        assert_eq!(
            got.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![2, 3, 300]
        );
        assert_eq!(got[0], recent(2, 1, 1));
        assert_eq!(s.recent_after("msg.private.bob", 0, 2).unwrap().0.len(), 2);
    }

    #[test]
    fn trim_keeps_the_newest_per_subject_and_drops_old_and_corrupt_entries() {
        let dir = tempfile::tempdir().unwrap();
        let s = EdgeStore::open(dir.path()).unwrap();
        for seq in 1..=10u64 {
            s.put_recent("msg.private.a", &recent(seq, seq - 1, 1_000 + seq))
                .unwrap();
        }
        s.put_recent("msg.private.b", &recent(50, 0, 5)).unwrap();
        s.put_recent("msg.private.b", &recent(51, 50, 2_000))
            .unwrap();
        // A value too short to hold its header.
        s.put_raw(
            CF_RECENT,
            &key2("msg.private.b", &52u64.to_be_bytes()).unwrap(),
            b"x",
        )
        .unwrap();
        let (before, err) = s.recent_after("msg.private.b", 0, 10).unwrap();
        assert_eq!(before.len(), 2, "the list stops at the corrupt entry");
        assert!(matches!(err, Some(StorageError::Corrupt { .. })));
        s.trim_recent(4, 100).unwrap();
        let a: Vec<u64> = s
            .recent_after("msg.private.a", 0, 100)
            .unwrap()
            .0
            .iter()
            .map(|r| r.seq)
            .collect();
        assert_eq!(a, vec![7, 8, 9, 10]);
        let (b, err) = s.recent_after("msg.private.b", 0, 100).unwrap();
        assert_eq!(
            b.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![51],
            "old and corrupt gone"
        );
        assert!(err.is_none());
    }

    fn entry(n: u64) -> OutboxEntry {
        OutboxEntry {
            key: 0,
            created_ms: 1_000 + n,
            copies: vec![
                ("msg.private.bob".into(), format!("dm:alice:m{n}")),
                ("msg.private.alice".into(), format!("dm:alice:m{n}:self")),
            ],
            payload: Bytes::from(format!("payload {n}")),
        }
    }

    #[test]
    fn outbox_keeps_order_across_reopen_and_skips_corrupt_entries() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = EdgeStore::open(dir.path()).unwrap();
            let a = s.outbox_append(vec![entry(1), entry(2)]).unwrap();
            assert_eq!(a.iter().map(|e| e.key).collect::<Vec<_>>(), vec![1, 2]);
            let b = s.outbox_append(vec![entry(3)]).unwrap();
            assert_eq!(b[0].key, 3);
            s.sync_outbox().unwrap();
            s.outbox_remove(&[2]).unwrap();
        }
        let s = EdgeStore::open(dir.path()).unwrap();
        // New keys continue after the last one, never reusing a number.
        let c = s.outbox_append(vec![entry(4)]).unwrap();
        assert_eq!(c[0].key, 4);
        s.put_raw(CF_OUTBOX, &5u64.to_be_bytes(), b"\x00\x01")
            .unwrap();
        let (got, errors) = s.outbox_load().unwrap();
        assert_eq!(got.iter().map(|e| e.key).collect::<Vec<_>>(), vec![1, 3, 4]);
        assert_eq!(got[1], OutboxEntry { key: 3, ..entry(3) });
        assert_eq!(errors.len(), 1, "the corrupt entry is reported");
        let (again, errors) = s.outbox_load().unwrap();
        assert_eq!(again.len(), 3);
        assert!(errors.is_empty(), "and removed");
    }

    #[test]
    fn a_key_with_a_separator_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = EdgeStore::open(dir.path()).unwrap();
        assert!(matches!(
            s.put_recent("a\0b", &recent(1, 0, 1)),
            Err(StorageError::BadKey)
        ));
    }
}
