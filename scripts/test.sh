#!/usr/bin/env bash
# Runs the whole FastIM test suite: unit tests, the storage conformance suite and the
# end-to-end tests that start the real `fastim` binary, then the Helm chart checks
# (scripts/check-chart.sh) and the real-cluster end-to-end script (tests/k8s-e2e.sh,
# which says SKIPPED where no kind/k3d cluster is reachable). Installs missing system
# prerequisites first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh --test
# End-to-end tests run the real binary: build it first.
cargo build --workspace --bins
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast
    cargo test --workspace --doc
else
    cargo test --workspace --no-fail-fast
fi
# The Helm chart: lint, render, strict schema validation (offline).
scripts/check-chart.sh
# A real cluster, where one is reachable (kind/k3d); prints SKIPPED otherwise.
tests/k8s-e2e.sh
