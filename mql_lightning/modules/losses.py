"""TD3 losses as pure functions, shared by meta-training (Eq. 15) and adaptation (Eqs. 18, 19).

Each takes the agent, a replay batch and optional per-sample weights (the propensity scores beta of Eq. 19) and
returns ``(loss, metrics)``. The proximal term of Eqs. 18-19 is a separate function so callers add it where the
paper does (DESIGN decision 5).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from mql_lightning.data.replay import ReplayBatch
    from mql_lightning.modules.td3 import TD3Agent


def weighted_mean(values: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """``mean(values)``, or ``mean(weights * values)`` as in Eq. 19 (beta re-weights each sample's loss)."""
    return values.mean() if weights is None else (weights * values).mean()


def critic_loss(
    agent: TD3Agent,
    batch: ReplayBatch,
    generator: torch.Generator | None = None,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Squared TD error of both critics against the clipped double-Q target (Eq. 7, Eq. 15).

    Time-limit truncation is not termination: only ``batch.terminated`` stops the bootstrap (DESIGN decision 7).

    Args:
        agent: The TD3 agent.
        batch: Replay batch with histories.
        generator: RNG for the target-policy smoothing noise.
        weights: Optional per-sample weights, shape ``(B,)``.

    Returns:
        The loss and detached metrics (``q1_mean``, ``target_mean``).
    """
    with torch.no_grad():
        next_q = agent.target_q(batch.next_obs, batch.next_history, generator)
        # TD targets in float32 even under bf16 autocast (DESIGN decision 12).
        target = batch.reward + agent.gamma * (1.0 - batch.terminated) * next_q.float()
    q1, q2 = agent.q_values(batch.obs, batch.action, batch.history)
    per_sample = (q1.float() - target).pow(2) + (q2.float() - target).pow(2)
    loss = weighted_mean(per_sample, weights)
    return loss, {"q1_mean": q1.detach().mean(), "target_mean": target.mean()}


def actor_loss(
    agent: TD3Agent, batch: ReplayBatch, weights: torch.Tensor | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Deterministic policy gradient loss ``-Q1(x, u_theta(x, z))``, optionally beta-weighted (Eq. 19)."""
    q = agent.actor_q1(batch.obs, batch.history)
    return weighted_mean(-q.float(), weights), {}


def proximal_term(params: Iterable[torch.Tensor], anchor: Iterable[torch.Tensor]) -> torch.Tensor:
    """``sum_p ||theta_p - theta_meta_p||^2`` over matching parameter tensors (the penalty of Eqs. 18-19).

    Callers scale it by lambda / 2.
    """
    return torch.stack([(p - a).pow(2).sum() for p, a in zip(params, anchor, strict=True)]).sum()
