"""Claims of docs/results/scale/README.md (issue 27)."""
from claimlib import claim, compare, load, median, slope  # noqa: F401

# ---- docs/results/scale/README.md --------------------------------------------------------

SCALE = "docs/results/scale/README.md"


def ws_mib(row):
    """The working set a working-set sweep's row invokes (`footprint:INIT:WS`), MiB."""
    return int(row["function"].rsplit(":", 1)[1])


MEMSLOT_CALL = "ioctl KVM_SET_USER_MEMORY_REGION"


def call_totals(row, name):
    """Each traced restore's summed time in call `name` (syscalls.json), ms."""
    return [i["calls"].get(name, {"total_ms": 0.0})["total_ms"] for i in row["invocations"]]


def scale_cells(run):
    """{(vmm, mem_mib or ws_mib, layout, strategy): {"restore": [...], "e2e": [...]}}"""
    cells = {}
    for row in run["rows"]:
        x = row["mem_mib"] if run.get("sweep") != "working set" else ws_mib(row)
        for s in row["samples"]:
            cell = cells.setdefault((row["vmm"], x, s["layout"], s["strategy"]), {"restore": [], "e2e": []})
            cell["restore"].append(s["restore_ms"])
            cell["e2e"].append(s["e2e_ms"])
    return cells


def layout_of(run, vmm, mem_mib, layout):
    return next(r["layouts"][layout] for r in run["rows"] if r["vmm"] == vmm and r["mem_mib"] == mem_mib)


@claim(SCALE)
def scale_snapshot_goal():
    run = load("scale", "run2.json")
    out = []
    for vmm, name in (("builtin", "our VMM"), ("firecracker", "Firecracker")):
        big = layout_of(run, vmm, 16384, "sparse")
        dense = layout_of(run, vmm, 16384, "dense")
        ok = big["snapshot_ms"] <= 2000 and big["memory_blocks_bytes"] <= 64 << 20
        out.append(f"{name}: a sparse snapshot of the 16 GiB guest takes "
                   f"{big['snapshot_ms'] / 1e3:.2f} s and {big['memory_blocks_bytes'] / 2**20:.1f} MiB "
                   f"of blocks ({'met' if ok else 'missed'}); dense, "
                   f"{dense['snapshot_ms'] / 1e3:.1f} s and {dense['memory_blocks_bytes'] / 2**30:.0f} GiB")
    return out


@claim(SCALE)
def scale_restore_goal():
    run = load("scale", "run2.json")
    cells = scale_cells(run)
    out = []
    for vmm, name in (("builtin", "our VMM"), ("firecracker", "Firecracker")):
        small = cells[(vmm, 256, "sparse", "snapbpf")]
        big = cells[(vmm, 16384, "sparse", "snapbpf")]
        r = median(big["restore"]) / median(small["restore"])
        e = median(big["e2e"]) / median(small["e2e"])
        out.append(f"{name}: `restore_ms` {median(small['restore']):.1f} ms at 256 MiB and "
                   f"{median(big['restore']):.1f} ms at 16 GiB, {r:.2f}x "
                   f"({'met' if r <= 1.2 else 'missed'}: goal 1.2x); E2E "
                   f"{median(small['e2e']):.1f} and {median(big['e2e']):.1f} ms, {e:.2f}x "
                   f"({'met' if e <= 1.1 else 'missed'}: goal 1.1x)")
    return out


def signed(value, digits):
    """`value` with its sign and `digits` decimals, never "-0.0"."""
    return f"{round(value, digits) + 0.0:+.{digits}f}"


def medians_by(run, x_of):
    """{(vmm, layout, strategy): [(x, median restore, median E2E), ...]}"""
    out = {}
    for (vmm, x, layout, strategy), cell in sorted(scale_cells(run).items()):
        out.setdefault((vmm, layout, strategy), []).append(
            (x_of(x), median(cell["restore"]), median(cell["e2e"])))
    return out


@claim(SCALE)
def scale_memory_slopes():
    """Goal 4, guest memory: every cost's slope per GiB of guest memory (run2)."""
    run = load("scale", "run2.json")
    lines = medians_by(run, lambda mib: mib / 1024)
    out = []
    for vmm, name in (("builtin", "our VMM"), ("firecracker", "Firecracker")):
        pts = lines[(vmm, "sparse", "snapbpf")]
        snaps = [(r["mem_mib"] / 1024, r["layouts"]["sparse"]) for r in run["rows"] if r["vmm"] == vmm]
        ten = [(r["mem_mib"] / 1024, t["memory"]["total_kib"] / 1024)
               for r in run["rows"] if r["vmm"] == vmm for t in r["ten"] if t["strategy"] == "snapbpf"]
        out.append(f"{name}, per GiB of guest memory: sparse snapshot "
                   f"{signed(slope([(x, l['snapshot_ms']) for x, l in snaps]), 1)} ms and "
                   f"{signed(slope([(x, l['memory_blocks_bytes'] / 2**20) for x, l in snaps]), 1)} MiB of blocks, "
                   f"record {signed(slope([(x, l['record_ms']) for x, l in snaps]), 1)} ms, "
                   f"`snapbpf` restore {signed(slope([(x, r) for x, r, _ in pts]), 2)} ms and E2E "
                   f"{signed(slope([(x, e) for x, _, e in pts]), 2)} ms, ten-VM memory "
                   f"{signed(slope(ten), 1)} MiB")
    return out


WS_RUN = "ws3.json"


@claim(SCALE)
def scale_working_set_slopes():
    """Goal 4, working set: the slopes per GiB of working set at fixed guest memory."""
    run = load("scale", WS_RUN)
    lines = medians_by(run, lambda ws_mib: ws_mib / 1024)
    out = []
    for vmm, name in (("builtin", "our VMM"), ("firecracker", "Firecracker")):
        rows = [r for r in run["rows"] if r["vmm"] == vmm]

        def ws(r):
            return ws_mib(r) / 1024
        ten = {s: [(ws(r), t["memory"]["total_kib"] / 1024) for r in rows for t in r["ten"] if t["strategy"] == s]
               for s in ("snapbpf", "linux-ra")}
        recorded = [(ws(r), r["layouts"]["sparse"]["working_set_bytes"] / 2**20) for r in rows]
        out.append(f"{name}, per GiB of working set: record "
                   f"{signed(slope([(ws(r), r['layouts']['sparse']['record_ms']) for r in rows]) / 1e3, 1)} s, "
                   f"recorded working set {signed(slope(recorded) / 1024, 2)} GiB, "
                   f"`snapbpf` E2E {signed(slope([(x, e) for x, _, e in lines[(vmm, 'sparse', 'snapbpf')]]) / 1e3, 2)} s "
                   f"against `linux-ra` {signed(slope([(x, e) for x, _, e in lines[(vmm, 'sparse', 'linux-ra')]]) / 1e3, 2)} s, "
                   f"ten-VM memory {signed(slope(ten['snapbpf']) / 1024, 2)} GiB against "
                   f"{signed(slope(ten['linux-ra']) / 1024, 2)} GiB")
    return out


@claim(SCALE)
def scale_push_goal():
    """Goal 3: a 16 GiB snapshot with several GiB of data pushed twice and restored on a
    fresh host (measure-fleet --large; its restores fail unless the checksum is the
    reference's)."""
    run = load("scale", "fleet-16g.json")
    push, again = run["steps"]["push"], run["steps"]["second_push"]
    one = next(r for r in run["restores"] if r["vms"] == 1)
    ten = next(r for r in run["restores"] if r["vms"] == 10)
    ok = (run["memory_blocks_bytes"] >= 6 << 30 and push["report"]["uploaded"] == push["report"]["unique_chunks"]
          and again["report"]["uploaded_bytes"] == 0)
    return [f"a push of the {run['mem_mib'] // 1024} GiB snapshot with "
            f"{run['memory_blocks_bytes'] / 2**30:.2f} GiB of data uploads "
            f"{push['report']['uploaded_bytes'] / 2**30:.2f} GiB in {push['report']['uploaded']} chunks in "
            f"{push['ms'] / 1e3:.1f} s; the second push uploads {again['report']['uploaded_bytes']} bytes in "
            f"{again['ms'] / 1e3:.1f} s ({'met' if ok else 'missed'})",
            f"a fresh host restores it to the reference checksum `{run['reference']}`, fetching "
            f"{one['fetch']['bytes'] / 2**20:.0f} MiB in {one['fetch']['requests']} GETs for a "
            f"{run['ws_bytes'] / 2**20:.1f} MiB working set (E2E {median(one['e2e_ms']) / 1e3:.2f} s); "
            f"ten VMs on a fresh host fetch {ten['fetch']['bytes'] / 2**20:.0f} MiB in "
            f"{ten['fetch']['requests']} GETs (E2E median {median(ten['e2e_ms']) / 1e3:.2f} s)"]


@claim(SCALE)
def scale_memslot_cost():
    """The restore's growth with guest memory is KVM_SET_USER_MEMORY_REGION (strace)."""
    run = load("scale", "syscalls.json")
    rows = {r["mem_mib"]: r for r in run["rows"]}

    def total(row):
        return median(call_totals(row, MEMSLOT_CALL))
    small, big = rows[256], rows[16384]
    return [f"Under strace, registering the memory slots (`KVM_SET_USER_MEMORY_REGION`) takes "
            f"{total(small):.2f} ms at 256 MiB and {total(big):.2f} ms at 16 GiB (median of "
            f"{len(big['invocations'])} restores each, `syscalls.json`)",
            others_within(small, big, MEMSLOT_CALL)]


def others_within(small, big, grown):
    """How much the other calls grow: `madvise` (the prefetch threads', the largest
    besides KVM_RUN, and noisy) by its ranges, the rest by their largest median change."""
    names = {n for r in (small, big) for i in r["invocations"] for n in i["calls"]} - {grown, "madvise"}
    change, name = max((median(call_totals(big, n)) - median(call_totals(small, n)), n) for n in names)
    m_small, m_big = call_totals(small, "madvise"), call_totals(big, "madvise")
    return (f"`madvise`, summed over the prefetch threads, takes {min(m_small):.0f}–{max(m_small):.0f} ms "
            f"at 256 MiB and {min(m_big):.0f}–{max(m_big):.0f} ms at 16 GiB; no other call's median "
            f"total grows by more than {change:.2f} ms (`{name}`)")


@claim(SCALE)
def scale_working_set_points():
    """Per working set: one VM's E2E against linux-ra (the comparison rule) and the ten
    VMs' page cache."""
    run = load("scale", WS_RUN)
    cells = scale_cells(run)
    out = []
    for vmm, name in (("builtin", "our VMM"), ("firecracker", "Firecracker")):
        points, cache = [], []
        for r in run["rows"]:
            if r["vmm"] != vmm:
                continue
            ws = ws_mib(r)
            s, l = cells[(vmm, ws, "sparse", "snapbpf")]["e2e"], cells[(vmm, ws, "sparse", "linux-ra")]["e2e"]
            points.append(f"{ws} MiB: {median(s):.0f} against {median(l):.0f} ms ({compare(s, l)})")
            ten = {t["strategy"]: t["memory"]["page_cache_kib"] / 1024 for t in r["ten"]}
            cache.append(f"{ten['snapbpf']:.0f} against {ten['linux-ra']:.0f} MiB")
        out.append(f"{name}, one VM, `snapbpf` E2E against `linux-ra`: " + "; ".join(points))
        out.append(f"{name}, ten VMs, page cache of `snapbpf` against `linux-ra`: " + ", ".join(cache))
    return out


@claim(SCALE)
def scale_snapshot_ranges():
    """Dense snapshots' cost per GiB of memory (run2), and the snapshot time at every
    working set (ws3: it is the init footprint's)."""
    run = load("scale", "run2.json")
    dense = [slope([(r["mem_mib"] / 1024, r["layouts"]["dense"]["snapshot_ms"] / 1e3)
                    for r in run["rows"] if r["vmm"] == vmm]) for vmm in ("builtin", "firecracker")]
    ws = [r["layouts"]["sparse"]["snapshot_ms"] / 1e3 for r in load("scale", WS_RUN)["rows"]]
    return [f"`--dense` writes every page, as a Firecracker full snapshot does, and costs "
            f"{min(dense):.1f}–{max(dense):.1f} s per GiB",
            f"The snapshot does not ({min(ws):.0f}–{max(ws):.0f} s at every working set"]


@claim(SCALE)
def scale_push_chunk_size():
    """The same 16 GiB push with 64 KiB chunks: what a smaller chunk saves on the wire and
    costs at push."""
    big, small = load("scale", "fleet-16g.json"), load("scale", "fleet-16g-64k.json")

    def one(run):
        return next(r for r in run["restores"] if r["vms"] == 1)
    return [f"With 64 KiB chunks (`fleet-16g-64k.json`) the push takes "
            f"{small['steps']['push']['ms'] / 1e3:.1f} s for {small['steps']['push']['report']['uploaded']} chunks "
            f"and a fresh host fetches {one(small)['fetch']['bytes'] / 2**20:.0f} MiB in "
            f"{one(small)['fetch']['requests']} GETs (E2E {median(one(small)['e2e_ms']) / 1e3:.2f} s), against "
            f"{one(big)['fetch']['bytes'] / 2**20:.0f} MiB and {median(one(big)['e2e_ms']) / 1e3:.2f} s at 512 KiB"]


@claim("docs/microvm.md")
def microvm_memslot_cost():
    rows = {r["mem_mib"]: r for r in load("scale", "syscalls.json")["rows"]}

    def total(row):
        return median(call_totals(row, MEMSLOT_CALL))
    return [f"registering the slots takes {total(rows[256]):.2f} ms at 256 MiB and "
            f"{total(rows[16384]):.2f} ms at 16 GiB under `strace -T`"]
