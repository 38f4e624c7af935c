//! The reconciler: makes the cluster hold what [`crate::desired`] says, and reports.
//!
//! `reconcile` reads top to bottom: check the Secrets the spec references (a missing
//! one is a Degraded condition, not a crash) and whether its etcd, Redis and database
//! answer (if not: Degraded too, but applied all the same); server-side apply every desired object
//! with one field manager, and delete a PodDisruptionBudget or HorizontalPodAutoscaler
//! the spec no longer asks for; write the status (replica counts from the applied
//! Deployments, conditions, the client endpoint, the gateway selector for the scale
//! subresource) through the status subresource; publish a Kubernetes Event for each
//! notable transition (created, spec changed, ready, degraded, recovered). Errors
//! become a Warning Event and go to `error_policy`, which retries with a delay; the
//! controller keeps running.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::crd::{ComponentStatus, IMCluster, IMClusterStatus, SecretKeyRef};
use crate::desired::{self, Component, FIELD_MANAGER};
use crate::metrics::Metrics;
use crate::probe::{self, Probe, Reference};

/// Errors of one reconciliation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Kubernetes API refused or failed a request.
    #[error("kubernetes api: {0}")]
    Kube(#[from] kube::Error),
    /// IMCluster is namespaced; an object without a namespace is malformed.
    #[error("the IMCluster has no namespace")]
    NoNamespace,
}

/// Result alias.
pub type Result<T> = std::result::Result<T, Error>;

/// What the reconciler needs.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// Publishes Kubernetes Events about IMClusters.
    pub recorder: Recorder,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Checks that referenced services answer (a TCP connect; tests replace it).
    pub probe: Probe,
    /// Consecutive failures per cluster (`namespace/name`), for the retry backoff.
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    /// A context whose Events name `instance` (the operator pod) as their reporter.
    pub fn new(client: Client, instance: Option<String>, metrics: Arc<Metrics>) -> Context {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance,
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            probe: probe::tcp(),
            failures: Mutex::default(),
        }
    }

    /// The same context with another reachability probe.
    pub fn with_probe(mut self, probe: Probe) -> Context {
        self.probe = probe;
        self
    }
}

/// How often a healthy cluster is looked at again even without changes.
pub const RESYNC: Duration = Duration::from_secs(300);
/// How soon a degraded cluster (missing Secret) is retried.
pub const DEGRADED_RETRY: Duration = Duration::from_secs(30);

/// Applies the desired state of `cluster`, records its status and publishes the
/// Events of what changed. A failure is published as a Warning Event too.
pub async fn reconcile(cluster: Arc<IMCluster>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let result = apply_and_report(&cluster, &ctx).await;
    ctx.metrics.reconciled(started.elapsed(), result.is_ok());
    if result.is_ok() {
        ctx.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key(&cluster));
    }
    if let Err(error) = &result {
        let notice = Notice::warning("ReconcileFailed", format!("will retry: {error}"));
        publish(&ctx, &cluster, &notice).await;
    }
    result
}

async fn apply_and_report(cluster: &IMCluster, ctx: &Context) -> Result<Action> {
    let ns = cluster.namespace().ok_or(Error::NoNamespace)?;
    let client = &ctx.client;

    let secrets = match referenced_secrets(client, &ns, cluster).await? {
        Ok(secrets) => secrets,
        Err(missing) => {
            let status = status(
                cluster,
                None,
                Some(("MissingSecret", format!("Secret {missing} does not exist"))),
            );
            patch_status(client, &ns, cluster, &status).await?;
            for notice in transitions(cluster.status.as_ref(), &status, false) {
                publish(ctx, cluster, &notice).await;
            }
            return Ok(Action::requeue(DEGRADED_RETRY));
        }
    };
    // Unreachable etcd, Redis or database: applied all the same (the pods wait for
    // it and the reference may come up any moment), but reported as Degraded.
    let unreachable = probe::first_unreachable(&ctx.probe, references(cluster, &secrets), &ns).await;

    // The Secrets' values are hashed into the pod templates: a rotated password or
    // certificate rolls the pods that read it (noticed on the next pass).
    let desired = desired::desired_with(cluster, &secrets);
    apply(client, &ns, &desired.service_account).await?;
    apply(client, &ns, &desired.config_map).await?;
    let mut deployments = Vec::new();
    for deployment in &desired.deployments {
        deployments.push(apply(client, &ns, deployment).await?);
    }
    apply(client, &ns, &desired.service).await?;
    apply(client, &ns, &desired.internal_service).await?;
    for budget in &desired.disruption_budgets {
        apply::<PodDisruptionBudget>(client, &ns, budget).await?;
    }
    for autoscaler in &desired.autoscalers {
        apply::<HorizontalPodAutoscaler>(client, &ns, autoscaler).await?;
    }
    // A budget or autoscaler switched off in the spec must go: a stale HPA would
    // keep scaling the cluster.
    prune(client, &ns, cluster, &desired.disruption_budgets).await?;
    prune(client, &ns, cluster, &desired.autoscalers).await?;
    let status = status(cluster, Some(&deployments), unreachable.clone());
    patch_status(client, &ns, cluster, &status).await?;
    for notice in transitions(cluster.status.as_ref(), &status, true) {
        publish(ctx, cluster, &notice).await;
    }
    Ok(Action::requeue(if unreachable.is_some() {
        DEGRADED_RETRY
    } else {
        RESYNC
    }))
}

/// An Event to publish about an IMCluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// Warning (something needs attention) or Normal.
    pub warning: bool,
    /// PascalCase reason, shown by `kubectl describe`.
    pub reason: String,
    /// Human-readable details.
    pub note: String,
}

impl Notice {
    fn normal(reason: &str, note: String) -> Notice {
        Notice {
            warning: false,
            reason: reason.into(),
            note,
        }
    }

    fn warning(reason: &str, note: String) -> Notice {
        Notice {
            warning: true,
            reason: reason.into(),
            note,
        }
    }
}

fn condition_status<'a>(status: Option<&'a IMClusterStatus>, type_: &str) -> Option<&'a Condition> {
    status?.conditions.iter().find(|c| c.type_ == type_)
}

/// The Events worth publishing when the status goes from `previous` to `next`
/// (`applied`: the desired objects were just applied).
pub fn transitions(previous: Option<&IMClusterStatus>, next: &IMClusterStatus, applied: bool) -> Vec<Notice> {
    let is_true = |status: Option<&IMClusterStatus>, type_: &str| {
        condition_status(status, type_).is_some_and(|c| c.status == "True")
    };
    let mut notices = Vec::new();
    let first = previous.is_none_or(|p| p.observed_generation.is_none() && p.conditions.is_empty());
    if applied && first {
        notices.push(Notice::normal(
            "Created",
            "applied the configuration, the ServiceAccount, 3 Deployments, the gateway Service and the internal Service"
                .into(),
        ));
    } else if applied && previous.and_then(|p| p.observed_generation) != next.observed_generation {
        notices.push(Notice::normal(
            "SpecChanged",
            format!(
                "applied generation {}",
                next.observed_generation.map(|g| g.to_string()).unwrap_or_default()
            ),
        ));
    }
    let (was_degraded, degraded) = (is_true(previous, "Degraded"), is_true(Some(next), "Degraded"));
    if degraded && !was_degraded {
        let c = condition_status(Some(next), "Degraded").expect("checked above");
        notices.push(Notice::warning(&c.reason, c.message.clone()));
    } else if was_degraded && !degraded {
        notices.push(Notice::normal("Recovered", "the spec can be realised again".into()));
    }
    let (was_ready, ready) = (is_true(previous, "Ready"), is_true(Some(next), "Ready"));
    let counts = |s: &IMClusterStatus| {
        format!(
            "gateway {}/{}, logic {}/{}, idgen {}/{} ready",
            s.gateway.ready_replicas,
            s.gateway.replicas,
            s.logic.ready_replicas,
            s.logic.replicas,
            s.id_allocator.ready_replicas,
            s.id_allocator.replicas
        )
    };
    if ready && !was_ready {
        notices.push(Notice::normal("Ready", counts(next)));
    } else if was_ready && !ready && !degraded {
        notices.push(Notice::warning("NotReady", counts(next)));
    }
    notices
}

/// The state `/metrics` reports for a cluster: Degraded, Ready or Progressing.
pub fn cluster_state(cluster: &IMCluster) -> &'static str {
    let status = cluster.status.as_ref();
    let is_true = |type_: &str| condition_status(status, type_).is_some_and(|c| c.status == "True");
    if is_true("Degraded") {
        "Degraded"
    } else if is_true("Ready") {
        "Ready"
    } else {
        "Progressing"
    }
}

/// Publishes an Event; a failure to publish is logged, never fatal.
async fn publish(ctx: &Context, cluster: &IMCluster, notice: &Notice) {
    let event = Event {
        type_: if notice.warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: notice.reason.clone(),
        note: Some(notice.note.chars().take(1000).collect()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, &cluster.object_ref(&())).await {
        tracing::warn!(name = %cluster.name_any(), reason = %notice.reason, %error, "cannot publish an Event");
    }
}

/// After a failed reconciliation: log, and try again later, backing off
/// exponentially per cluster ([`RETRY_FIRST`] doubling up to [`RETRY_MAX`]) until a
/// reconciliation succeeds.
pub fn error_policy(cluster: Arc<IMCluster>, error: &Error, ctx: Arc<Context>) -> Action {
    let failures = {
        let mut map = ctx.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(key(&cluster)).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    let delay = RETRY_FIRST.saturating_mul(1 << (failures - 1).min(16)).min(RETRY_MAX);
    tracing::warn!(namespace = ?cluster.namespace(), name = %cluster.name_any(), %error, failures, "reconcile failed; retrying in {delay:?}");
    Action::requeue(delay)
}

/// First retry after a failure.
pub const RETRY_FIRST: Duration = Duration::from_secs(5);
/// Longest retry delay.
pub const RETRY_MAX: Duration = Duration::from_secs(300);

fn key(cluster: &IMCluster) -> String {
    format!("{}/{}", cluster.namespace().unwrap_or_default(), cluster.name_any())
}

async fn apply<K>(client: &Client, ns: &str, object: &K) -> Result<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope> + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    Ok(api.patch(&object.name_any(), &params, &Patch::Apply(object)).await?)
}

/// Deletes the objects of kind `K` that `cluster` controls but no longer wants.
async fn prune<K>(client: &Client, ns: &str, cluster: &IMCluster, wanted: &[K]) -> Result<()>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope> + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let selector = format!(
        "app.kubernetes.io/instance={},app.kubernetes.io/managed-by={FIELD_MANAGER}",
        cluster.name_any()
    );
    let uid = cluster.uid();
    for object in api.list(&ListParams::default().labels(&selector)).await? {
        let controlled = object
            .owner_references()
            .iter()
            .any(|o| o.controller == Some(true) && Some(&o.uid) == uid.as_ref());
        let name = object.name_any();
        if controlled && !wanted.iter().any(|w| w.name_any() == name) {
            tracing::info!(namespace = ns, %name, kind = %K::kind(&K::DynamicType::default()), "deleting what the spec no longer asks for");
            match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(error) => return Err(error.into()),
            }
        }
    }
    Ok(())
}

/// The Secrets the spec references, by name; `Err(name)` names the first missing one.
async fn referenced_secrets(
    client: &Client,
    ns: &str,
    cluster: &IMCluster,
) -> Result<std::result::Result<BTreeMap<String, Secret>, String>> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let mut wanted: Vec<&str> = vec![&cluster.spec.database.url_secret.name];
    wanted.extend(cluster.spec.redis.url_secret.as_ref().map(|s| s.name.as_str()));
    wanted.extend(cluster.spec.gateway.service.tls_secret.as_deref());
    let mut found = BTreeMap::new();
    for name in wanted {
        if found.contains_key(name) {
            continue;
        }
        match api.get_opt(name).await? {
            Some(secret) => found.insert(name.to_owned(), secret),
            None => return Ok(Err(name.to_owned())),
        };
    }
    Ok(Ok(found))
}

/// The text of a Secret key, if present and UTF-8.
fn secret_text(secrets: &BTreeMap<String, Secret>, key: &SecretKeyRef) -> Option<String> {
    let data = secrets.get(&key.name)?.data.as_ref()?;
    String::from_utf8(data.get(&key.key)?.0.clone()).ok()
}

/// The services the pods will need, with the addresses to probe.
fn references(cluster: &IMCluster, secrets: &BTreeMap<String, Secret>) -> Vec<Reference> {
    let spec = &cluster.spec;
    let redis_urls = match &spec.redis.url_secret {
        Some(key) => secret_text(secrets, key)
            .map(|urls| urls.split(',').map(|u| u.trim().to_owned()).collect())
            .unwrap_or_default(),
        None => spec.redis.urls.clone(),
    };
    let addresses = |urls: &[String], port| urls.iter().filter_map(|u| probe::endpoint(u, port)).collect();
    vec![
        Reference {
            what: "etcd",
            reason: "EtcdUnreachable",
            addresses: addresses(&spec.etcd.endpoints, 2379),
        },
        Reference {
            what: "Redis",
            reason: "RedisUnreachable",
            addresses: addresses(&redis_urls, 6379),
        },
        Reference {
            what: "the database",
            reason: "DatabaseUnreachable",
            addresses: secret_text(secrets, &spec.database.url_secret)
                .and_then(|url| probe::endpoint(&url, 5432))
                .into_iter()
                .collect(),
        },
    ]
}

fn component_status(cluster: &IMCluster, component: Component, deployments: Option<&[Deployment]>) -> ComponentStatus {
    let name = desired::object_name(cluster, component);
    let applied = deployments.and_then(|d| d.iter().find(|d| d.metadata.name.as_deref() == Some(name.as_str())));
    let status = applied.and_then(|d| d.status.as_ref());
    ComponentStatus {
        replicas: applied
            .and_then(|d| d.spec.replicas)
            .unwrap_or_else(|| desired::replicas(cluster, component).unwrap_or(0)),
        ready_replicas: status.and_then(|s| s.ready_replicas).unwrap_or(0),
        selector: Some(desired::selector_string(cluster, component)),
    }
}

/// The status to record. `degraded` carries (reason, message) when the spec cannot be realised.
pub fn status(
    cluster: &IMCluster,
    deployments: Option<&[Deployment]>,
    degraded: Option<(&str, String)>,
) -> IMClusterStatus {
    let gateway = component_status(cluster, Component::Gateway, deployments);
    let logic = component_status(cluster, Component::Logic, deployments);
    let id_allocator = component_status(cluster, Component::IdAllocator, deployments);
    let all_ready = [&gateway, &logic, &id_allocator]
        .iter()
        .all(|c| c.replicas > 0 && c.ready_replicas >= c.replicas);
    let previous = cluster
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let generation = cluster.metadata.generation;
    let (ready, progressing, degraded_condition) = match &degraded {
        Some((reason, message)) => (
            ("False", *reason, message.clone()),
            (
                "False",
                *reason,
                "waiting for the spec to become realisable".to_string(),
            ),
            ("True", *reason, message.clone()),
        ),
        None if all_ready => (
            (
                "True",
                "AllReplicasReady",
                "every component has all its replicas ready".to_string(),
            ),
            ("False", "Stable", "nothing to roll out".to_string()),
            ("False", "AsExpected", "the spec is realised".to_string()),
        ),
        None => (
            (
                "False",
                "ReplicasNotReady",
                "waiting for replicas to become ready".to_string(),
            ),
            (
                "True",
                "RollingOut",
                "replicas are being created or updated".to_string(),
            ),
            ("False", "AsExpected", "the spec is realised".to_string()),
        ),
    };
    let conditions = vec![
        condition(previous, "Ready", ready, generation),
        condition(previous, "Progressing", progressing, generation),
        condition(previous, "Degraded", degraded_condition, generation),
    ];
    IMClusterStatus {
        observed_generation: generation,
        conditions,
        gateway,
        logic,
        id_allocator,
        endpoint: Some(desired::client_endpoint(cluster)),
    }
}

/// A condition whose `lastTransitionTime` changes only when its status flips.
fn condition(
    previous: &[Condition],
    type_: &str,
    (status, reason, message): (&str, &str, String),
    generation: Option<i64>,
) -> Condition {
    let last = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone());
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: last.unwrap_or_else(|| Time(k8s_openapi::jiff::Timestamp::now())),
    }
}

async fn patch_status(client: &Client, ns: &str, cluster: &IMCluster, status: &IMClusterStatus) -> Result<()> {
    let api: Api<IMCluster> = Api::namespaced(client.clone(), ns);
    let patch = serde_json::json!({
        "apiVersion": IMCluster::api_version(&()),
        "kind": IMCluster::kind(&()),
        "status": status,
    });
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch_status(&cluster.name_any(), &params, &Patch::Apply(&patch))
        .await?;
    Ok(())
}
