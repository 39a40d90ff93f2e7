"""The losses of a TD3 agent on a batch, composed as :func:`mql_lightning.modules.td3.td3_update` composes them."""

from __future__ import annotations

import torch

from mql_lightning.data.replay import ReplayBatch
from mql_lightning.modules.agent import TD3Agent
from mql_lightning.modules.losses import actor_loss, critic_loss
from mql_lightning.modules.td3 import td_target


def critic_loss_of(
    agent: TD3Agent, batch: ReplayBatch, generator: torch.Generator | None = None, weights: torch.Tensor | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The critic step's loss (steps 1-2 of ``td3_update``) and its metrics ``q1_mean``, ``target_mean``."""
    target = td_target(agent, batch, generator)
    q1, q2 = agent.q_values(batch.obs, batch.action, batch.history)
    return critic_loss(q1, q2, target, weights), {"q1_mean": q1.detach().mean(), "target_mean": target.mean()}


def actor_loss_of(agent: TD3Agent, batch: ReplayBatch, weights: torch.Tensor | None = None) -> torch.Tensor:
    """The actor step's loss (step 3 of ``td3_update``)."""
    return actor_loss(agent.actor_q1(batch.obs, batch.history), weights)
