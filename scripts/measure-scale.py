#!/usr/bin/env python3
"""Scale (issue 27): what a snapshot, a record and a cold restore cost as guest memory
grows while the working set stays the same.

usage: scripts/measure-scale.py REPS FUNCTION MEM_MIB[,MEM_MIB...] OUT.json [--vmm builtin,firecracker]
       scripts/measure-scale.py --working-sets REPS MEM_MIB INIT_MIB WS_MIB[,WS_MIB...] OUT.json [--vmm ...]
       scripts/measure-scale.py --summarize OUT.json [OUT.json...]
       scripts/measure-scale.py --charts OUT.json DIR
  e.g. scripts/measure-scale.py 5 pyaes 256,1024,4096,8192,16384 docs/results/scale/run2.json
       scripts/measure-scale.py --working-sets 5 8192 4096 16,64,256,1024,4096 docs/results/scale/ws1.json

The first form holds the function (its working set) and grows guest memory; the second
holds guest memory and the `footprint` function's init footprint (INIT_MIB of data) and
grows the working set each invocation reads (`footprint:INIT_MIB:WS_MIB`), sparse
snapshots only.

For each VMM and guest memory size: a sparse snapshot (the default) and a dense one
(`--dense`: every page written, as Firecracker writes a full snapshot), each timed, with
the blocks their memory file holds on disk; SnapBPF's record phase, timed, with its working
set's size and its artifact's; then REPS rounds of cold single-VM restores, each round running every
(snapshot layout, strategy) cell once in an order shuffled per round (the seed is in the
output), so the device's drift spreads over all cells; then, once per strategy, ten
concurrent cold VMs of the sparse snapshot, for the run's memory. Every run's checksum is
compared with a fresh boot's. `--summarize` renders the tables (medians, min-max) and the slope per
GiB of guest memory (least squares over the medians) from the raw samples; `--charts`
draws each curve (medians against memory or working set) as SVG files in DIR, named after
OUT.json.

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
from svgchart import line_chart  # noqa: E402

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


def cold_run(snap, strategy, want, what, concurrency=1):
    report = json.loads(snapbpf("invoke", snap, "--strategy", strategy, "--cold", "--input", "1",
                                "--concurrency", str(concurrency), "--json"))
    for run in report["runs"]:
        if run["checksum"] != want:
            sys.exit(f"{what} {strategy}: checksum {run['checksum']}, a fresh boot gives {want}")
    return report


def measure_size(function, vmm, mem_mib, reps, rng, want, layouts=LAYOUTS):
    base = os.path.join(work_dir(), f"scale-{vmm}-{function.replace(':', '-')}-{mem_mib}")
    row = {"vmm": vmm, "mem_mib": mem_mib, "function": function, "layouts": {}, "samples": [],
           "ten": []}
    snaps = {}
    for layout in layouts:
        snap = f"{base}-{layout}"
        shutil.rmtree(snap, ignore_errors=True)
        args = ["snapshot", function, "--mem-mib", str(mem_mib), "--vmm", vmm, "--out", snap]
        if layout == "dense":
            args.append("--dense")
        subprocess.run(["sync"], check=True)
        snapshot_ms = timed(*args)
        memory = os.path.join(snap, "memory")
        started = time.monotonic()
        # Record the input the restores invoke: footprint's inputs read disjoint pages, so a
        # working set recorded on another input predicts none of them.
        recorded = json.loads(snapbpf("record", snap, "--strategy", "snapbpf", "--input", "1", "--json"))
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
    cells = [(layout, strategy) for layout in layouts for strategy in STRATEGIES[vmm]]
    what = f"{vmm} {function} {mem_mib} MiB"
    for rep in range(reps):
        order = cells[:]
        rng.shuffle(order)
        for layout, strategy in order:
            run = cold_run(snaps[layout], strategy, want, f"{what} {layout}")["runs"][0]
            row["samples"].append({"rep": rep, "layout": layout, "strategy": strategy,
                                   "restore_ms": run["restore_ms"], "e2e_ms": run["e2e_ms"],
                                   "cpu_ms": run.get("cpu_ms")})
    for strategy in STRATEGIES[vmm]:
        report = cold_run(snaps["sparse"], strategy, want, f"{what} ten VMs", concurrency=10)
        runs = report["runs"]
        row["ten"].append({"strategy": strategy, "memory": report["memory"],
                           "e2e_ms": [r["e2e_ms"] for r in runs],
                           "cpu_ms": [r.get("cpu_ms") for r in runs]})
    for snap in snaps.values():
        shutil.rmtree(snap, ignore_errors=True)
    return row


def main(reps, function, sizes, out_path, vmms, working_sets=None):
    """Grows guest memory over `sizes` for `function`; or, with `working_sets` (init MiB,
    [ws MiB]), holds memory at `sizes[0]` and grows footprint's working set."""
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    out = {**stamp(), "function": function, "reps": reps, "seed": seed, "rows": []}
    if working_sets:
        out["sweep"] = "working set"
        out["init_mib"] = working_sets[0]
    if "firecracker" in vmms:
        fc = os.environ.get("FIRECRACKER")
        if not fc:
            sys.exit("--vmm firecracker needs $FIRECRACKER")
        out["firecracker"] = subprocess.check_output([fc, "--version"], text=True).splitlines()[0]
    if working_sets:
        init_mib, sweep = working_sets
        calls = [(f"footprint:{init_mib}:{ws}", sizes[0]) for ws in sweep]
        layouts = ["sparse"]
    else:
        calls = [(function, mem_mib) for mem_mib in sizes]
        layouts = LAYOUTS
    wants = {call: reference(call) for call in dict.fromkeys(c for c, _ in calls)}
    for vmm in vmms:
        for call, mem_mib in calls:
            print(f"scale: {vmm}, {call}, {mem_mib} MiB", file=sys.stderr, flush=True)
            out["rows"].append(measure_size(call, vmm, mem_mib, reps, rng, wants[call], layouts))
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


def sweep_axis(out):
    """Whether `out` sweeps the working set, and each row's x: the working set (the
    `footprint:INIT:WS` argument) or guest memory, in GiB."""
    by_ws = out.get("sweep") == "working set"

    def x(row):
        if by_ws:
            return int(row["function"].rsplit(":", 1)[1]) / 1024
        return row["mem_mib"] / 1024
    return by_ws, x


def summarize(out):
    by_ws, x = sweep_axis(out)
    if by_ws:
        per, what = "GiB of working set", f"`footprint` ({out['init_mib']} MiB of data at init)"
    else:
        per, what = "GiB of guest memory", f"`{out['function']}`"
    lines = [f"Scale of {what}, {out['reps']} rounds per row (seed {out['seed']}), "
             f"commit {out['git'][:7]}, {out['cpu']}, kernel {out['kernel']}"
             + (f", {out['firecracker']}" if out.get("firecracker") else "") + ".", ""]
    lines += ["| VMM | function | memory | layout | snapshot ms | blocks MiB | record ms | working set MiB | artifact KiB |",
              "|---|---|---:|---|---:|---:|---:|---:|---:|"]
    for row in out["rows"]:
        for layout, l in row["layouts"].items():
            lines.append(f"| {row['vmm']} | `{row.get('function', out['function'])}` | {row['mem_mib']} MiB | "
                         f"{layout} | {l['snapshot_ms']:.0f} | "
                         f"{l['memory_blocks_bytes'] / 2**20:.1f} | {l['record_ms']:.0f} | "
                         f"{l['working_set_bytes'] / 2**20:.1f} | {l['artifact_bytes'] / 2**10:.1f} |")
    lines += ["", "Cold restores, median (min-max) of the rounds:", "",
              "| VMM | function | memory | layout | strategy | restore ms | E2E ms |",
              "|---|---|---:|---|---|---:|---:|"]
    cells = {}
    for row in out["rows"]:
        keys = sorted({(s["layout"], s["strategy"]) for s in row["samples"]})
        for layout, strategy in keys:
            got = [s for s in row["samples"] if s["layout"] == layout and s["strategy"] == strategy]
            restore = [s["restore_ms"] for s in got]
            e2e = [s["e2e_ms"] for s in got]
            lines.append(f"| {row['vmm']} | `{row.get('function', out['function'])}` | {row['mem_mib']} MiB | "
                         f"{layout} | {strategy} | {spread(restore)} | {spread(e2e)} |")
            cells.setdefault((row["vmm"], layout, strategy), []).append(
                (x(row), statistics.median(restore), statistics.median(e2e)))
    lines += ["", f"Slopes per {per} (least squares over the medians):", "",
              f"| VMM | layout | strategy | restore ms/GiB | E2E ms/GiB |", "|---|---|---|---:|---:|"]
    for (vmm, layout, strategy), pts in sorted(cells.items()):
        lines.append(f"| {vmm} | {layout} | {strategy} | {slope([(x, r) for x, r, _ in pts]):+.2f} | "
                     f"{slope([(x, e) for x, _, e in pts]):+.2f} |")
    snap = {}
    for row in out["rows"]:
        for layout, l in row["layouts"].items():
            snap.setdefault((row["vmm"], layout), []).append(
                (x(row), l["snapshot_ms"], l["memory_blocks_bytes"] / 2**20, l["record_ms"]))
    lines += ["", f"| VMM | layout | snapshot ms/{per} | blocks MiB/{per} | record ms/{per} |",
              "|---|---|---:|---:|---:|"]
    for (vmm, layout), pts in sorted(snap.items()):
        lines.append(f"| {vmm} | {layout} | {slope([(x, t) for x, t, _, _ in pts]):+.1f} | "
                     f"{slope([(x, b) for x, _, b, _ in pts]):+.1f} | "
                     f"{slope([(x, r) for x, _, _, r in pts]):+.1f} |")
    ten = [(row, t) for row in out["rows"] for t in row.get("ten", [])]
    if ten:
        lines += ["", "Ten concurrent cold VMs of the sparse snapshot (one run each): the run's memory "
                  "(page cache counted once, every VM's anonymous memory) and the VMs' E2E:", "",
                  "| VMM | function | memory | strategy | total MiB | page cache MiB | anonymous MiB | E2E ms median (min-max) |",
                  "|---|---|---:|---|---:|---:|---:|---:|"]
        for row, t in ten:
            m = t["memory"]
            lines.append(f"| {row['vmm']} | `{row['function']}` | {row['mem_mib']} MiB | {t['strategy']} | "
                         f"{m['total_kib'] / 1024:.1f} | {m['page_cache_kib'] / 1024:.1f} | "
                         f"{m['anon_kib'] / 1024:.1f} | {spread(t['e2e_ms'])} |")
        mem = {}
        for row, t in ten:
            mem.setdefault((row["vmm"], t["strategy"]), []).append(
                (x(row), t["memory"]["total_kib"] / 1024))
        lines += ["", f"| VMM | strategy | ten-VM memory MiB/{per} |", "|---|---|---:|"]
        for (vmm, strategy), pts in sorted(mem.items()):
            lines.append(f"| {vmm} | {strategy} | {slope(pts):+.1f} |")
    return "\n".join(lines)


def charts(out, out_path, directory):
    """Writes one SVG per curve of `out` into `directory`; returns their paths."""
    by_ws, x = sweep_axis(out)

    x_label = (f"working set, GiB (footprint, {out['init_mib']} MiB at init, "
               f"{out['rows'][0]['mem_mib'] // 1024} GiB guest)" if by_ws else
               f"guest memory, GiB ({out['function']})")
    restore, e2e, snap, blocks, record, ten = {}, {}, {}, {}, {}, {}
    for row in out["rows"]:
        for layout, l in row["layouts"].items():
            name = f"{row['vmm']} {layout}"
            snap.setdefault(name, []).append((x(row), l["snapshot_ms"]))
            blocks.setdefault(name, []).append((x(row), l["memory_blocks_bytes"] / 2**20))
            record.setdefault(name, []).append((x(row), l["record_ms"]))
        for layout, strategy in sorted({(s["layout"], s["strategy"]) for s in row["samples"]}):
            got = [s for s in row["samples"] if s["layout"] == layout and s["strategy"] == strategy]
            name = f"{row['vmm']} {layout} {strategy}"
            restore.setdefault(name, []).append((x(row), statistics.median(s["restore_ms"] for s in got)))
            e2e.setdefault(name, []).append((x(row), statistics.median(s["e2e_ms"] for s in got)))
        for t in row.get("ten", []):
            ten.setdefault(f"{row['vmm']} {t['strategy']}", []).append((x(row), t["memory"]["total_kib"] / 1024))
    stem = os.path.splitext(os.path.basename(out_path))[0]
    curves = [("restore", "Cold restore, median", "restore_ms", restore),
              ("e2e", "Cold restore and invocation, median", "E2E ms", e2e),
              ("snapshot", "Snapshot time", "ms", snap),
              ("blocks", "Memory file blocks on disk", "MiB", blocks),
              ("record", "SnapBPF record time", "ms", record),
              ("ten-vm-memory", "Ten concurrent cold VMs: memory", "MiB", ten)]
    os.makedirs(directory, exist_ok=True)
    written = []
    for name, title, y_label, series in curves:
        if not series:
            continue
        path = os.path.join(directory, f"{stem}-{name}.svg")
        with open(path + ".tmp", "w") as fh:
            fh.write(line_chart(f"{title} ({stem}, commit {out['git'][:7]})", x_label, y_label,
                                sorted(series.items())))
            fh.flush()
            os.fsync(fh.fileno())
        os.rename(path + ".tmp", path)
        written.append(path)
    return written


if __name__ == "__main__":
    args = sys.argv[1:]
    vmms = ["builtin"]
    if len(args) >= 2 and args[-2] == "--vmm":
        vmms = args[-1].split(",")
        args = args[:-2]
    if len(args) >= 2 and args[0] == "--summarize":
        # Several files: each under a heading naming it.
        for i, path in enumerate(args[1:]):
            if len(args) > 2:
                print(("\n" if i else "") + f"## {os.path.basename(path)}\n")
            print(summarize(json.load(open(path))))
    elif len(args) == 3 and args[0] == "--charts":
        for path in charts(json.load(open(args[1])), args[1], args[2]):
            print(path)
    elif len(args) == 6 and args[0] == "--working-sets":
        main(int(args[1]), "footprint", [int(args[2])], args[5], vmms,
             working_sets=(int(args[3]), [int(w) for w in args[4].split(",")]))
    elif len(args) == 4:
        main(int(args[0]), args[1], [int(m) for m in args[2].split(",")], args[3], vmms)
    else:
        sys.exit(__doc__)
