//! A raw FastIM connection: frames in, frames out, over TCP or WebSocket, plain or
//! inside TLS.
//!
//! [`crate::Client`] builds on it; tests use it directly to speak the wire
//! protocol (and to break it on purpose).

use std::path::Path;
use std::sync::Arc;

use bytes::BytesMut;
use fastim_proto::{Frame, FrameCodec};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_rustls::rustls;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};
use tokio_util::codec::Decoder;

use crate::ClientError;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
/// Client TLS settings (rustls).
pub type TlsConfig = rustls::ClientConfig;
type Tls = tokio_rustls::client::TlsStream<TcpStream>;

/// Reading half of a connection.
pub enum FrameReader {
    /// TCP: a buffer and the decoder.
    Tcp(OwnedReadHalf, BytesMut, FrameCodec),
    /// TLS over TCP (`tls://host:port`).
    Tls(ReadHalf<Tls>, BytesMut, FrameCodec),
    /// WebSocket: one frame per binary message.
    Ws(SplitStream<Ws>, usize),
}

/// Writing half of a connection.
pub enum FrameWriter {
    /// TCP.
    Tcp(OwnedWriteHalf),
    /// TLS over TCP.
    Tls(WriteHalf<Tls>),
    /// WebSocket.
    Ws(SplitSink<Ws, WsMessage>),
}

/// Opens a connection to `server`: `host:port` for TCP, `ws://host:port/` for
/// WebSocket; `tls://host:port` and `wss://host:port/` inside TLS, verified against
/// the system's roots.
pub async fn connect(server: &str, max_body: usize) -> Result<(FrameReader, FrameWriter), ClientError> {
    connect_with(server, max_body, None).await
}

/// TLS settings for `tls://` and `wss://` servers: the system's root certificates
/// (`SSL_CERT_FILE` / `SSL_CERT_DIR` override where they are read from), plus the CA
/// certificates (PEM) of `extra_ca` when given (a private CA).
pub fn tls_config(extra_ca: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    // Unreadable system certificates are skipped; with none, only `extra_ca` is trusted.
    let _ = roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if let Some(path) = extra_ca {
        let bad = |e: &dyn std::fmt::Display| ClientError::Config(format!("{}: {e}", path.display()));
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| bad(&e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(&e))?;
        if certs.is_empty() {
            return Err(bad(&"no PEM certificate in it"));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| bad(&e))?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Config(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// [`connect`], with the TLS settings to use for `tls://` and `wss://` servers
/// (`None`: [`tls_config`] without an extra CA).
pub async fn connect_with(
    server: &str,
    max_body: usize,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<(FrameReader, FrameWriter), ClientError> {
    let unreachable = |e: &dyn std::fmt::Display| ClientError::Unreachable(format!("{server}: {e}"));
    let tls_settings = || match tls {
        Some(config) => Ok(config.clone()),
        // Loading the system's roots reads and parses files: once per process.
        None => {
            static SYSTEM: std::sync::OnceLock<Result<Arc<TlsConfig>, ClientError>> = std::sync::OnceLock::new();
            SYSTEM.get_or_init(|| tls_config(None)).clone()
        }
    };
    if server.starts_with("ws://") || server.starts_with("wss://") {
        let connector = if server.starts_with("wss://") {
            Some(Connector::Rustls(tls_settings()?))
        } else {
            None
        };
        let (ws, _) = tokio_tungstenite::connect_async_tls_with_config(server, None, true, connector)
            .await
            .map_err(|e| unreachable(&e))?;
        let (sink, stream) = ws.split();
        Ok((FrameReader::Ws(stream, max_body), FrameWriter::Ws(sink)))
    } else if let Some(addr) = server.strip_prefix("tls://") {
        let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
        let name = ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']').to_owned())
            .map_err(|e| unreachable(&e))?;
        let stream = TcpStream::connect(addr).await.map_err(|e| unreachable(&e))?;
        let _ = stream.set_nodelay(true);
        let stream = tokio_rustls::TlsConnector::from(tls_settings()?)
            .connect(name, stream)
            .await
            .map_err(|e| unreachable(&e))?;
        let (r, w) = tokio::io::split(stream);
        Ok((
            FrameReader::Tls(r, BytesMut::new(), FrameCodec::new(max_body)),
            FrameWriter::Tls(w),
        ))
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
            FrameReader::Tcp(r, buf, codec) => read_frame(r, buf, codec).await,
            FrameReader::Tls(r, buf, codec) => read_frame(r, buf, codec).await,
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

/// The next frame of a byte stream.
async fn read_frame(
    r: &mut (impl AsyncRead + Unpin),
    buf: &mut BytesMut,
    codec: &mut FrameCodec,
) -> Result<Option<Frame>, ClientError> {
    loop {
        if let Some(frame) = codec.decode(buf).map_err(|e| ClientError::Protocol(e.to_string()))? {
            return Ok(Some(frame));
        }
        buf.reserve(4096);
        match r.read_buf(buf).await {
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(e) => return Err(ClientError::Disconnected(e.to_string())),
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
            FrameWriter::Tls(w) => w.write_all(bytes).await.map_err(|e| e.to_string()),
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
            FrameWriter::Tls(w) => {
                let _ = w.shutdown().await;
            }
            FrameWriter::Ws(sink) => {
                let _ = sink.close().await;
            }
        }
    }
}
