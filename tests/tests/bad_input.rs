//! Bad input against the real server: every malformed or unauthorised frame gets a
//! clear error and a close, never a panic, and never disturbs other clients.

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use fastim_client::Target;
use fastim_proto::client::{self as pb, DeviceKind, ErrorCode};
use fastim_proto::frame::MAGIC;
use fastim_proto::{Command, Frame, PROTOCOL_VERSION};
use fastim_tests::*;

const T: Duration = Duration::from_secs(10);

fn header(version: u8, command: u8, flags: u8, len: u32) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_slice(&MAGIC);
    b.put_u8(version);
    b.put_u8(command);
    b.put_u8(flags);
    b.put_u32(7);
    b.put_u32(len);
    b
}

/// Sends `bytes` on a fresh connection (optionally after logging in) and returns
/// the error codes and messages received before the server closed it.
async fn errors_for(server: &str, login: Option<&str>, bytes: &[u8]) -> Vec<(ErrorCode, String)> {
    let mut conn = raw(server).await;
    if let Some(user) = login {
        conn.login(user, DeviceKind::Bot).await;
    }
    conn.writer.write_raw(bytes).await.expect("write");
    conn.errors_until_close(T)
        .await
        .into_iter()
        .map(|e| (e.code(), e.message))
        .collect()
}

async fn assert_closed_with(server: &str, login: Option<&str>, bytes: &[u8], code: ErrorCode, words: &str) {
    let errors = errors_for(server, login, bytes).await;
    assert_eq!(errors.len(), 1, "one error, then a close: {errors:?}");
    assert_eq!(errors[0].0, code, "{errors:?}");
    assert!(
        errors[0].1.contains(words),
        "{:?} should mention {words:?}",
        errors[0].1
    );
}

/// Two healthy clients exchange a message: the server still serves everyone.
async fn still_serving(server: &Standalone) {
    let (alice, _) = connect(&server.tcp, "alice").await;
    let (_bob, mut bob_events) = connect(&server.tcp, "bob").await;
    let text = format!("still serving {}", rand_suffix());
    alice.send_text(Target::User("bob".into()), &text).await.unwrap();
    loop {
        let m = messages(&mut bob_events, 1, T).await.remove(0);
        if m.text == text {
            break;
        }
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_get_an_error_and_a_close() {
    let server = Standalone::start(&["--max-frame-body", "1024"]);
    server.register(&["alice", "bob"]).await;
    let s = server.tcp.as_str();
    // Garbage (an HTTP request on the TCP port).
    assert_closed_with(
        s,
        None,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        ErrorCode::BadFrame,
        "bad magic",
    )
    .await;
    // A length field far above the maximum.
    assert_closed_with(
        s,
        None,
        &header(PROTOCOL_VERSION, 4, 0, u32::MAX),
        ErrorCode::BadFrame,
        "exceeds",
    )
    .await;
    // A version this server does not speak.
    assert_closed_with(
        s,
        None,
        &header(9, 4, 0, 0),
        ErrorCode::UnsupportedVersion,
        "unsupported protocol version",
    )
    .await;
    // Unknown command byte, and a server-to-client command sent by a client.
    assert_closed_with(
        s,
        None,
        &header(PROTOCOL_VERSION, 99, 0, 0),
        ErrorCode::UnknownCommand,
        "unknown command",
    )
    .await;
    let push = header(PROTOCOL_VERSION, Command::Push as u8, 0, 0);
    assert_closed_with(s, Some("alice"), &push, ErrorCode::UnknownCommand, "unknown command").await;
    // The encryption flag (v1 relies on TLS).
    let encrypted = header(PROTOCOL_VERSION, Command::Ping as u8, 0b10, 0);
    assert_closed_with(s, None, &encrypted, ErrorCode::BadFrame, "encrypted").await;
    // Undecodable protobuf bodies, before and after login.
    let mut junk_login = header(PROTOCOL_VERSION, Command::Login as u8, 0, 3);
    junk_login.put_slice(&[0xff, 0xff, 0xff]);
    assert_closed_with(s, None, &junk_login, ErrorCode::BadBody, "undecodable").await;
    let mut junk_send = header(PROTOCOL_VERSION, Command::Send as u8, 0, 2);
    junk_send.put_slice(&[0x0a, 0x7f]);
    assert_closed_with(s, Some("alice"), &junk_send, ErrorCode::BadBody, "undecodable").await;
    still_serving(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_frame_then_close() {
    let server = Standalone::start(&[]);
    server.register(&["alice", "bob"]).await;
    // Half a header, then the client half-closes: the server reports the truncation.
    let mut conn = raw(&server.tcp).await;
    let ping = Frame::new(Command::Ping, 1, &pb::Ping {}).to_bytes();
    conn.writer.write_raw(&ping[..6]).await.unwrap();
    conn.writer.close().await;
    let errors = conn.errors_until_close(T).await;
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].code(), ErrorCode::BadFrame);
    assert!(errors[0].message.contains("middle of a frame"), "{}", errors[0].message);
    // A body that never completes is cut by the login deadline, not held forever.
    still_serving(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_before_login_are_refused_and_login_has_a_deadline() {
    let server = Standalone::start(&["--auth-timeout-ms", "400"]);
    server.register(&["alice", "bob"]).await;
    let send = Frame::new(
        Command::Send,
        3,
        &pb::SendRequest {
            text: "x".into(),
            ..Default::default()
        },
    );
    let errors = errors_for(&server.tcp, None, &send.to_bytes()).await;
    assert_eq!(errors, vec![(ErrorCode::NotAuthenticated, "log in first".to_string())]);
    // Ping and register are allowed before login; silence past the deadline is not.
    let mut idle = raw(&server.tcp).await;
    idle.send(Frame::new(Command::Ping, 5, &pb::Ping {})).await;
    assert_eq!(idle.next(T).await.unwrap().command(), Some(Command::Ping));
    let started = std::time::Instant::now();
    let errors = idle.errors_until_close(T).await;
    assert_eq!(errors[0].code(), ErrorCode::NotAuthenticated);
    assert!(errors[0].message.contains("deadline"));
    assert!(started.elapsed() < Duration::from_secs(5));
    // A second LOGIN on a logged-in connection is an error, not a new identity.
    let mut conn = raw(&server.tcp).await;
    conn.login("alice", DeviceKind::Web).await;
    let again = pb::LoginRequest {
        user: "bob".into(),
        password: PASSWORD.into(),
        device_kind: 1,
        ..Default::default()
    };
    conn.send(Frame::new(Command::Login, 2, &again)).await;
    let reply = conn.next(T).await.unwrap();
    assert_eq!(reply.decode::<pb::Error>().unwrap().code(), ErrorCode::AlreadyLoggedIn);
    still_serving(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_is_rate_limited_then_closed() {
    let server = Standalone::start(&["--frames-per-sec", "50", "--frame-burst", "100"]);
    server.register(&["alice", "bob"]).await;
    let mut conn = raw(&server.tcp).await;
    conn.login("alice", DeviceKind::Bot).await;
    let mut flood = BytesMut::new();
    for i in 0..2000 {
        Frame::new(Command::Ping, i, &pb::Ping {}).encode_into(&mut flood);
    }
    // The server may close before reading it all: a failed write is fine.
    let _ = conn.writer.write_raw(&flood).await;
    let errors = conn.errors_until_close(T).await;
    assert!(!errors.is_empty(), "the flood got RATE_LIMITED answers");
    assert!(errors.iter().all(|e| e.code() == ErrorCode::RateLimited));
    assert!(errors.iter().any(|e| e.retriable), "the first answers are retriable");
    assert!(
        errors.last().unwrap().message.contains("flooding"),
        "{:?}",
        errors.last()
    );
    still_serving(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_text_and_broken_binary_messages_are_closed() {
    use websocket::*;
    let server = Standalone::start(&[]);
    server.register(&["alice", "bob"]).await;
    // A binary message holding half a frame.
    let mut conn = raw(&server.ws).await;
    let ping = Frame::new(Command::Ping, 1, &pb::Ping {}).to_bytes();
    conn.writer.write_raw(&ping[..5]).await.unwrap();
    let errors = conn.errors_until_close(T).await;
    assert_eq!(errors[0].code(), ErrorCode::BadFrame);
    // A text message: not a FastIM frame, the connection is dropped.
    assert!(websocket_text_is_dropped(&server.ws).await);
    still_serving(&server).await;
}

/// The SDK has no way to send a text message; speak WebSocket directly.
mod websocket {
    pub async fn websocket_text_is_dropped(url: &str) -> bool {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = url.trim_start_matches("ws://").trim_end_matches('/');
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 1024];
        let n = stream.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 101"));
        // A masked text frame "hi".
        let mask = [1u8, 2, 3, 4];
        let mut frame = vec![0x81, 0x80 | 2];
        frame.extend_from_slice(&mask);
        frame.extend(b"hi".iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        stream.write_all(&frame).await.unwrap();
        // The server closes: read until EOF (or reset).
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_bounded_under_hostile_connections() {
    let server = Standalone::start(&["--max-frame-body", "65536", "--auth-timeout-ms", "3000"]);
    server.register(&["alice", "bob"]).await;
    still_serving(&server).await;
    let before = server.rss_kib();
    // 200 connections each announce a maximal frame and send most of it, then
    // stall; 200 more announce 4 GiB. Neither may make the server hold more than
    // one maximal frame per connection.
    let mut stalled = Vec::new();
    for _ in 0..200 {
        let mut conn = raw(&server.tcp).await;
        let mut bytes = header(PROTOCOL_VERSION, Command::Login as u8, 0, 65536);
        bytes.put_bytes(0, 60_000);
        conn.writer.write_raw(&bytes).await.unwrap();
        stalled.push(conn);
    }
    for _ in 0..200 {
        let errors = errors_for(&server.tcp, None, &header(PROTOCOL_VERSION, 2, 0, u32::MAX)).await;
        assert_eq!(errors[0].0, ErrorCode::BadFrame);
    }
    let during = server.rss_kib();
    // 200 x 64 KiB = 12.5 MiB of legitimately buffered partial frames, plus slack.
    assert!(
        during < before + 48 * 1024,
        "RSS grew from {before} KiB to {during} KiB"
    );
    // The login deadline clears the stalled ones.
    for conn in stalled.iter_mut() {
        let errors = conn.errors_until_close(T).await;
        assert_eq!(errors[0].code(), ErrorCode::NotAuthenticated);
    }
    still_serving(&server).await;
}
