//! Segment allocation against a private etcd.

use std::collections::HashSet;
use std::sync::Arc;

use fastim_idgen::segment::{SegmentAllocator, SegmentError};
use fastim_tests::services::Etcd;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_allocators_take_disjoint_segments() {
    let etcd = tokio::task::spawn_blocking(Etcd::start).await.unwrap();
    let client = fastim_cluster::connect(&etcd.endpoint()).await.unwrap();
    let allocators: Vec<Arc<SegmentAllocator>> = (0..4)
        .map(|_| Arc::new(SegmentAllocator::new(client.clone(), "/fastim/segments/", 10)))
        .collect();
    let mut tasks = Vec::new();
    for (i, allocator) in allocators.iter().enumerate() {
        let allocator = allocator.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for round in 0..50 {
                // Requests bigger than a segment span several segments.
                ids.extend(allocator.next_ids("msg", 1 + (i + round) % 23).await.unwrap());
            }
            ids
        }));
    }
    let mut all = HashSet::new();
    for t in tasks {
        let ids = t.await.unwrap();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "increasing per allocator");
        for id in ids {
            assert!(all.insert(id), "duplicate id {id}");
        }
    }
    // Tags are independent counters.
    assert_eq!(allocators[0].next_ids("other", 3).await.unwrap(), vec![1, 2, 3]);
    assert!(matches!(
        allocators[0].next_ids("Bad Tag", 1).await,
        Err(SegmentError::BadTag)
    ));
}
