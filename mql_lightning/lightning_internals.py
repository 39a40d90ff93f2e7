"""Every use of Lightning's private API in mql-lightning, in one place (``docs/design.md#lightning``).

Each has no public equivalent in Lightning 2.5-2.7. A Lightning upgrade that removes or renames one breaks this module
alone, and ``tests/test_lightning_internals.py`` names what is gone. Wherever a public API exists, the code uses it.

Private names used:

* ``Trainer._checkpoint_connector.dump_checkpoint``: the checkpoint dict of the current state, without writing it
  (the state to save if a validation is interrupted is taken before the validation starts).
* ``TensorBoardLogger._kwargs`` and ``._experiment``: ``purge_step`` for the ``SummaryWriter`` a resumed run's logger
  is about to create (so that events logged after the checkpoint are dropped).
* ``DDPStrategy._ddp_kwargs``: ``find_unused_parameters`` for the DDP strategy Lightning picked by itself.
* ``ModelCheckpoint`` methods that :class:`~mql_lightning.callbacks.ReplayCheckpoint` overrides or calls to write a
  replay side file with every checkpoint (:data:`MODEL_CHECKPOINT_METHODS`).
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import DDPStrategy

MODEL_CHECKPOINT_METHODS = (
    "_save_checkpoint",  # (trainer, filepath): writes one checkpoint; overridden to write the side file first
    "_remove_checkpoint",  # (trainer, filepath): deletes one; overridden to delete its side file too
    "_save_last_checkpoint",  # (trainer, monitor_candidates): writes last.ckpt
    "_should_skip_saving_checkpoint",  # (trainer): sanity check, fast dev run, ...
    "_should_save_on_train_epoch_end",  # (trainer): whether saving happens at epoch end rather than validation end
    "_monitor_candidates",  # (trainer): the metrics a checkpoint name and "best" are decided from
)
"""Private ``ModelCheckpoint`` methods that ``ReplayCheckpoint`` overrides or calls."""


def dump_checkpoint(trainer: L.Trainer, weights_only: bool = False) -> dict[str, Any]:
    """The checkpoint dict of the trainer's current state, as ``trainer.save_checkpoint`` would write it."""
    return trainer._checkpoint_connector.dump_checkpoint(weights_only)


def set_tensorboard_purge_step(logger: TensorBoardLogger, step: int) -> None:
    """Make the logger's ``SummaryWriter`` drop events at ``step`` and later, if it is not created yet."""
    if logger._experiment is None:  # created on first use, with these keyword arguments (no public setter)
        logger._kwargs.setdefault("purge_step", step)


def find_unused_parameters(strategy: DDPStrategy) -> None:
    """Ask a DDP strategy (before the model is wrapped) to look for parameters a backward pass does not reach."""
    strategy._ddp_kwargs.setdefault("find_unused_parameters", True)


def missing() -> list[str]:
    """The private names this module relies on that the installed Lightning does not have (empty when all is well)."""
    gone = [f"ModelCheckpoint.{n}" for n in MODEL_CHECKPOINT_METHODS if not callable(getattr(ModelCheckpoint, n, None))]
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    if not callable(getattr(getattr(trainer, "_checkpoint_connector", None), "dump_checkpoint", None)):
        gone.append("Trainer._checkpoint_connector.dump_checkpoint")
    logger = TensorBoardLogger(save_dir=".", name="probe")
    for name in ("_kwargs", "_experiment"):
        if not hasattr(logger, name):
            gone.append(f"TensorBoardLogger.{name}")
    if not isinstance(getattr(DDPStrategy(), "_ddp_kwargs", None), dict):
        gone.append("DDPStrategy._ddp_kwargs")
    return gone
