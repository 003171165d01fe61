-- The conversation list as last heard from the message service, so an app opened
-- offline shows it at once. Each row is the wire form of one Conversation
-- (petrel.v1.Conversation), keyed `user:U` or `group:G`; read back pinned first,
-- then the most recent, as the service orders it.
CREATE TABLE conversations (
    key        TEXT PRIMARY KEY NOT NULL,
    pinned     INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    data       BLOB NOT NULL
);
