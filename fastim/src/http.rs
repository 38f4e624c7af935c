//! The small HTTP side of the servers: `/healthz` (alive), `/readyz` (serving),
//! `/metrics` (Prometheus text) and, for the LSB, `/v1/gateway`.
//!
//! A handful of GET routes with tiny bodies, one request per connection: a
//! hand-written HTTP/1.1 responder is less code than wiring a framework for it.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A response: status, content type, body.
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Reply {
    pub fn text(status: u16, body: impl Into<String>) -> Reply {
        Reply {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }

    pub fn json(status: u16, body: String) -> Reply {
        Reply {
            status,
            content_type: "application/json",
            body,
        }
    }
}

/// Readiness of a process: `None` when ready, else what it waits for.
#[derive(Clone)]
pub struct Readiness(Arc<RwLock<Option<String>>>);

impl Readiness {
    pub fn waiting(what: &str) -> Readiness {
        Readiness(Arc::new(RwLock::new(Some(what.to_owned()))))
    }

    pub fn set_waiting(&self, what: &str) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(what.to_owned());
    }

    pub fn set_ready(&self) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// The `/healthz` and `/readyz` answers; `None` for other paths.
    pub fn answer(&self, path: &str) -> Option<Reply> {
        match path {
            "/healthz" => Some(Reply::text(200, "ok\n")),
            "/readyz" => Some(match &*self.0.read().unwrap_or_else(|e| e.into_inner()) {
                None => Reply::text(200, "ready\n"),
                Some(what) => Reply::text(503, format!("not ready: {what}\n")),
            }),
            _ => None,
        }
    }
}

type Handler = Arc<dyn Fn(&str) -> Reply + Send + Sync>;

/// Serves GET requests on `listener` with `handler(path)` until the task is dropped.
pub fn spawn(listener: TcpListener, handler: Handler) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut len = 0;
                let read = tokio::time::timeout(Duration::from_secs(5), async {
                    while len < buf.len() {
                        let n = stream.read(&mut buf[len..]).await?;
                        if n == 0 {
                            break;
                        }
                        len += n;
                        if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                    Ok::<_, std::io::Error>(())
                })
                .await;
                if !matches!(read, Ok(Ok(()))) {
                    return;
                }
                let head = String::from_utf8_lossy(&buf[..len]);
                let mut parts = head.split_whitespace();
                let reply = match (parts.next(), parts.next()) {
                    (Some("GET"), Some(target)) => handler(target.split('?').next().unwrap_or(target)),
                    (Some(_), Some(_)) => Reply::text(405, "only GET\n"),
                    _ => Reply::text(400, "bad request\n"),
                };
                let reason = match reply.status {
                    200 => "OK",
                    404 => "Not Found",
                    405 => "Method Not Allowed",
                    503 => "Service Unavailable",
                    _ => "Bad Request",
                };
                let response = format!(
                    "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                    reply.status,
                    reply.content_type,
                    reply.body.len(),
                    reply.body
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    })
}
