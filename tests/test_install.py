"""The package works when installed non-editably, from another directory (docs/design.md#packaging)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).parents[1]


@pytest.mark.slow
def test_pip_install_gives_a_working_mql_with_callbacks_and_configs(tmp_path: Path) -> None:
    # A regular (non-editable) build of the project into its own directory, put first on the path; its
    # dependencies (torch, lightning, ...) come from this interpreter's environment.
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(REPO)],
                   check=True)
    env = {**os.environ, "PYTHONPATH": str(target)}
    python, mql = sys.executable, target / "bin" / "mql"
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    probe = ("import mql_lightning, mql_lightning.callbacks; from mql_lightning.configs import config_path; "
             "from mql_lightning.envs import make_env; make_env('mql/Walker2DParams-v0').reset(seed=0); "
             "print(mql_lightning.__file__); print(config_path('walker'))")
    out = subprocess.run([python, "-c", probe], cwd=workdir, env=env, capture_output=True, text=True,
                         check=True).stdout
    assert out.splitlines()[0].startswith(str(target)), "imported the source tree, not the installed package"
    assert Path(out.splitlines()[1]).is_file()
    result = subprocess.run(
        [mql, "fit", "--trainer.max_steps=20", "--data.warmup_steps=100", "--trainer.enable_progress_bar=false"],
        cwd=workdir, env=env, capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (workdir / "runs" / "mql" / "version_0" / "checkpoints" / "last.ckpt").is_file()
