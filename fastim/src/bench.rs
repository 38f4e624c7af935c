//! `fastim bench`: load generators against a running server.
//!
//! - `bench chat`: pairs of users; each sender sends to its receiver with a window
//!   of messages in flight. Reports throughput, the latency of the durable ack, and
//!   the end-to-end latency from send to delivery at the receiver.
//! - `bench idle`: opens many authenticated connections that only heartbeat, and
//!   reads the server's resident memory from /proc before and after.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use fastim_client::connection::{FrameReader, FrameWriter};
use fastim_client::{Client, ClientConfig, Event, Target};
use fastim_proto::client::{self as pb, DeviceKind, ErrorCode};
use fastim_proto::{Command, Frame};
use hdrhistogram::Histogram;
use tokio::sync::{Mutex, Semaphore};

use crate::cli::{BenchChatArgs, BenchGroupArgs, BenchIdleArgs};

/// Registers a user with a raw REGISTER frame; an existing user is fine.
async fn ensure_user(server: &str, user: &str, password: &str) -> anyhow::Result<()> {
    let (mut reader, mut writer) = fastim_client::connection::connect(server, 1 << 20).await?;
    let request = pb::RegisterRequest {
        user: user.to_owned(),
        password: password.to_owned(),
    };
    writer.write(&Frame::new(Command::Register, 1, &request)).await?;
    let frame = reader
        .read()
        .await?
        .ok_or_else(|| anyhow!("server closed during REGISTER"))?;
    writer.close().await;
    if frame.command() == Some(Command::Error) {
        let e: pb::Error = frame.decode()?;
        if e.code() != ErrorCode::UserExists {
            return Err(anyhow!("register {user}: {}", e.message));
        }
    }
    Ok(())
}

async fn ensure_users(server: &str, users: &[String], password: &str, parallel: usize) -> anyhow::Result<()> {
    let gate = Arc::new(Semaphore::new(parallel));
    let mut tasks = Vec::new();
    for user in users {
        let (server, user, password, gate) = (server.to_owned(), user.clone(), password.to_owned(), gate.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire().await;
            ensure_user(&server, &user, &password).await
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// Counts the messages a benchmark client receives (up to `expect`, giving up after
/// `idle` without one) and records each one's latency from the send time in its text
/// (`bench <micros since start>`). Closes `client` at the end if given.
fn receive(
    mut events: tokio::sync::mpsc::UnboundedReceiver<Event>,
    expect: usize,
    start: Instant,
    delivered: Arc<Mutex<Histogram<u64>>>,
    idle: Duration,
    client: Option<Client>,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut got = 0;
        while got < expect {
            match tokio::time::timeout(idle, events.recv()).await {
                Ok(Some(Event::Message(m))) => {
                    got += 1;
                    if let Some(sent) = m.text.strip_prefix("bench ").and_then(|t| t.parse::<u64>().ok()) {
                        let now = start.elapsed().as_micros() as u64;
                        let _ = delivered.lock().await.record(now.saturating_sub(sent).max(1));
                    }
                }
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        if let Some(client) = client {
            client.close();
        }
        got
    })
}

fn print_histogram(name: &str, h: &Histogram<u64>) {
    println!(
        "{name}: p50 {:.2} ms, p99 {:.2} ms, p999 {:.2} ms, max {:.2} ms ({} samples)",
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.value_at_quantile(0.999) as f64 / 1000.0,
        h.max() as f64 / 1000.0,
        h.len()
    );
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

pub async fn chat(args: BenchChatArgs) -> anyhow::Result<i32> {
    // Senders connect to the first server, receivers to the last (two gateways of a
    // cluster: every message crosses from one to the other).
    let servers: Vec<String> = crate::config::list(&args.server);
    let (Some(send_to), Some(receive_from)) = (servers.first().cloned(), servers.last().cloned()) else {
        return Err(anyhow!("--server: no address"));
    };
    let run = std::process::id();
    let senders: Vec<String> = (0..args.pairs).map(|i| format!("bench-{run}-s{i}")).collect();
    let receivers: Vec<String> = (0..args.pairs).map(|i| format!("bench-{run}-r{i}")).collect();
    eprintln!("registering {} users ...", senders.len() * 2);
    let all: Vec<String> = senders.iter().chain(&receivers).cloned().collect();
    ensure_users(&send_to, &all, &args.password, 32).await?;
    eprintln!("connecting ...");
    let start = Instant::now();
    let mut receiver_tasks = Vec::new();
    let delivered = Arc::new(Mutex::new(new_histogram()));
    for r in &receivers {
        let config = ClientConfig::new(&receive_from, r, &args.password);
        let (client, events) = Client::connect(config).await?;
        receiver_tasks.push(receive(
            events,
            args.messages,
            start,
            delivered.clone(),
            Duration::from_secs(60),
            Some(client),
        ));
    }
    let mut clients = Vec::new();
    for s in &senders {
        let mut config = ClientConfig::new(&send_to, s, &args.password);
        config.receive = false;
        config.device_kind = DeviceKind::Bot;
        clients.push(Client::connect(config).await?.0);
    }
    eprintln!(
        "sending {} messages over {} pairs, window {} ...",
        args.pairs * args.messages,
        args.pairs,
        args.window
    );
    let acked = Arc::new(Mutex::new(new_histogram()));
    let began = Instant::now();
    let mut sender_tasks = Vec::new();
    for (client, receiver) in clients.into_iter().zip(receivers.iter().cloned()) {
        let (acked, messages, window) = (acked.clone(), args.messages, args.window.max(1));
        sender_tasks.push(tokio::spawn(async move {
            let gate = Arc::new(Semaphore::new(window));
            let mut inflight = Vec::new();
            for _ in 0..messages {
                let permit = gate.clone().acquire_owned().await.expect("semaphore open");
                let (client, receiver, acked) = (client.clone(), receiver.clone(), acked.clone());
                inflight.push(tokio::spawn(async move {
                    let t0 = Instant::now();
                    let text = format!("bench {}", start.elapsed().as_micros());
                    let result = client.send_text(Target::User(receiver), &text).await;
                    let _ = acked.lock().await.record(t0.elapsed().as_micros().max(1) as u64);
                    drop(permit);
                    result.is_ok()
                }));
            }
            let mut ok = 0;
            for t in inflight {
                ok += usize::from(t.await.unwrap_or(false));
            }
            client.close();
            ok
        }));
    }
    let mut sent_ok = 0;
    for t in sender_tasks {
        sent_ok += t.await?;
    }
    let send_secs = began.elapsed().as_secs_f64();
    let mut received = 0;
    for t in receiver_tasks {
        received += t.await?;
    }
    let total_secs = began.elapsed().as_secs_f64();
    println!(
        "pairs {}, messages acknowledged {sent_ok}, delivered {received}",
        args.pairs
    );
    println!(
        "durable send throughput: {:.0} msg/s ({sent_ok} in {send_secs:.2} s)",
        sent_ok as f64 / send_secs
    );
    println!(
        "delivery throughput: {:.0} msg/s ({received} in {total_secs:.2} s)",
        received as f64 / total_secs
    );
    print_histogram("ack latency (send -> durable ack)", &*acked.lock().await);
    print_histogram("delivery latency (send -> receiver)", &*delivered.lock().await);
    Ok(if sent_ok == received && sent_ok == args.pairs * args.messages {
        0
    } else {
        2
    })
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("no process {pid}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS in /proc/{pid}/status"))
}

async fn login_raw(
    server: &str,
    user: &str,
    password: &str,
    kind: DeviceKind,
) -> anyhow::Result<(FrameReader, FrameWriter)> {
    let (mut reader, mut writer) = fastim_client::connection::connect(server, 1 << 20).await?;
    let login = pb::LoginRequest {
        user: user.to_owned(),
        password: password.to_owned(),
        device_kind: kind as i32,
        client_version: 1,
        ..Default::default()
    };
    writer.write(&Frame::new(Command::Login, 1, &login)).await?;
    let frame = reader.read().await?.ok_or_else(|| anyhow!("closed during login"))?;
    if frame.command() != Some(Command::Login) {
        let e: pb::Error = frame.decode().unwrap_or_default();
        return Err(anyhow!("login {user}: {}", e.message));
    }
    Ok((reader, writer))
}

pub async fn idle(args: BenchIdleArgs) -> anyhow::Result<i32> {
    const KINDS: [DeviceKind; 4] = [
        DeviceKind::Mobile,
        DeviceKind::Desktop,
        DeviceKind::Web,
        DeviceKind::Bot,
    ];
    let users: Vec<String> = (0..args.connections.div_ceil(4)).map(|i| format!("idle-{i}")).collect();
    eprintln!("registering {} users ...", users.len());
    ensure_users(&args.server, &users, &args.password, 32).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = rss_kib(args.server_pid)?;
    eprintln!(
        "server RSS before: {before} KiB; opening {} connections ...",
        args.connections
    );
    let gate = Arc::new(Semaphore::new(args.parallel));
    let mut tasks = Vec::new();
    let started = Instant::now();
    for i in 0..args.connections {
        let (server, user, password, gate) = (
            args.server.clone(),
            users[i / 4].clone(),
            args.password.clone(),
            gate.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire().await;
            login_raw(&server, &user, &password, KINDS[i % 4]).await
        }));
    }
    let mut conns = Vec::with_capacity(args.connections);
    for (i, t) in tasks.into_iter().enumerate() {
        conns.push(t.await?.with_context(|| format!("connection {i}"))?);
        if (i + 1) % 2000 == 0 {
            eprintln!("  {} connected", i + 1);
        }
    }
    let connect_secs = started.elapsed().as_secs_f64();
    // Let allocations settle (login buffers freed), heartbeating meanwhile.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        for (_, w) in conns.iter_mut() {
            w.write(&Frame::new(Command::Ping, 0, &pb::Ping {})).await?;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(args.server_pid)?;
    let per_conn = (after.saturating_sub(before)) as f64 * 1024.0 / args.connections as f64;
    println!("connections: {} (logged in over {connect_secs:.1} s)", args.connections);
    println!("server RSS: {before} KiB before, {after} KiB after");
    println!(
        "memory per idle authenticated connection: {:.0} bytes ({:.2} KiB)",
        per_conn,
        per_conn / 1024.0
    );
    for (_, w) in conns.iter_mut() {
        w.close().await;
    }
    Ok(0)
}

pub async fn group(args: BenchGroupArgs) -> anyhow::Result<i32> {
    let servers: Vec<String> = crate::config::list(&args.server);
    if servers.is_empty() {
        return Err(anyhow!("--server: no address"));
    }
    let run = std::process::id();
    let names: Vec<String> = (0..args.members).map(|i| format!("g{run}-{i}")).collect();
    eprintln!("registering {} users ...", names.len());
    ensure_users(&servers[0], &names, &args.password, 32).await?;
    eprintln!("connecting {} members over {} gateways ...", names.len(), servers.len());
    let start = Instant::now();
    let delivered = Arc::new(Mutex::new(new_histogram()));
    let mut clients = Vec::new();
    let mut receivers = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let mut config = ClientConfig::new(&servers[i % servers.len()], name, &args.password);
        config.request_timeout = Duration::from_secs(30);
        let (client, events) = Client::connect(config).await?;
        receivers.push(receive(
            events,
            args.messages,
            start,
            delivered.clone(),
            Duration::from_secs(120),
            None,
        ));
        clients.push(client);
    }
    let group = clients[0].create_group("bench", &names[1..]).await?;
    eprintln!("sending {} messages to a group of {} ...", args.messages, names.len());
    let sender = clients[0].clone();
    let began = Instant::now();
    let gate = Arc::new(Semaphore::new(args.window.max(1)));
    let mut sends = Vec::new();
    for _ in 0..args.messages {
        let permit = gate.clone().acquire_owned().await?;
        let sender = sender.clone();
        sends.push(tokio::spawn(async move {
            let text = format!("bench {}", start.elapsed().as_micros());
            let ok = sender.send_text(Target::Group(group.id), &text).await.is_ok();
            drop(permit);
            ok
        }));
    }
    let mut acked = 0;
    for s in sends {
        acked += usize::from(s.await.unwrap_or(false));
    }
    let mut deliveries = 0;
    for r in receivers {
        deliveries += r.await?;
    }
    let secs = began.elapsed().as_secs_f64();
    for c in &clients {
        c.close();
    }
    println!(
        "group of {} members, {acked} messages acknowledged, {deliveries} deliveries",
        names.len()
    );
    println!(
        "fan-out: {:.0} deliveries/s ({deliveries} in {secs:.2} s)",
        deliveries as f64 / secs
    );
    print_histogram("delivery latency (send -> member)", &*delivered.lock().await);
    Ok(if deliveries == acked * names.len() { 0 } else { 2 })
}
