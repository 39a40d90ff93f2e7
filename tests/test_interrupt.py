"""Interruption: SIGTERM and SIGINT save a checkpoint that resumes, and a process killed mid-write loses nothing.

Real ``mql fit`` processes get real signals: during training, and during the adaptation of a validation made to last
forever. A third process dies in the middle of writing ``last.ckpt`` (``os._exit`` inside the write: no clean-up
runs, as with ``kill -9``), after its new replay side file is already in place, the worst moment for the pair; the run
is then resumed from what is left and must end exactly like the uninterrupted run of ``test_resume.py``.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from mql_lightning.data.side_file import (
    previous_path,
    replay_path,
    side_file_steps,
)
from tests.helpers.callbacks import MARK, callback_arg
from tests.helpers.processes import RunningMql
from tests.helpers.runs import BUDGET, RESUME_ARGS, assert_same_run, checkpoint, fit, metrics_rows, resume

MESSAGE = re.compile(
    r"mql: interrupted by (SIG\w+) at environment step (\d+); saved (\S+/last\.ckpt) and last\.replay\.pt; "
    r"resume with: mql fit --ckpt_path (\S+)"
)


def start_mql(cwd: Path, *args: str, **env_vars: str) -> RunningMql:
    """Start ``mql fit`` of the exact-resume configuration in its own process (runs under ``cwd/runs``)."""
    return RunningMql(cwd, ["fit", *RESUME_ARGS, *args], **env_vars)


def interrupt(running: RunningMql, signum: int) -> tuple[re.Match, float]:
    """Send ``signum``; wait for the exit. The message, and the seconds from the signal to the message."""
    sent = time.monotonic()
    running.process.send_signal(signum)
    assert running.wait(timeout=60) == 128 + signum
    found = [(t, MESSAGE.search(line)) for t, line in running.lines if MESSAGE.search(line)]
    assert found, running.stderr()[-3000:]
    return found[0][1], found[0][0] - sent


def assert_loadable_pair(run: Path) -> int:
    """``last.ckpt`` loads with ``weights_only=True`` and its side file records the same step; that step."""
    ckpt = checkpoint(run)
    env_steps = ckpt["MetaRLDataModule"]["progress"]["env_steps"]
    assert side_file_steps(replay_path(run / "checkpoints" / "last.ckpt")) == env_steps
    assert not list((run / "checkpoints").glob(".*")), "temporary files left behind"
    assert not previous_path(replay_path(run / "checkpoints" / "last.ckpt")).exists()
    return env_steps


# --------------------------------------------------------------------------------------------------------------
# Signals to a real `mql fit`
# --------------------------------------------------------------------------------------------------------------
def test_sigterm_during_training_saves_within_seconds_and_resumes(tmp_path: Path) -> None:
    running = start_mql(
        tmp_path, "--data.max_env_steps=1000000", callback_arg("Mark", text="past", at="update", after=200)
    )
    run = tmp_path / "runs" / "mql" / "version_0"
    running.wait_for_line(f"{MARK} past")  # the validation at 200 and its checkpoint are done: training goes on
    message, latency = interrupt(running, signal.SIGTERM)
    assert latency < 5.0, latency
    name, step, saved, resume_from = message.groups()
    assert name == "SIGTERM" and Path(saved) == Path(resume_from) == Path("runs/mql/version_0/checkpoints/last.ckpt")
    env_steps = assert_loadable_pair(run)
    assert env_steps == int(step) > 200
    assert max(float(r["step"]) for r in metrics_rows(run)) <= env_steps

    resume(run, f"--data.max_env_steps={env_steps + 40}")
    assert checkpoint(run)["MetaRLDataModule"]["progress"]["env_steps"] == env_steps + 40
    assert [r for r in metrics_rows(run) if "val/return" in r][-1]["step"] == str(env_steps + 40)


def test_sigint_during_adaptation_abandons_the_validation_and_resuming_runs_it(tmp_path: Path) -> None:
    running = start_mql(
        tmp_path, "--data.max_env_steps=1000000", "--data.validate_at_start=false",
        "--adaptation.settings.replay_updates=100000000",  # the validation at 200 would adapt for days
        callback_arg("Mark", text="validating", at="validation_task"),
    )
    run = tmp_path / "runs" / "mql" / "version_0"
    running.wait_for_line(f"{MARK} validating")  # its evaluation, then its endless adaptation
    message, latency = interrupt(running, signal.SIGINT)
    assert latency < 5.0, latency
    assert message.group(1) == "SIGINT" and message.group(2) == "200"
    assert assert_loadable_pair(run) == 200
    assert checkpoint(run)["MetaRLDataModule"]["progress"]["next_validation_at"] == 200  # still to do
    assert not [r for r in metrics_rows(run) if "val/return" in r]

    resume(run, "--data.max_env_steps=200", "--adaptation.settings.replay_updates=3")
    assert [r["step"] for r in metrics_rows(run) if "val/return" in r] == ["200"]


# --------------------------------------------------------------------------------------------------------------
# A process killed while writing, resumed from what is left
# --------------------------------------------------------------------------------------------------------------
def test_killed_while_writing_the_checkpoint_resumes_from_the_previous_pair_exactly(
    straight_run: Path, tmp_path: Path
) -> None:
    running = start_mql(
        tmp_path, f"--data.max_env_steps={BUDGET}", callback_arg("DieWhileWriting", env_steps=400), MQL_TEST_DIE="1"
    )
    assert running.wait(timeout=300) == 137
    run = tmp_path / "runs" / "mql" / "version_0"
    side = replay_path(run / "checkpoints" / "last.ckpt")
    # The worst moment: the new side file is in place, the checkpoint beside it is still the previous one.
    assert checkpoint(run)["MetaRLDataModule"]["progress"]["env_steps"] == 200
    assert side_file_steps(side) == 400 and side_file_steps(previous_path(side)) == 200
    assert list((run / "checkpoints").glob(".last.ckpt.*.tmp"))

    resume(run)
    assert_loadable_pair(run)
    assert_same_run(run, straight_run)


def test_a_failed_side_file_write_leaves_the_previous_pair(
    straight_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The other moment: the write of the new side file fails halfway, as on a full disk (``ENOSPC``)."""
    real_save = torch.save

    def fail_at_400(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        if isinstance(obj, dict) and obj.get("env_steps") == 400:
            f.write(b"half a replay")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", fail_at_400)
    with pytest.raises(SystemExit) as exit_info:
        fit(tmp_path)
    monkeypatch.undo()
    # A run failure, not a bug: one line naming the file and the cause, and no traceback file.
    assert exit_info.value.code == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("mql: error: cannot write ") and "last.replay.pt" in error, error
    assert "no space left on device" in error and "internal error" not in error, error
    run = tmp_path / "mql" / "version_0"
    assert assert_loadable_pair(run) == 200
    resume(run)
    assert_same_run(run, straight_run)
