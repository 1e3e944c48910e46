#!/usr/bin/env bash
# The demo: snapshots functions and prints a comparison of restore strategies, cold and warm,
# under snapbpf's VMM and, when a Firecracker binary is found, under Firecracker too.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --locked -p snapbpf-cli
# Firecracker: $FIRECRACKER, else `firecracker` on PATH, else the one this machine kind keeps
# beside the checkout (../shared/firecracker, as .ci/run uses it).
if [ -z "${FIRECRACKER:-}" ]; then
    if command -v firecracker >/dev/null 2>&1; then
        FIRECRACKER=$(command -v firecracker)
    elif [ -x ../shared/firecracker/firecracker ]; then
        FIRECRACKER=$(realpath ../shared/firecracker/firecracker)
    fi
fi
vmms=builtin
if [ -n "${FIRECRACKER:-}" ] && [ -x "$FIRECRACKER" ]; then
    export FIRECRACKER
    vmms=builtin,firecracker
    echo "demo: Firecracker $FIRECRACKER: comparing under both VMMs" >&2
else
    echo "demo: no Firecracker (\$FIRECRACKER, PATH or ../shared/firecracker): snapbpf's VMM only" >&2
fi
# A --vmm of the caller's wins.
for arg in "$@"; do
    case "$arg" in --vmm | --vmm=*) vmms= ;; esac
done
exec target/release/snapbpf bench --quick ${vmms:+--vmm "$vmms"} --out "${DEMO_OUT:-bench-out/demo}" "$@"
