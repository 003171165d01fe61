//! Petrel's edge cache on RocksDB.
//!
//! Layout: one database per gateway, one column family per kind of data, each with a
//! typed API so no caller builds keys by hand:
//! - `recent` — recent messages per subject (key `subject \0 seq` big-endian so a
//!   range scan returns a subject's messages in order);
//! - `outbox` — sends accepted at the edge but not yet stored on the hub (key: a
//!   u64 big-endian number in acceptance order, so a scan returns them in the order
//!   they must be forwarded; the log is synced before a QUEUED answer promises them).
//!
//! A value that does not decode is an error ([`StorageError::Corrupt`]), never a panic.
//!
//! - [`codec`] — the key and value encodings (no RocksDB: fuzzed on their own);
//! - `db` — [`EdgeStore`] on RocksDB (feature `rocksdb`, on by default).

pub mod codec;
#[cfg(feature = "rocksdb")]
mod db;

pub use codec::{OutboxEntry, Recent};
#[cfg(feature = "rocksdb")]
pub use db::EdgeStore;

/// Recent messages per subject.
pub const CF_RECENT: &str = "recent";
/// Sends not yet stored on the hub.
pub const CF_OUTBOX: &str = "outbox";

/// Errors from the edge cache.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// RocksDB reported an error (I/O, lock held by another process, ...).
    #[cfg(feature = "rocksdb")]
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
