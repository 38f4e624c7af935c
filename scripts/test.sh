#!/usr/bin/env bash
# Runs the whole FastIM test suite: unit tests, the storage conformance suite and the
# end-to-end tests that start the real `fastim` binary. Installs missing system
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
