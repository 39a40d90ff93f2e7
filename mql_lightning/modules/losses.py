"""TD3's losses as pure functions of tensors, shared by meta-training (Eq. 15) and adaptation (Eqs. 18, 19).

No networks here: :func:`mql_lightning.modules.td3.td3_update` runs the networks and passes their outputs in, so the
same functions serve every caller, and the per-sample weights of Eq. 19 (the propensity scores beta) and the
proximal term of Eqs. 18-19 are plain arguments (``docs/design.md#td3-losses-as-pure-functions``).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def weighted_mean(values: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """``mean(values)``, or ``mean(weights * values)`` as in Eq. 19 (beta re-weights each sample's loss)."""
    return values.mean() if weights is None else (weights * values).mean()


def bootstrapped_target(
    reward: torch.Tensor, terminated: torch.Tensor, next_q: torch.Tensor, gamma: float
) -> torch.Tensor:
    """The TD target of Eq. 7, ``r + gamma (1 - d) q'``, in float32 (also under bf16 autocast).

    Only a real termination ``d`` stops the bootstrap; a time-limit truncation does not
    (``docs/design.md#truncation-is-not-termination``).
    """
    return reward + gamma * (1.0 - terminated) * next_q.float()


def critic_loss(
    q1: torch.Tensor, q2: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Squared TD error of both critics against the same target (Eq. 7), averaged over the batch (Eq. 15).

    Args:
        q1: First critic's estimates, ``(B,)``.
        q2: Second critic's estimates, ``(B,)``.
        target: The TD target, ``(B,)``.
        weights: Optional per-sample weights ``(B,)`` (Eq. 19).
    """
    return weighted_mean((q1.float() - target).pow(2) + (q2.float() - target).pow(2), weights)


def actor_loss(q1: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """The deterministic policy gradient loss ``-Q1(x, u_theta(x, z))``, optionally beta-weighted (Eq. 19).

    Args:
        q1: The first critic's estimate of the policy's actions, ``(B,)``.
        weights: Optional per-sample weights ``(B,)``.
    """
    return weighted_mean(-q1.float(), weights)


def proximal_term(params: Iterable[torch.Tensor], anchor: Iterable[torch.Tensor]) -> torch.Tensor:
    """``sum_p ||theta_p - theta_meta_p||^2`` over matching parameter tensors (the penalty of Eqs. 18-19).

    Callers scale it by lambda / 2 (the paper) or lambda (the released code).
    """
    return torch.stack([(p - a).pow(2).sum() for p, a in zip(params, anchor, strict=True)]).sum()
