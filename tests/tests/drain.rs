//! Draining a gateway (rolling update, scale-down): SIGTERM makes it leave the
//! registry, then ask its clients to reconnect elsewhere at `--drain-rate` per second.
//! With 2,000 connected clients that keep sending: every client ends on the other
//! gateway, nothing acknowledged is lost or shown twice, and the reconnects are spread
//! over the drain window instead of arriving all at once.

use std::time::{Duration, Instant};

use fastim_client::{Client, ClientConfig};
use fastim_proto::client::DeviceKind;
use fastim_tests::cluster::Cluster;
use fastim_tests::traffic::{assert_exactly_once, expected_in_ring, register_many, ring, watch};
use fastim_tests::*;

const N: usize = 2000;
const RATE: usize = 400; // clients per second: a 5 s drain window

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_gateway_moves_2000_sending_clients_gradually_and_loses_nothing() {
    let mut cluster = tokio::task::spawn_blocking(|| {
        Cluster::start_with(1, 2, &["--drain-rate", &RATE.to_string(), "--max-connections", "5000"])
    })
    .await
    .unwrap();
    let servers = vec![cluster.tcp(0), cluster.tcp(1)];
    let names: Vec<String> = (0..N).map(|i| format!("d{i}")).collect();
    register_many(&servers[1], &names).await;
    let mut clients = Vec::new();
    let mut seen = Vec::new();
    for chunk in names.chunks(200) {
        let connects: Vec<_> = chunk
            .iter()
            .map(|n| {
                let mut config: ClientConfig = user(&servers[0], n, DeviceKind::Mobile);
                config.servers = servers.clone();
                config.send_timeout = Duration::from_secs(60);
                tokio::spawn(Client::connect(config))
            })
            .collect();
        for c in connects {
            let (client, events) = c.await.unwrap().unwrap();
            clients.push(client);
            seen.push(watch(events));
        }
    }
    // Everybody keeps sending to the next client, across the drain.
    let senders = ring(
        &clients,
        &names,
        4,
        |i, k| Duration::from_millis(500 + (i as u64 * 37 + k * 911) % 2000),
        true,
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let drain_started = Instant::now();
    let exit = tokio::task::block_in_place(|| cluster.gateways[0].terminate());
    let drained_in = drain_started.elapsed();
    assert_eq!(exit, Some(0), "the gateway exits cleanly after draining");

    let mut acked = Vec::new();
    for s in senders {
        acked.push(s.await.unwrap());
    }
    // Every client ends on the other gateway.
    for (i, s) in seen.iter().enumerate() {
        let s = s.lock().await;
        assert_eq!(
            s.gateways.last().map(String::as_str),
            Some("gateway-1"),
            "{} ended on {:?}",
            names[i],
            s.gateways
        );
    }
    // Nothing acknowledged is lost or shown twice.
    for i in 0..N {
        assert_exactly_once(
            &names[i],
            &seen[i],
            &expected_in_ring(&acked, i),
            Duration::from_secs(60),
        )
        .await;
    }
    // The reconnects are spread over the drain window, not a stampede.
    let mut moved: Vec<Duration> = Vec::new();
    for s in &seen {
        if let Some(at) = s.lock().await.moved_at {
            moved.push(at.saturating_duration_since(drain_started));
        }
    }
    assert_eq!(moved.len(), N, "every client was asked to move");
    moved.sort();
    let span = moved[N - 1] - moved[0];
    let window = Duration::from_secs_f64(N as f64 / RATE as f64);
    assert!(
        span >= window / 2,
        "reconnects spread over {span:?} (drain window {window:?})"
    );
    let busiest_second = (0..moved.len())
        .map(|i| {
            moved[i..]
                .iter()
                .take_while(|t| **t <= moved[i] + Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap();
    // The gateway paces per 100 ms tick; the times here are when clients saw the
    // request, which bunch up when the machine is busy. Twice the rate still tells a
    // paced drain from a stampede (all 2,000 within one second).
    assert!(
        busiest_second <= RATE * 2,
        "{busiest_second} reconnects within one second (rate {RATE}/s)"
    );
    assert!(drained_in >= window / 2, "the drain took {drained_in:?}");
    eprintln!(
        "drain of {N} clients: reconnects spread over {span:?}, at most {busiest_second} in one second, gateway exited after {drained_in:?}"
    );
    let metrics = http::get(&cluster.gateways[1].get("http"), "/metrics").unwrap().1;
    assert!(metrics.contains(&format!(" {N}")), "{metrics}");
}
