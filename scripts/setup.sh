#!/usr/bin/env bash
# Installs what building and running snapbpf needs and the machine lacks.
# Idempotent: does nothing when everything is present.
set -euo pipefail

need_pkgs=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
# fonts-dejavu-core: the text of the benchmark charts (crates/bench/src/charts.rs).
for pkg in clang llvm libelf-dev zlib1g-dev pkg-config linux-libc-dev util-linux python3 fonts-dejavu-core; do
    have_pkg "$pkg" || need_pkgs+=("$pkg")
done
if ((${#need_pkgs[@]})); then
    echo "==> installing system packages: ${need_pkgs[*]}" >&2
    if [[ $(id -u) -ne 0 ]]; then
        echo "error: installing ${need_pkgs[*]} needs root (run as root or install them)" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null; then
    echo "error: cargo (Rust stable) is required and not on PATH" >&2
    exit 1
fi
# s3s-fs: the S3-compatible server the fleet tests run on loopback (built from crates.io
# once, into cargo's bin directory).
S3S_FS_VERSION=0.14.1
if ! command -v s3s-fs >/dev/null && [[ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/s3s-fs" ]]; then
    echo "==> installing s3s-fs $S3S_FS_VERSION (the tests' S3 server; a few minutes, once)" >&2
    cargo install --locked --quiet s3s-fs --version "$S3S_FS_VERSION" --features binary
fi
# tracefs is where BPF tracepoints are found; mount it if the system did not.
if [[ $(id -u) -eq 0 && ! -d /sys/kernel/tracing/events ]]; then
    mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null || true
fi
