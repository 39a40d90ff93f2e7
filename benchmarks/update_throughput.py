"""Table 1: updates per second of our TD3-context update next to a naive PyTorch implementation.

Run: ``python benchmarks/update_throughput.py [--threads 1] [--repeats 5] [--updates 100] [--scaling] [--quick]``
(not part of the test run; ``python benchmarks/run_all.py`` prints every table).

HalfCheetah-Vel as ``configs/cheetah_vel.yaml`` ships it (obs 20, action 6, history 20, GRU hidden 15, 300x300
networks, batch 256, fused Adam lr 1e-3, policy noise 0.3, gamma 0.99, policy_delay 2), one fixed random batch laid
out like a replay batch. One update is one critic step, plus an actor step and a target update every second update;
a repetition is ``--updates`` consecutive updates (an even number, so every repetition holds the same mix). Ours runs
through the public ``td3_update``, with the faithful layout (separate actor and critic context encoders,
docs/design.md#context-encoders) with the context GRUs' compiled kernel (the default) and with their torch
implementation (``ContextEncoder(implementation="torch")``), and with ``shared_context=True``; the naive reference is
``benchmarks/naive_td3_context.py``. Repetitions of the four are interleaved.

Table 1b times the context GRU pass alone at the update's shapes (two groups, batch 256): the compiled kernel, the
torch implementation and ``nn.GRU``, so that a change which makes the kernel's loops scalar shows here. Table 1c
compares the meta-training update with the adaptation update of Eq. 19 (batch 1280, beta-weighted, with the proximal
term; ``mql_lightning.adaptation``'s trainer) per sample.

With ``--scaling``, Table 1d times the naive and the faithful update at 1 and at 2 threads in one process,
``torch.set_num_threads`` switched between interleaved repetitions: separate runs at each thread count compare them
across minutes of host drift, which on a shared machine is as large as the margins. Beside them it times a bound, not
an implementation: the same update with every context encoder replaced by :class:`FreeContext` (a constant context,
no GRU pass), i.e. what the update would cost if its GRU passes cost nothing, which shows how much of the 2-thread gap
the GRU passes hold (docs/performance.md, "Why 2.2x at 2 threads is missed").

Targets: the faithful update at >= 75 updates/s  and >= 1.7x the naive one at 1 thread, >= 2.2x at 2 or
more; the adaptation update at least as fast per sample as the meta-training update.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable

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
from torch import nn

from mql_lightning.adaptation import AdaptationConfig, _ProximalTD3
from mql_lightning.data.replay import ReplayBatch
from mql_lightning.modules.gru import gru_last_states

TARGET_UPDATES_PER_S = 75.0
WARMUP_UPDATES = 10
ADAPTATION_BATCH = 1280


class FreeContext(nn.Module):
    """A context encoder that costs nothing, for Table 1d's bound: a learnable constant context, zeros at first.

    Not a context encoder anyone should train with: it ignores the history. The update's other work (the MLPs at the
    same widths, the optimiser steps, Polyak averaging) is unchanged.

    Args:
        input_dim: Width of one history entry (ignored).
        hidden_size: Width of the context.
    """

    def __init__(self, input_dim: int, hidden_size: int) -> None:
        super().__init__()
        self.output_dim = hidden_size
        self.z = nn.Parameter(torch.zeros(hidden_size))

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        """The constant context for every window of the batch."""
        return self.z.expand(history.shape[0], -1)


def target_speedup(threads: int) -> float:
    """The speed-up over the naive update asked for at this thread count."""
    return 1.7 if threads < 2 else 2.2


def add_arguments(p: argparse.ArgumentParser) -> None:
    """This benchmark's own flags."""
    p.add_argument("--updates", type=int, default=100, help="updates per timed repetition (rounded up to even)")
    p.add_argument("--scaling", action="store_true",
                   help="also Table 1d: both updates at 1 and 2 threads, interleaved in one process, and the "
                   "faithful update's bound without its GRU passes")


def measure(sizes: Sizes, updates: int, repeats: int) -> dict[str, float]:
    """Median updates/s of the naive update and of ours (faithful with either GRU, shared), interleaved.

    Args:
        sizes: Problem sizes.
        updates: Updates per repetition (even, so that every repetition holds the same mix).
        repeats: Repetitions.

    Returns:
        ``{"naive": ..., "faithful": ..., "faithful_torch_gru": ..., "shared": ...}`` in updates/s.
    """
    batch = random_batch(sizes)
    naive = _naive_update(sizes, batch)
    ours = {
        "faithful": OurUpdate(sizes),
        "faithful_torch_gru": OurUpdate(sizes, compiled=False),
        "shared": OurUpdate(sizes, shared_context=True),
    }
    steps = {"naive": naive, **{name: _bound(update, batch) for name, update in ours.items()}}
    for step in steps.values():
        repeat(step, WARMUP_UPDATES)()
    return interleaved_rates({name: repeat(step, updates) for name, step in steps.items()}, repeats)


def measure_scaling(
    sizes: Sizes, updates: int, repeats: int, thread_counts: tuple[int, ...] = (1, 2)
) -> dict[str, float]:
    """Median updates/s of the naive and the faithful update, and of the faithful update without GRU passes (the
    bound, with :class:`FreeContext` encoders), at each thread count, all interleaved in one process.

    Args:
        sizes: Problem sizes.
        updates: Updates per repetition (even).
        repeats: Repetitions.
        thread_counts: torch thread counts, set before each repetition (restored afterwards).

    Returns:
        ``{"naive <threads>" | "faithful <threads>" | "free_context <threads>": updates/s}``.
    """
    batch = random_batch(sizes)
    steps = {
        "naive": _naive_update(sizes, batch),
        "faithful": _bound(OurUpdate(sizes), batch),
        "free_context": _bound(OurUpdate(sizes, encoder=FreeContext), batch),
    }

    def at(threads: int, run: Callable[[], int]) -> Callable[[], int]:
        def timed() -> int:
            torch.set_num_threads(threads)
            return run()

        return timed

    restore = torch.get_num_threads()
    try:
        for threads in thread_counts:
            for step in steps.values():
                at(threads, repeat(step, WARMUP_UPDATES))()
        work = {f"{name} {n}": at(n, repeat(step, updates)) for n in thread_counts for name, step in steps.items()}
        return interleaved_rates(work, repeats)
    finally:
        torch.set_num_threads(restore)


def _naive_update(sizes: Sizes, batch: ReplayBatch) -> Callable[[], None]:
    """One update of the naive reference per call (its weights seeded 0, as every table's)."""
    torch.manual_seed(0)
    naive = NaiveTD3Context(sizes.obs, sizes.act, sizes.hidden, sizes.gru_hidden, lr=sizes.lr,
                            policy_noise=sizes.policy_noise)
    return lambda: naive.update(batch)


def _bound(update: OurUpdate, batch: ReplayBatch) -> Callable[[], None]:
    return lambda: update(batch)


def measure_gru(sizes: Sizes, calls: int, repeats: int) -> dict[str, float]:
    """Median milliseconds of one context GRU pass: forward without gradients (2 groups), forward and backward (1).

    Returns:
        ``{"<implementation> <pass>": ms}`` for the kernel, the torch implementation and (forward only) ``nn.GRU``.
    """
    torch.manual_seed(0)
    width = sizes.act + 1 + sizes.obs
    grus = [nn.GRU(width, sizes.gru_hidden, batch_first=True) for _ in range(2)]
    weights = [[g.weight_ih_l0, g.weight_hh_l0, g.bias_ih_l0, g.bias_hh_l0] for g in grus]
    history = random_batch(sizes).history

    def forward(compiled: bool) -> None:
        with torch.no_grad():
            gru_last_states(history, weights, compiled=compiled)

    def backward(compiled: bool) -> None:
        gru_last_states(history, weights[:1], compiled=compiled).sum().backward()

    def nn_gru() -> None:
        with torch.no_grad():
            for g in grus:
                g(history)

    work = {
        "kernel forward": lambda: forward(True), "torch forward": lambda: forward(False), "nn.GRU forward": nn_gru,
        "kernel forward+backward": lambda: backward(True), "torch forward+backward": lambda: backward(False),
    }
    for step in work.values():
        repeat(step, 3)()
    rates = interleaved_rates({name: repeat(step, calls) for name, step in work.items()}, repeats)
    return {name: 1000 / rate for name, rate in rates.items()}


def measure_adaptation(sizes: Sizes, updates: int, repeats: int) -> dict[str, float]:
    """Median updates/s of the meta-training update (batch 256) and of the Eq. 19 update (batch 1280), interleaved."""
    meta, meta_batch = OurUpdate(sizes), random_batch(sizes)
    big = Sizes(**{**sizes.__dict__, "batch": ADAPTATION_BATCH})
    adapt_batch = random_batch(big, seed=1)
    beta = torch.rand(ADAPTATION_BATCH, generator=torch.Generator().manual_seed(2)) + 0.5
    trainer = _ProximalTD3(OurUpdate(sizes, seed=1).agent, AdaptationConfig(), torch.Generator().manual_seed(3))
    steps = {"meta": lambda: meta(meta_batch), "eq19": lambda: trainer.update(adapt_batch, beta, 0.5)}
    for step in steps.values():
        repeat(step, 4)()
    return interleaved_rates({name: repeat(step, updates) for name, step in steps.items()}, repeats)


def tables(args: argparse.Namespace) -> list[Table]:
    """Measure and build Tables 1, 1b and 1c (and 1d with ``--scaling``)."""
    updates = 10 if args.quick else args.updates
    updates += updates % 2
    threads = torch.get_num_threads()
    rates = measure(CHEETAH_VEL, updates, args.repeats)
    speedup_target = target_speedup(threads)
    t = table(
        title("1. TD3-context update throughput, HalfCheetah-Vel sizes", args, f"{updates} updates per repetition"),
        ["implementation", "updates/s", "ms/update", "vs naive", "target >= 75 updates/s",
         f"target >= {speedup_target:g}x naive"],
        caption=f"{CHEETAH_VEL.describe()}, {td3_defaults()}; fixed random batch in the "
        "replay's layout; update = critic step (+ actor step and targets every 2nd)",
    )
    rows = [
        ("naive PyTorch (4 nn.GRU, deepcopy targets, loop Polyak)", "naive"),
        ("ours, separate encoders (faithful), compiled GRU kernel", "faithful"),
        ("ours, separate encoders, torch GRU implementation", "faithful_torch_gru"),
        ("ours, shared_context=True, compiled GRU kernel", "shared"),
    ]
    for label, key in rows:
        rate, speedup = rates[key], rates[key] / rates["naive"]
        targets = ("", "")
        if key == "faithful":
            targets = (target_cell(rate, TARGET_UPDATES_PER_S, "/s"), target_cell(speedup, speedup_target, "x"))
        t.add_row(label, f"{rate:.1f}", f"{1000 / rate:.2f}", f"{speedup:.2f}x", *targets)

    calls = 5 if args.quick else 50
    ms = measure_gru(CHEETAH_VEL, calls, args.repeats)
    g = table(
        title("1b. The context GRU pass alone, at the update's shapes", args, f"{calls} calls per repetition"),
        ["pass", "compiled kernel (ms)", "torch implementation (ms)", "nn.GRU (ms)", "kernel vs torch"],
        caption=f"history {CHEETAH_VEL.history} x {CHEETAH_VEL.act + 1 + CHEETAH_VEL.obs} inputs, GRU "
        f"{CHEETAH_VEL.gru_hidden}, batch {CHEETAH_VEL.batch}; forward: two GRUs (the target encoders), no "
        f"gradients; forward+backward: one GRU. The kernel's first use in a process (importing numba, compiling "
        f"or loading, one tiny call): {_first_use(cold=True)} with an empty numba cache, {_first_use(cold=False)} "
        "from numba's on-disk cache",
    )
    g.add_row("forward, 2 groups, no gradients", f"{ms['kernel forward']:.2f}", f"{ms['torch forward']:.2f}",
              f"{ms['nn.GRU forward']:.2f}", f"{ms['torch forward'] / ms['kernel forward']:.2f}x faster")
    g.add_row("forward + backward, 1 group", f"{ms['kernel forward+backward']:.2f}",
              f"{ms['torch forward+backward']:.2f}", "",
              f"{ms['torch forward+backward'] / ms['kernel forward+backward']:.2f}x faster")

    adapt_updates = 4 if args.quick else 20
    per = measure_adaptation(CHEETAH_VEL, adapt_updates, args.repeats)
    a = table(
        title("1c. Adaptation (Eq. 19) vs meta-training updates, per sample", args,
              f"{adapt_updates} updates per repetition"),
        ["update", "batch", "updates/s", "samples/s", "vs meta-training per sample", "target >= 1x"],
        caption="Eq. 19: the adaptation trainer's update on a beta-weighted batch with the proximal term "
        "(lambda 0.5, over actor and critics), same sizes and GRU kernel as Table 1",
    )
    meta_samples = per["meta"] * CHEETAH_VEL.batch
    eq19_samples = per["eq19"] * ADAPTATION_BATCH
    a.add_row("meta-training (Eq. 15)", f"{CHEETAH_VEL.batch}", f"{per['meta']:.1f}", f"{meta_samples:,.0f}", "1.00x",
              "")
    a.add_row("adaptation (Eq. 19)", f"{ADAPTATION_BATCH}", f"{per['eq19']:.1f}", f"{eq19_samples:,.0f}",
              f"{eq19_samples / meta_samples:.2f}x", target_cell(eq19_samples / meta_samples, 1.0, "x"))
    if not args.scaling:
        return [t, g, a]
    scaled = measure_scaling(CHEETAH_VEL, updates, args.repeats)
    d = table(
        f"1d. Thread scaling: 1 and 2 threads interleaved in one process\n(torch {torch.__version__}, median of "
        f"{args.repeats} repetitions; {updates} updates per repetition)",
        ["update", "1 thread (updates/s)", "2 threads (updates/s)", "gain from the 2nd thread"],
        caption="torch.set_num_threads switched before every repetition; same sizes and updates as Table 1. "
        "Bound: the faithful update with constant contexts instead of its GRU passes (FreeContext), not an "
        "implementation; ms in the GRU passes = ms/update of ours - ms/update of the bound",
    )
    for label, key in (("naive PyTorch", "naive"), ("ours, faithful, compiled GRU kernel", "faithful"),
                       ("bound: ours without its GRU passes", "free_context")):
        one, two = scaled[f"{key} 1"], scaled[f"{key} 2"]
        d.add_row(label, f"{one:.1f}", f"{two:.1f}", f"{two / one:.2f}x")
    ratios = [scaled[f"faithful {n}"] / scaled[f"naive {n}"] for n in (1, 2)]
    d.add_row("ours vs naive", f"{ratios[0]:.2f}x", f"{ratios[1]:.2f}x", "")
    d.add_row("target", target_cell(ratios[0], target_speedup(1), "x"), target_cell(ratios[1], target_speedup(2), "x"),
              "")
    bounds = [scaled[f"free_context {n}"] / scaled[f"naive {n}"] for n in (1, 2)]
    d.add_row("bound vs naive", f"{bounds[0]:.2f}x", f"{bounds[1]:.2f}x", "")
    gru_ms = [1000 / scaled[f"faithful {n}"] - 1000 / scaled[f"free_context {n}"] for n in (1, 2)]
    d.add_row("ms per update in the GRU passes", f"{gru_ms[0]:.2f}", f"{gru_ms[1]:.2f}", "")
    return [t, g, a, d]


def _first_use(cold: bool) -> str:
    """Seconds of the kernel's first use in a fresh process: compiled from scratch, or loaded from numba's cache."""
    probe = ("import time; from mql_lightning.modules.gru import compiled_kernel; t = time.perf_counter(); "
             "assert compiled_kernel() is not None; print(time.perf_counter() - t)")
    with tempfile.TemporaryDirectory() as empty:
        env = {**os.environ, "NUMBA_CACHE_DIR": empty} if cold else os.environ
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=False, env=env)
    return f"{float(done.stdout):.1f} s" if done.returncode == 0 else "(failed)"


def main() -> None:
    """Command-line entry point."""
    main_for(__doc__, add_arguments, tables)


if __name__ == "__main__":
    main()
