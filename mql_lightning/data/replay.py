"""Multi-task episode replay: transitions stored once, context windows gathered at sample time.

The authors' MQL code stores two flattened H-step histories with every transition (≈ 6 KB per
cheetah transition, 42 KB for ant-goal; ``docs/design.md#replay-stores-episodes``). Here every transition
is stored exactly once, contiguously per task, together with its step-in-episode, and the history
windows are rebuilt with one vectorised gather per batch (docs/design.md#replay-stores-episodes).

Context convention (the authors'): the context entry of transition ``j`` is
``e_j = concat(a_j, r_j, o_j)`` with ``o_j`` the *pre-step* observation, so ``C = A + 1 + O``.
For transition ``i`` the history is ``e_{i-H} .. e_{i-1}`` (oldest first) and the next-history,
used with ``next_obs`` for the TD target, is ``e_{i-H+1} .. e_i``. One ``(H + 1)``-long gather of
``e_{i-H} .. e_i`` therefore yields both windows and, in its last entry, the transition's own
action, reward and observation.

Entries from before the start of the episode (``history_padding``):

- ``zeros`` (default): zero entries.
- ``authors``: as the authors' runner builds its windows: zeros, except that the entry just before
  ``e_0`` is ``e_-1 = (a_rand, 0, o_0)``, a random action ``N(0, sigma)`` drawn when the episode
  started (stored once per episode), reward 0 and the first observation. Their next-history starts
  from zeros only, so it lacks ``e_-1``: for ``i < H - 1`` the next-history of transition ``i`` is
  not the history of transition ``i + 1``. That inconsistency is theirs, kept here on purpose so
  that this setting reproduces their updates.
- ``start_entry``: ``e_-1`` in both windows (the consistent variant of ``authors``).

This module depends on torch and numpy only: the buffer knows nothing of Lightning or gymnasium.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import numpy as np
import torch

__all__ = ["HISTORY_PADDINGS", "EpisodeReplay", "HistoryPadding", "ReplayBatch"]

# Bumped whenever the state-dict layout changes, so old side files fail loudly instead of silently.
_STATE_VERSION = 2
# Stored only by buffers whose windows hold the start entry e_-1 (history_padding other than "zeros"): the random
# action of every episode's e_-1, at the slot of the episode's first transition.
_START_KEYS = frozenset({"start_action", "history_padding"})
HISTORY_PADDINGS = ("zeros", "authors", "start_entry")
_STATE_KEYS = frozenset(
    {
        "version",
        "num_tasks",
        "capacity_per_task",
        "obs_dim",
        "action_dim",
        "history_length",
        "entry",
        "next_obs",
        "terminated",
        "step",
        "ptr",
        "size",
    }
)

ArrayLike = np.ndarray | torch.Tensor | Sequence[Any]
HistoryPadding = Literal["zeros", "authors", "start_entry"]
"""What a context window holds before the episode start (see the module docstring)."""


def check_history_padding(value: str) -> str:
    """Return ``value`` if it is one of :data:`HISTORY_PADDINGS`.

    Raises:
        ValueError: Otherwise.
    """
    if value not in HISTORY_PADDINGS:
        raise ValueError(f"history_padding must be one of {', '.join(HISTORY_PADDINGS)}; got {value!r}")
    return value


class ReplayBatch(NamedTuple):
    """A multi-task minibatch with its context windows.

    ``obs``, ``action``, ``reward``, ``history`` and ``next_history`` are views into one gathered
    ``(B, H + 1, C)`` tensor (that single gather is the point of docs/design.md#replay-stores-episodes); treat them as
    read-only or clone before modifying them in place. (With ``history_padding="authors"`` the
    next-history is a separate tensor: it lacks the start entry that the history holds.)

    Attributes:
        obs: Pre-step observations, ``(B, O)`` float32.
        action: Actions taken, ``(B, A)`` float32.
        reward: Rewards received, ``(B,)`` float32.
        next_obs: Post-step observations, ``(B, O)`` float32.
        terminated: 1.0 where the episode truly terminated at this step, else 0.0, ``(B,)`` float32.
            Time-limit truncation is *not* termination (docs/design.md#truncation-is-not-termination).
        task: Task index of every sample, ``(B,)`` int64.
        history: Context window ``e_{i-H} .. e_{i-1}`` for ``(obs, action)``, ``(B, H, C)`` float32.
        next_history: Context window ``e_{i-H+1} .. e_i`` for ``next_obs``, ``(B, H, C)`` float32.
    """

    obs: torch.Tensor
    action: torch.Tensor
    reward: torch.Tensor
    next_obs: torch.Tensor
    terminated: torch.Tensor
    task: torch.Tensor
    history: torch.Tensor
    next_history: torch.Tensor


def _positive_int(name: str, value: Any) -> int:
    try:
        value = operator.index(value)
    except TypeError as err:
        raise ValueError(f"{name} must be a positive integer, got {value!r}") from err
    if value < 1:
        raise ValueError(f"{name} must be a positive integer (>= 1), got {value}")
    return value


class EpisodeReplay:
    """Multi-task replay buffer storing whole episodes, one ring buffer per task.

    Storage is preallocated on CPU in a flat layout, slot ``task * capacity_per_task + position``;
    per slot it holds the context entry ``e = (a, r, o)`` (``C`` float32), ``next_obs`` (``O``
    float32), ``terminated`` (bool) and the step-in-episode (int32). Each task has its own ring
    (``ptr``, ``size``): when full, the oldest transitions of that task are overwritten.

    A window entry ``k`` steps back from position ``i`` is real data iff ``k <= step(i)`` (same
    episode) and ``k <= (i - oldest) mod capacity`` (not overwritten by a newer episode after the
    ring wrapped; ``oldest = ptr`` when the ring is full, else 0). Otherwise it is zero, or, with a
    ``history_padding`` other than ``zeros``, the start entry ``e_-1`` for ``k = step(i) + 1`` when
    the episode's first transition is still stored (one more ``(A,)`` row per slot is then kept).

    Args:
        num_tasks: Number of tasks (rings).
        capacity_per_task: Transitions kept per task.
        obs_dim: Observation size ``O``.
        action_dim: Action size ``A``.
        history_length: Context window length ``H`` (>= 1).
        history_padding: What windows hold before the episode start: ``zeros`` (default), ``authors``
            or ``start_entry`` (module docstring).

    Raises:
        ValueError: If any argument is not a positive integer, or on an unknown ``history_padding``.
    """

    def __init__(
        self,
        num_tasks: int,
        capacity_per_task: int,
        obs_dim: int,
        action_dim: int,
        history_length: int,
        history_padding: HistoryPadding = "zeros",
    ) -> None:
        self._history_padding = check_history_padding(history_padding)
        self._set_dims(num_tasks, capacity_per_task, obs_dim, action_dim, history_length)
        self._allocate()

    # ------------------------------------------------------------------ construction helpers

    def _set_dims(
        self, num_tasks: int, capacity_per_task: int, obs_dim: int, action_dim: int, history_length: int
    ) -> None:
        self._num_tasks = _positive_int("num_tasks", num_tasks)
        self._capacity = _positive_int("capacity_per_task", capacity_per_task)
        self._obs_dim = _positive_int("obs_dim", obs_dim)
        self._action_dim = _positive_int("action_dim", action_dim)
        self._history_length = _positive_int("history_length", history_length)
        self._context_dim = self._action_dim + 1 + self._obs_dim
        n = self._num_tasks * self._capacity
        # Index of an extra, always-zero entry row: invalid window slots are redirected here so the
        # zero padding costs no masking multiply, just one index_select (docs/design.md#replay-stores-episodes).
        self._zero_slot = n
        # Offsets k = H, H-1, ..., 0: oldest first, the transition itself last.
        self._offsets = torch.arange(self._history_length, -1, -1, dtype=torch.int64)

    def _allocate(self) -> None:
        n = self._num_tasks * self._capacity
        self._entry = torch.zeros(n + 1, self._context_dim, dtype=torch.float32)
        self._next_obs = torch.zeros(n, self._obs_dim, dtype=torch.float32)
        self._terminated = torch.zeros(n, dtype=torch.bool)
        self._step = torch.zeros(n, dtype=torch.int32)
        self._ptr = torch.zeros(self._num_tasks, dtype=torch.int64)
        self._size = torch.zeros(self._num_tasks, dtype=torch.int64)
        # Random action of each episode's start entry, at its first slot (only where windows hold that entry).
        self._start_action = torch.zeros(n if self.has_start_entry else 0, self._action_dim, dtype=torch.float32)

    # ------------------------------------------------------------------ properties

    @property
    def history_padding(self) -> str:
        """What windows hold before the episode start: ``zeros``, ``authors`` or ``start_entry``."""
        return self._history_padding

    @property
    def has_start_entry(self) -> bool:
        """Whether windows hold the start entry ``e_-1`` (every ``history_padding`` but ``zeros``)."""
        return self._history_padding != "zeros"

    @property
    def num_tasks(self) -> int:
        """Number of tasks (rings)."""
        return self._num_tasks

    @property
    def capacity_per_task(self) -> int:
        """Transitions kept per task."""
        return self._capacity

    @property
    def obs_dim(self) -> int:
        """Observation size ``O``."""
        return self._obs_dim

    @property
    def action_dim(self) -> int:
        """Action size ``A``."""
        return self._action_dim

    @property
    def history_length(self) -> int:
        """Context window length ``H``."""
        return self._history_length

    @property
    def context_dim(self) -> int:
        """Size ``C = A + 1 + O`` of one context entry ``(a, r, o)``."""
        return self._context_dim

    @property
    def sizes(self) -> torch.Tensor:
        """Stored transitions per task, ``(num_tasks,)`` int64 (a copy)."""
        return self._size.clone()

    @property
    def bytes_per_transition(self) -> int:
        """Storage bytes per slot (entry, next_obs, terminated, step); independent of ``H``."""
        return (
            self._context_dim * self._entry.element_size()
            + self._obs_dim * self._next_obs.element_size()
            + self._terminated.element_size()
            + self._step.element_size()
            + (self._action_dim * self._start_action.element_size() if self.has_start_entry else 0)
        )

    @property
    def nbytes(self) -> int:
        """Bytes of storage actually allocated (preallocated, so independent of the fill level)."""
        tensors = (self._entry, self._next_obs, self._terminated, self._step, self._ptr, self._size, self._start_action)
        return sum(t.numel() * t.element_size() for t in tensors)

    def num_transitions(self, task: int | None = None) -> int:
        """Number of stored transitions, of one task or (``task=None``) of all tasks.

        Args:
            task: Task index, or ``None`` for the total.

        Returns:
            The count.

        Raises:
            ValueError: If ``task`` is out of range.
        """
        if task is None:
            return int(self._size.sum())
        return int(self._size[self._check_task(task)])

    def __len__(self) -> int:
        return self.num_transitions()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_tasks={self._num_tasks}, capacity_per_task={self._capacity}, "
            f"obs_dim={self._obs_dim}, action_dim={self._action_dim}, history_length={self._history_length}, "
            f"history_padding={self._history_padding!r}, stored={len(self)})"
        )

    # ------------------------------------------------------------------ writing

    def _check_task(self, task: Any) -> int:
        try:
            index = operator.index(task)
        except TypeError as err:
            raise ValueError(f"task must be an integer index, got {task!r}") from err
        if not 0 <= index < self._num_tasks:
            raise ValueError(f"task index {index} out of range [0, {self._num_tasks})")
        return index

    @staticmethod
    def _as_tensor(name: str, value: ArrayLike, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
        tensor = torch.as_tensor(value).detach().to(device="cpu", dtype=dtype)
        if tuple(tensor.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(tensor.shape)}")
        return tensor

    def add_episode(
        self,
        task: int,
        obs: ArrayLike,
        actions: ArrayLike,
        rewards: ArrayLike,
        next_obs: ArrayLike,
        terminated: ArrayLike,
        start_action: ArrayLike | None = None,
    ) -> None:
        """Append one whole episode of ``T`` transitions to a task's ring.

        The episode may have ended by termination or by the time limit; only ``terminated`` is
        stored, so truncated episodes are bootstrapped through (docs/design.md#truncation-is-not-termination).
        Steps-in-episode ``0 .. T-1`` are recorded so history windows never cross episode boundaries.

        Args:
            task: Task index.
            obs: Pre-step observations, ``(T, O)``.
            actions: Actions, ``(T, A)``.
            rewards: Rewards, ``(T,)``.
            next_obs: Post-step observations, ``(T, O)``.
            terminated: True termination flags (not truncation), ``(T,)``; nonzero means terminated.
            start_action: The random action ``(A,)`` of the episode's start entry ``e_-1``: required exactly
                when the windows hold that entry (:attr:`has_start_entry`).

        Raises:
            ValueError: On a bad task index, inconsistent shapes, ``T == 0``, ``T > capacity_per_task``, or a
                ``start_action`` missing where needed or given where the windows have no start entry.
        """
        task = self._check_task(task)
        obs_t = torch.as_tensor(obs)
        if obs_t.ndim != 2:
            raise ValueError(f"obs must have shape (T, {self._obs_dim}), got {tuple(obs_t.shape)}")
        t_len = obs_t.shape[0]
        if t_len == 0:
            raise ValueError("cannot add an empty episode (T == 0)")
        if t_len > self._capacity:
            raise ValueError(f"episode of {t_len} transitions does not fit in capacity_per_task={self._capacity}")
        obs_t = self._as_tensor("obs", obs_t, torch.float32, (t_len, self._obs_dim))
        act_t = self._as_tensor("actions", actions, torch.float32, (t_len, self._action_dim))
        rew_t = self._as_tensor("rewards", rewards, torch.float32, (t_len,))
        nobs_t = self._as_tensor("next_obs", next_obs, torch.float32, (t_len, self._obs_dim))
        term_t = self._as_tensor("terminated", terminated, torch.bool, (t_len,))
        if (start_action is None) == self.has_start_entry:
            need = "needs" if self.has_start_entry else "takes no"
            raise ValueError(f"a replay with history_padding={self._history_padding!r} {need} start_action")
        start_t = None
        if start_action is not None:
            start_t = self._as_tensor("start_action", start_action, torch.float32, (self._action_dim,))

        ptr = int(self._ptr[task])
        positions = torch.remainder(torch.arange(ptr, ptr + t_len, dtype=torch.int64), self._capacity)
        slots = task * self._capacity + positions
        # Entry layout (a, r, o): the authors' GRU input order (docs/design.md#replay-stores-episodes).
        self._entry[slots] = torch.cat((act_t, rew_t.unsqueeze(1), obs_t), dim=1)
        self._next_obs[slots] = nobs_t
        self._terminated[slots] = term_t
        self._step[slots] = torch.arange(t_len, dtype=torch.int32)
        if start_t is not None:
            self._start_action[slots[0]] = start_t
        self._ptr[task] = (ptr + t_len) % self._capacity
        self._size[task] = min(int(self._size[task]) + t_len, self._capacity)

    # ------------------------------------------------------------------ reading

    def gather(self, task: torch.Tensor, position: torch.Tensor) -> ReplayBatch:
        """Build the batch for explicit ``(task, position-in-task-ring)`` pairs.

        Args:
            task: Task indices, ``(B,)`` integer tensor.
            position: Ring positions within each task, ``(B,)`` integer tensor, each ``< sizes[task]``.

        Returns:
            The :class:`ReplayBatch` for those transitions.

        Raises:
            ValueError: On mismatched shapes, non-integer dtypes or indices that hold no data.
        """
        task = torch.as_tensor(task)
        position = torch.as_tensor(position)
        if task.ndim != 1 or position.shape != task.shape:
            raise ValueError(
                f"task and position must be 1-D of equal length, got {tuple(task.shape)} and {tuple(position.shape)}"
            )
        if any(t.is_floating_point() or t.is_complex() or t.dtype == torch.bool for t in (task, position)):
            raise ValueError("task and position must be integer tensors")
        task = task.to(device="cpu", dtype=torch.int64)
        position = position.to(device="cpu", dtype=torch.int64)
        if task.numel() > 0:
            if int(task.min()) < 0 or int(task.max()) >= self._num_tasks:
                raise ValueError(f"task indices must lie in [0, {self._num_tasks})")
            if bool((position < 0).any()) or bool((position >= self._size[task]).any()):
                raise ValueError("position out of range: every position must be < the number stored for its task")
        return self._gather(task, position)

    def _gather(self, task: torch.Tensor, position: torch.Tensor) -> ReplayBatch:
        # Hot path (once per gradient update): fully vectorised, one index_select for the windows.
        cap = self._capacity
        base = task * cap
        slot = base + position
        size = self._size[task]
        oldest = torch.where(size == cap, self._ptr[task], torch.zeros_like(size))
        # How far back a window may reach: not before the episode start, and (after the ring has
        # wrapped) not into slots that a newer episode overwrote.
        step = self._step[slot].to(torch.int64)
        reach = torch.minimum(step, torch.remainder(position - oldest, cap))
        window_pos = torch.remainder(position.unsqueeze(1) - self._offsets, cap)
        window_slot = torch.where(
            self._offsets <= reach.unsqueeze(1),
            base.unsqueeze(1) + window_pos,
            torch.full_like(window_pos, self._zero_slot),
        )
        if self.has_start_entry:
            return self._gather_with_start_entry(task, slot, base + torch.remainder(position - step, cap), step,
                                                 reach, window_slot)
        window = self._entry.index_select(0, window_slot.reshape(-1))
        window = window.view(task.shape[0], self._history_length + 1, self._context_dim)
        return self._batch(task, slot, window, window[:, 1:])

    def _gather_with_start_entry(
        self, task: torch.Tensor, slot: torch.Tensor, first: torch.Tensor, step: torch.Tensor, reach: torch.Tensor,
        window_slot: torch.Tensor,
    ) -> ReplayBatch:
        """The gather for windows that hold ``e_-1 = (a_rand, 0, o_0)`` right before ``e_0`` (``first``: its slot)."""
        # e_-1 lies step + 1 entries back, if the episode's first transition is still stored (reach == step). Its
        # observation is e_0's: gather e_0 there, then put in the episode's random action and reward 0.
        start = (self._offsets == (step + 1).unsqueeze(1)) & (reach == step).unsqueeze(1)
        window_slot = torch.where(start, first.unsqueeze(1), window_slot)
        window = self._entry.index_select(0, window_slot.reshape(-1))
        window = window.view(task.shape[0], self._history_length + 1, self._context_dim)
        rows, cols = torch.nonzero(start, as_tuple=True)
        a = self._action_dim
        window[rows, cols, :a] = self._start_action.index_select(0, first[rows])
        window[rows, cols, a] = 0.0
        next_history = window[:, 1:]
        if self._history_padding == "authors":
            # The authors' next-history starts from zeros only: no e_-1 (see the module docstring).
            next_history = next_history.clone()
            inside = cols > 0
            next_history[rows[inside], cols[inside] - 1] = 0.0
        return self._batch(task, slot, window, next_history)

    def _batch(
        self, task: torch.Tensor, slot: torch.Tensor, window: torch.Tensor, next_history: torch.Tensor
    ) -> ReplayBatch:
        current = window[:, -1]
        a = self._action_dim
        return ReplayBatch(
            obs=current[:, a + 1 :],
            action=current[:, :a],
            reward=current[:, a],
            next_obs=self._next_obs.index_select(0, slot),
            terminated=self._terminated.index_select(0, slot).to(torch.float32),
            task=task,
            history=window[:, :-1],
            next_history=next_history,
        )

    def sample(
        self,
        batch_size: int,
        generator: torch.Generator,
        tasks: Sequence[int] | torch.Tensor | None = None,
        task_weighting: str = "task",
    ) -> ReplayBatch:
        """Sample a multi-task minibatch uniformly, with replacement.

        Args:
            batch_size: Number of transitions ``B``.
            generator: CPU generator; the only source of randomness, so equal seeds give equal batches.
            tasks: Tasks allowed in the batch (duplicates ignored); ``None`` means all tasks. Allowed
                tasks holding no data are skipped.
            task_weighting: ``"task"`` (default; the paper's Eq. 15, the average loss over tasks): pick
                a task uniformly among the allowed non-empty tasks, then a transition uniformly within
                it. ``"transition"`` (the authors' code): uniform over all stored transitions of the
                allowed tasks, so tasks with more data are drawn more often.

        Returns:
            The sampled :class:`ReplayBatch`.

        Raises:
            ValueError: On a bad ``batch_size``, ``task_weighting`` or task index, or if no allowed task
                holds data.
        """
        batch_size = _positive_int("batch_size", batch_size)
        if task_weighting not in ("task", "transition"):
            raise ValueError(f"task_weighting must be 'task' or 'transition', got {task_weighting!r}")
        if tasks is None:
            allowed = torch.nonzero(self._size > 0).squeeze(1)
        else:
            allowed = torch.as_tensor(tasks)
            if allowed.is_floating_point() or allowed.dtype == torch.bool or allowed.ndim > 1:
                raise ValueError("tasks must be a 1-D sequence of integer task indices")
            allowed = torch.unique(allowed.reshape(-1).to(device="cpu", dtype=torch.int64))
            if allowed.numel() > 0 and (int(allowed[0]) < 0 or int(allowed[-1]) >= self._num_tasks):
                raise ValueError(f"tasks must lie in [0, {self._num_tasks}), got {allowed.tolist()}")
            allowed = allowed[self._size[allowed] > 0]
        if allowed.numel() == 0:
            raise ValueError("cannot sample: none of the allowed tasks holds any transitions")
        sizes = self._size[allowed]
        if task_weighting == "task":
            choice = torch.randint(allowed.numel(), (batch_size,), generator=generator)
            size = sizes[choice]
            # float64 uniform keeps floor(u * size) exact and < size for any realistic capacity.
            u = torch.rand(batch_size, generator=generator, dtype=torch.float64)
            position = torch.minimum((u * size).to(torch.int64), size - 1)
        else:
            cumulative = torch.cumsum(sizes, 0)
            flat = torch.randint(int(cumulative[-1]), (batch_size,), generator=generator)
            choice = torch.searchsorted(cumulative, flat, right=True)
            position = flat - (cumulative[choice] - sizes[choice])
        return self._gather(allowed[choice], position)

    def sample_per_task(
        self, per_task: int, generator: torch.Generator, recent: int | None = None
    ) -> ReplayBatch:
        """``per_task`` transitions from every task holding data, uniformly with replacement, task after task.

        The replay rows of the propensity classifier (adaptation, step 2).

        Args:
            per_task: Transitions drawn from each task.
            generator: CPU generator; the only source of randomness.
            recent: Draw only from each task's latest ``recent`` transitions (the authors' per-task snapshot
                buffer); ``None`` draws from all of them.

        Returns:
            The :class:`ReplayBatch`, ``per_task`` rows per non-empty task in task order.

        Raises:
            ValueError: On a bad ``per_task`` or ``recent``, or if no task holds data.
        """
        per_task = _positive_int("per_task", per_task)
        tasks = torch.nonzero(self._size > 0).squeeze(1)
        if tasks.numel() == 0:
            raise ValueError("cannot sample: no task holds any transitions")
        task = tasks.repeat_interleave(per_task)
        size = self._size[task]
        u = torch.rand(len(task), generator=generator, dtype=torch.float64)
        if recent is None:
            position = torch.minimum((u * size).long(), size - 1)
        else:
            span = torch.clamp(size, max=_positive_int("recent", recent))
            back = torch.minimum((u * span).long(), span - 1)
            # The newest transition of a task sits just before its write pointer.
            position = torch.remainder(self._ptr[task] - 1 - back, self._capacity)
        return self._gather(task, position)

    # ------------------------------------------------------------------ persistence

    def state_dict(self) -> dict[str, Any]:
        """Return the buffer's state: tensors and Python ints only (loads with ``weights_only=True``).

        Only the filled slots are kept (each task's ring is filled from its start), so a side file is as large as
        the data, not as the preallocated capacity.

        Returns:
            A dict with the dimensions, the filled rows of the storage and the per-task ``ptr`` / ``size``
            (and, where windows hold the start entry, ``start_action`` rows and the ``history_padding``).
        """
        filled = self._filled_slots()
        state: dict[str, Any] = {
            "version": _STATE_VERSION,
            "num_tasks": self._num_tasks,
            "capacity_per_task": self._capacity,
            "obs_dim": self._obs_dim,
            "action_dim": self._action_dim,
            "history_length": self._history_length,
            "entry": self._entry.index_select(0, filled),
            "next_obs": self._next_obs.index_select(0, filled),
            "terminated": self._terminated.index_select(0, filled),
            "step": self._step.index_select(0, filled),
            "ptr": self._ptr.clone(),
            "size": self._size.clone(),
        }
        if self.has_start_entry:
            state["start_action"] = self._start_action.index_select(0, filled)
            state["history_padding"] = self._history_padding
        return state

    def _filled_slots(self, size: torch.Tensor | None = None) -> torch.Tensor:
        """Flat indices of the filled slots: ``[k * capacity, k * capacity + size_k)`` for every task ``k``."""
        size = self._size if size is None else size
        starts = torch.arange(self._num_tasks, dtype=torch.int64) * self._capacity
        offsets = torch.arange(int(size.sum())) - torch.repeat_interleave(torch.cumsum(size, 0) - size, size)
        return torch.repeat_interleave(starts, size) + offsets

    def _validated_tensors(self, state: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Check a state dict against this buffer's dims; return its tensors (CPU, right dtype)."""
        # One exception type (ValueError) for every way a state can fail to fit, so a resuming caller
        # catches a single error whether the file is foreign, stale or for other dimensions.
        keys = set(state) if isinstance(state, dict) else set()
        if ("start_action" in keys) != self.has_start_entry:
            saved = "with" if "start_action" in keys else "without"
            raise ValueError(
                f"replay state was saved {saved} the episodes' start entries, but this buffer has history_padding="
                f"{self._history_padding!r}: use the data.history_padding of the run that wrote it"
            )
        expected = _STATE_KEYS | (_START_KEYS if self.has_start_entry else frozenset())
        missing, unexpected = expected - keys, keys - expected
        if missing or unexpected:
            raise ValueError(
                f"replay state dict keys mismatch: missing {sorted(missing)}, unexpected {sorted(unexpected)}"
            )
        if state["version"] != _STATE_VERSION:
            raise ValueError(f"unsupported replay state version {state['version']!r} (expected {_STATE_VERSION})")
        dims = {
            "num_tasks": self._num_tasks,
            "capacity_per_task": self._capacity,
            "obs_dim": self._obs_dim,
            "action_dim": self._action_dim,
            "history_length": self._history_length,
        }
        wrong = {k: (state[k], v) for k, v in dims.items() if state[k] != v}
        if wrong:
            detail = ", ".join(f"{k}: state has {got}, buffer has {want}" for k, (got, want) in wrong.items())
            raise ValueError(f"replay state does not match this buffer ({detail})")
        size = state["size"]
        if not (isinstance(size, torch.Tensor) and size.shape == (self._num_tasks,) and size.dtype == torch.int64):
            raise ValueError(f"replay state 'size' must be an int64 tensor of shape ({self._num_tasks},)")
        n = int(size.clamp(0, self._capacity).sum())
        specs = {
            "entry": ((n, self._context_dim), torch.float32),
            "next_obs": ((n, self._obs_dim), torch.float32),
            "terminated": ((n,), torch.bool),
            "step": ((n,), torch.int32),
            "ptr": ((self._num_tasks,), torch.int64),
            "size": ((self._num_tasks,), torch.int64),
        }
        if self.has_start_entry:
            specs["start_action"] = ((n, self._action_dim), torch.float32)
        out: dict[str, torch.Tensor] = {}
        for key, (shape, dtype) in specs.items():
            value = state[key]
            got = (tuple(value.shape), value.dtype) if isinstance(value, torch.Tensor) else type(value).__name__
            if got != (shape, dtype):
                raise ValueError(f"replay state '{key}' is {got}, expected a tensor of shape {shape} and dtype {dtype}")
            out[key] = value.to("cpu")
        size, ptr = out["size"], out["ptr"]
        if bool((size < 0).any() | (size > self._capacity).any() | (ptr < 0).any() | (ptr >= self._capacity).any()):
            raise ValueError("replay state has ptr/size outside [0, capacity_per_task]")
        # A ring that has not wrapped yet has its write pointer exactly at its size.
        if bool(((size < self._capacity) & (ptr != size)).any()):
            raise ValueError("replay state is inconsistent: ptr != size for a ring that is not full")
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load a state produced by :meth:`state_dict`, copying into this buffer's storage.

        Args:
            state: The state dict.

        Raises:
            ValueError: If keys, version, dimensions, shapes or dtypes do not match this buffer.
        """
        tensors = self._validated_tensors(state)
        self._ptr.copy_(tensors.pop("ptr"))
        self._size.copy_(tensors.pop("size"))
        filled = self._filled_slots()
        for key, value in tensors.items():
            storage = getattr(self, f"_{key}")
            storage.zero_()
            storage.index_copy_(0, filled, value)


# Storage rows of a state dict: task after task, each task's rows being the first ``size[k]`` slots of its ring.
_ROW_KEYS = ("entry", "next_obs", "terminated", "step")
_DIM_KEYS = ("version", "capacity_per_task", "obs_dim", "action_dim", "history_length")


def join_task_states(parts: Sequence[tuple[dict[str, Any], Sequence[int]]], tasks: Sequence[int]) -> dict[str, Any]:
    """One replay state holding ``tasks`` (global ids, in that order), taken from the states of several buffers.

    How the shards of a multi-process run are joined for one reader, and a whole buffer split among several.

    Args:
        parts: ``(state dict, global id of each of its tasks)`` of every buffer read.
        tasks: The global ids wanted.

    Returns:
        An :meth:`EpisodeReplay.state_dict` of a buffer of ``len(tasks)`` tasks.

    Raises:
        ValueError: If a state has another layout version, or no part holds a wanted task.
    """
    template = parts[0][0]
    # Buffers whose windows hold the episodes' start entries have one more row array, and their padding mode.
    row_keys = (*_ROW_KEYS, "start_action") if "start_action" in template else _ROW_KEYS
    per_task: dict[int, dict[str, torch.Tensor]] = {}
    for state, ids in parts:
        if state.get("version") != _STATE_VERSION:
            version = state.get("version")
            raise ValueError(f"cannot re-split replay state version {version!r} (expected {_STATE_VERSION})")
        offsets = torch.cumsum(state["size"], 0) - state["size"]
        for k, task in enumerate(ids):
            start, size = int(offsets[k]), int(state["size"][k])
            per_task[int(task)] = {key: state[key][start : start + size] for key in row_keys}
            per_task[int(task)].update(ptr=state["ptr"][k], size=state["size"][k])
    missing = [t for t in tasks if t not in per_task]
    if missing:
        raise ValueError(f"the replay side files of this checkpoint hold no buffer for training tasks {missing}")
    joined: dict[str, Any] = {key: template[key] for key in (*_DIM_KEYS, "history_padding") if key in template}
    joined["num_tasks"] = len(tasks)
    for key in row_keys:
        joined[key] = torch.cat([per_task[t][key] for t in tasks])
    for key in ("ptr", "size"):
        joined[key] = torch.stack([per_task[t][key] for t in tasks])
    return joined
