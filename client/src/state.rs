//! A device's state on disk, in one SQLite file: the resume cursors, the outbox of
//! sends not answered yet (they survive an app restart and go out, in order and with
//! their ids, once connected), what the session remembers about transports, and the
//! conversation list as last heard (shown while offline).
//!
//! The schema is versioned in `client/migrations/` and brought up to date on open.
//! [`DeviceState::apply`] saves each [`Change`] the session core asks for; an
//! outbox entry is committed before the app hears its send is pending.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use petrel_proto::pb;
use prost::Message as _;
use rusqlite::{OptionalExtension, params};

use crate::ClientError;
use crate::session::Change;

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// The state file of one device.
pub struct DeviceState {
    db: rusqlite::Connection,
    path: PathBuf,
}

impl std::fmt::Debug for DeviceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceState")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl DeviceState {
    /// Opens (or creates) the state file at `path` and migrates it.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ClientError> {
        let path = path.as_ref().to_path_buf();
        let err = |what: &str, e: &dyn std::fmt::Display| {
            ClientError::Config(format!("state file {}: {what}: {e}", path.display()))
        };
        let mut db = rusqlite::Connection::open(&path).map_err(|e| err("open", &e))?;
        // WAL: a commit is one append; NORMAL: synced at checkpoints, so a power cut can
        // lose the last commits but never corrupt the file (a send lost that way was
        // never answered, and the app re-sends it with its id).
        db.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")
            .map_err(|e| err("not a Petrel state file (or unreadable)", &e))?;
        embedded::migrations::runner()
            .run(&mut db)
            .map_err(|e| err("migrating", &e))?;
        Ok(Self { db, path })
    }

    fn err(&self, e: rusqlite::Error) -> ClientError {
        ClientError::Config(format!("state file {}: {e}", self.path.display()))
    }

    /// The resume cursors.
    pub fn cursors(&self) -> Result<Vec<(String, u64)>, ClientError> {
        let mut q = self
            .db
            .prepare("SELECT subject, seq FROM cursors ORDER BY subject")
            .map_err(|e| self.err(e))?;
        let rows = q
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
            .map_err(|e| self.err(e))?;
        rows.map(|r| r.map(|(s, q)| (s, q.max(0) as u64)))
            .collect::<Result<_, _>>()
            .map_err(|e| self.err(e))
    }

    /// The sends in the outbox, in order: (id, encoded frame).
    pub fn outbox(&self) -> Result<Vec<(String, Bytes)>, ClientError> {
        let mut q = self
            .db
            .prepare("SELECT id, frame FROM outbox ORDER BY position")
            .map_err(|e| self.err(e))?;
        let rows = q
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, Bytes::from(r.get::<_, Vec<u8>>(1)?)))
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// How much longer QUIC is to be skipped (it did not answer where WebSocket did).
    pub fn quic_skipped_for(&self) -> Result<Option<Duration>, ClientError> {
        let until: Option<String> = self
            .db
            .query_row(
                "SELECT value FROM memory WHERE key = 'quic_skipped_until_ms'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        let until = until.and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        Ok(until
            .checked_sub(now_ms())
            .filter(|ms| *ms > 0)
            .map(Duration::from_millis))
    }

    /// Keeps a page of the conversation list as the service sent it. A first page
    /// with nothing after it is the whole list: conversations not on it are dropped.
    pub fn save_conversations(
        &mut self,
        page: &[pb::Conversation],
        whole: bool,
    ) -> Result<(), ClientError> {
        let path = self.path.display().to_string();
        let err = |e: rusqlite::Error| ClientError::Config(format!("state file {path}: {e}"));
        let tx = self.db.transaction().map_err(err)?;
        if whole {
            tx.execute("DELETE FROM conversations", []).map_err(err)?;
        }
        for c in page {
            let key = match &c.with {
                Some(pb::conversation::With::User(u)) => format!("user:{u}"),
                Some(pb::conversation::With::Group(g)) => format!("group:{g}"),
                None => continue,
            };
            tx.execute(
                "INSERT INTO conversations (key, pinned, updated_ms, data) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (key) DO UPDATE SET pinned = excluded.pinned,
                     updated_ms = excluded.updated_ms, data = excluded.data",
                params![
                    key,
                    c.pinned,
                    i64::try_from(c.updated_ms).unwrap_or(i64::MAX),
                    c.encode_to_vec()
                ],
            )
            .map_err(err)?;
        }
        tx.commit().map_err(err)
    }

    /// A page of the kept conversation list (pinned first, then the most recent) and
    /// whether more follow. Rows that do not decode are skipped.
    pub fn conversations(
        &self,
        offset: u32,
        limit: u32,
    ) -> Result<(Vec<pb::Conversation>, bool), ClientError> {
        let mut q = self
            .db
            .prepare(
                "SELECT data FROM conversations ORDER BY pinned DESC, updated_ms DESC, key
                 LIMIT ?1 OFFSET ?2",
            )
            .map_err(|e| self.err(e))?;
        let rows = q
            .query_map(params![i64::from(limit) + 1, i64::from(offset)], |r| {
                r.get::<_, Vec<u8>>(0)
            })
            .map_err(|e| self.err(e))?;
        let mut page: Vec<pb::Conversation> = rows
            .filter_map(|r| r.ok())
            .filter_map(|b| pb::Conversation::decode(b.as_slice()).ok())
            .collect();
        let more = page.len() > limit as usize;
        page.truncate(limit as usize);
        Ok((page, more))
    }

    /// Saves one change the session asked for.
    pub fn apply(&mut self, change: &Change) -> Result<(), ClientError> {
        let r = match change {
            Change::Cursor { subject, seq } => self.db.execute(
                "INSERT INTO cursors (subject, seq) VALUES (?1, ?2)
                 ON CONFLICT (subject) DO UPDATE SET seq = excluded.seq",
                params![subject, i64::try_from(*seq).unwrap_or(i64::MAX)],
            ),
            Change::OutboxAdded { id, frame } => self.db.execute(
                "INSERT INTO outbox (id, frame, created_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (id) DO NOTHING",
                params![id, frame.as_ref(), now_ms() as i64],
            ),
            Change::OutboxRemoved { id } => self
                .db
                .execute("DELETE FROM outbox WHERE id = ?1", params![id]),
            Change::QuicSkipped { for_ } => self.db.execute(
                "INSERT INTO memory (key, value) VALUES ('quic_skipped_until_ms', ?1)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![(now_ms() + for_.as_millis() as u64).to_string()],
            ),
        };
        r.map(|_| ()).map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_and_the_outbox_survive_a_reopen_in_order_and_garbage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bob.db");
        let mut s = DeviceState::open(&path).unwrap();
        assert!(s.cursors().unwrap().is_empty());
        for (id, f) in [("m2", "b"), ("m1", "a"), ("m3", "c")] {
            let frame = Bytes::from(f);
            s.apply(&Change::OutboxAdded {
                id: id.into(),
                frame,
            })
            .unwrap();
        }
        s.apply(&Change::OutboxRemoved { id: "m1".into() }).unwrap();
        s.apply(&Change::Cursor {
            subject: "msg.private.bob".into(),
            seq: 7,
        })
        .unwrap();
        s.apply(&Change::QuicSkipped {
            for_: Duration::from_secs(600),
        })
        .unwrap();
        drop(s);
        let s = DeviceState::open(&path).unwrap();
        assert_eq!(s.cursors().unwrap(), [("msg.private.bob".to_string(), 7)]);
        let ids: Vec<String> = s.outbox().unwrap().into_iter().map(|(id, _)| id).collect();
        assert_eq!(ids, ["m2", "m3"], "in the order the app made them");
        assert!(s.quic_skipped_for().unwrap().is_some());
        let garbage = dir.path().join("garbage.db");
        std::fs::write(&garbage, "msg.private.bob 7\n".repeat(100)).unwrap();
        let err = DeviceState::open(&garbage).unwrap_err().to_string();
        assert!(err.contains("not a Petrel state file"), "{err}");
    }

    fn conversation(
        with: pb::conversation::With,
        pinned: bool,
        updated_ms: u64,
    ) -> pb::Conversation {
        pb::Conversation {
            with: Some(with),
            pinned,
            updated_ms,
            unread: 2,
            ..Default::default()
        }
    }

    #[test]
    fn the_conversation_list_is_kept_in_the_services_order_and_a_whole_list_replaces_it() {
        use pb::conversation::With::{Group, User};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bob.db");
        let mut s = DeviceState::open(&path).unwrap();
        let page = [
            conversation(Group("g".into()), true, 1),
            conversation(User("alice".into()), false, 30),
            conversation(User("carol".into()), false, 20),
        ];
        s.save_conversations(&page, true).unwrap();
        // A later page updates what it holds and leaves the rest.
        s.save_conversations(&[conversation(User("carol".into()), false, 40)], false)
            .unwrap();
        drop(s);
        let s = DeviceState::open(&path).unwrap();
        let keys = |p: &[pb::Conversation]| -> Vec<String> {
            p.iter()
                .map(|c| match &c.with {
                    Some(User(u)) => u.clone(),
                    Some(Group(g)) => format!("#{g}"),
                    None => String::new(),
                })
                .collect()
        };
        let (first, more) = s.conversations(0, 2).unwrap();
        assert_eq!(
            (keys(&first), more),
            (vec!["#g".into(), "carol".into()], true)
        );
        let (rest, more) = s.conversations(2, 2).unwrap();
        assert_eq!((keys(&rest), more), (vec!["alice".into()], false));
        let mut s = s;
        s.save_conversations(&[conversation(User("dave".into()), false, 50)], true)
            .unwrap();
        assert_eq!(keys(&s.conversations(0, 10).unwrap().0), ["dave"]);
    }
}
