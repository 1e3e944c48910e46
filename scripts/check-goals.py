#!/usr/bin/env python3
"""Checks a bench run against issue 17's goals for the default `snapbpf`, from its raw samples.

usage: scripts/check-goals.py RESULTS.json [SATA_RESULTS.json]
  e.g. scripts/check-goals.py docs/results/full/native/results.json docs/results/full/sata/results.json

Prints a markdown table, each goal met or not with the measured figure:
- one VM: `snapbpf` the fastest strategy for every function (median cold E2E), within
  1.15x of its own warm floor (geomean of cold over warm medians), and faster than `reap`
  for image;
- ten VMs: within 1.2x of the CPU floor (10 x its warm exec time / cores, against the
  median of each sample's slowest VM), never slower than another strategy (median E2E per
  VM), memory within 1.1x of the least of any strategy;
- with the sata profile, ten VMs, bert: at least 8x faster than `reap`;
- bytes prefetched with ten VMs at most 1.1x the working set.
"""
import json
import math
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from claimlib import bench_cells as cells  # noqa: E402

SUBJECT = "snapbpf"


def load(path):
    return json.load(open(path))




def e2e(samples):
    return statistics.median(r["e2e_ms"] for s in samples for r in s["report"]["runs"])


def geomean(values):
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def goals(results, label):
    rows = []
    functions = results["config"]["functions"]
    cores = results["stamp"]["cores"]
    one, ten = cells(results, 1), cells(results, 10)
    warm = cells(results, 1, cold=False)
    strategies = sorted({k[1] for k in one})
    # One VM.
    losses, ratios = [], []
    for f in functions:
        if (f, SUBJECT) not in one:
            continue
        mine = e2e(one[(f, SUBJECT)])
        best = min(((e2e(v), s) for (g, s), v in one.items() if g == f), default=(mine, SUBJECT))
        if best[1] != SUBJECT:
            losses.append(f"{f}: {best[1]} {best[0]:.0f} ms vs {mine:.0f}")
        if (f, SUBJECT) in warm:
            ratios.append(mine / e2e(warm[(f, SUBJECT)]))
    rows.append((f"{label}, 1 VM: fastest for every function", not losses,
                 "yes" if not losses else "no: " + "; ".join(losses)))
    g = geomean(ratios)
    rows.append((f"{label}, 1 VM: within 1.15x of its warm floor (geomean)", g <= 1.15, f"{g:.2f}x"))
    if ("image", SUBJECT) in one and ("image", "reap") in one:
        a, b = e2e(one[("image", SUBJECT)]), e2e(one[("image", "reap")])
        rows.append((f"{label}, 1 VM: image beats reap", a < b, f"{a:.0f} vs {b:.0f} ms"))
    # Ten VMs.
    cpu, slower, mem, prefetched = [], [], [], []
    ws = {r["function"]: r["ws_pages"] * 4096 for r in results.get("records", []) if r["strategy"] == "snapbpf"}
    for f in functions:
        if (f, SUBJECT) not in ten:
            continue
        mine = ten[(f, SUBJECT)]
        if (f, SUBJECT) in warm:
            exec_ms = statistics.median(r["exec_ms"] for s in warm[(f, SUBJECT)] for r in s["report"]["runs"])
            floor = 10 * exec_ms / cores
            last = statistics.median(max(r["e2e_ms"] for r in s["report"]["runs"]) for s in mine)
            cpu.append((f, last / floor))
        for (g, s), v in ten.items():
            if g == f and s != SUBJECT and e2e(v) < e2e(mine):
                slower.append(f"{f}: {s} {e2e(v):.0f} vs {e2e(mine):.0f} ms")
        memories = {s: statistics.median(x["report"]["memory"]["total_kib"] for x in v)
                    for (g, s), v in ten.items() if g == f}
        least = min(memories.values())
        mem.append((f, memories[SUBJECT] / least, min(memories, key=memories.get)))
        if f in ws:
            prefetched.append((f, statistics.median(x["report"]["prefetch"]["bytes"] for x in mine) / ws[f]))
    if cpu:
        worst = max(cpu, key=lambda x: x[1])
        rows.append((f"{label}, 10 VMs: within 1.2x of the CPU floor", worst[1] <= 1.2,
                     ", ".join(f"{f} {r:.2f}x" for f, r in cpu)))
    if ten:
        rows.append((f"{label}, 10 VMs: never slower than another strategy", not slower,
                     "yes" if not slower else "no: " + "; ".join(slower)))
    if mem:
        rows.append((f"{label}, 10 VMs: memory within 1.1x of the least", all(r <= 1.1 for _, r, _ in mem),
                     ", ".join(f"{f} {r:.2f}x" + ("" if r <= 1.1 else f" (least: {s})") for f, r, s in mem)))
    if prefetched:
        rows.append((f"{label}, 10 VMs: prefetched at most 1.1x the working set", all(r <= 1.1 for _, r in prefetched),
                     ", ".join(f"{f} {r:.2f}x" for f, r in prefetched)))
    return rows, ten


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    results = load(sys.argv[1])
    rows, _ = goals(results, results["config"].get("device", {}).get("profile") or "native")
    if len(sys.argv) == 3:
        sata = load(sys.argv[2])
        more, ten = goals(sata, "sata")
        rows += more
        if ("bert", SUBJECT) in ten and ("bert", "reap") in ten:
            r = e2e(ten[("bert", "reap")]) / e2e(ten[("bert", SUBJECT)])
            rows.append(("sata, 10 VMs, bert: at least 8x faster than reap", r >= 8, f"{r:.1f}x"))
    print("| goal | met | measured |")
    print("|---|---|---|")
    for goal, met, figure in rows:
        print(f"| {goal} | {'yes' if met else '**no**'} | {figure} |")


if __name__ == "__main__":
    main()
