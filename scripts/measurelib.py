"""What the measurement scripts share: the release binary, the function list, stamps and
atomic JSON output. Imported by scripts/measure-*.py from their own directory."""
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "snapbpf")


def work_dir():
    """The directory the scripts keep their reusable snapshots in, which only this user
    controls: $SNAPBPF_WORK, else /var/lib/snapbpf/scripts as root, else
    ~/.cache/snapbpf/scripts. Created 0700; refused when it is a symlink, another user
    owns it or others can write it (a predictable /var/tmp name could be planted by any
    local user, and root would then restore, record into or delete what they put there)."""
    path = os.environ.get("SNAPBPF_WORK") or (
        "/var/lib/snapbpf/scripts" if os.geteuid() == 0
        else os.path.join(os.path.expanduser("~"), ".cache", "snapbpf", "scripts"))
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.lstat(path)
    import stat as _stat
    if not _stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        sys.exit(f"{path} is not a directory only this user controls (owner {st.st_uid}, "
                 f"mode {oct(st.st_mode & 0o7777)}): remove it or set SNAPBPF_WORK")
    return path


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
    """Git revision (and whether the tree had uncommitted changes), kernel, CPU, date, the
    load average when the run started and the Firecracker binary's version when
    $FIRECRACKER names one, for every results file."""
    git = subprocess.check_output(["git", "-C", ROOT, "rev-parse", "HEAD"], text=True).strip()
    dirty = subprocess.run(["git", "-C", ROOT, "diff", "--quiet", "HEAD", "--", "crates", "scripts"]).returncode != 0
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    out = {"git": git, "git_dirty": dirty, "kernel": os.uname().release, "cpu": cpu,
           "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "loadavg": [round(x, 2) for x in os.getloadavg()]}
    fc = os.environ.get("FIRECRACKER")
    if fc and os.access(fc, os.X_OK):
        version = subprocess.run([fc, "--version"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        out["firecracker"] = (version.stdout.splitlines() or ["?"])[0]
    return out


def write_json(out, out_path):
    """Writes `out` to `out_path` atomically (temporary file, fsync, rename)."""
    os.makedirs(os.path.dirname(out_path) or ".", exist_ok=True)
    with open(out_path + ".tmp", "w") as fh:
        json.dump(out, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    os.rename(out_path + ".tmp", out_path)
