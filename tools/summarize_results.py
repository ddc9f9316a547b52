"""One line of totals over the JUnit files of tools/test.sh, and its exit status.

``python tools/summarize_results.py RESULTS_DIR --not-run "py3.13 bpy-5.3.0" --failed "bpy-4.2.23"``
prints a line per part, then ``total: N passed, N failed, N skipped``. Exit 1 when anything
failed or errored, when a part failed without results, or when a part could not run and ``CI`` is
``true`` (CI must run every leg); else 0.
"""
import argparse
import os
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def counts(path: Path) -> tuple[int, int, int]:
    """(passed, failed, skipped) of one JUnit XML file (errors count as failed)."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    tests = sum(int(s.get("tests", 0)) for s in suites)
    failed = sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites)
    skipped = sum(int(s.get("skipped", 0)) for s in suites)
    return tests - failed - skipped, failed, skipped


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--not-run", default="", help="parts that could not run (space-separated)")
    parser.add_argument("--failed", default="", help="parts whose command failed (space-separated)")
    args = parser.parse_args(argv)
    total = [0, 0, 0]
    for path in sorted(args.results.glob("*.xml")):
        part = counts(path)
        total = [a + b for a, b in zip(total, part)]
        print(f"{path.stem}: {part[0]} passed, {part[1]} failed, {part[2]} skipped")
    not_run, failed = args.not_run.split(), args.failed.split()
    for name in not_run:
        print(f"{name}: NOT RUN (its Python is missing on this machine)")
    for name in failed:
        print(f"{name}: FAILED")
    print(f"total: {total[0]} passed, {total[1]} failed, {total[2]} skipped")
    ci = os.environ.get("CI", "").lower() == "true"
    return 1 if total[1] or failed or (not_run and ci) else 0


if __name__ == "__main__":
    sys.exit(main())
