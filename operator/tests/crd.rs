//! The CRD: committed YAML is current, and the CEL rules accept valid specs and
//! reject invalid ones with messages naming the field (evaluated locally with
//! kube's client-side CEL validator, as the API server would).

use fastim_operator::IMCluster;
use kube::core::cel::validate_cel;

fn cluster(spec: serde_json::Value) -> IMCluster {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "fastim.io/v1alpha1",
        "kind": "IMCluster",
        "metadata": { "name": "chat", "namespace": "im" },
        "spec": spec,
    }))
    .expect("a well-formed IMCluster")
}

fn minimal() -> serde_json::Value {
    serde_json::json!({
        "image": "fastim:0.1.0",
        "etcd": { "endpoints": ["http://etcd:2379"] },
        "redis": { "urls": ["redis://redis:6379/"] },
        "database": { "urlSecret": { "name": "fastim-db", "key": "url" } },
    })
}

fn with(mut base: serde_json::Value, path: &[&str], value: serde_json::Value) -> serde_json::Value {
    let mut at = &mut base;
    for key in &path[..path.len() - 1] {
        at = at
            .as_object_mut()
            .unwrap()
            .entry(key.to_string())
            .or_insert(serde_json::json!({}));
    }
    at[path[path.len() - 1]] = value;
    base
}

fn errors(spec: serde_json::Value) -> String {
    match validate_cel(&cluster(spec)) {
        Ok(()) => String::new(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn committed_crd_is_up_to_date() {
    // The CRD, and the Helm chart's copy of it (Helm installs CRDs from its crds/ folder).
    for file in ["crds/imcluster.yaml", "charts/fastim-operator/crds/imcluster.yaml"] {
        let path = format!("{}/../{file}", env!("CARGO_MANIFEST_DIR"));
        let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(
            committed == fastim_operator::crd_yaml(),
            "{file} is stale: run `cargo run -p fastim -- operator crd | tee crds/imcluster.yaml > charts/fastim-operator/crds/imcluster.yaml`"
        );
    }
}

#[test]
fn valid_specs_pass() {
    assert_eq!(errors(minimal()), "");
    let full = with(
        with(
            minimal(),
            &["gateway", "autoscaling"],
            serde_json::json!({"minReplicas": 2, "maxReplicas": 10, "targetConnectionsPerPod": 10000}),
        ),
        &["gateway", "disruptionBudget"],
        serde_json::json!({"maxUnavailable": 1}),
    );
    let full = with(full, &["gateway", "replicas"], serde_json::json!(3));
    let full = with(
        full,
        &["gateway", "service"],
        serde_json::json!({"type": "LoadBalancer", "tcpPort": 7000, "wsPort": 443}),
    );
    let full = with(full, &["config"], serde_json::json!({"FASTIM_HEARTBEAT_MS": "20000"}));
    assert_eq!(errors(full), "");
}

#[test]
fn invalid_specs_are_rejected_with_field_messages() {
    let cases = [
        (
            with(minimal(), &["image"], serde_json::json!("")),
            "image must not be empty",
        ),
        (
            with(
                minimal(),
                &["gateway", "autoscaling"],
                serde_json::json!({"minReplicas": 5, "maxReplicas": 2, "targetCpuUtilization": 70}),
            ),
            "autoscaling.minReplicas must not exceed autoscaling.maxReplicas",
        ),
        (
            with(
                minimal(),
                &["logic", "autoscaling"],
                serde_json::json!({"minReplicas": 1, "maxReplicas": 2}),
            ),
            "autoscaling needs targetCpuUtilization or targetConnectionsPerPod",
        ),
        (
            with(
                minimal(),
                &["gateway", "disruptionBudget"],
                serde_json::json!({"minAvailable": 1, "maxUnavailable": 1}),
            ),
            "disruptionBudget needs exactly one of minAvailable and maxUnavailable",
        ),
        (
            with(minimal(), &["gateway", "service", "type"], serde_json::json!("Ingress")),
            "service.type must be ClusterIP, NodePort or LoadBalancer",
        ),
        (
            with(minimal(), &["gateway", "drain", "ratePerSecond"], serde_json::json!(0)),
            "drain.ratePerSecond must be at least 1",
        ),
        (
            with(minimal(), &["config"], serde_json::json!({"HEARTBEAT": "1"})),
            "config keys must be FASTIM_* settings",
        ),
        (
            with(minimal(), &["etcd", "endpoints"], serde_json::json!([])),
            "etcd.endpoints must name at least one endpoint",
        ),
        (
            with(minimal(), &["imagePullPolicy"], serde_json::json!("Sometimes")),
            "imagePullPolicy must be Always, IfNotPresent or Never",
        ),
    ];
    for (spec, message) in cases {
        let got = errors(spec);
        assert!(got.contains(message), "expected {message:?}, got {got:?}");
    }
    // Replicas outside the autoscaling range.
    let outside = with(
        with(
            minimal(),
            &["gateway", "autoscaling"],
            serde_json::json!({"minReplicas": 2, "maxReplicas": 4, "targetCpuUtilization": 60}),
        ),
        &["gateway", "replicas"],
        serde_json::json!(9),
    );
    assert!(errors(outside).contains("replicas must lie within"));
}

/// The example IMClusters in `examples/` parse, pass the CEL rules, and map to a
/// desired state.
#[test]
fn examples_are_valid() {
    for name in ["imcluster-dev.yaml", "imcluster-production.yaml"] {
        let path = format!("{}/../examples/{name}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap();
        let mut cluster: IMCluster = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(errors_of(&cluster), "", "{name}");
        cluster.metadata.namespace = Some("default".into());
        cluster.metadata.uid = Some("example".into());
        let desired = fastim_operator::desired::desired(&cluster);
        assert_eq!(desired.deployments.len(), 3, "{name}");
    }
}

fn errors_of(cluster: &IMCluster) -> String {
    match validate_cel(cluster) {
        Ok(()) => String::new(),
        Err(e) => e.to_string(),
    }
}
