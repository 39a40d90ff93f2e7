"""MQL/PEARL's walker-rand-params family (rand_param_envs ``Walker2DRandParamsEnv``) on gymnasium and mujoco 4.

Episodes are 200 steps long; the limit is a ``TimeLimit`` truncation added at registration, never a termination.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import mujoco
import numpy as np

from mql_lightning.envs.mujoco import MujocoTaskEnv

__all__ = ["Walker2DParamsEnv"]

#: gymnasium's v4-compatible walker2d.xml with rand_param_envs' timestep 0.004 (see the file's header).
WALKER_XML = Path(__file__).resolve().parent / "assets" / "walker2d_rand_params.xml"

#: Randomised model arrays -> base of their log-uniform multiplier (rand_param_envs' order and bases).
_PARAMS: dict[str, float] = {"body_mass": 1.5, "body_inertia": 1.5, "dof_damping": 1.3, "geom_friction": 1.5}


class Walker2DParamsEnv(MujocoTaskEnv):
    """Planar walker whose physical parameters are the task (MQL/PEARL ``walker-rand-params``).

    - Model: ``assets/walker2d_rand_params.xml``, frame skip 4, so ``dt = 0.016`` (rand_param_envs' ``RandomEnv``
      hard-codes frame skip 4; the 5 MQL passes is swallowed by ``*args``).
    - Action: 6-D in ``[-1, 1]`` (the actuators' ctrlrange is already ±1, so the rescaling is the identity).
    - Observation (17, float64): ``qpos[1:]`` (8) and ``clip(qvel, -10, 10)`` (9).
    - Reward: ``Δx/dt + 1.0 - 1e-3‖ctrl‖²`` with ``x = qpos[0]`` before and after the step; the alive bonus is
      paid on every step, including the terminating one.
    - Termination: unless ``0.8 < qpos[1] < 2.0`` and ``-1 < qpos[2] < 1`` (height and torso angle).
    - Reset: ``qpos`` and ``qvel`` + U(±0.005) from the env's ``np_random``.
    - Task: per-array *multipliers* of the model's initial parameters, ``{"body_mass": [nbody],
      "body_inertia": [[3] * nbody], "dof_damping": [nv], "geom_friction": [[3] * ngeom]}`` (nbody 8, nv 9,
      ngeom 8). Tasks draw every element independently: ``1.5 ** U(-3, 3)`` for mass, inertia and friction,
      ``1.3 ** U(-3, 3)`` for damping (rand_param_envs' ``log_scale_limit = 3``). Zero initial values (the world
      body's mass and inertia, the root dofs' damping) stay zero, as in the original. Default task: all ones
      (the unmodified model).

    Deviations from the original:

    - Model file: rand_param_envs' ``walker2d.xml`` uses ``coordinate="global"``, which MuJoCo 4 refuses to load.
      The shipped XML is gymnasium's v4-compatible ``walker2d.xml`` (the same walker without global coordinates,
      feet friction 0.9 right / 1.9 left as in rand_param_envs) with the timestep set to rand_param_envs' 0.004.
    - A task is stored as multipliers, not as absolute arrays: the absolute parameters are ``initial * task``,
      computed from copies of the initial arrays taken once at construction, so they never drift however many
      tasks are set (rand_param_envs keeps uncopied references to the live arrays).
    - ``set_task`` takes effect at the next ``reset`` (rand_param_envs writes the model immediately). The reset
      writes the arrays in place and then calls ``mujoco.mj_setConst`` (an addition: rand_param_envs, on mjpro131,
      does not) so the quantities MuJoCo derives from them at compile time (``body_subtreemass``, ``dof_M0``, ...)
      follow the new masses and inertias. ``mj_setConst`` overwrites ``qpos``, which is why it only runs in reset,
      before the initial state is drawn.

    Args:
        render_mode: gymnasium render mode.
        **kwargs: Passed to ``MujocoEnv`` (e.g. ``width``, ``height``, ``camera_id``).
    """

    #: Model sizes, needed to build and validate tasks before the model exists; checked against it in __init__.
    nbody: int = 8
    nv: int = 9
    ngeom: int = 8
    _alive_bonus: float = 1.0
    ctrl_cost_weight: ClassVar[float] = 1e-3
    _log_scale_limit: float = 3.0

    def __init__(self, render_mode: str | None = None, **kwargs: Any) -> None:
        super().__init__(
            str(WALKER_XML), frame_skip=4, obs_dim=17, reset_noise_scale=5e-3, qvel_noise="uniform",
            render_mode=render_mode, **kwargs,
        )
        sizes = (self.model.nbody, self.model.nv, self.model.ngeom)
        if sizes != (self.nbody, self.nv, self.ngeom):
            raise RuntimeError(f"{WALKER_XML} has (nbody, nv, ngeom) = {sizes}, expected "
                               f"{(self.nbody, self.nv, self.ngeom)}")
        # .copy(): model arrays are live views, so an uncopied "initial" array would follow every task written.
        self._initial_params = {name: getattr(self.model, name).copy() for name in _PARAMS}
        # The default task (all ones) is the unmodified model: nothing to apply until set_task is called.
        self._params_stale = False

    def set_task(self, task: Mapping[str, Any]) -> None:
        """Select the physical parameters of the following episodes; they are applied at the next ``reset``.

        Args:
            task: Multipliers of the initial parameters, as returned by :meth:`sample_tasks`. It is copied.

        Raises:
            TypeError: If ``task`` is not a mapping.
            ValueError: If a key is missing or unknown, or an array has the wrong shape or a non-positive or
                non-finite element.
        """
        super().set_task(task)
        self._params_stale = True

    def reset_model(self) -> np.ndarray:
        """Apply the task's parameters if they changed, then draw the noisy initial state."""
        if self._params_stale:
            self._apply_params()
        return super().reset_model()

    def _apply_params(self) -> None:
        """Write ``initial * multiplier`` into the model and refresh its derived constants."""
        for name in _PARAMS:
            getattr(self.model, name)[:] = self._initial_params[name] * np.asarray(self._task[name])
        # Recomputes body_subtreemass, dof_M0, ... from the new masses/inertias; it resets qpos to qpos0, which is
        # harmless here because reset_model sets the state right after.
        mujoco.mj_setConst(self.model, self.data)
        self._params_stale = False

    # --------------------------------------------------------------------------------------------------- hooks
    def _default_task(self) -> dict[str, Any]:
        return {name: np.ones(shape).tolist() for name, shape in self._param_shapes().items()}

    def _get_obs(self) -> np.ndarray:
        return np.concatenate([self.data.qpos.flat[1:], np.clip(self.data.qvel.flat, -10.0, 10.0)])

    def _before_step(self) -> float:
        return float(self.data.qpos[0])

    def _reward(self, before: float, ctrl: np.ndarray) -> tuple[float, dict[str, Any]]:
        after = float(self.data.qpos[0])
        forward = (after - before) / self.dt
        ctrl_cost = self._ctrl_cost(ctrl)
        reward = forward + self._alive_bonus - ctrl_cost
        info = {"reward_forward": forward, "reward_ctrl": -ctrl_cost, "reward_alive": self._alive_bonus,
                "x_position": after}
        return reward, info

    def _terminated(self) -> bool:
        height, angle = float(self.data.qpos[1]), float(self.data.qpos[2])
        return not (0.8 < height < 2.0 and -1.0 < angle < 1.0)

    # ---------------------------------------------------------------------------------------------------- tasks
    def _param_shapes(self) -> dict[str, tuple[int, ...]]:
        return {
            "body_mass": (self.nbody,), "body_inertia": (self.nbody, 3),
            "dof_damping": (self.nv,), "geom_friction": (self.ngeom, 3),
        }

    def _sample_tasks(self, rng: np.random.Generator, n: int, region: str) -> list[dict[str, Any]]:
        limit, shapes = self._log_scale_limit, self._param_shapes()
        return [
            {name: base ** rng.uniform(-limit, limit, size=shapes[name]) for name, base in _PARAMS.items()}
            for _ in range(n)
        ]

    def _validate_task(self, task: dict[str, Any]) -> dict[str, Any]:
        family = type(self).__name__
        self._check_keys(task, tuple(_PARAMS))
        canonical = {}
        for name, shape in self._param_shapes().items():
            try:
                values = np.asarray(task[name])
            except ValueError as err:  # ragged nested lists
                raise ValueError(f"{family} task {name!r} must be an array of shape {shape}: {err}") from err
            if values.shape != shape or values.dtype.kind not in "iuf":
                raise ValueError(f"{family} task {name!r} must be numbers of shape {shape}, got shape "
                                 f"{values.shape} and dtype {values.dtype}")
            values = values.astype(np.float64)
            # Multipliers must keep masses, inertias, dampings and frictions valid (positive, finite).
            if not np.all(np.isfinite(values)) or not np.all(values > 0.0):
                raise ValueError(f"{family} task {name!r} multipliers must be finite and > 0")
            canonical[name] = values.tolist()
        return canonical
