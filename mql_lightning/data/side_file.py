"""The replay side file written next to every checkpoint (DESIGN decision 11)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def replay_path(checkpoint_path: str | os.PathLike[str]) -> Path:
    """The replay side file of a checkpoint: ``last.ckpt`` -> ``last.replay.pt`` in the same directory."""
    path = Path(checkpoint_path)
    return path.with_name(f"{path.stem}.replay.pt")


def save_replay(path: Path, env_steps: int, replay_state: dict[str, Any]) -> None:
    """Write a replay side file atomically: a temporary file in the same directory, then a rename.

    The file records the environment-step count of its checkpoint, so a mismatched pair is detected on load.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save({"env_steps": env_steps, "replay": replay_state}, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_replay(path: Path, env_steps: int) -> dict[str, Any]:
    """Read a replay side file and check that it belongs to a checkpoint taken at ``env_steps``.

    Raises:
        FileNotFoundError: If there is no side file.
        ValueError: If it was written at another step of training.
    """
    if not path.is_file():
        raise FileNotFoundError(
            f"replay side file {path} is missing; resuming and adaptation need the replay buffer saved with the "
            "checkpoint"
        )
    saved = torch.load(path, weights_only=True)
    if saved["env_steps"] != env_steps:
        raise ValueError(
            f"replay side file {path} was written at {saved['env_steps']} environment steps but its checkpoint at "
            f"{env_steps}: they do not belong together"
        )
    return saved["replay"]
