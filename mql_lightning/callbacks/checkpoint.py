"""Checkpoints that carry the meta-training replay buffer in a side file (DESIGN decision 11)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from mql_lightning.data.side_file import replay_path, save_replay


class ReplayCheckpoint(ModelCheckpoint):
    """:class:`~lightning.pytorch.callbacks.ModelCheckpoint` that also saves the replay buffer next to each checkpoint.

    The ``.ckpt`` holds only what loads with ``weights_only=True`` (weights, optimisers, counters, RNG states); the
    replay buffer, which adaptation and resuming need, goes to ``<name>.replay.pt`` beside it, with the environment
    step count so a mismatched pair is detected on load. When two checkpoints are saved at the same step (``best``
    and ``last``), the second side file is a hard link to the first instead of a second copy. All arguments are
    those of ``ModelCheckpoint``.

    Under several processes (DESIGN decision 12) Lightning writes the ``.ckpt`` from rank 0, and every rank writes
    its own shard, ``<name>.replay.rank<r>.pt``: the replay of its training tasks, their global ids, and the rank's
    own random streams (its DataModule's and its model's), which the DataModule restores when resuming on as many
    processes. The ranks wait for each other's shards before going on, so a checkpoint is complete once any rank
    has moved past it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._written: tuple[int, Path] | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Save as ``ModelCheckpoint`` does, then ``last`` if it did not: ``last.ckpt`` is always the latest state."""
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_latest(trainer)

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
        super()._save_checkpoint(trainer, filepath)
        datamodule = trainer.datamodule
        replay = getattr(datamodule, "replay", None)
        if replay is None:
            return
        rank, world_size = trainer.global_rank, trainer.world_size
        env_steps, target = datamodule.progress.env_steps, replay_path(filepath, rank, world_size)
        if self._written is not None and self._written[0] == env_steps and self._written[1].exists():
            if self._written[1] != target:
                tmp = target.with_name(f".{target.name}.link")
                tmp.unlink(missing_ok=True)
                os.link(self._written[1], tmp)
                os.replace(tmp, target)
        else:
            save_replay(target, env_steps, replay.state_dict(), _shard(trainer, datamodule))
        self._written = (env_steps, target)
        if world_size > 1:
            trainer.strategy.barrier("ReplayCheckpoint._save_checkpoint")

    def _remove_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        super()._remove_checkpoint(trainer, filepath)
        # Every rank removes its own shard (the .ckpt itself is removed by rank 0 only).
        replay_path(filepath, trainer.global_rank, trainer.world_size).unlink(missing_ok=True)


def _shard(trainer: L.Trainer, datamodule: Any) -> dict[str, Any] | None:
    """What a rank's side file records besides its replay under several processes; ``None`` on one device."""
    if trainer.world_size == 1:
        return None
    streams = {"datamodule": datamodule.rank_state_dict()}
    module = trainer.lightning_module
    if hasattr(module, "rank_state_dict"):
        streams["model"] = module.rank_state_dict()
    return {
        "rank": trainer.global_rank,
        "world_size": trainer.world_size,
        "tasks": list(datamodule.train_task_ids),
        "streams": streams,
    }
