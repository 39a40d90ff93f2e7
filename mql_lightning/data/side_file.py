"""The replay side files written next to every checkpoint (DESIGN decisions 11 and 12).

A single-device run writes one file, ``<checkpoint>.replay.pt``. Under a multi-process strategy (DDP) every rank
holds its own share of the training tasks in its own buffer (DESIGN decision 12), so every rank writes its own shard,
``<checkpoint>.replay.rank<r>.pt``, holding the global ids of its tasks and its random streams as well; resuming on the
same number of processes gives each rank its own shard back. A run on another number of processes (``mql test`` on
one device after training on several, or the reverse) gets the union of the shards, re-split by task.

Every file is written atomically (:func:`atomic_save`: a temporary file in the same directory, flushed to the disk,
then renamed into place), so a process killed at any moment leaves either the old file or the new one, never a torn
one. A checkpoint and its side file are two files, replaced one after the other: the side file goes first, and the
one it replaces is kept as ``<name>.prev.pt`` until the new checkpoint is in place (:func:`keep_previous`). Both record
the environment-step count, and the loader takes whichever of the two side files matches the checkpoint, so the pair
on the disk is loadable at every instant (DESIGN decision 11).
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

# The per-task storage of a replay state dict (EpisodeReplay, state version 2): rows stored task after task, each
# task's rows being the first ``size[k]`` slots of its ring.
_ROW_KEYS = ("entry", "next_obs", "terminated", "step")
_DIM_KEYS = ("version", "capacity_per_task", "obs_dim", "action_dim", "history_length")
# Only in the states of buffers whose windows hold the episodes' start entries (data.history_padding).
_START_ROW_KEY, _START_KEYS = "start_action", ("history_padding",)


@dataclass
class LoadedReplay:
    """A replay state read for a set of tasks, and where it came from.

    Attributes:
        state: The replay state dict (an :meth:`EpisodeReplay.state_dict`) holding exactly the requested tasks, in
            the requested order.
        world_size: Number of processes of the run that wrote the side files.
        streams: The reading rank's own random streams, saved with its shard; ``None`` unless the side files were
            written by a multi-process run with as many processes as are reading them.
    """

    state: dict[str, Any]
    world_size: int
    streams: dict[str, Any] | None = None


def replay_path(checkpoint_path: str | os.PathLike[str], rank: int = 0, world_size: int = 1) -> Path:
    """The replay side file of a checkpoint for one rank.

    ``last.ckpt`` -> ``last.replay.pt`` in the same directory on a single device; ``last.replay.rank<r>.pt`` for rank
    ``r`` of a multi-process run (rank 0 included, so that a shard is never mistaken for a whole buffer).
    """
    path = Path(checkpoint_path)
    name = "replay.pt" if world_size == 1 else f"replay.rank{rank}.pt"
    return path.with_name(f"{path.stem}.{name}")


def save_replay(path: Path, env_steps: int, replay_state: dict[str, Any], shard: dict[str, Any] | None = None) -> None:
    """Write a replay side file atomically: a temporary file in the same directory, then a rename.

    The file records the environment-step count of its checkpoint, so a mismatched pair is detected on load.

    Args:
        path: The side file (see :func:`replay_path`).
        env_steps: Environment steps of the checkpoint (the global count under DDP, identical on every rank).
        replay_state: The buffer's state dict.
        shard: For one rank of a multi-process run: ``rank``, ``world_size``, ``tasks`` (the global ids of the
            buffer's tasks, in buffer order) and ``streams`` (the rank's own random-stream states).
    """
    payload: dict[str, Any] = {"env_steps": env_steps, "replay": replay_state}
    if shard is not None:
        payload["shard"] = shard
    atomic_save(payload, path)


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` that never leaves a partial file at ``path``, even if the process is killed mid-write.

    The object is written to a temporary file in the same directory (a rename is atomic only within one file
    system; Lightning's own ``_atomic_save`` stages in the system's temporary directory and falls back to a copy
    across file systems), flushed to the disk, and renamed over ``path``; the directory is flushed too, so that the
    rename survives a power loss. Temporary files left by a process killed earlier are removed first.

    Args:
        obj: What ``torch.save`` accepts.
        path: The destination.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # not supported here (e.g. Windows): the rename is still atomic, only not yet durable
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def previous_path(path: str | os.PathLike[str]) -> Path:
    """Where a side file's previous version is kept while its checkpoint is replaced: ``last.replay.pt`` ->
    ``last.replay.prev.pt``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def keep_previous(path: Path) -> None:
    """Keep the current side file at :func:`previous_path` (a hard link: no copy) before it is replaced.

    Call :func:`drop_previous` once the new checkpoint is in place. Until then a process killed between the two
    replacements leaves the old checkpoint with the old side file still beside it, which the loader finds.
    """
    if not path.is_file():
        return
    keep, tmp = previous_path(path), path.with_name(f".{previous_path(path).name}.link")
    tmp.unlink(missing_ok=True)
    try:
        os.link(path, tmp)
    except OSError:  # no hard links on this file system: a copy
        shutil.copyfile(path, tmp)
    os.replace(tmp, keep)


def drop_previous(path: Path) -> None:
    """Remove what :func:`keep_previous` kept."""
    previous_path(path).unlink(missing_ok=True)


def load_side_file(path: Path, env_steps: int) -> dict[str, Any]:
    """Read a replay side file and check that it belongs to a checkpoint taken at ``env_steps``.

    Returns:
        The whole file: ``env_steps``, ``replay`` and, for a shard, ``shard``.

    Raises:
        FileNotFoundError: If there is no side file.
        ValueError: If it was written at another step of training.
    """
    return torch.load(matching_side_file(path, env_steps), weights_only=True)


def matching_side_file(path: Path, env_steps: int) -> Path:
    """The side file to read for a checkpoint taken at ``env_steps``: ``path``, or the previous version kept beside
    it (:func:`keep_previous`) if only that one matches (a process killed while replacing the pair).

    Only the step counts are read (the tensors are memory-mapped, not loaded).

    Raises:
        FileNotFoundError: If there is no side file.
        ValueError: If neither file was written at ``env_steps``.
    """
    if not path.is_file():
        raise _missing(path)
    written = side_file_steps(path)
    if written == env_steps:
        return path
    previous = previous_path(path)
    if previous.is_file() and side_file_steps(previous) == env_steps:
        return previous
    raise ValueError(
        f"replay side file {path} was written at {written} environment steps but its checkpoint at {env_steps}: "
        "they do not belong together"
    )


def side_file_steps(path: Path) -> int | None:
    """The environment-step count a side file records, read without loading its tensors."""
    return torch.load(path, weights_only=True, mmap=True, map_location="cpu").get("env_steps")


def load_replay(path: Path, env_steps: int) -> dict[str, Any]:
    """The replay state of one side file, checked as :func:`load_side_file` does.

    Raises:
        FileNotFoundError: If there is no side file.
        ValueError: If it was written at another step of training.
    """
    return load_side_file(path, env_steps)["replay"]


def load_replay_for(
    checkpoint_path: str | os.PathLike[str], env_steps: int, tasks: Sequence[int], rank: int = 0, world_size: int = 1
) -> LoadedReplay:
    """The replay of the given training tasks, from the side file(s) of a checkpoint.

    The reading rank's own side file is used when it exists (the usual case: as many processes as wrote it).
    Otherwise every side file of the checkpoint is read, the whole buffer or all the shards, and the requested
    tasks are taken from their union: this is how one device reads a multi-process run, and the reverse.

    Args:
        checkpoint_path: The checkpoint.
        env_steps: Its environment-step count (every side file must match it).
        tasks: Global ids of the training tasks wanted, in the order of the reader's buffer.
        rank: The reading rank.
        world_size: The number of reading processes.

    Returns:
        The replay state of ``tasks``, the writers' number of processes and, when they were as many as the readers,
        this rank's saved random streams.

    Raises:
        FileNotFoundError: If a side file is missing.
        ValueError: If a side file was written at another step, or holds no data for a requested task.
    """
    tasks = [int(t) for t in tasks]
    own = replay_path(checkpoint_path, rank, world_size)
    if own.is_file():
        payload = load_side_file(own, env_steps)
        if _writers(payload) == world_size and _tasks_of(payload) == tasks:
            streams = payload["shard"].get("streams") if world_size > 1 else None
            return LoadedReplay(payload["replay"], world_size, streams)
    payloads = _all_side_files(checkpoint_path, env_steps, own)
    return LoadedReplay(_select(payloads, tasks), _writers(payloads[0]))


def _all_side_files(checkpoint_path: str | os.PathLike[str], env_steps: int, expected: Path) -> list[dict[str, Any]]:
    """Every side file of a checkpoint: the whole buffer, or all the shards of a multi-process run.

    Raises:
        FileNotFoundError: Naming ``expected`` (the reader's own side file) if there is none at all, or naming the
            missing shard if only some are there.
    """
    whole, first = replay_path(checkpoint_path), replay_path(checkpoint_path, 0, 2)
    if whole.is_file():
        return [load_side_file(whole, env_steps)]
    if not first.is_file():
        raise _missing(expected)
    payloads = [load_side_file(first, env_steps)]
    writers = _writers(payloads[0])
    return payloads + [load_side_file(replay_path(checkpoint_path, r, writers), env_steps) for r in range(1, writers)]


def _missing(path: Path) -> FileNotFoundError:
    return FileNotFoundError(
        f"replay side file {path} is missing; resuming and adaptation need the replay buffer saved with the "
        "checkpoint"
    )


def _writers(payload: dict[str, Any]) -> int:
    """Number of processes of the run that wrote a side file."""
    return int(payload["shard"]["world_size"]) if "shard" in payload else 1


def _tasks_of(payload: dict[str, Any]) -> list[int]:
    """Global task ids of a side file's buffer, in buffer order (a whole buffer holds every task)."""
    if "shard" in payload:
        return [int(t) for t in payload["shard"]["tasks"]]
    return list(range(int(payload["replay"]["num_tasks"])))


def _select(payloads: list[dict[str, Any]], tasks: list[int]) -> dict[str, Any]:
    """One replay state holding ``tasks`` (in that order), gathered from the buffers of several side files."""
    per_task: dict[int, dict[str, torch.Tensor]] = {}
    for payload in payloads:
        state = payload["replay"]
        if state.get("version") != 2:
            raise ValueError(f"cannot re-split replay state version {state.get('version')!r} (expected 2)")
        offsets = torch.cumsum(state["size"], 0) - state["size"]
        row_keys = (*_ROW_KEYS, _START_ROW_KEY) if _START_ROW_KEY in state else _ROW_KEYS
        for k, task in enumerate(_tasks_of(payload)):
            start, size = int(offsets[k]), int(state["size"][k])
            per_task[task] = {key: state[key][start : start + size] for key in row_keys}
            per_task[task].update(ptr=state["ptr"][k], size=state["size"][k])
    missing = [t for t in tasks if t not in per_task]
    if missing:
        raise ValueError(f"the replay side files of this checkpoint hold no buffer for training tasks {missing}")
    template = payloads[0]["replay"]
    merged: dict[str, Any] = {key: template[key] for key in (*_DIM_KEYS, *_START_KEYS) if key in template}
    merged["num_tasks"] = len(tasks)
    for key in (*_ROW_KEYS, _START_ROW_KEY) if _START_ROW_KEY in template else _ROW_KEYS:
        merged[key] = torch.cat([per_task[t][key] for t in tasks])
    for key in ("ptr", "size"):
        merged[key] = torch.stack([per_task[t][key] for t in tasks])
    return merged
