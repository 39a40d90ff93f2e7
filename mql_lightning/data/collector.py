"""Rollouts of task-family envs with a context policy in the loop (Alg. 1, lines 4-6)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium
import numpy as np
import torch

from mql_lightning.data.replay import HistoryPadding, check_history_padding

Policy = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``(obs (N, O), history (N, H, A+1+O)) -> actions (N, A)`` in [-1, 1]."""


@dataclass
class Episode:
    """One finished episode on one task, ready for :meth:`EpisodeReplay.add_episode`.

    ``histories`` holds the context window the policy was given at each step (only when asked for);
    ``start_action`` the random action of the start entry ``e_-1`` (only where windows hold that entry). ``success``
    is whether ``info["success"]`` was true at any step (Meta-World's success criterion), ``None`` when the env
    reports no success flag.
    """

    task: int
    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_obs: np.ndarray
    terminated: np.ndarray
    histories: np.ndarray | None = None
    start_action: np.ndarray | None = None
    success: bool | None = None

    @property
    def length(self) -> int:
        """Number of transitions."""
        return len(self.rewards)

    @property
    def ret(self) -> float:
        """Undiscounted return."""
        return float(self.rewards.sum())


class Collector:
    """Steps one or more envs in lockstep, one episode each, keeping every episode's context window.

    The window given to the policy at step t is the H entries ``(a_j, r_j, o_j)`` for ``j = t-H .. t-1``, oldest
    first, and before the episode start what ``history_padding`` says (zeros; or, for ``authors`` and
    ``start_entry``, the start entry ``e_-1 = (a_rand, 0, o_0)`` right before ``e_0``, its random action drawn from
    ``N(0, start_action_std)`` and clipped, as the authors' runner does): exactly what :class:`EpisodeReplay` with
    the same ``history_padding`` gathers as that transition's history (docs/design.md#replay-stores-episodes). With
    ``growing_window`` (the authors' evaluation) the window is not padded at all: at step t it holds the last
    ``min(t + 1, H)`` entries of ``e_-1, e_0, .., e_{t-1}``. All randomness (env reset seeds, random actions,
    exploration noise) comes from the generator passed in, so a rollout is reproducible and never touches global
    RNGs; the default windows draw nothing more than before these options existed.

    Args:
        env_fn: Makes one task-family env (e.g. ``lambda: make_env("mql/PointRobot-v0")``).
        obs_dim: Observation width.
        action_dim: Action width.
        history_length: Context window length H.
        history_padding: ``zeros`` (default), ``authors`` or ``start_entry`` (the latter two: windows hold
            ``e_-1``; see :mod:`mql_lightning.data.replay`).
        start_action_std: Std of the random action of ``e_-1`` (the authors use their exploration noise).
        growing_window: Windows of 1 to H entries, starting with ``e_-1``, instead of H zero-padded entries.
    """

    def __init__(
        self,
        env_fn: Callable[[], gymnasium.Env],
        obs_dim: int,
        action_dim: int,
        history_length: int,
        history_padding: HistoryPadding = "zeros",
        start_action_std: float = 0.0,
        growing_window: bool = False,
    ) -> None:
        if start_action_std < 0:
            raise ValueError(f"start_action_std must be >= 0, got {start_action_std}")
        self.env_fn = env_fn
        self.obs_dim, self.action_dim, self.history_length = obs_dim, action_dim, history_length
        self.history_padding = check_history_padding(history_padding)
        self.start_action_std, self.growing_window = float(start_action_std), bool(growing_window)
        self._envs: list[gymnasium.Env] = []

    @property
    def has_start_entry(self) -> bool:
        """Whether windows hold the start entry ``e_-1`` (growing windows always begin with it)."""
        return self.history_padding != "zeros" or self.growing_window

    def _env(self, slot: int) -> gymnasium.Env:
        while len(self._envs) <= slot:
            self._envs.append(self.env_fn())
        return self._envs[slot]

    def close(self) -> None:
        """Close every env this collector made."""
        for env in self._envs:
            env.close()
        self._envs.clear()

    def rollout(
        self,
        tasks: Sequence[dict[str, Any]],
        task_ids: Sequence[int],
        rng: np.random.Generator,
        policy: Policy | None = None,
        noise_std: float = 0.0,
        record_history: bool = False,
        max_steps: int | None = None,
    ) -> list[Episode]:
        """Run one episode per task, all in lockstep, with one batched policy call per step.

        Args:
            tasks: The task dict of each episode.
            task_ids: The replay index of each task (stored on the episodes).
            rng: Source of env reset seeds, random actions and exploration noise.
            policy: The acting policy; ``None`` acts uniformly at random (warm-up).
            noise_std: Std of the Gaussian exploration noise added to the policy's action (then clipped).
            record_history: Keep the window given to the policy at every step on the episodes (fixed-length
                windows only).
            max_steps: Cut every episode after this many steps, as a time limit would (truncated, not
                terminated); the authors cut warm-up episodes at 50.

        Returns:
            The finished episodes, in the order of ``tasks``.

        Raises:
            ValueError: If ``record_history`` is asked for with growing windows, or ``max_steps < 1``.
        """
        if record_history and self.growing_window:
            raise ValueError("record_history needs fixed-length windows (growing_window=False)")
        if max_steps is not None and max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 (or None), got {max_steps}")
        n, h, a_dim = len(tasks), self.history_length, self.action_dim
        envs = [self._env(i) for i in range(n)]
        seeds = rng.integers(0, 2**31 - 1, size=n)
        trace = _Trace(n, h, a_dim, self.obs_dim, _episode_limit_hint(envs[0]) if n else 1, self.has_start_entry)
        if self.has_start_entry:
            # The authors' start entry: a random action N(0, sigma), clipped into the action box, with reward 0.
            start = rng.normal(0.0, self.start_action_std, size=(n, a_dim)).clip(-1.0, 1.0)
            trace.entries[:, h - 1, :a_dim] = start
        for i, (env, task) in enumerate(zip(envs, tasks, strict=True)):
            env.unwrapped.set_task(task)
            trace.entries[i, h, a_dim + 1 :] = env.reset(seed=int(seeds[i]))[0]
            if self.has_start_entry:
                trace.entries[i, h - 1, a_dim + 1 :] = trace.entries[i, h, a_dim + 1 :]  # e_-1 holds o_0
        running = list(range(n))  # slots of the episodes still running, in order
        t = 0
        with torch.no_grad():  # one grad-mode switch per rollout instead of one per step
            while running:
                # Basic slicing while every env is running (the common case) is cheaper than fancy indexing.
                rows: slice | list[int] = slice(None) if len(running) == n else running
                trace.reserve(t)
                entries, row = trace.entries, h + t
                # Growing windows start at e_-1 (row h - 1) until they are H long.
                first = max(h - 1, t) if self.growing_window else t
                obs, window = entries[rows, row, a_dim + 1 :], entries[rows, first:row]
                actions = self._actions(obs, window, rng, policy, noise_std)
                entries[rows, row, :a_dim] = actions
                finished = False
                for i, action in zip(running, actions, strict=True):
                    o2, r, terminated, truncated, info = envs[i].step(action)
                    trace.record_success(i, info.get("success"))
                    entries[i, row, a_dim] = r
                    entries[i, row + 1, a_dim + 1 :] = o2  # o_{t+1}: next_obs of step t and obs of step t + 1
                    if terminated or truncated or t + 1 == max_steps:
                        trace.lengths[i], trace.terminated[i, t], finished = t + 1, terminated, True
                if finished:
                    running = [i for i in running if trace.lengths[i] == 0]
                t += 1
        return [trace.episode(i, task_ids[i], record_history) for i in range(n)]

    def _actions(
        self,
        obs: np.ndarray,
        history: np.ndarray,
        rng: np.random.Generator,
        policy: Policy | None,
        noise_std: float,
    ) -> np.ndarray:
        if policy is None:
            return rng.uniform(-1.0, 1.0, size=(len(obs), self.action_dim)).astype(np.float32)
        # Always copies (contiguous ones): the policy must not see, or keep, views into the live trace.
        actions = policy(torch.from_numpy(obs.copy()), torch.from_numpy(history.copy())).float().cpu().numpy()
        if noise_std > 0:
            # actions + noise_std * N(0, 1) in float32, with the same draws and roundings, in place on the noise.
            noise = rng.standard_normal(actions.shape).astype(np.float32)
            noise *= noise_std
            actions = np.add(actions, noise, out=noise)
        # Clip into a fresh array (never in place: without noise, ``actions`` may share memory with a tensor the policy
        # keeps); maximum/minimum give np.clip's results at half its call overhead.
        clipped = np.maximum(actions, -1.0)
        return np.minimum(clipped, 1.0, out=clipped)


def _episode_limit_hint(env: gymnasium.Env) -> int:
    """Steps to preallocate per episode: the registered time limit if there is one (capped), else a guess."""
    limit = getattr(env.spec, "max_episode_steps", None) if env.spec is not None else None
    return min(int(limit), 1000) if limit else 1000


class _Trace:
    """The lockstep episodes of one rollout, written in place while they run.

    ``entries[i, H + j]`` is the context entry ``e_j = (a_j, r_j, o_j)`` of episode ``i``, after ``H`` zero rows, so
    the policy's window at step t is the plain slice ``entries[i, t : t + H]`` (no per-step shifting or copying of
    windows), and the episode's observations, actions and rewards are read back from the same rows at the end.
    ``o_{t+1}`` is written into row ``H + t + 1`` as soon as it is observed: it is the next observation of step t and
    the observation of step t + 1, hence one spare row after the last step.

    The start entry ``e_-1``, where windows hold it, is row ``H - 1``: the last of the zero rows.

    Args:
        n: Number of lockstep episodes.
        history_length: Context window length H.
        action_dim: Action width A.
        obs_dim: Observation width O.
        capacity: Steps per episode to preallocate; :meth:`reserve` grows the trace past it.
        start_entry: Whether row ``H - 1`` holds ``e_-1`` (its action is then returned with the episode).
    """

    def __init__(
        self, n: int, history_length: int, action_dim: int, obs_dim: int, capacity: int, start_entry: bool = False
    ) -> None:
        self.h, self.a_dim, self.start_entry = history_length, action_dim, start_entry
        self.capacity = max(1, capacity)
        self.entries = np.zeros((n, history_length + self.capacity + 1, action_dim + 1 + obs_dim), dtype=np.float32)
        self.terminated = np.zeros((n, self.capacity), dtype=bool)
        self.lengths = np.zeros(n, dtype=np.int64)
        # Per episode: None until the env reports a success flag, then whether any step reported success.
        self.success: list[bool | None] = [None] * n

    def record_success(self, i: int, flag: Any) -> None:
        """Note one step's ``info["success"]`` (``None``: the env has no success flag) for episode ``i``."""
        if flag is not None:
            self.success[i] = bool(self.success[i]) or bool(flag)

    def reserve(self, t: int) -> None:
        """Make room for step ``t`` (rows ``H + t`` and ``H + t + 1``), doubling the capacity when it runs out."""
        if t < self.capacity:
            return
        grow = self.capacity
        self.entries = np.concatenate([self.entries, np.zeros_like(self.entries[:, :grow])], axis=1)
        self.terminated = np.concatenate([self.terminated, np.zeros_like(self.terminated)], axis=1)
        self.capacity += grow

    def episode(self, i: int, task: int, record_history: bool) -> Episode:
        """Copy episode ``i`` out of the trace (its arrays share no memory with the trace or each other)."""
        h, a, length = self.h, self.a_dim, int(self.lengths[i])
        rows = self.entries[i]
        steps = rows[h : h + length]
        histories = None
        if record_history:
            # Window t is rows t .. t + H - 1: a sliding view over the first H + T - 1 rows, copied once (always a
            # copy: for T == 1 the view counts as contiguous, and ascontiguousarray would hand out the read-only view).
            windows = np.lib.stride_tricks.sliding_window_view(rows[: h + length - 1], h, axis=0)
            histories = windows.transpose(0, 2, 1).copy()
        return Episode(
            task=task,
            obs=steps[:, a + 1 :].copy(),
            actions=steps[:, :a].copy(),
            rewards=steps[:, a].copy(),
            next_obs=rows[h + 1 : h + length + 1, a + 1 :].copy(),
            terminated=self.terminated[i, :length].copy(),
            histories=histories,
            start_action=rows[h - 1, :a].copy() if self.start_entry else None,
            success=self.success[i],
        )
