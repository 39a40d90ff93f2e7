"""Table 1: updates per second of our TD3-context update next to a naive PyTorch implementation.

Run: ``python benchmarks/update_throughput.py [--threads 1] [--repeats 5] [--updates 100] [--quick]``
(not part of the test run; ``python benchmarks/run_all.py`` prints every table).

HalfCheetah-Vel sizes (obs 20, action 6, history 20, GRU hidden 20, 300x300 networks, batch 256, gamma 0.99,
policy_delay 2, Adam lr 1e-3), one fixed random batch laid out like a replay batch. One update is one critic step,
plus an actor step and a target update every second update; a repetition is ``--updates`` consecutive updates
(an even number, so every repetition holds the same mix). Ours runs through the public ``td3_update``, with the
faithful layout (separate actor and critic context encoders, DESIGN decision 4) and with ``shared_context=True``;
the naive reference is ``benchmarks/naive_td3_context.py``. Repetitions of the three are interleaved.

Target (issue 5): the faithful update at >= 75 updates/s and >= 2x the naive one.
"""

from __future__ import annotations

import argparse

import torch
from _common import (
    CHEETAH_VEL,
    OurUpdate,
    Sizes,
    interleaved_rates,
    main_for,
    random_batch,
    repeat,
    table,
    target_cell,
    td3_defaults,
    title,
)
from naive_td3_context import NaiveTD3Context
from rich.table import Table

TARGET_UPDATES_PER_S = 75.0
TARGET_SPEEDUP = 2.0
WARMUP_UPDATES = 10


def add_arguments(p: argparse.ArgumentParser) -> None:
    """This benchmark's own flags."""
    p.add_argument("--updates", type=int, default=100, help="updates per timed repetition (rounded up to even)")


def measure(sizes: Sizes, updates: int, repeats: int) -> dict[str, float]:
    """Median updates/s of the naive update and of ours (faithful and shared), interleaved.

    Args:
        sizes: Problem sizes.
        updates: Updates per repetition (even, so that every repetition holds the same mix).
        repeats: Repetitions.

    Returns:
        ``{"naive": ..., "faithful": ..., "shared": ...}`` in updates/s.
    """
    batch = random_batch(sizes)
    torch.manual_seed(0)
    naive = NaiveTD3Context(sizes.obs, sizes.act, sizes.hidden, sizes.gru_hidden, lr=sizes.lr)
    faithful = OurUpdate(sizes, context=True, shared_context=False)
    shared = OurUpdate(sizes, context=True, shared_context=True)
    steps = {"naive": lambda: naive.update(batch), "faithful": lambda: faithful(batch), "shared": lambda: shared(batch)}
    for step in steps.values():
        repeat(step, WARMUP_UPDATES)()
    return interleaved_rates({name: repeat(step, updates) for name, step in steps.items()}, repeats)


def tables(args: argparse.Namespace) -> list[Table]:
    """Measure and build Table 1."""
    updates = 10 if args.quick else args.updates
    updates += updates % 2
    rates = measure(CHEETAH_VEL, updates, args.repeats)
    t = table(
        title("1. TD3-context update throughput, HalfCheetah-Vel sizes", args, f"{updates} updates per repetition"),
        ["implementation", "updates/s", "ms/update", "vs naive", "target >= 75 updates/s", "target >= 2x naive"],
        caption=f"{CHEETAH_VEL.describe()}, {td3_defaults()}; fixed random batch in the "
        "replay's layout; update = critic step (+ actor step and targets every 2nd)",
    )
    rows = [
        ("naive PyTorch (4 nn.GRU, deepcopy targets, loop Polyak)", "naive"),
        ("ours, td3_update, separate encoders (faithful)", "faithful"),
        ("ours, td3_update, shared_context=True", "shared"),
    ]
    for label, key in rows:
        rate, speedup = rates[key], rates[key] / rates["naive"]
        targets = ("", "")
        if key == "faithful":
            targets = (target_cell(rate, TARGET_UPDATES_PER_S, "/s"), target_cell(speedup, TARGET_SPEEDUP, "x"))
        t.add_row(label, f"{rate:.1f}", f"{1000 / rate:.2f}", f"{speedup:.2f}x", *targets)
    return [t]


def main() -> None:
    """Command-line entry point."""
    main_for(__doc__, add_arguments, tables)


if __name__ == "__main__":
    main()
