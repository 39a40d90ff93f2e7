"""Numerical faults: a non-finite loss or parameter stops training with one line, and no checkpoint is overwritten.

Faults are made on purpose: a learning rate of 1e30 (the losses blow up within the first updates), or
:class:`Poison`, which writes a NaN into a critic weight at a chosen point: after an update (found by the next
periodic check) or on the step that closes a validation period (found by the check that precedes every validation
and its checkpoint). Gradient clipping is checked on the gradients the optimisers actually step with.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from tests.test_resume import checkpoint, fit, metrics_rows


class Poison(L.Callback):
    """Writes NaN into the first critic weight once training reaches ``env_steps``; records the checkpoint files.

    Args:
        env_steps: Environment step from which to poison.
        at: ``update`` (after an update) or ``period_end`` (on the step that ends a validation period: the next
            thing to run is that validation, then its checkpoint).
        record: JSON file receiving the SHA-256 of every file in the checkpoint directory at that moment.
    """

    def __init__(self, env_steps: int, record: str, at: str = "update") -> None:
        super().__init__()
        self.env_steps, self.record, self.at = env_steps, Path(record), at
        self._done = False

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        datamodule = trainer.datamodule
        if self._done or datamodule.progress.env_steps < self.env_steps:
            return
        if self.at == "period_end" and not datamodule._validation_requested:
            return
        with torch.no_grad():
            next(pl_module.agent.critic.parameters()).view(-1)[0] = float("nan")
        self._done = True
        self.record.write_text(json.dumps(digests(Path(trainer.checkpoint_callback.dirpath))))


def digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def fit_until_fault(tmp_path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    """A run that must end with a numerical fault: exit code 1 and one ``mql: error:`` line; that line."""
    with pytest.raises(SystemExit) as exit_info:
        fit(tmp_path, *extra)
    assert exit_info.value.code == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("mql:")]
    assert len(lines) == 1 and lines[0].startswith("mql: error: training diverged at "), lines
    return lines[0]


def poison(tmp_path: Path, env_steps: int, at: str) -> str:
    spec = {"env_steps": env_steps, "record": str(tmp_path / "before.json"), "at": at}
    return '--trainer.callbacks+={"class_path": "tests.test_numerical.Poison", "init_args": ' + json.dumps(spec) + "}"


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


class GradNorms(L.Callback):
    """Records the largest total gradient norm any optimiser stepped with (in ``path``, as text)."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path, self.largest = Path(path), 0.0

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        self.largest = max(self.largest, float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.path.write_text(str(self.largest))


def test_gradient_clipping_from_the_config_bounds_every_step_and_stays_out_of_the_hyperparameters(
    tmp_path: Path,
) -> None:
    record = tmp_path / "largest.txt"
    run = fit(
        tmp_path, "--data.max_env_steps=200", "--model.grad_clip_norm=0.01",
        f'--trainer.callbacks+={{"class_path": "tests.test_numerical.GradNorms", "init_args": {{"path": "{record}"}}}}',
    )
    assert 0.0 < float(record.read_text()) <= 0.01 * (1 + 1e-5)
    # Not a model hyper-parameter: a resumed run takes the value given on its command line.
    assert "grad_clip_norm" not in checkpoint(run)["hyper_parameters"]


def test_non_positive_clipping_norm_is_rejected() -> None:
    from mql_lightning.modules.mql import MQL

    with pytest.raises(ValueError, match="grad_clip_norm"):
        MQL(obs_dim=2, action_dim=2, grad_clip_norm=0.0)
