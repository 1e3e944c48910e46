"""Rendered results files, and the documents that quote them: each must be what its script
prints from the raw data now (docs/results/full/goals.md, docs/results/firecracker/goals.md
and the part of docs/firecracker.md that quotes the latter; the summary.md of scale, sabre,
snapfaas and fleet)."""
import os
import subprocess
import sys

from claimlib import ROOT, RESULTS, claim


def rendered(script, *data):
    out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", script),
                          *[d if d.startswith("--") else os.path.join(RESULTS, *d.split("/")) for d in data]],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if out.returncode != 0:
        raise ValueError(f"{script} failed: {out.stderr.strip()}")
    return [line for line in out.stdout.splitlines() if line.strip()]


def firecracker_goals():
    return rendered("firecracker-results.py", "firecracker/builtin/results.json",
                    "firecracker/firecracker/results.json")


@claim("docs/results/full/goals.md")
def full_goals_rendered():
    return rendered("check-goals.py", "full/native/results.json", "full/sata/results.json")


@claim("docs/results/firecracker/goals.md")
def firecracker_goals_rendered():
    return firecracker_goals()


@claim("docs/firecracker.md")
def firecracker_doc_quotes_goals():
    """docs/firecracker.md quotes the rendered tables from the Firecracker one-VM table on."""
    lines = firecracker_goals()
    start = next(i for i, line in enumerate(lines) if line.startswith("Cold, one VM, under Firecracker"))
    return lines[start:]


def summary_claim(name):
    """docs/results/NAME/summary.md holds what `measure-NAME.py --summarize run1.json` prints."""
    @claim(f"docs/results/{name}/summary.md")
    def summary_rendered():
        return rendered(f"measure-{name}.py", "--summarize", f"{name}/run1.json")
    summary_rendered.__name__ = f"{name}_summary_rendered"
    return summary_rendered


for _name in ("sabre", "snapfaas", "fleet"):
    summary_claim(_name)


@claim("docs/results/scale/summary.md")
def scale_summary_rendered():
    return (rendered("measure-scale.py", "--summarize", "scale/run2.json", "scale/ws3.json", "scale/run1.json")
            + rendered("measure-restore-syscalls.py", "--summarize", "scale/syscalls.json"))
