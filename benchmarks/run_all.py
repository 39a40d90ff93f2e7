"""Every benchmark table in one run: updates, SB3, GFLOP/s, collection, replay memory, a real run end to end.

Run: ``python benchmarks/run_all.py [--threads 1] [--repeats 5] [--quick] [--only 1 4]``
(not part of the test run). Takes every flag of the single scripts (``--updates``, ``--lockstep``, ``--fill``,
``--runs``, ...; see their ``--help``), each applying to the tables that use it, and prints the tables as it goes:

1. ``update_throughput.py``: TD3-context updates/s, ours (faithful and shared encoders, compiled GRU kernel or torch
   GRU) vs a naive implementation; the GRU pass alone; Eq. 19 adaptation updates vs meta-training per sample; with
   ``--scaling``, both updates at 1 and 2 threads interleaved in one process, with the update's bound without its
   GRU passes;
2. ``sb3_comparison.py``: plain TD3 updates/s vs Stable-Baselines3 (optional dependency);
3. ``flops.py``: achieved GFLOP/s of the TD3-context update vs a large matrix product;
4. ``collection.py``: env steps/s of collection with the policy in the loop vs gymnasium random actions;
5. ``replay_memory.py``: bytes per stored transition vs the authors' layout;
6. ``end_to_end.py``: ``mql fit`` at the shipped HalfCheetah-Vel and Walker configs over a short window, wall time by
   activity, against a previous commit (minutes: it trains).
"""

from __future__ import annotations

import argparse
import time

import collection
import end_to_end
import flops
import replay_memory
import sb3_comparison
import update_throughput
from _common import CONSOLE, parser, setup, show

BENCHMARKS = {
    "1": update_throughput,
    "2": sb3_comparison,
    "3": flops,
    "4": collection,
    "5": replay_memory,
    "6": end_to_end,
}


def main() -> None:
    """Command-line entry point."""
    p = parser(__doc__, conflict_handler="resolve")  # several scripts define --updates, with the same meaning
    p.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), help="run only these tables")
    for module in BENCHMARKS.values():
        module.add_arguments(p)
    args: argparse.Namespace = p.parse_args()
    setup(args)
    for key, module in BENCHMARKS.items():
        if args.only and key not in args.only:
            continue
        start = time.perf_counter()
        show(module.tables(args))
        CONSOLE.print(f"[dim](table {key}: {time.perf_counter() - start:.0f} s)[/]\n")


if __name__ == "__main__":
    main()
