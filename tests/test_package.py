"""``import mql_lightning``: registers the task families with gymnasium and stays light (no torch, no Lightning)."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_package_registers_every_family_without_torch_or_lightning() -> None:
    probe = (
        "import sys, gymnasium, mql_lightning\n"
        "gymnasium.register_envs(mql_lightning)\n"
        "env = gymnasium.make('mql/PointRobot-v0')\n"
        "env.reset(seed=0)\n"
        "print(sorted(i for i in gymnasium.registry if i.startswith('mql/')))\n"
        "print('torch' in sys.modules, 'lightning' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.splitlines()
    assert "'mql/HalfCheetahVel-v0'" in out[0] and "'mql/Walker2DParams-v0'" in out[0]
    assert out[1] == "False False"
