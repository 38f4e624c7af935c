//! The `fastim` command line, exercised as a user would: separate processes.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use fastim_tests::*;

fn fastim(args: &[&str], password: Option<&str>) -> Output {
    let mut cmd = Command::new(fastim_bin());
    cmd.args(args).env_remove("FASTIM_PASSWORD").env("FASTIM_LOG", "error");
    if let Some(p) = password {
        cmd.env("FASTIM_PASSWORD", p);
    }
    cmd.output().expect("run fastim")
}

fn ok(args: &[&str]) -> String {
    let out = fastim(args, Some(PASSWORD));
    assert!(
        out.status.success(),
        "fastim {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a command that must fail; returns its single stderr line.
fn fails(args: &[&str], password: Option<&str>) -> String {
    let out = fastim(args, password);
    assert!(!out.status.success(), "fastim {args:?} should fail");
    let stderr = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one clear line on stderr, got {stderr:?}");
    lines[0].to_owned()
}

#[test]
fn register_send_group_recv_and_errors() {
    let server = Standalone::start(&[]);
    let s = server.tcp.as_str();
    for user in ["alice", "bob", "carol", "mallory"] {
        assert!(ok(&["register", "--server", s, "--user", user]).contains(user));
    }
    // 1:1 and group sends exit 0 after the ack.
    assert!(ok(&["send", "--server", s, "--user", "alice", "--to", "bob", "hello bob"]).starts_with("sent d:"));
    let group = ok(&[
        "group",
        "create",
        "--server",
        s,
        "--user",
        "alice",
        "--name",
        "team",
        "--members",
        "bob,carol",
    ]);
    let group = group.trim();
    assert!(group.parse::<u64>().is_ok(), "group id on stdout: {group:?}");
    ok(&["send", "--server", s, "--user", "carol", "--group", group, "hi team"]);

    // recv over WebSocket syncs what bob missed, as JSON lines.
    let out = ok(&["recv", "--server", &server.ws, "--user", "bob", "--for", "2", "--json"]);
    let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2, "{out}");
    let direct = lines.iter().find(|m| m["text"] == "hello bob").expect("1:1 message");
    assert_eq!(
        (direct["from"].as_str(), direct["seq"].as_u64()),
        (Some("alice"), Some(1))
    );
    assert!(direct["conversation"].as_str().unwrap().starts_with("d:"));
    assert!(direct.get("group").is_none());
    let in_group = lines.iter().find(|m| m["text"] == "hi team").expect("group message");
    assert_eq!(in_group["group"].as_u64(), Some(group.parse().unwrap()));
    assert_eq!(in_group["from"], "carol");
    // The same device again: nothing new.
    assert_eq!(
        ok(&["recv", "--server", s, "--user", "bob", "--for", "1", "--json"]),
        ""
    );

    // Live messages while recv runs.
    let recv = Command::new(fastim_bin())
        .args([
            "recv",
            "--server",
            s,
            "--user",
            "carol",
            "--device-kind",
            "desktop",
            "--for",
            "4",
            "--json",
        ])
        .env("FASTIM_PASSWORD", PASSWORD)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    ok(&["send", "--server", s, "--user", "alice", "--group", group, "live one"]);
    let out = recv.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"live one\""));

    // Errors: one clear line, non-zero exit.
    let line = fails(
        &["send", "--server", s, "--user", "alice", "--to", "bob", "x"],
        Some("wrong-password"),
    );
    assert!(line.contains("wrong password"), "{line}");
    let line = fails(
        &["send", "--server", s, "--user", "nobody", "--to", "bob", "x"],
        Some(PASSWORD),
    );
    assert!(line.contains("unknown user"), "{line}");
    let line = fails(
        &["send", "--server", s, "--user", "alice", "--to", "nobody", "x"],
        Some(PASSWORD),
    );
    assert!(line.contains("not found"), "{line}");
    let line = fails(
        &["send", "--server", s, "--user", "mallory", "--group", group, "x"],
        Some(PASSWORD),
    );
    assert!(line.contains("not a member"), "{line}");
    let line = fails(
        &["send", "--server", "127.0.0.1:1", "--user", "alice", "--to", "bob", "x"],
        Some(PASSWORD),
    );
    assert!(line.contains("unreachable"), "{line}");
    let line = fails(&["register", "--server", s, "--user", "alice"], Some(PASSWORD));
    assert!(line.contains("already exists"), "{line}");
    let line = fails(&["send", "--server", s, "--user", "alice", "--to", "bob", "x"], None);
    assert!(line.contains("FASTIM_PASSWORD"), "{line}");
}

#[test]
fn interactive_chat() {
    let server = Standalone::start(&[]);
    let s = server.tcp.as_str();
    ok(&["register", "--server", s, "--user", "alice"]);
    ok(&["register", "--server", s, "--user", "bob"]);
    let mut chat = Command::new(fastim_bin())
        .args(["chat", "--server", s, "--user", "alice"])
        .env("FASTIM_PASSWORD", PASSWORD)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = chat.stdin.take().unwrap();
    writeln!(stdin, "hello before a target").unwrap();
    writeln!(stdin, "/to bob").unwrap();
    writeln!(stdin, "hi bob, from the terminal").unwrap();
    writeln!(stdin, "/history").unwrap();
    writeln!(stdin, "/quit").unwrap();
    let out = chat.wait_with_output().unwrap();
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{screen}");
    assert!(screen.contains("pick a chat first"), "{screen}");
    assert!(screen.contains("now chatting with bob"), "{screen}");
    assert!(screen.contains("alice: hi bob, from the terminal"), "{screen}");
    let got = ok(&["recv", "--server", s, "--user", "bob", "--for", "1", "--json"]);
    assert!(got.contains("hi bob, from the terminal"), "{got}");
}
