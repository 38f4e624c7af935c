//! The reconciler: makes the cluster hold what [`crate::desired`] says, and reports.
//!
//! `reconcile` reads top to bottom: check the Secrets the spec references (a missing
//! one is a Degraded condition, not a crash), server-side apply every desired object
//! with one field manager, then write the status (replica counts from the applied
//! Deployments, conditions, the client endpoint, the gateway selector for the scale
//! subresource) through the status subresource. Errors go to `error_policy`, which
//! retries with a delay; the controller keeps running.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::crd::{ComponentStatus, IMCluster, IMClusterStatus, SecretKeyRef};
use crate::desired::{self, Component, FIELD_MANAGER};

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
}

/// How often a healthy cluster is looked at again even without changes.
pub const RESYNC: Duration = Duration::from_secs(300);
/// How soon a degraded cluster (missing Secret) is retried.
pub const DEGRADED_RETRY: Duration = Duration::from_secs(30);

/// Applies the desired state of `cluster` and records its status.
pub async fn reconcile(cluster: Arc<IMCluster>, ctx: Arc<Context>) -> Result<Action> {
    let ns = cluster.namespace().ok_or(Error::NoNamespace)?;
    let client = &ctx.client;

    if let Some(missing) = missing_secret(client, &ns, &cluster).await? {
        let status = status(
            &cluster,
            None,
            Some(("MissingSecret", format!("Secret {missing} does not exist"))),
        );
        patch_status(client, &ns, &cluster, status).await?;
        return Ok(Action::requeue(DEGRADED_RETRY));
    }

    let desired = desired::desired(&cluster);
    apply(client, &ns, &desired.service_account).await?;
    apply(client, &ns, &desired.config_map).await?;
    let mut deployments = Vec::new();
    for deployment in &desired.deployments {
        deployments.push(apply(client, &ns, deployment).await?);
    }
    apply(client, &ns, &desired.service).await?;
    for budget in &desired.disruption_budgets {
        apply::<PodDisruptionBudget>(client, &ns, budget).await?;
    }
    for autoscaler in &desired.autoscalers {
        apply::<HorizontalPodAutoscaler>(client, &ns, autoscaler).await?;
    }
    let status = status(&cluster, Some(&deployments), None);
    patch_status(client, &ns, &cluster, status).await?;
    Ok(Action::requeue(RESYNC))
}

/// After a failed reconciliation: log, and try again later.
pub fn error_policy(cluster: Arc<IMCluster>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(namespace = ?cluster.namespace(), name = %cluster.name_any(), %error, "reconcile failed; retrying in 15 s");
    Action::requeue(Duration::from_secs(15))
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

/// The first referenced Secret that does not exist, as `name`.
async fn missing_secret(client: &Client, ns: &str, cluster: &IMCluster) -> Result<Option<String>> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let mut wanted: Vec<&SecretKeyRef> = vec![&cluster.spec.database.url_secret];
    wanted.extend(cluster.spec.redis.url_secret.as_ref());
    for secret in wanted {
        if secrets.get_opt(&secret.name).await?.is_none() {
            return Ok(Some(secret.name.clone()));
        }
    }
    Ok(None)
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

async fn patch_status(client: &Client, ns: &str, cluster: &IMCluster, status: IMClusterStatus) -> Result<()> {
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
