"""The TD3 update of MQL, top to bottom: TD target, critic step, delayed actor step, Polyak averaging.

One update rule for meta-training (Eq. 15) and for both adaptation steps (Eq. 18, and Eq. 19 with the per-sample
weights beta): callers bring their optimisers and backward pass (Lightning's ``manual_backward`` in
:class:`~mql_lightning.modules.mql.MQL`, plain autograd in :mod:`mql_lightning.adaptation`), and optionally a penalty
(the proximal term of Eqs. 18-19) and gradient clipping.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import torch

from mql_lightning.data.replay import ReplayBatch
from mql_lightning.modules.agent import TD3Agent
from mql_lightning.modules.losses import actor_loss, bootstrapped_target, critic_loss


def td3_update(
    agent: TD3Agent,
    batch: ReplayBatch,
    update_index: int,
    actor_optimizer: torch.optim.Optimizer,
    critic_optimizer: torch.optim.Optimizer,
    backward: Callable[[torch.Tensor], None],
    freeze_critic: Callable[[], AbstractContextManager[Any]],
    generator: torch.Generator | None = None,
    weights: torch.Tensor | None = None,
    penalty: Callable[[str], torch.Tensor] | None = None,
    clip_gradients: Callable[[torch.optim.Optimizer], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor]]:
    """One TD3 update: a critic step, and every ``policy_delay`` updates an actor step and Polyak averaging.

    Args:
        agent: The agent to update.
        batch: The minibatch.
        update_index: 1-based count of critic updates including this one (decides the delayed actor step).
        actor_optimizer: Optimiser of :meth:`TD3Agent.actor_parameters`.
        critic_optimizer: Optimiser of :meth:`TD3Agent.critic_parameters`.
        backward: Runs the backward pass of a loss.
        freeze_critic: Context manager keeping the critics out of the actor step's graph.
        generator: RNG of the target-policy smoothing noise.
        weights: Optional per-sample loss weights (Eq. 19).
        penalty: Optional ``"actor" | "critic" -> tensor`` added to that loss (the proximal term of Eqs. 18-19).
        clip_gradients: Optional, called with each optimiser between its backward pass and its step.

    Returns:
        The critic loss, the actor loss (``None`` without an actor step) and the critic's metrics.
    """

    def step(name: str, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> torch.Tensor:
        # One optimiser step, the same for critic and actor: penalty, backward, optional clipping, step.
        if penalty is not None:
            loss = loss + penalty(name)
        optimizer.zero_grad(set_to_none=True)
        backward(loss)
        if clip_gradients is not None:
            clip_gradients(optimizer)
        optimizer.step()
        return loss

    # 1. The TD target (Eq. 7) from the target networks.
    with torch.no_grad():
        target = td_target(agent, batch, generator)
    # 2. Critic step: both critics' squared TD errors, averaged over the batch (over tasks, Eq. 15; beta-weighted in
    #    Eq. 19).
    q1, q2 = agent.q_values(batch.obs, batch.action, batch.history)
    loss_c = step("critic", critic_loss(q1, q2, target, weights), critic_optimizer)
    info = {"q1_mean": q1.detach().mean(), "target_mean": target.mean()}
    # 3. Every policy_delay updates: the actor ascends Q1 of its own action, with the critics frozen ...
    loss_a = None
    if update_index % agent.policy_delay == 0:
        with freeze_critic():
            loss_a = step("actor", actor_loss(agent.actor_q1(batch.obs, batch.history), weights), actor_optimizer)
        # 4. ... and every target network moves a step tau toward its online network.
        polyak_update(agent)
    return loss_c, loss_a, info


@contextlib.contextmanager
def frozen(params: Iterable[torch.nn.Parameter]) -> Iterator[None]:
    """Keep ``params`` out of the autograd graph while inside: the ``freeze_critic`` of :func:`td3_update` outside
    Lightning (the actor loss then builds no critic gradients, which nobody would use)."""
    params = list(params)
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


@torch.no_grad()
def td_target(agent: TD3Agent, batch: ReplayBatch, generator: torch.Generator | None = None) -> torch.Tensor:
    """Eq. 7's target ``r + gamma (1 - d) min(Q1', Q2')(x', a')`` with TD3's target-policy smoothing,
    ``a' = clip(u'(x') + clip(eps, -c, c), -1, 1)``, ``eps ~ N(0, policy_noise)``: the clipped double-Q target.

    The target encoders read the next-state windows (one grouped pass for the actor's and the critic's).
    """
    z_actor, z_critic = agent.target_contexts(batch.next_history)
    next_action = agent.target_action(batch.next_obs, z_actor)
    # Drawn on the generator's device (CPU generators are what the run's seeded streams are) and then moved, so a CPU
    # generator also drives a GPU run.
    noise_device = generator.device if generator is not None else next_action.device
    noise = torch.randn(next_action.shape, generator=generator, device=noise_device).to(next_action.device)
    noise = (noise * agent.policy_noise).clamp(-agent.noise_clip, agent.noise_clip)
    next_action = (next_action + noise.to(next_action.dtype)).clamp(-1.0, 1.0)
    next_q1, next_q2 = agent.target_q_values(batch.next_obs, next_action, z_critic)
    return bootstrapped_target(batch.reward, batch.terminated, torch.minimum(next_q1, next_q2), agent.gamma)


@torch.no_grad()
def polyak_update(agent: TD3Agent) -> None:
    """Move every target network a step ``tau`` toward its online network: ``target += tau (online - target)``."""
    targets, online = agent.polyak_pairs()
    torch._foreach_lerp_(targets, online, agent.tau)
