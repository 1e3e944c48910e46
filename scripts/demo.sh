#!/usr/bin/env bash
# The demo: snapshots functions and prints a comparison of restore strategies, cold and warm.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --locked -p snapbpf-cli
exec target/release/snapbpf bench --quick --out "${DEMO_OUT:-bench-out/demo}" "$@"
