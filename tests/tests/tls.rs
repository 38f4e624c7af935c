//! TLS on the client listeners: frames inside TLS (`tls://`) and `wss://`, the CLI
//! and the SDK trusting a private CA, and what happens without TLS or without the CA.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use fastim_client::connection::{self, tls_config};
use fastim_client::{Client, ClientError, Target};
use fastim_proto::client::DeviceKind;
use fastim_tests::*;

fn fixture(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/tls")
        .join(name);
    path.display().to_string()
}

fn tls_server() -> Standalone {
    Standalone::start(&[
        "--tls-cert",
        &fixture("server.pem"),
        "--tls-key",
        &fixture("server.key"),
    ])
}

fn fastim(args: &[&str]) -> std::process::Output {
    Command::new(fastim_bin())
        .args(args)
        .env("FASTIM_PASSWORD", PASSWORD)
        .env("FASTIM_LOG", "error")
        .output()
        .expect("run fastim")
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_talk_over_tls_and_wss_with_a_private_ca() {
    let server = tls_server();
    assert!(server.ws.starts_with("wss://"), "{}", server.ws);
    let tls = format!("tls://{}", server.tcp);
    let ca = fixture("ca.pem");

    // The CLI: register and send through TLS, trusting the test CA.
    for user in ["alice", "bob"] {
        let out = fastim(&["register", "--server", &tls, "--tls-ca", &ca, "--user", user]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    // Bob listens on two devices: frames inside TLS, and WebSocket inside TLS.
    let settings = Some(tls_config(Some(ca.as_ref())).unwrap());
    let mut mobile = user(&tls, "bob", DeviceKind::Mobile);
    mobile.tls = settings.clone();
    let (_bob_mobile, mut mobile_events) = Client::connect(mobile).await.unwrap();
    let mut web = user(&server.ws, "bob", DeviceKind::Web);
    web.tls = settings.clone();
    let (_bob_web, mut web_events) = Client::connect(web).await.unwrap();

    let out = fastim(&[
        "send", "--server", &tls, "--tls-ca", &ca, "--user", "alice", "--to", "bob", "over tls",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut alice_config = user(&tls, "alice", DeviceKind::Desktop);
    alice_config.tls = settings;
    let (alice, _) = Client::connect(alice_config).await.unwrap();
    alice
        .send_text(Target::User("bob".into()), "from the sdk")
        .await
        .unwrap();

    for events in [&mut mobile_events, &mut web_events] {
        let got: Vec<String> = messages(events, 2, Duration::from_secs(10))
            .await
            .into_iter()
            .map(|m| m.text)
            .collect();
        assert_eq!(got, ["over tls", "from the sdk"]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn without_the_ca_or_without_tls_nothing_gets_through() {
    let server = tls_server();
    let tls = format!("tls://{}", server.tcp);
    // The system's roots do not know the test CA: the certificate is refused.
    let error = connection::connect(&tls, 1 << 20).await.err().expect("untrusted");
    assert!(matches!(error, ClientError::Unreachable(_)), "{error}");
    assert!(error.to_string().to_lowercase().contains("certificate"), "{error}");
    // Plain frames on the TLS port: the server never answers with a frame.
    let out = fastim(&["register", "--server", &server.tcp, "--user", "mallory"]);
    assert!(!out.status.success());
    // A CA file that is not there is a clear error.
    let out = fastim(&[
        "send",
        "--server",
        &tls,
        "--tls-ca",
        "/nonexistent/ca.pem",
        "--user",
        "a",
        "--to",
        "b",
        "x",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("error: --tls-ca /nonexistent/ca.pem: "), "{stderr}");
    // The server is unharmed.
    let ca = fixture("ca.pem");
    let out = fastim(&["register", "--server", &tls, "--tls-ca", &ca, "--user", "carol"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn bad_tls_settings_stop_the_server_with_a_clear_error() {
    let data = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec![
            "standalone",
            "--tcp",
            "127.0.0.1:0",
            "--ws",
            "127.0.0.1:0",
            "--data-dir",
        ];
        let dir = data.path().display().to_string();
        args.push(&dir);
        args.extend_from_slice(extra);
        let out = Command::new(fastim_bin())
            .args(&args)
            .env("FASTIM_LOG", "error")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{extra:?} accepted");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let (cert, key, ca) = (fixture("server.pem"), fixture("server.key"), fixture("ca.pem"));
    let missing = run(&["--tls-cert", "/nonexistent.pem", "--tls-key", &key]);
    assert!(
        missing.contains("/nonexistent.pem: cannot read a PEM certificate chain"),
        "{missing}"
    );
    let mismatched = run(&["--tls-cert", &ca, "--tls-key", &key]);
    assert!(
        mismatched.contains("the key does not fit the certificate"),
        "{mismatched}"
    );
    let no_cert_in_key = run(&["--tls-cert", &key, "--tls-key", &key]);
    assert!(no_cert_in_key.contains("no certificate in it"), "{no_cert_in_key}");
    let half = run(&["--tls-cert", &cert]);
    assert!(half.contains("--tls-key"), "{half}");
}
