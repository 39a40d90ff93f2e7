"""Checkpoints that carry the meta-training replay buffer in a side file, written atomically, saved on SIGTERM and
SIGINT (``docs/design.md#checkpoints-and-side-files``)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from mql_lightning import interrupt, lightning_internals
from mql_lightning.data.contracts import CheckpointedData, MetaLearner, require
from mql_lightning.data.side_file import (
    atomic_save,
    drop_previous,
    keep_previous,
    link_atomically,
    replay_path,
    save_replay,
)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's default checkpoint writer, made atomic for local files (:func:`~mql_lightning.data.side_file.
    atomic_save`); remote URLs are written as Lightning writes them."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        """Write ``checkpoint`` to ``path`` through a temporary file in the same directory and a rename."""
        if storage_options is None and get_filesystem(path).protocol in ("file", ("file", "local")):
            atomic_save(checkpoint, path)
        else:
            super().save_checkpoint(checkpoint, path, storage_options)


class ReplayCheckpoint(ModelCheckpoint):
    """:class:`~lightning.pytorch.callbacks.ModelCheckpoint` that also saves the replay buffer next to each checkpoint.

    The ``.ckpt`` holds only what loads with ``weights_only=True`` (weights, optimisers, counters, RNG states); the
    replay buffer, which adaptation and resuming need, goes to ``<name>.replay.pt`` beside it, with the environment
    step count so a mismatched pair is detected on load. When two checkpoints are saved at the same step (``best``
    and ``last``), the second side file is a hard link to the first instead of a second copy. ``last.ckpt`` is saved
    at the end of every validation, so it is always the latest state.

    **Atomic pairs.** Every file is written to a temporary name and renamed into place (the Trainer's checkpoint
    writer is replaced by :class:`AtomicCheckpointIO` when it is Lightning's default). The side file is replaced
    first, keeping its previous version beside it until the new ``.ckpt`` is in place, so a ``kill -9`` at any moment
    leaves a loadable pair (:mod:`mql_lightning.data.side_file`). The loggers are flushed with every checkpoint: the
    metrics up to a checkpoint are on the disk when it is. A state with a non-finite loss or parameter is never
    saved (the model's ``check_finite`` is asked first).

    **Interruption** (``save_on_interrupt``). During ``fit``, SIGTERM and SIGINT ask training to stop
    (:mod:`mql_lightning.interrupt`); at the next safe point (after the current update, between two warm-up
    episodes, between two adaptation updates, or once a checkpoint being written is complete) this saves ``last.ckpt``
    and its side file, prints where they are and how to resume, and the process exits with ``128 + signal number``.
    A validation is abandoned, not half-logged: the checkpoint is the state from before it, and resuming runs it
    again. A second signal stops at once without saving (the previous pair stays loadable).

    Under several processes (``docs/design.md#several-processes``) Lightning writes the ``.ckpt`` from rank 0, and every
    rank writes its own shard, ``<name>.replay.rank<r>.pt``: the replay of its training tasks, their global ids, and the
    rank's own random streams (its DataModule's and its model's), which the DataModule restores when resuming on as many
    processes. The ranks wait for each other's shards before going on, so a checkpoint is complete once any rank
    has moved past it. A stop request is shared by the ranks after every update (one all-reduce of one number), so
    all of them stop at the same update; a validation under way is then finished first.

    Args:
        save_on_interrupt: Save ``last.ckpt`` and its side file on SIGTERM or SIGINT during ``fit``, then exit.
        *args: Positional arguments of ``ModelCheckpoint``.
        **kwargs: Keyword arguments of ``ModelCheckpoint``.
    """

    def __init__(self, *args: Any, save_on_interrupt: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.save_on_interrupt = save_on_interrupt
        self._written: tuple[int, Path] | None = None
        # (global step, environment steps) of the state in last.ckpt: an interruption right after it saves nothing.
        self._last_state: tuple[int, int] | None = None
        # The checkpoint of the moment the running validation began (see on_validation_start).
        self._before_validation: dict[str, Any] | None = None
        self._restore_signals: Any = None
        self._resumed_from: str | None = None

    # ------------------------------------------------------------------------------------------------ lifecycle
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Resolve the directory as ``ModelCheckpoint`` does; make the Trainer's checkpoint writes atomic."""
        super().setup(trainer, pl_module, stage)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        """Note where the checkpoint being restored lies (see :meth:`load_state_dict`, which Lightning calls next)."""
        super().on_load_checkpoint(trainer, pl_module, checkpoint)
        self._resumed_from = trainer.ckpt_path if trainer.state.fn == "fit" else None

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore as ``ModelCheckpoint`` does, also when the run resumes in its own directory spelt differently.

        ``ModelCheckpoint`` keeps its bookkeeping (best score, ``last`` path) only if the directory is spelt exactly
        as when it was saved; a run resumed from another working directory (its directory then given as an absolute
        path) would otherwise start a ``last-v1.ckpt`` beside ``last.ckpt``. The checkpoint being resumed from lies
        in this callback's directory: the paths it recorded are moved there.
        """
        saved, resumed_from = state_dict.get("dirpath"), self._resumed_from
        if resumed_from is None:
            # `mql validate` / `mql test`: this run saves no checkpoint, and the training run's record of its best and
            # last checkpoints (in another directory) means nothing here.
            return
        if (
            saved is not None and self.dirpath is not None and saved != self.dirpath and resumed_from is not None
            and Path(resumed_from).resolve().parent == Path(self.dirpath).resolve()
        ):
            moved = lambda old: str(Path(self.dirpath) / Path(old).name) if old else old  # noqa: E731
            state_dict = {
                **state_dict,
                "dirpath": self.dirpath,
                "best_model_path": moved(state_dict.get("best_model_path")),
                "kth_best_model_path": moved(state_dict.get("kth_best_model_path")),
                "last_model_path": moved(state_dict.get("last_model_path")),
                "best_k_models": {moved(k): v for k, v in state_dict.get("best_k_models", {}).items()},
            }
        super().load_state_dict(state_dict)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Take over SIGTERM and SIGINT (Lightning's own handling would stop without saving, or not at once)."""
        if self.save_on_interrupt and self._restore_signals is None:
            # Under several processes only the points all ranks reach together may act on a request.
            self._restore_signals = interrupt.install_handlers(anywhere=trainer.world_size == 1)
            if trainer.received_sigterm:  # caught by Lightning's handler before ours took over
                interrupt.request_stop(signal.SIGTERM, anywhere=trainer.world_size == 1)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Save ``last`` if needed, as ``ModelCheckpoint`` does, and give the signals back."""
        super().on_train_end(trainer, pl_module)
        self._give_back_signals()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Give the signals back (if training ended some other way)."""
        self._give_back_signals()

    def _give_back_signals(self) -> None:
        if self._restore_signals is not None:
            self._restore_signals()
            self._restore_signals = None

    # ---------------------------------------------------------------------------------------------- safe points
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Save as ``ModelCheckpoint`` does; then act on a stop request (the update is complete)."""
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self._stop_if_requested(trainer)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Keep the checkpoint of this moment: the one to save if the validation is interrupted.

        Nothing is copied (the state dicts refer to the live tensors, which a validation does not change: it adapts
        copies, and evaluates with streams of its own), and the DataModule's schedule still has this validation
        ahead, so resuming from it validates again.
        """
        if self.save_on_interrupt and trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._before_validation = lightning_internals.dump_checkpoint(trainer, self.save_weights_only)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Save as ``ModelCheckpoint`` does, then ``last`` if it did not: ``last.ckpt`` is always the latest state.

        Then act on a stop request that arrived while the checkpoint was written (it is the state to resume from).
        """
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_latest(trainer)
        self._before_validation = None
        self._stop_if_requested(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Save as ``ModelCheckpoint`` does, then ``last`` if it did not (see :meth:`on_validation_end`)."""
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_latest(trainer)

    def _save_latest(self, trainer: L.Trainer) -> None:
        # Lightning 2.6 writes last.ckpt only when it also wrote a top-k checkpoint at that step, so after a
        # validation that is not the best so far, last.ckpt (the one to resume and adapt from) would lag behind.
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        self._save_pair(trainer, filepath)

    def _save_pair(self, trainer: L.Trainer, filepath: str, checkpoint: dict[str, Any] | None = None) -> None:
        """Write a checkpoint and its side file so that a loadable pair is on the disk at every instant.

        Args:
            trainer: The trainer.
            filepath: The ``.ckpt`` to write.
            checkpoint: What to write; ``None`` for the current state (``ModelCheckpoint``'s own save).
        """
        # Raises before anything is written: a diverged state never replaces a good one.
        require(trainer.lightning_module, MetaLearner, "LightningModule").check_finite()
        side = self._save_side_file(trainer, filepath)
        if checkpoint is None:
            super()._save_checkpoint(trainer, filepath)
        else:
            trainer.strategy.save_checkpoint(checkpoint, filepath)
            trainer.strategy.barrier("ReplayCheckpoint._save_pair")
        if side is not None:
            drop_previous(side)
        if Path(filepath).stem == self.CHECKPOINT_NAME_LAST:
            self._last_state = _state_of(trainer)
        for logger in trainer.loggers:
            logger.save()

    def _save_side_file(self, trainer: L.Trainer, filepath: str) -> Path | None:
        """Replace this rank's side file of ``filepath``, keeping the previous one until the ``.ckpt`` is replaced."""
        datamodule = require(trainer.datamodule, CheckpointedData, "DataModule")
        replay = datamodule.replay
        if replay is None:
            return None
        rank, world_size = trainer.global_rank, trainer.world_size
        env_steps, target = datamodule.progress.env_steps, replay_path(filepath, rank, world_size)
        keep_previous(target)
        try:
            if self._written is not None and self._written[0] == env_steps and self._written[1].exists():
                if self._written[1] != target:
                    link_atomically(self._written[1], target)
            else:
                save_replay(target, env_steps, replay.state_dict(), _shard(trainer, datamodule))
        except BaseException:
            drop_previous(target)  # the side file was not replaced: the copy kept of it is not needed
            raise
        self._written = (env_steps, target)
        if world_size > 1:
            # Every shard is in place before rank 0 replaces the .ckpt.
            trainer.strategy.barrier("ReplayCheckpoint._save_side_file")
        return target

    def _remove_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        super()._remove_checkpoint(trainer, filepath)
        # Every rank removes its own shard (the .ckpt itself is removed by rank 0 only).
        side = replay_path(filepath, trainer.global_rank, trainer.world_size)
        side.unlink(missing_ok=True)
        drop_previous(side)

    # ----------------------------------------------------------------------------------------------- interruption
    def _stop_if_requested(self, trainer: L.Trainer) -> None:
        """Raise :class:`~mql_lightning.interrupt.StopRequested` if a stop was requested on any rank."""
        if not self.save_on_interrupt or trainer.state.fn != "fit":
            return
        signum = interrupt.requested()
        if trainer.world_size > 1:
            # The same answer on every rank, so that they all stop after the same update.
            flag = torch.tensor(float(signum or 0), device=trainer.strategy.root_device)
            signum = int(trainer.strategy.reduce(flag, reduce_op="max").item()) or None
        if signum is not None:
            raise interrupt.StopRequested(signum)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        """On a stop request: save ``last.ckpt`` and its side file, and say where they are and how to resume.

        The signals get their handlers back only afterwards: until then a second signal has its default action and
        ends the process at once (the previous checkpoint stays whole: every write is atomic).
        """
        super().on_exception(trainer, pl_module, exception)
        try:
            if isinstance(exception, interrupt.StopRequested) and self.save_on_interrupt and self.dirpath is not None:
                self._save_on_interrupt(trainer, exception)
        finally:
            self._give_back_signals()

    def _save_on_interrupt(self, trainer: L.Trainer, exception: interrupt.StopRequested) -> None:
        """Save the state to resume from as ``last`` (unless ``last.ckpt`` already holds it) and print the message."""
        filepath = self.format_checkpoint_name(self._monitor_candidates(trainer), self.CHECKPOINT_NAME_LAST)
        # Recorded in this callback's state (as ModelCheckpoint does before saving "last"), so that the resumed run
        # writes last.ckpt again rather than a new last-v1.ckpt beside it.
        self.last_model_path = filepath
        if self._before_validation is not None:
            self._before_validation["callbacks"][self.state_key] = self.state_dict()
            self._save_pair(trainer, filepath, self._before_validation)
        elif self._last_state != _state_of(trainer) or not Path(filepath).is_file():
            self._save_pair(trainer, filepath, lightning_internals.dump_checkpoint(trainer, self.save_weights_only))
        self._before_validation = None
        if trainer.is_global_zero:
            where = f" at environment step {_data(trainer).progress.env_steps}"
            sides = [replay_path(filepath, rank, trainer.world_size).name for rank in range(trainer.world_size)]
            saved = " and ".join([filepath, *sides])
            print(
                f"mql: interrupted by {exception.signal_name}{where}; saved {saved}; resume with: "
                f"mql fit --ckpt_path {filepath}",
                file=sys.stderr,
                flush=True,
            )


def _data(trainer: L.Trainer) -> CheckpointedData:
    return require(trainer.datamodule, CheckpointedData, "DataModule")


def _state_of(trainer: L.Trainer) -> tuple[int, int]:
    """What identifies a training state: optimiser steps and environment steps."""
    return trainer.global_step, _data(trainer).progress.env_steps


def _shard(trainer: L.Trainer, datamodule: CheckpointedData) -> dict[str, Any] | None:
    """What a rank's side file records besides its replay under several processes; ``None`` on one device."""
    if trainer.world_size == 1:
        return None
    model = require(trainer.lightning_module, MetaLearner, "LightningModule")
    streams = {"datamodule": datamodule.rank_state_dict(), "model": model.rank_state_dict()}
    return {
        "rank": trainer.global_rank,
        "world_size": trainer.world_size,
        "tasks": list(datamodule.train_task_ids),
        "streams": streams,
    }
