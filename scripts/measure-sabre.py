#!/usr/bin/env python3
"""Sabre against REAP, per function (docs/sabre.md).

usage: scripts/measure-sabre.py REPS FUNCTIONS OUT.json
       scripts/measure-sabre.py --sweep FUNCTIONS OUT.json
  e.g. scripts/measure-sabre.py 3 all docs/results/sabre/run1.json

--sweep checks correctness only: for every function, codec and placement, a recording with
input 0 and a cold restore of every input with one VM and with ten, each checksum against
a fresh boot's.

For each function: a snapshot, REAP's recording, and Sabre recorded with each codec
(lz4, zstd level 3, zstd level 3 with a trained dictionary, zstd-dict level 10): working-set
ratio, compression wall time and CPU seconds (Sabre's Table 3 and Figure 9 bottom). Then,
with the default codec (zstd-dict level 3) and placement, REPS repetitions of cold
restores with input 1, interleaved: reap and sabre on the native device and on the `sata`
profile (550 MB/s, 95k IOPS): prefetch time, E2E, and Sabre's read/decompress/install split;
and once, ten VMs of each for memory. Every checksum is compared with a fresh boot's.

Needs the release binary (cargo build --release -p snapbpf-cli). Snapshots live in
WORK/sabre-<function> (WORK: measurelib.work_dir).
"""
import json
import os
import re
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from measurelib import BIN, ROOT, function_list, inputs_of, snapbpf, stamp, work_dir, write_json  # noqa: E402
CODECS = ["sabre:codec=lz4", "sabre:codec=zstd", "sabre:codec=zstd-dict:level=10", "sabre:codec=zstd-dict"]
DESCRIBED = re.compile(r"(\d+) pages in (\d+) partitions, (\S+) level (-?\d+), (\S+) placement, ratio ([\d.]+) "
                       r"\((\d+) bytes\), compressed in ([\d.]+) ms \(([\d.]+) CPU s\)")




def described(snap):
    for rec in json.loads(snapbpf("inspect", snap, "--json"))["recordings"]:
        if rec["strategy"] == "sabre":
            m = DESCRIBED.search(rec["detail"])
            if m:
                return {"pages": int(m[1]), "partitions": int(m[2]), "codec": m[3], "level": int(m[4]),
                        "placement": m[5], "ratio": float(m[6]), "stream_bytes": int(m[7]),
                        "compress_ms": float(m[8]), "compress_cpu_s": float(m[9])}
    sys.exit(f"{snap}: no sabre recording described")






def sweep(functions, out_path):
    git = subprocess.check_output(["git", "-C", ROOT, "rev-parse", "HEAD"], text=True).strip()
    out = {"git": git, "kernel": os.uname().release, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "checked": []}
    for f in functions:
        snap = os.path.join(work_dir(), f"sabre-sweep-{f}")
        snapbpf("snapshot", f, "--out", snap, "--force")
        inputs = inputs_of(f)
        reference = [json.loads(snapbpf("boot", f, "--input", str(i), "--json"))["checksum"] for i in range(inputs)]
        for codec in ["zstd-dict", "zstd", "lz4"]:
            for placement in ["single", "scattered"]:
                spec = f"sabre:codec={codec}:placement={placement}"
                snapbpf("record", snap, "--strategy", spec, "--json")
                for i in range(inputs):
                    for vms in [1, 10]:
                        r = json.loads(snapbpf("invoke", snap, "--strategy", spec, "--cold", "--input", str(i),
                                               "--concurrency", str(vms), "--json"))
                        got = [run["checksum"] for run in r["runs"]]
                        if got != [reference[i]] * vms:
                            sys.exit(f"{f} {spec} input {i} x{vms}: {got} != fresh boot {reference[i]}")
                        out["checked"].append({"function": f, "spec": spec, "input": i, "vms": vms,
                                               "checksum": reference[i]})
                print(f"{f} {spec}: every input, 1 and 10 VMs, equal to the fresh boot", flush=True)
        subprocess.run(["rm", "-rf", snap])
    write_json(out, out_path)
    print(f"{len(out['checked'])} restores, every checksum equal to the fresh boot's")


def main():
    reps, functions, out_path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    functions = function_list(functions)
    git = subprocess.check_output(["git", "-C", ROOT, "rev-parse", "HEAD"], text=True).strip()
    out = {"git": git, "kernel": os.uname().release, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "reps": reps, "codecs": [], "restores": [], "memory": []}
    for f in functions:
        snap = os.path.join(work_dir(), f"sabre-{f}")
        snapbpf("snapshot", f, "--out", snap, "--force")
        reap = json.loads(snapbpf("record", snap, "--strategy", "reap", "--json"))
        reap_bytes = reap["pages"] * 4096
        for spec in CODECS:
            snapbpf("record", snap, "--strategy", spec, "--json")
            row = described(snap)
            row.update(function=f, spec=spec, reap_ws_bytes=reap_bytes)
            out["codecs"].append(row)
            print(json.dumps(row), flush=True)
        reference = json.loads(snapbpf("boot", f, "--input", "1", "--json"))["checksum"]
        for rep in range(reps):
            for device in ["native", "sata"]:
                for strategy in ["reap", "sabre"]:
                    r = json.loads(snapbpf("invoke", snap, "--strategy", strategy, "--cold", "--input", "1",
                                           "--device", device, "--json"))
                    run = r["runs"][0]
                    if run["checksum"] != reference:
                        sys.exit(f"{f} {strategy} {device}: checksum {run['checksum']} != fresh boot {reference}")
                    row = {"function": f, "rep": rep, "device": device, "strategy": strategy,
                           "prefetch_ms": r["prefetch"]["ms"], "e2e_ms": run["e2e_ms"],
                           "compression": r["prefetch"].get("compression")}
                    out["restores"].append(row)
                    print(json.dumps(row), flush=True)
        for strategy in ["reap", "sabre"]:
            r = json.loads(snapbpf("invoke", snap, "--strategy", strategy, "--cold", "--input", "1",
                                   "--concurrency", "10", "--json"))
            if any(run["checksum"] != reference for run in r["runs"]):
                sys.exit(f"{f} {strategy} x10: a checksum differs from the fresh boot's")
            row = {"function": f, "strategy": strategy, "vms": 10, "total_kib": r["memory"]["total_kib"],
                   "e2e_ms_median": statistics.median(run["e2e_ms"] for run in r["runs"])}
            out["memory"].append(row)
            print(json.dumps(row), flush=True)
        subprocess.run(["rm", "-rf", snap])
    write_json(out, out_path)
    summarize(out)


def summarize(out):
    med = statistics.median
    print("\n| function | REAP WS MiB | lz4 | zstd-3 | zstd-dict-10 | zstd-dict-3 | placement | compress s (CPU) |")
    print("|---|---|---|---|---|---|---|---|")
    for f in dict.fromkeys(r["function"] for r in out["codecs"]):
        rows = {r["spec"]: r for r in out["codecs"] if r["function"] == f}
        d = rows[CODECS[-1]]
        print(f"| {f} | {d['reap_ws_bytes'] / 2**20:.1f} | " + " | ".join(f"{rows[s]['ratio']:.2f}x" for s in CODECS)
              + f" | {d['placement']} ({d['pages'] / d['partitions']:.1f} pages/partition) | {d['compress_cpu_s']:.2f} |")
    print("\n| function | device | reap prefetch ms | sabre prefetch ms | faster by | reap E2E | sabre E2E | decompress hidden |")
    print("|---|---|---|---|---|---|---|---|")
    for f in dict.fromkeys(r["function"] for r in out["restores"]):
        for device in ["native", "sata"]:
            rows = [r for r in out["restores"] if r["function"] == f and r["device"] == device]
            p = {s: med(r["prefetch_ms"] for r in rows if r["strategy"] == s) for s in ["reap", "sabre"]}
            e = {s: med(r["e2e_ms"] for r in rows if r["strategy"] == s) for s in ["reap", "sabre"]}
            hidden = med(r["compression"]["decompress_hidden"] for r in rows if r["strategy"] == "sabre")
            print(f"| {f} | {device} | {p['reap']:.1f} | {p['sabre']:.1f} | {100 * (1 - p['sabre'] / p['reap']):+.0f} % "
                  f"| {e['reap']:.1f} | {e['sabre']:.1f} | {hidden:.2f} |")
    print("\n| function | reap 10 VMs MiB | sabre 10 VMs MiB |")
    print("|---|---|---|")
    for f in dict.fromkeys(r["function"] for r in out["memory"]):
        m = {r["strategy"]: r["total_kib"] / 1024 for r in out["memory"] if r["function"] == f}
        print(f"| {f} | {m['reap']:.0f} | {m['sabre']:.0f} |")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--summarize":
        summarize(json.load(open(sys.argv[2])))
    elif len(sys.argv) == 4 and sys.argv[1] == "--sweep":
        sweep(function_list(sys.argv[2], workloads_only=False), sys.argv[3])
    else:
        main()
