"""MQL/PEARL's humanoid-dir family (``rlkit/envs/humanoid_dir.py``) on gymnasium's ``MujocoEnv`` and mujoco 4.

Episodes are 200 steps long; the limit is a ``TimeLimit`` truncation added at registration, never a termination.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from mql_lightning.envs.base import is_finite_real
from mql_lightning.envs.mujoco import MujocoTaskEnv

__all__ = ["HumanoidDirEnv"]


class HumanoidDirEnv(MujocoTaskEnv):
    """Humanoid rewarded for moving its centre of mass in a task direction (MQL/PEARL ``humanoid-dir``).

    - Model: gymnasium's ``humanoid.xml`` (the same physics as gym 0.12's: timestep 0.003, RK4, ctrlrange ±0.4),
      frame skip 5, so ``dt = 0.015``.
    - Action: 17-D in ``[-1, 1]``, clipped, then rescaled to the ctrlrange ±0.4 (rlkit's ``NormalizedBoxEnv``).
    - Observation (376, float64): ``qpos[2:]`` (22), ``qvel`` (23), ``cinert`` (14x10), ``cvel`` (14x6),
      ``qfrc_actuator`` (23) and ``cfrc_ext`` (14x6), every body *including* the world body's rows and the root
      dofs, as the original (gymnasium's ``Humanoid-v5`` drops those and has 348 dims).
    - Reward: ``0.25 · (Δcom_xy / 0.003) · (cos d, sin d) - 0.1‖ctrl‖² - min(0.5e-6‖cfrc_ext‖², 10) + 5.0``.
      ``com`` is the mass-weighted mean of ``data.xipos`` (``model.body_mass``), read before and after the step.
      The displacement is divided by the model *timestep* (0.003), not ``dt``, exactly as the original
      (``/ self.model.opt.timestep``); with frame skip 5 this is ``1.25 · Δcom/dt``, the same as
      ``Humanoid-v5``'s forward reward. ``ctrl`` is the rescaled control actually applied.
    - Termination: torso height ``qpos[2] < 1.0`` or ``> 2.0``. The alive bonus 5.0 is paid on every step,
      including the terminating one (``Humanoid-v5`` pays it only while healthy).
    - Reset: ``qpos`` and ``qvel`` + U(±0.01) from the env's ``np_random``.
    - Task: ``{"angle": d}``, the running direction in radians; tasks draw ``d ~ U(0, 2π)`` from the task generator
      (the original drew 130 of them from the global ``np.random``). Default task: ``d = 0`` (+x).

    Deviations from the original, all forced by the port to mujoco 4 and none changing the definition:

    - ``cfrc_ext`` is computed by ``mj_rnePostConstraint``, which gymnasium's ``do_simulation`` calls after the
      physics steps; MuJoCo ≥ 2.0 no longer fills it in ``mj_step`` (under mujoco-py 2.x it was all zeros, which
      silently removed the impact cost and 84 observation dims; under 1.50, which MQL/PEARL required, it was set).
    - As in the original, ``xipos``, ``cinert``, ``cvel`` and ``cfrc_ext`` are those ``mj_step`` left in ``data``,
      i.e. computed from the state at the start of the last physics sub-step (``mj_step`` integrates after
      computing them); ``qpos``/``qvel`` are the new state. This is kept on purpose to match the original.

    Args:
        render_mode: gymnasium render mode.
        **kwargs: Passed to ``MujocoEnv`` (e.g. ``width``, ``height``, ``camera_id``).
    """

    #: The original divides the com displacement by the model timestep (0.003), not by dt; see the docstring.
    _velocity_divisor: float = 0.003
    _forward_weight: float = 0.25
    renamed_task_keys: ClassVar[dict[str, tuple[str, str]]] = {"direction": ("angle", "the direction in radians")}
    ctrl_cost_weight: ClassVar[float] = 0.1
    _impact_cost_weight: float = 0.5e-6
    _impact_cost_max: float = 10.0
    _alive_bonus: float = 5.0
    _healthy_z: tuple[float, float] = (1.0, 2.0)

    def __init__(self, render_mode: str | None = None, **kwargs: Any) -> None:
        super().__init__(
            "humanoid.xml", frame_skip=5, obs_dim=376, reset_noise_scale=1e-2, qvel_noise="uniform",
            render_mode=render_mode, **kwargs,
        )
        self._direction_vec = _unit(self._task["angle"])

    def reset_model(self) -> np.ndarray:
        """Read the task (so ``set_task`` takes effect here), then draw the noisy initial state."""
        self._direction_vec = _unit(self._task["angle"])
        return super().reset_model()

    # --------------------------------------------------------------------------------------------------- hooks
    def _default_task(self) -> dict[str, Any]:
        return {"angle": 0.0}

    def _get_obs(self) -> np.ndarray:
        data = self.data
        return np.concatenate([
            data.qpos.flat[2:], data.qvel.flat, data.cinert.flat, data.cvel.flat,
            data.qfrc_actuator.flat, data.cfrc_ext.flat,
        ])

    def _before_step(self) -> np.ndarray:
        return self._com_xy()

    def _reward(self, before: np.ndarray, ctrl: np.ndarray) -> tuple[float, dict[str, Any]]:
        after = self._com_xy()
        velocity = (after - before) / self._velocity_divisor
        forward = self._forward_weight * float(velocity @ self._direction_vec)
        ctrl_cost = self._ctrl_cost(ctrl)
        impact_cost = min(self._impact_cost_weight * float(np.square(self.data.cfrc_ext).sum()), self._impact_cost_max)
        reward = forward - ctrl_cost - impact_cost + self._alive_bonus
        info = {
            "reward_forward": forward, "reward_ctrl": -ctrl_cost, "reward_impact": -impact_cost,
            "reward_alive": self._alive_bonus, "com_x": float(after[0]), "com_y": float(after[1]),
        }
        return reward, info

    def _terminated(self) -> bool:
        z = float(self.data.qpos[2])
        return z < self._healthy_z[0] or z > self._healthy_z[1]

    def _com_xy(self) -> np.ndarray:
        """Mass-weighted mean of the bodies' centres of mass (gym 0.12 ``mass_center``), x and y."""
        mass = self.model.body_mass
        return (mass @ self.data.xipos)[:2] / mass.sum()

    # ---------------------------------------------------------------------------------------------------- tasks
    def _sample_tasks(self, rng: np.random.Generator, n: int, region: str) -> list[dict[str, Any]]:
        return [{"angle": float(angle)} for angle in rng.uniform(0.0, 2.0 * np.pi, size=n)]

    def _validate_task(self, task: dict[str, Any]) -> dict[str, Any]:
        self._check_keys(task, ("angle",))
        angle = task["angle"]
        if not is_finite_real(angle):
            raise ValueError(f"{type(self).__name__} task 'angle' must be a finite angle in radians, got {angle!r}")
        return {"angle": float(angle)}


def _unit(angle: float) -> np.ndarray:
    """The unit vector ``(cos angle, sin angle)``."""
    return np.array([math.cos(angle), math.sin(angle)])
