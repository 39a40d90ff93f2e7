"""Gather the ``test_results.csv`` of ``mql test`` runs into one CSV per experiment and print per-seed means.

Usage (from the folder holding the test runs, named ``tests/test_<exp>_<variant>_s<seed>/version_0``)::

    python docs/results/collect_tests.py point_mql docs/results/point/test_results.csv

The output has the per-task rows of every run with ``variant`` and ``seed`` columns; the results page's test tables
are the means over test tasks printed here.
"""

import csv
import glob
import re
import statistics as st
import sys
from pathlib import Path

exp, out = sys.argv[1], Path(sys.argv[2])
rows = []
for path in sorted(glob.glob(f"tests/test_{exp}_*_s*/version_0/test_results.csv")):
    match = re.match(rf"tests/test_{exp}_(\w+)_s(\d+)/", path)
    variant, seed = match.group(1), int(match.group(2))
    with open(path, newline="") as f:
        rows += [{"variant": variant, "seed": seed, **row} for row in csv.DictReader(f)]
with out.open("w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
seeds = sorted({r["seed"] for r in rows})
for variant in sorted({r["variant"] for r in rows}):
    for column in ("return_pre_adapt", "return", "success_pre_adapt", "success", "lambda", "beta_mean"):
        if column not in rows[0]:
            continue  # success: families that report one (Meta-World)
        per_seed = [
            st.mean(float(r[column]) for r in rows if r["variant"] == variant and r["seed"] == seed) for seed in seeds
        ]
        spread = f" ± {st.stdev(per_seed):.2f}" if len(per_seed) > 1 else ""
        values = " ".join(f"{v:8.2f}" for v in per_seed)
        print(f"{variant:6s} {column:17s} {values}  mean {st.mean(per_seed):.2f}{spread}")
print("wrote", out, len(rows), "rows")
