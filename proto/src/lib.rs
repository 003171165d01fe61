//! Petrel's wire protocol.
//!
//! Layout:
//! - `proto/petrel/v1/petrel.proto` — the single source of truth for every frame
//!   (the TypeScript SDK is generated from the same file).
//! - [`pb`] — prost-generated types. They stay at the boundary: `petrel-core` converts
//!   them to validated domain types before any logic runs.
//! - [`frame`] — length-prefixed framing (unsigned varint length, then the protobuf
//!   bytes), with a hard maximum frame size so a hostile peer cannot make us buffer
//!   more than that.

pub mod frame;

/// Generated protobuf types (package `petrel.v1`).
#[allow(clippy::all, missing_docs)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/petrel.v1.rs"));
}

pub use frame::{FrameDecoder, FrameError, encode_frame};

/// ALPN protocol id of Petrel's native QUIC transport.
pub const ALPN_QUIC: &[u8] = b"petrel/1";
/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// Default maximum frame size (bytes after the length prefix).
pub const DEFAULT_MAX_FRAME_BYTES: usize = 64 * 1024;
