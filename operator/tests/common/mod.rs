//! A mocked Kubernetes API for the operator's tests: answers the expected requests
//! in order, asserts each one, and fails the test on any request beyond them.
#![allow(dead_code)]

use http::{Request, Response};
use kube::client::Body;
use serde_json::Value;

pub type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// One expected request: method, path, and the answer (`None`: echo the body back).
pub struct Expect {
    pub method: &'static str,
    pub path: String,
    pub status: u16,
    pub reply: Option<Value>,
}

pub fn patch(path: &str) -> Expect {
    Expect {
        method: "PATCH",
        path: path.into(),
        status: 200,
        reply: None,
    }
}

/// The mocked API server of one scenario.
pub struct Server {
    task: tokio::task::JoinHandle<Vec<Value>>,
    done: tokio::sync::oneshot::Sender<()>,
}

impl Server {
    /// Call after the reconciler returned: the request bodies, in order. Fails the
    /// test if the reconciler made any request beyond the expected ones.
    pub async fn finish(self) -> Vec<Value> {
        let _ = self.done.send(());
        self.task.await.expect("every request was as expected")
    }
}

/// Serves `expected` in order, then refuses (and reports) anything more.
pub fn serve(mut handle: Handle, expected: Vec<Expect>) -> Server {
    let (done, mut finished) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let mut bodies = Vec::new();
        for e in expected {
            let next = tokio::select! {
                _ = &mut finished => panic!("the reconciler returned without {} {}", e.method, e.path),
                next = handle.next_request() => next,
            };
            let (request, send) = next.expect("the reconciler made this request");
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
        let mut unexpected = Vec::new();
        loop {
            tokio::select! {
                _ = &mut finished => break,
                next = handle.next_request() => {
                    let Some((request, send)) = next else { break };
                    unexpected.push(format!("{} {}", request.method(), request.uri()));
                    send.send_response(Response::builder().status(500).body(Body::empty()).unwrap());
                }
            }
        }
        assert!(unexpected.is_empty(), "unexpected requests: {unexpected:?}");
        bodies
    });
    Server { task, done }
}
