"""The run directory: one folder per command, ``<save_dir>/<name>/<version>/``, that says everything about a run.

It holds the resolved ``config.yaml``, the metrics (``metrics.csv`` and TensorBoard events), ``hparams.yaml`` and
``checkpoints/`` with every checkpoint and its replay side file (``docs/design.md#run-directories``). This module owns
its layout and its life cycle:

* where a new run goes (:func:`place_loggers`: every logger in the same fresh ``version_N``, under
  ``--trainer.default_root_dir`` when given);
* which run a checkpoint belongs to and where that run's config is (:func:`run_directory_of`, :func:`config_beside`);
* how a resumed run goes on in its own directory (:func:`place_loggers` with ``resume_in``, :func:`continue_run_logs`
  for the metrics, :class:`SaveConfigOnResume` for ``config.yaml``).
"""

from __future__ import annotations

import csv
import os
import re
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_only

from mql_lightning import lightning_internals

DEFAULT_SAVE_DIR = "runs"
"""Where runs go unless ``--trainer.logger.init_args.save_dir`` or ``--trainer.default_root_dir`` say otherwise."""
DEFAULT_NAME = "mql"
"""The run name (the folder under ``save_dir``) unless ``--trainer.logger.init_args.name`` says otherwise."""
CONFIG_FILE = "config.yaml"
CHECKPOINT_DIR = "checkpoints"


def config_beside(checkpoint_path: str | os.PathLike[str]) -> Path:
    """Where the config of the run that wrote a checkpoint is: ``<run>/config.yaml`` for ``<run>/checkpoints/x.ckpt``.

    The file need not exist (a checkpoint copied out of its run).
    """
    return Path(checkpoint_path).resolve().parent.parent / CONFIG_FILE


def run_directory_of(checkpoint_path: str | os.PathLike[str]) -> Path | None:
    """The run directory a checkpoint belongs to, as an absolute path.

    ``None`` for a checkpoint outside a run directory (not in a ``checkpoints/`` folder beside a ``config.yaml``) or a
    path that is not a file.
    """
    path = Path(checkpoint_path)
    if not path.is_file():
        return None
    config = config_beside(path)
    return config.parent if path.resolve().parent.name == CHECKPOINT_DIR and config.is_file() else None


def place_loggers(loggers: Any, resume_in: Path | None = None, default_root_dir: str | None = None) -> None:
    """Give every configured logger the same run directory ``<save_dir>/<name>/<version>`` (in the parsed config).

    TensorBoard and CSV loggers pick their versions independently and can disagree, and a command-line override
    such as ``--trainer.logger.init_args.name X`` reaches only the last of them: the last value that differs from
    the default is taken for all (so the command line wins over a config such as a run's ``config.yaml``, which
    gives every logger the same values). ``save_dir`` left at its default becomes ``default_root_dir`` when that is
    given, as a Lightning user expects of ``--trainer.default_root_dir``.

    A new run gets the next free ``version_N``: an automatic version (``version_N``, e.g. from a saved
    ``config.yaml``) is replaced by a new one, so nothing of an earlier run is overwritten; a version you named
    yourself is kept. A resumed run (``resume_in``) goes on in its own directory, wherever the command is started.

    Args:
        loggers: ``config.trainer.logger``: a list of ``class_path``/``init_args`` namespaces (anything else, e.g.
            ``False``, is left alone).
        resume_in: The run directory to continue, if resuming training.
        default_root_dir: ``config.trainer.default_root_dir``.
    """
    args = [lg.init_args for lg in loggers if hasattr(lg, "init_args")] if isinstance(loggers, list) else []
    if not args:
        return
    if resume_in is not None:
        for a in args:
            if "save_dir" in a:
                a.save_dir, a.name, a.version = str(resume_in.parent.parent), resume_in.parent.name, resume_in.name
        return
    save_dir_default = default_root_dir if default_root_dir is not None else DEFAULT_SAVE_DIR
    for key, default in (("save_dir", DEFAULT_SAVE_DIR), ("name", DEFAULT_NAME), ("version", None)):
        values = [getattr(a, key) for a in args if key in a]
        chosen = next((v for v in reversed(values) if v != default), save_dir_default if key == "save_dir" else default)
        for a in args:
            if key in a:
                setattr(a, key, chosen)
    version = getattr(args[0], "version", None)
    if version is None or re.fullmatch(r"version_\d+", str(version)):
        root = Path(args[0].save_dir) / (getattr(args[0], "name", None) or "")
        taken = [p.name.removeprefix("version_") for p in root.glob("version_*")]
        version = f"version_{max((int(t) for t in taken if t.isdigit()), default=-1) + 1}"
        for a in args:
            if "version" in a:
                a.version = version


@rank_zero_only  # the loggers write from the first process only; the others must not touch the files
def continue_run_logs(loggers: Iterable[Logger], checkpoint_path: str | os.PathLike[str]) -> None:
    """Make the loggers of a resumed run continue its records in its run directory, before they write anything.

    Lightning's ``CSVLogger`` deletes the ``metrics.csv`` it finds when it opens a run directory again, and
    TensorBoard would show the events logged after the checkpoint (work lost with the interruption, which the
    resumed run does again) beside the new ones. So the CSV rows and the events up to the checkpoint's environment
    step are kept and later ones dropped (TensorBoard's own ``purge_step`` mechanism for events); new rows are
    appended. While the CSV is rewritten, the original stays on the disk as ``.metrics.csv.resuming`` (and is used
    if a resume was killed in the middle of this).

    Args:
        loggers: The Trainer's loggers (others than CSV and TensorBoard are left alone).
        checkpoint_path: The checkpoint resumed from; its environment-step count is the loggers' x-axis.
    """
    # Memory-mapped: only the counters are read.
    checkpoint = torch.load(checkpoint_path, weights_only=True, mmap=True, map_location="cpu")
    progress = next((v["progress"] for v in checkpoint.values() if isinstance(v, dict) and "progress" in v), None)
    if progress is None:
        return
    env_steps = int(progress["env_steps"])
    for logger in loggers:
        if isinstance(logger, CSVLogger):
            _continue_csv(logger, env_steps)
        elif isinstance(logger, TensorBoardLogger):
            lightning_internals.set_tensorboard_purge_step(logger, env_steps + 1)


def _continue_csv(logger: CSVLogger, env_steps: int) -> None:
    metrics = Path(logger.log_dir) / "metrics.csv"
    backup = metrics.with_name(f".{metrics.name}.resuming")
    if metrics.is_file():
        os.replace(metrics, backup)  # nothing left for the logger to delete
    if not backup.is_file():
        return
    with open(backup, newline="") as file:
        reader = csv.DictReader(file)
        header = list(reader.fieldnames or [])
        rows = [row for row in reader if _row_step(row) <= env_steps]
    with warnings.catch_warnings():
        # "Previous log files in this directory will be deleted": not so, they were just moved aside.
        warnings.filterwarnings("ignore", message=r".*exists and is not empty.*")
        writer = logger.experiment
    tmp = metrics.with_name(f".{metrics.name}.tmp")
    with open(tmp, "w", newline="") as file:
        out = csv.DictWriter(file, fieldnames=header)
        out.writeheader()
        out.writerows(rows)
    os.replace(tmp, metrics)
    backup.unlink()
    # Appended under the same header from now on (a new metric rewrites the file with a wider one, as usual).
    writer.metrics_keys = header
    rank_zero_info(f"Continuing {metrics} after environment step {env_steps} ({len(rows)} rows kept)")


def _row_step(row: dict[str, str]) -> float:
    try:
        return float(row.get("step") or 0.0)
    except ValueError:
        return 0.0


class SaveConfigOnResume(SaveConfigCallback):
    """LightningCLI's config saver for a resumed run: replaces the run's ``config.yaml`` once training starts.

    Lightning's writes it at setup, before the checkpoint is restored: a resume refused then (e.g. on another number
    of processes) would have replaced the configuration the run was trained with. Pass ``overwrite=True``.
    """

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Nothing yet (see :meth:`on_train_start`)."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The checkpoint is restored: record the configuration the run goes on with (e.g. a larger budget).

        Without ``ckpt_path``: the file describes the run, not the command that resumed it, so that ``mql fit --config
        <run>/config.yaml`` starts a new run from it, as with the config of a run never resumed.
        """
        if "ckpt_path" in self.config:
            self.config = self.config.clone()
            self.config.ckpt_path = None
        super().setup(trainer, pl_module, "fit")
