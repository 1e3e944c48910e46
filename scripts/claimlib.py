"""The claim registry and the comparison rules of `docs/bench.md` ("Comparisons"), shared
by scripts/check-claims.py and its claim modules (scripts/claims_*.py)."""
import json
import os
import random
import statistics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "docs", "results")
CLAIMS = []


def claim(doc):
    def register(fn):
        CLAIMS.append((doc, fn))
        return fn
    return register


def load(*path):
    with open(os.path.join(RESULTS, *path)) as fh:
        return json.load(fh)


def bench_cells(run, concurrency, cold=True):
    """{(function, strategy label): [sample]}: a `snapbpf bench` results.json's samples
    grouped into cells (scripts/check-goals.py and firecracker-results.py group the same)."""
    out = {}
    for s in run["samples"]:
        if s["concurrency"] == concurrency and s["cold"] == cold:
            out.setdefault((s["function"], s["strategy"]), []).append(s)
    return out


def median(values):
    return statistics.median(values)


# ---- comparison rules (docs/bench.md, "Comparisons") -------------------------------------

BOOTSTRAP_ROUNDS = 2000
BOOTSTRAP_SEED = 27


def ratio_interval(a, b, level=0.95):
    """Bootstrap interval of median(a) / median(b): both sample sets resampled with
    replacement, BOOTSTRAP_ROUNDS times, from a fixed seed so the check is reproducible."""
    rng = random.Random(BOOTSTRAP_SEED)
    ratios = sorted(
        median(rng.choices(a, k=len(a))) / median(rng.choices(b, k=len(b)))
        for _ in range(BOOTSTRAP_ROUNDS))
    lo = ratios[int((1 - level) / 2 * BOOTSTRAP_ROUNDS)]
    hi = ratios[int((1 + level) / 2 * BOOTSTRAP_ROUNDS) - 1]
    return lo, hi


def compare(a, b):
    """`faster`, `slower` or `tie` for times `a` against `b`: faster when the whole 95 %
    interval of the median ratio is below 1, slower when above, a tie otherwise."""
    lo, hi = ratio_interval(a, b)
    return "faster" if hi < 1 else "slower" if lo > 1 else "tie"


def slope(points):
    """Least-squares slope of (x, y) points."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / sxx
