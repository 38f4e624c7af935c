//! Reconcile scenarios against kube's mocked API service: every request the
//! reconciler makes is asserted (method, path, body), and answered, the Events it
//! publishes included.

use std::sync::Arc;
use std::time::Duration;

use fastim_operator::IMCluster;
use fastim_operator::controller::{Context, DEGRADED_RETRY, RESYNC, error_policy, reconcile};
use fastim_operator::metrics::Metrics;
use fastim_operator::probe::Probe;
use http::{Request, Response};
use kube::Client;
use kube::client::Body;
use kube::runtime::controller::Action;
use serde_json::{Value, json};

mod common;
use common::{Expect, Handle, patch, serve};

fn cluster(spec_extra: Value, status: Option<Value>) -> IMCluster {
    let mut spec = json!({
        "image": "fastim:0.1.0",
        "etcd": { "endpoints": ["http://etcd:2379"] },
        "redis": { "urls": ["redis://redis:6379/"] },
        "database": { "urlSecret": { "name": "fastim-db", "key": "url" } },
    });
    for (k, v) in spec_extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    let mut object = json!({
        "apiVersion": "fastim.io/v1alpha1", "kind": "IMCluster",
        "metadata": { "name": "chat", "namespace": "im", "uid": "u-1", "generation": 3 },
        "spec": spec,
    });
    if let Some(status) = status {
        object["status"] = status;
    }
    serde_json::from_value(object).unwrap()
}

fn context() -> (Arc<Context>, Handle) {
    context_with_down(&[])
}

/// A context whose reachability probe finds `down` (host:port) not answering.
fn context_with_down(down: &'static [&'static str]) -> (Arc<Context>, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let metrics = Arc::new(Metrics::default());
    let probe: Probe = Arc::new(move |addr: String| {
        Box::pin(async move {
            if down.contains(&addr.as_str()) {
                Err("connection refused".to_string())
            } else {
                Ok(())
            }
        })
    });
    let context = Context::new(Client::new(service, "im"), Some("op-0".into()), metrics).with_probe(probe);
    (Arc::new(context), handle)
}

/// An Event published about the cluster (events.k8s.io/v1).
fn event() -> Expect {
    Expect {
        method: "POST",
        path: "/apis/events.k8s.io/v1/namespaces/im/events".into(),
        status: 201,
        reply: None,
    }
}

/// Asserts an Event body: type, reason, and that it regards the IMCluster.
fn assert_event(body: &Value, type_: &str, reason: &str) {
    assert_eq!(body["type"], type_, "{body}");
    assert_eq!(body["reason"], reason, "{body}");
    assert_eq!(body["regarding"]["kind"], "IMCluster");
    assert_eq!(body["regarding"]["name"], "chat");
    assert_eq!(body["reportingController"], "fastim-operator");
    assert_eq!(body["reportingInstance"], "op-0");
}

fn secret() -> Expect {
    // data.url: postgres://fastim@db:5432/fastim
    secret_with_url("cG9zdGdyZXM6Ly9mYXN0aW1AZGI6NTQzMi9mYXN0aW0=")
}

/// The database Secret, its `url` given base64-encoded.
fn secret_with_url(url: &str) -> Expect {
    Expect {
        method: "GET",
        path: "/api/v1/namespaces/im/secrets/fastim-db".into(),
        status: 200,
        reply: Some(
            json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "fastim-db" },
                            "data": { "url": url } }),
        ),
    }
}

fn deployment(name: &str, ready: i32) -> Expect {
    // The API answers an apply with the object, status included.
    let reply = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": { "name": name, "namespace": "im" },
        "spec": { "replicas": 2, "selector": {}, "template": {} },
        "status": { "readyReplicas": ready },
    });
    Expect {
        method: "PATCH",
        path: format!("/apis/apps/v1/namespaces/im/deployments/{name}"),
        status: 200,
        reply: Some(reply),
    }
}

/// The status patch; the API answers with the whole object.
fn status_patch() -> Expect {
    let object = serde_json::to_value(cluster(json!({}), None)).unwrap();
    Expect {
        method: "PATCH",
        path: "/apis/fastim.io/v1alpha1/namespaces/im/imclusters/chat/status".into(),
        status: 200,
        reply: Some(object),
    }
}

/// The list of owned objects of one kind, to prune what is no longer wanted.
fn owned_list(path: &str, items: Vec<Value>) -> Expect {
    Expect {
        method: "GET",
        path: path.into(),
        status: 200,
        reply: Some(json!({ "apiVersion": "v1", "kind": "List", "metadata": {}, "items": items })),
    }
}

const PDBS: &str = "/apis/policy/v1/namespaces/im/poddisruptionbudgets";
const HPAS: &str = "/apis/autoscaling/v2/namespaces/im/horizontalpodautoscalers";

fn full_pass(ready: i32) -> Vec<Expect> {
    vec![
        secret(),
        patch("/api/v1/namespaces/im/serviceaccounts/chat-fastim"),
        patch("/api/v1/namespaces/im/configmaps/chat-config"),
        deployment("chat-logic", ready),
        deployment("chat-idgen", ready),
        deployment("chat-gateway", ready),
        patch("/api/v1/namespaces/im/services/chat-gateway"),
        patch("/api/v1/namespaces/im/services/chat-internal"),
        owned_list(PDBS, vec![]),
        owned_list(HPAS, vec![]),
        status_patch(),
    ]
}

/// Body index of the status patch in [`full_pass`].
const STATUS: usize = 10;

fn condition<'a>(status: &'a Value, kind: &str) -> &'a Value {
    status["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == kind)
        .unwrap()
}

/// A first pass over the default cluster with everything ready (Events Created and
/// Ready); the request bodies.
async fn created_and_ready() -> Vec<Value> {
    let (ctx, handle) = context();
    let mut expected = full_pass(2);
    expected.extend([event(), event()]);
    let server = serve(handle, expected);
    reconcile(Arc::new(cluster(json!({}), None)), ctx).await.unwrap();
    server.finish().await
}

#[tokio::test]
async fn first_creation_applies_everything_and_reports_progress() {
    let (ctx, handle) = context();
    let mut expected = full_pass(0);
    expected.push(event());
    let server = serve(handle, expected);
    let action = reconcile(Arc::new(cluster(json!({}), None)), ctx.clone())
        .await
        .unwrap();
    assert_eq!(action, Action::requeue(RESYNC));
    let bodies = server.finish().await;
    assert_event(&bodies[STATUS + 1], "Normal", "Created");
    assert!(ctx.metrics.render(&[]).contains("fastim_operator_reconciles_total 1\n"));
    // The applied objects are exactly the desired ones, with kind and owner.
    assert_eq!(bodies[1]["kind"], "ServiceAccount");
    assert_eq!(bodies[3]["metadata"]["ownerReferences"][0]["kind"], "IMCluster");
    assert_eq!(
        bodies[5]["spec"]["template"]["spec"]["containers"][0]["args"][0],
        "gateway"
    );
    let status = &bodies[STATUS];
    assert_eq!(status["kind"], "IMCluster");
    assert_eq!(condition(status, "Ready")["status"], "False");
    assert_eq!(condition(status, "Progressing")["status"], "True");
    assert_eq!(condition(status, "Degraded")["status"], "False");
    assert_eq!(status["status"]["observedGeneration"], 3);
    assert_eq!(status["status"]["endpoint"], "chat-gateway.im.svc:7000");
    assert_eq!(
        status["status"]["gateway"]["selector"],
        "app.kubernetes.io/component=gateway,app.kubernetes.io/instance=chat,app.kubernetes.io/name=fastim"
    );
}

#[tokio::test]
async fn a_second_pass_changes_nothing_and_keeps_transition_times() {
    // First pass with everything ready: created, and Ready flips to True.
    let first = created_and_ready().await;
    let status = first[STATUS]["status"].clone();
    assert_eq!(condition(&first[STATUS], "Ready")["status"], "True");
    assert_event(&first[STATUS + 1], "Normal", "Created");
    assert_event(&first[STATUS + 2], "Normal", "Ready");
    assert!(
        first[STATUS + 2]["note"].as_str().unwrap().contains("gateway 2/2"),
        "{}",
        first[STATUS + 2]
    );
    // Second pass on the object carrying that status: the same requests, the same
    // applied objects, lastTransitionTime unchanged, and no Event.
    let (ctx, handle) = context();
    let server = serve(handle, full_pass(2));
    reconcile(Arc::new(cluster(json!({}), Some(status))), ctx)
        .await
        .unwrap();
    let second = server.finish().await;
    assert_eq!(first[..STATUS], second[..STATUS], "idempotent apply bodies");
    for kind in ["Ready", "Progressing", "Degraded"] {
        assert_eq!(
            condition(&first[STATUS], kind)["lastTransitionTime"],
            condition(&second[STATUS], kind)["lastTransitionTime"]
        );
    }
}

#[tokio::test]
async fn a_spec_change_rolls_the_pods_and_adds_autoscaling() {
    // The cluster as it was: reconciled and ready at generation 2.
    let before = created_and_ready().await;
    let mut status = before[STATUS]["status"].clone();
    status["observedGeneration"] = json!(2);
    // Generation 3 changes the configuration and adds autoscaling.
    let (ctx, handle) = context();
    let mut expected = full_pass(2);
    expected.insert(8, patch(&format!("{HPAS}/chat-gateway")));
    expected.push(event());
    let server = serve(handle, expected);
    let spec = json!({
        "config": { "FASTIM_HEARTBEAT_MS": "15000" },
        "gateway": { "autoscaling": { "minReplicas": 2, "maxReplicas": 8, "targetConnectionsPerPod": 5000 } },
    });
    reconcile(Arc::new(cluster(spec, Some(status))), ctx).await.unwrap();
    let bodies = server.finish().await;
    assert_eq!(bodies[2]["data"]["FASTIM_HEARTBEAT_MS"], "15000");
    // The new configuration hash rolls the pods.
    let hash = |b: &Value| b["spec"]["template"]["metadata"]["annotations"]["fastim.io/config-hash"].clone();
    assert_ne!(hash(&before[5]), hash(&bodies[5]));
    assert_eq!(bodies[8]["spec"]["scaleTargetRef"]["kind"], "IMCluster");
    assert_eq!(bodies[STATUS + 1]["status"]["observedGeneration"], 3);
    assert_event(&bodies[STATUS + 2], "Normal", "SpecChanged");
    assert!(bodies[STATUS + 2]["note"].as_str().unwrap().contains("generation 3"));
}

#[tokio::test]
async fn a_rotated_database_password_rolls_the_logic_pods_only() {
    let before = created_and_ready().await;
    let status = before[STATUS]["status"].clone();
    // Same spec and generation; the Secret now holds another password.
    let (ctx, handle) = context();
    let mut expected = full_pass(2);
    // data.url: postgres://fastim:new@db:5432/fastim
    expected[0] = secret_with_url("cG9zdGdyZXM6Ly9mYXN0aW06bmV3QGRiOjU0MzIvZmFzdGlt");
    let server = serve(handle, expected);
    reconcile(Arc::new(cluster(json!({}), Some(status))), ctx)
        .await
        .unwrap();
    let after = server.finish().await;
    let hash = |b: &Value| b["spec"]["template"]["metadata"]["annotations"]["fastim.io/config-hash"].clone();
    assert_eq!(after[3]["metadata"]["name"], "chat-logic");
    assert_ne!(
        hash(&before[3]),
        hash(&after[3]),
        "logic reads the database URL: rolled"
    );
    assert_eq!(hash(&before[4]), hash(&after[4]), "idgen does not: left alone");
    assert_eq!(hash(&before[5]), hash(&after[5]), "the gateway does not: left alone");
    assert_eq!(before[2], after[2], "the ConfigMap never holds the Secret");
}

#[tokio::test]
async fn switching_autoscaling_off_deletes_the_autoscaler() {
    // The API holds an HPA and a budget of this cluster, another cluster's HPA, and
    // an HPA that merely carries our labels; the spec wants none of them.
    let owner = |uid: &str| json!([{ "apiVersion": "fastim.io/v1alpha1", "kind": "IMCluster", "name": "chat", "uid": uid, "controller": true }]);
    let object = |kind: &str, name: &str, owners: Value| {
        let api_version = if kind == "PodDisruptionBudget" {
            "policy/v1"
        } else {
            "autoscaling/v2"
        };
        json!({ "apiVersion": api_version, "kind": kind, "metadata": { "name": name, "namespace": "im", "ownerReferences": owners } })
    };
    let (ctx, handle) = context();
    let mut expected = full_pass(2);
    expected[8] = owned_list(PDBS, vec![object("PodDisruptionBudget", "chat-gateway", owner("u-1"))]);
    expected[9] = owned_list(
        HPAS,
        vec![
            object("HorizontalPodAutoscaler", "chat-gateway", owner("u-1")),
            object("HorizontalPodAutoscaler", "chat-old", owner("u-0")),
            object("HorizontalPodAutoscaler", "chat-manual", json!([])),
        ],
    );
    let deleted = |path: String| Expect {
        method: "DELETE",
        path,
        status: 200,
        reply: Some(json!({ "kind": "Status", "apiVersion": "v1", "status": "Success" })),
    };
    expected.insert(9, deleted(format!("{PDBS}/chat-gateway")));
    expected.insert(11, deleted(format!("{HPAS}/chat-gateway")));
    expected.extend([event(), event()]);
    let server = serve(handle, expected);
    reconcile(Arc::new(cluster(json!({}), None)), ctx).await.unwrap();
    let bodies = server.finish().await;
    assert_eq!(condition(&bodies[STATUS + 2], "Ready")["status"], "True");
}

#[tokio::test]
async fn a_missing_secret_is_reported_as_degraded_and_retried() {
    let (ctx, handle) = context();
    let not_found = json!({ "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
                            "message": "secrets \"fastim-db\" not found" });
    let server = serve(
        handle,
        vec![
            Expect {
                status: 404,
                reply: Some(not_found),
                ..secret()
            },
            status_patch(),
            event(),
        ],
    );
    let action = reconcile(Arc::new(cluster(json!({}), None)), ctx).await.unwrap();
    assert_eq!(action, Action::requeue(DEGRADED_RETRY));
    let bodies = server.finish().await;
    assert_event(&bodies[2], "Warning", "MissingSecret");
    assert!(bodies[2]["note"].as_str().unwrap().contains("fastim-db"));
    let degraded = condition(&bodies[1], "Degraded");
    assert_eq!(
        (degraded["status"].as_str(), degraded["reason"].as_str()),
        (Some("True"), Some("MissingSecret"))
    );
    assert!(degraded["message"].as_str().unwrap().contains("fastim-db"));
    assert_eq!(condition(&bodies[1], "Ready")["status"], "False");
}

#[tokio::test]
async fn an_unreachable_database_is_degraded_but_everything_is_applied() {
    let (ctx, handle) = context_with_down(&["db.im.svc:5432", "db:5432"]);
    let mut expected = full_pass(2);
    expected.extend([event(), event()]);
    let server = serve(handle, expected);
    let action = reconcile(Arc::new(cluster(json!({}), None)), ctx).await.unwrap();
    assert_eq!(action, Action::requeue(DEGRADED_RETRY), "checked again soon");
    let bodies = server.finish().await;
    let degraded = condition(&bodies[STATUS], "Degraded");
    assert_eq!(
        (degraded["status"].as_str(), degraded["reason"].as_str()),
        (Some("True"), Some("DatabaseUnreachable"))
    );
    assert_eq!(
        degraded["message"],
        "the database does not answer at any address (db:5432: connection refused)"
    );
    assert_eq!(condition(&bodies[STATUS], "Ready")["status"], "False");
    assert_event(&bodies[STATUS + 1], "Normal", "Created");
    assert_event(&bodies[STATUS + 2], "Warning", "DatabaseUnreachable");
    // Once it answers, the next pass recovers: Degraded flips back, with an Event.
    let previous = bodies[STATUS]["status"].clone();
    let (ctx, handle) = context();
    let mut expected = full_pass(2);
    expected.extend([event(), event()]);
    let server = serve(handle, expected);
    let action = reconcile(Arc::new(cluster(json!({}), Some(previous))), ctx)
        .await
        .unwrap();
    assert_eq!(action, Action::requeue(RESYNC));
    let bodies = server.finish().await;
    assert_eq!(condition(&bodies[STATUS], "Degraded")["status"], "False");
    assert_event(&bodies[STATUS + 1], "Normal", "Recovered");
    assert_event(&bodies[STATUS + 2], "Normal", "Ready");
}

#[tokio::test]
async fn an_api_error_goes_to_the_error_policy() {
    let (ctx, handle) = context();
    let failure = json!({ "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "InternalError", "code": 500,
                          "message": "etcd leader changed" });
    let server = serve(
        handle,
        vec![
            secret(),
            Expect {
                status: 500,
                reply: Some(failure),
                ..patch("/api/v1/namespaces/im/serviceaccounts/chat-fastim")
            },
            event(),
        ],
    );
    let object = Arc::new(cluster(json!({}), None));
    let error = reconcile(object.clone(), ctx.clone()).await.unwrap_err();
    assert!(error.to_string().contains("etcd leader changed"), "{error}");
    // Retries back off exponentially: 5 s, 10 s, 20 s, ... up to 5 minutes.
    let delays: Vec<Action> = (0..9)
        .map(|_| error_policy(object.clone(), &error, ctx.clone()))
        .collect();
    let secs = |s: u64| Action::requeue(Duration::from_secs(s));
    assert_eq!(
        delays,
        [
            secs(5),
            secs(10),
            secs(20),
            secs(40),
            secs(80),
            secs(160),
            secs(300),
            secs(300),
            secs(300)
        ]
    );
    let bodies = server.finish().await;
    assert_event(&bodies[2], "Warning", "ReconcileFailed");
    assert!(bodies[2]["note"].as_str().unwrap().contains("etcd leader changed"));
    assert!(
        ctx.metrics
            .render(&[])
            .contains("fastim_operator_reconcile_errors_total 1\n")
    );
}
