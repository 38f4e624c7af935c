#!/usr/bin/env bash
# Quick start: installs prerequisites, builds FastIM, and runs the whole system in one
# process (`fastim standalone`: TCP on 127.0.0.1:7000, WebSocket on 127.0.0.1:7001,
# data in ./fastim-data). Extra arguments go to `fastim standalone`.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
"$here/scripts/install-deps.sh"
cargo build --release --manifest-path "$here/Cargo.toml" -p fastim
exec "$here/target/release/fastim" standalone "$@"
