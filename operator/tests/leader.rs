//! Leader election on a Lease against the mocked API: every request asserted.

use std::time::Duration;

use fastim_operator::leader::{Attempt, LeaseConfig, LeaseLock};
use http::{Request, Response};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};

mod common;
use common::{Expect, serve};

const PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/ops/leases/fastim-operator";

fn candidate() -> (LeaseLock, common::Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let config = LeaseConfig {
        lease_duration: Duration::from_secs(15),
        retry_period: Duration::from_secs(2),
        ..LeaseConfig::new("ops", "fastim-operator", "op-0")
    };
    (LeaseLock::new(Client::new(service, "ops"), config), handle)
}

fn now() -> Timestamp {
    "2026-11-25T10:00:00Z".parse().unwrap()
}

fn micro(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// A Lease held by `holder`, last renewed `ago` before [`now`].
fn lease(holder: &str, ago: i64, transitions: i32) -> Value {
    let renewed = now() - SignedDuration::from_secs(ago);
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": { "name": "fastim-operator", "namespace": "ops", "resourceVersion": "41" },
        "spec": {
            "holderIdentity": holder, "leaseDurationSeconds": 15,
            "acquireTime": micro(now() - SignedDuration::from_secs(600)),
            "renewTime": micro(renewed), "leaseTransitions": transitions,
        },
    })
}

fn get(reply: Value, status: u16) -> Expect {
    Expect {
        method: "GET",
        path: PATH.into(),
        status,
        reply: Some(reply),
    }
}

fn put(status: u16) -> Expect {
    Expect {
        method: "PUT",
        path: PATH.into(),
        status,
        reply: (status != 200).then(|| {
            json!({ "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": status,
                    "message": "the object has been modified" })
        }),
    }
}

fn not_found() -> Value {
    json!({ "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
            "message": "leases.coordination.k8s.io \"fastim-operator\" not found" })
}

#[tokio::test]
async fn a_missing_lease_is_created_and_held() {
    let (lock, handle) = candidate();
    let create = Expect {
        method: "POST",
        path: "/apis/coordination.k8s.io/v1/namespaces/ops/leases".into(),
        status: 201,
        reply: None,
    };
    let server = serve(handle, vec![get(not_found(), 404), create]);
    assert_eq!(lock.try_acquire_or_renew_at(now()).await.unwrap(), Attempt::Leading);
    let bodies = server.finish().await;
    let spec = &bodies[1]["spec"];
    assert_eq!(spec["holderIdentity"], "op-0");
    assert_eq!(spec["leaseDurationSeconds"], 15);
    assert_eq!(spec["leaseTransitions"], 0);
    assert_eq!(spec["renewTime"], micro(now()));
}

#[tokio::test]
async fn a_valid_lease_of_another_is_left_alone() {
    let (lock, handle) = candidate();
    let server = serve(handle, vec![get(lease("op-1", 5, 3), 200)]);
    assert_eq!(
        lock.try_acquire_or_renew_at(now()).await.unwrap(),
        Attempt::Following("op-1".into())
    );
    server.finish().await;
}

#[tokio::test]
async fn an_expired_lease_is_taken_over_with_its_resource_version() {
    let (lock, handle) = candidate();
    let server = serve(handle, vec![get(lease("op-1", 16, 3), 200), put(200)]);
    assert_eq!(lock.try_acquire_or_renew_at(now()).await.unwrap(), Attempt::Leading);
    let bodies = server.finish().await;
    let written = &bodies[1];
    assert_eq!(written["metadata"]["resourceVersion"], "41", "optimistic concurrency");
    assert_eq!(written["spec"]["holderIdentity"], "op-0");
    assert_eq!(written["spec"]["leaseTransitions"], 4);
    assert_eq!(written["spec"]["acquireTime"], micro(now()));
}

#[tokio::test]
async fn the_holder_renews_and_keeps_its_acquire_time() {
    let (lock, handle) = candidate();
    let held = lease("op-0", 2, 3);
    let server = serve(handle, vec![get(held.clone(), 200), put(200)]);
    assert_eq!(lock.try_acquire_or_renew_at(now()).await.unwrap(), Attempt::Leading);
    let bodies = server.finish().await;
    assert_eq!(bodies[1]["spec"]["renewTime"], micro(now()));
    assert_eq!(bodies[1]["spec"]["acquireTime"], held["spec"]["acquireTime"]);
    assert_eq!(bodies[1]["spec"]["leaseTransitions"], 3);
}

#[tokio::test]
async fn losing_the_race_for_an_expired_lease_is_following() {
    let (lock, handle) = candidate();
    let server = serve(handle, vec![get(lease("op-1", 60, 3), 200), put(409)]);
    assert_eq!(
        lock.try_acquire_or_renew_at(now()).await.unwrap(),
        Attempt::Following("op-1".into())
    );
    server.finish().await;
}

#[tokio::test]
async fn an_api_error_is_an_error_not_leadership() {
    let (lock, handle) = candidate();
    let failure = json!({ "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403,
                          "message": "leases is forbidden" });
    let server = serve(handle, vec![get(failure, 403)]);
    let error = lock.try_acquire_or_renew_at(now()).await.unwrap_err();
    assert!(error.to_string().contains("forbidden"), "{error}");
    server.finish().await;
}

#[tokio::test]
async fn release_hands_the_lease_over_only_when_held() {
    let (lock, handle) = candidate();
    let server = serve(handle, vec![get(lease("op-0", 1, 3), 200), put(200)]);
    lock.release().await.unwrap();
    let bodies = server.finish().await;
    assert!(bodies[1]["spec"].get("holderIdentity").is_none(), "{}", bodies[1]);
    assert_eq!(bodies[1]["spec"]["leaseDurationSeconds"], 1);
    // Held by another: nothing is written.
    let (lock, handle) = candidate();
    let server = serve(handle, vec![get(lease("op-1", 1, 3), 200)]);
    lock.release().await.unwrap();
    server.finish().await;
}
