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
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._written: tuple[int, Path] | None = None

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        datamodule = trainer.datamodule
        replay = getattr(datamodule, "replay", None)
        if replay is None or not trainer.is_global_zero:
            return
        env_steps, target = datamodule.progress.env_steps, replay_path(filepath)
        if self._written is not None and self._written[0] == env_steps and self._written[1].exists():
            if self._written[1] != target:
                tmp = target.with_name(f".{target.name}.link")
                tmp.unlink(missing_ok=True)
                os.link(self._written[1], tmp)
                os.replace(tmp, target)
        else:
            save_replay(target, env_steps, replay.state_dict())
        self._written = (env_steps, target)

    def _remove_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        super()._remove_checkpoint(trainer, filepath)
        if trainer.is_global_zero:
            replay_path(filepath).unlink(missing_ok=True)
