"""Table 5: bytes per stored transition of ``EpisodeReplay``, next to the authors' replay layout.

Run: ``python benchmarks/replay_memory.py [--repeats 5] [--tasks 4] [--capacity 4000] [--quick]``
(not part of the test run; ``python benchmarks/run_all.py`` prints every table).

Measured: the ``nbytes`` of a buffer's preallocated storage tensors (``EpisodeReplay.nbytes``) divided by its
capacity, and, after filling it with random 200-step episodes, what its side file costs per stored transition: the
tensors of ``state_dict()`` and the bytes ``torch.save`` writes. Computed, not measured: the authors' layout, which
stores with every transition two flattened H-step histories (``H * (A + 1 + O)`` each) plus obs, next obs, action,
reward and done, all counted as float32 (``docs/design.md#replay-stores-episodes``; their obs are in fact float64
and every transition is a tuple of ~12 numpy objects, so their real footprint is larger still).

HalfCheetah-Vel: obs 20, action 6, H 20; Humanoid-Dir: obs 376, action 17, H 15 (the authors' run scripts).

Target : <= 250 bytes per HalfCheetah-Vel transition.
"""

from __future__ import annotations

import argparse
import io
import statistics

import torch
from _common import main_for, table, target_cell, title
from rich.table import Table

from mql_lightning.data.replay import EpisodeReplay

#: name -> (obs, action, history length)
FAMILIES = {"HalfCheetah-Vel": (20, 6, 20), "Humanoid-Dir": (376, 17, 15)}
TARGET_BYTES = {"HalfCheetah-Vel": 250.0}
EPISODE = 200
FLOAT32 = 4


def add_arguments(p: argparse.ArgumentParser) -> None:
    """This benchmark's own flags."""
    p.add_argument("--tasks", type=int, default=4, help="tasks (rings) of the measured buffer")
    p.add_argument("--capacity", type=int, default=4000, help="transitions per task (a multiple of 200 fills it)")


def authors_bytes(obs: int, act: int, history: int) -> int:
    """Bytes per transition of the authors' layout, all float32: two histories, obs, next obs, action, reward, done."""
    return FLOAT32 * (2 * history * (act + 1 + obs) + 2 * obs + act + 2)


def filled(obs: int, act: int, history: int, tasks: int, capacity: int, seed: int) -> EpisodeReplay:
    """A buffer filled to capacity with random episodes of (at most) 200 steps."""
    gen = torch.Generator().manual_seed(seed)
    replay = EpisodeReplay(tasks, capacity, obs, act, history)
    for task in range(tasks):
        for start in range(0, capacity, EPISODE):
            t = min(EPISODE, capacity - start)
            replay.add_episode(task, torch.randn(t, obs, generator=gen), torch.rand(t, act, generator=gen) * 2 - 1,
                               torch.randn(t, generator=gen), torch.randn(t, obs, generator=gen),
                               torch.zeros(t, dtype=torch.bool))
    return replay


def side_file_bytes(replay: EpisodeReplay) -> tuple[int, int]:
    """Bytes of the tensors in ``state_dict()`` and bytes ``torch.save`` writes for it."""
    state = replay.state_dict()
    tensors = sum(v.nbytes for v in state.values() if isinstance(v, torch.Tensor))
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return tensors, buffer.getbuffer().nbytes


def tables(args: argparse.Namespace) -> list[Table]:
    """Measure and build Table 5."""
    tasks, capacity = (2, 400) if args.quick else (args.tasks, args.capacity)
    t = table(
        title("5. Replay memory per stored transition (bytes)", args,
              f"{tasks} tasks x {capacity} transitions, filled with random episodes"),
        ["family (O, A, H)", "ours: storage", "ours: state_dict", "ours: torch.save", "authors (computed)",
         "authors / ours", "target (<= 250 B)"],
        caption="ours, measured: storage = EpisodeReplay.nbytes / capacity; state_dict = its tensors' nbytes per "
        "stored transition; torch.save = side-file bytes per stored transition.\nauthors, computed from their layout: "
        "2 histories of H x (A+1+O) plus obs, next obs, action, reward, done, all float32 (without their float64 obs "
        "and per-tuple numpy objects)",
    )
    for name, (obs, act, history) in FAMILIES.items():
        storage, tensors, saved = [], [], []
        for rep in range(args.repeats):
            replay = filled(obs, act, history, tasks, capacity, seed=rep)
            n = replay.num_transitions()
            storage.append(replay.nbytes / (tasks * capacity))
            state_bytes, file_bytes = side_file_bytes(replay)
            tensors.append(state_bytes / n)
            saved.append(file_bytes / n)
        ours = statistics.median(storage)
        theirs = authors_bytes(obs, act, history)
        target = TARGET_BYTES.get(name)
        t.add_row(f"{name} ({obs}, {act}, {history})", f"{ours:,.1f}", f"{statistics.median(tensors):,.1f}",
                  f"{statistics.median(saved):,.1f}", f"{theirs:,}", f"{theirs / ours:.1f}x",
                  target_cell(ours, target, " B", higher_is_better=False) if target else "")
    return [t]


def main() -> None:
    """Command-line entry point."""
    main_for(__doc__, add_arguments, tables)


if __name__ == "__main__":
    main()
