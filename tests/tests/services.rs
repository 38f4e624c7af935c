//! The harness itself: private etcd, Redis and PostgreSQL start, answer, restart.

use fastim_tests::services::{Etcd, Postgres, Redis};

#[test]
fn private_services_start_and_restart() {
    let mut pg = Postgres::start();
    pg.create_database("probe");
    assert_eq!(pg.psql("probe", "SELECT 40 + 2"), "42");
    pg.kill9();
    pg.restart();
    assert_eq!(pg.psql("probe", "SELECT 1"), "1");
    assert_ne!(pg.port, 5432, "never the machine's own server");

    let mut redis = Redis::start();
    assert_ne!(redis.port, 6379);
    redis.restart();

    let mut etcd = Etcd::start();
    assert_ne!(etcd.port, 2379);
    etcd.kill9();
    etcd.restart();
}
