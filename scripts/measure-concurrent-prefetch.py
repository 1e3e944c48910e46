#!/usr/bin/env python3
"""`snapbpf prefetch` beside a process that is already faulting (docs/firecracker.md).

usage: scripts/measure-concurrent-prefetch.py REPS FUNCTIONS OUT.json
  e.g. scripts/measure-concurrent-prefetch.py 5 bert,image,pyaes docs/results/firecracker/concurrent-prefetch.json

A VMM restoring from a memory file with demand paging (our `linux-nora`, as Firecracker's
File backend maps the file) is the faulting process. Three ways, interleaved within each
repetition, every one from a cold page cache (the memory file evicted first):
  alone       the VMM faults everything in itself
  concurrent  `snapbpf prefetch --file MEMORY --ws WS` started at the same instant as the VMM
  before      prefetch first, then the VMM (the orchestrator waits for the prefetch)
`invoke --as-is` leaves the cache as the script made it. E2E is the VMM's restore + invocation time; for `before` the prefetch's wall time is added.
Every run's checksum is compared with the reference (the first `alone` run).

Needs the release binary (cargo build --release -p snapbpf-cli). Snapshots live in
WORK/cp-<function> (WORK: measurelib.work_dir); missing ones are taken and their snapbpf working set recorded.
"""
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from measurelib import BIN, ROOT, work_dir, write_json  # noqa: E402


def evict(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def invoke(snap):
    return subprocess.Popen([BIN, "invoke", snap, "--strategy", "linux-nora", "--input", "1", "--as-is", "--json"],
                            stdout=subprocess.PIPE, text=True)


def prefetch(snap):
    return subprocess.Popen([BIN, "prefetch", "--file", f"{snap}/memory", "--ws", f"{snap}/snapbpf.ws", "--json"],
                            stdout=subprocess.PIPE, text=True)


def finish(proc, what):
    out, _ = proc.communicate(timeout=600)
    if proc.returncode != 0:
        sys.exit(f"{what} failed with {proc.returncode}")
    return json.loads(out)


def one(snap, how):
    evict(f"{snap}/memory")
    row = {"how": how}
    if how == "before":
        t = time.monotonic()
        row["prefetch"] = finish(prefetch(snap), "prefetch")
        row["prefetch_wall_ms"] = (time.monotonic() - t) * 1e3
        run = finish(invoke(snap), "invoke")["runs"][0]
    elif how == "concurrent":
        vm, pf = invoke(snap), prefetch(snap)
        row["prefetch"] = finish(pf, "prefetch")
        run = finish(vm, "invoke")["runs"][0]
    else:
        run = finish(invoke(snap), "invoke")["runs"][0]
    row.update(e2e_ms=run["e2e_ms"], major_faults=run["major_faults"], checksum=run["checksum"])
    row["total_ms"] = row["e2e_ms"] + row.get("prefetch_wall_ms", 0.0)
    return row


def main():
    reps, functions, out_path = int(sys.argv[1]), sys.argv[2].split(","), sys.argv[3]
    git = subprocess.check_output(["git", "-C", ROOT, "rev-parse", "HEAD"], text=True).strip()
    out = {"git": git, "kernel": os.uname().release, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "reps": reps, "rows": []}
    for f in functions:
        snap = os.path.join(work_dir(), f"cp-{f}")
        if not os.path.exists(f"{snap}/snapbpf.ws"):
            subprocess.check_call([BIN, "snapshot", f, "--out", snap, "--force"], stdout=subprocess.DEVNULL)
            subprocess.check_call([BIN, "record", snap, "--strategy", "snapbpf"], stdout=subprocess.DEVNULL)
        reference = None
        for rep in range(reps):
            for how in ["alone", "concurrent", "before"]:
                row = one(snap, how)
                row.update(function=f, rep=rep)
                reference = reference or row["checksum"]
                if row["checksum"] != reference:
                    sys.exit(f"{f} {how} rep {rep}: checksum {row['checksum']} != reference {reference}")
                out["rows"].append(row)
                print(json.dumps(row), flush=True)
    write_json(out, out_path)
    print(f"\n{'function':<10} {'how':<11} {'median ms':>10} {'min':>8} {'max':>8} {'faults':>8}")
    for f in functions:
        for how in ["alone", "concurrent", "before"]:
            rows = [r for r in out["rows"] if r["function"] == f and r["how"] == how]
            t = [r["total_ms"] for r in rows]
            faults = statistics.median(r["major_faults"] for r in rows)
            print(f"{f:<10} {how:<11} {statistics.median(t):>10.1f} {min(t):>8.1f} {max(t):>8.1f} {faults:>8.0f}")


if __name__ == "__main__":
    main()
