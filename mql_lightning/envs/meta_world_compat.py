"""Meta-World 3.1.1 (built for MuJoCo 3.3.0) on later MuJoCo versions, this project's MuJoCo 4 included.

Importing this module imports ``metaworld`` and, where the installed MuJoCo needs it, adjusts two things at run time
(nothing in site-packages is edited); under MuJoCo 3.3.0, the version Meta-World pins, it changes nothing:

1. **The mocap weld** (MuJoCo 4 grew a weld's ``eq_data`` row from 11 to 12 numbers). Meta-World's
   ``SawyerMocapBase.reset_mocap_welds`` writes its 11 weld values into whole rows and fails at the first env
   construction. Here the original method writes into an 11-wide copy of the rows, which goes into the first 11
   columns: the same anchor, relative pose and torque scale. The 12th number, MuJoCo 4's mark of a weld whose relative
   pose was not given in the model, is set to 0: Meta-World gives it, and ``mj_setConst`` would otherwise overwrite it.
2. **Contact generation** (MuJoCo 3.8 turned the ``multiccd`` flag on by default). It makes resting objects touch the
   table at up to 4 points instead of 1, which changes the dynamics of every object Meta-World's tasks manipulate
   (a 0.2 rad/s difference in a puck's angular velocity after one step, measured). MuJoCo's migration note for that
   change is to disable the flag, which recovers the contacts Meta-World was built with; every Meta-World model gets it
   disabled when it is loaded.

What stays different under MuJoCo 4 is measured in ``docs/environments.md`` (the weld's velocity term added in MuJoCo
3.7, among others): trajectories drift apart slowly, as between any two MuJoCo versions.

Raises:
    ImportError: At import, if Meta-World is not installed (with the command that installs it).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import mujoco
import numpy as np

try:
    import metaworld
    from metaworld.sawyer_xyz_env import SawyerMocapBase
except ImportError as err:  # pragma: no cover - depends on the installation
    raise ImportError(
        'the Meta-World task families need the metaworld package: pip install ".[metaworld]" (see the README)'
    ) from err

__all__ = ["metaworld", "patch_metaworld"]

#: Width of an ``eq_data`` row in the MuJoCo Meta-World pins (3.3.0), which its weld values fill.
LEGACY_EQ_DATA_WIDTH = 11

# The methods replaced below; through ``__wrapped__``, a second import (importlib.reload) finds the originals again.
_original_reset_mocap_welds = getattr(
    SawyerMocapBase.reset_mocap_welds, "__wrapped__", SawyerMocapBase.reset_mocap_welds
)
_original_initialize_simulation = getattr(
    SawyerMocapBase._initialize_simulation, "__wrapped__", SawyerMocapBase._initialize_simulation
)


def _reset_mocap_welds(self: Any) -> None:
    """Meta-World's own ``reset_mocap_welds``, on ``eq_data`` rows wider than its 11 values."""
    model = self.model
    legacy = SimpleNamespace(
        nmocap=model.nmocap, eq_type=model.eq_type, eq_data=model.eq_data[:, :LEGACY_EQ_DATA_WIDTH].copy()
    )
    _original_reset_mocap_welds(SimpleNamespace(model=legacy))
    welds = np.flatnonzero(model.eq_type == mujoco.mjtEq.mjEQ_WELD) if model.nmocap > 0 else []
    model.eq_data[welds, :LEGACY_EQ_DATA_WIDTH] = legacy.eq_data[welds]
    # The relative pose is given (Meta-World's values), not MuJoCo 4's "take it from qpos0" (eq_data[11] != 0).
    model.eq_data[welds, LEGACY_EQ_DATA_WIDTH:] = 0.0


def _initialize_simulation(self: Any) -> tuple[mujoco.MjModel, mujoco.MjData]:
    """Meta-World's model loading, with ``multiccd`` disabled (single-point contacts, as under MuJoCo 3.3.0)."""
    model, data = _original_initialize_simulation(self)
    model.opt.disableflags |= mujoco.mjtDisableBit.mjDSBL_MULTICCD
    return model, data


_reset_mocap_welds.__wrapped__ = _original_reset_mocap_welds  # type: ignore[attr-defined]
_initialize_simulation.__wrapped__ = _original_initialize_simulation  # type: ignore[attr-defined]


def patch_metaworld() -> None:
    """Install the two adjustments that the installed MuJoCo needs (idempotent; nothing under MuJoCo 3.3.0)."""
    if mujoco.mjNEQDATA > LEGACY_EQ_DATA_WIDTH:
        SawyerMocapBase.reset_mocap_welds = _reset_mocap_welds
    if _multiccd_on_by_default():
        SawyerMocapBase._initialize_simulation = _initialize_simulation


def _multiccd_on_by_default() -> bool:
    """Whether this MuJoCo enables ``multiccd`` unless told not to (3.8 and later; before, it was an opt-in flag)."""
    return hasattr(mujoco.mjtDisableBit, "mjDSBL_MULTICCD")


patch_metaworld()
