//! Route tables: the same checks against the in-memory table and Redis, plus the
//! Redis-only behaviour (expiry, restart).

use std::sync::Arc;
use std::time::Duration;

use fastim_logic::routes::redis::{RedisConnection, RedisRoutes};
use fastim_logic::routes::{KickPolicy, MemoryRoutes, RouteTable};
use fastim_proto::internal::Device;
use fastim_tests::services::Redis;

fn device(user: u64, kind: i32, gateway: &str, conn: u64) -> Device {
    Device {
        user_id: user,
        user: format!("u{user}"),
        kind,
        device_id: format!("d{conn}"),
        gateway_id: gateway.into(),
        conn_id: conn,
        session: "s".into(),
    }
}

fn conns(mut devices: Vec<Device>) -> Vec<(String, u64)> {
    devices.sort_by_key(|d| (d.gateway_id.clone(), d.conn_id));
    devices.into_iter().map(|d| (d.gateway_id, d.conn_id)).collect()
}

async fn kick_policies(routes: Arc<dyn RouteTable>) {
    assert!(
        routes
            .bind(&device(1, 1, "g1", 10), KickPolicy::SameKind)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        routes
            .bind(&device(1, 2, "g2", 11), KickPolicy::SameKind)
            .await
            .unwrap()
            .is_empty()
    );
    // Same kind on another gateway replaces the first login.
    let replaced = routes
        .bind(&device(1, 1, "g2", 12), KickPolicy::SameKind)
        .await
        .unwrap();
    assert_eq!(conns(replaced), vec![("g1".into(), 10)]);
    // The kicked connection's late unbind leaves the new route alone.
    routes.unbind(&device(1, 1, "g1", 10)).await.unwrap();
    assert_eq!(
        conns(routes.devices(1).await.unwrap()),
        vec![("g2".into(), 11), ("g2".into(), 12)]
    );
    assert!(
        routes
            .bind(&device(1, 1, "g3", 13), KickPolicy::Never)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        routes
            .bind(&device(1, 3, "g1", 14), KickPolicy::SingleDevice)
            .await
            .unwrap()
            .len(),
        3
    );
    assert_eq!(conns(routes.devices(1).await.unwrap()), vec![("g1".into(), 14)]);
    routes.unbind(&device(1, 3, "g1", 14)).await.unwrap();
    assert!(routes.devices(1).await.unwrap().is_empty());
    assert!(routes.devices(99).await.unwrap().is_empty());
}

async fn refresh_restores(routes: Arc<dyn RouteTable>) {
    let d = device(7, 1, "g1", 1);
    routes.refresh(std::slice::from_ref(&d)).await.unwrap();
    routes.refresh(std::slice::from_ref(&d)).await.unwrap();
    assert_eq!(routes.devices(7).await.unwrap(), vec![d]);
}

async fn redis_routes(redis: &Redis, ttl: Duration) -> Arc<dyn RouteTable> {
    let conn = RedisConnection::connect(&[redis.url()], false).await.unwrap();
    Arc::new(RedisRoutes::new(conn, ttl))
}

#[tokio::test]
async fn memory_kick_policies() {
    kick_policies(Arc::new(MemoryRoutes::default())).await;
    refresh_restores(Arc::new(MemoryRoutes::default())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_kick_policies() {
    let redis = tokio::task::spawn_blocking(Redis::start).await.unwrap();
    kick_policies(redis_routes(&redis, Duration::from_secs(60)).await).await;
    refresh_restores(redis_routes(&redis, Duration::from_secs(60)).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_routes_of_a_crashed_gateway_expire() {
    let redis = tokio::task::spawn_blocking(Redis::start).await.unwrap();
    let routes = redis_routes(&redis, Duration::from_millis(300)).await;
    routes
        .bind(&device(1, 1, "crashed", 1), KickPolicy::SameKind)
        .await
        .unwrap();
    assert_eq!(routes.devices(1).await.unwrap().len(), 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        routes.devices(1).await.unwrap().is_empty(),
        "no refresh: the route is gone"
    );
    // An expired route of the same kind is not reported as kicked.
    assert!(
        routes
            .bind(&device(1, 1, "alive", 2), KickPolicy::SameKind)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_is_survived_and_refresh_rebuilds() {
    let mut redis = tokio::task::spawn_blocking(Redis::start).await.unwrap();
    let routes = redis_routes(&redis, Duration::from_secs(60)).await;
    let d = device(5, 2, "g1", 3);
    routes.bind(&d, KickPolicy::SameKind).await.unwrap();
    redis.restart(); // comes back empty
    // The connection manager reconnects by itself; the routes are gone until refreshed.
    let mut devices = Err(fastim_logic::routes::RouteError("not tried".into()));
    for _ in 0..50 {
        devices = routes.devices(5).await;
        if devices.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(devices.unwrap().is_empty());
    routes.refresh(std::slice::from_ref(&d)).await.unwrap();
    assert_eq!(routes.devices(5).await.unwrap(), vec![d]);
}

#[tokio::test]
async fn redis_unreachable_is_an_error_not_a_hang() {
    let url = format!("redis://127.0.0.1:{}/", fastim_tests::services::free_port());
    let started = std::time::Instant::now();
    assert!(RedisConnection::connect(&[url], false).await.is_err());
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_routes() {
    let cluster = tokio::task::spawn_blocking(fastim_tests::services::RedisCluster::start)
        .await
        .unwrap();
    let conn = RedisConnection::connect(&cluster.urls(), true).await.unwrap();
    let routes: Arc<dyn RouteTable> = Arc::new(RedisRoutes::new(conn, Duration::from_secs(60)));
    kick_policies(routes.clone()).await;
    refresh_restores(routes.clone()).await;
    // A refresh covering users on every slot of the cluster.
    let many: Vec<Device> = (100..400).map(|u| device(u, 1, "g1", u)).collect();
    routes.refresh(&many).await.unwrap();
    for d in &many {
        assert_eq!(routes.devices(d.user_id).await.unwrap(), vec![d.clone()]);
    }
}
