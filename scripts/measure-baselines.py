#!/usr/bin/env python3
"""Cold E2E latency and memory of linux-ra, reap and faasnap (docs/baselines.md).

usage: scripts/measure-baselines.py REPS FUNCTIONS CONCURRENCIES OUT.json
  e.g. scripts/measure-baselines.py 5 bert,image 1,10 docs/results/baselines-run1.json

Needs the release binary (cargo build --release -p snapbpf-cli). Snapshots live in
WORK/bl-<function> (WORK: measurelib.work_dir); missing ones are taken and recorded (input 0). Every measured run
is cold and uses input 1; strategies are interleaved within each repetition.
"""
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from measurelib import BIN, ROOT, work_dir  # noqa: E402

STRATEGIES = ["linux-ra", "reap", "faasnap"]


def main():
    reps, functions, concs, out_path = int(sys.argv[1]), sys.argv[2].split(","), [int(c) for c in sys.argv[3].split(",")], sys.argv[4]
    git = subprocess.check_output(["git", "-C", ROOT, "rev-parse", "HEAD"], text=True).strip()
    out = {"git": git, "kernel": os.uname().release, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rows": []}
    for f in functions:
        snap = os.path.join(work_dir(), f"bl-{f}")
        if not os.path.exists(snap):
            subprocess.check_call([BIN, "snapshot", f, "--out", snap])
            for s in ("reap", "faasnap"):
                subprocess.check_call([BIN, "record", snap, "--strategy", s, "--input", "0"])
        for c in concs:
            samples = {s: [] for s in STRATEGIES}
            loads = []
            for _ in range(reps):
                for s in STRATEGIES:
                    loads.append(os.getloadavg()[0])
                    cmd = [BIN, "invoke", snap, "--strategy", s, "--cold", "--concurrency", str(c), "--input", "1", "--json"]
                    samples[s].append(json.loads(subprocess.check_output(cmd)))
            for s in STRATEGIES:
                ss = samples[s]
                e2e = [statistics.median(r["e2e_ms"] for r in j["runs"]) for j in ss]
                row = dict(
                    function=f, strategy=s, concurrency=c,
                    e2e_ms=statistics.median(e2e), e2e_min=min(e2e), e2e_max=max(e2e),
                    restore_ms=statistics.median(statistics.median(r["restore_ms"] for r in j["runs"]) for j in ss),
                    mem_total_mib=statistics.median(j["memory"]["total_kib"] / 1024 for j in ss),
                    page_cache_mib=statistics.median(j["memory"]["page_cache_kib"] / 1024 for j in ss),
                    anon_mib=statistics.median(j["memory"]["anon_kib"] / 1024 for j in ss),
                    prefetch=ss[-1]["prefetch"],
                    checksums=sorted({r["checksum"] for j in ss for r in j["runs"]}),
                    load_median=statistics.median(loads),
                    raw=ss,
                )
                out["rows"].append(row)
                print(f"{f:6} {s:9} c={c:2}  e2e {row['e2e_ms']:8.1f} ms [{row['e2e_min']:.0f}-{row['e2e_max']:.0f}]"
                      f"  restore {row['restore_ms']:6.1f}  mem {row['mem_total_mib']:7.1f} MiB"
                      f" (cache {row['page_cache_mib']:.1f} + anon {row['anon_mib']:.1f})  load {row['load_median']:.1f}",
                      flush=True)
    with open(out_path, "w") as fh:
        json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
