//! FastIM wire protocol.
//!
//! Everything that crosses a process boundary is defined here:
//!
//! - [`client`]: the protobuf bodies of client frames (`proto/client.proto`).
//! - [`internal`]: the gateway <-> logic gRPC APIs (`proto/internal.proto`).
//! - [`frame`]: the binary frame that carries one protobuf body over TCP or inside
//!   one WebSocket binary message, and its codec with a maximum frame size.
//! - [`Command`]: the command byte of a frame and the body type that goes with it.
//!
//! The byte-by-byte layout is documented in `docs/protocol.md`.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod command;
pub mod frame;

pub use command::Command;
pub use frame::{Frame, FrameCodec, FrameError, flags};

/// Generated code, nested as the protobuf packages are.
#[allow(missing_docs, clippy::all)]
pub mod fastim {
    /// Package `fastim.client`.
    pub mod client {
        /// Package `fastim.client.v1`.
        pub mod v1 {
            tonic::include_proto!("fastim.client.v1");
        }
    }
    /// Package `fastim.internal`.
    pub mod internal {
        /// Package `fastim.internal.v1`.
        pub mod v1 {
            tonic::include_proto!("fastim.internal.v1");
        }
    }
}

/// Client protocol messages (package `fastim.client.v1`).
pub use fastim::client::v1 as client;
/// Internal gRPC APIs (package `fastim.internal.v1`).
pub use fastim::internal::v1 as internal;

/// The protocol versions this build speaks; a frame with another version is refused.
pub const PROTOCOL_VERSION: u8 = 1;

impl client::Error {
    /// An error body with a code and a human-readable message.
    pub fn new(code: client::ErrorCode, message: impl Into<String>) -> Self {
        let retriable = matches!(code, client::ErrorCode::Unavailable);
        client::Error {
            code: code as i32,
            message: message.into(),
            retriable,
        }
    }
}

impl std::fmt::Display for client::Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code().as_str_name(), self.message)
    }
}

impl std::error::Error for client::Error {}

/// Conversation ids: `d:<small uid>:<large uid>` for 1:1, `g:<group id>` for groups.
pub mod conversation {
    /// The conversation id of the 1:1 chat between two users (order does not matter).
    pub fn direct(a: u64, b: u64) -> String {
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        format!("d:{lo}:{hi}")
    }

    /// The conversation id of a group.
    pub fn group(id: u64) -> String {
        format!("g:{id}")
    }

    /// What a conversation id names.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Parsed {
        /// A 1:1 chat between two user ids.
        Direct(u64, u64),
        /// A group chat.
        Group(u64),
    }

    /// Parses a conversation id; `None` when it is malformed.
    pub fn parse(id: &str) -> Option<Parsed> {
        if let Some(rest) = id.strip_prefix("g:") {
            return rest.parse().ok().map(Parsed::Group);
        }
        let rest = id.strip_prefix("d:")?;
        let (a, b) = rest.split_once(':')?;
        let (a, b) = (a.parse().ok()?, b.parse().ok()?);
        (a <= b).then_some(Parsed::Direct(a, b))
    }
}

#[cfg(test)]
mod tests {
    use super::conversation::*;

    #[test]
    fn conversation_ids_round_trip() {
        assert_eq!(direct(7, 3), "d:3:7");
        assert_eq!(parse("d:3:7"), Some(Parsed::Direct(3, 7)));
        assert_eq!(parse("g:42"), Some(Parsed::Group(42)));
        assert_eq!(parse("d:7:3"), None);
        assert_eq!(parse("x"), None);
        assert_eq!(parse("g:"), None);
    }
}
