#!/usr/bin/env python3
"""Restores from an S3-compatible object store across an emulated network (docs/fleet.md).

usage: scripts/measure-fleet.py REPS FUNCTIONS OUT.json [--rtt-ms MS] [--gbit GBIT]
       scripts/measure-fleet.py --sweep FUNCTIONS OUT.json
       scripts/measure-fleet.py --large FUNCTION MEM_MIB OUT.json [--chunk-size SIZE]
       scripts/measure-fleet.py --summarize OUT.json
  e.g. scripts/measure-fleet.py 3 all docs/results/fleet/run1.json
       scripts/measure-fleet.py --large footprint:6144:16 16384 docs/results/scale/fleet-16g.json

The S3 server (s3s-fs, installed by scripts/setup.sh) runs in a network namespace behind a
veth pair: --gbit bandwidth on both ends (default 1 Gbit/s, a TBF qdisc) and --rtt-ms
round-trip time (default 1 ms, as within one availability zone), added by a delay-line
proxy (crates/fleet/examples/delay_proxy.rs) because this host's kernel has no netem.

For each function: a snapshot, SnapBPF's recording, and a push (chunks uploaded, bytes,
time); a second push (uploads nothing). Then REPS repetitions, interleaved, of cold
single-VM restores with input 1: snapbpf and linux-ra from local disk; snapbpf and
linux-ra from the store on a fresh host (new mount, empty chunk cache); snapbpf from the
store on a host whose chunk cache is warm (page cache cold). Bytes and requests fetched
before the result are set against the working set and the snapshot size. Then ten VMs on
a fresh host: each chunk fetched once. Every checksum is compared with a fresh boot's.

--large pushes one large snapshot (a FUNCTION such as `footprint:6144:16` in MEM_MIB of
guest memory) on loopback, pushes it again, and restores it cold on a fresh host under
snapbpf (1 VM, then 10 VMs), timing each step and checking every checksum against a fresh
boot's. (linux-ra is left out: its demand faults fetch one chunk at a time, and
footprint's working set, spread one page per run of pages, did not finish in 300 s.)

--sweep checks correctness only: every function, input, 1 and 10 VMs, under snapbpf and
linux-ra, each from a fresh host, against a fresh boot (on loopback, no emulated network).

Needs root and the release binary (cargo build --release -p snapbpf-cli).
"""
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from measurelib import BIN, ROOT, function_list, inputs_of, stamp, work_dir, write_json  # noqa: E402
from measurelib import snapbpf as run_snapbpf  # noqa: E402
WORK = os.path.join(work_dir(), "fleet")
NS = "snapbpf-s3"
HOST_IF, NS_IF = "sbpf-h", "sbpf-s"
HOST_IP, NS_IP = "10.77.0.1", "10.77.0.2"
PORT = 8014
BUCKET = "fleet"
ENV = {**os.environ, "AWS_ACCESS_KEY_ID": "snapbpf", "AWS_SECRET_ACCESS_KEY": "snapbpf-secret",
       "AWS_REGION": "us-east-1"}


def sh(*args, check=True):
    return subprocess.run(args, check=check, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def snapbpf(*args):
    return run_snapbpf(*args, env=ENV)


def s3s_fs():
    found = shutil.which("s3s-fs") or os.path.expanduser("~/.cargo/bin/s3s-fs")
    if not os.path.exists(found):
        sys.exit("s3s-fs is not installed (scripts/setup.sh installs it)")
    return found


class Network:
    """The S3 server in a namespace behind a shaped, delayed link (or on loopback with rtt None)."""

    def __init__(self, rtt_ms, gbit):
        self.rtt_ms, self.gbit = rtt_ms, gbit
        self.root = os.path.join(WORK, "s3")
        shutil.rmtree(self.root, ignore_errors=True)
        os.makedirs(os.path.join(self.root, BUCKET))
        if rtt_ms is None:
            self.ip, prefix = "127.0.0.1", []
            if subprocess.run(["curl", "-s", "-o", "/dev/null", f"http://127.0.0.1:{PORT}"]).returncode == 0:
                sys.exit(f"something already listens on 127.0.0.1:{PORT}: stop it first")
        else:
            self.teardown()
            sh("ip", "netns", "add", NS)
            sh("ip", "link", "add", HOST_IF, "type", "veth", "peer", "name", NS_IF)
            sh("ip", "link", "set", NS_IF, "netns", NS)
            sh("ip", "addr", "add", f"{HOST_IP}/30", "dev", HOST_IF)
            sh("ip", "link", "set", HOST_IF, "up")
            sh("ip", "netns", "exec", NS, "ip", "addr", "add", f"{NS_IP}/30", "dev", NS_IF)
            sh("ip", "netns", "exec", NS, "ip", "link", "set", NS_IF, "up")
            sh("ip", "netns", "exec", NS, "ip", "link", "set", "lo", "up")
            # s3s-fs does not set TCP_NODELAY: on a reused connection its response body
            # waits for the client's delayed ACK (~40 ms). S3, MinIO and RGW set it; ACK at
            # once on this link so the measurement shows the network, not that artifact.
            sh("ip", "route", "replace", "10.77.0.0/30", "dev", HOST_IF, "quickack", "1")
            sh("ip", "netns", "exec", NS, "ip", "route", "replace", "10.77.0.0/30", "dev", NS_IF, "quickack", "1")
            # The rate on both ends (TBF: this kernel has no netem).
            tbf = ["tbf", "rate", f"{gbit}gbit", "burst", "256kb", "latency", "20ms"]
            sh("tc", "qdisc", "add", "dev", HOST_IF, "root", *tbf)
            sh("ip", "netns", "exec", NS, "tc", "qdisc", "add", "dev", NS_IF, "root", *tbf)
            self.ip, prefix = NS_IP, ["ip", "netns", "exec", NS]
        self.server = subprocess.Popen([*prefix, s3s_fs(), "--host", self.ip, "--port", str(PORT),
                                        "--access-key", "snapbpf", "--secret-key", "snapbpf-secret", self.root],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.proxy = None
        endpoint = (self.ip, PORT)
        if rtt_ms is not None:
            # Latency: a delay line in front of the server, half the RTT each way.
            subprocess.run(["cargo", "build", "--release", "-q", "-p", "snapbpf-fleet", "--example", "delay_proxy"],
                           check=True, cwd=ROOT)
            proxy = os.path.join(os.path.dirname(BIN), "examples", "delay_proxy")
            self.proxy = subprocess.Popen([proxy, f"127.0.0.1:{PORT + 1}", f"{self.ip}:{PORT}",
                                           str(int(rtt_ms * 500))], stderr=subprocess.DEVNULL)
            endpoint = ("127.0.0.1", PORT + 1)
        self.endpoint = endpoint
        ENV["AWS_ENDPOINT_URL"] = f"http://{endpoint[0]}:{endpoint[1]}"
        ENV["AWS_ALLOW_HTTP"] = "true"  # loopback or the lab netns: plain HTTP by choice
        deadline = time.time() + 30
        while subprocess.run(["curl", "-s", "-o", "/dev/null", ENV["AWS_ENDPOINT_URL"]]).returncode != 0:
            if time.time() > deadline:
                sys.exit("s3s-fs did not start")
            time.sleep(0.05)

    def ping_ms(self):
        """Median time of a connect and a first response byte (two round trips), ms."""
        import socket
        times = []
        for _ in range(11):
            t = time.perf_counter()
            with socket.create_connection(self.endpoint, timeout=5) as c:
                c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                c.recv(1)
                times.append((time.perf_counter() - t) * 1e3)
        return round(statistics.median(times), 3)

    @staticmethod
    def teardown():
        sh("ip", "netns", "del", NS, check=False)
        sh("ip", "link", "del", HOST_IF, check=False)

    def close(self):
        if self.proxy:
            self.proxy.terminate()
            self.proxy.wait()
        self.server.terminate()
        self.server.wait()
        if self.rtt_ms is not None:
            self.teardown()


class Host:
    """A fresh host: a `snapbpf mount` with an empty chunk cache."""

    count = 0

    def __init__(self):
        Host.count += 1
        self.dir = os.path.join(WORK, f"host-{Host.count}")
        self.cache = os.path.join(WORK, f"cache-{Host.count}")
        shutil.rmtree(self.cache, ignore_errors=True)
        os.makedirs(self.dir, exist_ok=True)
        self.proc = subprocess.Popen([BIN, "mount", f"s3://{BUCKET}/fleet", self.dir, "--cache", self.cache],
                                     env=ENV, stderr=subprocess.DEVNULL)
        deadline = time.time() + 30
        while not os.path.exists(os.path.join(self.dir, ".stats")):
            if self.proc.poll() is not None or time.time() > deadline:
                sys.exit("snapbpf mount did not start")
            time.sleep(0.02)

    def close(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)
        shutil.rmtree(self.cache, ignore_errors=True)


def invoke(snap, strategy, reference, vms=1, input_=1):
    r = json.loads(snapbpf("invoke", snap, "--strategy", strategy, "--cold", "--input", str(input_),
                           "--concurrency", str(vms), "--json"))
    got = [run["checksum"] for run in r["runs"]]
    if got != [reference] * vms:
        sys.exit(f"{snap} {strategy} x{vms}: checksums {got} != fresh boot {reference}")
    return r








def main(reps, functions, out_path, rtt_ms, gbit):
    os.makedirs(WORK, exist_ok=True)
    net = Network(rtt_ms, gbit)
    out = {**stamp(), "reps": reps, "rtt_ms": rtt_ms, "gbit": gbit, "ping_ms": net.ping_ms(),
           "pushes": [], "restores": [], "ten": []}
    try:
        for f in functions:
            snap = os.path.join(WORK, f)
            snapbpf("snapshot", f, "--out", snap, "--force")
            recorded = json.loads(snapbpf("record", snap, "--strategy", "snapbpf", "--json"))
            reference = json.loads(snapbpf("boot", f, "--input", "1", "--json"))["checksum"]
            push = json.loads(snapbpf("push", snap, f"s3://{BUCKET}/fleet/{f}", "--json"))
            again = json.loads(snapbpf("push", snap, f"s3://{BUCKET}/fleet/{f}", "--json"))
            ws = recorded["pages"] * 4096
            size = os.path.getsize(os.path.join(snap, "memory"))
            row = {"function": f, "push": push, "second_push": again, "ws_bytes": ws, "memory_bytes": size}
            out["pushes"].append(row)
            print(json.dumps({"function": f, "uploaded": push["uploaded"], "uploaded_mib": push["uploaded_bytes"] / 2**20,
                              "push_ms": push["ms"], "second_uploaded": again["uploaded"]}), flush=True)
            for rep in range(reps):
                rows = []
                for label, strategy in [("local snapbpf", "snapbpf"), ("local linux-ra", "linux-ra")]:
                    r = invoke(snap, strategy, reference)
                    rows.append({"label": label, "e2e_ms": r["runs"][0]["e2e_ms"]})
                for label, strategy in [("s3 snapbpf", "snapbpf"), ("s3 linux-ra", "linux-ra")]:
                    host = Host()
                    try:
                        r = invoke(os.path.join(host.dir, f), strategy, reference)
                        rows.append({"label": label, "e2e_ms": r["runs"][0]["e2e_ms"], "fetch": r["fetch"]})
                        if strategy == "snapbpf":
                            r = invoke(os.path.join(host.dir, f), strategy, reference)
                            rows.append({"label": "s3 snapbpf, chunk cache warm", "e2e_ms": r["runs"][0]["e2e_ms"],
                                         "fetch": r["fetch"]})
                    finally:
                        host.close()
                for row in rows:
                    row.update(function=f, rep=rep)
                    out["restores"].append(row)
                print(f"{f} rep {rep}: " + ", ".join(f"{r['label']} {r['e2e_ms']:.0f}" for r in rows), flush=True)
            host = Host()
            try:
                r = invoke(os.path.join(host.dir, f), "snapbpf", reference, vms=10)
                row = {"function": f, "e2e_ms_median": statistics.median(x["e2e_ms"] for x in r["runs"]),
                       "fetch": r["fetch"], "unique_chunks": push["unique_chunks"], "memory": r["memory"]}
                out["ten"].append(row)
                print(json.dumps(row), flush=True)
            finally:
                host.close()
            write_json(out, out_path)
            shutil.rmtree(snap, ignore_errors=True)
    finally:
        net.close()
    write_json(out, out_path)
    summarize(out)


def sweep(functions, out_path):
    os.makedirs(WORK, exist_ok=True)
    net = Network(None, None)
    out = {**stamp(), "checked": []}
    try:
        for f in functions:
            snap = os.path.join(WORK, f"sweep-{f}")
            snapbpf("snapshot", f, "--out", snap, "--force")
            snapbpf("record", snap, "--strategy", "snapbpf")
            snapbpf("push", snap, f"s3://{BUCKET}/fleet/{f}", "--json")
            inputs = inputs_of(f)
            refs = [json.loads(snapbpf("boot", f, "--input", str(i), "--json"))["checksum"] for i in range(inputs)]
            for strategy in ["snapbpf", "linux-ra"]:
                for i in range(inputs):
                    for vms in [1, 10]:
                        host = Host()
                        try:
                            invoke(os.path.join(host.dir, f), strategy, refs[i], vms=vms, input_=i)
                        finally:
                            host.close()
                        out["checked"].append({"function": f, "strategy": strategy, "input": i, "vms": vms,
                                               "checksum": refs[i]})
            print(f"{f}: snapbpf and linux-ra from fresh hosts, every input, 1 and 10 VMs equal to the fresh boot",
                  flush=True)
            shutil.rmtree(snap, ignore_errors=True)
            write_json(out, out_path)
    finally:
        net.close()
    print(f"{len(out['checked'])} restores from the object store, every checksum equal to the fresh boot's")


def large(function, mem_mib, out_path, chunk_size=None):
    os.makedirs(WORK, exist_ok=True)
    net = Network(None, None)
    out = {**stamp(), "function": function, "mem_mib": mem_mib, "chunk_size": chunk_size, "steps": {}}
    snap = os.path.join(WORK, "large")
    name = function.replace(":", "-")
    steps = out["steps"]

    def step(label, *args):
        started = time.monotonic()
        text = snapbpf(*args)
        steps[label] = {"ms": (time.monotonic() - started) * 1e3}
        print(f"{label}: {steps[label]['ms'] / 1e3:.1f} s", file=sys.stderr, flush=True)
        return text

    try:
        step("snapshot", "snapshot", function, "--mem-mib", str(mem_mib), "--out", snap, "--force")
        memory = os.path.join(snap, "memory")
        out["memory_bytes"] = os.path.getsize(memory)
        out["memory_blocks_bytes"] = os.stat(memory).st_blocks * 512
        # The input the restores invoke: footprint's inputs read disjoint pages.
        recorded = json.loads(step("record", "record", snap, "--strategy", "snapbpf", "--input", "1",
                                   "--json"))
        out["ws_bytes"] = recorded["pages"] * 4096
        reference = json.loads(snapbpf("boot", function, "--input", "1", "--mem-mib", str(mem_mib),
                                       "--json"))["checksum"]
        out["reference"] = reference
        for label in ["push", "second_push"]:
            chunking = ["--chunk-size", chunk_size] if chunk_size else []
            report = json.loads(step(label, "push", snap, f"s3://{BUCKET}/fleet/{name}", *chunking, "--json"))
            steps[label]["report"] = report
        out["restores"] = []
        for strategy, vms in [("snapbpf", 1), ("snapbpf", 10)]:
            host = Host()
            try:
                r = invoke(os.path.join(host.dir, name), strategy, reference, vms=vms)
                out["restores"].append({"strategy": strategy, "vms": vms,
                                        "e2e_ms": [x["e2e_ms"] for x in r["runs"]],
                                        "restore_ms": [x["restore_ms"] for x in r["runs"]],
                                        "fetch": r.get("fetch"), "memory": r["memory"]})
                print(f"fresh host, {strategy} x{vms}: E2E median "
                      f"{statistics.median(x['e2e_ms'] for x in r['runs']):.0f} ms, checksum {reference}",
                      file=sys.stderr, flush=True)
            finally:
                host.close()
            write_json(out, out_path)
    finally:
        net.close()
        shutil.rmtree(snap, ignore_errors=True)
        shutil.rmtree(net.root, ignore_errors=True)
    print(json.dumps({k: v for k, v in out.items() if k != "restores"}, indent=1))


def summarize(out):
    med = statistics.median
    print(f"\n{out.get('cpu', '?')}, kernel {out['kernel']}, git {out['git'][:10]}, {out['reps']} reps, "
          f"RTT {out['rtt_ms']} ms (connect + first byte {out['ping_ms']} ms), {out['gbit']} Gbit/s")
    print("\n| function | memory MiB | WS MiB | pushed chunks | uploaded MiB (raw) | push s | 2nd push uploads |")
    print("|---|---|---|---|---|---|---|")
    for p in out["pushes"]:
        u = p["push"]
        print(f"| {p['function']} | {p['memory_bytes'] / 2**20:.0f} | {p['ws_bytes'] / 2**20:.1f} | {u['uploaded']} "
              f"| {u['uploaded_bytes'] / 2**20:.1f} ({u['uploaded_raw_bytes'] / 2**20:.1f}) | {u['ms'] / 1e3:.1f} "
              f"| {p['second_push']['uploaded']} |")
    labels = ["local snapbpf", "local linux-ra", "s3 snapbpf", "s3 linux-ra", "s3 snapbpf, chunk cache warm"]
    print("\nE2E ms, median (min-max), one VM, cold; s3 = a fresh host")
    print("| function | " + " | ".join(labels) + " | s3/local snapbpf |")
    print("|---" * (len(labels) + 2) + "|")
    for f in dict.fromkeys(r["function"] for r in out["restores"]):
        cells = []
        for l in labels:
            xs = [r["e2e_ms"] for r in out["restores"] if r["function"] == f and r["label"] == l]
            cells.append((med(xs), min(xs), max(xs)))
        ratio = cells[2][0] / cells[0][0]
        print(f"| {f} | " + " | ".join(f"{c[0]:.0f} ({c[1]:.0f}-{c[2]:.0f})" for c in cells) + f" | {ratio:.2f}x |")
    print("\nFetched before the result (fresh host, one VM): bytes on the wire, chunk bytes, requests")
    print("| function | WS MiB | snapbpf wire MiB | wire / WS | chunk MiB | requests | TTFB ms | linux-ra wire MiB | memory MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for p in out["pushes"]:
        f = p["function"]
        s = [r["fetch"] for r in out["restores"] if r["function"] == f and r["label"] == "s3 snapbpf"]
        l = [r["fetch"] for r in out["restores"] if r["function"] == f and r["label"] == "s3 linux-ra"]
        if not s:
            continue
        wire = med(x["bytes"] for x in s) / 2**20
        print(f"| {f} | {p['ws_bytes'] / 2**20:.1f} | {wire:.1f} | {wire / (p['ws_bytes'] / 2**20):.2f} "
              f"| {med(x['raw_bytes'] for x in s) / 2**20:.1f} | {med(x['requests'] for x in s):.0f} "
              f"| {med(x['ttfb_ms'] for x in s):.2f} | {med(x['bytes'] for x in l) / 2**20:.1f} "
              f"| {p['memory_bytes'] / 2**20:.0f} |")
    print("\nTen VMs on a fresh host")
    print("| function | median E2E ms | GETs | distinct chunks | joined an in-flight fetch |")
    print("|---|---|---|---|---|")
    for t in out["ten"]:
        print(f"| {t['function']} | {t['e2e_ms_median']:.0f} | {t['fetch']['requests']} | {t['unique_chunks']} "
              f"| {t['fetch']['joined']} |")


if __name__ == "__main__":
    args = sys.argv[1:]
    opt = {"--rtt-ms": 1.0, "--gbit": 1.0}
    for k in list(opt):
        if k in args:
            i = args.index(k)
            opt[k] = float(args[i + 1])
            del args[i:i + 2]
    if len(args) == 2 and args[0] == "--summarize":
        summarize(json.load(open(args[1])))
    elif len(args) in (4, 6) and args[0] == "--large":
        if len(args) == 6 and args[4] != "--chunk-size":
            sys.exit(__doc__)
        large(args[1], int(args[2]), args[3], args[5] if len(args) == 6 else None)
    elif len(args) == 3 and args[0] == "--sweep":
        sweep(function_list(args[1], workloads_only=False), args[2])
    elif len(args) == 3:
        main(int(args[0]), function_list(args[1]), args[2], opt["--rtt-ms"], opt["--gbit"])
    else:
        sys.exit(__doc__)
