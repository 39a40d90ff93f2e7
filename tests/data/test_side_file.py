"""Replay side files: the write protocol state by state, and writes that fail (a full disk) without losing anything."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from mql_lightning.data import side_file
from mql_lightning.data.side_file import (
    WriteError,
    atomic_save,
    check_side_file,
    drop_previous,
    keep_previous,
    load_side_file,
    matching_side_file,
    previous_path,
    replay_path,
    save_replay,
)
from tests.helpers.files import FullDisk


def full_disk(monkeypatch: pytest.MonkeyPatch, room: int) -> None:
    """Every file the side-file writer opens from now on is on a disk with ``room`` bytes left."""
    monkeypatch.setattr(side_file, "_open_for_writing", lambda fd, mode: FullDisk(os.fdopen(fd, "wb"), room))


def _replay_state(steps: int) -> dict[str, Any]:
    return {"steps": torch.full((3,), float(steps))}


# --------------------------------------------------------------------------------------------------------------
# The write protocol, state by state
# --------------------------------------------------------------------------------------------------------------
def test_every_state_of_a_pair_replacement_has_a_matching_side_file(tmp_path: Path) -> None:
    """Replacing the pair at 200 by the one at 400, as ReplayCheckpoint does; each state is what a kill leaves."""
    side = replay_path(tmp_path / "last.ckpt")
    save_replay(side, 200, _replay_state(200))
    assert matching_side_file(side, 200) == side  # before: the old pair
    keep_previous(side)
    assert matching_side_file(side, 200) == side
    save_replay(side, 400, _replay_state(400))
    # The new side file is in place, the checkpoint is still the old one: its side file is the one kept.
    assert matching_side_file(side, 200) == previous_path(side)
    assert load_side_file(side, 200)["replay"]["steps"][0] == 200
    assert matching_side_file(side, 400) == side  # the new checkpoint is in place too
    drop_previous(side)
    assert matching_side_file(side, 400) == side
    with pytest.raises(ValueError, match="written at 400 environment steps but its checkpoint at 200"):
        matching_side_file(side, 200)


def test_atomic_save_never_leaves_a_partial_file_and_clears_what_a_killed_writer_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "last.ckpt"
    atomic_save({"a": torch.ones(2)}, target)
    stale = tmp_path / ".last.ckpt.killed.tmp"
    stale.write_bytes(b"half")  # what a process killed mid-write leaves

    def fail(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", fail)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"a": torch.zeros(2)}, target)
    monkeypatch.undo()
    assert torch.equal(torch.load(target, weights_only=True)["a"], torch.ones(2))  # the old file, whole
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file, the stale one gone too


# --------------------------------------------------------------------------------------------------------------
# A full disk
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("room", [0, 100, 5_000])  # before the first byte, in the header, in the tensor data
def test_a_full_disk_is_one_write_error_naming_the_file_and_the_cause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, room: int
) -> None:
    target = tmp_path / "last.ckpt"
    atomic_save({"a": torch.ones(3)}, target)
    full_disk(monkeypatch, room)
    with pytest.raises(WriteError) as error:
        atomic_save({"a": torch.zeros(10_000)}, target)
    assert str(error.value) == (
        f"cannot write {target}: no space left on device; the file there before (if any) is unchanged"
    )
    assert error.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert torch.equal(torch.load(target, weights_only=True)["a"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_a_side_file_that_cannot_be_written_leaves_the_previous_pair_loadable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    side = replay_path(tmp_path / "last.ckpt")
    save_replay(side, 200, _replay_state(200))
    keep_previous(side)
    full_disk(monkeypatch, 50)
    with pytest.raises(WriteError, match=r"last\.replay\.pt: no space left on device"):
        save_replay(side, 400, _replay_state(400))
    monkeypatch.undo()
    assert load_side_file(side, 200)["replay"]["steps"][0] == 200
    assert check_side_file(tmp_path / "last.ckpt", 200) == side
