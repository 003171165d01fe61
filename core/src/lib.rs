//! Petrel's transport-independent core: everything a session needs except sockets.
//!
//! Layout:
//! - [`ids`] — validated id newtypes (`UserId`, `DeviceId`, `ClientMsgId`, `GroupId`,
//!   `Seq`); the only way to get a string into a NATS subject.
//! - [`subject`] — subjects and `Nats-Msg-Id`s built from those ids.
//! - [`auth`] — JWT verification (HS256 dev secret, ES256 public key).
//! - [`error`] — the client-facing error codes and their close codes.
//! - [`wire`] — conversion between protobuf frames and domain commands/replies.
//! - [`session`] — the per-connection state machine: commands in, actions out.
//! - [`route`] — reference-counted user → connections registry.
//! - [`delivery`] — per-connection delivery order: resume, gap fill, catch-up.
//! - [`outbox`] — store-and-forward policy: publish in order, QUEUED, retry/backoff.
//!
//! Nothing here opens a socket or reads a clock, so it is tested with simulated peers.

pub mod auth;
pub mod delivery;
pub mod error;
pub mod ids;
pub mod outbox;
pub mod route;
pub mod session;
pub mod subject;
pub mod wire;

pub use error::ErrorCode;
pub use ids::{ClientMsgId, DeviceId, GroupId, IdError, Seq, UserId};
