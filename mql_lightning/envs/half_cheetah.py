"""MQL/PEARL's half-cheetah task families (``rlkit/envs/half_cheetah_vel.py`` and ``half_cheetah_dir.py``).

Both run gymnasium's ``half_cheetah.xml`` (gym's model plus a camera; same physics) with frame skip 5 (dt 0.05)
and share one robot, observation and control cost (:class:`_HalfCheetahTaskEnv`); they differ only in how the
forward velocity is scored and in their task sets. Episodes are 200 steps long; the limit is a ``TimeLimit``
truncation added at registration, never a termination.
"""

from __future__ import annotations

import abc
import itertools
from typing import Any, ClassVar

import numpy as np

from mql_lightning.envs.base import ALL_REGION, is_finite_real
from mql_lightning.envs.mujoco import MujocoTaskEnv

__all__ = ["HalfCheetahFwdBackEnv", "HalfCheetahVelEnv"]

#: PEARL/MQL's control-cost weight (gymnasium v5's HalfCheetah uses 0.1).
CTRL_COST_WEIGHT = 0.05
#: cheetah-vel's fixed task set: ``np.random.seed(1337); np.random.uniform(0, 3.0, 130)``.
DEFAULT_TASK_SEED = 1337
DEFAULT_NUM_TASKS = 130
MAX_VELOCITY = 3.0
#: Lower end of the out-of-distribution test velocities (paper Appendix B).
OOD_TEST_MIN_VELOCITY = 2.5


class _HalfCheetahTaskEnv(MujocoTaskEnv):
    """The robot, observation and control cost shared by the half-cheetah families.

    Subclasses implement :meth:`_velocity_reward` (the task term of the reward, from the forward velocity) plus the
    task hooks of :class:`~mql_lightning.envs.base.MetaEnv`.

    Args:
        render_mode: gymnasium render mode.
        **kwargs: Passed to ``MujocoEnv`` (e.g. ``width``, ``height``, ``camera_id``).
    """

    ctrl_cost_weight: ClassVar[float] = CTRL_COST_WEIGHT

    def __init__(self, render_mode: str | None = None, **kwargs: Any) -> None:
        # qpos + U(±0.1), qvel + 0.1 * N(0, 1): gym 0.12's HalfCheetahEnv.reset_model, which MQL/PEARL inherit.
        super().__init__(
            "half_cheetah.xml",
            frame_skip=5,
            obs_dim=20,
            reset_noise_scale=0.1,
            qvel_noise="normal",
            render_mode=render_mode,
            **kwargs,
        )
        self._torso_id = self.model.body("torso").id  # looked up once, not by name at every step

    def _get_obs(self) -> np.ndarray:
        # qpos[0] (the x position) is excluded as in gym; the torso position is MQL/PEARL's addition (get_body_com).
        return np.concatenate([self.data.qpos[1:], self.data.qvel, self.data.xpos[self._torso_id]]).astype(np.float64)

    def _before_step(self) -> float:
        # The original differences qpos[0] (the root x slide joint), not the torso com.
        return float(self.data.qpos[0])

    def _reward(self, before: float, ctrl: np.ndarray) -> tuple[float, dict[str, Any]]:
        forward_velocity = (float(self.data.qpos[0]) - before) / self.dt
        # ctrl is the control actually applied (the action rescaled to ctrlrange), as rlkit's NormalizedBoxEnv
        # passes the scaled action to the env; for the cheetah the range is [-1, 1] so both coincide.
        ctrl_cost = self._ctrl_cost(ctrl)
        reward = self._velocity_reward(forward_velocity) - ctrl_cost
        return reward, {"forward_velocity": forward_velocity, "ctrl_cost": ctrl_cost}

    @abc.abstractmethod
    def _velocity_reward(self, forward_velocity: float) -> float:
        """The task term of the reward, given the forward velocity ``v_x`` of the step."""


class HalfCheetahVelEnv(_HalfCheetahTaskEnv):
    """Half-cheetah running at a target forward velocity (MQL/PEARL ``cheetah-vel``).

    - Observation (20, float64): ``qpos[1:]`` (8) + ``qvel`` (9) + torso body position ``xpos`` (3).
    - Action: 6 torques in ``[-1, 1]`` (clipped), rescaled to the actuators' ``ctrlrange`` (also ``[-1, 1]``).
    - Reward: ``-|v_x - v*| - 0.05 * ||ctrl||^2`` with ``v_x = (qpos[0]_after - qpos[0]_before) / dt``.
      ``info`` holds ``"forward_velocity"`` (``v_x``) and ``"ctrl_cost"``.
    - Termination: never (episodes end by the 200-step ``TimeLimit``).
    - Reset: ``qpos`` + U(±0.1), ``qvel`` + 0.1 * N(0, 1), from the env's ``np_random``.
    - Task: ``{"velocity": v*}``.

    Task regions:

    - ``"all"``: ``v* ~ U(0, 3)`` drawn with numpy's *legacy* ``RandomState(seed)`` (MT19937), so task seed 1337
      with ``n=130`` gives exactly the original fixed task set (``np.random.seed(1337)`` then
      ``np.random.uniform(0, 3.0, size=(130,))``); ``n < 130`` gives its prefix. The legacy generator needs
      ``0 <= seed < 2**32``.
    - ``"ood_train"``: ``v* ~ U[0, ood_train_max_velocity)`` (paper Appendix B: 2.5 for OOD-Medium, 1.5 for
      OOD-Hard).
    - ``"ood_test"``: ``v* ~ U[2.5, 3.0)``.

    Deviations from the original: observations are float64 (the original's mujoco-py arrays are float64 too;
    rlkit casts later); MuJoCo 4 instead of 1.50 (same model, same integrator settings).

    Args:
        ood_train_max_velocity: Upper end of the ``"ood_train"`` velocities, in ``(0, 2.5]``.
        render_mode: gymnasium render mode.
        **kwargs: Passed to ``MujocoEnv`` (e.g. ``width``, ``height``, ``camera_id``).

    Raises:
        ValueError: If ``ood_train_max_velocity`` is not in ``(0, 2.5]``.
    """

    ood_regions = ("ood_train", "ood_test")

    def __init__(self, ood_train_max_velocity: float = 2.5, render_mode: str | None = None, **kwargs: Any) -> None:
        if not is_finite_real(ood_train_max_velocity) or not 0.0 < ood_train_max_velocity <= OOD_TEST_MIN_VELOCITY:
            raise ValueError(
                f"ood_train_max_velocity must be in (0, {OOD_TEST_MIN_VELOCITY}] so the OOD train and test "
                f"velocities are disjoint, got {ood_train_max_velocity!r}"
            )
        self.ood_train_max_velocity = float(ood_train_max_velocity)
        self._task_seed: int | None = None
        super().__init__(render_mode=render_mode, **kwargs)

    def sample_tasks(self, n: int, seed: int, region: str = ALL_REGION) -> list[dict[str, Any]]:
        """Draw ``n`` target velocities; see the class docstring for the regions.

        The base class checks the arguments and hands :meth:`_sample_tasks` a ``Generator``; region ``"all"``
        needs the raw seed instead, for the legacy ``RandomState`` stream of the original task set, so it is kept
        here for the duration of the call.

        Args:
            n: Number of tasks, ``>= 0``.
            seed: Task seed; ``1337`` (with ``n=130``) reproduces the original task set.
            region: ``"all"``, ``"ood_train"`` or ``"ood_test"``.

        Returns:
            ``n`` tasks ``{"velocity": float}``.

        Raises:
            TypeError: If ``n`` is not an integer.
            ValueError: If ``n < 0``, the region is unknown, or (region ``"all"``) the seed is outside
                ``[0, 2**32)``.
        """
        self._task_seed = seed
        try:
            return super().sample_tasks(n, seed, region)
        finally:
            self._task_seed = None

    def _default_task(self) -> dict[str, Any]:
        # The first task of the original fixed set, so `gymnasium.make(id)` can be reset without `set_task`.
        return self.sample_tasks(1, DEFAULT_TASK_SEED)[0]

    def _sample_tasks(self, rng: np.random.Generator, n: int, region: str) -> list[dict[str, Any]]:
        if region == ALL_REGION:
            # Legacy MT19937 stream, same call as the original: the fixed task set is reproduced
            # (docs/design.md#task-splits).
            velocities = np.random.RandomState(self._task_seed).uniform(0.0, MAX_VELOCITY, size=(n,))
        elif region == "ood_train":
            velocities = rng.uniform(0.0, self.ood_train_max_velocity, size=n)
        else:
            velocities = rng.uniform(OOD_TEST_MIN_VELOCITY, MAX_VELOCITY, size=n)
        return [{"velocity": v} for v in velocities]

    def _validate_task(self, task: dict[str, Any]) -> dict[str, Any]:
        self._check_keys(task, ("velocity",))
        velocity = task["velocity"]
        if not is_finite_real(velocity):
            raise ValueError(f"{type(self).__name__} task 'velocity' must be a finite number, got {velocity!r}")
        return {"velocity": float(velocity)}

    def _velocity_reward(self, forward_velocity: float) -> float:
        return -abs(forward_velocity - self._task["velocity"])


class HalfCheetahFwdBackEnv(_HalfCheetahTaskEnv):
    """Half-cheetah running forward or backward (MQL/PEARL ``cheetah-dir``).

    - Observation, action, reset: as :class:`HalfCheetahVelEnv`.
    - Reward: ``d * v_x - 0.05 * ||ctrl||^2``; ``info`` holds ``"forward_velocity"`` and ``"ctrl_cost"``.
    - Termination: never (episodes end by the 200-step ``TimeLimit``).
    - Task: ``{"direction": d}`` with ``d`` exactly ``-1`` or ``+1`` (stored as a float).

    Task set: the original hard-codes ``[{"direction": -1}, {"direction": 1}]``; :meth:`sample_tasks` returns those
    two cycling (``n=2`` gives both) whatever the seed. Region ``"all"`` only. The family is evaluated on its
    training tasks (:attr:`eval_on_train_tasks`), as in the paper.

    Deviations from the original: none besides those of :class:`HalfCheetahVelEnv`.

    Args:
        render_mode: gymnasium render mode.
        **kwargs: Passed to ``MujocoEnv`` (e.g. ``width``, ``height``, ``camera_id``).
    """

    #: Two tasks only: train, validation and test all use them (docs/design.md#task-splits).
    eval_on_train_tasks = True
    _DIRECTIONS = (-1.0, 1.0)

    def _default_task(self) -> dict[str, Any]:
        return {"direction": 1.0}

    def _sample_tasks(self, rng: np.random.Generator, n: int, region: str) -> list[dict[str, Any]]:
        # Deterministic: the task set is fixed, so the generator is not used.
        return [{"direction": d} for d in itertools.islice(itertools.cycle(self._DIRECTIONS), n)]

    def _validate_task(self, task: dict[str, Any]) -> dict[str, Any]:
        self._check_keys(task, ("direction",))
        direction = task["direction"]
        if not is_finite_real(direction) or direction not in self._DIRECTIONS:
            raise ValueError(f"{type(self).__name__} task 'direction' must be -1 or 1, got {direction!r}")
        return {"direction": float(direction)}

    def _velocity_reward(self, forward_velocity: float) -> float:
        return self._task["direction"] * forward_velocity
