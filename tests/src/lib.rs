//! Test support for FastIM's end-to-end tests.
//!
//! [`Standalone`] runs the real `fastim standalone` binary on free loopback ports
//! with its own temporary data directory, and can `kill -9` and restart it on the
//! same directory. [`user`] and [`connect`] make SDK clients; [`raw`] opens a bare
//! frame connection for protocol tests.
//!
//! The binary is found next to the test executable (`target/<profile>/fastim`), or
//! at `$FASTIM_BIN`; build it first (`cargo build -p fastim`, which the test script does).

pub mod services;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fastim_client::connection::{FrameReader, FrameWriter};
use fastim_client::{Client, ClientConfig, Event, Message};
use fastim_proto::client::{self as pb, DeviceKind};
use fastim_proto::{Command as Cmd, Frame};
use tokio::sync::mpsc::UnboundedReceiver;

/// Password of every test user.
pub const PASSWORD: &str = "test-password";

/// The `fastim` binary under test.
pub fn fastim_bin() -> PathBuf {
    if let Ok(bin) = std::env::var("FASTIM_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/fastim
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("fastim"))
        .expect("target directory");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p fastim` first (or set FASTIM_BIN)",
        bin.display()
    );
    bin
}

/// A running `fastim standalone`.
pub struct Standalone {
    child: Option<Child>,
    data: tempfile::TempDir,
    args: Vec<String>,
    /// TCP address (host:port).
    pub tcp: String,
    /// WebSocket URL.
    pub ws: String,
}

impl Standalone {
    /// Starts a server with cheap password hashing (tests register many users) and
    /// any extra flags.
    pub fn start(extra: &[&str]) -> Standalone {
        let data = tempfile::tempdir().expect("temp dir");
        let mut args: Vec<String> = ["--argon2-memory-kib", "64", "--argon2-iterations", "1"]
            .map(String::from)
            .to_vec();
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut server = Standalone {
            child: None,
            data,
            args,
            tcp: String::new(),
            ws: String::new(),
        };
        server.spawn("127.0.0.1:0", "127.0.0.1:0");
        server
    }

    fn spawn(&mut self, tcp: &str, ws: &str) {
        let mut child = Command::new(fastim_bin())
            .arg("standalone")
            .arg("--data-dir")
            .arg(self.data.path())
            .args(["--tcp", tcp, "--ws", ws])
            .args(&self.args)
            .env(
                "FASTIM_LOG",
                std::env::var("FASTIM_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start fastim standalone");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the ready line");
        let ready = line
            .trim()
            .strip_prefix("fastim standalone ready ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        for part in ready.split(' ') {
            if let Some(v) = part.strip_prefix("tcp=") {
                self.tcp = v.to_owned();
            } else if let Some(v) = part.strip_prefix("ws=") {
                self.ws = v.to_owned();
            }
        }
        self.child = Some(child);
    }

    /// Process id of the server.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).expect("server running")
    }

    /// `kill -9` the server.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same data directory and the same ports.
    pub fn restart(&mut self) {
        self.kill9();
        let (tcp, ws) = (
            self.tcp.clone(),
            self.ws.trim_start_matches("ws://").trim_end_matches('/').to_owned(),
        );
        self.spawn(&tcp, &ws);
    }

    /// Sends SIGTERM and waits for a clean exit; returns the exit status code.
    pub fn terminate(&mut self) -> Option<i32> {
        let child = self.child.as_mut()?;
        let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        let status = child.wait().ok()?;
        self.child = None;
        status.code()
    }

    /// Resident memory of the server in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Registers users (raw REGISTER frames).
    pub async fn register(&self, users: &[&str]) {
        for user in users {
            let (mut r, mut w) = fastim_client::connection::connect(&self.tcp, 1 << 20)
                .await
                .expect("connect");
            let req = pb::RegisterRequest {
                user: user.to_string(),
                password: PASSWORD.into(),
            };
            w.write(&Frame::new(Cmd::Register, 1, &req)).await.expect("write");
            let frame = r.read().await.expect("read").expect("response");
            assert_eq!(
                frame.command(),
                Some(Cmd::Register),
                "register {user}: {:?}",
                frame.decode::<pb::Error>()
            );
        }
    }
}

impl Drop for Standalone {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A client config for a test user on `server`.
pub fn user(server: &str, name: &str, kind: DeviceKind) -> ClientConfig {
    let mut config = ClientConfig::new(server, name, PASSWORD);
    config.device_kind = kind;
    config.min_backoff = Duration::from_millis(50);
    config.max_backoff = Duration::from_millis(500);
    config
}

/// Connects an SDK client (mobile device).
pub async fn connect(server: &str, name: &str) -> (Client, UnboundedReceiver<Event>) {
    Client::connect(user(server, name, DeviceKind::Mobile))
        .await
        .unwrap_or_else(|e| panic!("connect {name}: {e}"))
}

/// Waits for `n` messages (ignoring other events), failing after `timeout`.
pub async fn messages(events: &mut UnboundedReceiver<Event>, n: usize, timeout: Duration) -> Vec<Message> {
    let mut out = Vec::with_capacity(n);
    let deadline = tokio::time::Instant::now() + timeout;
    while out.len() < n {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(Event::Message(m))) => out.push(m),
            Ok(Some(_)) => {}
            Ok(None) => panic!("event stream ended after {} of {n} messages", out.len()),
            Err(_) => panic!("timed out after {} of {n} messages: {:?}", out.len(), out.last()),
        }
    }
    out
}

/// Asserts that no message arrives within `wait`.
pub async fn no_more_messages(events: &mut UnboundedReceiver<Event>, wait: Duration) {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(Event::Message(m))) => panic!("unexpected message {m:?}"),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return,
        }
    }
}

/// A bare frame connection.
pub struct Raw {
    /// Reading half.
    pub reader: FrameReader,
    /// Writing half.
    pub writer: FrameWriter,
}

/// Opens a bare connection to `server`.
pub async fn raw(server: &str) -> Raw {
    let (reader, writer) = fastim_client::connection::connect(server, 1 << 20)
        .await
        .expect("connect");
    Raw { reader, writer }
}

impl Raw {
    /// Sends a frame.
    pub async fn send(&mut self, frame: Frame) {
        self.writer.write(&frame).await.expect("write frame");
    }

    /// The next frame, or `None` when the server closed (or reset) the connection.
    pub async fn next(&mut self, timeout: Duration) -> Option<Frame> {
        match tokio::time::timeout(timeout, self.reader.read()).await {
            Ok(Ok(frame)) => frame,
            Ok(Err(_)) => None,
            Err(_) => panic!("no frame and no close within {timeout:?}"),
        }
    }

    /// Reads until the server closes; returns the error frames seen on the way.
    pub async fn errors_until_close(&mut self, timeout: Duration) -> Vec<pb::Error> {
        let mut errors = Vec::new();
        while let Some(frame) = self.next(timeout).await {
            if frame.command() == Some(Cmd::Error) {
                errors.push(frame.decode().expect("error body"));
            }
        }
        errors
    }

    /// Logs in as `user` with a device kind; panics unless it succeeds.
    pub async fn login(&mut self, user: &str, kind: DeviceKind) -> pb::LoginResponse {
        let login = pb::LoginRequest {
            user: user.into(),
            password: PASSWORD.into(),
            device_kind: kind as i32,
            client_version: 1,
            ..Default::default()
        };
        self.send(Frame::new(Cmd::Login, 1, &login)).await;
        let frame = self.next(Duration::from_secs(10)).await.expect("login response");
        assert_eq!(
            frame.command(),
            Some(Cmd::Login),
            "login failed: {:?}",
            frame.decode::<pb::Error>()
        );
        frame.decode().expect("login body")
    }
}
