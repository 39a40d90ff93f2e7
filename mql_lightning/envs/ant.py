"""MQL/PEARL's Ant task families (``rlkit/envs/ant_dir.py`` and ``rlkit/envs/ant_goal.py``).

Both run rlkit's Ant (``rlkit/envs/ant.py``): gymnasium's ``ant.xml`` (the same physics as rlkit's copy: RK4,
timestep 0.01, gear 150; rlkit's adds two visual sites, gymnasium's a camera), frame skip 5 (``dt = 0.05``), reset
noise ``qpos + U(+-0.1)`` and ``qvel + 0.1 * N(0, 1)``. Episodes are 200 steps long; the limit is a ``TimeLimit``
truncation added at registration. :class:`_AntEnv` holds everything the two families share; each family adds
its observation, reward terms, termination and tasks.
"""

from __future__ import annotations

import abc
import itertools
import math
from typing import Any, ClassVar

import numpy as np

from mql_lightning.envs.base import is_finite_real
from mql_lightning.envs.mujoco import MujocoTaskEnv

__all__ = ["AntFwdBackEnv", "AntGoalEnv"]

#: rlkit's contact cost: ``0.5e-3 * sum(clip(cfrc_ext, -1, 1)^2)`` over every body, the world row included.
CONTACT_COST_WEIGHT = 0.5e-3


class _AntEnv(MujocoTaskEnv):
    """The Ant shared by ant-dir and ant-goal: model, reset, task caching and the cost terms.

    Subclasses set :attr:`ctrl_cost_weight` and implement :meth:`_task_target`, :meth:`_get_obs` and
    :meth:`_reward`.

    Args:
        obs_dim: Observation width of the family.
        render_mode: gymnasium render mode.
        **kwargs: Passed to ``MujocoEnv`` (e.g. ``width``, ``height``, ``camera_id``).
    """

    #: Weight of ``||ctrl||^2`` in the reward (ant-dir 0.5, ant-goal 0.1).
    ctrl_cost_weight: ClassVar[float]

    def __init__(self, obs_dim: int, render_mode: str | None = None, **kwargs: Any) -> None:
        super().__init__(
            "ant.xml", frame_skip=5, obs_dim=obs_dim, reset_noise_scale=0.1, qvel_noise="normal",
            render_mode=render_mode, **kwargs,
        )
        self._torso_id = self.model.body("torso").id
        # The task is read into an array at reset, so `set_task` mid-episode only affects the next episode.
        self._target = self._task_target(self._task)

    def reset_model(self) -> np.ndarray:
        """Adopt the current task, then draw the initial state (base class: ``qpos + U(+-0.1)``, ``qvel + 0.1 N``)."""
        self._target = self._task_target(self._task)
        return super().reset_model()

    def _torso_xy(self) -> np.ndarray:
        """The torso body's frame position in the plane (rlkit's ``get_body_com("torso")[:2]``), as a copy."""
        return self.data.xpos[self._torso_id, :2].copy()

    def _before_step(self) -> np.ndarray:
        return self._torso_xy()

    def _contact_cost(self) -> float:
        # cfrc_ext is valid here because do_simulation calls mj_rnePostConstraint (under MuJoCo >= 2 it is
        # otherwise all zeros, the bug varibad's README warns about).
        return CONTACT_COST_WEIGHT * float(np.sum(np.square(np.clip(self.data.cfrc_ext, -1.0, 1.0))))

    @abc.abstractmethod
    def _task_target(self, task: dict[str, Any]) -> np.ndarray:
        """The task as the array the reward uses (a unit direction or a goal position)."""


class AntFwdBackEnv(_AntEnv):
    """Ant running forward or backward along x (MQL/PEARL ``ant-dir`` with ``forward_backward=True``).

    - Observation (27, float64): ``qpos[2:]`` (torso height, orientation quaternion, 8 joint angles; 13) and
      ``qvel`` (14).
    - Action: 8 motor commands in ``[-1, 1]``, rescaled to the actuators' ``ctrlrange`` (``[-1, 1]`` for this
      model, so the control equals the clipped action).
    - Reward: ``(torso_xy_after - torso_xy_before) / dt . (cos g, sin g) - 0.5 ||ctrl||^2
      - 0.5e-3 * sum(clip(cfrc_ext, -1, 1)^2) + 1.0``, where ``torso_xy`` is the torso body position and
      ``cfrc_ext`` covers all 14 bodies (the world row is always zero). The survive bonus 1.0 is paid on every
      step, the terminating one included (gymnasium v5 pays it only while healthy). ``info`` holds the terms.
    - Termination: the state ``(qpos, qvel)`` is not finite, or the torso height ``qpos[2]`` is outside
      ``[0.2, 1.0]``.
    - Tasks: ``{"angle": g}`` (radians); the family's two tasks are ``g = 0`` (forward) and ``g = pi``
      (backward). ``sample_tasks(n, seed)`` returns them alternately (``[0, pi, 0, ...]``), whatever the seed.
      Validation and test use the training tasks (:attr:`eval_on_train_tasks`), as in the paper.

    Deviations from the original:

    - Task key ``"angle"`` instead of rlkit's ``"goal"`` (the value, an angle, is the same; ``"goal"`` is a position
      for Ant-Goal here, and ``"direction"`` a sign for HalfCheetah-Fwd-Back); any finite angle is accepted by
      ``set_task``, as rlkit's non-``forward_backward`` variant allows.
    - rlkit asserts ``num_tasks == 2``; here ``n`` tasks cycle through the two directions.
    - MuJoCo 4 (official bindings) instead of MuJoCo 1.50 (mujoco-py): same model, but solver changes since 1.50
      make trajectories numerically different, not bit-identical.

    Args:
        render_mode: gymnasium render mode.
        **kwargs: Passed to ``MujocoEnv`` (e.g. ``width``, ``height``, ``camera_id``).
    """

    ctrl_cost_weight: ClassVar[float] = 0.5
    survive_reward: ClassVar[float] = 1.0
    #: The two tasks are both trained and evaluated on (docs/design.md#task-splits).
    eval_on_train_tasks = True
    renamed_task_keys: ClassVar[dict[str, tuple[str, str]]] = {"direction": ("angle", "the direction in radians")}
    #: rlkit's ``forward_backward`` task set.
    directions: ClassVar[tuple[float, float]] = (0.0, math.pi)

    def __init__(self, render_mode: str | None = None, **kwargs: Any) -> None:
        super().__init__(obs_dim=27, render_mode=render_mode, **kwargs)

    def _default_task(self) -> dict[str, Any]:
        return {"angle": 0.0}

    def _task_target(self, task: dict[str, Any]) -> np.ndarray:
        return np.array([math.cos(task["angle"]), math.sin(task["angle"])])

    def _get_obs(self) -> np.ndarray:
        return np.concatenate([self.data.qpos.flat[2:], self.data.qvel.flat])

    def _reward(self, before: np.ndarray, ctrl: np.ndarray) -> tuple[float, dict[str, Any]]:
        after = self._torso_xy()
        forward = float(np.dot((after - before) / self.dt, self._target))
        ctrl_cost, contact_cost = self._ctrl_cost(ctrl), self._contact_cost()
        reward = forward - ctrl_cost - contact_cost + self.survive_reward
        info = {
            "reward_forward": forward, "reward_ctrl": -ctrl_cost, "reward_contact": -contact_cost,
            "reward_survive": self.survive_reward, "x_position": float(after[0]), "y_position": float(after[1]),
        }
        return reward, info

    def _terminated(self) -> bool:
        state = np.concatenate([self.data.qpos, self.data.qvel])
        height = self.data.qpos[2]
        return not (np.isfinite(state).all() and 0.2 <= height <= 1.0)

    def _sample_tasks(self, rng: np.random.Generator, n: int, region: str) -> list[dict[str, Any]]:
        # The task set is fixed (rlkit hard-codes it), so `rng` is not used.
        return [{"angle": g} for g in itertools.islice(itertools.cycle(self.directions), n)]

    def _validate_task(self, task: dict[str, Any]) -> dict[str, Any]:
        self._check_keys(task, ("angle",))
        angle = task["angle"]
        if not is_finite_real(angle):
            raise ValueError(f"{type(self).__name__} task 'angle' must be a finite angle in radians, got {angle!r}")
        return {"angle": float(angle)}


class AntGoalEnv(_AntEnv):
    """Ant walking to a goal position in the plane (MQL/PEARL ``ant-goal``).

    - Observation (113, float64): ``qpos`` (15, including the torso x, y), ``qvel`` (14), and
      ``clip(cfrc_ext, -1, 1)`` of all 14 bodies flattened (84; the world body's 6 entries are always zero, kept
      as in the original).
    - Action: 8 motor commands in ``[-1, 1]``, rescaled to the actuators' ``ctrlrange`` (``[-1, 1]``).
    - Reward: ``-||torso_xy - goal||_1 - 0.1 ||ctrl||^2 - 0.5e-3 * sum(clip(cfrc_ext, -1, 1)^2)`` after the step
      (the L1 distance, as rlkit; no survive bonus). ``info`` holds the terms.
    - Termination: never (episodes end by the 200-step truncation).
    - Tasks: ``{"goal": [x, y]}`` uniform on the disc of radius 3: angle ``2 pi U``, radius ``3 sqrt(U)`` (all
      ``n`` angles drawn first, then the ``n`` radii, in rlkit's order).

    Deviations from the original:

    - Goals come from the seeded generator given to ``sample_tasks`` instead of the global ``np.random`` (seeded
      by MQL with the run seed, not at all by PEARL), so the task set is fixed by the task seed alone
      (docs/design.md#task-splits) and is not the one a given MQL run used.
    - MuJoCo 4 (official bindings) instead of MuJoCo 1.50 (mujoco-py): same model, numerically different
      trajectories.

    Args:
        render_mode: gymnasium render mode.
        **kwargs: Passed to ``MujocoEnv`` (e.g. ``width``, ``height``, ``camera_id``).
    """

    ctrl_cost_weight: ClassVar[float] = 0.1
    #: Radius of the disc the goals are drawn from.
    goal_radius: ClassVar[float] = 3.0

    def __init__(self, render_mode: str | None = None, **kwargs: Any) -> None:
        super().__init__(obs_dim=113, render_mode=render_mode, **kwargs)

    def _default_task(self) -> dict[str, Any]:
        # A fixed goal on the disc, so `make` then `reset` works without `set_task`.
        return {"goal": [self.goal_radius / 2.0, 0.0]}

    def _task_target(self, task: dict[str, Any]) -> np.ndarray:
        return np.asarray(task["goal"], dtype=np.float64)

    def _get_obs(self) -> np.ndarray:
        contact = np.clip(self.data.cfrc_ext, -1.0, 1.0)
        return np.concatenate([self.data.qpos.flat, self.data.qvel.flat, contact.flat])

    def _reward(self, before: np.ndarray, ctrl: np.ndarray) -> tuple[float, dict[str, Any]]:
        after = self._torso_xy()
        goal = -float(np.sum(np.abs(after - self._target)))
        ctrl_cost, contact_cost = self._ctrl_cost(ctrl), self._contact_cost()
        info = {
            "reward_goal": goal, "reward_ctrl": -ctrl_cost, "reward_contact": -contact_cost,
            "x_position": float(after[0]), "y_position": float(after[1]),
        }
        return goal - ctrl_cost - contact_cost, info

    def _sample_tasks(self, rng: np.random.Generator, n: int, region: str) -> list[dict[str, Any]]:
        angles = rng.random(n) * 2.0 * np.pi
        # sqrt makes the density uniform in area rather than in radius.
        radii = self.goal_radius * np.sqrt(rng.random(n))
        goals = np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=-1)
        return [{"goal": goal} for goal in goals]

    def _validate_task(self, task: dict[str, Any]) -> dict[str, Any]:
        self._check_keys(task, ("goal",))
        goal = task["goal"]
        if not isinstance(goal, list) or len(goal) != 2 or not all(is_finite_real(x) for x in goal):
            raise ValueError(f"{type(self).__name__} task 'goal' must be 2 finite numbers [x, y], got {goal!r}")
        return {"goal": [float(x) for x in goal]}
