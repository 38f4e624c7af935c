//! FastIM cluster membership in etcd.
//!
//! - [`Registration`]: a key held under a lease that is kept alive in the
//!   background; it vanishes within the lease TTL when its process dies. Gateways
//!   register `/fastim/gateways/<id>` (their internal address and live connection
//!   count), logic nodes `/fastim/logic/<id>`.
//! - [`Directory`]: a live copy of every key under a prefix (list, then watch; a
//!   broken watch is re-listed). Logic finds gateways through it, gateways find logic
//!   nodes, the LSB ranks gateways by connection count.
//! - [`Leadership`]: leader election through etcd's election API, for singleton
//!   jobs. The leader's fencing token is the revision at which it won; it stops
//!   acting when its lease-based validity ends, which is before etcd can elect a
//!   successor, and stores check the token so a stale leader's work cannot commit.
//! - [`WorkerLease`]: a snowflake worker id held under a lease, with fencing: once
//!   the lease is lost, [`WorkerLease::is_valid`] turns false before any other process
//!   can take the id, and the holder must stop issuing ids.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, LeaderKey, PutOptions, ResignOptions, Txn,
    TxnOp, WatchOptions,
};
use tokio::sync::watch;

/// Errors talking to etcd.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// etcd could not be reached or refused the request.
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    /// No worker id was free.
    #[error("all {0} worker ids are taken")]
    NoWorkerId(u16),
}

/// Result alias.
pub type Result<T> = std::result::Result<T, ClusterError>;

/// The etcd client these helpers take.
pub use etcd_client::Client as EtcdClient;

/// Connects to etcd (`http://host:port`, comma-separated endpoints) with short timeouts.
pub async fn connect(endpoints: &str) -> Result<Client> {
    let endpoints: Vec<&str> = endpoints.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(3))
        .with_timeout(Duration::from_secs(5))
        .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5));
    Ok(Client::connect(endpoints, Some(options)).await?)
}

/// A key kept in etcd under a lease while this handle lives. [`Registration::stop`]
/// removes it at once; dropping the handle lets it expire with the lease.
pub struct Registration {
    /// The value to keep; changing it re-puts the key.
    value: watch::Sender<String>,
    /// The keep-alive task.
    task: tokio::task::JoinHandle<()>,
    /// For revoking on stop.
    client: Client,
    /// The lease currently holding the key (replaced after an etcd outage).
    current: Arc<AtomicI64>,
}

impl Registration {
    /// Registers `key = value` under a lease of `ttl`, kept alive (and re-created
    /// after an etcd outage) in the background.
    pub async fn start(client: Client, key: String, value: String, ttl: Duration) -> Result<Registration> {
        let mut client = client;
        let lease = client.lease_grant(ttl.as_secs().max(2) as i64, None).await?.id();
        client
            .put(key.as_str(), value.as_str(), Some(PutOptions::new().with_lease(lease)))
            .await?;
        let (tx, rx) = watch::channel(value);
        let current = Arc::new(AtomicI64::new(lease));
        let task = tokio::spawn(keep(client.clone(), key, ttl, rx, current.clone()));
        Ok(Registration {
            value: tx,
            task,
            client,
            current,
        })
    }

    /// Removes the key now (revoking its lease) and stops keeping it.
    pub async fn stop(self) {
        self.task.abort();
        let lease = self.current.load(Ordering::SeqCst);
        let mut client = self.client.clone();
        if let Err(e) = tokio::time::timeout(Duration::from_secs(2), client.lease_revoke(lease)).await {
            tracing::warn!(error = %e, "could not revoke the registration; it expires with its lease");
        }
    }

    /// Replaces the registered value (e.g. a new connection count).
    pub fn update(&self, value: String) {
        self.value.send_if_modified(|v| {
            let changed = *v != value;
            *v = value;
            changed
        });
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn keep(
    mut client: Client,
    key: String,
    ttl: Duration,
    mut value: watch::Receiver<String>,
    current: Arc<AtomicI64>,
) {
    let every = (ttl / 3).max(Duration::from_millis(500));
    loop {
        let lease = current.load(Ordering::SeqCst);
        let result: Result<()> = async {
            let (mut keeper, mut responses) = client.lease_keep_alive(lease).await?;
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        keeper.keep_alive().await?;
                        match responses.message().await? {
                            Some(r) if r.ttl() > 0 => {}
                            _ => return Ok(()), // lease expired: re-register below
                        }
                    }
                    changed = value.changed() => {
                        if changed.is_err() {
                            let _ = client.lease_revoke(lease).await;
                            return Ok(());
                        }
                        let v = value.borrow_and_update().clone();
                        client.put(key.as_str(), v, Some(PutOptions::new().with_lease(lease))).await?;
                    }
                }
            }
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(%key, error = %e, "etcd registration interrupted; retrying");
        }
        if value.has_changed().is_err() {
            return;
        }
        // Re-create the lease and the key.
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let attempt: Result<i64> = async {
                let id = client.lease_grant(ttl.as_secs().max(2) as i64, None).await?.id();
                let v = value.borrow().clone();
                client
                    .put(key.as_str(), v, Some(PutOptions::new().with_lease(id)))
                    .await?;
                Ok(id)
            }
            .await;
            match attempt {
                Ok(id) => {
                    current.store(id, Ordering::SeqCst);
                    tracing::info!(%key, "etcd registration restored");
                    break;
                }
                Err(e) => tracing::warn!(%key, error = %e, "etcd unavailable; retrying registration"),
            }
        }
    }
}

/// A live view of every key under a prefix: key (without the prefix) -> value.
#[derive(Clone)]
pub struct Directory {
    entries: Arc<RwLock<BTreeMap<String, String>>>,
    task: Arc<tokio::task::JoinHandle<()>>,
}

impl Directory {
    /// Lists `prefix` and keeps the view current by watching it.
    pub async fn start(client: Client, prefix: &str) -> Result<Directory> {
        let mut client = client;
        let entries = Arc::new(RwLock::new(BTreeMap::new()));
        let revision = list(&mut client, prefix, &entries).await?;
        let task = tokio::spawn(follow(client, prefix.to_owned(), entries.clone(), revision));
        Ok(Directory {
            entries,
            task: Arc::new(task),
        })
    }

    /// The value of one key.
    pub fn get(&self, key: &str) -> Option<String> {
        self.entries.read().unwrap_or_else(|e| e.into_inner()).get(key).cloned()
    }

    /// Every entry.
    pub fn all(&self) -> BTreeMap<String, String> {
        self.entries.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for Directory {
    fn drop(&mut self) {
        if Arc::strong_count(&self.task) == 1 {
            self.task.abort();
        }
    }
}

async fn list(client: &mut Client, prefix: &str, entries: &RwLock<BTreeMap<String, String>>) -> Result<i64> {
    let response = client.get(prefix, Some(GetOptions::new().with_prefix())).await?;
    let mut map = BTreeMap::new();
    for kv in response.kvs() {
        if let (Ok(k), Ok(v)) = (kv.key_str(), kv.value_str()) {
            map.insert(k.trim_start_matches(prefix).to_owned(), v.to_owned());
        }
    }
    *entries.write().unwrap_or_else(|e| e.into_inner()) = map;
    Ok(response.header().map(|h| h.revision()).unwrap_or(0))
}

async fn follow(mut client: Client, prefix: String, entries: Arc<RwLock<BTreeMap<String, String>>>, mut revision: i64) {
    loop {
        let result: Result<()> = async {
            let options = WatchOptions::new().with_prefix().with_start_revision(revision + 1);
            let mut stream = client.watch(prefix.as_str(), Some(options)).await?;
            while let Some(response) = stream.message().await? {
                if response.canceled() {
                    return Ok(());
                }
                let mut map = entries.write().unwrap_or_else(|e| e.into_inner());
                for event in response.events() {
                    let Some(kv) = event.kv() else { continue };
                    let Ok(key) = kv.key_str() else { continue };
                    let key = key.trim_start_matches(prefix.as_str()).to_owned();
                    revision = revision.max(kv.mod_revision());
                    match event.event_type() {
                        EventType::Put => {
                            map.insert(key, kv.value_str().unwrap_or_default().to_owned());
                        }
                        EventType::Delete => {
                            map.remove(&key);
                        }
                    }
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(%prefix, error = %e, "etcd watch broken; re-listing");
        }
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            match list(&mut client, &prefix, &entries).await {
                Ok(r) => {
                    revision = r;
                    break;
                }
                Err(e) => tracing::warn!(%prefix, error = %e, "etcd unavailable; retrying"),
            }
        }
    }
}

/// Leadership of an etcd election, held under a lease.
pub struct Leadership {
    /// Fencing token: the revision at which this leadership was won; a later
    /// leader always has a larger one.
    pub token: i64,
    valid_until: watch::Receiver<Instant>,
    leader: LeaderKey,
    client: Client,
    task: tokio::task::JoinHandle<()>,
}

impl Leadership {
    /// Campaigns in `election` until this process leads (it may wait for a long time).
    pub async fn campaign(client: Client, election: &str, value: &str, ttl: Duration) -> Result<Leadership> {
        let mut client = client;
        let ttl_secs = ttl.as_secs().max(2) as i64;
        let lease = client.lease_grant(ttl_secs, None).await?.id();
        let margin = Duration::from_secs(ttl_secs as u64) / 3;
        // Keep the lease alive while waiting to lead, and after.
        let (tx, rx) = watch::channel(Instant::now() + Duration::from_secs(ttl_secs as u64) - margin);
        let task = tokio::spawn(keep_worker(client.clone(), lease, ttl_secs, margin, tx));
        let won = client.campaign(election, value, lease).await;
        let won = match won {
            Ok(won) => won,
            Err(e) => {
                task.abort();
                let _ = client.lease_revoke(lease).await;
                return Err(e.into());
            }
        };
        let Some(leader) = won.leader().cloned() else {
            task.abort();
            return Err(ClusterError::Etcd(etcd_client::Error::ElectError(
                "no leader key in the answer".into(),
            )));
        };
        Ok(Leadership {
            token: leader.rev(),
            valid_until: rx,
            leader,
            client,
            task,
        })
    }

    /// Whether this process may still act as the leader. Once false it stays false.
    pub fn is_valid(&self) -> bool {
        Instant::now() < *self.valid_until.borrow()
    }

    /// Gives the leadership up now.
    pub async fn resign(self) {
        self.task.abort();
        let mut client = self.client.clone();
        let _ = client
            .resign(Some(ResignOptions::new().with_leader(self.leader.clone())))
            .await;
        let _ = client.lease_revoke(self.leader.lease()).await;
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A worker id held under an etcd lease.
pub struct WorkerLease {
    /// The id.
    pub id: u16,
    /// Until when the id is certainly ours: the last keep-alive's answer plus the TTL
    /// it granted, minus a safety margin.
    valid_until: watch::Receiver<Instant>,
    task: tokio::task::JoinHandle<()>,
}

impl WorkerLease {
    /// Takes the lowest free worker id under `prefix` (`prefix<n>`, n < `max`).
    pub async fn acquire(client: Client, prefix: &str, max: u16, ttl: Duration) -> Result<WorkerLease> {
        let mut client = client;
        let ttl_secs = ttl.as_secs().max(2) as i64;
        let lease = client.lease_grant(ttl_secs, None).await?.id();
        let granted = Instant::now();
        for id in 0..max {
            let key = format!("{prefix}{id}");
            let txn = Txn::new()
                .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    key.as_str(),
                    lease.to_string(),
                    Some(PutOptions::new().with_lease(lease)),
                )]);
            if client.txn(txn).await?.succeeded() {
                let margin = Duration::from_secs(ttl_secs as u64) / 3;
                let (tx, rx) = watch::channel(granted + Duration::from_secs(ttl_secs as u64) - margin);
                let task = tokio::spawn(keep_worker(client, lease, ttl_secs, margin, tx));
                return Ok(WorkerLease {
                    id,
                    valid_until: rx,
                    task,
                });
            }
        }
        let _ = client.lease_revoke(lease).await;
        Err(ClusterError::NoWorkerId(max))
    }

    /// Whether the id may still be used. Once false it stays false: the process must
    /// stop issuing ids (another process may take the id after the lease expires).
    pub fn is_valid(&self) -> bool {
        Instant::now() < *self.valid_until.borrow()
    }
}

impl Drop for WorkerLease {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn keep_worker(mut client: Client, lease: i64, ttl_secs: i64, margin: Duration, valid: watch::Sender<Instant>) {
    let result: Result<()> = async {
        let (mut keeper, mut responses) = client.lease_keep_alive(lease).await?;
        let mut tick = tokio::time::interval(Duration::from_secs(ttl_secs as u64) / 4);
        loop {
            tick.tick().await;
            let sent = Instant::now();
            keeper.keep_alive().await?;
            match responses.message().await? {
                Some(r) if r.ttl() > 0 => {
                    let _ = valid.send(sent + Duration::from_secs(r.ttl() as u64) - margin);
                }
                _ => return Ok(()),
            }
        }
    }
    .await;
    tracing::error!(lease, error = ?result.err(), "worker id lease lost: ids can no longer be issued");
}
