#!/usr/bin/env python3
"""SnapFaaS and SnapBPF over the in-memory snapshot store, per function (docs/snapfaas.md).

usage: scripts/measure-snapfaas.py REPS FUNCTIONS OUT.json
       scripts/measure-snapfaas.py --sweep FUNCTIONS OUT.json
       scripts/measure-snapfaas.py --summarize OUT.json
  e.g. scripts/measure-snapfaas.py 5 all docs/results/snapfaas/run1.json

For each function: a snapshot, REAP's and SnapBPF's recordings, and the snapshot loaded
into four stores: 4 KiB shmem, THP shmem and hugetlbfs (each holding it whole), and a
4 KiB store one MiB too small for it, which trims it to SnapBPF's working set. Store load
time and bytes held are recorded. Then REPS repetitions (after one warm-up pass) of
single-VM restores with input 1, interleaved: a fresh boot; linux-ra, reap and snapbpf
cold from disk; snapfaas (copy all), snapfaas:copy=ws and snapbpf over each store. Then
ten VMs of each for memory. Every checksum is compared with a fresh boot's. The device's
O_DIRECT sequential read speed is measured before and after each function.

--sweep checks correctness only: for every function, input, 1 and 10 VMs, the three store
strategies from a store holding the snapshot whole, from one holding only its working set,
and again after the store evicted it and loaded it back.

Sets shmem THP to `advise` and grows the hugetlbfs pool for the run, and puts both back.
Needs root and the release binary (cargo build --release -p snapbpf-cli). Snapshots live
in WORK/snapfaas-<function> (WORK: measurelib.work_dir).
"""
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from measurelib import BIN, ROOT, function_list, inputs_of, snapbpf, stamp, work_dir, write_json  # noqa: E402
SHMEM_THP = "/sys/kernel/mm/transparent_hugepage/shmem_enabled"
NR_HUGEPAGES = "/proc/sys/vm/nr_hugepages"
HUGE_POOL = 400  # 2 MiB pages: the largest function's data pages, twice
WORK = os.path.join(work_dir(), "snapfaas-stores")

# (label, strategy, where): where is "disk" or a store name.
SINGLE = [
    ("linux-ra", "linux-ra", "disk"),
    ("reap", "reap", "disk"),
    ("snapbpf", "snapbpf", "disk"),
    ("snapfaas", "snapfaas", "4k"),
    ("snapfaas:copy=ws", "snapfaas:copy=ws", "4k"),
    ("snapbpf/store", "snapbpf", "4k"),
    ("snapfaas/thp", "snapfaas", "thp"),
    ("snapfaas:copy=ws/thp", "snapfaas:copy=ws", "thp"),
    ("snapbpf/store-thp", "snapbpf", "thp"),
    ("snapfaas/hugetlb", "snapfaas", "hugetlb"),
    ("snapfaas/trimmed", "snapfaas", "trimmed"),
    ("snapbpf/store-trimmed", "snapbpf", "trimmed"),
]
TEN = [v for v in SINGLE if v[0] not in ("snapfaas:copy=ws/thp",)]










class StoreFull(Exception):
    """The store cannot hold a snapshot, even trimmed."""


class Store:
    """A `snapbpf store serve` for the run, stopped with SIGTERM."""

    def __init__(self, name, *args):
        os.makedirs(WORK, exist_ok=True)
        self.name = name
        self.sock = os.path.join(WORK, f"{name}.sock")
        self.log = open(os.path.join(WORK, f"{name}.log"), "w+")
        self.proc = subprocess.Popen([BIN, "store", "serve", "--socket", self.sock, *args], stderr=self.log)
        deadline = time.time() + 30
        while not os.path.exists(self.sock):
            if self.proc.poll() is not None or time.time() > deadline:
                self.log.seek(0)
                sys.exit(f"store {name} did not start: {self.log.read().strip()}")
            time.sleep(0.02)

    def add(self, snap):
        t = time.perf_counter()
        added = subprocess.run([BIN, "store", "add", snap, "--socket", self.sock], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        if added.returncode != 0:
            if "the store is full" in added.stderr:
                raise StoreFull(added.stderr.strip())
            sys.exit(f"snapbpf store add {snap} failed: {added.stderr.strip()}")
        ms = (time.perf_counter() - t) * 1e3
        held = [h for h in json.loads(snapbpf("store", "list", "--socket", self.sock, "--json"))
                if h["dir"] == os.path.realpath(snap)]
        return ms, held[0]

    def evict(self, snap):
        snapbpf("store", "evict", snap, "--socket", self.sock)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)
        self.log.seek(0)
        text = self.log.read()
        if self.proc.returncode != 0 or "0 memfds left open" not in text:
            sys.exit(f"store {self.name} did not stop cleanly: {text.strip()}")


class HostSettings:
    """Shmem THP at `advise` and HUGE_POOL more hugetlbfs pages for the run."""

    def __enter__(self):
        text = open(SHMEM_THP).read()
        self.thp = re.search(r"\[(\w+)\]", text).group(1)
        open(SHMEM_THP, "w").write("advise")
        self.pool = int(open(NR_HUGEPAGES).read())
        open(NR_HUGEPAGES, "w").write(str(self.pool + HUGE_POOL))
        return self

    def __exit__(self, *exc):
        open(SHMEM_THP, "w").write(self.thp)
        open(NR_HUGEPAGES, "w").write(str(self.pool))


def device_mbps(path):
    """O_DIRECT sequential read speed of the disk holding `path`, MB/s."""
    out = subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=4M", "iflag=direct"],
                         stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True).stderr
    m = re.search(r"(\d+) bytes .* copied, ([\d.]+) s", out)
    return round(int(m[1]) / float(m[2]) / 1e6, 1) if m else None


def invoke(snap, strategy, where, stores, reference, vms=1):
    args = ["invoke", snap, "--strategy", strategy, "--cold", "--input", "1", "--concurrency", str(vms), "--json"]
    if where != "disk":
        args += ["--store", stores[where].sock]
    r = json.loads(snapbpf(*args))
    got = [run["checksum"] for run in r["runs"]]
    if got != [reference] * vms:
        sys.exit(f"{snap} {strategy} ({where}) x{vms}: checksums {got} != fresh boot {reference}")
    return r


def main():
    reps, functions, out_path = int(sys.argv[1]), function_list(sys.argv[2]), sys.argv[3]
    out = {**stamp(), "reps": reps, "stores": [], "restores": [], "memory": [], "device": []}
    with HostSettings():
        stores = {"4k": Store("4k", "--capacity", "8G"),
                  "thp": Store("thp", "--capacity", "8G", "--huge-pages", "thp"),
                  "hugetlb": Store("hugetlb", "--capacity", "8G", "--huge-pages", "hugetlb")}
        for f in functions:
            snap = os.path.join(work_dir(), f"snapfaas-{f}")
            snapbpf("snapshot", f, "--out", snap, "--force")
            out["device"].append({"function": f, "when": "before", "mbps": device_mbps(f"{snap}/memory")})
            for s in ["reap", "snapbpf"]:
                snapbpf("record", snap, "--strategy", s, "--json")
            reference = json.loads(snapbpf("boot", f, "--input", "1", "--json"))["checksum"]
            size = os.path.getsize(f"{snap}/memory")
            for name, store in stores.items():
                ms, held = store.add(snap)
                row = {"function": f, "store": name, "load_ms": ms, "bytes": held["bytes"],
                       "resident": held["resident"], "memory_bytes": size}
                out["stores"].append(row)
                print(json.dumps(row), flush=True)
            whole = [r["bytes"] for r in out["stores"] if r["function"] == f and r["store"] == "4k"][0]
            stores["trimmed"] = Store("trimmed", "--capacity", str(whole - (1 << 20)))
            ms, held = stores["trimmed"].add(snap)
            row = {"function": f, "store": "trimmed", "load_ms": ms, "bytes": held["bytes"],
                   "resident": held["resident"], "memory_bytes": size}
            if held["resident"] != "working-set":
                sys.exit(f"{f}: the short store holds it {held['resident']}")
            out["stores"].append(row)
            print(json.dumps(row), flush=True)
            for rep in range(-1, reps):
                boot = json.loads(snapbpf("boot", f, "--input", "1", "--json"))
                if boot["checksum"] != reference:
                    sys.exit(f"{f}: a fresh boot gave {boot['checksum']}, another {reference}")
                rows = [{"label": "boot", "e2e_ms": boot["e2e_ms"], "restore_ms": boot["init_ms"],
                         "exec_ms": boot["invocations"][0]["exec_ms"], "prefetch_bytes": 0}]
                for label, strategy, where in SINGLE:
                    r = invoke(snap, strategy, where, stores, reference)
                    run = r["runs"][0]
                    rows.append({"label": label, "e2e_ms": run["e2e_ms"], "restore_ms": run["restore_ms"],
                                 "exec_ms": run["exec_ms"], "prefetch_bytes": (r.get("prefetch") or {}).get("bytes", 0)})
                if rep < 0:
                    continue
                for row in rows:
                    row.update(function=f, rep=rep)
                    out["restores"].append(row)
                print(f"{f} rep {rep}: " + ", ".join(f"{r['label']} {r['e2e_ms']:.0f}" for r in rows), flush=True)
            for label, strategy, where in TEN:
                r = invoke(snap, strategy, where, stores, reference, vms=10)
                row = {"function": f, "label": label, "vms": 10, **r["memory"],
                       "e2e_ms_median": statistics.median(run["e2e_ms"] for run in r["runs"])}
                out["memory"].append(row)
                print(json.dumps(row), flush=True)
            stores.pop("trimmed").stop()
            for name in ["4k", "thp", "hugetlb"]:
                stores[name].evict(snap)
            out["device"].append({"function": f, "when": "after", "mbps": device_mbps(f"{snap}/memory")})
            write_json(out, out_path)
            subprocess.run(["rm", "-rf", snap])
        for store in stores.values():
            store.stop()
    write_json(out, out_path)
    summarize(out)


def sweep(functions, out_path):
    out = {**stamp(), "checked": [], "untrimmable": []}
    for f in functions:
        snap = os.path.join(work_dir(), f"snapfaas-sweep-{f}")
        snapbpf("snapshot", f, "--out", snap, "--force")
        snapbpf("record", snap, "--strategy", "snapbpf", "--json")
        inputs = inputs_of(f)
        reference = [json.loads(snapbpf("boot", f, "--input", str(i), "--json"))["checksum"] for i in range(inputs)]
        roomy = Store("sweep-whole", "--capacity", "8G")
        whole = roomy.add(snap)[1]["bytes"]
        short = Store("sweep-trimmed", "--capacity", str(whole - (1 << 20)))
        for phase, store in [("whole", roomy), ("working-set", short), ("reloaded", roomy)]:
            if phase == "reloaded":
                roomy.evict(snap)
            try:
                held = store.add(snap)[1]
            except StoreFull as e:
                # A working set that covers every data page cannot be held in less.
                print(f"{f} ({phase}): {e}", flush=True)
                out["untrimmable"].append({"function": f, "reason": str(e)})
                continue
            expected = "working-set" if phase == "working-set" else "whole"
            if held["resident"] != expected:
                sys.exit(f"{f}: the {phase} store holds it {held['resident']}")
            for strategy in ["snapfaas", "snapfaas:copy=ws", "snapbpf"]:
                for i in range(inputs):
                    for vms in [1, 10]:
                        r = json.loads(snapbpf("invoke", snap, "--strategy", strategy, "--store", store.sock,
                                               "--cold", "--input", str(i), "--concurrency", str(vms), "--json"))
                        got = [run["checksum"] for run in r["runs"]]
                        if got != [reference[i]] * vms:
                            sys.exit(f"{f} {strategy} ({phase}) input {i} x{vms}: {got} != fresh boot {reference[i]}")
                        out["checked"].append({"function": f, "strategy": strategy, "store": phase, "input": i,
                                               "vms": vms, "checksum": reference[i]})
            print(f"{f} ({phase}): every store strategy, input, 1 and 10 VMs equal to the fresh boot", flush=True)
        short.stop()
        roomy.stop()
        subprocess.run(["rm", "-rf", snap])
        write_json(out, out_path)
    write_json(out, out_path)
    print(f"{len(out['checked'])} restores, every checksum equal to the fresh boot's")


def summarize(out):
    med = statistics.median
    print(f"\n{out.get('cpu', '?')}, kernel {out['kernel']}, git {out['git'][:10]}, {out['reps']} reps, medians")
    functions = list(dict.fromkeys(r["function"] for r in out["restores"]))
    labels = ["boot"] + [v[0] for v in SINGLE]

    def cell(f, label, key):
        xs = [r[key] for r in out["restores"] if r["function"] == f and r["label"] == label]
        return (med(xs), min(xs), max(xs)) if xs else None

    print("\nE2E ms, median (min-max), one VM, input 1")
    print("| function | " + " | ".join(labels) + " |")
    print("|---" * (len(labels) + 1) + "|")
    for f in functions:
        cells = [cell(f, l, "e2e_ms") for l in labels]
        print(f"| {f} | " + " | ".join(f"{c[0]:.0f} ({c[1]:.0f}-{c[2]:.0f})" if c else "-" for c in cells) + " |")
    print("\nRestore ms (request to vCPU start; boot: VM creation to ready), median")
    print("| function | " + " | ".join(labels) + " |")
    print("|---" * (len(labels) + 1) + "|")
    for f in functions:
        cells = [cell(f, l, "restore_ms") for l in labels]
        print(f"| {f} | " + " | ".join(f"{c[0]:.1f}" if c else "-" for c in cells) + " |")
    print("\nSnapFaaS (copy all, 4 KiB store) against the fastest from disk and a fresh boot, E2E")
    print("| function | snapfaas | fastest on-disk | snapfaas faster by | boot | faster than boot by | fastest overall |")
    print("|---|---|---|---|---|---|---|")
    for f in functions:
        sf = cell(f, "snapfaas", "e2e_ms")[0]
        disk = min((cell(f, l, "e2e_ms")[0], l) for l in ["linux-ra", "reap", "snapbpf"])
        boot = cell(f, "boot", "e2e_ms")[0]
        best = min((cell(f, l, "e2e_ms")[0], l) for l in labels)
        print(f"| {f} | {sf:.0f} | {disk[0]:.0f} ({disk[1]}) | {disk[0] / sf:.2f}x | {boot:.0f} | {boot / sf:.2f}x "
              f"| {best[1]} {best[0]:.0f} |")
    print("\nStore: bytes held and load time per store (memory file size for reference)")
    print("| function | memory MiB | 4k MiB | thp MiB | hugetlb MiB | trimmed to WS MiB | saved by trimming | 4k load ms | thp load ms | hugetlb load ms |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for f in functions:
        s = {r["store"]: r for r in out["stores"] if r["function"] == f}
        mib = lambda k: s[k]["bytes"] / 2**20
        print(f"| {f} | {s['4k']['memory_bytes'] / 2**20:.0f} | {mib('4k'):.1f} | {mib('thp'):.1f} | {mib('hugetlb'):.1f} "
              f"| {mib('trimmed'):.1f} | {100 * (1 - mib('trimmed') / mib('4k')):.0f} % "
              f"| {s['4k']['load_ms']:.0f} | {s['thp']['load_ms']:.0f} | {s['hugetlb']['load_ms']:.0f} |")
    print("\nTen VMs: system memory MiB (store counted once) and median E2E ms")
    tl = [v[0] for v in TEN]
    print("| function | " + " | ".join(tl) + " |")
    print("|---" * (len(tl) + 1) + "|")
    for f in functions:
        m = {r["label"]: r for r in out["memory"] if r["function"] == f}
        print(f"| {f} | " + " | ".join(f"{m[l]['total_kib'] / 1024:.0f} / {m[l]['e2e_ms_median']:.0f}" for l in tl) + " |")
    print("\nDevice, O_DIRECT sequential MB/s before / after each function")
    for f in functions:
        d = {r["when"]: r["mbps"] for r in out["device"] if r["function"] == f}
        print(f"- {f}: {d.get('before')} / {d.get('after')}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--summarize":
        summarize(json.load(open(sys.argv[2])))
    elif len(sys.argv) == 4 and sys.argv[1] == "--sweep":
        sweep(function_list(sys.argv[2], workloads_only=False), sys.argv[3])
    elif len(sys.argv) == 4:
        main()
    else:
        sys.exit(__doc__)
