"""Claims of docs/results/scale/README.md (issue 27)."""
from claimlib import claim, load, median, slope  # noqa: F401

# ---- docs/results/scale/README.md --------------------------------------------------------

SCALE = "docs/results/scale/README.md"


def scale_cells(run):
    """{(vmm, mem_mib or ws_mib, layout, strategy): {"restore": [...], "e2e": [...]}}"""
    cells = {}
    for row in run["rows"]:
        x = row["mem_mib"] if run.get("sweep") != "working set" else int(row["function"].rsplit(":", 1)[1])
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
