#!/usr/bin/env python3
"""Recomputes the measured figures quoted in docs/ prose from the committed raw data.

usage: scripts/check-claims.py           check every claim; exit 1 naming each that fails
       scripts/check-claims.py --show    print each claim's text as the data renders it

A claim is a function in a module scripts/claims_*.py, registered with `@claim(DOC)`: it reads raw results under
docs/results and returns the exact phrases DOC must contain, every number in them
formatted from the data and every comparison word ("faster", "flat", "within 1.2x")
derived from it by the rules in `docs/bench.md` ("Comparisons"). A phrase the document
does not contain, whitespace aside, fails the check: a figure edited by hand, a claim
whose data changed, or a rule that no longer holds. CI runs this (`.ci/run`).

To quote a new figure: write the phrase in the document and a claim that renders it.
"""
import glob
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import claimlib  # noqa: E402

for _module in sorted(glob.glob(os.path.join(os.path.dirname(os.path.abspath(__file__)), "claims_*.py"))):
    __import__(os.path.basename(_module)[:-3])

ROOT, CLAIMS = claimlib.ROOT, claimlib.CLAIMS


def main(argv):
    show = argv == ["--show"]
    if argv and not show:
        sys.exit(__doc__)
    failed = total = 0
    for doc, fn in CLAIMS:
        with open(os.path.join(ROOT, doc)) as fh:
            text = " ".join(fh.read().split())
        try:
            phrases = fn()
        except (OSError, KeyError, ValueError, StopIteration, ZeroDivisionError) as e:
            print(f"FAIL {doc} {fn.__name__}: cannot compute from the data: {e!r}")
            failed += 1
            continue
        for phrase in phrases:
            total += 1
            if show:
                print(f"{doc} {fn.__name__}: {phrase}")
            elif " ".join(phrase.split()) not in text:
                print(f"FAIL {doc} {fn.__name__}: the data says\n    {phrase}\n  which the document does not contain")
                failed += 1
    if not show:
        print(f"claims: {total - failed} of {total} phrases in docs/ follow from the data")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
