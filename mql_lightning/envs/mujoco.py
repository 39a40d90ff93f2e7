"""The shared machinery of the MuJoCo task families: gymnasium's ``MujocoEnv`` plus the meta-RL task API.

Every MuJoCo family of MQL/PEARL (``docs/environments.md``) is a :class:`MujocoTaskEnv` subclass that names
its model file and frame skip and implements four small hooks: the observation, what to remember before a step,
the reward, and the termination rule. This base does the rest once: actions in [-1, 1] rescaled to the actuators'
control range (rlkit's ``NormalizedBoxEnv``; docs/design.md#environments), the step itself (gymnasium's
``do_simulation``, which calls ``mj_rnePostConstraint`` so ``cfrc_ext`` is populated as under MuJoCo 1.5), and the
reset noise.
"""

from __future__ import annotations

import abc
import re
from pathlib import Path
from typing import Any, ClassVar, Literal

import mujoco
import numpy as np
from gymnasium.envs.mujoco.mujoco_env import MujocoEnv
from gymnasium.spaces import Box

from mql_lightning.envs.base import MetaEnv

# `<compiler ... settotalmass="14"/>` (gymnasium's half_cheetah.xml): deprecated in MuJoCo 4, which warns on every load.
_SETTOTALMASS = re.compile(r'\s+settotalmass="([^"]+)"')


class MujocoTaskEnv(MetaEnv, MujocoEnv):
    """A MuJoCo meta-RL task family with actions in [-1, 1].

    Args:
        xml_file: MuJoCo model (a path, or a file name in gymnasium's ``assets`` folder).
        frame_skip: Physics steps per environment step.
        obs_dim: Observation width.
        reset_noise_scale: Scale of the reset noise on ``qpos`` (uniform in ``±scale``) and ``qvel``.
        qvel_noise: ``normal`` (``scale * N(0, 1)``: cheetah, ant) or ``uniform`` (``U(±scale)``: humanoid, walker).
        render_mode: gymnasium render mode.
        **kwargs: Passed to ``MujocoEnv`` (e.g. ``width``, ``height``, ``camera_id``).
    """

    ctrl_cost_weight: ClassVar[float] = 0.0
    """Weight of the control cost ``w * ||ctrl||^2`` every family subtracts (set per family)."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["human", "rgb_array", "depth_array", "rgbd_tuple"]}

    def __init__(
        self,
        xml_file: str,
        frame_skip: int,
        obs_dim: int,
        reset_noise_scale: float,
        qvel_noise: Literal["normal", "uniform"] = "normal",
        render_mode: str | None = None,
        **kwargs: Any,
    ) -> None:
        self._reset_noise_scale, self._qvel_noise = reset_noise_scale, qvel_noise
        self._task = self._default_task()
        MujocoEnv.__init__(
            self, xml_file, frame_skip, observation_space=Box(-np.inf, np.inf, (obs_dim,), np.float64),
            render_mode=render_mode, **kwargs,
        )
        self.metadata = {**self.metadata, "render_fps": int(np.round(1.0 / self.dt))}
        low, high = self.model.actuator_ctrlrange.copy().T
        self._ctrl_mid, self._ctrl_half = (high + low) / 2.0, (high - low) / 2.0
        self.action_space = Box(-1.0, 1.0, (self.model.nu,), np.float32)

    def _initialize_simulation(self) -> tuple[mujoco.MjModel, mujoco.MjData]:
        """gymnasium's model loading, without the deprecated ``settotalmass`` compiler attribute.

        MuJoCo 4 warns about it at every load (printed, and appended to ``MUJOCO_LOG.TXT`` in the working directory:
        dozens of times per run). The same scaling applied to the compiled model (``mj_setTotalmass`` and
        ``mj_setConst``, as the warning advises) gives a bit-identical model (tests/envs/test_half_cheetah.py).
        """
        xml = Path(self.fullpath).read_text()
        total_mass = _SETTOTALMASS.search(xml)
        if total_mass is None:
            return super()._initialize_simulation()
        model = mujoco.MjModel.from_xml_string(_SETTOTALMASS.sub("", xml, count=1))
        data = mujoco.MjData(model)
        mujoco.mj_setTotalmass(model, float(total_mass.group(1)))
        mujoco.mj_setConst(model, data)
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, self.width)
        model.vis.global_.offheight = max(model.vis.global_.offheight, self.height)
        return model, data

    # ------------------------------------------------------------------------------------------------ the step
    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Rescale the action to the control range, simulate ``frame_skip`` steps, and score the transition."""
        # np.minimum/np.maximum: np.clip costs several times more per call on small arrays (hot path).
        action = np.minimum(np.maximum(np.asarray(action, dtype=np.float64), -1.0), 1.0)
        ctrl = self._ctrl_mid + self._ctrl_half * action
        before = self._before_step()
        self.do_simulation(ctrl, self.frame_skip)
        reward, info = self._reward(before, ctrl)
        terminated = self._terminated()
        if self.render_mode == "human":
            self.render()
        return self._get_obs(), float(reward), bool(terminated), False, info

    def reset_model(self) -> np.ndarray:
        """Initial state: ``qpos`` + U(±scale), ``qvel`` + noise (normal or uniform, by family)."""
        scale = self._reset_noise_scale
        qpos = self.init_qpos + self.np_random.uniform(-scale, scale, self.model.nq)
        if self._qvel_noise == "normal":
            qvel = self.init_qvel + scale * self.np_random.standard_normal(self.model.nv)
        else:
            qvel = self.init_qvel + self.np_random.uniform(-scale, scale, self.model.nv)
        self.set_state(qpos, qvel)
        return self._get_obs()

    def _ctrl_cost(self, ctrl: np.ndarray) -> float:
        """``ctrl_cost_weight * ||ctrl||^2`` of the control actually applied (rlkit squares the rescaled action)."""
        return self.ctrl_cost_weight * float(np.square(ctrl).sum())

    # --------------------------------------------------------------------------------------------------- hooks
    @abc.abstractmethod
    def _default_task(self) -> dict[str, Any]:
        """The task used until :meth:`set_task` is called (so ``gymnasium.make`` then ``reset`` just works)."""

    @abc.abstractmethod
    def _get_obs(self) -> np.ndarray:
        """The observation of the current state."""

    def _before_step(self) -> Any:
        """What the reward needs from before the step (e.g. the torso position); ``None`` by default."""
        return None

    @abc.abstractmethod
    def _reward(self, before: Any, ctrl: np.ndarray) -> tuple[float, dict[str, Any]]:
        """The reward of the step just simulated, and an info dict of its terms."""

    def _terminated(self) -> bool:
        """Whether the state just reached ends the episode; never, by default."""
        return False
