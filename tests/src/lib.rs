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

pub mod cluster;
pub mod http;
pub mod kubeapi;
pub mod traffic;
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

/// A running `fastim` server process (`standalone`, `gateway` or `logic`) that
/// printed its ready line: `fastim <role> ready key=value ...`.
pub struct ServerProcess {
    child: Option<Child>,
    stdout: Option<BufReader<std::process::ChildStdout>>,
    command: String,
    args: Vec<String>,
    /// The `key=value` pairs of the ready line.
    pub ready: std::collections::BTreeMap<String, String>,
}

impl ServerProcess {
    /// Starts `fastim <command> <args>` and waits for its ready line.
    pub fn start(command: &str, args: Vec<String>) -> ServerProcess {
        let mut p = ServerProcess::start_unready(command, args);
        p.wait_ready();
        p
    }

    /// Starts `fastim <command> <args>` without waiting for readiness (servers with
    /// an HTTP port print `fastim <command> listening http=...` first).
    pub fn start_unready(command: &str, args: Vec<String>) -> ServerProcess {
        let mut p = ServerProcess {
            child: None,
            stdout: None,
            command: command.to_owned(),
            args,
            ready: Default::default(),
        };
        p.spawn();
        p
    }

    fn spawn(&mut self) {
        let mut child = Command::new(fastim_bin())
            .arg(&self.command)
            .args(&self.args)
            .env(
                "FASTIM_LOG",
                std::env::var("FASTIM_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start fastim {}: {e}", self.command));
        self.stdout = child.stdout.take().map(BufReader::new);
        self.child = Some(child);
        self.ready.clear();
        if self.command != "standalone" {
            self.read_line("listening");
        }
    }

    /// Reads the next stdout line, which must be `fastim <command> <what> k=v ...`.
    fn read_line(&mut self, what: &str) {
        let mut line = String::new();
        let stdout = self.stdout.as_mut().expect("stdout");
        stdout.read_line(&mut line).expect("read a line of the server's stdout");
        let prefix = format!("fastim {} {what} ", self.command);
        let values = line
            .trim()
            .strip_prefix(&prefix)
            .unwrap_or_else(|| panic!("expected {prefix:?}..., got {line:?}"));
        self.ready.extend(
            values
                .split(' ')
                .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned()))),
        );
    }

    /// Waits for the ready line.
    pub fn wait_ready(&mut self) {
        self.read_line("ready");
    }

    /// A value of the ready line.
    pub fn get(&self, key: &str) -> String {
        self.ready
            .get(key)
            .cloned()
            .unwrap_or_else(|| panic!("no {key} in the ready line {:?}", self.ready))
    }

    /// Sends a signal (`STOP`, `CONT`, `TERM`, ...).
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status();
    }

    /// A value from the process's Prometheus `/metrics` (its `http` address).
    pub fn metric(&self, name: &str) -> Option<i64> {
        let (_, body) = http::get(&self.get("http"), "/metrics")?;
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).expect("server running")
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again with the same arguments, and waits until it is ready.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
        self.wait_ready();
    }

    /// Sets the value of a flag for the next (re)start.
    pub fn set_arg(&mut self, flag: &str, value: &str) {
        match self.args.iter().position(|a| a == flag) {
            Some(i) => self.args[i + 1] = value.to_owned(),
            None => self.args.extend([flag.to_owned(), value.to_owned()]),
        }
    }

    /// Sends SIGTERM and waits; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let child = self.child.as_mut()?;
        let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        let status = child.wait().ok()?;
        self.child = None;
        status.code()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Resident memory in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Registers users with raw REGISTER frames on `server`.
pub async fn register_users(server: &str, users: &[&str]) {
    for user in users {
        let (mut r, mut w) = fastim_client::connection::connect(server, 1 << 20)
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

/// Flags that make password hashing cheap: tests register many users.
pub const CHEAP_HASHING: [&str; 4] = ["--argon2-memory-kib", "64", "--argon2-iterations", "1"];

/// A running `fastim standalone` with its own temporary data directory.
pub struct Standalone {
    process: ServerProcess,
    _data: tempfile::TempDir,
    /// TCP address (host:port).
    pub tcp: String,
    /// WebSocket URL.
    pub ws: String,
}

impl Standalone {
    /// Starts a server with cheap password hashing and any extra flags, on free ports.
    pub fn start(extra: &[&str]) -> Standalone {
        let data = tempfile::tempdir().expect("temp dir");
        let mut args: Vec<String> = vec!["--data-dir".into(), data.path().display().to_string()];
        args.extend(["--tcp", "127.0.0.1:0", "--ws", "127.0.0.1:0"].map(String::from));
        args.extend(CHEAP_HASHING.map(String::from));
        args.extend(extra.iter().map(|s| s.to_string()));
        let process = ServerProcess::start("standalone", args);
        let (tcp, ws) = (process.get("tcp"), process.get("ws"));
        Standalone {
            process,
            _data: data,
            tcp,
            ws,
        }
    }

    /// Process id of the server.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// `kill -9` the server.
    pub fn kill9(&mut self) {
        self.process.kill9();
    }

    /// Starts the server again on the same data directory and the same ports.
    pub fn restart(&mut self) {
        let ws = self.ws.trim_start_matches("ws://").trim_end_matches('/').to_owned();
        self.process.set_arg("--tcp", &self.tcp.clone());
        self.process.set_arg("--ws", &ws);
        self.process.restart();
    }

    /// Sends SIGTERM and waits for a clean exit; returns the exit status code.
    pub fn terminate(&mut self) -> Option<i32> {
        self.process.terminate()
    }

    /// Resident memory of the server in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.process.rss_kib()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// Registers users (raw REGISTER frames).
    pub async fn register(&self, users: &[&str]) {
        register_users(&self.tcp, users).await;
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
