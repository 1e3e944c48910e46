#!/usr/bin/env bash
# Soak test (not part of the test command): many restores from one long-lived launcher,
# every strategy, sequential and 10 at a time, every checksum checked; the launcher's and
# a long-lived uffd-handler's descriptors, threads and RSS sampled throughout.
# Results: docs/results/soak/ (soak.json raw, README.md summary).
#   scripts/soak.sh [--sequential N] [--rounds N] [--concurrency N]   (per strategy; defaults 1000, 100, 10)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# Two builds: a target filter (--example) given with several packages would skip the CLI.
cargo build --release --locked -p snapbpf-cli
cargo build --release --locked -p snapbpf --example soak
B=target/release/snapbpf
WORK=$(mktemp -d /var/tmp/snapbpf-soak.XXXXXX)
HANDLER=
cleanup() {
    [[ -n "$HANDLER" ]] && kill "$HANDLER" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
SNAP="$WORK/pyaes"
"$B" snapshot pyaes --out "$SNAP" >/dev/null
for s in $("$B" strategies --json | python3 -c 'import json,sys; print(" ".join(s["name"] for s in json.load(sys.stdin)["strategies"] if s["record"]))'); do
    "$B" record "$SNAP" --strategy "$s" >/dev/null
done
REF=$("$B" boot pyaes --input 0 --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["checksum"])')
"$B" uffd-handler --socket "$WORK/handler.sock" --snapshot "$SNAP" &
HANDLER=$!
for _ in $(seq 500); do [[ -S "$WORK/handler.sock" ]] && break; sleep 0.02; done
mkdir -p docs/results/soak
target/release/examples/soak --snapshot "$SNAP" --worker "$B" --reference "$REF" \
    --handler-socket "$WORK/handler.sock" --handler-pid "$HANDLER" \
    --out docs/results/soak/soak.json "$@"
python3 - <<'PY'
import json
d = json.load(open("docs/results/soak/soak.json"))
s = d["samples"]
first, last = s[0], s[-1]
after_warmup = s[1]
def row(who, key):
    vals = [x[who][key] for x in s]
    return f"| {who} {key} | {first[who][key]} | {after_warmup[who][key]} | {last[who][key]} | {min(vals)} | {max(vals)} |"
lines = [
    "# Soak",
    "",
    f"`scripts/soak.sh`: {d['vms']} VMs in {d['seconds']:.0f} s from one launcher process, "
    f"strategies {', '.join(d['strategies'])}; per strategy {d['sequential_per_strategy']} sequential "
    f"restores and {d['concurrent_rounds_per_strategy']} rounds of {d['concurrency']} concurrent "
    f"(cold and warm alternating). Wrong checksums: **{d['wrong_checksums']}**.",
    "",
    f"{len(s)} samples of the launcher (this process) and of one long-lived `uffd-handler` that served every "
    "`reap:uffd-handler` VM. Raw samples: `soak.json`.",
    "",
    "| process / measure | start | first sample | end | min | max |",
    "|---|---:|---:|---:|---:|---:|",
]
for who in ["launcher", "handler"]:
    for key in ["fds", "threads", "rss_kib"]:
        lines.append(row(who, key))
open("docs/results/soak/README.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
