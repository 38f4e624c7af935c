//! Reconcile scenarios against kube's mocked API service: every request the
//! reconciler makes is asserted (method, path, body), and answered.

use std::sync::Arc;
use std::time::Duration;

use fastim_operator::IMCluster;
use fastim_operator::controller::{Context, DEGRADED_RETRY, RESYNC, error_policy, reconcile};
use http::{Request, Response};
use kube::Client;
use kube::client::Body;
use kube::runtime::controller::Action;
use serde_json::{Value, json};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

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

/// One expected request: method, path, and the answer (`None`: echo the body back).
struct Expect {
    method: &'static str,
    path: String,
    status: u16,
    reply: Option<Value>,
}

fn patch(path: &str) -> Expect {
    Expect {
        method: "PATCH",
        path: path.into(),
        status: 200,
        reply: None,
    }
}

/// Serves `expected` in order; returns the request bodies.
fn serve(mut handle: Handle, expected: Vec<Expect>) -> tokio::task::JoinHandle<Vec<Value>> {
    tokio::spawn(async move {
        let mut bodies = Vec::new();
        for e in expected {
            let (request, send) = handle.next_request().await.expect("the reconciler made this request");
            assert_eq!(request.method().as_str(), e.method, "{}", request.uri());
            assert_eq!(request.uri().path(), e.path);
            if e.method == "PATCH" {
                let query = request.uri().query().unwrap_or_default();
                assert!(
                    query.contains("fieldManager=fastim-operator") && query.contains("force=true"),
                    "{query}"
                );
            }
            let bytes = request.into_body().collect_bytes().await.unwrap();
            let body: Value = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).unwrap()
            };
            let reply = e.reply.unwrap_or_else(|| body.clone());
            bodies.push(body);
            let response = Response::builder()
                .status(e.status)
                .body(Body::from(serde_json::to_vec(&reply).unwrap()));
            send.send_response(response.unwrap());
        }
        bodies
    })
}

fn context() -> (Arc<Context>, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (
        Arc::new(Context {
            client: Client::new(service, "im"),
        }),
        handle,
    )
}

fn secret() -> Expect {
    Expect {
        method: "GET",
        path: "/api/v1/namespaces/im/secrets/fastim-db".into(),
        status: 200,
        reply: Some(json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "fastim-db" } })),
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

fn full_pass(ready: i32) -> Vec<Expect> {
    vec![
        secret(),
        patch("/api/v1/namespaces/im/serviceaccounts/chat-fastim"),
        patch("/api/v1/namespaces/im/configmaps/chat-config"),
        deployment("chat-logic", ready),
        deployment("chat-idgen", ready),
        deployment("chat-gateway", ready),
        patch("/api/v1/namespaces/im/services/chat-gateway"),
        status_patch(),
    ]
}

fn condition<'a>(status: &'a Value, kind: &str) -> &'a Value {
    status["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == kind)
        .unwrap()
}

#[tokio::test]
async fn first_creation_applies_everything_and_reports_progress() {
    let (ctx, handle) = context();
    let server = serve(handle, full_pass(0));
    let action = reconcile(Arc::new(cluster(json!({}), None)), ctx).await.unwrap();
    assert_eq!(action, Action::requeue(RESYNC));
    let bodies = server.await.unwrap();
    // The applied objects are exactly the desired ones, with kind and owner.
    assert_eq!(bodies[1]["kind"], "ServiceAccount");
    assert_eq!(bodies[3]["metadata"]["ownerReferences"][0]["kind"], "IMCluster");
    assert_eq!(
        bodies[5]["spec"]["template"]["spec"]["containers"][0]["args"][0],
        "gateway"
    );
    let status = &bodies[7];
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
    // First pass with everything ready: Ready flips to True.
    let (ctx, handle) = context();
    let server = serve(handle, full_pass(2));
    reconcile(Arc::new(cluster(json!({}), None)), ctx).await.unwrap();
    let first = server.await.unwrap();
    let status = first[7]["status"].clone();
    assert_eq!(condition(&first[7], "Ready")["status"], "True");
    // Second pass on the object carrying that status: the same requests, the same
    // applied objects, and lastTransitionTime unchanged.
    let (ctx, handle) = context();
    let server = serve(handle, full_pass(2));
    reconcile(Arc::new(cluster(json!({}), Some(status))), ctx)
        .await
        .unwrap();
    let second = server.await.unwrap();
    assert_eq!(first[..7], second[..7], "idempotent apply bodies");
    for kind in ["Ready", "Progressing", "Degraded"] {
        assert_eq!(
            condition(&first[7], kind)["lastTransitionTime"],
            condition(&second[7], kind)["lastTransitionTime"]
        );
    }
}

#[tokio::test]
async fn a_spec_change_rolls_the_pods_and_adds_autoscaling() {
    let (ctx, handle) = context();
    let mut expected = full_pass(2);
    let status = expected.pop().unwrap();
    expected.push(patch(
        "/apis/autoscaling/v2/namespaces/im/horizontalpodautoscalers/chat-gateway",
    ));
    expected.push(status);
    let server = serve(handle, expected);
    let spec = json!({
        "config": { "FASTIM_HEARTBEAT_MS": "15000" },
        "gateway": { "autoscaling": { "minReplicas": 2, "maxReplicas": 8, "targetConnectionsPerPod": 5000 } },
    });
    reconcile(Arc::new(cluster(spec, None)), ctx).await.unwrap();
    let bodies = server.await.unwrap();
    assert_eq!(bodies[2]["data"]["FASTIM_HEARTBEAT_MS"], "15000");
    let hash = bodies[5]["spec"]["template"]["metadata"]["annotations"]["fastim.io/config-hash"]
        .as_str()
        .unwrap()
        .to_owned();
    let (ctx, handle) = context();
    let server = serve(handle, full_pass(2));
    reconcile(Arc::new(cluster(json!({}), None)), ctx).await.unwrap();
    let before = server.await.unwrap();
    assert_ne!(
        before[5]["spec"]["template"]["metadata"]["annotations"]["fastim.io/config-hash"],
        hash.as_str()
    );
    assert_eq!(bodies[7]["spec"]["scaleTargetRef"]["kind"], "IMCluster");
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
        ],
    );
    let action = reconcile(Arc::new(cluster(json!({}), None)), ctx).await.unwrap();
    assert_eq!(action, Action::requeue(DEGRADED_RETRY));
    let bodies = server.await.unwrap();
    let degraded = condition(&bodies[1], "Degraded");
    assert_eq!(
        (degraded["status"].as_str(), degraded["reason"].as_str()),
        (Some("True"), Some("MissingSecret"))
    );
    assert!(degraded["message"].as_str().unwrap().contains("fastim-db"));
    assert_eq!(condition(&bodies[1], "Ready")["status"], "False");
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
        ],
    );
    let object = Arc::new(cluster(json!({}), None));
    let error = reconcile(object.clone(), ctx.clone()).await.unwrap_err();
    assert!(error.to_string().contains("etcd leader changed"), "{error}");
    assert_eq!(
        error_policy(object, &error, ctx),
        Action::requeue(Duration::from_secs(15))
    );
    server.await.unwrap();
}
