"""The task API shared by every meta-RL task family.

A task family is one gymnasium environment whose dynamics or reward depend on a *task* (a goal, a target
velocity, physical parameters, ...). Tasks are plain JSON-able dicts so they can be logged, written into configs
and checkpoints (which only hold Python scalars and containers) without any conversion.
"""

from __future__ import annotations

import abc
import copy
import math
import numbers
from collections.abc import Mapping
from typing import Any, ClassVar

import gymnasium
import numpy as np

__all__ = ["MetaEnv", "is_finite_real", "to_plain"]

#: Region every family supports: its normal task distribution.
ALL_REGION = "all"
#: Regions of a family that comes with its benchmark's own task splits (:attr:`MetaEnv.benchmark_splits`).
SPLIT_REGIONS = ("train", "val", "test")


def to_plain(value: Any) -> Any:
    """Convert numpy arrays and scalars (possibly nested in dicts/lists/tuples) to plain Python values.

    Args:
        value: A value made of numbers, numpy arrays/scalars, strings, dicts, lists and tuples.

    Returns:
        A fresh structure of Python scalars, lists and dicts with the same content; tuples become lists so the
        result round-trips through JSON unchanged.
    """
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {key: to_plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(item) for item in value]
    # Python scalars and strings are immutable; anything else is deep-copied so the caller keeps no handle on it.
    return copy.deepcopy(value)


def is_finite_real(value: Any) -> bool:
    """Whether ``value`` is a finite real number (bools excluded: ``True`` is not a coordinate or an angle)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


class MetaEnv(gymnasium.Env, metaclass=abc.ABCMeta):
    """Abstract base of every meta-RL task family.

    Subclasses set ``self._task`` in ``__init__`` (typically to a default task so the env works without
    :meth:`set_task`), implement :meth:`_sample_tasks` and :meth:`_validate_task`, and read the task in their
    ``reset``. Argument checking lives here, once. This class defines no ``__init__``, ``reset`` or ``step`` so
    it composes with other gymnasium bases (e.g. ``class Family(MetaEnv, MujocoEnv)``).

    Attributes:
        ood_regions: Names of the family's out-of-distribution regions, besides ``"all"``. Empty when the family
            has none; otherwise ``("ood_train", "ood_test")``, two disjoint parts of the task space.
        eval_on_train_tasks: The family has a small fixed task set (the two-task direction families) and, as in the
            paper, is validated and tested on its training tasks instead of held-out ones.
        renamed_task_keys: Task keys of earlier versions and what replaced them, ``{old: (new, meaning)}``: a task
            with an old key is refused with a message saying what to write instead.
        benchmark_splits: The family's benchmark defines which tasks are for training and which are held out
            (Meta-World): it has the regions ``"train"``, ``"val"`` and ``"test"`` (:data:`SPLIT_REGIONS`), from
            which :func:`~mql_lightning.envs.tasks.make_task_splits` takes each split, instead of slicing one draw.
    """

    ood_regions: tuple[str, ...] = ()
    eval_on_train_tasks: bool = False
    renamed_task_keys: ClassVar[dict[str, tuple[str, str]]] = {}
    benchmark_splits: bool = False
    _task: dict[str, Any]

    @classmethod
    def regions(cls) -> tuple[str, ...]:
        """The task regions this family can sample from.

        Returns:
            ``("all",)`` followed by :attr:`ood_regions` and, for a family with :attr:`benchmark_splits`,
            :data:`SPLIT_REGIONS`.
        """
        return (ALL_REGION, *cls.ood_regions, *(SPLIT_REGIONS if cls.benchmark_splits else ()))

    def sample_tasks(self, n: int, seed: int, region: str = ALL_REGION) -> list[dict[str, Any]]:
        """Draw ``n`` tasks from one region of the family's task space.

        The draw depends only on ``(n, seed, region)``: it uses its own generator, never the env's
        ``np_random``, so sampling tasks does not disturb (and is not disturbed by) episode randomness.

        Args:
            n: Number of tasks, ``>= 0``.
            seed: Seed of the task draw (the *task* seed, independent of any run seed).
            region: ``"all"`` for the family's normal distribution, or another of :meth:`regions`.

        Returns:
            ``n`` tasks as plain dicts of Python floats and lists of floats.

        Raises:
            TypeError: If ``n`` is not an integer.
            ValueError: If ``n < 0``, the region is unknown, or the family has no OOD regions and one was asked.
        """
        if isinstance(n, bool) or not isinstance(n, numbers.Integral):
            raise TypeError(f"n must be an int, got {type(n).__name__}")
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        self._check_region(region)
        rng = np.random.default_rng(seed)
        return [self._canonical(task) for task in self._sample_tasks(rng, int(n), region)]

    def set_task(self, task: Mapping[str, Any]) -> None:
        """Select the task of the following episodes; it takes effect at the next ``reset``.

        Args:
            task: A task dict as returned by :meth:`sample_tasks`. It is copied: later changes to it by the caller
                do not reach the env.

        Raises:
            TypeError: If ``task`` is not a mapping.
            ValueError: If a key is missing or unknown, or a value has the wrong shape or type.
        """
        self._task = self._canonical(task)

    @property
    def task(self) -> dict[str, Any]:
        """A copy of the current task (changing it does not change the env)."""
        return copy.deepcopy(self._task)

    def _canonical(self, task: Mapping[str, Any]) -> dict[str, Any]:
        """Validate a task and return an independent plain-Python copy of it."""
        if not isinstance(task, Mapping):
            raise TypeError(f"{type(self).__name__}: a task must be a dict, got {type(task).__name__}")
        return self._validate_task(to_plain(task))

    def _check_region(self, region: str) -> None:
        """Raise ValueError unless ``region`` is one this family supports."""
        if region in self.regions():
            return
        family = type(self).__name__
        if region in ("ood_train", "ood_test") and not self.ood_regions:
            raise ValueError(f"task family {family} has no out-of-distribution regions; supported regions: 'all'")
        valid = ", ".join(repr(name) for name in self.regions())
        raise ValueError(f"unknown task region {region!r} for task family {family}; valid regions: {valid}")

    def _check_keys(self, task: Mapping[str, Any], keys: tuple[str, ...]) -> None:
        """Raise ValueError unless ``task`` has exactly ``keys``; a helper for :meth:`_validate_task`."""
        family = type(self).__name__
        missing = [key for key in keys if key not in task]
        unknown = [key for key in task if key not in keys]
        for old in unknown:
            if old in self.renamed_task_keys and self.renamed_task_keys[old][0] in missing:
                new, meaning = self.renamed_task_keys[old]
                raise ValueError(
                    f"{family} task key {old!r} is now {new!r} ({meaning}): write {{{new!r}: {task[old]!r}}}"
                )
        if missing:
            raise ValueError(f"{family} task is missing key(s) {missing}; expected keys {list(keys)}")
        if unknown:
            raise ValueError(f"{family} task has unknown key(s) {unknown}; expected keys {list(keys)}")

    @abc.abstractmethod
    def _sample_tasks(self, rng: np.random.Generator, n: int, region: str) -> list[dict[str, Any]]:
        """Draw ``n`` tasks from ``region`` using only ``rng``.

        Args:
            rng: The generator to draw from (already seeded; arguments already checked).
            n: Number of tasks, ``>= 0``.
            region: A region in :meth:`regions`.

        Returns:
            ``n`` task dicts; numpy values are allowed (the base converts them).
        """

    @abc.abstractmethod
    def _validate_task(self, task: dict[str, Any]) -> dict[str, Any]:
        """Check a task (already converted to plain Python) and return its canonical form.

        Args:
            task: A fresh plain-Python dict the method may modify or replace.

        Returns:
            The canonical task (e.g. numbers converted to float).

        Raises:
            ValueError: If a key is missing or unknown, or a value has the wrong shape or type.
        """
