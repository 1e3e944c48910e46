#!/usr/bin/env bash
# The test command: installs what is missing, then runs every test against real KVM/BPF.
# Tests skip with a loud message where /dev/kvm or BPF is missing, except under CI=true.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
if [[ $(id -u) -ne 0 ]]; then
    echo "warning: not root: KVM, BPF and page-cache tests need root and will skip (or fail under CI=true)" >&2
fi
cargo test --workspace --locked "$@"
