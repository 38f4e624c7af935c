//! Asking an LSB which gateway to use: `GET <lsb>/v1/gateway` answers the least
//! loaded gateway's `{"tcp": "host:port", "ws": "ws://host:port/", ...}`.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The address to connect to, or `None` when the LSB cannot answer (the caller
/// falls back to its configured servers).
pub async fn best_gateway(lsb: &str, websocket: bool) -> Option<String> {
    let hostport = lsb.trim_start_matches("http://").trim_end_matches('/');
    let fetch = async {
        let mut stream = TcpStream::connect(hostport).await.ok()?;
        let request = format!("GET /v1/gateway HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        Some(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(3), fetch).await.ok()??;
    let text = String::from_utf8(response).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    let record: serde_json::Value = serde_json::from_str(body).ok()?;
    let key = if websocket { "ws" } else { "tcp" };
    record.get(key)?.as_str().filter(|s| !s.is_empty()).map(str::to_owned)
}
