#!/usr/bin/env bash
# Checks the Helm chart charts/fastim-operator and the manifests in examples/, offline:
#   - the chart's CRD is a byte copy of crds/imcluster.yaml, and the Kubernetes types in
#     values.schema.json are current;
#   - `helm lint --strict` and `helm template` with the default values and each ci/*.yaml;
#   - the rendered manifests (CRD included) validate strictly against the Kubernetes API
#     schemas of $K8S_VERSION (kubernetes-validate), the example IMCluster against the CRD's
#     schema and CEL rules, the ServiceMonitor against the Service it scrapes, plus
#     cross-object consistency (scripts/validate-manifests.py);
#   - the RBAC stays least-privilege (no wildcards, delete only on PDBs and HPAs, Secrets only get);
#   - values.schema.json rejects unknown keys, wrong types and bad enum values, and the
#     chart refuses Kubernetes versions below its kubeVersion;
#   - the validator itself rejects known-bad objects;
#   - examples/*.yaml validate the same way.
# Installs Helm and kubernetes-validate first (scripts/install-deps.sh --chart).
# Exits non-zero when anything failed, after listing every failure.
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_VERSION="${K8S_VERSION:-1.35.0}"
CHART=charts/fastim-operator
TOOLS="${FASTIM_TOOLS:-$HOME/.cache/fastim-tools}"

scripts/install-deps.sh --chart
HELM="$TOOLS/bin/helm"
PY="$TOOLS/venv/bin/python"

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
failures=()

ok() { echo "check-chart: ok   $*"; }
fail() {
    echo "check-chart: FAIL $1" >&2
    if [ -n "${2:-}" ] && [ -s "$2" ]; then sed 's/^/    /' "$2" >&2; fi
    failures+=("$1")
}
# run DESCRIPTION COMMAND...: runs it, output to a log shown only on failure.
run() {
    local what="$1"
    shift
    if "$@" >"$out/log" 2>&1; then ok "$what"; else fail "$what" "$out/log"; fi
}
validate() { "$PY" scripts/validate-manifests.py -k "$K8S_VERSION" --crd crds/imcluster.yaml "$@"; }

# --- files that must agree ---------------------------------------------------------
if cmp -s crds/imcluster.yaml "$CHART/crds/imcluster.yaml"; then
    ok "$CHART/crds/imcluster.yaml is identical to crds/imcluster.yaml"
else
    echo "run: cp crds/imcluster.yaml $CHART/crds/imcluster.yaml" >"$out/log"
    fail "$CHART/crds/imcluster.yaml differs from crds/imcluster.yaml" "$out/log"
fi
run "values.schema.json's Kubernetes types are current (Kubernetes $K8S_VERSION)" \
    "$PY" scripts/chart-schema-defs.py --check --kubernetes-version "$K8S_VERSION"

# --- lint, render, validate each values set ----------------------------------------
sets=(default)
for f in "$CHART"/ci/*.yaml; do
    [ -e "$f" ] && sets+=("$f")
done
for set in "${sets[@]}"; do
    args=()
    label="default values"
    name=default
    if [ "$set" != default ]; then
        args=(-f "$set")
        label="$set"
        name="$(basename "$set" .yaml)"
    fi
    run "helm lint --strict ($label)" "$HELM" lint --strict "$CHART" "${args[@]}"
    rendered="$out/$name.yaml"
    if "$HELM" template fastim-operator "$CHART" --namespace fastim-system --include-crds \
        --kube-version "$K8S_VERSION" "${args[@]}" >"$rendered" 2>"$out/log"; then
        ok "helm template ($label): $(grep -c '^kind:' "$rendered") objects"
    else
        fail "helm template ($label)" "$out/log"
        continue
    fi
    run "rendered manifests validate ($label)" validate "$rendered"
    run "RBAC is least-privilege ($label)" "$PY" - "$rendered" <<'EOF'
import sys, yaml
bad = []
for o in yaml.safe_load_all(open(sys.argv[1])):
    if not o or o.get("kind") not in ("Role", "ClusterRole"):
        continue
    for r in o.get("rules") or []:
        where = "%s/%s %s" % (o["kind"], o["metadata"]["name"], r.get("resources"))
        if "*" in r.get("verbs", []) or "*" in r.get("resources", []) or "*" in r.get("apiGroups", []):
            bad.append("%s: wildcard" % where)
        for v in ("delete", "deletecollection", "escalate", "bind", "impersonate"):
            # The reconciler deletes a budget or autoscaler the spec no longer asks for.
            prunable = v == "delete" and set(r.get("resources", [])) <= {"poddisruptionbudgets", "horizontalpodautoscalers"}
            if v in r.get("verbs", []) and not prunable:
                bad.append("%s: verb %s" % (where, v))
        if "secrets" in r.get("resources", []) and set(r.get("verbs", [])) != {"get"}:
            bad.append("%s: Secrets need only get, has %s" % (where, r.get("verbs")))
for b in bad:
    print(b)
sys.exit(1 if bad else 0)
EOF
done

# --- what values.schema.json and kubeVersion must refuse -----------------------------
# expect_refusal DESCRIPTION NEEDLE HELM-TEMPLATE-ARGS...: the render must fail and its
# error must mention NEEDLE.
expect_refusal() {
    local what="$1" needle="$2"
    shift 2
    if "$HELM" template fastim-operator "$CHART" "$@" >"$out/log" 2>&1; then
        echo "helm template $* succeeded" >>"$out/log"
        fail "$what: accepted" "$out/log"
    elif grep -q -- "$needle" "$out/log"; then
        ok "$what: refused ($(grep -m1 -- "$needle" "$out/log" | sed 's/^[- ]*//'))"
    else
        fail "$what: refused, but the error does not mention '$needle'" "$out/log"
    fi
}
expect_refusal "unknown top-level key (--set bogus=1)" "bogus" --set bogus=1
expect_refusal "unknown nested key (--set example.gatway.replicas=1)" "gatway" --set example.gatway.replicas=1
expect_refusal "unknown key inside a Kubernetes type (--set securityContext.runAsRoot=true)" "runAsRoot" \
    --set securityContext.runAsRoot=true
expect_refusal "wrong type (--set replicaCount=two)" "replicaCount" --set replicaCount=two
expect_refusal "wrong type (--set-string rbac.create=yes)" "rbac/create" --set-string rbac.create=yes
expect_refusal "bad enum (--set image.pullPolicy=Sometimes)" "pullPolicy" --set image.pullPolicy=Sometimes
expect_refusal "negative replicas (--set replicaCount=-1)" "replicaCount" --set replicaCount=-1
expect_refusal "config key that is no FASTIM_ setting (--set example.config.LOG=x)" "LOG" --set example.config.LOG=x
expect_refusal "Kubernetes 1.28 (below kubeVersion)" "kubeVersion" --kube-version 1.28.0

# --- the validator must catch what it claims to ---------------------------------------
cat >"$out/bad-imcluster.yaml" <<'EOF'
apiVersion: fastim.io/v1alpha1
kind: IMCluster
metadata: {name: bad}
spec:
  image: fastim:dev
  gateway:
    replicas: 5
    autoscaling: {minReplicas: 3, maxReplicas: 2, targetCpuUtilization: 50}
  etcd: {endpoints: ["http://etcd:2379"]}
  redis: {urls: ["redis://redis:6379/"]}
  database: {urlSecret: {name: db, key: url}}
EOF
cat >"$out/bad-field.yaml" <<'EOF'
apiVersion: fastim.io/v1alpha1
kind: IMCluster
metadata: {name: bad}
spec:
  image: fastim:dev
  gatway: {replicas: 1}
  etcd: {endpoints: ["http://etcd:2379"]}
  redis: {urls: ["redis://redis:6379/"]}
  database: {urlSecret: {name: db, key: url}}
EOF
cat >"$out/bad-deployment.yaml" <<'EOF'
apiVersion: apps/v1
kind: Deployment
metadata: {name: d}
spec:
  selector: {matchLabels: {app: d}}
  template:
    metadata: {labels: {app: d}}
    spec:
      containers: [{name: c, image: i, imagePulPolicy: Always}]
EOF
cat >"$out/bad-unknown-kind.yaml" <<'EOF'
apiVersion: example.com/v1
kind: Widget
metadata: {name: w}
EOF
expect_invalid() {
    local what="$1" file="$2" needle="$3"
    if validate "$file" >"$out/log" 2>&1; then
        fail "validator rejects $what: accepted" "$out/log"
    elif grep -q -- "$needle" "$out/log"; then
        ok "validator rejects $what ($(grep -m1 -- "$needle" "$out/log" | sed 's/^ *FAIL //'))"
    else
        fail "validator rejects $what: the error does not mention '$needle'" "$out/log"
    fi
}
expect_invalid "an IMCluster breaking a CEL rule" "$out/bad-imcluster.yaml" "minReplicas must not exceed"
expect_invalid "an IMCluster with an unknown field" "$out/bad-field.yaml" "gatway"
expect_invalid "a Deployment with an unknown field" "$out/bad-deployment.yaml" "imagePulPolicy"
expect_invalid "a kind it has no schema for" "$out/bad-unknown-kind.yaml" "no schema"

# --- the repository's examples -------------------------------------------------------
for f in examples/*.yaml; do
    run "$f validates" validate "$f"
done

if [ ${#failures[@]} -gt 0 ]; then
    echo "check-chart: ${#failures[@]} check(s) failed:" >&2
    printf '  - %s\n' "${failures[@]}" >&2
    exit 1
fi
echo "check-chart: all checks passed"
