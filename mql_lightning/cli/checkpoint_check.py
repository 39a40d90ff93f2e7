"""A checkpoint to load, checked before anything is written: readable, written by ``mql fit``, with its replay side
file, and fitting the model and data the config builds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mql_lightning.data.datamodule import MetaRLDataModule
from mql_lightning.data.side_file import check_side_file
from mql_lightning.run_directory import DEFAULT_NAME, DEFAULT_SAVE_DIR, config_beside

# Data settings that fix the layout of the replay buffer saved with a checkpoint: a run that loads the checkpoint must
# use the same values.
_REPLAY_LAYOUT = ("num_train_tasks", "replay_capacity", "history_length", "history_padding")


@dataclass
class CheckpointSummary:
    """What a checkpoint to load must agree with, read without loading its tensors.

    Attributes:
        path: The checkpoint.
        shapes: Shape of every tensor of its state dict.
        dims: The model's ``(obs_dim, action_dim)``.
        data: The DataModule's hyper-parameters (``env_id``, ``num_train_tasks``, ...).
    """

    path: Path
    shapes: dict[str, tuple[int, ...]]
    dims: tuple[int, int]
    data: dict[str, Any]

    @classmethod
    def read(cls, path: Path) -> CheckpointSummary:
        """Read a checkpoint written by ``mql fit`` and check its replay side file.

        Raises:
            FileNotFoundError: If the checkpoint or its side file does not exist.
            ValueError: If either cannot be read (truncated, not a checkpoint), the checkpoint was not written by
                ``mql fit``, or the side file belongs to another checkpoint.
        """
        if not path.is_file():
            raise FileNotFoundError(
                f"checkpoint {path} {'is not a file' if path.exists() else 'does not exist'}: pass a .ckpt written by "
                f"`mql fit`, e.g. {DEFAULT_SAVE_DIR}/{DEFAULT_NAME}/version_0/checkpoints/last.ckpt"
            )
        fix = "pass a complete .ckpt written by `mql fit` (every run keeps checkpoints/last.ckpt)"
        ckpt = load_lazily(path, f"checkpoint {path}", fix)
        try:
            hparams, progress = ckpt["hyper_parameters"], ckpt[MetaRLDataModule.__name__]["progress"]
            summary = cls(
                path,
                {key: tuple(value.shape) for key, value in ckpt["state_dict"].items()},
                (int(hparams["obs_dim"]), int(hparams["action_dim"])),
                dict(ckpt["datamodule_hyper_parameters"]),
            )
            env_steps = int(progress["env_steps"])
        except (KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"checkpoint {path} was not written by `mql fit` (it has no {err}): {fix}") from err
        check_side_file(path, env_steps)
        return summary

    def check_fits(self, model: Any, datamodule: MetaRLDataModule) -> None:
        """Check that the model and DataModule built from the config can load this checkpoint.

        Raises:
            ValueError: If the task family's dimensions, the replay layout or any tensor's shape differ.
        """
        run_config = config_beside(self.path)
        fix = f"pass the run's own config (--config {run_config})" if run_config.is_file() else "pass the run's config"
        dims = (datamodule.obs_dim, datamodule.action_dim)
        if dims != self.dims:
            raise ValueError(
                f"checkpoint {self.path} was written for {self.data.get('env_id')} (obs_dim {self.dims[0]}, "
                f"action_dim {self.dims[1]}) but the config builds {datamodule.env_id} (obs_dim {dims[0]}, action_dim "
                f"{dims[1]}): {fix} or --data.env_id {self.data.get('env_id')}"
            )
        for key in _REPLAY_LAYOUT:
            if key in self.data and self.data[key] != datamodule.hparams[key]:
                raise ValueError(
                    f"checkpoint {self.path} was written with data.{key}={self.data[key]} but the config has "
                    f"{datamodule.hparams[key]}, so its replay buffer does not fit: {fix} or --data.{key} "
                    f"{self.data[key]}"
                )
        shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
        for key in sorted(shapes.keys() | self.shapes.keys()):
            if shapes.get(key) != self.shapes.get(key):
                raise ValueError(
                    f"checkpoint {self.path} does not fit the model the config builds ({key}: "
                    f"{_shape(self.shapes.get(key))} in the checkpoint, {_shape(shapes.get(key))} in the model): {fix}"
                )


def load_lazily(path: Path, what: str, fix: str) -> dict[str, Any]:
    """``torch.load`` with memory-mapped tensors (nothing large is read), any failure as one ``ValueError``."""
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except PermissionError as err:
        raise ValueError(f"{what} cannot be read ({err.strerror}): check its permissions") from err
    except Exception as err:  # zip, pickle, OS and torch errors alike (their messages say little): a broken file
        raise ValueError(f"{what} cannot be read: it is truncated or not a torch file; {fix}") from err
    if not isinstance(loaded, dict):
        raise ValueError(f"{what} holds a {type(loaded).__name__}, not a checkpoint: {fix}")
    return loaded


def _shape(shape: tuple[int, ...] | None) -> str:
    return "absent" if shape is None else f"shape {list(shape)}"
