//! Registrations, directories and worker leases against a private etcd.

use std::time::Duration;

use fastim_cluster::{Directory, Registration, WorkerLease, connect};
use fastim_tests::services::Etcd;

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..100 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what} did not happen within 10 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_appear_update_and_vanish() {
    let etcd = tokio::task::spawn_blocking(Etcd::start).await.unwrap();
    let client = connect(&etcd.endpoint()).await.unwrap();
    let directory = Directory::start(client.clone(), "/fastim/gateways/").await.unwrap();
    assert!(directory.all().is_empty());
    let ttl = Duration::from_secs(2);
    let a = Registration::start(client.clone(), "/fastim/gateways/a".into(), "1".into(), ttl)
        .await
        .unwrap();
    let b = Registration::start(client.clone(), "/fastim/gateways/b".into(), "2".into(), ttl)
        .await
        .unwrap();
    eventually("both registered", || directory.all().len() == 2).await;
    a.update("10".into());
    eventually("the update", || directory.get("a").as_deref() == Some("10")).await;
    // Kept alive well past the TTL.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(directory.get("b").as_deref(), Some("2"));
    // Dropped (a dead process): gone within the TTL.
    drop(b);
    eventually("b expired", || directory.get("b").is_none()).await;
    assert_eq!(directory.get("a").as_deref(), Some("10"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_and_registration_survive_an_etcd_restart() {
    let mut etcd = tokio::task::spawn_blocking(Etcd::start).await.unwrap();
    let client = connect(&etcd.endpoint()).await.unwrap();
    let directory = Directory::start(client.clone(), "/fastim/logic/").await.unwrap();
    let _r = Registration::start(
        client.clone(),
        "/fastim/logic/x".into(),
        "v1".into(),
        Duration::from_secs(2),
    )
    .await
    .unwrap();
    eventually("registered", || directory.get("x").is_some()).await;
    etcd.kill9();
    let etcd = tokio::task::spawn_blocking(move || {
        etcd.restart();
        etcd
    })
    .await
    .unwrap();
    eventually("still registered after the restart", || {
        directory.get("x").as_deref() == Some("v1")
    })
    .await;
    drop(etcd);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_ids_are_exclusive_and_freed_with_their_lease() {
    let etcd = tokio::task::spawn_blocking(Etcd::start).await.unwrap();
    let client = connect(&etcd.endpoint()).await.unwrap();
    let ttl = Duration::from_secs(2);
    let a = WorkerLease::acquire(client.clone(), "/fastim/workers/", 3, ttl)
        .await
        .unwrap();
    let b = WorkerLease::acquire(client.clone(), "/fastim/workers/", 3, ttl)
        .await
        .unwrap();
    let c = WorkerLease::acquire(client.clone(), "/fastim/workers/", 3, ttl)
        .await
        .unwrap();
    let mut ids = vec![a.id, b.id, c.id];
    ids.sort();
    assert_eq!(ids, vec![0, 1, 2]);
    assert!(a.is_valid() && b.is_valid() && c.is_valid());
    assert!(
        WorkerLease::acquire(client.clone(), "/fastim/workers/", 3, ttl)
            .await
            .is_err(),
        "all taken"
    );
    let freed = b.id;
    drop(b);
    // After the lease expires the id can be taken again.
    let mut again = None;
    for _ in 0..60 {
        if let Ok(lease) = WorkerLease::acquire(client.clone(), "/fastim/workers/", 3, ttl).await {
            again = Some(lease);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(again.expect("freed id taken again").id, freed);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(a.is_valid(), "kept alive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_worker_lease_stops_being_valid_before_it_expires() {
    let mut etcd = tokio::task::spawn_blocking(Etcd::start).await.unwrap();
    let client = connect(&etcd.endpoint()).await.unwrap();
    let lease = WorkerLease::acquire(client, "/fastim/workers/", 8, Duration::from_secs(3))
        .await
        .unwrap();
    assert!(lease.is_valid());
    etcd.kill9();
    // No keep-alive can succeed: validity ends at most TTL - margin after the last one.
    let started = std::time::Instant::now();
    while lease.is_valid() {
        assert!(started.elapsed() < Duration::from_secs(4), "still valid after the TTL");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
