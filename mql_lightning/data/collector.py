"""Rollouts of task-family envs with a context policy in the loop (Alg. 1, lines 4-6)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium
import numpy as np
import torch

Policy = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``(obs (N, O), history (N, H, A+1+O)) -> actions (N, A)`` in [-1, 1]."""


@dataclass
class Episode:
    """One finished episode on one task, ready for :meth:`EpisodeReplay.add_episode`.

    ``histories`` holds the context window the policy was given at each step (only when asked for).
    """

    task: int
    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_obs: np.ndarray
    terminated: np.ndarray
    histories: np.ndarray | None = None

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
    first, zero before the episode start: exactly what :class:`EpisodeReplay` gathers for that transition
    (DESIGN decision 6). All randomness (env reset seeds, random actions, exploration noise) comes from the
    generator passed in, so a rollout is reproducible and never touches global RNGs.

    Args:
        env_fn: Makes one task-family env (e.g. ``lambda: make_env("mql/PointRobot-v0")``).
        obs_dim: Observation width.
        action_dim: Action width.
        history_length: Context window length H.
    """

    def __init__(
        self, env_fn: Callable[[], gymnasium.Env], obs_dim: int, action_dim: int, history_length: int
    ) -> None:
        self.env_fn = env_fn
        self.obs_dim, self.action_dim, self.history_length = obs_dim, action_dim, history_length
        self._envs: list[gymnasium.Env] = []

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
    ) -> list[Episode]:
        """Run one episode per task, all in lockstep, with one batched policy call per step.

        Args:
            tasks: The task dict of each episode.
            task_ids: The replay index of each task (stored on the episodes).
            rng: Source of env reset seeds, random actions and exploration noise.
            policy: The acting policy; ``None`` acts uniformly at random (warm-up).
            noise_std: Std of the Gaussian exploration noise added to the policy's action (then clipped).
            record_history: Keep the window given to the policy at every step on the episodes.

        Returns:
            The finished episodes, in the order of ``tasks``.
        """
        n, h, a_dim = len(tasks), self.history_length, self.action_dim
        envs = [self._env(i) for i in range(n)]
        seeds = rng.integers(0, 2**31 - 1, size=n)
        obs = np.empty((n, self.obs_dim), dtype=np.float32)
        for i, (env, task) in enumerate(zip(envs, tasks, strict=True)):
            env.unwrapped.set_task(task)
            obs[i] = env.reset(seed=int(seeds[i]))[0]
        history = np.zeros((n, h, a_dim + 1 + self.obs_dim), dtype=np.float32)
        steps: list[list[tuple[np.ndarray, ...]]] = [[] for _ in range(n)]
        active = np.ones(n, dtype=bool)
        while active.any():
            idx = np.flatnonzero(active)
            actions = self._actions(obs[idx], history[idx], rng, policy, noise_std)
            rewards = np.empty(len(idx), dtype=np.float32)
            next_obs = np.empty((len(idx), self.obs_dim), dtype=np.float32)
            for j, i in enumerate(idx):
                o2, r, terminated, truncated, _ = envs[i].step(actions[j])
                rewards[j], next_obs[j] = r, o2
                window = history[i].copy() if record_history else None
                steps[i].append((obs[i].copy(), actions[j], rewards[j], next_obs[j], terminated, window))
                active[i] = not (terminated or truncated)
            # Slide each window by one entry: (a_t, r_t, o_t) becomes the newest (DESIGN decision 6).
            history[idx, :-1] = history[idx, 1:]
            history[idx, -1] = np.concatenate([actions, rewards[:, None], obs[idx]], axis=1)
            obs[idx] = next_obs
        return [_to_episode(task_ids[i], steps[i], record_history) for i in range(n)]

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
        with torch.no_grad():
            actions = policy(torch.from_numpy(obs), torch.from_numpy(history)).float().cpu().numpy()
        if noise_std > 0:
            actions = actions + noise_std * rng.standard_normal(actions.shape).astype(np.float32)
        return np.clip(actions, -1.0, 1.0).astype(np.float32)


def _to_episode(task: int, steps: list[tuple[np.ndarray, ...]], record_history: bool) -> Episode:
    obs, actions, rewards, next_obs, terminated, windows = zip(*steps, strict=True)
    return Episode(
        task=task,
        obs=np.stack(obs),
        actions=np.stack(actions),
        rewards=np.asarray(rewards, dtype=np.float32),
        next_obs=np.stack(next_obs),
        terminated=np.asarray(terminated, dtype=bool),
        histories=np.stack(windows) if record_history else None,
    )
