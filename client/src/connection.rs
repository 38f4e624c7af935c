//! A raw FastIM connection: frames in, frames out, over TCP or WebSocket.
//!
//! [`crate::Client`] builds on it; tests use it directly to speak the wire
//! protocol (and to break it on purpose).

use bytes::BytesMut;
use fastim_proto::{Frame, FrameCodec};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::codec::Decoder;

use crate::ClientError;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Reading half of a connection.
pub enum FrameReader {
    /// TCP: a buffer and the decoder.
    Tcp(OwnedReadHalf, BytesMut, FrameCodec),
    /// WebSocket: one frame per binary message.
    Ws(SplitStream<Ws>, usize),
}

/// Writing half of a connection.
pub enum FrameWriter {
    /// TCP.
    Tcp(OwnedWriteHalf),
    /// WebSocket.
    Ws(SplitSink<Ws, WsMessage>),
}

/// Opens a connection to `server`: `host:port` for TCP, `ws://host:port/` for WebSocket.
pub async fn connect(server: &str, max_body: usize) -> Result<(FrameReader, FrameWriter), ClientError> {
    let unreachable = |e: &dyn std::fmt::Display| ClientError::Unreachable(format!("{server}: {e}"));
    if server.starts_with("ws://") || server.starts_with("wss://") {
        let (ws, _) = tokio_tungstenite::connect_async(server)
            .await
            .map_err(|e| unreachable(&e))?;
        let (sink, stream) = ws.split();
        Ok((FrameReader::Ws(stream, max_body), FrameWriter::Ws(sink)))
    } else {
        let addr = server.strip_prefix("tcp://").unwrap_or(server);
        let stream = TcpStream::connect(addr).await.map_err(|e| unreachable(&e))?;
        let _ = stream.set_nodelay(true);
        let (r, w) = stream.into_split();
        Ok((
            FrameReader::Tcp(r, BytesMut::new(), FrameCodec::new(max_body)),
            FrameWriter::Tcp(w),
        ))
    }
}

impl FrameReader {
    /// The next frame; `Ok(None)` when the server closed the connection.
    pub async fn read(&mut self) -> Result<Option<Frame>, ClientError> {
        match self {
            FrameReader::Tcp(r, buf, codec) => loop {
                if let Some(frame) = codec.decode(buf).map_err(|e| ClientError::Protocol(e.to_string()))? {
                    return Ok(Some(frame));
                }
                buf.reserve(4096);
                match r.read_buf(buf).await {
                    Ok(0) => return Ok(None),
                    Ok(_) => {}
                    Err(e) => return Err(ClientError::Disconnected(e.to_string())),
                }
            },
            FrameReader::Ws(stream, max_body) => loop {
                match stream.next().await {
                    None | Some(Ok(WsMessage::Close(_))) => return Ok(None),
                    Some(Err(e)) => return Err(ClientError::Disconnected(e.to_string())),
                    Some(Ok(WsMessage::Binary(data))) => {
                        return Frame::from_message(&data, *max_body)
                            .map(Some)
                            .map_err(|e| ClientError::Protocol(e.to_string()));
                    }
                    Some(Ok(_)) => continue,
                }
            },
        }
    }
}

impl FrameWriter {
    /// Writes one frame.
    pub async fn write(&mut self, frame: &Frame) -> Result<(), ClientError> {
        self.write_raw(&frame.to_bytes()).await
    }

    /// Writes raw bytes (a TCP stream) or one binary message (WebSocket): tests use
    /// it to send broken frames.
    pub async fn write_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        let result = match self {
            FrameWriter::Tcp(w) => w.write_all(bytes).await.map_err(|e| e.to_string()),
            FrameWriter::Ws(sink) => sink
                .send(WsMessage::Binary(bytes.to_vec().into()))
                .await
                .map_err(|e| e.to_string()),
        };
        result.map_err(ClientError::Disconnected)
    }

    /// Closes the connection (best effort).
    pub async fn close(&mut self) {
        match self {
            FrameWriter::Tcp(w) => {
                let _ = w.shutdown().await;
            }
            FrameWriter::Ws(sink) => {
                let _ = sink.close().await;
            }
        }
    }
}
