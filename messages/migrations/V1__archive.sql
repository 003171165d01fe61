-- The message service's schema, version 1. Applied on start by `petrel messages`
-- (refinery keeps the applied versions in refinery_schema_history); never edit an
-- applied migration: add V2__….sql.

-- Every stored message once, keyed by where JetStream stored it. Partitioned by
-- month of the hub's storage time, so old months can be detached or dropped whole;
-- the service creates each month's partition before its first row.
CREATE TABLE archive (
    subject        text        NOT NULL,
    seq            bigint      NOT NULL,
    stored_at      timestamptz NOT NULL,
    -- 0 message, 1 receipt, 2 amendment, 3 read mark (core::conversation::RowKind).
    kind           smallint    NOT NULL,
    -- Direct: the inbox's owner and the other party; NULL on a group subject.
    owner          text,
    peer           text,
    grp            text,
    sender         text        NOT NULL,
    client_msg_id  text        NOT NULL,
    time_ms        bigint      NOT NULL,
    mentions       text[]      NOT NULL DEFAULT '{}',
    -- An amendment: the client_msg_id of the sender's message it changes.
    amends         text,
    -- The stored protobuf as the hub stored it (served back as is).
    payload        bytea       NOT NULL,
    -- What amendments made of it: the newest edit's content, or recalled.
    edited_ms      bigint      NOT NULL DEFAULT 0,
    edited_content bytea,
    edited_type    text,
    recalled       boolean     NOT NULL DEFAULT false,
    PRIMARY KEY (subject, seq, stored_at)
) PARTITION BY RANGE (stored_at);

-- History of one direct conversation in an inbox, and a conversation's newest message
-- and unread count.
CREATE INDEX archive_conversation ON archive (subject, peer, seq);
-- An amend's original, and the amendments of a message that arrived before it.
CREATE INDEX archive_sender_id ON archive (sender, client_msg_id);
CREATE INDEX archive_amends ON archive (sender, amends) WHERE amends IS NOT NULL;

-- A user's direct conversations, and the per-user state of its group conversations
-- (read position, pin, mute). A group's own time is in group_last.
CREATE TABLE conversations (
    owner      text    NOT NULL,
    -- 'u': with a user, 'g': a group.
    kind       "char"  NOT NULL,
    peer       text    NOT NULL,
    read_seq   bigint  NOT NULL DEFAULT 0,
    pinned     boolean NOT NULL DEFAULT false,
    muted      boolean NOT NULL DEFAULT false,
    updated_ms bigint  NOT NULL DEFAULT 0,
    PRIMARY KEY (owner, kind, peer)
);

-- Each group's newest message: one row per group, however many members.
CREATE TABLE group_last (
    grp        text   PRIMARY KEY,
    last_seq   bigint NOT NULL,
    updated_ms bigint NOT NULL
);
