"""What the measurement scripts share: the release binary, the function list, stamps and
atomic JSON output. Imported by scripts/measure-*.py from their own directory."""
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "snapbpf")


def snapbpf(*args, env=None):
    """Runs the release binary; exits with its error line if it fails."""
    out = subprocess.run([BIN, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    if out.returncode != 0:
        sys.exit(f"snapbpf {' '.join(args)} failed: {out.stderr.strip()}")
    return out.stdout


def function_list(arg, workloads_only=True):
    """`all` (the workloads, or every function), or a comma-separated list."""
    if arg != "all":
        return arg.split(",")
    listed = snapbpf("functions").splitlines()[1:]
    # Correctness checks and calibration probes say so in their description.
    return [l.split()[0] for l in listed if l and not (workloads_only and "not a workload" in l)]


def inputs_of(function):
    """How many inputs `function` takes."""
    return int([l.split()[2] for l in snapbpf("functions").splitlines()[1:] if l.split()[0] == function][0])


def stamp():
    """Git revision, kernel, CPU and date, for every results file."""
    git = subprocess.check_output(["git", "-C", ROOT, "rev-parse", "HEAD"], text=True).strip()
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    return {"git": git, "kernel": os.uname().release, "cpu": cpu,
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def write_json(out, out_path):
    """Writes `out` to `out_path` atomically (temporary file, fsync, rename)."""
    os.makedirs(os.path.dirname(out_path) or ".", exist_ok=True)
    with open(out_path + ".tmp", "w") as fh:
        json.dump(out, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    os.rename(out_path + ".tmp", out_path)
