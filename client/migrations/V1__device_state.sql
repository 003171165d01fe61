-- A device's state (one SQLite file per device): see client/src/state.rs.

-- The highest sequence handed to the app per subject: the resume cursors in Hello.
CREATE TABLE cursors (
    subject TEXT PRIMARY KEY NOT NULL,
    seq     INTEGER NOT NULL CHECK (seq >= 0)
);

-- Sends not answered yet, in the order the app made them (position), each its
-- encoded frame: written once connected, re-sent with the same id until answered.
CREATE TABLE outbox (
    position   INTEGER PRIMARY KEY AUTOINCREMENT,
    id         TEXT NOT NULL UNIQUE,
    frame      BLOB NOT NULL,
    created_ms INTEGER NOT NULL
);

-- Small facts remembered across runs, e.g. `quic_skipped_until_ms`.
CREATE TABLE memory (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);
