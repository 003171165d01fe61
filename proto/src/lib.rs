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
//! - [`error_code_name`] — the one spelling of each error code (`UNAUTHENTICATED`), and
//!   how a WebSocket close code carries one.

pub mod frame;

/// Generated protobuf types (package `petrel.v1`).
#[allow(clippy::all, missing_docs)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/petrel.v1.rs"));
}

pub use frame::{FrameDecoder, FrameError, encode_frame};

/// The one spelling of an error code everywhere a person sees it (logs, metrics
/// labels, the SDKs' errors, the CLI's output): the protobuf enum name without its
/// `ERROR_CODE_` prefix, e.g. `UNAUTHENTICATED`; `UNKNOWN_{n}` for a number this
/// version does not know.
pub fn error_code_name(code: i32) -> String {
    match pb::ErrorCode::try_from(code) {
        Ok(c) => c
            .as_str_name()
            .trim_start_matches("ERROR_CODE_")
            .to_string(),
        Err(_) => format!("UNKNOWN_{code}"),
    }
}

/// WebSocket close codes carry an error code as `4000 + code` (the private-use
/// range); QUIC and WebTransport carry the code itself.
pub const WEBSOCKET_CLOSE_BASE: u16 = 4000;

/// The error code of a WebSocket close code, if it carries one.
pub fn error_code_of_websocket_close(close: u16) -> Option<i32> {
    (WEBSOCKET_CLOSE_BASE..WEBSOCKET_CLOSE_BASE + 1000)
        .contains(&close)
        .then(|| i32::from(close - WEBSOCKET_CLOSE_BASE))
}

/// ALPN protocol id of Petrel's native QUIC transport.
pub const ALPN_QUIC: &[u8] = b"petrel/1";
/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// Default maximum frame size (bytes after the length prefix).
pub const DEFAULT_MAX_FRAME_BYTES: usize = 64 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_have_one_spelling() {
        assert_eq!(
            error_code_name(pb::ErrorCode::Unauthenticated as i32),
            "UNAUTHENTICATED"
        );
        assert_eq!(
            error_code_name(pb::ErrorCode::SlowConsumer as i32),
            "SLOW_CONSUMER"
        );
        assert_eq!(error_code_name(999), "UNKNOWN_999");
        assert_eq!(error_code_of_websocket_close(4005), Some(5));
        assert_eq!(error_code_of_websocket_close(1000), None);
        assert_eq!(error_code_of_websocket_close(5000), None);
    }
}
