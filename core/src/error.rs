//! Client-facing error codes: one code per rejection, mapped to one wire code and one
//! close code per transport.

use petrel_proto::pb;

/// Every error a client can see. Mirrors `petrel.v1.ErrorCode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// Not a valid length-prefixed protobuf frame.
    BadFrame,
    /// The length prefix exceeds the maximum frame size.
    FrameTooLarge,
    /// A frame kind the gateway does not know.
    UnknownFrame,
    /// A frame other than Hello first, or a second Hello.
    Protocol,
    /// Missing, malformed or forged token, or a refused algorithm.
    Unauthenticated,
    /// Expired token.
    TokenExpired,
    /// An id that is not `[A-Za-z0-9_-]{1,64}`.
    InvalidId,
    /// No Hello within the handshake timeout.
    HandshakeTimeout,
    /// Empty or oversize content.
    InvalidMessage,
    /// The hub did not store the message.
    Unavailable,
    /// The connection could not keep up with its deliveries.
    SlowConsumer,
    /// The gateway is shutting down.
    GoingAway,
    /// Too many connections or sends.
    RateLimited,
    /// Unexpected condition in the gateway.
    Internal,
    /// Not allowed for this user (e.g. sending to a group it is not a member of).
    Forbidden,
    /// Hello's `protocol_version` is not one this gateway speaks.
    UnsupportedVersion,
}

impl ErrorCode {
    /// The protobuf enum value.
    pub fn to_wire(self) -> pb::ErrorCode {
        use pb::ErrorCode as W;
        match self {
            Self::BadFrame => W::BadFrame,
            Self::FrameTooLarge => W::FrameTooLarge,
            Self::UnknownFrame => W::UnknownFrame,
            Self::Protocol => W::Protocol,
            Self::Unauthenticated => W::Unauthenticated,
            Self::TokenExpired => W::TokenExpired,
            Self::InvalidId => W::InvalidId,
            Self::HandshakeTimeout => W::HandshakeTimeout,
            Self::InvalidMessage => W::InvalidMessage,
            Self::Unavailable => W::Unavailable,
            Self::SlowConsumer => W::SlowConsumer,
            Self::GoingAway => W::GoingAway,
            Self::RateLimited => W::RateLimited,
            Self::Internal => W::Internal,
            Self::Forbidden => W::Forbidden,
            Self::UnsupportedVersion => W::UnsupportedVersion,
        }
    }

    /// QUIC / WebTransport application close code.
    pub fn quic_close_code(self) -> u32 {
        self.to_wire() as u32
    }

    /// WebSocket close code (private-use range 4000–4999).
    pub fn websocket_close_code(self) -> u16 {
        petrel_proto::WEBSOCKET_CLOSE_BASE + self.to_wire() as u16
    }

    /// The code's one spelling, in logs, metrics labels and both SDKs
    /// ([`petrel_proto::error_code_name`]).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadFrame => "BAD_FRAME",
            Self::FrameTooLarge => "FRAME_TOO_LARGE",
            Self::UnknownFrame => "UNKNOWN_FRAME",
            Self::Protocol => "PROTOCOL",
            Self::Unauthenticated => "UNAUTHENTICATED",
            Self::TokenExpired => "TOKEN_EXPIRED",
            Self::InvalidId => "INVALID_ID",
            Self::HandshakeTimeout => "HANDSHAKE_TIMEOUT",
            Self::InvalidMessage => "INVALID_MESSAGE",
            Self::Unavailable => "UNAVAILABLE",
            Self::SlowConsumer => "SLOW_CONSUMER",
            Self::GoingAway => "GOING_AWAY",
            Self::RateLimited => "RATE_LIMITED",
            Self::Internal => "INTERNAL",
            Self::Forbidden => "FORBIDDEN",
            Self::UnsupportedVersion => "UNSUPPORTED_VERSION",
        }
    }

    /// Every code.
    pub const ALL: [ErrorCode; 16] = [
        Self::BadFrame,
        Self::FrameTooLarge,
        Self::UnknownFrame,
        Self::Protocol,
        Self::Unauthenticated,
        Self::TokenExpired,
        Self::InvalidId,
        Self::HandshakeTimeout,
        Self::InvalidMessage,
        Self::Unavailable,
        Self::SlowConsumer,
        Self::GoingAway,
        Self::RateLimited,
        Self::Internal,
        Self::Forbidden,
        Self::UnsupportedVersion,
    ];
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_wire_names() {
        for code in ErrorCode::ALL {
            let wire = code.to_wire() as i32;
            assert_eq!(code.as_str(), petrel_proto::error_code_name(wire));
            let ws = code.websocket_close_code();
            assert_eq!(petrel_proto::error_code_of_websocket_close(ws), Some(wire));
        }
    }
}
