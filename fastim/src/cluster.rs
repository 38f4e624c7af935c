//! `fastim gateway` and `fastim logic`: the cluster-mode processes.
//!
//! Both find each other through etcd: a logic node registers
//! `/fastim/logic/<id>` = its internal gRPC address; a gateway registers
//! `/fastim/gateways/<id>` = JSON with its internal address, its client-facing
//! addresses and its live connection count. Gateways balance logic calls over every
//! registered logic node; logic pushes to the gateway a route names. Routes live in
//! Redis, durable state in PostgreSQL, snowflake worker ids are leased from etcd.
//!
//! A dependency that is down at start is retried with backoff (and logged) until it
//! answers; the process serves only once all of them do.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use fastim_cluster::{Directory, Leadership, Registration, WorkerLease};
use fastim_gateway::Gateway;
use fastim_gateway::remote::RemoteLogic;
use fastim_gateway::server::{self, Listeners};
use fastim_idgen::Snowflake;
use fastim_logic::LogicService;
use fastim_logic::gateways::RemoteGateways;
use fastim_logic::routes::redis::{RedisConnection, RedisRoutes};
use fastim_logic::store::Store;
use fastim_logic::store::postgres::PostgresStore;
use fastim_proto::internal::RefreshRoutes;
use fastim_proto::internal::gateway_server::GatewayServer;
use fastim_proto::internal::logic_server::{Logic, LogicServer};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

use crate::cli::{GatewayArgs, IdgenArgs, LogicArgs, LsbArgs};
use crate::http::{self, Readiness, Reply};
use crate::standalone::shutdown_signal;

/// etcd key prefixes.
pub const LOGIC_PREFIX: &str = "/fastim/logic/";
pub const GATEWAY_PREFIX: &str = "/fastim/gateways/";
pub const IDGEN_PREFIX: &str = "/fastim/idgen/";
const SEGMENT_PREFIX: &str = "/fastim/segments/";
const WORKER_PREFIX: &str = "/fastim/workers/";
const JOBS_ELECTION: &str = "/fastim/election/jobs";
/// Lease TTL of registrations and worker ids.
const LEASE_TTL: Duration = Duration::from_secs(10);

pub(crate) fn default_id(role: &str) -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    format!(
        "{role}-{}-{}",
        if host.is_empty() { "local" } else { &host },
        std::process::id()
    )
}

/// Retries `attempt` with exponential backoff until it succeeds, logging each
/// failure and reporting what it waits for on `/readyz`.
async fn retry<T, E: std::fmt::Display, F: Future<Output = Result<T, E>>>(
    ready: &Readiness,
    what: &str,
    mut attempt: impl FnMut() -> F,
) -> T {
    ready.set_waiting(what);
    let mut delay = Duration::from_millis(200);
    loop {
        match attempt().await {
            Ok(value) => return value,
            Err(e) => {
                tracing::warn!(dependency = what, error = %e, retry_in = ?delay, "not ready: waiting for a dependency");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// What a gateway publishes in etcd.
fn gateway_record(grpc: &str, tcp: &str, ws: &str, connections: usize) -> String {
    serde_json::json!({ "grpc": grpc, "tcp": tcp, "ws": ws, "connections": connections }).to_string()
}

/// The internal address of a gateway from its etcd record.
fn gateway_grpc(record: &str) -> Option<String> {
    serde_json::from_str::<serde_json::Value>(record)
        .ok()?
        .get("grpc")?
        .as_str()
        .map(str::to_owned)
}

pub async fn logic(args: LogicArgs) -> anyhow::Result<i32> {
    let config = crate::config::logic(&args.logic)?;
    // A malformed url is a configuration error, not an outage to wait out.
    fastim_logic::store::postgres::parse_url(&args.database).map_err(|e| anyhow::anyhow!("--database: {e}"))?;
    let id = args.id.clone().unwrap_or_else(|| default_id("logic"));
    let listener = bind("--grpc", args.grpc).await?;
    let grpc = listener.local_addr()?;
    let advertise = args.advertise.clone().unwrap_or_else(|| grpc.to_string());
    let jobs = Arc::new(JobState::default());
    let job_metrics = jobs.clone();
    let (ready, http_addr) = serve_http("logic", args.http, move |path| {
        (path == "/metrics").then(|| Reply::text(200, job_metrics.metrics()))
    })
    .await?;

    let store = retry(&ready, "PostgreSQL", || {
        PostgresStore::connect(&args.database, args.database_pool)
    })
    .await;
    let redis_urls: Vec<String> = crate::config::list(&args.redis);
    let redis = retry(&ready, "Redis", || {
        RedisConnection::connect(&redis_urls, args.redis_cluster)
    })
    .await;
    let etcd = retry(&ready, "etcd", || fastim_cluster::connect(&args.etcd)).await;
    let worker = retry(&ready, "etcd worker id", || {
        WorkerLease::acquire(etcd.clone(), WORKER_PREFIX, fastim_idgen::MAX_WORKER + 1, LEASE_TTL)
    })
    .await;
    let worker_id = worker.id;
    let ids = Arc::new(Snowflake::new(worker_id)?.guarded(move || worker.is_valid()));
    let gateways = retry(&ready, "etcd gateway directory", || {
        Directory::start(etcd.clone(), GATEWAY_PREFIX)
    })
    .await;
    let listed = gateways.clone();
    let lister = Box::new(move || listed.all().into_keys().collect());
    let resolver = Box::new(move |gateway: &str| gateways.get(gateway).as_deref().and_then(gateway_grpc));
    let routes = RedisRoutes::new(redis, Duration::from_secs(args.route_ttl_secs));
    let store: Arc<dyn Store> = Arc::new(store);
    let logic = LogicService::new(
        config,
        store.clone(),
        ids,
        Arc::new(routes),
        Arc::new(RemoteGateways::new(resolver, lister)),
    );

    let key = format!("{LOGIC_PREFIX}{id}");
    let registration = retry(&ready, "etcd registration", || {
        Registration::start(etcd.clone(), key.clone(), advertise.clone(), LEASE_TTL)
    })
    .await;
    let every = Duration::from_millis(args.jobs_interval_ms.max(10));
    let leader_ttl = Duration::from_secs(args.leader_ttl_secs.max(2));
    let job_runner = tokio::spawn(run_jobs(etcd.clone(), store, id.clone(), every, leader_ttl, jobs));
    ready.set_ready();
    tracing::info!(%id, %grpc, worker_id, "fastim logic started");
    println!("fastim logic ready grpc={grpc} http={http_addr} id={id} worker={worker_id}");
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let shutdown = async {
        shutdown_signal().await;
        registration.stop().await;
    };
    tonic::transport::Server::builder()
        .add_service(LogicServer::from_arc(logic.clone()))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .context("logic gRPC server")?;
    job_runner.abort();
    logic.flush().await;
    tracing::info!("fastim logic stopped");
    Ok(0)
}

pub async fn gateway(args: GatewayArgs) -> anyhow::Result<i32> {
    let id = args.id.clone().unwrap_or_else(|| default_id("gateway"));
    let config = crate::config::gateway(&id, &args.gateway)?;
    let grpc_listener = bind("--grpc", args.grpc).await?;
    let grpc = grpc_listener.local_addr()?;
    let advertise = args.advertise.clone().unwrap_or_else(|| grpc.to_string());
    let gateway_cell: Arc<std::sync::OnceLock<Arc<Gateway>>> = Arc::default();
    let cell = gateway_cell.clone();
    let (ready, http_addr) = serve_http("gateway", args.http, move |path| {
        (path == "/metrics").then(|| Reply::text(200, cell.get().map(|g| gateway_metrics(g)).unwrap_or_default()))
    })
    .await?;

    let etcd = retry(&ready, "etcd", || fastim_cluster::connect(&args.etcd)).await;
    let logic_nodes = retry(&ready, "etcd logic directory", || {
        Directory::start(etcd.clone(), LOGIC_PREFIX)
    })
    .await;
    let (remote, mut endpoints) = RemoteLogic::balanced();
    endpoints.set(logic_nodes.all().into_values()).await;
    if endpoints.is_empty() {
        tracing::warn!("no logic node registered yet: logins fail with UNAVAILABLE until one is");
    }
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            endpoints.set(logic_nodes.all().into_values()).await;
        }
    });

    let gateway = Gateway::new(config, Arc::new(remote.clone()));
    let _ = gateway_cell.set(gateway.clone());
    let listeners = Listeners::bind(&gateway).await?;
    let tcp = listeners
        .tcp
        .as_ref()
        .and_then(|l| l.local_addr().ok())
        .map(|a| a.to_string())
        .unwrap_or_default();
    let ws = listeners
        .ws
        .as_ref()
        .and_then(|l| l.local_addr().ok())
        .map(|a| format!("ws://{a}/"))
        .unwrap_or_default();
    let public_tcp = args.public_tcp.clone().unwrap_or_else(|| tcp.clone());

    let key = format!("{GATEWAY_PREFIX}{id}");
    let record = gateway_record(&advertise, &public_tcp, &ws, 0);
    let registration = retry(&ready, "etcd registration", || {
        Registration::start(etcd.clone(), key.clone(), record.clone(), LEASE_TTL)
    })
    .await;
    let registration = Arc::new(registration);
    // Publish the live connection count (the LSB and autoscaling read it).
    let publisher = {
        let (gateway, registration, advertise, public_tcp, ws) = (
            gateway.clone(),
            registration.clone(),
            advertise.clone(),
            public_tcp.clone(),
            ws.clone(),
        );
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                registration.update(gateway_record(&advertise, &public_tcp, &ws, gateway.connection_count()));
            }
        })
    };
    // Re-announce our devices: refreshes route TTLs and rebuilds routes after a Redis restart.
    let refresher = {
        let (gateway, id, every) = (
            gateway.clone(),
            id.clone(),
            Duration::from_secs(args.route_refresh_secs.max(1)),
        );
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let devices = gateway.registry.devices();
                if devices.is_empty() {
                    continue;
                }
                let request = tonic::Request::new(RefreshRoutes {
                    gateway_id: id.clone(),
                    devices,
                });
                if let Err(e) = remote.refresh(request).await {
                    tracing::warn!(error = %e, "route refresh failed; retried next round");
                }
            }
        })
    };
    let grpc_server = {
        let gateway = gateway.clone();
        let incoming = TcpIncoming::from(grpc_listener).with_nodelay(Some(true));
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(GatewayServer::from_arc(gateway))
                .serve_with_incoming(incoming)
                .await
        })
    };
    ready.set_ready();
    tracing::info!(%id, %tcp, %ws, %grpc, "fastim gateway started");
    println!(
        "fastim gateway ready tcp={tcp} ws={ws} grpc={grpc} http={http_addr} id={id} tls={}",
        gateway.config.tls.is_some()
    );
    let shutdown = async {
        shutdown_signal().await;
        // Not ready from the first moment of the drain: load balancers stop sending.
        ready.set_waiting("draining");
        // Leave the registry first: no new clients are sent here while we drain.
        publisher.abort();
        if let Ok(registration) = Arc::try_unwrap(registration) {
            registration.stop().await;
        }
    };
    server::serve(gateway, listeners, shutdown).await;
    refresher.abort();
    grpc_server.abort();
    tracing::info!("fastim gateway stopped");
    Ok(0)
}

/// Prometheus text for a gateway.
fn gateway_metrics(gateway: &Gateway) -> String {
    format!(
        "# HELP fastim_gateway_connections Client connections open on this gateway.\n\
         # TYPE fastim_gateway_connections gauge\n\
         fastim_gateway_connections{{gateway=\"{}\"}} {}\n",
        gateway.config.id,
        gateway.connection_count()
    )
}

/// Binds a listener; the error names the flag.
async fn bind(flag: &str, addr: std::net::SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("{flag}: cannot listen on {addr}"))
}

/// Starts a process's HTTP side: `/healthz` and `/readyz` from the returned
/// [`Readiness`], other paths from `routes` (404 when it has none), and prints the
/// `listening` line so scripts learn the port before the dependencies are up.
pub(crate) async fn serve_http(
    role: &str,
    addr: std::net::SocketAddr,
    routes: impl Fn(&str) -> Option<Reply> + Send + Sync + 'static,
) -> anyhow::Result<(Readiness, std::net::SocketAddr)> {
    let ready = Readiness::waiting("starting");
    let listener = bind("--http", addr).await?;
    let http_addr = listener.local_addr()?;
    let health = ready.clone();
    // Detached: it lives as long as the process.
    drop(http::spawn(
        listener,
        Arc::new(move |path: &str| {
            health
                .answer(path)
                .or_else(|| routes(path))
                .unwrap_or_else(|| Reply::text(404, "not found\n"))
        }),
    ));
    println!("fastim {role} listening http={http_addr}");
    Ok((ready, http_addr))
}

pub async fn idgen(args: IdgenArgs) -> anyhow::Result<i32> {
    let id = args.id.clone().unwrap_or_else(|| default_id("idgen"));
    let listener = bind("--grpc", args.grpc).await?;
    let grpc = listener.local_addr()?;
    let advertise = args.advertise.clone().unwrap_or_else(|| grpc.to_string());
    let (ready, http_addr) = serve_http("idgen", args.http, |_| None).await?;
    let etcd = retry(&ready, "etcd", || fastim_cluster::connect(&args.etcd)).await;
    let worker = retry(&ready, "etcd worker id", || {
        WorkerLease::acquire(etcd.clone(), WORKER_PREFIX, fastim_idgen::MAX_WORKER + 1, LEASE_TTL)
    })
    .await;
    let worker_id = worker.id;
    let service = fastim_idgen::service::IdService {
        segments: fastim_idgen::segment::SegmentAllocator::new(etcd.clone(), SEGMENT_PREFIX, args.segment_size),
        snowflake: Arc::new(Snowflake::new(worker_id)?.guarded(move || worker.is_valid())),
    };
    let key = format!("{IDGEN_PREFIX}{id}");
    let registration = retry(&ready, "etcd registration", || {
        Registration::start(etcd.clone(), key.clone(), advertise.clone(), LEASE_TTL)
    })
    .await;
    ready.set_ready();
    tracing::info!(%id, %grpc, worker_id, "fastim idgen started");
    println!("fastim idgen ready grpc={grpc} http={http_addr} id={id} worker={worker_id}");
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let shutdown = async {
        shutdown_signal().await;
        registration.stop().await;
    };
    tonic::transport::Server::builder()
        .add_service(fastim_proto::internal::id_allocator_server::IdAllocatorServer::new(
            service,
        ))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .context("idgen gRPC server")?;
    Ok(0)
}

/// The gateways of the registry, least connections first (ties by id, so clients of
/// one instant spread in a stable order).
pub fn rank_gateways(entries: &std::collections::BTreeMap<String, String>) -> Vec<serde_json::Value> {
    let mut gateways: Vec<serde_json::Value> = entries
        .iter()
        .filter_map(|(id, record)| {
            let mut v: serde_json::Value = serde_json::from_str(record).ok()?;
            v["id"] = id.clone().into();
            Some(v)
        })
        .collect();
    gateways.sort_by_key(|g| {
        (
            g["connections"].as_u64().unwrap_or(u64::MAX),
            g["id"].as_str().unwrap_or("").to_owned(),
        )
    });
    gateways
}

pub async fn lsb(args: LsbArgs) -> anyhow::Result<i32> {
    let directory: Arc<std::sync::OnceLock<Directory>> = Arc::default();
    let dir = directory.clone();
    let (ready, http_addr) = serve_http("lsb", args.http, move |path| {
        let ranked = || dir.get().map(|d| rank_gateways(&d.all())).unwrap_or_default();
        match path {
            "/v1/gateway" => Some(match ranked().first() {
                Some(best) => Reply::json(200, best.to_string()),
                None => Reply::text(503, "no gateway registered\n"),
            }),
            "/v1/gateways" => Some(Reply::json(200, serde_json::Value::from(ranked()).to_string())),
            _ => None,
        }
    })
    .await?;
    let etcd = retry(&ready, "etcd", || fastim_cluster::connect(&args.etcd)).await;
    let gateways = retry(&ready, "etcd gateway directory", || {
        Directory::start(etcd.clone(), GATEWAY_PREFIX)
    })
    .await;
    let _ = directory.set(gateways);
    ready.set_ready();
    println!("fastim lsb ready http={http_addr}");
    shutdown_signal().await;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsb_ranks_least_connections_first() {
        let mut entries = std::collections::BTreeMap::new();
        entries.insert("b".to_string(), gateway_record("g:1", "t:1", "w:1", 7));
        entries.insert("a".to_string(), gateway_record("g:2", "t:2", "w:2", 3));
        entries.insert("c".to_string(), gateway_record("g:3", "t:3", "w:3", 3));
        entries.insert("broken".to_string(), "not json".to_string());
        let ranked = rank_gateways(&entries);
        let ids: Vec<&str> = ranked.iter().map(|g| g["id"].as_str().unwrap()).collect();
        assert_eq!(ids, vec!["a", "c", "b"]);
        assert_eq!(ranked[0]["tcp"], "t:2");
        assert_eq!(gateway_grpc(&entries["b"]).as_deref(), Some("g:1"));
    }
}

/// What the singleton-job runner reports on `/metrics`.
#[derive(Default)]
struct JobState {
    leader: AtomicBool,
    token: AtomicI64,
    purged: AtomicU64,
}

impl JobState {
    fn metrics(&self) -> String {
        format!(
            "# HELP fastim_logic_job_leader 1 while this node leads the singleton jobs.\n\
             # TYPE fastim_logic_job_leader gauge\n\
             fastim_logic_job_leader {}\n\
             # HELP fastim_logic_job_fencing_token Fencing token of the current or last leadership.\n\
             # TYPE fastim_logic_job_fencing_token gauge\n\
             fastim_logic_job_fencing_token {}\n\
             # HELP fastim_logic_sessions_purged_total Expired sessions deleted by this node.\n\
             # TYPE fastim_logic_sessions_purged_total counter\n\
             fastim_logic_sessions_purged_total {}\n",
            u8::from(self.leader.load(Ordering::SeqCst)),
            self.token.load(Ordering::SeqCst),
            self.purged.load(Ordering::SeqCst)
        )
    }
}

/// Campaigns for the singleton jobs and, while leading, runs them every `every`.
/// Leadership ends when its lease-based validity runs out (before etcd can elect a
/// successor) or when the store reports a newer fencing token.
async fn run_jobs(
    etcd: fastim_cluster::EtcdClient,
    store: Arc<dyn Store>,
    id: String,
    every: Duration,
    ttl: Duration,
    state: Arc<JobState>,
) {
    loop {
        let leadership = match Leadership::campaign(etcd.clone(), JOBS_ELECTION, &id, ttl).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "jobs election failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let token = leadership.token;
        state.token.store(token, Ordering::SeqCst);
        state.leader.store(true, Ordering::SeqCst);
        tracing::info!(token, "elected to run the singleton jobs");
        while leadership.is_valid() {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            match store.purge_expired_sessions(now, token).await {
                Ok(Some(n)) => {
                    state.purged.fetch_add(n, Ordering::SeqCst);
                    if n > 0 {
                        tracing::info!(purged = n, "expired sessions purged");
                    }
                }
                Ok(None) => {
                    tracing::warn!(token, "a newer leader ran the jobs: stepping down");
                    break;
                }
                Err(e) => tracing::warn!(error = %e, "session purge failed; retried next round"),
            }
            let next = tokio::time::Instant::now() + every;
            while tokio::time::Instant::now() < next && leadership.is_valid() {
                tokio::time::sleep(Duration::from_millis(50).min(every)).await;
            }
        }
        state.leader.store(false, Ordering::SeqCst);
        tracing::info!(token, "no longer the leader of the singleton jobs");
        leadership.resign().await;
    }
}
