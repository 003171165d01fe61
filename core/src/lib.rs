//! Petrel's transport-independent core: everything a session needs except sockets.
//!
//! Layout:
//! - [`ids`] — validated id newtypes (`UserId`, `DeviceId`, `ClientMsgId`, `GroupId`,
//!   `Seq`); the only way to get a string into a NATS subject.
//! - [`subject`] — the [`subject::Subject`] type, every NATS subject and `Nats-Msg-Id`,
//!   and the hub's stream layout; nothing else formats or reads a subject string.
//! - [`auth`] — JWT verification (HS256 dev secret, ES256 public key) and dev-token
//!   minting.
//! - [`error`] — the client-facing error codes and their close codes.
//! - [`wire`] — conversion between protobuf frames and domain commands/replies.
//! - [`session`] — the per-connection state machine: commands in, actions out.
//! - [`route`] — reference-counted user → connections registry.
//! - [`delivery`] — per-connection delivery order: resume, gap fill, catch-up.
//! - [`outbox`] — store-and-forward policy: publish in order, QUEUED, retry/backoff.
//! - [`push`] — push targets and the registry's value, who a message wakes, what a
//!   push says (preview), provider retry policy.
//! - [`conversation`] — what a stored message means for the message service: its
//!   conversation, its archive row, what it changes (times, read positions, edits).
//! - [`time`] — Unix time for the I/O shells.
//!
//! Nothing here opens a socket, and the state machines are handed the time instead of
//! reading a clock, so they are tested with simulated peers and a fake clock.

pub mod auth;
pub mod conversation;
pub mod delivery;
pub mod error;
pub mod ids;
pub mod outbox;
pub mod push;
pub mod route;
pub mod session;
pub mod subject;
pub mod time;
pub mod wire;

pub use error::ErrorCode;
pub use ids::{ClientMsgId, DeviceId, GroupId, IdError, Seq, UserId};
