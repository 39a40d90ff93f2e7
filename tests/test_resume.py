"""Resuming exactly: a run stopped at a checkpoint and resumed logs the same numbers and ends with the same weights.

Every test compares with one uninterrupted run (:func:`straight_run`) of the same configuration: a point-robot run of
400 environment steps, validating (with adaptation) at 0, 200 and 400. The stops are requested from a test callback
(:class:`StopAt`) exactly as the SIGTERM handler requests them, at a chosen point: between two updates, in the middle
of a validation's adaptation, in the middle of the warm-up. (The real signals are sent to a real process in
``test_interrupt.py``.) The resumed leg is always the short form, ``mql fit --ckpt_path <run>/checkpoints/last.ckpt``,
which takes the run's own config and continues in its run directory.

Besides the model's own numbers, every run logs draws from the global torch, numpy and Python generators
(:class:`GlobalDraws`): a component drawing from them must see the same numbers after a resume.
"""

from __future__ import annotations

import csv
import functools
import random
import shutil
import signal
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from mql_lightning import interrupt
from mql_lightning.callbacks.checkpoint import continue_run_logs
from mql_lightning.cli import main

BUDGET = 400
RESUME_ARGS = [
    "--seed_everything=0",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--model.agent.init_args.hidden_sizes=[32,32]",
    "--model.agent.init_args.context.init_args.hidden_size=8",
    "--data.num_train_tasks=4",
    "--data.num_val_tasks=2",
    "--data.num_test_tasks=2",
    "--data.tasks_per_validation=2",
    "--data.batch_size=32",
    "--data.warmup_steps=100",
    "--data.val_every_env_steps=200",
    "--data.eval_episodes=1",
    "--adaptation.settings.num_steps=40",
    "--adaptation.settings.new_task_updates=2",
    "--adaptation.settings.replay_updates=3",
    "--trainer.log_every_n_steps=10",
    '--trainer.callbacks+={"class_path": "tests.test_resume.GlobalDraws"}',
]


# --------------------------------------------------------------------------------------------------------------
# Test callbacks (passed on the command line, so also importable by the `mql` subprocesses of test_interrupt.py)
# --------------------------------------------------------------------------------------------------------------
class StopAt(L.Callback):
    """Requests a stop, as SIGTERM does, when training first reaches ``env_steps`` (in this process).

    Args:
        env_steps: Environment step at which to request it.
        during: ``training`` (after an update), ``adaptation`` (when the validation reaches its task ``task``: the
            request is acted on inside that task's adaptation), ``warmup`` (after a round of warm-up episodes).
        task: See ``during``.
    """

    def __init__(self, env_steps: int, during: str = "training", task: int = 1) -> None:
        super().__init__()
        self.env_steps, self.during, self.task = env_steps, during, task
        self._start = 0

    def _due(self, trainer: L.Trainer) -> bool:
        # Only when crossing the step in this process: the resumed run (same config, same callback) goes on.
        return self._start < self.env_steps <= trainer.datamodule.progress.env_steps

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        datamodule = trainer.datamodule
        self._start = datamodule.progress.env_steps
        if self.during == "warmup":
            store = datamodule._store

            def store_then_stop(episodes: Any) -> Any:
                out = store(episodes)
                if self._due(trainer):
                    interrupt.request_stop(signal.SIGTERM)
                return out

            datamodule._store = store_then_stop

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if self.during == "training" and self._due(trainer):
            interrupt.request_stop(signal.SIGTERM)

    def on_validation_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                                  batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.during == "adaptation" and batch_idx == self.task and self._due(trainer):
            interrupt.request_stop(signal.SIGTERM)


class GlobalDraws(L.Callback):
    """Draws from the global torch, numpy and Python generators after every update and logs every tenth draw.

    Per update, not per Lightning batch: the step that closes a validation period makes no update, and a run resumed
    before a validation has one such step more than the uninterrupted run (the restart ends an epoch at once).
    """

    def __init__(self) -> None:
        super().__init__()
        self._seen = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._seen = pl_module.num_updates

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if pl_module.num_updates == self._seen:
            return
        self._seen = pl_module.num_updates
        draws = {"test/torch": float(torch.rand(())), "test/numpy": float(np.random.rand()),
                 "test/python": random.random()}
        if pl_module.num_updates % 10 == 0:
            for logger in trainer.loggers:
                logger.log_metrics(draws, step=trainer.datamodule.progress.env_steps)


# --------------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------------
def fit(root: Path, *extra: str) -> Path:
    """``mql fit`` in-process with the runs under ``root``; the run directory."""
    main(["fit", *RESUME_ARGS, f"--trainer.logger.init_args.save_dir={root}", f"--data.max_env_steps={BUDGET}", *extra])
    return root / "mql" / "version_0"


def fit_until_stopped(root: Path, stop: dict[str, Any], *extra: str) -> Path:
    """A run stopped by :class:`StopAt`; asserts it exits as SIGTERM does (143). The run directory."""
    callback = '{"class_path": "tests.test_resume.StopAt", "init_args": ' + str(stop).replace("'", '"') + "}"
    with pytest.raises(SystemExit) as exit_info:
        fit(root, f"--trainer.callbacks+={callback}", *extra)
    assert exit_info.value.code == 128 + signal.SIGTERM
    return root / "mql" / "version_0"


def resume(run: Path, *extra: str) -> None:
    """The short form: ``mql fit --ckpt_path <run>/checkpoints/last.ckpt`` (the run's config is found by itself)."""
    main(["fit", "--ckpt_path", str(run / "checkpoints" / "last.ckpt"), *extra])


def metrics_rows(run: Path) -> list[dict[str, str]]:
    """The logged rows, without the one wall-clock metric."""
    with open(run / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if v != "" and k != "time/updates_per_s"} for row in csv.DictReader(f)]


def checkpoint(run: Path, name: str = "last") -> dict[str, Any]:
    return torch.load(run / "checkpoints" / f"{name}.ckpt", weights_only=True)


def assert_same_run(resumed: Path, straight: Path) -> None:
    """Same rows logged (losses, rollout, validation before and after adaptation, global draws), same final state."""
    a, b = metrics_rows(straight), metrics_rows(resumed)
    assert [r["step"] for r in b] == [r["step"] for r in a]
    assert b == a
    logged = {"val/return", "val/return_pre_adapt", "rollout/return", "train/critic_loss", "test/numpy"}
    assert logged <= set().union(*a)
    final, expected = checkpoint(resumed), checkpoint(straight)
    for key, value in expected["state_dict"].items():
        assert torch.equal(final["state_dict"][key], value), key
    for opt, opt_expected in zip(final["optimizer_states"], expected["optimizer_states"], strict=True):
        for index, state in opt_expected["state"].items():
            for name, value in state.items():
                assert torch.equal(opt["state"][index][name], value), (index, name)
    assert final["MetaRLDataModule"]["progress"] == expected["MetaRLDataModule"]["progress"]
    assert final["mql"]["num_updates"] == expected["mql"]["num_updates"]
    assert torch.equal(final["mql"]["noise_generator"], expected["mql"]["noise_generator"])
    assert final["global_step"] == expected["global_step"]
    assert [p.name for p in resumed.parent.iterdir()] == [resumed.name], "the resumed run opened a new directory"


@functools.cache
def _straight(base: Path) -> Path:
    return fit(base / "straight")


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
