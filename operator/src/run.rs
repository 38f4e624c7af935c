//! `fastim operator run`: wait for the API and the CRD, win the leader Lease, then
//! run the kube-rs `Controller` over IMClusters and everything they own, until
//! SIGTERM (or a lost Lease).
//!
//! Standbys are ready (they serve `/healthz`, `/readyz` and `/metrics`) while they
//! wait for the Lease; a leader that cannot renew stops with an error so the pod
//! restarts as a standby instead of acting beside a new leader.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, ListParams};
use kube::runtime::reflector::Store;
use kube::runtime::{Controller, watcher};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use crate::controller::{self, Context};
use crate::crd::IMCluster;
use crate::desired::FIELD_MANAGER;
use crate::leader::{Attempt, LeaseConfig, LeaseLock};
use crate::metrics::Metrics;

/// How long a stopping controller may take to finish its running reconciliations.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// How `fastim operator run` was asked to work.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Watch only this namespace (`None`: all namespaces).
    pub namespace: Option<String>,
    /// Leader election (`None`: act at once; only for a single local process).
    pub lease: Option<LeaseConfig>,
    /// The pod name, named as the reporter of Events.
    pub instance: Option<String>,
}

/// Why the operator stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The leader could not renew its Lease in time; another may lead now.
    #[error("lost the leader Lease {0}: {1}")]
    LostLease(String, String),
}

/// Called with what the operator waits for (`None`: ready).
pub type OnWaiting = Box<dyn Fn(Option<&str>) + Send + Sync>;

/// A shutdown trigger: completes when the process should stop.
pub type Shutdown = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The running operator, shared with the HTTP side.
#[derive(Default)]
pub struct Operator {
    /// Counters and gauges.
    pub metrics: Arc<Metrics>,
    store: OnceLock<Store<IMCluster>>,
}

impl Operator {
    /// `/metrics`: the counters plus the watched clusters by state.
    pub fn metrics_text(&self) -> String {
        let states: Vec<&str> = self
            .store
            .get()
            .map(|store| store.state().iter().map(|c| controller::cluster_state(c)).collect())
            .unwrap_or_default();
        self.metrics.render(&states)
    }

    /// Runs until `shutdown` completes (Ok) or the Lease is lost (Err).
    pub async fn run(
        self: Arc<Self>,
        client: Client,
        options: RunOptions,
        waiting: OnWaiting,
        shutdown: Shutdown,
    ) -> Result<(), RunError> {
        let shutdown = futures_util::FutureExt::shared(shutdown);
        tokio::select! {
            _ = shutdown.clone() => return Ok(()),
            _ = wait_for_api(&client, &options, &waiting) => {}
        }
        waiting(None);
        let lock = options
            .lease
            .clone()
            .map(|config| LeaseLock::new(client.clone(), config));
        if let Some(lock) = &lock {
            tokio::select! {
                _ = shutdown.clone() => return Ok(()),
                _ = acquire(lock) => {}
            }
        }
        self.metrics.set_leader(true);
        let stop = shutdown.clone();
        let outcome = tokio::select! {
            _ = self.clone().control(client, &options, shutdown.clone()) => Ok(()),
            lost = renew(lock.as_ref()) => Err(lost),
            // The Controller finishes running reconciliations on shutdown, but one
            // stopped before its first list completes waits forever: bound it.
            _ = async move {
                stop.await;
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } => {
                tracing::warn!("the controller did not stop within {SHUTDOWN_GRACE:?}; stopping anyway");
                Ok(())
            }
        };
        self.metrics.set_leader(false);
        if let Some(lock) = &lock
            && outcome.is_ok()
        {
            match lock.release().await {
                Ok(()) => tracing::info!(lease = %lock.config().name, "released the leader Lease"),
                Err(error) => tracing::warn!(%error, "cannot release the leader Lease; it expires by itself"),
            }
        }
        outcome
    }

    /// The kube-rs Controller, until `shutdown`.
    async fn control(
        self: Arc<Self>,
        client: Client,
        options: &RunOptions,
        shutdown: futures_util::future::Shared<Shutdown>,
    ) {
        let ns = options.namespace.as_deref();
        let owned = watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={FIELD_MANAGER}"));
        let controller = Controller::new(scoped::<IMCluster>(&client, ns), watcher::Config::default());
        let _ = self.store.set(controller.store());
        let ctx = Arc::new(Context::new(
            client.clone(),
            options.instance.clone(),
            self.metrics.clone(),
        ));
        tracing::info!(namespace = ns.unwrap_or("(all)"), "controller started");
        controller
            .owns(scoped::<Deployment>(&client, ns), owned.clone())
            .owns(scoped::<ConfigMap>(&client, ns), owned.clone())
            .owns(scoped::<Service>(&client, ns), owned.clone())
            .owns(scoped::<ServiceAccount>(&client, ns), owned.clone())
            .owns(scoped::<PodDisruptionBudget>(&client, ns), owned.clone())
            .owns(scoped::<HorizontalPodAutoscaler>(&client, ns), owned)
            .graceful_shutdown_on(async move {
                shutdown.await;
            })
            .run(controller::reconcile, controller::error_policy, ctx)
            .for_each(|result| async move {
                match result {
                    Ok((object, _)) => {
                        tracing::debug!(namespace = ?object.namespace, name = %object.name, "reconciled")
                    }
                    Err(error) => tracing::debug!(%error, "reconcile did not complete"),
                }
            })
            .await;
        tracing::info!("controller stopped");
    }
}

fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = NamespaceResourceScope> + Clone + DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Returns once the API answers and serves the IMCluster CRD; says what it waits for.
async fn wait_for_api(client: &Client, options: &RunOptions, waiting: &OnWaiting) {
    let clusters = scoped::<IMCluster>(client, options.namespace.as_deref());
    let mut last = String::new();
    loop {
        let problem = match client.apiserver_version().await {
            Err(error) => format!("the Kubernetes API: {error}"),
            Ok(_) => match clusters.list(&ListParams::default().limit(1)).await {
                Ok(_) => return,
                Err(kube::Error::Api(status)) if status.code == 404 => {
                    "the IMCluster CRD (install crds/imcluster.yaml or the Helm chart)".to_string()
                }
                Err(error) => format!("access to IMClusters: {error}"),
            },
        };
        if problem != last {
            tracing::warn!("waiting for {problem}; retrying every 5 s");
            last = problem;
        }
        waiting(Some(&last));
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// Tries until this process holds the Lease.
async fn acquire(lock: &LeaseLock) {
    let mut following = String::new();
    loop {
        match lock.try_acquire_or_renew().await {
            Ok(Attempt::Leading) => {
                tracing::info!(lease = %lock.config().name, identity = %lock.config().identity, "leading");
                return;
            }
            Ok(Attempt::Following(holder)) => {
                if holder != following {
                    tracing::info!(%holder, "standing by: another operator leads");
                    following = holder;
                }
            }
            Err(error) => tracing::warn!(%error, "cannot read or take the leader Lease"),
        }
        tokio::time::sleep(lock.config().retry_period).await;
    }
}

/// Renews the Lease until it cannot; returns why. Never returns without a Lease.
async fn renew(lock: Option<&LeaseLock>) -> RunError {
    let Some(lock) = lock else {
        return std::future::pending().await;
    };
    let config = lock.config();
    let mut renewed = Instant::now();
    loop {
        tokio::time::sleep(config.retry_period).await;
        match lock.try_acquire_or_renew().await {
            Ok(Attempt::Leading) => renewed = Instant::now(),
            Ok(Attempt::Following(holder)) => {
                return RunError::LostLease(config.name.clone(), format!("{holder} holds it now"));
            }
            Err(error) => {
                // Stop before the Lease could expire under us: a standby may take it then.
                let deadline = config.lease_duration.saturating_sub(config.retry_period);
                if renewed.elapsed() >= deadline {
                    return RunError::LostLease(config.name.clone(), format!("no renewal for {deadline:?}: {error}"));
                }
                tracing::warn!(%error, "cannot renew the leader Lease; retrying");
            }
        }
    }
}
