//! A small stand-in for the Kubernetes API, enough to run the real `fastim operator
//! run` against: objects kept in memory by path, list, get, create, replace (with
//! `resourceVersion` conflicts), server-side apply answered with the stored object,
//! watches that stay open and quiet, `/version`. Every request is recorded so a
//! test can assert what the operator did.
//!
//! It is not a Kubernetes: no validation, no garbage collection, no watch events.
//! The operator's reconcile logic is tested request by request with kube's mocked
//! service (operator/tests); this checks the process around it: configuration,
//! leader election, the Controller starting, Events, metrics, shutdown.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One request the fake API answered.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: String,
    pub body: Value,
}

#[derive(Default)]
struct State {
    /// `resource/namespace/name` → object.
    objects: BTreeMap<String, Value>,
    seen: Vec<Seen>,
    version: u64,
}

impl State {
    /// Stores `body` under `key` with the next resourceVersion; returns what was stored.
    fn store(&mut self, key: String, body: &Value) -> Value {
        self.version += 1;
        let mut object = body.clone();
        object["metadata"]["resourceVersion"] = json!(self.version.to_string());
        self.objects.insert(key, object.clone());
        object
    }
}

/// The fake API server; stops when dropped.
pub struct FakeApi {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A request path taken apart.
struct Target {
    resource: String,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

fn parse(path: &str) -> Option<Target> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest = match segments.as_slice() {
        ["api", "v1", rest @ ..] => rest,
        ["apis", _group, _version, rest @ ..] => rest,
        _ => return None,
    };
    let (ns, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        _ => (None, rest),
    };
    let field = |i: usize| rest.get(i).map(|s| s.to_string());
    Some(Target {
        resource: field(0)?,
        namespace: ns,
        name: field(1),
        subresource: field(2),
    })
}

fn status(code: u16, reason: &str, message: &str) -> (u16, Value) {
    (
        code,
        json!({ "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code, "message": message }),
    )
}

impl FakeApi {
    /// Starts the server on a free loopback port.
    pub async fn start() -> FakeApi {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the fake API");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, shared.clone()));
            }
        });
        FakeApi { addr, state, task }
    }

    /// A kubeconfig file pointing at this server (plain HTTP, no credentials).
    pub fn kubeconfig(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: ops\n\
             current-context: fake\nusers:\n- name: fake\n  user: {{}}\n",
            self.addr
        );
        std::fs::write(&path, text).expect("write the kubeconfig");
        path
    }

    /// Stores an object (as if applied by a user), under its kind's plural `resource`.
    pub fn insert(&self, resource: &str, mut object: Value) {
        let mut state = self.state.lock().unwrap();
        state.version += 1;
        object["metadata"]["resourceVersion"] = json!(state.version.to_string());
        let key = format!(
            "{resource}/{}/{}",
            object["metadata"]["namespace"].as_str().unwrap_or(""),
            object["metadata"]["name"].as_str().unwrap_or("")
        );
        state.objects.insert(key, object);
    }

    /// A stored object.
    pub fn get(&self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        let state = self.state.lock().unwrap();
        state.objects.get(&format!("{resource}/{namespace}/{name}")).cloned()
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    /// Waits up to `timeout` for a request matching `matches`.
    pub async fn wait_for(&self, what: &str, timeout: Duration, matches: impl Fn(&Seen) -> bool) -> Seen {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(seen) = self.seen().into_iter().find(&matches) {
                return seen;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no request {what} within {timeout:?}; seen: {:#?}",
                self.seen()
                    .iter()
                    .map(|s| format!("{} {}?{}", s.method, s.path, s.query))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Answers one request in `state`: (status, body), or `None` for a watch.
fn answer(state: &mut State, method: &str, path: &str, query: &str, body: &Value) -> Option<(u16, Value)> {
    if path == "/version" {
        return Some((
            200,
            json!({ "major": "1", "minor": "33", "gitVersion": "v1.33.0", "platform": "linux/amd64" }),
        ));
    }
    let Some(Target {
        resource,
        namespace: ns,
        name,
        subresource: sub,
    }) = parse(path)
    else {
        return Some(status(404, "NotFound", "no such path"));
    };
    let ns_key = ns.clone().unwrap_or_default();
    match (method, name) {
        ("GET", None) if query.split('&').any(|p| p == "watch=true" || p == "watch=1") => None,
        ("GET", None) => {
            let items: Vec<Value> = state
                .objects
                .iter()
                .filter(|(k, _)| {
                    let mut parts = k.splitn(3, '/');
                    parts.next() == Some(resource.as_str()) && ns.as_deref().is_none_or(|n| parts.next() == Some(n))
                })
                .map(|(_, v)| v.clone())
                .collect();
            Some((
                200,
                json!({ "apiVersion": "v1", "kind": "List", "metadata": { "resourceVersion": state.version.to_string() }, "items": items }),
            ))
        }
        ("GET", Some(name)) => Some(match state.objects.get(&format!("{resource}/{ns_key}/{name}")) {
            Some(object) => (200, object.clone()),
            None => status(404, "NotFound", &format!("{resource} \"{name}\" not found")),
        }),
        ("POST", None) => {
            let name = body["metadata"]["name"].as_str().unwrap_or_default().to_owned();
            let key = format!("{resource}/{ns_key}/{name}");
            if state.objects.contains_key(&key) {
                return Some(status(
                    409,
                    "AlreadyExists",
                    &format!("{resource} \"{name}\" already exists"),
                ));
            }
            Some((201, state.store(key, body)))
        }
        ("PUT", Some(name)) => {
            let key = format!("{resource}/{ns_key}/{name}");
            let current = state
                .objects
                .get(&key)
                .map(|o| o["metadata"]["resourceVersion"].clone());
            if current.is_some_and(|v| v != body["metadata"]["resourceVersion"]) {
                return Some(status(409, "Conflict", "the object has been modified"));
            }
            Some((200, state.store(key, body)))
        }
        ("PATCH", Some(name)) => {
            let key = format!("{resource}/{ns_key}/{name}");
            state.version += 1;
            let version = state.version.to_string();
            let object = match (sub.as_deref(), state.objects.get_mut(&key)) {
                (Some("status"), Some(stored)) => {
                    stored["status"] = body["status"].clone();
                    stored["metadata"]["resourceVersion"] = json!(version);
                    stored.clone()
                }
                (Some(_), None) => return Some(status(404, "NotFound", &format!("{resource} \"{name}\" not found"))),
                _ => {
                    let mut object = body.clone();
                    object["metadata"]["resourceVersion"] = json!(version);
                    state.objects.insert(key, object.clone());
                    object
                }
            };
            Some((200, object))
        }
        _ => Some(status(405, "MethodNotAllowed", "not supported by the fake API")),
    }
}

async fn serve(mut stream: TcpStream, state: Arc<Mutex<State>>) {
    loop {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte).await {
                Ok(1) => head.push(byte[0]),
                _ => return,
            }
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let mut lines = head.lines();
        let mut request_line = lines.next().unwrap_or_default().split(' ');
        let method = request_line.next().unwrap_or_default().to_owned();
        let target = request_line.next().unwrap_or_default().to_owned();
        let length: usize = lines
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; length];
        if stream.read_exact(&mut body).await.is_err() {
            return;
        }
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let reply = {
            let mut state = state.lock().unwrap();
            state.seen.push(Seen {
                method: method.clone(),
                path: path.to_owned(),
                query: query.to_owned(),
                body: body.clone(),
            });
            answer(&mut state, &method, path, query, &body)
        };
        let Some((code, reply)) = reply else {
            // A watch: headers, then silence until the client goes away.
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
                .await;
            let mut sink = [0u8; 64];
            while let Ok(n) = stream.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
            return;
        };
        let bytes = serde_json::to_vec(&reply).unwrap();
        let response = format!(
            "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            bytes.len()
        );
        if stream.write_all(response.as_bytes()).await.is_err() || stream.write_all(&bytes).await.is_err() {
            return;
        }
    }
}
