//! Gateway configuration: one typed struct, validated at start.

use std::net::SocketAddr;
use std::time::Duration;

/// Settings of the gateway component.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Id of this gateway in routes and the registry.
    pub id: String,
    /// TCP listen address (FastIM frames).
    pub tcp_addr: Option<SocketAddr>,
    /// WebSocket listen address (one frame per binary message).
    pub ws_addr: Option<SocketAddr>,
    /// Largest frame body accepted; a longer length field closes the connection.
    pub max_frame_body: usize,
    /// Time a new connection has to complete LOGIN.
    pub auth_timeout: Duration,
    /// Frames queued for one connection before it counts as a slow reader and is closed.
    pub outbound_queue: usize,
    /// Time a single write may take before the connection is closed.
    pub write_timeout: Duration,
    /// Time to wait for a push acknowledgement before resending.
    pub retransmit_after: Duration,
    /// Resends of an unacknowledged push before the connection is closed (the client resyncs).
    pub max_retransmits: u32,
    /// Sustained frames per second a connection may send.
    pub frames_per_sec: u32,
    /// Burst above `frames_per_sec`.
    pub frame_burst: u32,
    /// Most concurrent connections; more are refused with an error frame.
    pub max_connections: usize,
    /// Connections asked per second to reconnect elsewhere while draining.
    pub drain_rate: u32,
    /// Longest drain before the remaining connections are closed.
    pub drain_timeout: Duration,
    /// TLS on both listeners (see [`crate::tls::server_config`]); `None`: plain.
    pub tls: Option<std::sync::Arc<tokio_rustls::rustls::ServerConfig>>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            id: "gateway-0".into(),
            tcp_addr: Some(([127, 0, 0, 1], 7000).into()),
            ws_addr: Some(([127, 0, 0, 1], 7001).into()),
            max_frame_body: fastim_proto::frame::DEFAULT_MAX_BODY,
            auth_timeout: Duration::from_secs(10),
            outbound_queue: 256,
            write_timeout: Duration::from_secs(10),
            retransmit_after: Duration::from_secs(5),
            max_retransmits: 4,
            frames_per_sec: 200,
            frame_burst: 400,
            max_connections: 100_000,
            drain_rate: 500,
            drain_timeout: Duration::from_secs(30),
            tls: None,
        }
    }
}

impl GatewayConfig {
    /// Checks the settings; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.id.is_empty() {
            return Err("id: must not be empty".into());
        }
        if self.tcp_addr.is_none() && self.ws_addr.is_none() {
            return Err("tcp_addr / ws_addr: at least one listener is required".into());
        }
        if !(64..=16 * 1024 * 1024).contains(&self.max_frame_body) {
            return Err("max_frame_body: between 64 bytes and 16 MiB".into());
        }
        if self.outbound_queue == 0 {
            return Err("outbound_queue: must be positive".into());
        }
        if self.frames_per_sec == 0 || self.frame_burst == 0 {
            return Err("frames_per_sec / frame_burst: must be positive".into());
        }
        if self.drain_rate == 0 {
            return Err("drain_rate: must be positive".into());
        }
        if self.max_connections == 0 {
            return Err("max_connections: must be positive".into());
        }
        Ok(())
    }
}
