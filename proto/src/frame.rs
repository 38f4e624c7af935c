//! The FastIM frame: a 13-byte header followed by a protobuf body.
//!
//! ```text
//!  0      2         3         4       5            9             13
//!  +------+---------+---------+-------+------------+-------------+------....
//!  | 0xFA | version | command | flags | request id | body length | body
//!  | 0x57 |   u8    |   u8    |  u8   |  u32 (BE)  |  u32 (BE)   | protobuf
//!  +------+---------+---------+-------+------------+-------------+------....
//! ```
//!
//! Over TCP frames follow each other on the stream; over WebSocket each binary
//! message holds exactly one frame. The decoder rejects bad magic and a version it
//! does not speak as soon as those bytes arrive, and a length above the configured
//! maximum before reading the body, so garbage never makes it buffer much.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::{Command, PROTOCOL_VERSION};

/// The two magic bytes that open every frame.
pub const MAGIC: [u8; 2] = [0xFA, 0x57];
/// Size of the fixed header.
pub const HEADER_LEN: usize = 13;
/// Default maximum body size: 64 KiB.
pub const DEFAULT_MAX_BODY: usize = 64 * 1024;

/// Bits of the flags byte.
pub mod flags {
    /// The frame answers the request with the same request id.
    pub const RESPONSE: u8 = 0b0000_0001;
    /// Reserved for end-to-end encrypted bodies; v1 servers refuse it (use TLS).
    pub const ENCRYPTED: u8 = 0b0000_0010;
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Protocol version of this frame.
    pub version: u8,
    /// Raw command byte; see [`Frame::command`].
    pub command: u8,
    /// Flag bits, see [`flags`].
    pub flags: u8,
    /// Chosen by the sender of a request, echoed in the response; 0 for unsolicited frames.
    pub request_id: u32,
    /// Protobuf body.
    pub body: Bytes,
}

impl Frame {
    /// A request or unsolicited frame with a protobuf body.
    pub fn new(command: Command, request_id: u32, body: &impl prost::Message) -> Frame {
        Frame {
            version: PROTOCOL_VERSION,
            command: command as u8,
            flags: 0,
            request_id,
            body: Bytes::from(body.encode_to_vec()),
        }
    }

    /// The response to `request_id` with a protobuf body.
    pub fn response(command: Command, request_id: u32, body: &impl prost::Message) -> Frame {
        let mut frame = Frame::new(command, request_id, body);
        frame.flags |= flags::RESPONSE;
        frame
    }

    /// An error frame answering `request_id` (0 for a connection-level error).
    pub fn error(request_id: u32, error: &crate::client::Error) -> Frame {
        Frame::response(Command::Error, request_id, error)
    }

    /// The command, `None` when the byte is not one.
    pub fn command(&self) -> Option<Command> {
        Command::from_u8(self.command)
    }

    /// Whether this frame is a response.
    pub fn is_response(&self) -> bool {
        self.flags & flags::RESPONSE != 0
    }

    /// Decodes the body as `M`.
    pub fn decode<M: prost::Message + Default>(&self) -> Result<M, prost::DecodeError> {
        M::decode(self.body.clone())
    }

    /// Appends the encoded frame to `dst`.
    pub fn encode_into(&self, dst: &mut BytesMut) {
        dst.reserve(HEADER_LEN + self.body.len());
        dst.put_slice(&MAGIC);
        dst.put_u8(self.version);
        dst.put_u8(self.command);
        dst.put_u8(self.flags);
        dst.put_u32(self.request_id);
        dst.put_u32(self.body.len() as u32);
        dst.put_slice(&self.body);
    }

    /// The encoded frame as one buffer (for a WebSocket message).
    pub fn to_bytes(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(HEADER_LEN + self.body.len());
        self.encode_into(&mut buf);
        buf.freeze()
    }

    /// Decodes exactly one frame from a complete buffer (one WebSocket message).
    pub fn from_message(data: &[u8], max_body: usize) -> Result<Frame, FrameError> {
        let mut buf = BytesMut::from(data);
        let mut codec = FrameCodec::new(max_body);
        match codec.decode(&mut buf)? {
            Some(frame) if buf.is_empty() => Ok(frame),
            Some(_) => Err(FrameError::TrailingBytes),
            None => Err(FrameError::Truncated),
        }
    }
}

/// Why bytes could not be decoded into a frame. Every variant is fatal for the
/// connection: the stream can no longer be trusted to be aligned on frames.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The first two bytes are not the FastIM magic.
    #[error("bad magic bytes {0:#04x} {1:#04x}: not a FastIM frame")]
    BadMagic(u8, u8),
    /// The version byte names a version this build does not speak.
    #[error("unsupported protocol version {0} (this server speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion(u8),
    /// The length field is above the maximum.
    #[error("frame body of {len} bytes exceeds the maximum of {max} bytes")]
    Oversized {
        /// The announced length.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The stream ended in the middle of a frame.
    #[error("connection closed in the middle of a frame")]
    Truncated,
    /// A WebSocket message held more than one frame.
    #[error("bytes after the end of the frame")]
    TrailingBytes,
    /// Reading or writing the socket failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// Frame codec for `tokio_util::codec` with a maximum body size.
#[derive(Debug, Clone, Copy)]
pub struct FrameCodec {
    max_body: usize,
}

impl FrameCodec {
    /// A codec that refuses bodies longer than `max_body` bytes.
    pub fn new(max_body: usize) -> FrameCodec {
        FrameCodec { max_body }
    }
}

impl Default for FrameCodec {
    fn default() -> Self {
        FrameCodec::new(DEFAULT_MAX_BODY)
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        // Validate what has arrived so far, so garbage is refused at once.
        let magic_len = src.len().min(2);
        if src[..magic_len] != MAGIC[..magic_len] {
            return Err(FrameError::BadMagic(src[0], src.get(1).copied().unwrap_or(0)));
        }
        if let Some(&v) = src.get(2)
            && v != PROTOCOL_VERSION
        {
            return Err(FrameError::UnsupportedVersion(v));
        }
        if src.len() < HEADER_LEN {
            return Ok(None);
        }
        let len = u32::from_be_bytes([src[9], src[10], src[11], src[12]]) as usize;
        if len > self.max_body {
            return Err(FrameError::Oversized {
                len,
                max: self.max_body,
            });
        }
        if src.len() < HEADER_LEN + len {
            src.reserve(HEADER_LEN + len - src.len());
            return Ok(None);
        }
        let version = src[2];
        let command = src[3];
        let flags = src[4];
        let request_id = u32::from_be_bytes([src[5], src[6], src[7], src[8]]);
        src.advance(HEADER_LEN);
        let body = src.split_to(len).freeze();
        Ok(Some(Frame {
            version,
            command,
            flags,
            request_id,
            body,
        }))
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        match self.decode(buf)? {
            Some(frame) => Ok(Some(frame)),
            None if buf.is_empty() => Ok(None),
            None => Err(FrameError::Truncated),
        }
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        frame.encode_into(dst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client;

    fn ping() -> Frame {
        Frame::new(Command::Ping, 7, &client::Ping {})
    }

    #[test]
    fn round_trip_and_split_reads() {
        let frame = Frame::new(
            Command::Send,
            42,
            &client::SendRequest {
                client_msg_id: "c1".into(),
                text: "hello".into(),
                target: Some(client::send_request::Target::ToUser("bob".into())),
            },
        );
        let bytes = frame.to_bytes();
        let mut codec = FrameCodec::default();
        // Feed one byte at a time: nothing until the last byte.
        let mut buf = BytesMut::new();
        for (i, b) in bytes.iter().enumerate() {
            buf.put_u8(*b);
            let got = codec.decode(&mut buf).unwrap();
            if i + 1 < bytes.len() {
                assert!(got.is_none());
            } else {
                assert_eq!(got.unwrap(), frame);
            }
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn rejects_bad_magic_immediately() {
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]);
        assert!(matches!(
            FrameCodec::default().decode(&mut buf),
            Err(FrameError::BadMagic(b'G', b'E'))
        ));
        let mut one = BytesMut::from(&[0xFAu8, 0x00][..]);
        assert!(matches!(
            FrameCodec::default().decode(&mut one),
            Err(FrameError::BadMagic(..))
        ));
    }

    #[test]
    fn rejects_other_versions() {
        let mut bytes = BytesMut::from(&ping().to_bytes()[..]);
        bytes[2] = 9;
        assert!(matches!(
            FrameCodec::default().decode(&mut bytes),
            Err(FrameError::UnsupportedVersion(9))
        ));
    }

    #[test]
    fn rejects_oversized_before_the_body_arrives() {
        let mut header = BytesMut::new();
        header.put_slice(&MAGIC);
        header.put_u8(PROTOCOL_VERSION);
        header.put_u8(Command::Send as u8);
        header.put_u8(0);
        header.put_u32(1);
        header.put_u32(u32::MAX);
        let err = FrameCodec::new(1024).decode(&mut header).unwrap_err();
        assert!(matches!(err, FrameError::Oversized { len, max: 1024 } if len == u32::MAX as usize));
    }

    #[test]
    fn truncated_at_eof() {
        let bytes = ping().to_bytes();
        let mut buf = BytesMut::from(&bytes[..bytes.len() - 1]);
        let mut codec = FrameCodec::default();
        // An empty ping body means the header is the whole frame: cut the header.
        let mut short = BytesMut::from(&bytes[..5]);
        assert!(matches!(codec.decode_eof(&mut short), Err(FrameError::Truncated)));
        let _ = codec.decode(&mut buf);
    }

    #[test]
    fn websocket_message_must_hold_exactly_one_frame() {
        let bytes = ping().to_bytes();
        assert_eq!(Frame::from_message(&bytes, 1024).unwrap(), ping());
        let mut two = bytes.to_vec();
        two.extend_from_slice(&bytes);
        assert!(matches!(
            Frame::from_message(&two, 1024),
            Err(FrameError::TrailingBytes)
        ));
        assert!(matches!(
            Frame::from_message(&bytes[..4], 1024),
            Err(FrameError::Truncated)
        ));
    }
}

#[cfg(test)]
mod random_input {
    use super::*;

    /// A tiny deterministic generator (xorshift) so the test needs no extra crate.
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    /// The invariants of the fuzz target, on 20,000 random inputs: no panic, no
    /// body above the maximum, decoded frames re-encode to their exact bytes.
    #[test]
    fn random_bytes_never_panic_and_frames_round_trip() {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        for _ in 0..20_000 {
            let len = (rng.next() % 64) as usize;
            let mut data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            // Half the inputs start with a valid header prefix so decoding goes deep.
            if rng.next().is_multiple_of(2) && data.len() >= 13 {
                data[..3].copy_from_slice(&[MAGIC[0], MAGIC[1], crate::PROTOCOL_VERSION]);
                data[9..13].copy_from_slice(&((rng.next() % 60) as u32).to_be_bytes());
            }
            let mut codec = FrameCodec::new(32);
            let mut buf = BytesMut::from(&data[..]);
            let mut consumed = 0;
            while let Ok(Some(frame)) = codec.decode(&mut buf) {
                assert!(frame.body.len() <= 32);
                let bytes = frame.to_bytes();
                assert_eq!(&bytes[..], &data[consumed..consumed + bytes.len()]);
                consumed += bytes.len();
            }
            let _ = codec.decode_eof(&mut buf);
        }
    }
}
