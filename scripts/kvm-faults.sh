#!/usr/bin/env bash
# Counts the shadow-MMU work KVM does for one invocation: guest page-table walks (one per
# shadow page fault) and SPTEs installed, by level and writability. Explains the per-page
# cost differences between strategies (docs/results/README.md). Needs root and tracefs
# with the kvmmmu events; uses the trace ring buffer, since this kernel has no hist
# triggers.
#
# usage: scripts/kvm-faults.sh SNAPSHOT_DIR [snapbpf invoke options...]
#   e.g. scripts/kvm-faults.sh snaps/bert --strategy reap --cold
set -euo pipefail
TR=/sys/kernel/tracing
B=${SNAPBPF:-$(dirname "$0")/../target/release/snapbpf}
[[ $# -ge 1 ]] || { echo "usage: $0 SNAPSHOT_DIR [invoke options...]" >&2; exit 2; }
[[ -d $TR/events/kvmmmu ]] || { echo "error: $TR/events/kvmmmu not found (tracefs mounted? root?)" >&2; exit 1; }
[[ -x $B ]] || { echo "error: $B not built (cargo build --release, or set SNAPBPF)" >&2; exit 1; }
snap=$1; shift
events=(kvmmmu/kvm_mmu_set_spte kvmmmu/kvm_mmu_pagetable_walk)
old_size=$(cat $TR/buffer_size_kb)
cleanup() {
    echo 0 > $TR/tracing_on
    for e in "${events[@]}"; do echo 0 > "$TR/events/$e/enable"; done
    echo > $TR/trace
    echo "$old_size" > $TR/buffer_size_kb
}
trap cleanup EXIT
"$B" invoke "$snap" "$@" --json >/dev/null   # settle artifacts and (for warm runs) the cache
echo 0 > $TR/tracing_on
echo > $TR/trace
echo 262144 > $TR/buffer_size_kb
for e in "${events[@]}"; do echo 1 > "$TR/events/$e/enable"; done
echo 1 > $TR/tracing_on
report=$("$B" invoke "$snap" "$@" --json)
echo 0 > $TR/tracing_on
lost=$(grep -h overrun $TR/per_cpu/cpu*/stats | awk '{s += $2} END {print s + 0}')
python3 - "$TR/trace" "$lost" "$report" <<'PY'
import collections, json, re, sys
walks = 0
level = collections.Counter()
writable = collections.Counter()
for line in open(sys.argv[1]):
    if "kvm_mmu_pagetable_walk:" in line:
        walks += 1
    elif "kvm_mmu_set_spte:" in line:
        m = re.search(r"\((.)(.)(.)(.?)\) level (\d)", line)
        if m:
            level[m.group(5)] += 1
            writable["writable" if m.group(2) == "w" else "read-only"] += 1
run = json.loads(sys.argv[3])["runs"][0]
print(f"shadow page faults (walks): {walks}")
print("SPTEs installed: " + ", ".join(f"{n} at level {l} ({4 << (9 * (int(l) - 1))} KiB)" for l, n in sorted(level.items()))
      + f"; {writable['writable']} writable, {writable['read-only']} read-only")
print(f"events lost: {sys.argv[2]}; E2E {run['e2e_ms']:.0f} ms (traced, slower than untraced)")
PY
