"""Train / validation / test task splits, fixed by a task seed (docs/design.md#task-splits)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import gymnasium
import numpy as np

from mql_lightning.envs.base import SPLIT_REGIONS, MetaEnv

__all__ = ["TaskSplits", "make_task_splits"]


def _task_key(task: dict[str, Any]) -> str:
    # Tasks are plain dicts (unhashable); their canonical JSON is a hashable identity.
    return json.dumps(task, sort_keys=True)


@dataclass(frozen=True)
class TaskSplits:
    """Disjoint train, validation and test task lists.

    Attributes:
        train: Meta-training tasks.
        val: Validation tasks (adapted to during validation).
        test: Test tasks (adapted to under ``mql test``).
        held_out: Whether validation and test tasks are disjoint from training ones (``False`` only for families
            evaluated on their training tasks, see :attr:`MetaEnv.eval_on_train_tasks`).

    Raises:
        ValueError: If a task appears in two splits.
    """

    train: list[dict[str, Any]]
    val: list[dict[str, Any]]
    test: list[dict[str, Any]]
    held_out: bool = True

    def of(self, split: str) -> list[dict[str, Any]]:
        """The tasks of a split: ``train``, ``val`` or ``test``.

        Raises:
            ValueError: For another name.
        """
        if split not in ("train", "val", "test"):
            raise ValueError(f"unknown split {split!r}: expected 'train', 'val' or 'test'")
        return getattr(self, split)

    def __post_init__(self) -> None:
        if not self.held_out:
            return
        seen: dict[str, str] = {}
        for name in ("train", "val", "test"):
            for key in {_task_key(task) for task in getattr(self, name)}:
                if key in seen:
                    raise ValueError(f"task {key} appears in both the {seen[key]} and {name} splits")
                seen[key] = name


def make_task_splits(
    env: gymnasium.Env, num_train: int, num_val: int, num_test: int, seed: int, ood: bool = False
) -> TaskSplits:
    """Draw the train, validation and test tasks of a task family.

    In-distribution, one draw of ``num_train + num_val + num_test`` tasks from region ``"all"`` with ``seed`` is
    sliced in order train, val, test. Out-of-distribution, train comes from ``"ood_train"`` and val + test from one
    draw from ``"ood_test"`` (sliced val, test), each draw with its own child of ``np.random.SeedSequence(seed)``.
    A family with its benchmark's own splits (:attr:`MetaEnv.benchmark_splits`, e.g. Meta-World) gives each split
    from its region of the same name, with ``seed``. Either way the splits depend on the task seed alone, not on any
    run seed.

    Args:
        env: A task-family env, possibly wrapped (its ``unwrapped`` must be a :class:`MetaEnv`).
        num_train: Number of training tasks, ``>= 1``.
        num_val: Number of validation tasks, ``>= 0``.
        num_test: Number of test tasks, ``>= 0``.
        seed: The task seed.
        ood: Use the family's disjoint out-of-distribution regions.

    Returns:
        The three splits.

    Raises:
        TypeError: If ``env.unwrapped`` is not a :class:`MetaEnv`.
        ValueError: If a count is negative, ``num_train`` is 0, the family has no OOD regions (or its benchmark's own
            splits) and ``ood`` is set, a split would get fewer tasks than asked, or two splits share a task.
    """
    family = env.unwrapped
    if not isinstance(family, MetaEnv):
        raise TypeError(f"make_task_splits needs a MetaEnv task family, got {type(family).__name__}")
    counts = {"num_train": num_train, "num_val": num_val, "num_test": num_test}
    negative = {name: count for name, count in counts.items() if count < 0}
    if negative:
        raise ValueError(f"task counts must be >= 0, got {negative}")
    if num_train == 0:
        raise ValueError("num_train must be >= 1: meta-training needs at least one task")

    if family.eval_on_train_tasks:
        if ood:
            raise ValueError(f"{type(family).__name__} has a fixed task set and no out-of-distribution split")
        # The paper evaluates the two-task direction families on the tasks they train on.
        train = family.sample_tasks(num_train, seed, "all")
        return TaskSplits(train=train, val=train[:num_val], test=train[:num_test], held_out=False)
    if family.benchmark_splits:
        if ood:
            raise ValueError(f"{type(family).__name__} has its benchmark's own held-out tasks; data.ood does not apply")
        counts_by_region = zip((num_train, num_val, num_test), SPLIT_REGIONS, strict=True)
        train, val, test = (family.sample_tasks(count, seed, region) for count, region in counts_by_region)
    elif ood:
        train_seq, eval_seq = np.random.SeedSequence(seed).spawn(2)
        train = family.sample_tasks(num_train, _int_seed(train_seq), "ood_train")
        held_out = family.sample_tasks(num_val + num_test, _int_seed(eval_seq), "ood_test")
        val, test = held_out[:num_val], held_out[num_val : num_val + num_test]
    else:
        drawn = family.sample_tasks(num_train + num_val + num_test, seed, "all")
        train, val, test = drawn[:num_train], drawn[num_train : num_train + num_val], drawn[num_train + num_val :]

    # A family with a finite task set may return fewer tasks than asked; fail loudly rather than run short.
    for name, split, count in (("train", train, num_train), ("val", val, num_val), ("test", test, num_test)):
        if len(split) < count:
            raise ValueError(
                f"{type(family).__name__} gave only {len(split)} {name} task(s) of the {count} asked (seed {seed})"
            )
    return TaskSplits(train=train, val=val, test=test)


def _int_seed(seq: np.random.SeedSequence) -> int:
    """A Python-int seed derived from a SeedSequence (``sample_tasks`` takes an int seed)."""
    return int(seq.generate_state(1, dtype=np.uint64)[0])
