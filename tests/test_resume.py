"""Resuming exactly: a run stopped at a checkpoint and resumed logs the same numbers and ends with the same weights.

Every test compares with one uninterrupted run (the ``straight_run`` fixture) of the same configuration: a point-robot
run of 400 environment steps, validating (with adaptation) at 0, 200 and 400 (``tests/helpers/runs.py``). The stops are
requested from a test callback (``StopAt`` in ``tests/helpers/callbacks.py``) exactly as the SIGTERM handler requests
them, at a chosen point: between two updates, in the middle of a validation's adaptation, in the middle of the warm-up.
(The real signals are sent to a real process in ``test_interrupt.py``.) The resumed leg is always the short form, ``mql
fit --ckpt_path <run>/checkpoints/last.ckpt``, which takes the run's own config and continues in its run directory.

Besides the model's own numbers, every run logs draws from the global torch, numpy and Python generators
(``GlobalDraws``): a component drawing from them must see the same numbers after a resume.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from tests.helpers.runs import BUDGET, assert_same_run, checkpoint, fit, fit_until_stopped, metrics_rows, resume


# --------------------------------------------------------------------------------------------------------------
# Exact resume
# --------------------------------------------------------------------------------------------------------------
def test_resuming_a_validation_checkpoint_with_a_larger_budget_continues_exactly(
    straight_run: Path, tmp_path: Path
) -> None:
    run = fit(tmp_path, "--data.max_env_steps=200")
    assert checkpoint(run)["MetaRLDataModule"]["progress"]["next_validation_at"] == 400  # 200 is done
    resume(run, f"--data.max_env_steps={BUDGET}")
    assert_same_run(run, straight_run)  # in particular: one validation at 200, not two
    config = yaml.safe_load((run / "config.yaml").read_text())  # the run as it went on, not the resume command
    assert config["data"]["max_env_steps"] == BUDGET and config["ckpt_path"] is None


def test_stopped_between_two_updates_and_resumed_continues_exactly(straight_run: Path, tmp_path: Path) -> None:
    run = fit_until_stopped(tmp_path, {"env_steps": 300})
    saved = checkpoint(run)["MetaRLDataModule"]["progress"]
    assert saved["env_steps"] == 300 and saved["updates_left"] == 19  # the first update of the iteration at 300
    resume(run)
    assert_same_run(run, straight_run)


def test_stopped_during_adaptation_saves_the_state_before_the_validation_and_validates_again(
    straight_run: Path, tmp_path: Path
) -> None:
    run = fit_until_stopped(tmp_path, {"env_steps": 200, "during": "adaptation", "task": 1})
    saved = checkpoint(run)["MetaRLDataModule"]["progress"]
    assert saved["env_steps"] == 200 and saved["next_validation_at"] == 200  # the validation is still to do
    assert not [r for r in metrics_rows(run) if "val/return" in r and r["step"] == "200"], "half a validation logged"
    resume(run)
    assert_same_run(run, straight_run)


def test_stopped_during_warm_up_and_resumed_continues_exactly(straight_run: Path, tmp_path: Path) -> None:
    run = fit_until_stopped(tmp_path, {"env_steps": 60, "during": "warmup"})
    assert checkpoint(run)["MetaRLDataModule"]["progress"]["env_steps"] == 60
    resume(run)
    assert_same_run(run, straight_run)


def test_resuming_a_finished_run_trains_no_further(straight_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "mql" / "version_0"
    shutil.copytree(straight_run, run)
    config = (run / "config.yaml").read_text().replace(str(straight_run.parent.parent), str(tmp_path))
    (run / "config.yaml").write_text(config)
    before = metrics_rows(run)
    resume(run)
    assert metrics_rows(run) == before
    assert checkpoint(run)["global_step"] == checkpoint(straight_run)["global_step"]
