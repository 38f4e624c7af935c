//! The desired state of IMClusters: exact objects (snapshots) and the rules behind
//! them, without a cluster. Snapshots live in `tests/snapshots/`; regenerate them
//! with `UPDATE_SNAPSHOTS=1 cargo test -p fastim-operator` and review the diff.

use std::collections::BTreeMap;

use fastim_operator::IMCluster;
use fastim_operator::desired::{self, Component, desired};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;

fn cluster(spec: serde_json::Value) -> IMCluster {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "fastim.io/v1alpha1",
        "kind": "IMCluster",
        "metadata": { "name": "chat", "namespace": "im", "uid": "0f1e2d3c-0000-4000-8000-000000000001" },
        "spec": spec,
    }))
    .expect("a well-formed IMCluster")
}

fn minimal() -> serde_json::Value {
    serde_json::json!({
        "image": "fastim:0.1.0",
        "etcd": { "endpoints": ["http://etcd-0.etcd:2379", "http://etcd-1.etcd:2379"] },
        "redis": { "urls": ["redis://redis:6379/"] },
        "database": { "urlSecret": { "name": "fastim-db", "key": "url" } },
    })
}

fn full() -> serde_json::Value {
    let mut spec = minimal();
    spec["imagePullPolicy"] = "IfNotPresent".into();
    spec["imagePullSecrets"] = serde_json::json!(["registry"]);
    spec["gateway"] = serde_json::json!({
        "replicas": 3,
        "resources": { "requests": { "cpu": "500m", "memory": "256Mi" }, "limits": { "memory": "1Gi" } },
        "tolerations": [{ "key": "im", "operator": "Exists", "effect": "NoSchedule" }],
        "topologySpreadConstraints": [{
            "maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": { "matchLabels": { "app.kubernetes.io/component": "gateway" } }
        }],
        "nodeSelector": { "pool": "edge" },
        "disruptionBudget": { "maxUnavailable": 1 },
        "autoscaling": { "minReplicas": 2, "maxReplicas": 20, "targetCpuUtilization": 70, "targetConnectionsPerPod": 10000 },
        "service": { "type": "LoadBalancer", "tcpPort": 7000, "wsPort": 443, "tlsSecret": "fastim-tls",
                     "annotations": { "service.beta.kubernetes.io/aws-load-balancer-type": "nlb" } },
        "drain": { "ratePerSecond": 200, "gracePeriodSeconds": 120 },
    });
    spec["logic"] = serde_json::json!({
        "affinity": { "podAntiAffinity": { "preferredDuringSchedulingIgnoredDuringExecution": [{
            "weight": 100,
            "podAffinityTerm": { "topologyKey": "kubernetes.io/hostname",
                                 "labelSelector": { "matchLabels": { "app.kubernetes.io/component": "logic" } } }
        }] } },
        "disruptionBudget": { "minAvailable": 1 },
        "autoscaling": { "minReplicas": 2, "maxReplicas": 6, "targetCpuUtilization": 60 },
    });
    spec["idAllocator"] = serde_json::json!({ "replicas": 3 });
    spec["redis"] = serde_json::json!({ "urls": ["redis://r0:6379/", "redis://r1:6379/"], "cluster": true,
                                        "urlSecret": { "name": "fastim-redis", "key": "urls" } });
    spec["database"]["pool"] = 24.into();
    spec["config"] = serde_json::json!({ "FASTIM_HEARTBEAT_MS": "20000", "FASTIM_LOG": "debug" });
    spec
}

/// The whole desired state as one YAML document stream.
fn render(cluster: &IMCluster) -> String {
    let d = desired(cluster);
    let mut docs = vec![
        serde_yaml::to_string(&d.config_map).unwrap(),
        serde_yaml::to_string(&d.service_account).unwrap(),
    ];
    docs.extend(d.deployments.iter().map(|x| serde_yaml::to_string(x).unwrap()));
    docs.push(serde_yaml::to_string(&d.service).unwrap());
    docs.push(serde_yaml::to_string(&d.internal_service).unwrap());
    docs.extend(d.disruption_budgets.iter().map(|x| serde_yaml::to_string(x).unwrap()));
    docs.extend(d.autoscalers.iter().map(|x| serde_yaml::to_string(x).unwrap()));
    docs.join("---\n")
}

fn snapshot(name: &str, actual: &str) {
    let path = format!("{}/tests/snapshots/{name}.yaml", env!("CARGO_MANIFEST_DIR"));
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        expected == actual,
        "snapshot {path} differs; UPDATE_SNAPSHOTS=1 regenerates it:\n{actual}"
    );
}

#[test]
fn snapshot_of_the_defaults() {
    snapshot("minimal", &render(&cluster(minimal())));
}

#[test]
fn snapshot_with_scheduling_autoscaling_and_budgets() {
    snapshot("full", &render(&cluster(full())));
}

#[test]
fn defaults() {
    let c = cluster(minimal());
    let d = desired(&c);
    let names: Vec<_> = d.deployments.iter().map(|x| x.metadata.name.clone().unwrap()).collect();
    assert_eq!(names, ["chat-logic", "chat-idgen", "chat-gateway"]);
    for deployment in &d.deployments {
        assert_eq!(deployment.spec.replicas, Some(2));
        let pod = deployment.spec.template.spec.as_ref().unwrap();
        let container = &pod.containers[0];
        assert_eq!(container.image.as_deref(), Some("fastim:0.1.0"));
        let secret_env: Vec<_> = container
            .env
            .iter()
            .flatten()
            .filter(|e| e.value_from.as_ref().is_some_and(|v| v.secret_key_ref.is_some()))
            .map(|e| e.name.clone())
            .collect();
        let is_logic = deployment.metadata.name.as_deref() == Some("chat-logic");
        assert_eq!(
            secret_env,
            if is_logic {
                vec!["FASTIM_DATABASE".to_string()]
            } else {
                vec![]
            },
            "only logic sees the database"
        );
        assert_eq!(pod.service_account_name.as_deref(), Some("chat-fastim"));
    }
    assert!(d.disruption_budgets.is_empty() && d.autoscalers.is_empty());
    let data = d.config_map.data.as_ref().unwrap();
    assert_eq!(data["FASTIM_ETCD"], "http://etcd-0.etcd:2379,http://etcd-1.etcd:2379");
    assert_eq!(data["FASTIM_REDIS_CLUSTER"], "false");
    let service = d.service.spec.as_ref().unwrap();
    assert_eq!(service.type_.as_deref(), Some("ClusterIP"));
    assert_eq!(
        service
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .map(|p| p.port)
            .collect::<Vec<_>>(),
        vec![7000, 7001]
    );
    assert_eq!(desired::client_endpoint(&c), "chat-gateway.im.svc:7000");
    assert_eq!(
        desired::selector_string(&c, Component::Gateway),
        "app.kubernetes.io/component=gateway,app.kubernetes.io/instance=chat,app.kubernetes.io/name=fastim"
    );
    // Gateways drain: a preStop pause and a grace period longer than the drain.
    let gateway = d.deployments[2].spec.template.spec.as_ref().unwrap();
    assert_eq!(gateway.termination_grace_period_seconds, Some(70));
    assert!(gateway.containers[0].lifecycle.as_ref().unwrap().pre_stop.is_some());
}

#[test]
fn everything_is_owned_by_the_cluster() {
    let c = cluster(full());
    let d = desired(&c);
    let mut owners = vec![
        d.config_map.metadata.owner_references.clone(),
        d.service_account.metadata.owner_references.clone(),
        d.service.metadata.owner_references.clone(),
        d.internal_service.metadata.owner_references.clone(),
    ];
    owners.extend(d.deployments.iter().map(|x| x.metadata.owner_references.clone()));
    owners.extend(d.disruption_budgets.iter().map(|x| x.metadata.owner_references.clone()));
    owners.extend(d.autoscalers.iter().map(|x| x.metadata.owner_references.clone()));
    assert_eq!(owners.len(), 4 + 3 + 2 + 2);
    for owner in owners {
        let owner = &owner.unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.controller),
            ("IMCluster", "chat", Some(true))
        );
    }
}

#[test]
fn a_config_change_rolls_the_pods() {
    let hash = |spec| desired::config_hash(&desired::config_map(&cluster(spec)));
    assert_eq!(hash(minimal()), hash(minimal()), "deterministic");
    let mut changed = minimal();
    changed["config"] = serde_json::json!({ "FASTIM_HEARTBEAT_MS": "15000" });
    assert_ne!(hash(minimal()), hash(changed.clone()));
    let c = cluster(changed);
    let d = desired(&c);
    let annotation = d.deployments[0]
        .spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .annotations
        .as_ref()
        .unwrap();
    assert_eq!(annotation[desired::CONFIG_HASH], desired::config_hash(&d.config_map));
}

/// The pod-template hash of each Deployment, by name.
fn hashes(d: &desired::Desired) -> std::collections::BTreeMap<String, String> {
    d.deployments
        .iter()
        .map(|x| {
            let annotations = x.spec.template.metadata.as_ref().unwrap().annotations.as_ref().unwrap();
            (
                x.metadata.name.clone().unwrap(),
                annotations[desired::CONFIG_HASH].clone(),
            )
        })
        .collect()
}

fn secret(name: &str, data: &[(&str, &str)]) -> (String, Secret) {
    let data = data
        .iter()
        .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
        .collect();
    let secret = Secret {
        data: Some(data),
        ..Secret::default()
    };
    (name.to_string(), secret)
}

#[test]
fn rotating_a_secret_rolls_exactly_the_pods_that_read_it() {
    let c = cluster(full());
    let secrets = |db: &str, redis: &str, cert: &str| {
        BTreeMap::from([
            secret("fastim-db", &[("url", db), ("unused", "x")]),
            secret("fastim-redis", &[("urls", redis)]),
            secret("fastim-tls", &[("tls.crt", cert), ("tls.key", "key")]),
        ])
    };
    let before = hashes(&desired::desired_with(
        &c,
        &secrets("postgres://a", "redis://r0", "cert-1"),
    ));
    assert_eq!(
        before,
        hashes(&desired::desired_with(
            &c,
            &secrets("postgres://a", "redis://r0", "cert-1")
        )),
        "deterministic"
    );
    // Without the Secrets' values the hash is the configuration's alone.
    let config_only = desired::config_hash(&desired::config_map(&c));
    assert!(hashes(&desired(&c)).values().all(|h| *h == config_only));
    assert!(before.values().all(|h| *h != config_only));
    let changed = |after: BTreeMap<String, String>| -> Vec<String> {
        before.keys().filter(|k| before[*k] != after[*k]).cloned().collect()
    };
    // The database password: logic only. Redis: every component. The certificate:
    // the gateway only. A key nobody reads: nothing.
    let rotated = secrets("postgres://b", "redis://r0", "cert-1");
    assert_eq!(changed(hashes(&desired::desired_with(&c, &rotated))), ["chat-logic"]);
    let rotated = secrets("postgres://a", "redis://r1", "cert-1");
    assert_eq!(
        changed(hashes(&desired::desired_with(&c, &rotated))),
        ["chat-gateway", "chat-idgen", "chat-logic"]
    );
    let rotated = secrets("postgres://a", "redis://r0", "cert-2");
    assert_eq!(changed(hashes(&desired::desired_with(&c, &rotated))), ["chat-gateway"]);
    let mut rotated = secrets("postgres://a", "redis://r0", "cert-1");
    let (name, db) = secret("fastim-db", &[("url", "postgres://a"), ("unused", "y")]);
    rotated.insert(name, db);
    assert!(changed(hashes(&desired::desired_with(&c, &rotated))).is_empty());
}

/// Every Secret a Deployment reads (env or volume) is among its hashed inputs.
#[test]
fn the_hashed_secrets_are_the_ones_the_pods_read() {
    let c = cluster(full());
    for (component, deployment) in Component::ALL.iter().zip(&desired(&c).deployments) {
        let pod = deployment.spec.template.spec.as_ref().unwrap();
        let mut read: Vec<(String, Option<String>)> = pod.containers[0]
            .env
            .iter()
            .flatten()
            .filter_map(|e| e.value_from.as_ref()?.secret_key_ref.as_ref())
            .map(|r| (r.name.clone(), Some(r.key.clone())))
            .collect();
        read.extend(
            pod.volumes
                .iter()
                .flatten()
                .filter_map(|v| v.secret.as_ref()?.secret_name.clone())
                .map(|name| (name, None)),
        );
        let mut inputs: Vec<(String, Option<String>)> = desired::secret_inputs(&c, *component)
            .into_iter()
            .map(|(name, key)| (name.to_string(), key.map(str::to_string)))
            .collect();
        read.sort();
        inputs.sort();
        assert_eq!(read, inputs, "{component:?}");
        assert!(!read.is_empty());
    }
}

#[test]
fn autoscaling_and_budgets() {
    let c = cluster(full());
    let d = desired(&c);
    // The gateway HPA scales the IMCluster (scale subresource); its Deployment follows spec.gateway.replicas.
    let gateway_hpa = d
        .autoscalers
        .iter()
        .find(|h| h.metadata.name.as_deref() == Some("chat-gateway"))
        .unwrap();
    assert_eq!(gateway_hpa.spec.scale_target_ref.kind, "IMCluster");
    let metrics = gateway_hpa.spec.metrics.as_ref().unwrap();
    assert_eq!(
        metrics.iter().map(|m| m.type_.as_str()).collect::<Vec<_>>(),
        ["Resource", "Pods"]
    );
    assert_eq!(
        metrics[1].pods.as_ref().unwrap().metric.name,
        "fastim_gateway_connections"
    );
    let down = gateway_hpa.spec.behavior.as_ref().unwrap().scale_down.as_ref().unwrap();
    assert_eq!(
        down.policies.as_ref().unwrap()[0].period_seconds,
        120,
        "one pod per drain period"
    );
    assert_eq!(d.deployments[2].spec.replicas, Some(3));
    // Logic's HPA owns its Deployment's replicas: the operator leaves them out.
    let logic_hpa = d
        .autoscalers
        .iter()
        .find(|h| h.metadata.name.as_deref() == Some("chat-logic"))
        .unwrap();
    assert_eq!(logic_hpa.spec.scale_target_ref.kind, "Deployment");
    assert_eq!(d.deployments[0].spec.replicas, None);
    assert_eq!(d.deployments[1].spec.replicas, Some(3));
    assert_eq!(d.disruption_budgets.len(), 2);
    // Scheduling reaches the pods.
    let gateway = d.deployments[2].spec.template.spec.as_ref().unwrap();
    assert_eq!(gateway.tolerations.as_ref().unwrap()[0].key.as_deref(), Some("im"));
    assert_eq!(gateway.node_selector.as_ref().unwrap()["pool"], "edge");
    assert!(d.deployments[0].spec.template.spec.as_ref().unwrap().affinity.is_some());
    // Redis credentials come from the Secret, overriding the plain URLs.
    let env = gateway.containers[0].env.as_ref().unwrap();
    assert!(env.iter().any(|e| e.name == "FASTIM_REDIS" && e.value_from.is_some()));
    assert_eq!(
        d.config_map.data.as_ref().unwrap()["FASTIM_LOG"],
        "debug",
        "overrides win"
    );
}
