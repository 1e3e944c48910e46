#!/usr/bin/env python3
"""Input variability (the SnapBPF paper's future work): how a working set recorded with one
input serves another, and what merging the two costs.

usage: scripts/measure-variability.py REPS FUNCTIONS OUT.json
       scripts/measure-variability.py --summarize OUT.json
  e.g. scripts/measure-variability.py 3 all docs/results/variability/run1.json

For each function: a snapshot; SnapBPF's working set recorded with input 0 alone (ws0),
with input 1 alone (ws1), and merged (ws1 recorded again with input 0: the union, ordered
by earliest access). Coverage is the share of the restored input's own working-set pages
that the installed working set holds. Then REPS cold single-VM restores of input 1 with
each working set installed in turn (ws1 matched, ws0 crossed, merged), and of input 0
with the merged one, under `snapbpf` (the default, 2 MiB folios) and `snapbpf:4k` (the
paper's design): E2E, the vCPU thread's major faults (demand reads the prefetch missed),
bytes prefetched and the run's memory. Every checksum is compared with a fresh boot's.

Needs root and the release binary (cargo build --release -p snapbpf-cli). Snapshots live
in WORK/variability-<function> (WORK: measurelib.work_dir).
"""
import json
import os
import shutil
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from measurelib import function_list, inputs_of, snapbpf, stamp, work_dir, write_json  # noqa: E402

STRATEGIES = ["snapbpf", "snapbpf:4k"]
# (label, working set installed, input restored)
CASES = [
    ("matched", "ws1", 1),
    ("crossed", "ws0", 1),
    ("merged", "merged", 1),
    ("merged, input 0", "merged", 0),
]


def pages_of(ws_file):
    """The set of pages a working-set file records."""
    info = json.loads(snapbpf("inspect", ws_file, "--json"))
    return {p for r in info["ranges_list"] for p in range(r["start"], r["start"] + r["pages"])}


def record(snap, input_no):
    snapbpf("record", snap, "--strategy", "snapbpf", "--input", str(input_no))


def measure_function(function, reps):
    if inputs_of(function) < 2:
        return None
    snap = os.path.join(work_dir(), f"variability-{function}")
    snapbpf("snapshot", function, "--out", snap)
    ws = os.path.join(snap, "snapbpf.ws")
    saved = {}
    for name, steps in [("ws0", [0]), ("ws1", [1]), ("merged", [1, 0])]:
        if os.path.exists(ws):
            os.remove(ws)
        for input_no in steps:
            record(snap, input_no)
        saved[name] = f"{snap}/{name}.ws"
        shutil.copyfile(ws, saved[name])
    pages = {name: pages_of(path) for name, path in saved.items()}
    expected = {i: json.loads(snapbpf("boot", function, "--input", str(i), "--json"))["checksum"] for i in (0, 1)}
    own = {0: pages["ws0"], 1: pages["ws1"]}
    out = {"function": function, "pages": {k: len(v) for k, v in pages.items()},
           "shared_pages": len(pages["ws0"] & pages["ws1"]), "cases": []}
    for label, installed, input_no in CASES:
        shutil.copyfile(saved[installed], ws)
        coverage = len(pages[installed] & own[input_no]) / max(1, len(own[input_no]))
        extra = len(pages[installed] - own[input_no])
        for strategy in STRATEGIES:
            samples = []
            for _ in range(reps):
                r = json.loads(snapbpf("invoke", snap, "--strategy", strategy, "--input", str(input_no),
                                       "--cold", "--json"))
                run = r["runs"][0]
                if run["checksum"] != expected[input_no]:
                    sys.exit(f"WRONG ANSWER: {function} {label} {strategy}: {run['checksum']} != {expected[input_no]}")
                samples.append({"e2e_ms": run["e2e_ms"], "major_faults": run["major_faults"],
                                "prefetch_bytes": r["prefetch"]["bytes"], "memory_kib": r["memory"]["total_kib"]})
            out["cases"].append({"case": label, "installed": installed, "input": input_no, "strategy": strategy,
                                 "coverage": coverage, "extra_pages": extra, "samples": samples})
            med = statistics.median(s["e2e_ms"] for s in samples)
            print(f"{function:13} {label:16} {strategy:11} coverage {coverage:6.1%} e2e {med:8.1f} ms", file=sys.stderr)
    shutil.copyfile(saved["merged"], ws)
    return out


def summarize(path):
    data = json.load(open(path))
    lines = [f"# Input variability (`scripts/measure-variability.py`)\n",
             f"git {data['stamp']['git']} · {data['stamp']['cpu']} · kernel {data['stamp']['kernel']} · {data['stamp']['date']}\n",
             "Working sets recorded with input 0 (ws0), input 1 (ws1) and both (merged). Coverage: share of "
             "the restored input's own working-set pages the installed one holds; extra: pages it holds that "
             "the input does not touch. Cold, one VM, median (min–max) of the repetitions.\n",
             "| function | ws0 / ws1 / merged MiB | shared | case | coverage | extra MiB | strategy | E2E ms | major faults | prefetched MiB | memory MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for f in data["functions"]:
        p = f["pages"]
        sizes = f"{p['ws0'] / 256:.1f} / {p['ws1'] / 256:.1f} / {p['merged'] / 256:.1f}"
        shared = f"{f['shared_pages'] / max(1, min(p['ws0'], p['ws1'])):.0%}"
        for c in f["cases"]:
            s = c["samples"]
            e2e = sorted(x["e2e_ms"] for x in s)
            lines.append(
                f"| {f['function']} | {sizes} | {shared} | {c['case']} | {c['coverage']:.1%} | {c['extra_pages'] / 256:.1f} "
                f"| {c['strategy']} | {statistics.median(e2e):.0f} ({e2e[0]:.0f}–{e2e[-1]:.0f}) "
                f"| {statistics.median(x['major_faults'] for x in s):.0f} "
                f"| {statistics.median(x['prefetch_bytes'] for x in s) / 2**20:.1f} "
                f"| {statistics.median(x['memory_kib'] for x in s) / 1024:.0f} |")
    md = os.path.join(os.path.dirname(path), "summary.md")
    with open(md + ".tmp", "w") as fh:
        fh.write("\n".join(lines) + "\n")
    os.rename(md + ".tmp", md)
    print(f"wrote {md}", file=sys.stderr)


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--summarize":
        return summarize(sys.argv[2])
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    reps, functions, out_path = int(sys.argv[1]), function_list(sys.argv[2]), sys.argv[3]
    out = {"stamp": stamp(), "reps": reps, "functions": []}
    for function in functions:
        result = measure_function(function, reps)
        if result:
            out["functions"].append(result)
            write_json(out, out_path)
    write_json(out, out_path)
    summarize(out_path)


if __name__ == "__main__":
    main()
