"""PEARL's 2-D point-robot navigation families (PEARL ``rlkit/envs/point_robot.py``), in pure numpy.

Episodes are 20 steps long; the limit is a ``TimeLimit`` truncation added at registration, never a termination.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, ClassVar

import numpy as np
from gymnasium import spaces

from mql_lightning.envs.base import MetaEnv

__all__ = ["PointRobotEnv", "SparsePointRobotEnv"]


class PointRobotEnv(MetaEnv):
    """Point robot navigating to a goal in the plane, with dense reward (PEARL ``point-robot``).

    - Observation: the 2-D position (float32).
    - Action: a 2-D move in ``[-1, 1]``, clipped to that box, then scaled by 0.1 (PEARL's ``NormalizedBoxEnv`` over
      ``Box(-0.1, 0.1)``), so one step moves at most 0.1 along each axis.
    - Reward: ``-||position - goal||_2`` after the move. Never terminates.
    - Reset: position uniform in ``[-1, 1]^2`` from the env's ``np_random``.
    - Task: ``{"goal": [x, y]}``.

    Task regions:

    - ``"all"``: goals uniform in ``[-1, 1]^2`` (PEARL's distribution).
    - ``"ood_train"``: goals uniform in ``[-1, 1]^2`` minus the top-right quadrant ``(0, 1] x (0, 1]``.
    - ``"ood_test"``: goals uniform in the top-right quadrant ``(0, 1] x (0, 1]``.

    Args:
        render_mode: Must be ``None``; the family has no render modes.

    Raises:
        ValueError: If a render mode is requested.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}
    ood_regions = ("ood_train", "ood_test")
    #: PEARL's action range is +-0.1; the agent acts in [-1, 1] and the env rescales (docs/design.md#environments).
    action_scale: float = 0.1

    def __init__(self, render_mode: str | None = None) -> None:
        if render_mode is not None:
            raise ValueError(f"{type(self).__name__} has no render modes, got render_mode={render_mode!r}")
        self.render_mode = None
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        # Float64 internally so long rollouts do not accumulate float32 rounding; observations are cast on the way out.
        self._state = np.zeros(2, dtype=np.float64)
        # A fixed default task lets `gym.make(id)` be reset and stepped without `set_task` (check_env relies on it).
        self._task = self.sample_tasks(1, seed=0)[0]
        self._goal = np.asarray(self._task["goal"], dtype=np.float64)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode of the current task.

        Args:
            seed: Seeds the env's ``np_random`` (the start-state randomness), as in gymnasium.
            options: Unused.

        Returns:
            The first observation and an empty info dict.
        """
        super().reset(seed=seed)
        # The task is read here, so `set_task` in the middle of an episode only affects the next one.
        self._goal = np.asarray(self._task["goal"], dtype=np.float64)
        self._state = self._initial_state()
        return self._obs(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Move by ``0.1 * clip(action, -1, 1)`` and reward the negative distance to the goal.

        Args:
            action: A 2-D action; values outside ``[-1, 1]`` are clipped.

        Returns:
            ``(observation, reward, terminated, truncated, info)``; ``terminated`` and ``truncated`` are always
            False (the time limit is added by the registration's ``TimeLimit``); ``info["dense_reward"]`` holds
            the dense reward.
        """
        self._move(action)
        dense = -self._distance()
        return self._obs(), dense, False, False, {"dense_reward": dense}

    def render(self) -> None:
        """Nothing to render: the family has no render modes.

        Returns:
            None.
        """

    def _initial_state(self) -> np.ndarray:
        return self.np_random.uniform(-1.0, 1.0, size=2)

    def _move(self, action: np.ndarray) -> None:
        action = np.clip(np.asarray(action, dtype=np.float64).reshape(2), -1.0, 1.0)
        self._state = self._state + self.action_scale * action

    def _distance(self) -> float:
        return float(np.linalg.norm(self._state - self._goal))

    def _obs(self) -> np.ndarray:
        return self._state.astype(np.float32)

    def _sample_tasks(self, rng: np.random.Generator, n: int, region: str) -> list[dict[str, Any]]:
        if region == "all":
            goals = rng.uniform(-1.0, 1.0, size=(n, 2))
        elif region == "ood_test":
            # 1 - U[0, 1) lies in (0, 1]: the open lower bound keeps the quadrant disjoint from "ood_train".
            goals = 1.0 - rng.uniform(0.0, 1.0, size=(n, 2))
        else:
            goals = _uniform_outside_top_right(rng, n)
        return [{"goal": goal} for goal in goals]

    def _validate_task(self, task: dict[str, Any]) -> dict[str, Any]:
        self._check_keys(task, ("goal",))
        goal = task["goal"]
        if (
            not isinstance(goal, list)
            or len(goal) != 2
            or not all(isinstance(x, numbers.Real) and not isinstance(x, bool) for x in goal)
            or not all(math.isfinite(x) for x in goal)
        ):
            raise ValueError(f"{type(self).__name__} task 'goal' must be 2 finite numbers [x, y], got {goal!r}")
        return {"goal": [float(x) for x in goal]}


class SparsePointRobotEnv(PointRobotEnv):
    """Point robot with goals on the upper half unit circle and sparse reward (PEARL ``sparse-point-robot``).

    Same dynamics and actions as :class:`PointRobotEnv`, but every episode starts at ``(0, 0)`` and ``step``
    returns the sparse reward ``1 - dist`` when ``dist <= goal_radius`` (0.2) and 0 otherwise (PEARL sparsifies
    the dense reward and adds 1 inside the radius). ``info`` carries both ``"dense_reward"`` (``-dist``) and
    ``"sparse_reward"``. PEARL's ``step`` returns the dense reward and trains on the sparse one when
    ``sparse_rewards`` is set; returning the sparse one makes it the family's reward everywhere.

    Task regions (goal ``[cos a, sin a]``; angles evenly spaced over the region, then shuffled by the seed):

    - ``"all"``: ``a`` in ``linspace(0, pi, n)`` (PEARL's task set).
    - ``"ood_train"``: ``a`` in ``[0, 2pi/3]``.
    - ``"ood_test"``: ``a`` in ``(2pi/3, pi]``.

    Args:
        render_mode: Must be ``None``; the family has no render modes.

    Raises:
        ValueError: If a render mode is requested.
    """

    goal_radius: float = 0.2

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Move by ``0.1 * clip(action, -1, 1)`` and return the sparse reward.

        Args:
            action: A 2-D action; values outside ``[-1, 1]`` are clipped.

        Returns:
            ``(observation, sparse_reward, False, False, info)`` with ``info["dense_reward"] = -dist`` and
            ``info["sparse_reward"]`` equal to the returned reward.
        """
        self._move(action)
        dist = self._distance()
        sparse = 1.0 - dist if dist <= self.goal_radius else 0.0
        return self._obs(), sparse, False, False, {"dense_reward": -dist, "sparse_reward": sparse}

    def _initial_state(self) -> np.ndarray:
        return np.zeros(2, dtype=np.float64)

    def _sample_tasks(self, rng: np.random.Generator, n: int, region: str) -> list[dict[str, Any]]:
        if region == "all":
            angles = np.linspace(0.0, np.pi, n)
        elif region == "ood_train":
            angles = np.linspace(0.0, 2.0 * np.pi / 3.0, n)
        else:
            # Drop the first point so 2pi/3 (which belongs to "ood_train") is excluded.
            angles = np.linspace(2.0 * np.pi / 3.0, np.pi, n + 1)[1:]
        angles = rng.permutation(angles)
        return [{"goal": [math.cos(a), math.sin(a)]} for a in angles]


def _uniform_outside_top_right(rng: np.random.Generator, n: int) -> np.ndarray:
    """Goals uniform in ``[-1, 1]^2`` minus ``(0, 1] x (0, 1]``, by rejection (3/4 acceptance)."""
    goals = np.empty((0, 2))
    while len(goals) < n:
        draw = rng.uniform(-1.0, 1.0, size=(2 * (n - len(goals)) + 4, 2))
        keep = ~((draw[:, 0] > 0.0) & (draw[:, 1] > 0.0))
        goals = np.concatenate([goals, draw[keep]])
    return goals[:n]
