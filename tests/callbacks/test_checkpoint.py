"""Checkpoints with their replay side files, end to end: a full disk stops a run with one line and loses nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any, BinaryIO

import pytest

from mql_lightning.data import side_file
from tests.helpers.files import FullDisk
from tests.helpers.runs import assert_same_run, checkpoint, fit, resume


def test_a_full_disk_while_saving_a_checkpoint_is_one_line_and_the_previous_pair_resumes(
    straight_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write = side_file._write_file

    def disk_full_at_400(obj: Any, file: BinaryIO, path: Path) -> None:
        # The replay side file of step 400 fits; last.ckpt does not: the worst moment for the pair.
        if path.name == "last.ckpt" and obj["MetaRLDataModule"]["progress"]["env_steps"] == 400:
            file = FullDisk(file, 4096)
        write(obj, file, path)

    monkeypatch.setattr(side_file, "_write_file", disk_full_at_400)
    with pytest.raises(SystemExit) as exit_info:
        fit(tmp_path)
    monkeypatch.undo()
    assert exit_info.value.code == 1
    run = tmp_path / "mql" / "version_0"
    last = run / "checkpoints" / "last.ckpt"
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("mql:")]
    assert lines == [
        f"mql: error: cannot write {last}: no space left on device; the file there before (if any) is unchanged"
    ]
    assert checkpoint(run)["MetaRLDataModule"]["progress"]["env_steps"] == 200  # the previous pair, whole
    resume(run)
    assert_same_run(run, straight_run)
