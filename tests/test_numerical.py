"""Numerical faults: a non-finite loss or parameter stops training with one line, and no checkpoint is overwritten.

Faults are made on purpose: a learning rate of 1e30 (the losses blow up within the first updates), or ``Poison``
(``tests/helpers/callbacks.py``), which writes a NaN into a critic weight at a chosen point: after an update (found by
the next periodic check) or on the step that closes a validation period (found by the check that precedes every
validation and its checkpoint). Gradient clipping is checked on the gradients the optimisers actually step with.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.callbacks import callback_arg, digests
from tests.helpers.runs import checkpoint, fit, metrics_rows


def fit_until_fault(tmp_path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    """A run that must end with a numerical fault: exit code 1 and one ``mql: error:`` line; that line."""
    with pytest.raises(SystemExit) as exit_info:
        fit(tmp_path, *extra)
    assert exit_info.value.code == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("mql:")]
    assert len(lines) == 1 and lines[0].startswith("mql: error: training diverged at "), lines
    return lines[0]


def poison(tmp_path: Path, env_steps: int, at: str) -> str:
    return callback_arg("Poison", env_steps=env_steps, record=str(tmp_path / "before.json"), at=at)


def test_a_poisoned_weight_stops_training_and_keeps_the_last_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = fit_until_fault(tmp_path, capsys, poison(tmp_path, 300, "update"))
    assert "(environment step 300)" in line and "non-finite critic loss (last value nan)" in line
    assert "parameter agent." in line  # the NaN has spread from the critic by the time the check comes
    run = tmp_path / "mql" / "version_0"
    assert f"the last good checkpoint, {run / 'checkpoints' / 'last.ckpt'}, is kept as it was" in line
    before = json.loads((tmp_path / "before.json").read_text())
    assert {"last.ckpt", "last.replay.pt"} <= set(before)
    assert digests(run / "checkpoints") == before  # byte for byte, nothing added
    assert checkpoint(run)["MetaRLDataModule"]["progress"]["env_steps"] == 200


def test_a_fault_just_before_a_validation_is_caught_before_its_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = fit_until_fault(tmp_path, capsys, poison(tmp_path, 400, "period_end"))
    assert "(environment step 400)" in line and "parameter agent.critic." in line
    run = tmp_path / "mql" / "version_0"
    assert digests(run / "checkpoints") == json.loads((tmp_path / "before.json").read_text())
    assert [r["step"] for r in metrics_rows(run) if "val/return" in r] == ["0", "200"]  # no validation at 400


def test_an_enormous_learning_rate_diverges_with_a_clear_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = fit_until_fault(
        tmp_path, capsys, '--model.critic_optimizer={"class_path": "torch.optim.Adam", "init_args": {"lr": 1e30}}'
    )
    assert "non-finite critic loss" in line and "updates 1-10 (environment step 120)" in line
    assert "no checkpoint had been written yet" in line and "--model.grad_clip_norm" in line


def test_gradient_clipping_from_the_config_bounds_every_step_and_stays_out_of_the_hyperparameters(
    tmp_path: Path,
) -> None:
    record = tmp_path / "largest.txt"
    run = fit(
        tmp_path, "--data.max_env_steps=200", "--model.grad_clip_norm=0.01",
        callback_arg("GradNorms", path=str(record)),
    )
    assert 0.0 < float(record.read_text()) <= 0.01 * (1 + 1e-5)
    # Not a model hyper-parameter: a resumed run takes the value given on its command line.
    assert "grad_clip_norm" not in checkpoint(run)["hyper_parameters"]


def test_non_positive_clipping_norm_is_rejected() -> None:
    from mql_lightning.modules.mql import MQL

    with pytest.raises(ValueError, match="grad_clip_norm"):
        MQL(obs_dim=2, action_dim=2, grad_clip_norm=0.0)
