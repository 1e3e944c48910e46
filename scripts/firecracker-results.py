#!/usr/bin/env python3
"""Tables and goals of a `snapbpf bench --vmm builtin,firecracker` run, from its raw samples.

usage: scripts/firecracker-results.py BUILTIN_RESULTS.json FIRECRACKER_RESULTS.json
  e.g. scripts/firecracker-results.py docs/results/firecracker/builtin/results.json \
           docs/results/firecracker/firecracker/results.json

Prints markdown: every sample's checksum against the reference, cold E2E with one VM under
each VMM, ten VMs under Firecracker (E2E per VM, system memory), each VMM's restore
overhead per function (from the restore request to the guest running: under Firecracker
its process start plus `PUT /snapshot/load`, apart), and issue 26's goals, each met or not
with the measured figure:
- under Firecracker, cold, one VM: `snapbpf` at least 1.5x faster than `linux-ra`
  (geomean over the functions of the median E2E ratio) and faster than `reap` on at least
  6 of 8 functions;
- ten bert VMs under Firecracker: `snapbpf` faster than `reap` with at most a fifth of its
  memory.
"""
import json
import math
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from claimlib import bench_cells as cells  # noqa: E402

SUBJECT = "snapbpf"




def runs(samples, field="e2e_ms"):
    return [r[field] for s in samples for r in s["report"]["runs"] if r.get(field) is not None]


def median(samples, field="e2e_ms"):
    return statistics.median(runs(samples, field))


def spread(samples, field="e2e_ms"):
    values = runs(samples, field)
    return f"{statistics.median(values):.0f} ({min(values):.0f}–{max(values):.0f})"


def memory_mib(samples):
    return statistics.median(s["report"]["memory"]["total_kib"] for s in samples) / 1024


def geomean(values):
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def strategies_of(results):
    """The strategy labels the samples carry, in the order the bench ran them (the
    config lists specs, whose spelling need not match a sample's label)."""
    seen = []
    for s in results["samples"]:
        if s["strategy"] not in seen:
            seen.append(s["strategy"])
    return seen


def table(header, rows):
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()


def correctness(label, results):
    n = sum(len(s["report"]["runs"]) for s in results["samples"])
    wrong = len(results.get("wrong", []))
    version = results["config"].get("vmm", {}).get("version")
    print(f"- {label}{f' ({version})' if version else ''}: {n} VM runs in "
          f"{len(results['samples'])} samples, {wrong} with a checksum other than the fresh boot's")


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    builtin, fc = (json.load(open(p)) for p in sys.argv[1:])
    functions = fc["config"]["functions"]

    print("Every sample's checksum, checked by the bench against the function's fresh boot:\n")
    correctness("builtin", builtin)
    correctness("firecracker", fc)
    print()

    for label, results in (("snapbpf's VMM", builtin), ("Firecracker", fc)):
        one = cells(results, 1)
        strategies = strategies_of(results)
        print(f"Cold, one VM, under {label}: E2E ms, median (min–max) of "
              f"{results['config']['repeat']}\n")
        table(["function"] + [f"`{s}`" for s in strategies],
              [[f] + [spread(one[(f, s)]) if (f, s) in one else "–" for s in strategies]
               for f in functions])

    ten = cells(fc, 10)
    if ten:
        strategies = strategies_of(fc)
        print("Ten VMs at once under Firecracker, cold: E2E ms per VM, median; system memory "
              "with every VM alive (page cache once, each VM's anonymous memory), MiB\n")
        table(["function"] + [f"`{s}`" for s in strategies],
              [[f] + [f"{median(ten[(f, s)]):.0f} · {memory_mib(ten[(f, s)]):.0f} MiB"
                      if (f, s) in ten else "–" for s in strategies] for f in functions])

    # Restore overhead: the same backing under both VMMs (demand paging from the file).
    b1, f1 = cells(builtin, 1), cells(fc, 1)
    rows = []
    for f in functions:
        key = (f, "linux-nora")
        if key not in b1 or key not in f1:
            continue
        restore_b = median(b1[key], "restore_ms")
        restore_f = median(f1[key], "restore_ms")
        load_f = median(f1[key], "load_ms")
        rows.append([f, f"{restore_b:.1f}", f"{restore_f:.1f}", f"{load_f:.1f}",
                     f"{restore_f - load_f:.1f}"])
    if rows:
        print("Restore overhead, cold, one VM, `linux-nora` (the same backing under both VMMs), "
              "ms, medians: snapbpf's VMM from the restore request until its vCPU is ready; "
              "Firecracker from the restore request until `PUT /snapshot/load` returned "
              "(its vCPU running), and of that the load call alone and everything before it "
              "(process start, API socket, the strategy's set-up)\n")
        table(["function", "snapbpf's VMM", "Firecracker", "of which load", "of which start"], rows)

    # Goals.
    goals = []
    ratios, wins, losses = [], 0, []
    for f in functions:
        if (f, SUBJECT) in f1 and (f, "linux-ra") in f1:
            ratios.append(median(f1[(f, "linux-ra")]) / median(f1[(f, SUBJECT)]))
        if (f, SUBJECT) in f1 and (f, "reap") in f1:
            mine, theirs = median(f1[(f, SUBJECT)]), median(f1[(f, "reap")])
            if mine < theirs:
                wins += 1
            else:
                losses.append(f"{f} {mine:.0f} vs {theirs:.0f} ms")
    g = geomean(ratios)
    goals.append(("firecracker, 1 VM: snapbpf ≥1.5x faster than linux-ra (geomean)", g >= 1.5,
                  f"{g:.2f}x over {len(ratios)} functions"))
    goals.append(("firecracker, 1 VM: snapbpf faster than reap on ≥6 of 8", wins >= 6,
                  f"{wins} of {wins + len(losses)}"
                  + (f" (slower: {'; '.join(losses)})" if losses else "")))
    if ("bert", SUBJECT) in ten and ("bert", "reap") in ten:
        mine, theirs = ten[("bert", SUBJECT)], ten[("bert", "reap")]
        e_m, e_r = median(mine), median(theirs)
        m_m, m_r = memory_mib(mine), memory_mib(theirs)
        goals.append(("firecracker, 10 bert VMs: snapbpf faster than reap", e_m < e_r,
                      f"{e_m:.0f} vs {e_r:.0f} ms per VM"))
        goals.append(("firecracker, 10 bert VMs: snapbpf at most 1/5 of reap's memory",
                      m_m <= m_r / 5, f"{m_m:.0f} vs {m_r:.0f} MiB ({m_m / m_r:.2f}x)"))
    table(["goal", "met", "measured"],
          [[goal, "yes" if met else "**no**", figure] for goal, met, figure in goals])


if __name__ == "__main__":
    main()
