//! A device's resume state on disk: the last sequence it processed per subject.
//!
//! Load it before connecting and pass [`CursorFile::cursors`] in
//! `ConnectOptions::cursors`; [`CursorFile::advance`] after the app has processed a
//! message, and [`CursorFile::save`] (atomic: written aside, synced, renamed). The
//! gateway then resumes from exactly there. The format is one `subject seq` line per
//! subject, readable and editable by hand.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::ClientError;

/// Cursors kept in a file.
#[derive(Debug, Clone)]
pub struct CursorFile {
    path: PathBuf,
    cursors: BTreeMap<String, u64>,
    dirty: bool,
}

impl CursorFile {
    /// Reads `path`; a missing file is an empty state (a new device).
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ClientError> {
        let path = path.as_ref().to_path_buf();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => {
                return Err(ClientError::Config(format!(
                    "reading state file {}: {e}",
                    path.display()
                )));
            }
        };
        let mut cursors = BTreeMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let parsed = line
                .split_once(' ')
                .and_then(|(s, q)| Some((s.to_string(), q.trim().parse::<u64>().ok()?)));
            let Some((subject, seq)) = parsed else {
                return Err(ClientError::Config(format!(
                    "state file {} line {}: expected `subject seq`, found {line:?}",
                    path.display(),
                    n + 1
                )));
            };
            cursors.insert(subject, seq);
        }
        Ok(Self {
            path,
            cursors,
            dirty: false,
        })
    }

    /// The cursors, for `ConnectOptions::cursors`.
    pub fn cursors(&self) -> Vec<(String, u64)> {
        self.cursors.iter().map(|(s, q)| (s.clone(), *q)).collect()
    }

    /// Records that everything up to `seq` on `subject` was processed; returns whether
    /// that moved the cursor.
    pub fn advance(&mut self, subject: &str, seq: u64) -> bool {
        let cur = self.cursors.entry(subject.to_string()).or_default();
        if seq <= *cur {
            return false;
        }
        *cur = seq;
        self.dirty = true;
        true
    }

    /// Takes the gateway's word for where delivery resumes (Welcome's cursors): a cursor
    /// above it belonged to a recreated stream and moves back.
    pub fn rebase(&mut self, resume_from: &[(String, u64)]) {
        for (subject, seq) in resume_from {
            if let Some(cur) = self.cursors.get_mut(subject)
                && *cur > *seq
            {
                *cur = *seq;
                self.dirty = true;
            }
        }
    }

    /// Writes the file if anything changed.
    pub fn save(&mut self) -> Result<(), ClientError> {
        if !self.dirty {
            return Ok(());
        }
        let err = |e: std::io::Error| {
            ClientError::Config(format!("writing state file {}: {e}", self.path.display()))
        };
        let tmp = self.path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        writeln!(
            f,
            "# petrel resume cursors: subject, last processed sequence"
        )
        .map_err(err)?;
        for (s, q) in &self.cursors {
            writeln!(f, "{s} {q}").map_err(err)?;
        }
        f.sync_all().map_err(err)?;
        std::fs::rename(&tmp, &self.path).map_err(err)?;
        self.dirty = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_only_forward_and_clear_errors() {
        let dir = std::env::temp_dir().join(format!("petrel-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bob.state");
        let _ = std::fs::remove_file(&path);
        let mut s = CursorFile::load(&path).unwrap();
        assert!(s.cursors().is_empty());
        assert!(s.advance("msg.private.bob", 7));
        assert!(!s.advance("msg.private.bob", 5), "cursors never go back");
        s.save().unwrap();
        let s = CursorFile::load(&path).unwrap();
        assert_eq!(s.cursors(), vec![("msg.private.bob".to_string(), 7)]);
        std::fs::write(&path, "msg.private.bob seven\n").unwrap();
        let err = CursorFile::load(&path).unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
