//! Listeners and graceful shutdown.
//!
//! [`serve`] accepts on the TCP and WebSocket listeners until `shutdown`
//! resolves, then drains: it stops accepting, asks its clients to reconnect
//! (elsewhere, in a cluster) at `drain_rate` per second so they do not stampede
//! the other gateways, and waits up to `drain_timeout` for them to leave.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use fastim_proto::Frame;
use fastim_proto::client::{self, ErrorCode};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::Gateway;
use crate::connection;
use crate::registry::Outbound;
use crate::transport::{Stream, Transport};

/// Bound listeners, so callers learn the real ports before serving.
pub struct Listeners {
    /// FastIM frames over TCP.
    pub tcp: Option<TcpListener>,
    /// FastIM frames over WebSocket.
    pub ws: Option<TcpListener>,
}

impl Listeners {
    /// Binds the addresses of the configuration.
    pub async fn bind(gateway: &Gateway) -> std::io::Result<Listeners> {
        let bind = |addr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
        };
        let tcp = match gateway.config.tcp_addr {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let ws = match gateway.config.ws_addr {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        Ok(Listeners { tcp, ws })
    }
}

/// Serves until `shutdown` resolves, then drains.
pub async fn serve(gateway: Arc<Gateway>, listeners: Listeners, shutdown: impl Future<Output = ()>) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut accepters = Vec::new();
    if let Some(l) = listeners.tcp {
        accepters.push(tokio::spawn(accept_loop(gateway.clone(), l, false, stop_rx.clone())));
    }
    if let Some(l) = listeners.ws {
        accepters.push(tokio::spawn(accept_loop(gateway.clone(), l, true, stop_rx.clone())));
    }
    shutdown.await;
    let _ = stop_tx.send(true);
    for a in accepters {
        let _ = a.await;
    }
    drain(&gateway).await;
}

/// Asks every client to reconnect, `drain_rate` per second, and waits for them to go.
pub async fn drain(gateway: &Gateway) {
    let ids = gateway.registry.ids();
    if ids.is_empty() {
        return;
    }
    let rate = gateway.config.drain_rate.max(1) as usize;
    tracing::info!(connections = ids.len(), rate, "draining: asking clients to reconnect");
    let deadline = tokio::time::Instant::now() + gateway.config.drain_timeout;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    // A late tick must not be made up with a burst: the rate is a promise to the
    // other gateways.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let per_tick = rate.div_ceil(10);
    for chunk in ids.chunks(per_tick) {
        tick.tick().await;
        for id in chunk {
            gateway
                .registry
                .deliver(*id, Outbound::Reconnect("gateway shutting down".into()));
        }
        if tokio::time::Instant::now() >= deadline {
            break;
        }
    }
    while !gateway.registry.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left = gateway.registry.len();
    if left > 0 {
        tracing::warn!(left, "drain timeout: closing the remaining connections");
    }
}

async fn accept_loop(gateway: Arc<Gateway>, listener: TcpListener, websocket: bool, mut stop: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            _ = stop.changed() => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(start(gateway.clone(), stream, websocket));
    }
}

async fn start(gateway: Arc<Gateway>, stream: TcpStream, websocket: bool) {
    let max_body = gateway.config.max_frame_body;
    let stream = match &gateway.config.tls {
        None => Stream::Plain(stream),
        Some(tls) => {
            // The handshake counts against the login deadline.
            let handshake = tokio_rustls::TlsAcceptor::from(tls.clone()).accept(stream);
            match tokio::time::timeout(gateway.config.auth_timeout, handshake).await {
                Ok(Ok(tls)) => Stream::Tls(Box::new(tls)),
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            }
        }
    };
    let mut transport = if websocket {
        let mut ws_config = WebSocketConfig::default();
        ws_config.read_buffer_size = 4096;
        ws_config.write_buffer_size = 0;
        ws_config.max_message_size = Some(max_body + fastim_proto::frame::HEADER_LEN);
        ws_config.max_frame_size = Some(max_body + fastim_proto::frame::HEADER_LEN);
        let handshake = tokio_tungstenite::accept_async_with_config(stream, Some(ws_config));
        match tokio::time::timeout(gateway.config.auth_timeout, handshake).await {
            Ok(Ok(ws)) => Transport::WebSocket {
                ws: Box::new(ws),
                max_body,
            },
            _ => return,
        }
    } else {
        Transport::tcp(stream, max_body)
    };
    if gateway.registry.len() >= gateway.config.max_connections {
        let error = client::Error::new(ErrorCode::Unavailable, "gateway full: try another one");
        let _ = transport
            .write_frames(&[Frame::error(0, &error)], Duration::from_secs(1))
            .await;
        transport.close().await;
        return;
    }
    connection::serve(gateway, transport).await;
}
