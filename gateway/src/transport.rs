//! The two ways a client connects: FastIM frames on a TCP stream, or one frame per
//! WebSocket binary message. The connection loop sees only [`Transport`].
//!
//! Either may run inside TLS ([`Stream::Tls`]).
//!
//! Idle connections are the common case, so the plain TCP side holds no read buffer
//! while it waits: it waits for readability first and allocates only when bytes
//! arrive, and drops the buffer again once every byte has been decoded. (Inside TLS
//! the read goes through rustls, which buffers decrypted bytes itself, so the
//! socket's readability says nothing: that side reads directly.)

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use fastim_proto::{Frame, FrameCodec, FrameError};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_util::codec::Decoder;

/// Smallest read allocation; a frame larger than this grows the buffer to fit.
const READ_CHUNK: usize = 1024;

/// A client's byte stream: the socket, or TLS on it.
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A client connection's byte transport.
pub enum Transport {
    /// Frames back to back on a TCP stream.
    Tcp {
        /// The socket, or TLS on it.
        stream: Stream,
        /// Bytes received but not yet decoded; empty (unallocated) when idle.
        buf: BytesMut,
        /// Frame decoder with the configured maximum body size.
        codec: FrameCodec,
    },
    /// One frame per binary WebSocket message.
    WebSocket {
        /// The upgraded socket.
        ws: Box<WebSocketStream<Stream>>,
        /// Maximum body size of a frame.
        max_body: usize,
    },
}

impl Transport {
    /// A TCP transport.
    pub fn tcp(stream: Stream, max_body: usize) -> Transport {
        Transport::Tcp {
            stream,
            buf: BytesMut::new(),
            codec: FrameCodec::new(max_body),
        }
    }

    /// Reads the next frame; `Ok(None)` on a clean close. Cancel-safe.
    pub async fn read_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        match self {
            Transport::Tcp { stream, buf, codec } => loop {
                if let Some(frame) = codec.decode(buf)? {
                    return Ok(Some(frame));
                }
                if buf.is_empty() && buf.capacity() > 0 {
                    *buf = BytesMut::new();
                }
                let read = match stream {
                    Stream::Plain(socket) => {
                        socket.readable().await?;
                        if buf.capacity() - buf.len() < READ_CHUNK {
                            buf.reserve(READ_CHUNK);
                        }
                        socket.try_read_buf(buf)
                    }
                    Stream::Tls(tls) => {
                        if buf.capacity() - buf.len() < READ_CHUNK {
                            buf.reserve(READ_CHUNK);
                        }
                        // Cancel-safe: bytes land in `buf` only when the read completes.
                        tls.read_buf(buf).await
                    }
                };
                match read {
                    Ok(0) if buf.is_empty() => return Ok(None),
                    Ok(0) => return Err(FrameError::Truncated),
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e.into()),
                }
            },
            Transport::WebSocket { ws, max_body } => loop {
                match ws.next().await {
                    None => return Ok(None),
                    Some(Err(e)) => return Err(FrameError::Io(std::io::Error::other(e))),
                    Some(Ok(WsMessage::Binary(data))) => return Frame::from_message(&data, *max_body).map(Some),
                    Some(Ok(WsMessage::Close(_))) => return Ok(None),
                    Some(Ok(WsMessage::Text(_))) => {
                        return Err(FrameError::Io(std::io::Error::other(
                            "text WebSocket messages are not FastIM frames: send binary messages",
                        )));
                    }
                    // Pings are answered by tungstenite itself.
                    Some(Ok(_)) => continue,
                }
            },
        }
    }

    /// Writes frames, giving up after `timeout` (a reader that slow is dropped).
    pub async fn write_frames(&mut self, frames: &[Frame], timeout: Duration) -> Result<(), FrameError> {
        let write = async {
            match self {
                Transport::Tcp { stream, .. } => {
                    let mut out = BytesMut::new();
                    for frame in frames {
                        frame.encode_into(&mut out);
                    }
                    stream.write_all(&out).await?;
                }
                Transport::WebSocket { ws, .. } => {
                    for frame in frames {
                        ws.feed(WsMessage::Binary(frame.to_bytes()))
                            .await
                            .map_err(std::io::Error::other)?;
                    }
                    ws.flush().await.map_err(std::io::Error::other)?;
                }
            }
            Ok::<(), FrameError>(())
        };
        match tokio::time::timeout(timeout, write).await {
            Ok(result) => result,
            Err(_) => Err(FrameError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "write timed out",
            ))),
        }
    }

    /// Closes the connection (best effort). TCP closes "lingering": the write side is
    /// shut first and input is read and discarded for a moment, because closing a
    /// socket with unread input sends a reset that can destroy the error frame the
    /// client has not read yet.
    pub async fn close(&mut self) {
        match self {
            Transport::Tcp { stream, .. } => {
                let _ = stream.shutdown().await;
                let linger = async {
                    let mut scratch = [0u8; 1024];
                    let mut discarded = 0;
                    while discarded < 256 * 1024 {
                        match stream.read(&mut scratch).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => discarded += n,
                        }
                    }
                };
                let _ = tokio::time::timeout(Duration::from_millis(500), linger).await;
            }
            Transport::WebSocket { ws, .. } => {
                let _ = tokio::time::timeout(Duration::from_secs(1), SinkExt::close(ws.as_mut())).await;
            }
        }
    }
}
