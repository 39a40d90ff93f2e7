"""The run directory: where a run goes, which run a checkpoint belongs to, and how a resumed run's logs go on."""

from __future__ import annotations

import csv
from pathlib import Path

import torch
from jsonargparse import Namespace
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from mql_lightning.run_directory import config_beside, continue_run_logs, place_loggers, run_directory_of


def _loggers(save_dir: str = "runs", name: str = "mql", version: str | None = None) -> list[Namespace]:
    return [
        Namespace(class_path=f"lightning.pytorch.loggers.{cls}",
                  init_args=Namespace(save_dir=save_dir, name=name, version=version))
        for cls in ("CSVLogger", "TensorBoardLogger")
    ]


def _placed(loggers: list[Namespace]) -> set[tuple[str, str, str]]:
    return {(lg.init_args.save_dir, lg.init_args.name, lg.init_args.version) for lg in loggers}


# --------------------------------------------------------------------------------------------------------------
# Where a run goes
# --------------------------------------------------------------------------------------------------------------
def test_every_logger_gets_the_next_free_version(tmp_path: Path) -> None:
    (tmp_path / "mql" / "version_0").mkdir(parents=True)
    (tmp_path / "mql" / "version_3").mkdir()
    loggers = _loggers(str(tmp_path))
    place_loggers(loggers)
    assert _placed(loggers) == {(str(tmp_path), "mql", "version_4")}


def test_default_root_dir_places_runs_whose_save_dir_is_the_default(tmp_path: Path) -> None:
    loggers = _loggers()
    place_loggers(loggers, default_root_dir=str(tmp_path))
    assert _placed(loggers) == {(str(tmp_path), "mql", "version_0")}
    explicit = _loggers(str(tmp_path / "mine"))
    place_loggers(explicit, default_root_dir=str(tmp_path))  # a save_dir of the user's own wins, as in Lightning
    assert _placed(explicit) == {(str(tmp_path / "mine"), "mql", "version_0")}


def test_a_command_line_name_reaches_every_logger_and_a_saved_automatic_version_is_renewed(tmp_path: Path) -> None:
    (tmp_path / "walker" / "version_0").mkdir(parents=True)
    loggers = _loggers(str(tmp_path), version="version_0")  # as in a run's saved config.yaml
    loggers[-1].init_args.name = "walker"  # what --trainer.logger.init_args.name reaches: the last logger
    place_loggers(loggers)
    assert _placed(loggers) == {(str(tmp_path), "walker", "version_1")}


def test_a_resumed_run_goes_on_in_its_own_directory(tmp_path: Path) -> None:
    run = tmp_path / "elsewhere" / "cheetah" / "version_7"
    loggers = _loggers()
    place_loggers(loggers, resume_in=run, default_root_dir=str(tmp_path / "ignored"))
    assert _placed(loggers) == {(str(tmp_path / "elsewhere"), "cheetah", "version_7")}


def test_a_checkpoint_belongs_to_the_run_whose_config_is_two_folders_up(tmp_path: Path) -> None:
    run = tmp_path / "mql" / "version_0"
    (run / "checkpoints").mkdir(parents=True)
    ckpt = run / "checkpoints" / "last.ckpt"
    ckpt.write_bytes(b"")
    assert config_beside(ckpt) == run.resolve() / "config.yaml"
    assert run_directory_of(ckpt) is None  # no config.yaml: not a run directory
    (run / "config.yaml").write_text("{}")
    assert run_directory_of(ckpt) == run.resolve()
    copied = tmp_path / "last.ckpt"
    copied.write_bytes(b"")
    assert run_directory_of(copied) is None and run_directory_of(tmp_path / "missing.ckpt") is None


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
    # The interrupted run wrote its events a while before the resume: TensorBoard reads the files in name order, and
    # names made in the same second are ordered by a per-process counter, which sorts "10" before "9".
    for events_file in Path(first.log_dir).glob("events.out.tfevents.*"):
        parts = events_file.name.split(".")
        parts[3] = str(int(parts[3]) - 60)
        events_file.rename(events_file.with_name(".".join(parts)))
    resumed = TensorBoardLogger(tmp_path, name="mql", version="version_0")
    continue_run_logs([resumed], _fake_checkpoint(tmp_path / "x.ckpt", 200))
    resumed.log_metrics({"a": 220.0}, step=220)
    resumed.finalize("success")
    events = EventAccumulator(resumed.log_dir)
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("a")] == [(100, 100.0), (200, 200.0), (220, 220.0)]
