//! `fastim operator run` as a process, against a stand-in Kubernetes API
//! (`fastim_tests::kubeapi`): configuration errors, waiting for the API, leader
//! election between two operators, reconciling an IMCluster (objects applied with
//! the operator's field manager, status, an Event), metrics, health and shutdown.

use std::time::Duration;

use fastim_tests::http;
use fastim_tests::kubeapi::{FakeApi, Seen};
use fastim_tests::*;
use serde_json::json;

fn operator(kubeconfig: &std::path::Path, identity: &str) -> ServerProcess {
    ServerProcess::start_unready(
        "operator",
        vec![
            "run".into(),
            "--http=127.0.0.1:0".into(),
            format!("--kubeconfig={}", kubeconfig.display()),
            format!("--identity={identity}"),
            "--lease-namespace=ops".into(),
        ],
    )
}

/// Polls `path` on the process's HTTP side until `check` accepts the answer.
fn wait_http(p: &ServerProcess, path: &str, what: &str, check: impl Fn(u16, &str) -> bool) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some((code, body)) = http::get(&p.get("http"), path)
            && check(code, &body)
        {
            return body;
        }
        assert!(std::time::Instant::now() < deadline, "{path}: never {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn leader(p: &ServerProcess) -> Option<i64> {
    p.metric("fastim_operator_leader")
}

#[test]
fn a_missing_kubeconfig_is_a_clear_error() {
    let out = std::process::Command::new(fastim_bin())
        .args([
            "operator",
            "run",
            "--http=127.0.0.1:0",
            "--kubeconfig=/nonexistent/kubeconfig",
        ])
        .env("FASTIM_LOG", "error")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.starts_with("error: --kubeconfig /nonexistent/kubeconfig: cannot read it"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_api_is_waited_for_not_ready_and_alive() {
    let dir = tempfile::tempdir().unwrap();
    let api = FakeApi::start().await;
    let kubeconfig = api.kubeconfig(dir.path());
    drop(api); // nothing listens there any more
    let mut op = tokio::task::spawn_blocking(move || {
        let op = operator(&kubeconfig, "op-a");
        wait_http(&op, "/readyz", "waiting for the API", |code, body| {
            code == 503 && body.contains("the Kubernetes API: ")
        });
        assert_eq!(http::get(&op.get("http"), "/healthz").map(|r| r.0), Some(200));
        assert_eq!(leader(&op), Some(0));
        op
    })
    .await
    .unwrap();
    assert_eq!(op.terminate(), Some(0), "SIGTERM while waiting stops cleanly");
}

/// Two IMClusters and their database Secret. The etcd and Redis of `chat` point at
/// the fake API's own port, which accepts connections, so the operator's reachability
/// probe (a TCP connect) finds them up; `broken`'s etcd is a closed port. (The Secret
/// carries no URL, so the database is not probed.)
fn seed(api: &FakeApi) {
    let reachable = api.addr.to_string();
    for (name, uid, etcd) in [("chat", "u-1", reachable.as_str()), ("broken", "u-2", "127.0.0.1:1")] {
        api.insert(
            "imclusters",
            json!({
                "apiVersion": "fastim.io/v1alpha1", "kind": "IMCluster",
                "metadata": { "name": name, "namespace": "im", "uid": uid, "generation": 1 },
                "spec": {
                    "image": "fastim:test",
                    "etcd": { "endpoints": [format!("http://{etcd}")] },
                    "redis": { "urls": [format!("redis://{reachable}/")] },
                    "database": { "urlSecret": { "name": "fastim-db", "key": "url" } },
                },
            }),
        );
    }
    api.insert(
        "secrets",
        json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "fastim-db", "namespace": "im" } }),
    );
}

fn applied(s: &Seen, path: &str) -> bool {
    s.method == "PATCH" && s.path == path && s.query.contains("fieldManager=fastim-operator")
}

#[tokio::test(flavor = "multi_thread")]
async fn one_of_two_operators_leads_reconciles_and_hands_over_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let api = FakeApi::start().await;
    seed(&api);
    let kubeconfig = api.kubeconfig(dir.path());

    let config = kubeconfig.clone();
    let first = tokio::task::spawn_blocking(move || {
        let op = operator(&config, "op-a");
        wait_http(&op, "/metrics", "leading", |_, body| {
            body.lines().any(|l| l == "fastim_operator_leader 1")
        });
        op
    })
    .await
    .unwrap();

    // The Lease names the leader; the cluster is reconciled.
    let lease = api.get("leases", "ops", "fastim-operator").expect("the Lease exists");
    assert_eq!(lease["spec"]["holderIdentity"], "op-a");
    for path in [
        "/api/v1/namespaces/im/configmaps/chat-config",
        "/apis/apps/v1/namespaces/im/deployments/chat-logic",
        "/apis/apps/v1/namespaces/im/deployments/chat-idgen",
        "/apis/apps/v1/namespaces/im/deployments/chat-gateway",
        "/api/v1/namespaces/im/services/chat-gateway",
    ] {
        api.wait_for(path, Duration::from_secs(30), |s| applied(s, path)).await;
    }
    let status_path = "/apis/fastim.io/v1alpha1/namespaces/im/imclusters/chat/status";
    api.wait_for("status patch", Duration::from_secs(30), |s| applied(s, status_path))
        .await;
    let event = api
        .wait_for("Created event", Duration::from_secs(30), |s| {
            s.method == "POST"
                && s.path == "/apis/events.k8s.io/v1/namespaces/im/events"
                && s.body["regarding"]["name"] == "chat"
        })
        .await;
    assert_eq!(event.body["reason"], "Created");
    assert_eq!(event.body["reportingInstance"], "op-a");
    // The cluster whose etcd does not answer is applied too, but Degraded, with an Event.
    let warning = api
        .wait_for("EtcdUnreachable event", Duration::from_secs(30), |s| {
            s.method == "POST" && s.body["regarding"]["name"] == "broken" && s.body["type"] == "Warning"
        })
        .await;
    assert_eq!(warning.body["reason"], "EtcdUnreachable");
    assert!(
        warning.body["note"].as_str().unwrap().contains("127.0.0.1:1: "),
        "{}",
        warning.body
    );
    let broken = api.get("imclusters", "im", "broken").unwrap();
    let degraded = broken["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Degraded")
        .unwrap()
        .clone();
    assert_eq!(degraded["status"], "True");
    assert!(
        api.get("deployments", "im", "broken-gateway").is_some(),
        "applied all the same"
    );
    let cluster = api.get("imclusters", "im", "chat").unwrap();
    assert_eq!(cluster["status"]["observedGeneration"], 1);
    assert_eq!(cluster["status"]["endpoint"], "chat-gateway.im.svc:7000");
    // The controller watches IMClusters and what they own, by label.
    api.wait_for("a Deployment watch", Duration::from_secs(30), |s| {
        s.path == "/apis/apps/v1/deployments"
            && s.query.contains("watch=true")
            && s.query
                .contains("labelSelector=app.kubernetes.io%2Fmanaged-by%3Dfastim-operator")
    })
    .await;

    // A second operator stands by: ready, not leading, and it does not act.
    let config = kubeconfig.clone();
    let (first, second) = tokio::task::spawn_blocking(move || {
        let second = operator(&config, "op-b");
        wait_http(&second, "/readyz", "ready", |code, _| code == 200);
        std::thread::sleep(Duration::from_secs(3)); // more than one retry period
        assert_eq!(leader(&second), Some(0));
        assert_eq!(leader(&first), Some(1));
        let text = http::get(&first.get("http"), "/metrics").unwrap().1;
        assert!(
            text.contains("fastim_operator_clusters{state=\"Progressing\"} 2"),
            "{text}"
        );
        assert!(first.metric("fastim_operator_reconciles_total").unwrap() >= 1);
        (first, second)
    })
    .await
    .unwrap();
    let lease = api.get("leases", "ops", "fastim-operator").unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "op-a");

    // The leader stops: it releases the Lease, and the standby takes over.
    let mut first = first;
    assert_eq!(first.terminate(), Some(0));
    let lease = api.get("leases", "ops", "fastim-operator").unwrap();
    assert!(
        lease["spec"]["holderIdentity"].is_null() || lease["spec"]["holderIdentity"] == "op-b",
        "released: {lease}"
    );
    let second = tokio::task::spawn_blocking(move || {
        wait_http(&second, "/metrics", "leading", |_, body| {
            body.lines().any(|l| l == "fastim_operator_leader 1")
        });
        // The new leader reconciles the cluster too.
        wait_http(&second, "/metrics", "reconciling", |_, body| {
            !body.lines().any(|l| l == "fastim_operator_reconciles_total 0")
        });
        second
    })
    .await
    .unwrap();
    let lease = api.get("leases", "ops", "fastim-operator").unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "op-b");
    assert_eq!(lease["spec"]["leaseTransitions"], 1);
    let mut second = second;
    assert_eq!(second.terminate(), Some(0));
}
