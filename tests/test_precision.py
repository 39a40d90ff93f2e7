"""Mixed precision (``docs/design.md#precision-and-threads``): ``bf16-mixed`` trains end to end, with TD targets, the
propensity fit and ESS kept in float32 (or wider) under autocast."""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml

from mql_lightning.data.replay import ReplayBatch
from mql_lightning.modules.agent import TD3Agent
from mql_lightning.modules.context import ContextEncoder
from mql_lightning.modules.propensity import PropensityClassifier, effective_sample_size
from tests.helpers.runs import run_fit
from tests.helpers.td3 import actor_loss_of, critic_loss_of

OBS, ACT, H, B = 3, 2, 4, 16
C = ACT + 1 + OBS


@pytest.fixture(autouse=True)
def _private_rng() -> Iterator[None]:
    with torch.random.fork_rng():
        yield


def bf16() -> torch.autocast:
    """The autocast context Lightning's ``bf16-mixed`` precision opens around training and evaluation steps on CPU."""
    return torch.autocast("cpu", dtype=torch.bfloat16)


def agent_and_batch() -> tuple[TD3Agent, ReplayBatch]:
    torch.manual_seed(0)
    agent = TD3Agent(OBS, ACT, context=lambda d: ContextEncoder(d, hidden_size=8), hidden_sizes=(32, 32), gamma=0.9)
    gen = torch.Generator().manual_seed(1)
    batch = ReplayBatch(
        obs=torch.randn(B, OBS, generator=gen),
        action=torch.rand(B, ACT, generator=gen) * 2 - 1,
        reward=torch.randn(B, generator=gen),
        next_obs=torch.randn(B, OBS, generator=gen),
        terminated=(torch.rand(B, generator=gen) < 0.2).float(),
        task=torch.zeros(B, dtype=torch.int64),
        history=torch.randn(B, H, C, generator=gen),
        next_history=torch.randn(B, H, C, generator=gen),
    )
    return agent, batch


def test_td_target_and_losses_are_float32_under_bf16_autocast(monkeypatch: pytest.MonkeyPatch) -> None:
    agent, batch = agent_and_batch()
    with torch.no_grad():
        reference, reference_info = critic_loss_of(agent, batch, torch.Generator().manual_seed(2))

    seen: list[bool] = []
    target_q_values = agent.target_q_values

    def spy(*args: object, **kwargs: object) -> tuple[torch.Tensor, torch.Tensor]:
        seen.append(torch.is_autocast_enabled("cpu"))  # the bootstrap value really is computed under autocast
        return target_q_values(*args, **kwargs)

    monkeypatch.setattr(agent, "target_q_values", spy)
    with bf16():
        assert torch.nn.Linear(4, 4)(torch.randn(2, 4)).dtype == torch.bfloat16  # autocast is on for matmuls
        loss, info = critic_loss_of(agent, batch, torch.Generator().manual_seed(2))
        loss_a = actor_loss_of(agent, batch)
    assert seen == [True]
    # target_mean is the mean of the TD target tensor itself: float32 means the target is float32.
    assert info["target_mean"].dtype == torch.float32
    assert loss.dtype == loss_a.dtype == torch.float32
    # bf16 matmuls round the bootstrap value (8 mantissa bits), the float32 target keeps the rest exact.
    assert info["target_mean"].item() == pytest.approx(reference_info["target_mean"].item(), rel=0.02, abs=0.02)
    assert loss.item() == pytest.approx(reference.item(), rel=0.05)
    loss.backward()
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in agent.parameters())


def test_propensity_fit_beta_and_ess_are_unaffected_by_bf16_autocast() -> None:
    gen = torch.Generator().manual_seed(3)
    new, replay = torch.randn(64, 8, generator=gen) + 0.5, torch.randn(128, 8, generator=gen)
    plain = PropensityClassifier(C=0.1).fit(new, replay)
    plain_beta = plain.beta(replay)
    with bf16():
        fitted = PropensityClassifier(C=0.1).fit(new, replay)
        beta = fitted.beta(replay)
        ess = effective_sample_size(beta)
    assert fitted.weight.dtype == torch.float64  # Newton's method in float64, whatever autocast says
    assert torch.equal(fitted.weight, plain.weight) and torch.equal(fitted.bias, plain.bias)
    assert beta.dtype == ess.dtype == torch.float32
    assert torch.equal(beta, plain_beta)
    assert torch.equal(ess, effective_sample_size(plain_beta))


def test_bf16_mixed_fit_trains_and_adapts_end_to_end(tmp_path: Path) -> None:
    run = run_fit(
        tmp_path,
        "--trainer.precision=bf16-mixed",
        "--trainer.log_every_n_steps=10",
        "--model.agent.init_args.hidden_sizes=[32,32]",
        "--data.num_train_tasks=4",
        "--data.num_val_tasks=2",
        "--data.batch_size=32",
        "--data.warmup_steps=200",
        "--data.max_env_steps=600",
        "--data.val_every_env_steps=600",
        "--data.validate_at_start=false",
        "--data.eval_episodes=1",
        "--adaptation.settings.num_steps=40",
        "--adaptation.settings.new_task_updates=5",
        "--adaptation.settings.replay_updates=10",
    )
    assert yaml.safe_load((run / "config.yaml").read_text())["trainer"]["precision"] == "bf16-mixed"
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))

    def values(key: str) -> list[float]:
        return [float(r[key]) for r in rows if r.get(key)]

    for key in ("train/critic_loss", "train/actor_loss", "train/q1_mean", "rollout/return"):
        assert len(values(key)) >= 10 and all(math.isfinite(v) for v in values(key)), key
    # The Q-values went through bf16 matmuls: every logged mean is a bf16 number.
    q1 = torch.tensor(values("train/q1_mean"))
    assert torch.equal(q1.to(torch.bfloat16).float(), q1)
    # One validation, at the end, with adaptation.
    for key in ("val/return", "val/return_pre_adapt", "val/ess", "val/lambda", "val/task_1/lambda"):
        assert len(values(key)) == 1 and math.isfinite(values(key)[0]), key
    assert 0.0 <= values("val/lambda")[0] <= 1.0
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert all(v.dtype == torch.float32 for v in checkpoint["state_dict"].values())  # float32 master weights
