//! The `IMCluster` custom resource (`fastim.io/v1alpha1`).
//!
//! One IMCluster is one FastIM deployment: gateways (client connections, the
//! autoscaled tier), logic nodes and ID allocators, wired to etcd, Redis and
//! PostgreSQL that live outside it. Credentials are only ever Secret references.
//! Cross-field rules are CEL (`x-kubernetes-validations`), checked by the API server
//! and, in tests, locally.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, ResourceRequirements, Toleration, TopologySpreadConstraint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Desired state of a FastIM cluster.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "fastim.io",
    version = "v1alpha1",
    kind = "IMCluster",
    plural = "imclusters",
    shortname = "imc",
    namespaced,
    status = "IMClusterStatus",
    scale = r#"{"specReplicasPath":".spec.gateway.replicas","statusReplicasPath":".status.gateway.readyReplicas","labelSelectorPath":".status.gateway.selector"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Gateways","type":"integer","jsonPath":".status.gateway.readyReplicas"}"#,
    printcolumn = r#"{"name":"Logic","type":"integer","jsonPath":".status.logic.readyReplicas"}"#,
    printcolumn = r#"{"name":"Endpoint","type":"string","jsonPath":".status.endpoint"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    cel
)]
#[serde(rename_all = "camelCase")]
pub struct IMClusterSpec {
    /// The one FastIM image (all components run `fastim <component>`).
    #[x_kube(validation = Rule::new("self != ''").message("image must not be empty"))]
    pub image: String,
    /// Image pull policy (Always, IfNotPresent, Never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self in ['Always', 'IfNotPresent', 'Never']").message("imagePullPolicy must be Always, IfNotPresent or Never"))]
    pub image_pull_policy: Option<String>,
    /// Names of image pull Secrets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<String>,
    /// Client connections: the tier that scales with users.
    #[serde(default)]
    pub gateway: GatewaySpec,
    /// Accounts, chat, storage.
    #[serde(default)]
    pub logic: ComponentSpec,
    /// Unique ids (segment and snowflake).
    #[serde(default)]
    pub id_allocator: ComponentSpec,
    /// etcd: discovery, ids, leader election.
    pub etcd: EtcdRef,
    /// Redis: routes and presence.
    pub redis: RedisRef,
    /// PostgreSQL: the durable store.
    pub database: DatabaseRef,
    /// Extra settings for every component, as FASTIM_* environment variables
    /// (see docs/configuration.md), e.g. `FASTIM_HEARTBEAT_MS: "20000"`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[x_kube(validation = Rule::new("self.all(k, k.startsWith('FASTIM_'))").message("config keys must be FASTIM_* settings"))]
    pub config: BTreeMap<String, String>,
}

/// Settings every component shares.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.autoscaling) || !has(self.replicas) || (self.replicas >= self.autoscaling.minReplicas && self.replicas <= self.autoscaling.maxReplicas)").message("replicas must lie within autoscaling.minReplicas..maxReplicas"))]
pub struct ComponentSpec {
    /// Pods (default 2); with autoscaling, the starting point.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0").message("replicas must not be negative"))]
    pub replicas: Option<i32>,
    /// Container resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Pod affinity and anti-affinity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Pod tolerations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Topology spread of the pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
    /// Node selector.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// PodDisruptionBudget (none when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disruption_budget: Option<DisruptionBudget>,
    /// HorizontalPodAutoscaler (none when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,
}

/// A PodDisruptionBudget: exactly one of the two.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.minAvailable) != has(self.maxUnavailable)").message("disruptionBudget needs exactly one of minAvailable and maxUnavailable"))]
pub struct DisruptionBudget {
    /// Pods that must stay available.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_available: Option<i32>,
    /// Pods that may be unavailable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<i32>,
}

/// Autoscaling of a component.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas").message("autoscaling.minReplicas must not exceed autoscaling.maxReplicas"))]
#[x_kube(validation = Rule::new("has(self.targetCpuUtilization) || has(self.targetConnectionsPerPod)").message("autoscaling needs targetCpuUtilization or targetConnectionsPerPod"))]
pub struct Autoscaling {
    /// Fewest pods.
    #[x_kube(validation = Rule::new("self >= 1").message("autoscaling.minReplicas must be at least 1"))]
    pub min_replicas: i32,
    /// Most pods.
    pub max_replicas: i32,
    /// Average CPU utilization to aim for, in percent of the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_cpu_utilization: Option<i32>,
    /// Gateways only: client connections per pod to aim for (the
    /// `fastim_gateway_connections` metric through the Pods metrics API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_connections_per_pod: Option<i64>,
}

/// The gateway tier: a component plus its client-facing Service and draining.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    /// Replicas, resources, scheduling, disruption budget, autoscaling.
    #[serde(flatten)]
    pub component: ComponentSpec,
    /// The Service clients connect through.
    #[serde(default)]
    pub service: GatewayService,
    /// How a gateway leaves: its clients are asked to reconnect elsewhere.
    #[serde(default)]
    pub drain: Drain,
}

/// The client-facing Service of the gateways.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayService {
    /// ClusterIP, NodePort or LoadBalancer.
    #[serde(rename = "type", default = "default_service_type")]
    #[x_kube(validation = Rule::new("self in ['ClusterIP', 'NodePort', 'LoadBalancer']").message("service.type must be ClusterIP, NodePort or LoadBalancer"))]
    pub type_: String,
    /// Port of FastIM frames over TCP.
    #[serde(default = "default_tcp_port")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 65535").message("service.tcpPort must be a port number"))]
    pub tcp_port: i32,
    /// Port of the WebSocket listener.
    #[serde(default = "default_ws_port")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 65535").message("service.wsPort must be a port number"))]
    pub ws_port: i32,
    /// Annotations of the Service (load-balancer settings).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Secret (type kubernetes.io/tls: tls.crt, tls.key) with the gateway's certificate:
    /// when set, both ports require TLS (frames inside TLS, and wss://).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_secret: Option<String>,
}

fn default_service_type() -> String {
    "ClusterIP".into()
}
fn default_tcp_port() -> i32 {
    7000
}
fn default_ws_port() -> i32 {
    7001
}

impl Default for GatewayService {
    fn default() -> Self {
        GatewayService {
            type_: default_service_type(),
            tcp_port: default_tcp_port(),
            ws_port: default_ws_port(),
            annotations: BTreeMap::new(),
            tls_secret: None,
        }
    }
}

/// Draining of a gateway that stops (rolling update, scale-down).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Drain {
    /// Clients per second asked to reconnect elsewhere.
    #[serde(default = "default_drain_rate")]
    #[x_kube(validation = Rule::new("self >= 1").message("drain.ratePerSecond must be at least 1"))]
    pub rate_per_second: i32,
    /// Longest drain before the pod is stopped (its termination grace period).
    #[serde(default = "default_grace")]
    #[x_kube(validation = Rule::new("self >= 5").message("drain.gracePeriodSeconds must be at least 5"))]
    pub grace_period_seconds: i64,
}

fn default_drain_rate() -> i32 {
    500
}
fn default_grace() -> i64 {
    60
}

impl Default for Drain {
    fn default() -> Self {
        Drain {
            rate_per_second: default_drain_rate(),
            grace_period_seconds: default_grace(),
        }
    }
}

/// A key of a Secret in the IMCluster's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Secret name.
    pub name: String,
    /// Key in the Secret.
    pub key: String,
}

/// Where etcd is.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct EtcdRef {
    /// Client URLs, e.g. `http://etcd-0.etcd:2379`.
    #[x_kube(validation = Rule::new("size(self) > 0").message("etcd.endpoints must name at least one endpoint"))]
    pub endpoints: Vec<String>,
}

/// Where Redis is.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RedisRef {
    /// `redis://host:port/` URLs (several for a Redis Cluster), without a password.
    #[x_kube(validation = Rule::new("size(self) > 0").message("redis.urls must name at least one URL"))]
    pub urls: Vec<String>,
    /// The URLs are seeds of a Redis Cluster.
    #[serde(default)]
    pub cluster: bool,
    /// Secret key holding the URL(s) with credentials (`redis://:password@host:port/`,
    /// comma-separated); when set it is used instead of `urls`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_secret: Option<SecretKeyRef>,
}

/// Where PostgreSQL is: the connection string lives in a Secret, never in the spec.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseRef {
    /// Secret key holding the connection string (`postgres://user:password@host:port/db`).
    pub url_secret: SecretKeyRef,
    /// Connections per logic pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<i32>,
}

/// Observed state.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IMClusterStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Progressing, Degraded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Gateways (also the scale subresource's status).
    #[serde(default)]
    pub gateway: ComponentStatus,
    /// Logic nodes.
    #[serde(default)]
    pub logic: ComponentStatus,
    /// ID allocators.
    #[serde(default)]
    pub id_allocator: ComponentStatus,
    /// Where clients connect (the gateway Service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

/// Replica counts of one component.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComponentStatus {
    /// Desired pods.
    #[serde(default)]
    pub replicas: i32,
    /// Ready pods.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Label selector of the pods (for the scale subresource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
}
