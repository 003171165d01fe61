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
        }
    }

    /// QUIC / WebTransport application close code.
    pub fn quic_close_code(self) -> u32 {
        self.to_wire() as u32
    }

    /// WebSocket close code (private-use range 4000–4999).
    pub fn websocket_close_code(self) -> u16 {
        4000 + self.to_wire() as u16
    }

    /// Short stable name, used in logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadFrame => "bad_frame",
            Self::FrameTooLarge => "frame_too_large",
            Self::UnknownFrame => "unknown_frame",
            Self::Protocol => "protocol",
            Self::Unauthenticated => "unauthenticated",
            Self::TokenExpired => "token_expired",
            Self::InvalidId => "invalid_id",
            Self::HandshakeTimeout => "handshake_timeout",
            Self::InvalidMessage => "invalid_message",
            Self::Unavailable => "unavailable",
            Self::SlowConsumer => "slow_consumer",
            Self::GoingAway => "going_away",
            Self::RateLimited => "rate_limited",
            Self::Internal => "internal",
            Self::Forbidden => "forbidden",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
