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

import csv
import shutil
from pathlib import Path

import torch
import yaml
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from mql_lightning.callbacks.checkpoint import continue_run_logs
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


# --------------------------------------------------------------------------------------------------------------
# The logs of a resumed run
# --------------------------------------------------------------------------------------------------------------
def _fake_checkpoint(path: Path, env_steps: int) -> Path:
    torch.save({"MetaRLDataModule": {"progress": {"env_steps": env_steps}}}, path)
    return path


def test_csv_rows_after_the_checkpoint_are_dropped_and_new_rows_appended(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, name="mql", version="version_0")
    Path(logger.log_dir).mkdir(parents=True)
    with open(Path(logger.log_dir) / "metrics.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["a", "step"])
        writer.writerows([[1.0, 100], [2.0, 200], [3.0, 300]])  # 300: logged after the checkpoint at 200, lost
    continue_run_logs([logger], _fake_checkpoint(tmp_path / "x.ckpt", 200))
    logger.log_metrics({"a": 4.0}, step=220)
    logger.log_metrics({"a": 5.0, "b": 6.0}, step=240)  # a new column: the file is rewritten with a wider header
    logger.save()
    with open(Path(logger.log_dir) / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["step"], r["a"], r.get("b")) for r in rows] == [
        ("100", "1.0", ""), ("200", "2.0", ""), ("220", "4.0", ""), ("240", "5.0", "6.0")
    ]
    assert not list(Path(logger.log_dir).glob(".metrics.csv*"))


def test_a_csv_left_aside_by_a_killed_resume_is_recovered(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, name="mql", version="version_0")
    Path(logger.log_dir).mkdir(parents=True)
    (Path(logger.log_dir) / ".metrics.csv.resuming").write_text("a,step\n1.0,100\n3.0,300\n")
    continue_run_logs([logger], _fake_checkpoint(tmp_path / "x.ckpt", 200))
    assert (Path(logger.log_dir) / "metrics.csv").read_text().splitlines() == ["a,step", "1.0,100"]


def test_tensorboard_hides_the_events_logged_after_the_checkpoint(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    first = TensorBoardLogger(tmp_path, name="mql", version="version_0")  # the interrupted run
    for step in (100, 200, 300):
        first.log_metrics({"a": float(step)}, step=step)
    first.finalize("failed")
    resumed = TensorBoardLogger(tmp_path, name="mql", version="version_0")
    continue_run_logs([resumed], _fake_checkpoint(tmp_path / "x.ckpt", 200))
    resumed.log_metrics({"a": 220.0}, step=220)
    resumed.finalize("success")
    events = EventAccumulator(resumed.log_dir)
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("a")] == [(100, 100.0), (200, 200.0), (220, 220.0)]
