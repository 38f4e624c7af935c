//! What Kubernetes should hold for an IMCluster: pure functions, no API calls.
//!
//! Every object carries the cluster's labels and a controller owner reference (so
//! deleting the IMCluster deletes them). The ConfigMap holds the rendered FASTIM_*
//! settings; its hash is stamped on the pod templates, so a configuration change
//! rolls the pods. Secrets are only referenced (the database URL, Redis credentials,
//! the TLS certificate), never copied; the reconciler passes their contents to
//! [`desired_with`], which folds what each component reads into that component's
//! hash, so rotating a password or a certificate rolls the pods that use it.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HPAScalingPolicy, HPAScalingRules, HorizontalPodAutoscaler,
    HorizontalPodAutoscalerBehavior, HorizontalPodAutoscalerSpec, MetricIdentifier, MetricSpec, MetricTarget,
    PodsMetricSource, ResourceMetricSource,
};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapEnvSource, Container, ContainerPort, EnvFromSource, EnvVar, EnvVarSource, ExecAction,
    HTTPGetAction, Lifecycle, LifecycleHandler, LocalObjectReference, ObjectFieldSelector, PodSpec, PodTemplateSpec,
    Probe, Secret, SecretKeySelector, SecretVolumeSource, Service, ServiceAccount, ServicePort, ServiceSpec, Volume,
    VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};

use crate::crd::{ComponentSpec, IMCluster, SecretKeyRef};

/// The field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "fastim-operator";
/// Pod-template annotation with the hash of what the pods read: the configuration
/// and the referenced Secrets' values.
pub const CONFIG_HASH: &str = "fastim.io/config-hash";
/// The gateway's client ports inside its pod (TCP frames, WebSocket).
pub const GATEWAY_TCP_PORT: i32 = 7000;
/// See [`GATEWAY_TCP_PORT`].
pub const GATEWAY_WS_PORT: i32 = 7001;
/// Where the gateway's TLS Secret is mounted.
pub const TLS_DIR: &str = "/etc/fastim/tls";
/// Replicas of a component when the spec says nothing.
pub const DEFAULT_REPLICAS: i32 = 2;

/// The three workloads of an IMCluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    /// `fastim gateway`.
    Gateway,
    /// `fastim logic`.
    Logic,
    /// `fastim idgen`.
    IdAllocator,
}

impl Component {
    /// All components, in the order they are applied.
    pub const ALL: [Component; 3] = [Component::Logic, Component::IdAllocator, Component::Gateway];

    /// Name suffix, label value and `fastim` subcommand.
    pub fn name(self) -> &'static str {
        match self {
            Component::Gateway => "gateway",
            Component::Logic => "logic",
            Component::IdAllocator => "idgen",
        }
    }

    fn spec(self, cluster: &IMCluster) -> &ComponentSpec {
        match self {
            Component::Gateway => &cluster.spec.gateway.component,
            Component::Logic => &cluster.spec.logic,
            Component::IdAllocator => &cluster.spec.id_allocator,
        }
    }

    /// (gRPC port, HTTP port) inside the pod.
    fn ports(self) -> (i32, i32) {
        match self {
            Component::Gateway => (7010, 7080),
            Component::Logic => (7020, 7090),
            Component::IdAllocator => (7030, 7095),
        }
    }
}

/// Labels of every object of `cluster` (and of one component's pods).
pub fn labels(cluster: &IMCluster, component: Option<Component>) -> BTreeMap<String, String> {
    let mut labels = selector(cluster, component);
    labels.insert("app.kubernetes.io/managed-by".into(), FIELD_MANAGER.into());
    labels
}

/// The label selector of a component's pods.
pub fn selector(cluster: &IMCluster, component: Option<Component>) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "fastim".to_string()),
        ("app.kubernetes.io/instance".to_string(), cluster.name_any()),
    ]);
    if let Some(c) = component {
        labels.insert("app.kubernetes.io/component".into(), c.name().into());
    }
    labels
}

/// The selector as a string (for the scale subresource's status).
pub fn selector_string(cluster: &IMCluster, component: Component) -> String {
    selector(cluster, Some(component))
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Name of a component's objects.
pub fn object_name(cluster: &IMCluster, component: Component) -> String {
    format!("{}-{}", cluster.name_any(), component.name())
}

fn owner(cluster: &IMCluster) -> Vec<OwnerReference> {
    cluster.controller_owner_ref(&()).into_iter().collect()
}

fn meta(cluster: &IMCluster, name: String, component: Option<Component>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: cluster.namespace(),
        labels: Some(labels(cluster, component)),
        owner_references: Some(owner(cluster)),
        ..ObjectMeta::default()
    }
}

/// The ServiceAccount the pods run as (they need no API access).
pub fn service_account(cluster: &IMCluster) -> ServiceAccount {
    ServiceAccount {
        metadata: meta(cluster, format!("{}-fastim", cluster.name_any()), None),
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    }
}

/// The rendered settings shared by all components.
pub fn config_map(cluster: &IMCluster) -> ConfigMap {
    let spec = &cluster.spec;
    let mut data = BTreeMap::from([
        ("FASTIM_ETCD".to_string(), spec.etcd.endpoints.join(",")),
        ("FASTIM_REDIS".to_string(), spec.redis.urls.join(",")),
        ("FASTIM_REDIS_CLUSTER".to_string(), spec.redis.cluster.to_string()),
        (
            "FASTIM_DRAIN_RATE".to_string(),
            spec.gateway.drain.rate_per_second.to_string(),
        ),
        (
            // The drain ends before the pod's grace period (this + 10 s) does.
            "FASTIM_DRAIN_TIMEOUT_SECS".to_string(),
            spec.gateway.drain.grace_period_seconds.to_string(),
        ),
        ("FASTIM_LOG".to_string(), "info".to_string()),
    ]);
    if let Some(pool) = spec.database.pool {
        data.insert("FASTIM_DATABASE_POOL".into(), pool.to_string());
    }
    // Free-form overrides win.
    data.extend(spec.config.clone());
    ConfigMap {
        metadata: meta(cluster, format!("{}-config", cluster.name_any()), None),
        data: Some(data),
        ..ConfigMap::default()
    }
}

/// A short hash of the ConfigMap's data: changing it rolls the pods.
pub fn config_hash(config: &ConfigMap) -> String {
    pod_hash(config, &[], &BTreeMap::new())
}

/// The Secrets one component reads: (name, key), or (name, None) for a Secret
/// mounted whole (the gateway's TLS certificate and key).
pub fn secret_inputs(cluster: &IMCluster, component: Component) -> Vec<(&str, Option<&str>)> {
    let spec = &cluster.spec;
    let mut inputs = Vec::new();
    if let Some(url) = &spec.redis.url_secret {
        inputs.push((url.name.as_str(), Some(url.key.as_str())));
    }
    match component {
        Component::Logic => {
            let url = &spec.database.url_secret;
            inputs.push((url.name.as_str(), Some(url.key.as_str())));
        }
        Component::Gateway => inputs.extend(spec.gateway.service.tls_secret.as_deref().map(|name| (name, None))),
        Component::IdAllocator => {}
    }
    inputs
}

/// The hash stamped on a component's pod template: the ConfigMap's data, then the
/// values of the Secrets in `inputs` as found in `secrets` (those not given are
/// left out, so without Secrets this is [`config_hash`]).
pub fn pod_hash(config: &ConfigMap, inputs: &[(&str, Option<&str>)], secrets: &BTreeMap<String, Secret>) -> String {
    let mut hasher = Sha256::new();
    let mut field = |bytes: &[u8]| {
        hasher.update(bytes);
        hasher.update([0]);
    };
    for (k, v) in config.data.iter().flatten() {
        field(k.as_bytes());
        field(v.as_bytes());
    }
    for (name, key) in inputs {
        let Some(secret) = secrets.get(*name) else { continue };
        for (k, v) in secret.data.iter().flatten() {
            if key.is_none_or(|key| key == k) {
                field(name.as_bytes());
                field(k.as_bytes());
                field(&v.0);
            }
        }
    }
    hasher.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect()
}

fn secret_env(name: &str, secret: &SecretKeyRef) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.name.clone(),
                key: secret.key.clone(),
                optional: None,
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                api_version: None,
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn http_probe(port: i32, path: &str, period: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(port),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(3),
        ..Probe::default()
    }
}

/// The replicas a Deployment should carry: `None` where an HPA owns the count
/// (logic and ID allocators); the gateway's HPA scales the IMCluster itself, so its
/// Deployment always follows `spec.gateway.replicas`.
pub fn replicas(cluster: &IMCluster, component: Component) -> Option<i32> {
    let spec = component.spec(cluster);
    match (component, &spec.autoscaling) {
        (Component::Gateway, Some(a)) => Some(spec.replicas.unwrap_or(a.min_replicas)),
        (_, Some(_)) => None,
        (_, None) => Some(spec.replicas.unwrap_or(DEFAULT_REPLICAS)),
    }
}

/// The Deployment of one component.
pub fn deployment(cluster: &IMCluster, component: Component, config_hash: &str) -> Deployment {
    let spec = component.spec(cluster);
    let (grpc, http) = component.ports();
    let mut args = vec![
        component.name().to_string(),
        "--id=$(POD_NAME)".to_string(),
        format!("--grpc=0.0.0.0:{grpc}"),
        format!("--http=0.0.0.0:{http}"),
        format!("--advertise=$(POD_IP):{grpc}"),
    ];
    let mut ports = vec![
        ContainerPort {
            name: Some("grpc".into()),
            container_port: grpc,
            ..ContainerPort::default()
        },
        ContainerPort {
            name: Some("http".into()),
            container_port: http,
            ..ContainerPort::default()
        },
    ];
    let mut env = vec![
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_IP", "status.podIP"),
    ];
    if let Some(url) = &cluster.spec.redis.url_secret {
        env.push(secret_env("FASTIM_REDIS", url));
    }
    let mut lifecycle = None;
    let mut grace = None;
    let mut volumes = Vec::new();
    let mut mounts = Vec::new();
    if component == Component::Gateway {
        let service = &cluster.spec.gateway.service;
        // Fixed, unprivileged ports in the pod; the Service maps its ports (443, say)
        // to them by name.
        args.push(format!("--tcp=0.0.0.0:{GATEWAY_TCP_PORT}"));
        args.push(format!("--ws=0.0.0.0:{GATEWAY_WS_PORT}"));
        ports.push(ContainerPort {
            name: Some("tcp".into()),
            container_port: GATEWAY_TCP_PORT,
            ..ContainerPort::default()
        });
        ports.push(ContainerPort {
            name: Some("ws".into()),
            container_port: GATEWAY_WS_PORT,
            ..ContainerPort::default()
        });
        // Let the Service stop sending new clients before SIGTERM starts the drain.
        lifecycle = Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                exec: Some(ExecAction {
                    command: Some(vec!["sleep".into(), "5".into()]),
                }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        });
        grace = Some(cluster.spec.gateway.drain.grace_period_seconds + 10);
        if let Some(secret) = &service.tls_secret {
            // A kubernetes.io/tls Secret: tls.crt and tls.key, mounted read-only.
            args.push(format!("--tls-cert={TLS_DIR}/tls.crt"));
            args.push(format!("--tls-key={TLS_DIR}/tls.key"));
            volumes.push(Volume {
                name: "tls".into(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(secret.clone()),
                    ..SecretVolumeSource::default()
                }),
                ..Volume::default()
            });
            mounts.push(VolumeMount {
                name: "tls".into(),
                mount_path: TLS_DIR.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            });
        }
    }
    if component == Component::Logic {
        env.push(secret_env("FASTIM_DATABASE", &cluster.spec.database.url_secret));
    }
    let container = Container {
        name: "fastim".into(),
        image: Some(cluster.spec.image.clone()),
        image_pull_policy: cluster.spec.image_pull_policy.clone(),
        args: Some(args),
        env: Some(env),
        env_from: Some(vec![EnvFromSource {
            config_map_ref: Some(ConfigMapEnvSource {
                name: format!("{}-config", cluster.name_any()),
                optional: None,
            }),
            ..EnvFromSource::default()
        }]),
        ports: Some(ports),
        readiness_probe: Some(http_probe(http, "/readyz", 5)),
        liveness_probe: Some(http_probe(http, "/healthz", 10)),
        resources: spec.resources.clone(),
        lifecycle,
        volume_mounts: (!mounts.is_empty()).then_some(mounts),
        ..Container::default()
    };
    let pull_secrets = cluster
        .spec
        .image_pull_secrets
        .iter()
        .map(|n| LocalObjectReference { name: n.clone() })
        .collect::<Vec<_>>();
    let pod = PodSpec {
        containers: vec![container],
        service_account_name: Some(format!("{}-fastim", cluster.name_any())),
        automount_service_account_token: Some(false),
        image_pull_secrets: (!pull_secrets.is_empty()).then_some(pull_secrets),
        affinity: spec.affinity.clone(),
        tolerations: (!spec.tolerations.is_empty()).then(|| spec.tolerations.clone()),
        topology_spread_constraints: (!spec.topology_spread_constraints.is_empty())
            .then(|| spec.topology_spread_constraints.clone()),
        node_selector: (!spec.node_selector.is_empty()).then(|| spec.node_selector.clone()),
        termination_grace_period_seconds: grace,
        volumes: (!volumes.is_empty()).then_some(volumes),
        ..PodSpec::default()
    };
    let strategy = (component == Component::Gateway).then(|| DeploymentStrategy {
        type_: Some("RollingUpdate".into()),
        rolling_update: Some(RollingUpdateDeployment {
            max_unavailable: Some(IntOrString::Int(0)),
            max_surge: Some(IntOrString::Int(1)),
        }),
    });
    Deployment {
        metadata: meta(cluster, object_name(cluster, component), Some(component)),
        spec: DeploymentSpec {
            replicas: replicas(cluster, component),
            selector: LabelSelector {
                match_labels: Some(selector(cluster, Some(component))),
                ..LabelSelector::default()
            },
            strategy,
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(cluster, Some(component))),
                    annotations: Some(BTreeMap::from([(CONFIG_HASH.to_string(), config_hash.to_string())])),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    }
}

/// A TCP Service port whose target is the container port of the same name.
fn service_port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    }
}

/// The Service clients connect through.
pub fn gateway_service(cluster: &IMCluster) -> Service {
    let s = &cluster.spec.gateway.service;
    let mut metadata = meta(
        cluster,
        object_name(cluster, Component::Gateway),
        Some(Component::Gateway),
    );
    if !s.annotations.is_empty() {
        metadata.annotations = Some(s.annotations.clone());
    }
    Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some(s.type_.clone()),
            selector: Some(selector(cluster, Some(Component::Gateway))),
            ports: Some(vec![service_port("tcp", s.tcp_port), service_port("ws", s.ws_port)]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The headless Service of every FastIM pod of the cluster: stable per-pod DNS names
/// (`<pod-ip>.<name>-internal...`), and the target of a ServiceMonitor scraping
/// `/metrics` on the `http` port. Components find each other through etcd, not here.
pub fn internal_service(cluster: &IMCluster) -> Service {
    let (grpc, http) = Component::Gateway.ports();
    Service {
        metadata: meta(cluster, format!("{}-internal", cluster.name_any()), None),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(selector(cluster, None)),
            // Named target ports: each component's own numbers.
            ports: Some(vec![service_port("grpc", grpc), service_port("http", http)]),
            publish_not_ready_addresses: Some(true),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The in-cluster address clients use (`host:port` of the gateway Service).
pub fn client_endpoint(cluster: &IMCluster) -> String {
    format!(
        "{}.{}.svc:{}",
        object_name(cluster, Component::Gateway),
        cluster.namespace().unwrap_or_else(|| "default".into()),
        cluster.spec.gateway.service.tcp_port
    )
}

/// The PodDisruptionBudget of a component, if its spec asks for one.
pub fn disruption_budget(cluster: &IMCluster, component: Component) -> Option<PodDisruptionBudget> {
    let budget = component.spec(cluster).disruption_budget.as_ref()?;
    Some(PodDisruptionBudget {
        metadata: meta(cluster, object_name(cluster, component), Some(component)),
        spec: Some(PodDisruptionBudgetSpec {
            min_available: budget.min_available.map(IntOrString::Int),
            max_unavailable: budget.max_unavailable.map(IntOrString::Int),
            selector: Some(LabelSelector {
                match_labels: Some(selector(cluster, Some(component))),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    })
}

/// The HorizontalPodAutoscaler of a component, if its spec asks for one. The
/// gateway's targets the IMCluster's scale subresource; scale-down is slowed to one
/// pod per drain period so draining keeps up.
pub fn autoscaler(cluster: &IMCluster, component: Component) -> Option<HorizontalPodAutoscaler> {
    let auto = component.spec(cluster).autoscaling.as_ref()?;
    let mut metrics = Vec::new();
    if let Some(cpu) = auto.target_cpu_utilization {
        metrics.push(MetricSpec {
            type_: "Resource".into(),
            resource: Some(ResourceMetricSource {
                name: "cpu".into(),
                target: MetricTarget {
                    type_: "Utilization".into(),
                    average_utilization: Some(cpu),
                    ..MetricTarget::default()
                },
            }),
            ..MetricSpec::default()
        });
    }
    if let (Component::Gateway, Some(connections)) = (component, auto.target_connections_per_pod) {
        metrics.push(MetricSpec {
            type_: "Pods".into(),
            pods: Some(PodsMetricSource {
                metric: MetricIdentifier {
                    name: "fastim_gateway_connections".into(),
                    selector: None,
                },
                target: MetricTarget {
                    type_: "AverageValue".into(),
                    average_value: Some(k8s_openapi::apimachinery::pkg::api::resource::Quantity(
                        connections.to_string(),
                    )),
                    ..MetricTarget::default()
                },
            }),
            ..MetricSpec::default()
        });
    }
    let target = if component == Component::Gateway {
        CrossVersionObjectReference {
            api_version: Some(IMCluster::api_version(&()).into_owned()),
            kind: IMCluster::kind(&()).into_owned(),
            name: cluster.name_any(),
        }
    } else {
        CrossVersionObjectReference {
            api_version: Some("apps/v1".into()),
            kind: "Deployment".into(),
            name: object_name(cluster, component),
        }
    };
    let drain = cluster.spec.gateway.drain.grace_period_seconds as i32;
    Some(HorizontalPodAutoscaler {
        metadata: meta(cluster, object_name(cluster, component), Some(component)),
        spec: HorizontalPodAutoscalerSpec {
            scale_target_ref: target,
            min_replicas: Some(auto.min_replicas),
            max_replicas: auto.max_replicas,
            metrics: Some(metrics),
            behavior: Some(HorizontalPodAutoscalerBehavior {
                scale_down: Some(HPAScalingRules {
                    stabilization_window_seconds: Some(300),
                    policies: Some(vec![HPAScalingPolicy {
                        type_: "Pods".into(),
                        value: 1,
                        period_seconds: drain.max(15),
                    }]),
                    ..HPAScalingRules::default()
                }),
                scale_up: None,
            }),
        },
        ..HorizontalPodAutoscaler::default()
    })
}

/// Everything that should exist for `cluster`.
pub struct Desired {
    /// Rendered settings.
    pub config_map: ConfigMap,
    /// The pods' identity.
    pub service_account: ServiceAccount,
    /// One per component.
    pub deployments: Vec<Deployment>,
    /// The client-facing gateway Service.
    pub service: Service,
    /// The headless Service of all the cluster's pods.
    pub internal_service: Service,
    /// Where the spec asks for them.
    pub disruption_budgets: Vec<PodDisruptionBudget>,
    /// Where the spec asks for them.
    pub autoscalers: Vec<HorizontalPodAutoscaler>,
}

/// The whole desired state of `cluster`, without the Secrets' contents.
pub fn desired(cluster: &IMCluster) -> Desired {
    desired_with(cluster, &BTreeMap::new())
}

/// The whole desired state of `cluster`, each pod template's hash also covering the
/// values it reads from `secrets` (name -> Secret, as read by the reconciler).
pub fn desired_with(cluster: &IMCluster, secrets: &BTreeMap<String, Secret>) -> Desired {
    let config_map = config_map(cluster);
    let deployments = Component::ALL
        .iter()
        .map(|c| {
            deployment(
                cluster,
                *c,
                &pod_hash(&config_map, &secret_inputs(cluster, *c), secrets),
            )
        })
        .collect();
    Desired {
        service_account: service_account(cluster),
        deployments,
        service: gateway_service(cluster),
        internal_service: internal_service(cluster),
        disruption_budgets: Component::ALL
            .iter()
            .filter_map(|c| disruption_budget(cluster, *c))
            .collect(),
        autoscalers: Component::ALL.iter().filter_map(|c| autoscaler(cluster, *c)).collect(),
        config_map,
    }
}
