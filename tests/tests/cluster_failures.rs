//! Cluster failures: processes and backing services killed and restarted under
//! traffic. The rule checked everywhere: nothing acknowledged is lost, nothing is
//! shown twice, and service resumes by itself.

use std::collections::BTreeSet;
use std::time::Duration;

use fastim_client::{Client, ClientConfig, ClientError, Event, Target};
use fastim_proto::client::{DeviceKind, ErrorCode};
use fastim_tests::cluster::Cluster;
use fastim_tests::http;
use fastim_tests::traffic::{assert_exactly_once, expected_in_ring, register_many, ring, watch};
use fastim_tests::*;

const T: Duration = Duration::from_secs(60);

fn config(servers: &[String], name: &str) -> ClientConfig {
    let mut config = user(&servers[0], name, DeviceKind::Mobile);
    config.servers = servers.to_vec();
    config.send_timeout = Duration::from_secs(60);
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_gateway_with_1000_sending_clients_loses_nothing() {
    let mut cluster = tokio::task::spawn_blocking(|| Cluster::start(2, 2)).await.unwrap();
    let servers = vec![cluster.tcp(0), cluster.tcp(1)];
    const N: usize = 1000;
    const PER_CLIENT: u64 = 5;
    let names: Vec<String> = (0..N).map(|i| format!("u{i}")).collect();
    register_many(&servers[1], &names).await;
    // Everybody starts on gateway 0.
    let mut clients = Vec::new();
    let mut seen = Vec::new();
    for chunk in names.chunks(100) {
        let connects: Vec<_> = chunk
            .iter()
            .map(|n| tokio::spawn(Client::connect(config(&servers, n))))
            .collect();
        for c in connects {
            let (client, events) = c.await.unwrap().unwrap();
            clients.push(client);
            seen.push(watch(events));
        }
    }
    let metrics = http::get(&cluster.gateways[0].get("http"), "/metrics").unwrap().1;
    assert!(metrics.contains(&format!(" {N}")), "{metrics}");
    // Each client sends to the next one, a message every ~100 ms.
    let senders = ring(
        &clients,
        &names,
        PER_CLIENT,
        |i, k| Duration::from_millis(50 + (i as u64 * 7 + k * 13) % 100),
        true,
    );
    tokio::time::sleep(Duration::from_millis(250)).await;
    cluster.gateways[0].kill9();
    let mut acked: Vec<Vec<(String, u64)>> = Vec::new();
    for s in senders {
        acked.push(s.await.unwrap());
    }
    assert_eq!(acked.iter().map(Vec::len).sum::<usize>(), N * PER_CLIENT as usize);
    // Every acknowledged message reaches its receiver and the sender's own device,
    // exactly once, in order.
    for i in 0..N {
        assert_exactly_once(&names[i], &seen[i], &expected_in_ring(&acked, i), T).await;
    }
    // And they all moved to the surviving gateway.
    let metrics = http::get(&cluster.gateways[1].get("http"), "/metrics").unwrap().1;
    assert!(metrics.contains(&format!(" {N}")), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_logic_node_mid_traffic_loses_nothing_acknowledged() {
    let mut cluster = tokio::task::spawn_blocking(|| Cluster::start(2, 1)).await.unwrap();
    let server = vec![cluster.tcp(0)];
    let names: Vec<String> = (0..40).map(|i| format!("l{i}")).collect();
    register_many(&server[0], &names).await;
    let mut clients = Vec::new();
    let mut seen = Vec::new();
    for n in &names {
        let (c, e) = Client::connect(config(&server, n)).await.unwrap();
        clients.push(c);
        seen.push(watch(e));
    }
    // Errors the clients see are allowed (retriable ones); silent losses are not.
    let senders = ring(&clients, &names, 20, |_, _| Duration::from_millis(20), false);
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.logic[0].kill9();
    let mut acked = Vec::new();
    for s in senders {
        acked.push(s.await.unwrap());
    }
    let total: usize = acked.iter().map(Vec::len).sum();
    assert!(total > 0);
    for i in 0..names.len() {
        assert_exactly_once(&names[i], &seen[i], &expected_in_ring(&acked, i), T).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_redis_rebuilds_routes_and_delivery_resumes() {
    let mut cluster = tokio::task::spawn_blocking(|| Cluster::start_with(1, 2, &["--route-refresh-secs", "1"]))
        .await
        .unwrap();
    register_users(&cluster.tcp(0), &["alice", "bob"]).await;
    let (alice, _) = connect(&cluster.tcp(0), "alice").await;
    let (_bob, bob_events) = connect(&cluster.tcp(1), "bob").await;
    let seen = watch(bob_events);
    let mut expected = BTreeSet::new();
    let ack = alice.send_text(Target::User("bob".into()), "before").await.unwrap();
    expected.insert((ack.conversation.clone(), ack.seq));
    assert_exactly_once("bob", &seen, &expected, T).await;

    tokio::task::block_in_place(|| cluster.redis.restart()); // empty: every route is gone
    for i in 0..5 {
        let ack = alice
            .send_text(Target::User("bob".into()), &format!("after {i}"))
            .await
            .unwrap();
        expected.insert((ack.conversation, ack.seq));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_exactly_once("bob", &seen, &expected, T).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_fails_fast_and_service_resumes_by_itself() {
    let mut cluster = tokio::task::spawn_blocking(|| Cluster::start(1, 1)).await.unwrap();
    register_users(&cluster.tcp(0), &["alice", "bob"]).await;
    let mut quick = user(&cluster.tcp(0), "alice", DeviceKind::Mobile);
    quick.send_timeout = Duration::from_millis(500);
    let (alice, _) = Client::connect(quick).await.unwrap();
    let (_bob, bob_events) = connect(&cluster.tcp(0), "bob").await;
    let seen = watch(bob_events);
    let first = alice.send_text(Target::User("bob".into()), "one").await.unwrap();

    tokio::task::block_in_place(|| cluster.postgres.stop());
    let started = std::time::Instant::now();
    let err = alice
        .send_text(Target::User("bob".into()), "while down")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Server(e) if e.code() == ErrorCode::Unavailable && e.retriable),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "failed fast: {:?}",
        started.elapsed()
    );

    tokio::task::block_in_place(|| cluster.postgres.restart());
    let mut after = None;
    for _ in 0..100 {
        match alice.send_text(Target::User("bob".into()), "after").await {
            Ok(ack) => {
                after = Some(ack);
                break;
            }
            Err(e) => {
                assert!(e.is_retriable(), "{e:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let after = after.expect("service resumed");
    // Nothing was stored for the failed send: the sequence goes on without a gap.
    assert_eq!(after.seq, first.seq + 1);
    let expected = BTreeSet::from([(first.conversation.clone(), 1), (first.conversation, 2)]);
    assert_exactly_once("bob", &seen, &expected, T).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_wait_for_unreachable_dependencies_and_report_not_ready() {
    let mut cluster = tokio::task::spawn_blocking(|| Cluster::start(0, 0)).await.unwrap();
    tokio::task::block_in_place(|| {
        cluster.postgres.stop();
        cluster.redis.kill9();
        cluster.etcd.kill9();
    });
    let args = cluster.logic_args("late");
    let mut logic = fastim_tests::ServerProcess::start_unready("logic", args);
    let http_addr = logic.get("http");
    let readyz = |expect: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let (status, body) = http::get(&http_addr, "/readyz").expect("readyz answers");
            if body.contains(expect) {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "readyz never said {expect:?}, last: {body:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    tokio::task::block_in_place(|| {
        assert_eq!(readyz("PostgreSQL"), 503);
        assert_eq!(
            http::get(&http_addr, "/healthz").unwrap().0,
            200,
            "alive while not ready"
        );
        cluster.postgres.restart();
        assert_eq!(readyz("Redis"), 503);
        cluster.redis.restart();
        assert_eq!(readyz("etcd"), 503);
        cluster.etcd.restart();
        logic.wait_ready();
        assert_eq!(readyz("ready"), 200);
    });
    // It serves: a gateway finds it and a client can register and chat.
    cluster.logic.push(logic);
    tokio::task::block_in_place(|| cluster.add_gateway());
    register_users(&cluster.tcp(0), &["alice"]).await;
    let (alice, mut events) = connect(&cluster.tcp(0), "alice").await;
    alice
        .send_text(Target::User("alice".into()), "note to self")
        .await
        .unwrap();
    assert_eq!(messages(&mut events, 1, T).await[0].text, "note to self");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lsb_sends_clients_to_the_least_loaded_gateway() {
    let cluster = tokio::task::spawn_blocking(|| Cluster::start(1, 2)).await.unwrap();
    let lsb = tokio::task::block_in_place(|| {
        fastim_tests::ServerProcess::start(
            "lsb",
            vec![
                "--http".into(),
                "127.0.0.1:0".into(),
                "--etcd".into(),
                cluster.etcd.endpoint(),
            ],
        )
    });
    let lsb_http = lsb.get("http");
    let names: Vec<String> = (0..6).map(|i| format!("p{i}")).collect();
    register_many(&cluster.tcp(0), &names).await;
    let mut held = Vec::new();
    for n in &names[..5] {
        held.push(connect(&cluster.tcp(0), n).await);
    }
    // The gateways publish their counts every 2 s.
    let mut best = String::new();
    for _ in 0..50 {
        let (status, body) = tokio::task::block_in_place(|| http::get(&lsb_http, "/v1/gateway")).unwrap();
        assert_eq!(status, 200);
        if body.contains(&cluster.tcp(1)) {
            best = body;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(best.contains("\"connections\":0"), "{best}");
    let all = tokio::task::block_in_place(|| http::get(&lsb_http, "/v1/gateways"))
        .unwrap()
        .1;
    assert!(all.contains(&cluster.tcp(0)) && all.contains(&cluster.tcp(1)), "{all}");
    // A client that asks the LSB lands on the idle gateway.
    let mut config = user("", "p5", DeviceKind::Mobile);
    config.servers.clear();
    config.lsb = Some(format!("http://{lsb_http}"));
    let (_client, mut events) = Client::connect(config).await.unwrap();
    let gateway = loop {
        match tokio::time::timeout(T, events.recv()).await.unwrap().unwrap() {
            Event::Connected { gateway_id } => break gateway_id,
            _ => continue,
        }
    };
    assert_eq!(gateway, "gateway-1");
}
