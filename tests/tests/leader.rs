//! Leader election for singleton jobs (the session purge), with fencing: killing or
//! pausing the leader hands the jobs to another node, a paused leader steps down
//! when it wakes, and the store only accepts the newest fencing token.

use std::time::{Duration, Instant};

use fastim_tests::ServerProcess;
use fastim_tests::cluster::Cluster;

const LEADER: &str = "fastim_logic_job_leader";
const TOKEN: &str = "fastim_logic_job_fencing_token";

/// Waits until exactly one running node (not in `exclude`) leads; returns its index and token.
fn await_leader(nodes: &[ServerProcess], exclude: &[usize]) -> (usize, i64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let leaders: Vec<usize> = (0..nodes.len())
            .filter(|i| !exclude.contains(i) && nodes[*i].metric(LEADER) == Some(1))
            .collect();
        if let [one] = leaders[..] {
            return (one, nodes[one].metric(TOKEN).expect("token"));
        }
        assert!(Instant::now() < deadline, "no single leader: {leaders:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn await_purged(cluster: &Cluster, token_hash: &str) {
    let sql = format!("SELECT count(*) FROM sessions WHERE token_hash = '{token_hash}'");
    let deadline = Instant::now() + Duration::from_secs(20);
    while cluster.postgres.psql("fastim", &sql) != "0" {
        assert!(Instant::now() < deadline, "session {token_hash} was never purged");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn expired_session(cluster: &Cluster, token_hash: &str) {
    cluster.postgres.psql(
        "fastim",
        &format!("INSERT INTO sessions VALUES ('{token_hash}', 1, 'd', 1)"),
    );
}

#[test]
fn the_jobs_leader_hands_over_when_killed_or_paused_and_stale_leaders_are_fenced() {
    let mut cluster = Cluster::start(0, 0);
    for _ in 0..3 {
        cluster.add_logic_with(&["--jobs-interval-ms", "100", "--leader-ttl-secs", "2"]);
    }
    let (first, t1) = await_leader(&cluster.logic, &[]);
    expired_session(&cluster, "a");
    await_purged(&cluster, "a");

    // Pause the leader: its lease expires and another node takes over.
    cluster.logic[first].signal("STOP");
    let (second, t2) = await_leader(&cluster.logic, &[first]);
    assert_ne!(second, first);
    assert!(t2 > t1, "fencing tokens increase: {t1} then {t2}");
    expired_session(&cluster, "b");
    await_purged(&cluster, "b");

    // Wake the old leader: it must find its leadership gone and step down.
    cluster.logic[first].signal("CONT");
    let deadline = Instant::now() + Duration::from_secs(10);
    while cluster.logic[first].metric(LEADER) != Some(0) {
        assert!(Instant::now() < deadline, "the woken leader did not step down");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        await_leader(&cluster.logic, &[]),
        (second, t2),
        "still one leader, the new one"
    );
    let recorded: i64 = cluster
        .postgres
        .psql("fastim", "SELECT fencing FROM fastim_jobs")
        .parse()
        .unwrap();
    assert_eq!(recorded, t2, "the store holds the newest token");

    // Kill -9 the current leader: a third leadership, newer still.
    cluster.logic[second].kill9();
    let (third, t3) = await_leader(&cluster.logic, &[second]);
    assert_ne!(third, second);
    assert!(t3 > t2);
    expired_session(&cluster, "c");
    await_purged(&cluster, "c");
}
