//! `fastim idgen` processes hammered by concurrent clients while each is killed and
//! restarted in turn: no id is ever issued twice, and the others go on.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fastim_proto::internal::IdRequest;
use fastim_proto::internal::id_allocator_client::IdAllocatorClient;
use fastim_tests::ServerProcess;
use fastim_tests::services::Etcd;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_stay_unique_while_allocators_are_killed_and_restarted() {
    let etcd = tokio::task::spawn_blocking(Etcd::start).await.unwrap();
    let start = |i: usize| {
        let args = [
            "--id",
            &format!("idgen-{i}"),
            "--grpc",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
        ]
        .into_iter()
        .map(String::from)
        .chain(["--etcd".into(), etcd.endpoint(), "--segment-size".into(), "40".into()])
        .collect();
        ServerProcess::start("idgen", args)
    };
    let mut allocators: Vec<ServerProcess> = tokio::task::block_in_place(|| (0..3).map(start).collect());
    let addrs: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(allocators.iter().map(|a| a.get("grpc")).collect()));
    let workers: HashSet<String> = allocators.iter().map(|a| a.get("worker")).collect();
    assert_eq!(workers.len(), 3, "distinct worker ids");

    let until = Instant::now() + Duration::from_secs(5);
    let mut hammers = Vec::new();
    for h in 0..6 {
        let addrs = addrs.clone();
        hammers.push(tokio::spawn(async move {
            let (mut segment_ids, mut snowflake_ids, mut failures) = (Vec::new(), Vec::new(), 0);
            let mut n = h;
            while Instant::now() < until {
                n += 1;
                let addr = addrs.lock().unwrap()[n % 3].clone();
                let Ok(mut client) = IdAllocatorClient::connect(format!("http://{addr}")).await else {
                    failures += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let request = IdRequest {
                    tag: "hammer".into(),
                    count: 1 + (n % 17) as u32,
                };
                match client.segment(request.clone()).await {
                    Ok(reply) => segment_ids.extend(reply.into_inner().ids),
                    Err(_) => failures += 1,
                }
                match client.snowflake(request).await {
                    Ok(reply) => snowflake_ids.extend(reply.into_inner().ids),
                    Err(_) => failures += 1,
                }
            }
            (segment_ids, snowflake_ids, failures)
        }));
    }
    // Kill -9 and restart each allocator in turn while the hammers run.
    for round in 0..2 {
        for (i, allocator) in allocators.iter_mut().enumerate() {
            tokio::time::sleep(Duration::from_millis(300)).await;
            tokio::task::block_in_place(|| {
                allocator.kill9();
                *allocator = start(i + 3 * (round + 1));
            });
            addrs.lock().unwrap()[i] = allocator.get("grpc");
        }
    }
    let (mut segments, mut snowflakes, mut served) = (HashSet::new(), HashSet::new(), 0usize);
    for h in hammers {
        let (s, f, _failures) = h.await.unwrap();
        served += s.len() + f.len();
        for id in s {
            assert!(segments.insert(id), "segment id {id} issued twice");
        }
        for id in f {
            assert!(snowflakes.insert(id), "snowflake id {id} issued twice");
        }
    }
    assert!(served > 1000, "the allocators kept serving ({served} ids)");
    assert!(segments.len() > 500 && snowflakes.len() > 500);
}
