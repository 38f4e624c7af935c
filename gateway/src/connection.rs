//! One client connection: the task that reads frames, answers them through logic,
//! writes pushes, watches the heartbeat and resends unacknowledged pushes.
//!
//! Rules the loop enforces:
//! - LOGIN must succeed within `auth_timeout`; before it only REGISTER, LOGIN and
//!   PING are served.
//! - After login, a connection silent for three heartbeat intervals is closed.
//! - Protocol violations (bad frame, unknown command, undecodable body, frames
//!   before login, flooding) get an ERROR frame and a close. Business errors
//!   (not a member, unknown user) get an ERROR frame and the connection stays.
//! - Pushes stay pending until the client acknowledges them (cumulatively per
//!   conversation); they are resent every `retransmit_after`, and after
//!   `max_retransmits` resends the connection is closed so the client resyncs.

use std::sync::Arc;
use std::time::Duration;

use fastim_proto::client::{self, ErrorCode, Message};
use fastim_proto::internal::{AuthRequest, ClientCall, Device, Disconnected};
use fastim_proto::{Command, Frame, FrameError, flags};
use tokio::time::Instant;
use tonic::Request;

use crate::Gateway;
use crate::registry::{ConnQueue, Outbound};
use crate::transport::Transport;

/// How long a call into logic may take before the client gets UNAVAILABLE.
const LOGIC_TIMEOUT: Duration = Duration::from_secs(15);

/// Why a connection ends; logged, and sent to the client where it makes sense.
enum Close {
    /// The client closed or the socket failed.
    Gone,
    /// Close after sending this frame.
    With(Frame),
}

fn error_frame(request_id: u32, code: ErrorCode, message: impl Into<String>) -> Frame {
    Frame::error(request_id, &client::Error::new(code, message))
}

/// What the rate limit says about one frame.
#[derive(Debug, PartialEq, Eq)]
enum Rate {
    /// Serve it.
    Allow,
    /// Over the rate: answer RATE_LIMITED (retriable) without serving it.
    Limited,
    /// Still sending a whole burst past the limit: a flood, close.
    Flood,
}

/// A token bucket for the frames a client may send. Frames past the limit keep
/// draining it below zero; a client that ignores RATE_LIMITED answers and drains
/// another whole burst is flooding and gets closed.
struct RateLimit {
    tokens: f64,
    per_sec: f64,
    burst: f64,
    last: Instant,
}

impl RateLimit {
    fn new(per_sec: u32, burst: u32) -> Self {
        RateLimit {
            tokens: burst as f64,
            per_sec: per_sec as f64,
            burst: burst as f64,
            last: Instant::now(),
        }
    }

    fn check(&mut self) -> Rate {
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.per_sec;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.last = now;
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Rate::Allow
        } else if self.tokens > -self.burst {
            Rate::Limited
        } else {
            Rate::Flood
        }
    }
}

/// State of one connection task.
struct Connection {
    gateway: Arc<Gateway>,
    id: u64,
    transport: Transport,
    /// Set by a successful LOGIN.
    device: Option<Arc<Device>>,
    /// Heartbeat interval told to the client at login.
    heartbeat: Duration,
    /// Close when nothing arrives by then (login deadline, then heartbeats).
    deadline: Instant,
    /// Pushed messages not yet acknowledged, oldest first.
    unacked: Vec<Message>,
    /// Resends so far of the oldest unacknowledged push.
    resends: u32,
    /// When to resend the unacknowledged pushes.
    resend_at: Option<Instant>,
    rate: RateLimit,
}

/// Runs a connection to its end. `transport` is already accepted (and upgraded).
pub async fn serve(gateway: Arc<Gateway>, transport: Transport) {
    let config = &gateway.config;
    let queue = ConnQueue::new(config.outbound_queue);
    let id = gateway.registry.insert(queue.clone());
    let mut conn = Connection {
        id,
        transport,
        device: None,
        heartbeat: Duration::from_secs(30),
        deadline: Instant::now() + config.auth_timeout,
        unacked: Vec::new(),
        resends: 0,
        resend_at: None,
        rate: RateLimit::new(config.frames_per_sec, config.frame_burst),
        gateway: gateway.clone(),
    };
    let close = conn.run(&queue).await;
    gateway.registry.remove(id);
    if let Close::With(frame) = close {
        let _ = conn.transport.write_frames(&[frame], Duration::from_secs(1)).await;
    }
    conn.transport.close().await;
    if let Some(device) = conn.device.take() {
        let request = Request::new(Disconnected {
            device: Some(Arc::unwrap_or_clone(device)),
        });
        if let Err(e) = gateway.logic.disconnect(request).await {
            tracing::warn!(error = %e, "disconnect not reported; the route expires");
        }
    }
}

impl Connection {
    async fn run(&mut self, queue: &ConnQueue) -> Close {
        loop {
            let resend_at = self.resend_at.unwrap_or(self.deadline);
            // Handlers are boxed: the state kept while a connection idles in this
            // select stays small, and the larger handler state exists only while used.
            tokio::select! {
                _ = queue.wake.notified() => {
                    if queue.overflowed() {
                        tracing::info!(conn = self.id, "closing a slow reader");
                        let msg = "outbound queue full: you read too slowly";
                        return Close::With(error_frame(0, ErrorCode::RateLimited, msg));
                    }
                    while let Some(item) = queue.pop() {
                        if let Some(close) = Box::pin(self.outbound(item)).await {
                            return close;
                        }
                    }
                }
                read = self.transport.read_frame() => {
                    match read {
                        Ok(Some(frame)) => {
                            if let Some(close) = Box::pin(self.inbound(frame)).await {
                                return close;
                            }
                        }
                        Ok(None) => return Close::Gone,
                        Err(FrameError::Io(e)) => {
                            tracing::debug!(conn = self.id, error = %e, "connection failed");
                            return Close::Gone;
                        }
                        Err(e @ FrameError::UnsupportedVersion(_)) => {
                            return Close::With(error_frame(0, ErrorCode::UnsupportedVersion, e.to_string()));
                        }
                        Err(e) => return Close::With(error_frame(0, ErrorCode::BadFrame, e.to_string())),
                    }
                }
                _ = tokio::time::sleep_until(self.deadline) => {
                    return Close::With(if self.device.is_none() {
                        error_frame(0, ErrorCode::NotAuthenticated, "login deadline passed")
                    } else {
                        Frame::new(Command::Kick, 0, &client::Kick { reason: "heartbeat timeout".into() })
                    });
                }
                _ = tokio::time::sleep_until(resend_at), if self.resend_at.is_some() => {
                    if let Some(close) = Box::pin(self.resend()).await {
                        return close;
                    }
                }
            }
        }
    }

    async fn write(&mut self, frames: &[Frame]) -> Option<Close> {
        match self
            .transport
            .write_frames(frames, self.gateway.config.write_timeout)
            .await
        {
            Ok(()) => None,
            Err(e) => {
                tracing::debug!(conn = self.id, error = %e, "write failed");
                Some(Close::Gone)
            }
        }
    }

    async fn outbound(&mut self, item: Outbound) -> Option<Close> {
        match item {
            // Pushes only reach logged-in connections.
            Outbound::Push(_) if self.device.is_none() => None,
            Outbound::Push(messages) => {
                if self.unacked.len() + messages.len() > self.gateway.config.outbound_queue * 4 {
                    return Some(Close::With(error_frame(
                        0,
                        ErrorCode::RateLimited,
                        "too many unacknowledged pushes",
                    )));
                }
                self.unacked.extend(messages.iter().cloned());
                if self.resend_at.is_none() {
                    self.resend_at = Some(Instant::now() + self.gateway.config.retransmit_after);
                    self.resends = 0;
                }
                let frame = Frame::new(
                    Command::Push,
                    0,
                    &client::Push {
                        messages: messages.to_vec(),
                    },
                );
                self.write(&[frame]).await
            }
            Outbound::Kick(reason) => Some(Close::With(Frame::new(Command::Kick, 0, &client::Kick { reason }))),
            Outbound::Reconnect(reason) => Some(Close::With(Frame::new(
                Command::Reconnect,
                0,
                &client::Reconnect { after_ms: 0, reason },
            ))),
        }
    }

    async fn resend(&mut self) -> Option<Close> {
        if self.unacked.is_empty() {
            self.resend_at = None;
            return None;
        }
        if self.resends >= self.gateway.config.max_retransmits {
            return Some(Close::With(Frame::new(
                Command::Kick,
                0,
                &client::Kick {
                    reason: "pushes not acknowledged: reconnect and sync".into(),
                },
            )));
        }
        self.resends += 1;
        self.resend_at = Some(Instant::now() + self.gateway.config.retransmit_after);
        let frame = Frame::new(
            Command::Push,
            0,
            &client::Push {
                messages: self.unacked.clone(),
            },
        );
        self.write(&[frame]).await
    }

    async fn inbound(&mut self, frame: Frame) -> Option<Close> {
        let rid = frame.request_id;
        match self.rate.check() {
            Rate::Allow => {}
            Rate::Limited => {
                let mut error = client::Error::new(ErrorCode::RateLimited, "too many frames: slow down and retry");
                error.retriable = true;
                return self.write(&[Frame::error(rid, &error)]).await;
            }
            Rate::Flood => {
                let msg = "flooding: too many frames after RATE_LIMITED answers";
                return Some(Close::With(error_frame(rid, ErrorCode::RateLimited, msg)));
            }
        }
        if frame.flags & flags::ENCRYPTED != 0 {
            let msg = "encrypted bodies are not supported by protocol version 1: use the TLS listener";
            return Some(Close::With(error_frame(rid, ErrorCode::BadFrame, msg)));
        }
        let command = match frame.command() {
            Some(c) if c.client_may_send() && !frame.is_response() => c,
            _ => {
                let msg = format!("unknown command {} for a client to send", frame.command);
                return Some(Close::With(error_frame(rid, ErrorCode::UnknownCommand, msg)));
            }
        };
        // Any valid frame proves the client alive.
        if self.device.is_some() {
            self.deadline = Instant::now() + self.heartbeat * 3;
        }
        match (command, &self.device) {
            (Command::Ping, _) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0);
                self.write(&[Frame::response(
                    Command::Ping,
                    rid,
                    &client::Pong {
                        server_time_unix_ms: now,
                    },
                )])
                .await
            }
            (Command::Login, None) => self.login(frame).await,
            (Command::Login, Some(_)) => {
                self.write(&[error_frame(
                    rid,
                    ErrorCode::AlreadyLoggedIn,
                    "this connection is already logged in",
                )])
                .await
            }
            (Command::Register, _) | (_, Some(_)) => self.call(command, frame).await,
            (_, None) => Some(Close::With(error_frame(
                rid,
                ErrorCode::NotAuthenticated,
                "log in first",
            ))),
        }
    }

    async fn login(&mut self, frame: Frame) -> Option<Close> {
        let rid = frame.request_id;
        let login: client::LoginRequest = match frame.decode() {
            Ok(l) => l,
            Err(e) => {
                return Some(Close::With(error_frame(
                    rid,
                    ErrorCode::BadBody,
                    format!("undecodable LOGIN: {e}"),
                )));
            }
        };
        let request = AuthRequest {
            login: Some(login),
            gateway_id: self.gateway.config.id.clone(),
            conn_id: self.id,
        };
        let reply =
            match tokio::time::timeout(LOGIC_TIMEOUT, self.gateway.logic.authenticate(Request::new(request))).await {
                Ok(Ok(reply)) => reply.into_inner(),
                _ => {
                    return Some(Close::With(error_frame(
                        rid,
                        ErrorCode::Unavailable,
                        "login service unavailable, retry",
                    )));
                }
            };
        match (reply.response, reply.device, reply.error) {
            (Some(response), Some(device), None) => {
                self.heartbeat = Duration::from_millis(response.heartbeat_interval_ms.max(100) as u64);
                self.deadline = Instant::now() + self.heartbeat * 3;
                let device = Arc::new(device);
                self.gateway.registry.set_device(self.id, Some(device.clone()));
                self.device = Some(device);
                self.write(&[Frame::response(Command::Login, rid, &response)]).await
            }
            (_, _, error) => {
                let error = error.unwrap_or_else(|| client::Error::new(ErrorCode::Internal, "login failed"));
                // A failed login closes the connection: it slows password guessing.
                Some(Close::With(Frame::error(rid, &error)))
            }
        }
    }

    /// Forwards a command to logic and writes its answer.
    async fn call(&mut self, command: Command, frame: Frame) -> Option<Close> {
        let rid = frame.request_id;
        if command == Command::PushAck {
            let Ok(ack) = frame.decode::<client::PushAck>() else {
                return Some(Close::With(error_frame(
                    rid,
                    ErrorCode::BadBody,
                    "undecodable PUSH_ACK",
                )));
            };
            self.unacked
                .retain(|m| m.conversation != ack.conversation || m.seq > ack.seq);
            if self.unacked.is_empty() {
                self.resend_at = None;
            }
            // No answer is due; logic's cursor moves in the background.
            if let Some(device) = &self.device {
                self.gateway.acks.ack(device.clone(), ack.conversation, ack.seq);
            }
            return None;
        }
        let call = ClientCall {
            device: self.device.as_deref().cloned(),
            command: command as u32,
            body: frame.body.to_vec(),
        };
        let reply = match tokio::time::timeout(LOGIC_TIMEOUT, self.gateway.logic.call(Request::new(call))).await {
            Ok(Ok(reply)) => reply.into_inner(),
            Ok(Err(status)) => {
                tracing::warn!(error = %status, "logic call failed");
                return self
                    .write(&[error_frame(rid, ErrorCode::Unavailable, "service unavailable, retry")])
                    .await;
            }
            Err(_) => {
                return self
                    .write(&[error_frame(rid, ErrorCode::Unavailable, "service timed out, retry")])
                    .await;
            }
        };
        if let Some(error) = reply.error {
            let frame = Frame::error(rid, &error);
            return if error.code() == ErrorCode::BadBody {
                Some(Close::With(frame))
            } else {
                self.write(&[frame]).await
            };
        }
        match command {
            Command::Logout => {
                self.device = None;
                self.gateway.registry.set_device(self.id, None);
                Some(Close::With(Frame {
                    body: reply.body.into(),
                    ..Frame::response(Command::Logout, rid, &client::LogoutResponse {})
                }))
            }
            _ => {
                let response = Frame {
                    body: reply.body.into(),
                    ..Frame::response(command, rid, &client::Ping {})
                };
                self.write(&[response]).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn rate_limit_answers_then_closes_a_flood() {
        let mut rate = RateLimit::new(10, 5);
        for _ in 0..5 {
            assert_eq!(rate.check(), Rate::Allow);
        }
        for _ in 0..4 {
            assert_eq!(rate.check(), Rate::Limited);
        }
        assert_eq!(rate.check(), Rate::Flood);
        // Time refills the bucket.
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(rate.check(), Rate::Allow);
    }
}
