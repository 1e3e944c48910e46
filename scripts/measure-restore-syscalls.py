#!/usr/bin/env python3
"""Where a cold restore's time goes as guest memory grows (issue 27): the syscalls of
`snapbpf invoke`, timed by strace, summed per call.

usage: scripts/measure-restore-syscalls.py REPS FUNCTION MEM_MIB[,MEM_MIB...] OUT.json [--vmm builtin|firecracker]
  e.g. scripts/measure-restore-syscalls.py 5 pyaes 256,16384 docs/results/scale/syscalls.json

For each size: a sparse snapshot and SnapBPF's record (input 1), then REPS cold `snapbpf`
invocations of input 1 under `strace -ff -T`, each checked against a fresh boot's checksum.
The output holds, per invocation, the invoke report's `restore_ms` and `e2e_ms` (inflated
by strace: every traced call stops the process twice) and, per call name (`ioctl` calls by
their request, e.g. KVM_SET_USER_MEMORY_REGION), the count, the summed and the longest
time. A call whose time grows with memory while the working set stays the same is what
makes a restore O(guest memory).

Needs root, strace and the release binary; `--vmm firecracker` needs $FIRECRACKER.
"""
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from measurelib import BIN, snapbpf, stamp, work_dir, write_json  # noqa: E402

TRACED = "ioctl,mmap,munmap,madvise,mincore,mprotect,fallocate,pread64,preadv2,io_uring_enter,clone3,execve"
# `name(args) = result <seconds>`: one file per thread (-ff), so no call is split into an
# unfinished and a resumed line; -T appends the time.
LINE = re.compile(r"^(\w+)\((.*)\)\s+=\s+(-?\w+).*<([0-9.]+)>$")


def call_name(name, args):
    if name == "ioctl":
        request = args.split(",")[1].strip() if "," in args else "?"
        return f"ioctl {re.sub(r'[(,].*', '', request)}"
    return name


def traced_invoke(snap, want):
    with tempfile.TemporaryDirectory() as tmp:
        trace = os.path.join(tmp, "trace")
        out = subprocess.run(["strace", "-ff", "-T", "-qq", "-e", f"trace={TRACED}", "-o", trace,
                              BIN, "invoke", snap, "--strategy", "snapbpf", "--cold", "--input", "1", "--json"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if out.returncode != 0:
            sys.exit(f"snapbpf invoke {snap} under strace failed: {out.stderr.strip()}")
        report = json.loads(out.stdout)
        run = report["runs"][0]
        if run["checksum"] != want:
            sys.exit(f"{snap}: checksum {run['checksum']}, a fresh boot gives {want}")
        calls = {}
        for thread in os.listdir(tmp):
            with open(os.path.join(tmp, thread)) as fh:
                for line in fh:
                    m = LINE.match(line.strip())
                    if not m:
                        continue
                    name = call_name(m.group(1), m.group(2))
                    seconds = float(m.group(4))
                    c = calls.setdefault(name, {"count": 0, "total_ms": 0.0, "max_ms": 0.0})
                    c["count"] += 1
                    c["total_ms"] += seconds * 1e3
                    c["max_ms"] = max(c["max_ms"], seconds * 1e3)
        return {"restore_ms": run["restore_ms"], "e2e_ms": run["e2e_ms"], "calls": calls}


def main(reps, function, sizes, out_path, vmm):
    if shutil.which("strace") is None:
        sys.exit("strace is not installed (apt-get install strace)")
    out = {**stamp(), "function": function, "vmm": vmm, "reps": reps, "traced": TRACED, "rows": []}
    want = json.loads(snapbpf("boot", function, "--input", "1", "--json"))["checksum"]
    for mem_mib in sizes:
        snap = os.path.join(work_dir(), f"syscalls-{mem_mib}")
        try:
            snapbpf("snapshot", function, "--mem-mib", str(mem_mib), "--vmm", vmm, "--out", snap, "--force")
            snapbpf("record", snap, "--strategy", "snapbpf", "--input", "1", "--json")
            row = {"mem_mib": mem_mib, "invocations": []}
            for rep in range(reps):
                row["invocations"].append(traced_invoke(snap, want))
                print(f"syscalls: {vmm} {function} {mem_mib} MiB, round {rep + 1} of {reps}", file=sys.stderr, flush=True)
            out["rows"].append(row)
            write_json(out, out_path)
        finally:
            shutil.rmtree(snap, ignore_errors=True)
    print(summarize(out))


def summarize(out):
    lines = [f"Syscalls of a cold `snapbpf` restore of `{out['function']}` under {out['vmm']} "
             f"(strace -ff -T, {out['reps']} invocations per size, medians), commit {out['git'][:7]}, "
             f"{out['cpu']}, kernel {out['kernel']}.", "",
             "| call | " + " | ".join(f"{r['mem_mib']} MiB: count, total ms" for r in out["rows"]) + " |",
             "|---|" + "---:|" * len(out["rows"])]
    names = sorted({n for r in out["rows"] for i in r["invocations"] for n in i["calls"]},
                   key=lambda n: -max(statistics.median(i["calls"].get(n, {"total_ms": 0})["total_ms"]
                                                        for i in r["invocations"]) for r in out["rows"]))
    for name in names[:12]:
        cells = []
        for r in out["rows"]:
            got = [i["calls"].get(name, {"count": 0, "total_ms": 0.0}) for i in r["invocations"]]
            cells.append(f"{statistics.median(g['count'] for g in got):.0f}, "
                         f"{statistics.median(g['total_ms'] for g in got):.2f}")
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    lines.append("| restore_ms (traced) | " + " | ".join(
        f"{statistics.median(i['restore_ms'] for i in r['invocations']):.1f}" for r in out["rows"]) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    args = sys.argv[1:]
    vmm = "builtin"
    if len(args) >= 2 and args[-2] == "--vmm":
        vmm, args = args[-1], args[:-2]
    if len(args) == 2 and args[0] == "--summarize":
        print(summarize(json.load(open(args[1]))))
    elif len(args) == 4:
        main(int(args[0]), args[1], [int(m) for m in args[2].split(",")], args[3], vmm)
    else:
        sys.exit(__doc__)
