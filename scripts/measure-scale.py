#!/usr/bin/env python3
"""Scale (issue 27): what a snapshot, a record and a cold restore cost as guest memory
grows while the working set stays the same.

usage: scripts/measure-scale.py REPS FUNCTION MEM_MIB[,MEM_MIB...] OUT.json [--vmm builtin,firecracker]
       scripts/measure-scale.py --summarize OUT.json
  e.g. scripts/measure-scale.py 5 pyaes 256,512,1024,2048,3072 docs/results/scale/run1.json

For each VMM and guest memory size: a sparse snapshot (the default) and a dense one
(`--dense`: every page written, as Firecracker writes a full snapshot), each timed, with
the blocks their memory file holds on disk; SnapBPF's record phase, timed, with its working
set's size and its artifact's; then REPS rounds of cold single-VM restores, each round running every
(snapshot layout, strategy) cell once in an order shuffled per round (the seed is in the
output), so the device's drift spreads over all cells. Every run's checksum is compared
with a fresh boot's. `--summarize` renders the tables (medians, min-max) and the slope per
GiB of guest memory (least squares over the medians) from the raw samples.

Needs root and the release binary (cargo build --release -p snapbpf-cli); Firecracker rows
need $FIRECRACKER. Snapshots live in WORK/scale-* (WORK: measurelib.work_dir) and are
removed after each size.
"""
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from measurelib import snapbpf, stamp, work_dir, write_json  # noqa: E402

STRATEGIES = {"builtin": ["linux-ra", "snapbpf"], "firecracker": ["linux-ra", "snapbpf"]}
LAYOUTS = ["sparse", "dense"]


def timed(*args):
    started = time.monotonic()
    snapbpf(*args)
    return (time.monotonic() - started) * 1e3


def blocks(path):
    return os.stat(path).st_blocks * 512


def reference(function):
    return json.loads(snapbpf("boot", function, "--input", "1", "--json"))["checksum"]


def measure_size(function, vmm, mem_mib, reps, rng, want):
    base = os.path.join(work_dir(), f"scale-{vmm}-{function}-{mem_mib}")
    row = {"vmm": vmm, "mem_mib": mem_mib, "layouts": {}, "samples": []}
    snaps = {}
    for layout in LAYOUTS:
        snap = f"{base}-{layout}"
        shutil.rmtree(snap, ignore_errors=True)
        args = ["snapshot", function, "--mem-mib", str(mem_mib), "--vmm", vmm, "--out", snap]
        if layout == "dense":
            args.append("--dense")
        subprocess.run(["sync"], check=True)
        snapshot_ms = timed(*args)
        memory = os.path.join(snap, "memory")
        started = time.monotonic()
        recorded = json.loads(snapbpf("record", snap, "--strategy", "snapbpf", "--json"))
        record_ms = (time.monotonic() - started) * 1e3
        row["layouts"][layout] = {
            "snapshot_ms": snapshot_ms,
            "memory_bytes": os.path.getsize(memory),
            "memory_blocks_bytes": blocks(memory),
            "record_ms": record_ms,
            "working_set_bytes": recorded["pages"] * 4096,
            "artifact_bytes": sum(size for _, size in recorded["artifacts"]),
        }
        snaps[layout] = snap
    cells = [(layout, strategy) for layout in LAYOUTS for strategy in STRATEGIES[vmm]]
    for rep in range(reps):
        order = cells[:]
        rng.shuffle(order)
        for layout, strategy in order:
            report = json.loads(snapbpf("invoke", snaps[layout], "--strategy", strategy,
                                        "--cold", "--input", "1", "--json"))
            run = report["runs"][0]
            if run["checksum"] != want:
                sys.exit(f"{vmm} {mem_mib} MiB {layout} {strategy}: checksum {run['checksum']}, "
                         f"a fresh boot gives {want}")
            row["samples"].append({"rep": rep, "layout": layout, "strategy": strategy,
                                   "restore_ms": run["restore_ms"], "e2e_ms": run["e2e_ms"]})
    for snap in snaps.values():
        shutil.rmtree(snap, ignore_errors=True)
    return row


def main(reps, function, sizes, out_path, vmms):
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    out = {**stamp(), "function": function, "reps": reps, "seed": seed, "rows": []}
    if "firecracker" in vmms:
        fc = os.environ.get("FIRECRACKER")
        if not fc:
            sys.exit("--vmm firecracker needs $FIRECRACKER")
        out["firecracker"] = subprocess.check_output([fc, "--version"], text=True).splitlines()[0]
    want = reference(function)
    for vmm in vmms:
        for mem_mib in sizes:
            print(f"scale: {vmm}, {mem_mib} MiB", file=sys.stderr, flush=True)
            out["rows"].append(measure_size(function, vmm, mem_mib, reps, rng, want))
            write_json(out, out_path)
    print(summarize(out))


def slope(points):
    """Least-squares slope of (x, y) points."""
    n = len(points)
    if n < 2:
        return float("nan")
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else float("nan")


def spread(values):
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def summarize(out):
    lines = [f"Scale of `{out['function']}`, {out['reps']} rounds per size (seed {out['seed']}), "
             f"commit {out['git'][:7]}, {out['cpu']}, kernel {out['kernel']}"
             + (f", {out['firecracker']}" if out.get("firecracker") else "") + ".", ""]
    lines += ["| VMM | memory | layout | snapshot ms | blocks MiB | record ms | working set MiB | artifact KiB |",
              "|---|---:|---|---:|---:|---:|---:|---:|"]
    for row in out["rows"]:
        for layout, l in row["layouts"].items():
            lines.append(f"| {row['vmm']} | {row['mem_mib']} MiB | {layout} | {l['snapshot_ms']:.0f} | "
                         f"{l['memory_blocks_bytes'] / 2**20:.1f} | {l['record_ms']:.0f} | "
                         f"{l['working_set_bytes'] / 2**20:.1f} | {l['artifact_bytes'] / 2**10:.1f} |")
    lines += ["", "Cold restores, median (min-max) of the rounds:", "",
              "| VMM | memory | layout | strategy | restore ms | E2E ms |", "|---|---:|---|---|---:|---:|"]
    cells = {}
    for row in out["rows"]:
        keys = sorted({(s["layout"], s["strategy"]) for s in row["samples"]})
        for layout, strategy in keys:
            got = [s for s in row["samples"] if s["layout"] == layout and s["strategy"] == strategy]
            restore = [s["restore_ms"] for s in got]
            e2e = [s["e2e_ms"] for s in got]
            lines.append(f"| {row['vmm']} | {row['mem_mib']} MiB | {layout} | {strategy} | "
                         f"{spread(restore)} | {spread(e2e)} |")
            cells.setdefault((row["vmm"], layout, strategy), []).append(
                (row["mem_mib"] / 1024, statistics.median(restore), statistics.median(e2e)))
    lines += ["", "Slopes per GiB of guest memory (least squares over the medians):", "",
              "| VMM | layout | strategy | restore ms/GiB | E2E ms/GiB |", "|---|---|---|---:|---:|"]
    for (vmm, layout, strategy), pts in sorted(cells.items()):
        lines.append(f"| {vmm} | {layout} | {strategy} | {slope([(x, r) for x, r, _ in pts]):+.2f} | "
                     f"{slope([(x, e) for x, _, e in pts]):+.2f} |")
    snap = {}
    for row in out["rows"]:
        for layout, l in row["layouts"].items():
            snap.setdefault((row["vmm"], layout), []).append(
                (row["mem_mib"] / 1024, l["snapshot_ms"], l["memory_blocks_bytes"] / 2**20))
    lines += ["", "| VMM | layout | snapshot ms/GiB | blocks MiB/GiB |", "|---|---|---:|---:|"]
    for (vmm, layout), pts in sorted(snap.items()):
        lines.append(f"| {vmm} | {layout} | {slope([(x, t) for x, t, _ in pts]):+.1f} | "
                     f"{slope([(x, b) for x, _, b in pts]):+.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--summarize":
        print(summarize(json.load(open(sys.argv[2]))))
    elif len(sys.argv) in (5, 7):
        vmms = ["builtin"]
        if len(sys.argv) == 7:
            if sys.argv[5] != "--vmm":
                sys.exit(__doc__)
            vmms = sys.argv[6].split(",")
        main(int(sys.argv[1]), sys.argv[2], [int(m) for m in sys.argv[3].split(",")], sys.argv[4], vmms)
    else:
        sys.exit(__doc__)
