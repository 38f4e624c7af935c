#!/usr/bin/env bash
# End-to-end test of the operator on a real, disposable Kubernetes cluster (kind or k3d).
#
#   tests/k8s-e2e.sh [--require] [--keep] [--no-build]
#
# Without a reachable kind/k3d cluster it prints "k8s-e2e: SKIPPED: ..." and exits 0
# (with --require it exits 3 instead). With one, in a fresh namespace, it:
#   1. builds the image (docker build -t fastim:e2e .) and loads it into the cluster
#      (kind load docker-image / k3d image import), unless FASTIM_IMAGE names one the
#      cluster can pull (repository:tag) or --no-build is given;
#   2. applies crds/imcluster.yaml and installs charts/fastim-operator with that image,
#      watching only the test namespace; checks a pod holds the leader Lease;
#   3. applies examples/dev-dependencies.yaml (etcd, Redis, PostgreSQL and the database
#      Secret fastim-dev-db) and examples/imcluster-dev.yaml with the image substituted;
#      waits for the IMCluster's Ready condition;
#   4. port-forwards the gateway Service (dev-gateway, port tcp) and, with the fastim CLI,
#      registers two users, sends a message and receives it;
#   5. scales with `kubectl scale imcluster/dev --replicas=3` (the scale subresource) and
#      waits for status.gateway.readyReplicas=3;
#   6. deletes the IMCluster and checks its Deployments, Service and ConfigMap are
#      garbage-collected;
#   7. uninstalls the chart and deletes the namespace (also on failure, unless --keep),
#      and the CRD if this run created it.
#
# Environment: FASTIM_IMAGE (skip the build), FASTIM_BIN (the fastim CLI; default
# target/release/fastim, target/debug/fastim, or fastim in PATH),
# FASTIM_E2E_ANY_CONTEXT=1 (allow a kube context that is not kind-* or k3d-*; the test
# creates and deletes cluster-wide objects only when absent: the CRD),
# FASTIM_E2E_TIMEOUT (seconds for each wait on pods, default 300).
# Exit status: 0 passed or skipped, 1 failed, 2 usage, 3 skipped under --require.
set -euo pipefail
cd "$(dirname "$0")/.."

REQUIRE=0
KEEP=0
BUILD=1
for arg in "$@"; do
    case "$arg" in
        --require) REQUIRE=1 ;;
        --keep) KEEP=1 ;;
        --no-build) BUILD=0 ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "k8s-e2e: unknown argument $arg (see --help)" >&2
            exit 2
            ;;
    esac
done

TOOLS="${FASTIM_TOOLS:-$HOME/.cache/fastim-tools}"
WAIT="${FASTIM_E2E_TIMEOUT:-300}"
RUN_ID="$(date +%s)"
NS="fastim-e2e-$RUN_ID"
RELEASE=fastim-operator
CLUSTER=dev

skip() {
    echo "k8s-e2e: SKIPPED: no reachable Kubernetes cluster ($1)"
    if [ "$REQUIRE" -eq 1 ]; then
        echo "k8s-e2e: --require was given: failing" >&2
        exit 3
    fi
    exit 0
}
step() { echo "k8s-e2e: [$(date +%H:%M:%S)] $*"; }
die() {
    echo "k8s-e2e: FAILED: $*" >&2
    exit 1
}

# --- is there a cluster? -------------------------------------------------------------
if command -v kubectl >/dev/null 2>&1; then
    KUBECTL=kubectl
elif [ -x "$TOOLS/bin/kubectl" ]; then
    KUBECTL="$TOOLS/bin/kubectl"
else
    skip "kubectl not found"
fi
context="$("$KUBECTL" config current-context 2>/dev/null || true)"
[ -n "$context" ] || skip "kubectl has no current context"
case "$context" in
    kind-*) FLAVOUR=kind CLUSTER_NAME="${context#kind-}" ;;
    k3d-*) FLAVOUR=k3d CLUSTER_NAME="${context#k3d-}" ;;
    *)
        [ "${FASTIM_E2E_ANY_CONTEXT:-0}" = 1 ] \
            || skip "context '$context' is neither kind-* nor k3d-*; set FASTIM_E2E_ANY_CONTEXT=1 to use it"
        FLAVOUR=other CLUSTER_NAME="$context"
        ;;
esac
if ! version_out="$(timeout 20 "$KUBECTL" version --request-timeout=5s 2>&1)"; then
    skip "context '$context': $(echo "$version_out" | grep -v '^Client Version\|^Kustomize Version' | head -n1)"
fi
step "cluster: context $context ($FLAVOUR), namespace $NS"

# --- tools ---------------------------------------------------------------------------
if [ -x "$TOOLS/bin/helm" ]; then
    HELM="$TOOLS/bin/helm"
elif command -v helm >/dev/null 2>&1; then
    HELM=helm
else
    scripts/install-deps.sh --chart
    HELM="$TOOLS/bin/helm"
fi
FASTIM="${FASTIM_BIN:-}"
if [ -z "$FASTIM" ]; then
    for candidate in target/release/fastim target/debug/fastim; do
        if [ -x "$candidate" ]; then
            FASTIM="$candidate"
            break
        fi
    done
fi
if [ -z "$FASTIM" ] && command -v fastim >/dev/null 2>&1; then
    FASTIM="$(command -v fastim)"
fi
if [ -z "$FASTIM" ]; then
    command -v cargo >/dev/null 2>&1 || die "no fastim CLI (set FASTIM_BIN or build it: cargo build -p fastim)"
    step "building the fastim CLI (cargo build -p fastim)"
    cargo build -q -p fastim
    FASTIM=target/debug/fastim
fi
step "fastim CLI: $FASTIM; helm: $HELM"

# kubectl in the test namespace, bounded: k (2 minutes) for quick calls; kwait SECONDS
# ARGS... for `kubectl wait --timeout=SECONDS`.
k() { timeout 120 "$KUBECTL" -n "$NS" "$@"; }
kwait() {
    local secs="$1"
    shift
    timeout $((secs + 30)) "$KUBECTL" -n "$NS" wait "$@" --timeout="${secs}s" >/dev/null
}

# --- the image -----------------------------------------------------------------------
IMAGE="${FASTIM_IMAGE:-fastim:e2e}"
if [ -z "${FASTIM_IMAGE:-}" ] && [ "$BUILD" -eq 1 ]; then
    command -v docker >/dev/null 2>&1 || die "docker not found: build the image elsewhere and set FASTIM_IMAGE"
    step "building $IMAGE (docker build; this compiles the release binary)"
    docker build -q -t "$IMAGE" . >/dev/null
    case "$FLAVOUR" in
        kind)
            command -v kind >/dev/null 2>&1 || die "kind not found: cannot load $IMAGE into the cluster"
            step "loading $IMAGE into kind cluster $CLUSTER_NAME"
            kind load docker-image "$IMAGE" --name "$CLUSTER_NAME" >/dev/null
            ;;
        k3d)
            command -v k3d >/dev/null 2>&1 || die "k3d not found: cannot import $IMAGE into the cluster"
            step "importing $IMAGE into k3d cluster $CLUSTER_NAME"
            k3d image import "$IMAGE" --cluster "$CLUSTER_NAME" >/dev/null
            ;;
        *) step "context $context is not kind/k3d: the cluster must be able to pull $IMAGE itself" ;;
    esac
fi
# repository and tag ("host:5000/fastim:1.0" -> "host:5000/fastim", "1.0").
last="${IMAGE##*/}"
if [[ "$last" == *:* ]]; then
    IMAGE_REPO="${IMAGE%:*}"
    IMAGE_TAG="${IMAGE##*:}"
else
    die "FASTIM_IMAGE must be repository:tag, got $IMAGE"
fi

# --- cleanup, also on failure ---------------------------------------------------------
CRD_CREATED=0
PF_PID=""
diagnose() {
    echo "k8s-e2e: --- diagnostics (namespace $NS) ---" >&2
    k get imcluster,deploy,pods,svc,hpa,pdb,lease -o wide >&2 || true
    k describe imcluster >&2 || true
    k get events --sort-by=.lastTimestamp >&2 || true
    k logs -l app.kubernetes.io/name=fastim-operator --tail=100 --all-containers --prefix >&2 || true
    k logs -l app.kubernetes.io/name=fastim --tail=50 --all-containers --prefix >&2 || true
}
cleanup() {
    local status=$?
    set +e
    [ -n "$PF_PID" ] && kill "$PF_PID" 2>/dev/null
    [ "$status" -ne 0 ] && diagnose
    if [ "$KEEP" -eq 1 ]; then
        echo "k8s-e2e: --keep: leaving namespace $NS and release $RELEASE in place" >&2
        exit "$status"
    fi
    step "cleanup: IMClusters, helm release, namespace $NS"
    timeout 90 "$KUBECTL" -n "$NS" delete imcluster --all --wait --timeout=60s >/dev/null 2>&1
    timeout 180 "$HELM" uninstall "$RELEASE" -n "$NS" --wait --timeout 120s >/dev/null 2>&1
    timeout 200 "$KUBECTL" delete namespace "$NS" --wait --timeout=180s >/dev/null 2>&1
    if [ "$CRD_CREATED" -eq 1 ]; then
        timeout 120 "$KUBECTL" delete crd imclusters.fastim.io --wait --timeout=60s >/dev/null 2>&1
    fi
    if [ "$status" -eq 0 ]; then
        step "PASSED"
    else
        echo "k8s-e2e: FAILED (exit $status)" >&2
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_until SECONDS DESCRIPTION COMMAND...: polls COMMAND every 2 s until it succeeds.
wait_until() {
    local secs="$1" what="$2"
    local deadline=$((SECONDS + secs))
    shift 2
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || die "timed out after $secs s waiting for $what"
        sleep 2
    done
}
# Retries a CLI call a few times: a gateway that just became ready may not see logic yet.
retry() {
    local n
    for n in 1 2 3 4 5; do
        if "$@"; then return 0; fi
        [ "$n" -lt 5 ] && sleep 3
    done
    return 1
}

# --- 1. the operator -------------------------------------------------------------------
timeout 60 "$KUBECTL" create namespace "$NS" >/dev/null
if ! timeout 60 "$KUBECTL" get crd imclusters.fastim.io >/dev/null 2>&1; then
    CRD_CREATED=1
fi
step "applying crds/imcluster.yaml (server-side)"
timeout 60 "$KUBECTL" apply --server-side --force-conflicts -f crds/imcluster.yaml >/dev/null
timeout 90 "$KUBECTL" wait --for=condition=Established crd/imclusters.fastim.io --timeout=60s >/dev/null

step "helm install $RELEASE (image $IMAGE_REPO:$IMAGE_TAG, watching $NS)"
timeout $((WAIT + 30)) "$HELM" install "$RELEASE" charts/fastim-operator -n "$NS" \
    --set image.repository="$IMAGE_REPO" --set-string image.tag="$IMAGE_TAG" \
    --set watchNamespace="$NS" --set logLevel=debug \
    --wait --timeout "${WAIT}s" >/dev/null
holder() { [ -n "$(k get lease fastim-operator -o jsonpath='{.spec.holderIdentity}')" ]; }
wait_until 120 "the operator to take the leader Lease" holder
# helm --wait saw both replicas ready: the standby is ready too.
step "operator running (2 replicas); Lease held by $(k get lease fastim-operator -o jsonpath='{.spec.holderIdentity}')"

# --- 2. dependencies and the IMCluster -------------------------------------------------
step "applying examples/dev-dependencies.yaml (etcd, Redis, PostgreSQL, Secret fastim-dev-db)"
k apply -f examples/dev-dependencies.yaml >/dev/null
kwait "$WAIT" --for=condition=Available deploy/etcd deploy/redis deploy/postgres

step "applying examples/imcluster-dev.yaml with image $IMAGE"
manifest="$(sed -E "s|^(  image: ).*|\\1$IMAGE|" examples/imcluster-dev.yaml)"
grep -qx "  image: $IMAGE" <<<"$manifest" || die "could not substitute the image in examples/imcluster-dev.yaml"
k apply -f - >/dev/null <<<"$manifest"
kwait "$WAIT" --for=condition=Ready "imcluster/$CLUSTER"
generation="$(k get imcluster "$CLUSTER" -o jsonpath='{.metadata.generation}')"
observed="$(k get imcluster "$CLUSTER" -o jsonpath='{.status.observedGeneration}')"
endpoint="$(k get imcluster "$CLUSTER" -o jsonpath='{.status.endpoint}')"
[ "$generation" = "$observed" ] || die "status.observedGeneration $observed, metadata.generation $generation"
[ -n "$endpoint" ] || die "status.endpoint is empty"
step "IMCluster $CLUSTER Ready; endpoint $endpoint"

# --- 3. a message through the Service ------------------------------------------------
service="$CLUSTER-gateway"
remote_port="$(k get svc "$service" -o jsonpath='{.spec.ports[?(@.name=="tcp")].port}')"
[ -n "$remote_port" ] || die "service $service has no port named tcp"
pf_log="$(mktemp)"
"$KUBECTL" -n "$NS" port-forward "service/$service" ":$remote_port" >"$pf_log" 2>&1 &
PF_PID=$!
forwarded() { grep -q 'Forwarding from 127.0.0.1:' "$pf_log"; }
wait_until 30 "kubectl port-forward service/$service" forwarded
local_port="$(sed -n 's/^Forwarding from 127.0.0.1:\([0-9]*\) .*/\1/p' "$pf_log" | head -n1)"
SERVER="127.0.0.1:$local_port"
step "port-forward service/$service $local_port -> $remote_port"

export FASTIM_PASSWORD="e2e-password-$RUN_ID"
retry timeout 30 "$FASTIM" register --server "$SERVER" --user e2e-alice >/dev/null \
    || die "fastim register e2e-alice through $SERVER failed"
retry timeout 30 "$FASTIM" register --server "$SERVER" --user e2e-bob >/dev/null \
    || die "fastim register e2e-bob through $SERVER failed"
text="hello from k8s-e2e $RUN_ID"
retry timeout 30 "$FASTIM" send --server "$SERVER" --user e2e-alice --to e2e-bob "$text" >/dev/null \
    || die "fastim send through $SERVER failed"
received="$(timeout 60 "$FASTIM" recv --server "$SERVER" --user e2e-bob --for 5 --json)" \
    || die "fastim recv through $SERVER failed"
grep -F "\"text\":\"$text\"" <<<"$received" | grep -qF '"from":"e2e-alice"' \
    || die "e2e-bob did not receive the message; recv printed: $received"
step "message sent by e2e-alice received by e2e-bob through service/$service"
kill "$PF_PID" 2>/dev/null || true
PF_PID=""

# --- 4. scale through the scale subresource --------------------------------------------
step "kubectl scale imcluster/$CLUSTER --replicas=3"
k scale "imcluster/$CLUSTER" --replicas=3 >/dev/null
three_ready() { [ "$(k get imcluster "$CLUSTER" -o jsonpath='{.status.gateway.readyReplicas}')" = 3 ]; }
wait_until "$WAIT" "status.gateway.readyReplicas=3" three_ready
[ "$(k get deploy "$CLUSTER-gateway" -o jsonpath='{.status.readyReplicas}')" = 3 ] \
    || die "deployment $CLUSTER-gateway does not have 3 ready pods"
step "3 gateways ready ($(k get imcluster "$CLUSTER" -o jsonpath='{.status.gateway.selector}'))"

# --- 5. deletion garbage-collects what the operator made ------------------------------
step "deleting imcluster/$CLUSTER"
timeout 150 "$KUBECTL" -n "$NS" delete imcluster "$CLUSTER" --wait --timeout=120s >/dev/null
owned_gone() {
    [ -z "$(k get deploy,svc,configmap,serviceaccount -l "app.kubernetes.io/instance=$CLUSTER" -o name)" ]
}
wait_until 180 "the IMCluster's Deployments, Service, ConfigMap and ServiceAccount to be garbage-collected" owned_gone
step "owned objects garbage-collected"
