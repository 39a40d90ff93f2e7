"""Table 3: achieved GFLOP/s of our TD3-context update, as a fraction of a large matrix product's.

Run: ``python benchmarks/flops.py [--threads 1] [--repeats 5] [--updates 100] [--matmul-size 2048] [--quick]``
(not part of the test run; ``python benchmarks/run_all.py`` prints every table).

The FLOPs of one update are counted with ``torch.utils.flop_counter.FlopCounterMode`` (matrix products, the GRU's
included, forward and backward), averaged over two consecutive updates because the actor step and the target update
happen every second update. Times the measured updates/s of the same update (faithful layout, HalfCheetah-Vel
sizes, as in Table 1) this gives the achieved GFLOP/s, shown next to the GFLOP/s of a float32 ``N x N @ N x N``
product (``2 N^3`` FLOPs) measured in the same run, interleaved with it.
"""

from __future__ import annotations

import argparse

import torch
from _common import (
    CHEETAH_VEL,
    OurUpdate,
    interleaved_rates,
    main_for,
    random_batch,
    repeat,
    table,
    title,
)
from rich.table import Table
from torch.utils.flop_counter import FlopCounterMode

WARMUP = 4


def add_arguments(p: argparse.ArgumentParser) -> None:
    """This benchmark's own flags."""
    p.add_argument("--updates", type=int, default=100, help="updates per timed repetition (rounded up to even)")
    p.add_argument("--matmul-size", type=int, default=2048, help="N of the reference N x N float32 matrix product")
    p.add_argument("--matmuls", type=int, default=5, help="matrix products per timed repetition")


def update_flops(update: OurUpdate, batch: object) -> float:
    """FLOPs of one update: the mean over two consecutive ones (one of them with the actor step)."""
    with FlopCounterMode(display=False) as counter:
        update(batch)
        update(batch)
    return counter.get_total_flops() / 2


def tables(args: argparse.Namespace) -> list[Table]:
    """Measure and build Table 3."""
    updates = 10 if args.quick else args.updates
    updates += updates % 2
    n = 512 if args.quick else args.matmul_size
    matmuls = 2 if args.quick else args.matmuls

    batch = random_batch(CHEETAH_VEL)
    update = OurUpdate(CHEETAH_VEL)
    repeat(lambda: update(batch), WARMUP)()
    flops = update_flops(update, batch)

    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
    out = torch.empty(n, n)
    torch.mm(a, b, out=out)  # warm-up
    rates = interleaved_rates(
        {"update": repeat(lambda: update(batch), updates), "matmul": repeat(lambda: torch.mm(a, b, out=out), matmuls)},
        args.repeats,
    )
    update_gflops = flops * rates["update"] / 1e9
    matmul_flops = 2.0 * n**3
    matmul_gflops = matmul_flops * rates["matmul"] / 1e9

    t = table(
        title("3. Achieved GFLOP/s of the TD3-context update (HalfCheetah-Vel sizes, faithful layout)", args,
              f"{updates} updates / {matmuls} matrix products per repetition"),
        ["workload", "GFLOP per call", "calls/s", "GFLOP/s", "fraction of matmul"],
        caption="update FLOPs counted by FlopCounterMode (mean of 2 consecutive updates: the actor step is every 2nd)",
    )
    t.add_row("TD3-context update (td3_update)", f"{flops / 1e9:.3f}", f"{rates['update']:.1f}",
              f"{update_gflops:.2f}", f"{update_gflops / matmul_gflops:.1%}")
    t.add_row(f"float32 matmul {n}x{n} @ {n}x{n}", f"{matmul_flops / 1e9:.3f}", f"{rates['matmul']:.2f}",
              f"{matmul_gflops:.2f}", "100.0%")
    return [t]


def main() -> None:
    """Command-line entry point."""
    main_for(__doc__, add_arguments, tables)


if __name__ == "__main__":
    main()
