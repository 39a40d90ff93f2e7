"""A naive TD3-context update: the reference our update is measured against (``update_throughput.py``).

Written the obvious way, as a competent person writes it first (and as the authors' ``algs/MQL/mql.py`` does): four
separate ``nn.GRU`` context encoders (actor, critic, and a ``deepcopy`` target of each), the two Q functions as two
separate ``nn.Sequential`` MLPs, default ``torch.optim.Adam``, the actor loss back-propagating into the critics
(their gradients are simply zeroed at the next critic step), and a Python loop for the Polyak update. It is a
benchmark fixture, not library code; it uses nothing from ``mql_lightning`` but the batch type.

Not a script; ``python benchmarks/update_throughput.py`` runs it.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mql_lightning.data.replay import ReplayBatch


def _mlp(in_dim: int, hidden: Sequence[int], out_dim: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), nn.ReLU()]
        in_dim = width
    return nn.Sequential(*layers, nn.Linear(in_dim, out_dim))


class Context(nn.Module):
    """GRU over the history window; the context is its final hidden state (the authors' ``Context``)."""

    def __init__(self, input_dim: int, hidden: int) -> None:
        super().__init__()
        self.gru = nn.GRU(input_dim, hidden, batch_first=True)

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        """``(B, H, C)`` windows to ``(B, hidden)`` contexts."""
        _, h_n = self.gru(history)
        return h_n[-1]


class Actor(nn.Module):
    """``tanh(MLP([obs, z]))`` with its own context GRU."""

    def __init__(self, obs_dim: int, action_dim: int, hidden: Sequence[int], gru_hidden: int) -> None:
        super().__init__()
        self.context = Context(action_dim + 1 + obs_dim, gru_hidden)
        self.net = _mlp(obs_dim + gru_hidden, hidden, action_dim)

    def forward(self, obs: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """Actions in [-1, 1]."""
        return torch.tanh(self.net(torch.cat([obs, self.context(history)], 1)))


class Critic(nn.Module):
    """Two separate Q MLPs over ``[obs, action, z]``, sharing the critic's context GRU."""

    def __init__(self, obs_dim: int, action_dim: int, hidden: Sequence[int], gru_hidden: int) -> None:
        super().__init__()
        self.context = Context(action_dim + 1 + obs_dim, gru_hidden)
        self.q1 = _mlp(obs_dim + action_dim + gru_hidden, hidden, 1)
        self.q2 = _mlp(obs_dim + action_dim + gru_hidden, hidden, 1)

    def forward(self, obs: torch.Tensor, action: torch.Tensor, history: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Both Q estimates, ``(B, 1)`` each."""
        x = torch.cat([obs, action, self.context(history)], 1)
        return self.q1(x), self.q2(x)

    def q1_only(self, obs: torch.Tensor, action: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """The first Q estimate, the one the actor ascends."""
        return self.q1(torch.cat([obs, action, self.context(history)], 1))


class NaiveTD3Context:
    """The straightforward TD3-context update.

    Args:
        obs_dim: Observation width.
        action_dim: Action width.
        hidden: Hidden widths of the actor and of each Q MLP.
        gru_hidden: Width of each context GRU.
        lr: Adam learning rate of actor and critic.
        gamma: Discount.
        tau: Polyak coefficient.
        policy_noise: Std of the target-policy smoothing noise.
        noise_clip: Clip of that noise.
        policy_delay: Critic steps per actor step and target update.
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden: Sequence[int] = (300, 300),
        gru_hidden: int = 20,
        lr: float = 1e-3,
        gamma: float = 0.99,
        tau: float = 0.005,
        policy_noise: float = 0.2,
        noise_clip: float = 0.5,
        policy_delay: int = 2,
    ) -> None:
        self.actor = Actor(obs_dim, action_dim, hidden, gru_hidden)
        self.actor_target = copy.deepcopy(self.actor)
        self.critic = Critic(obs_dim, action_dim, hidden, gru_hidden)
        self.critic_target = copy.deepcopy(self.critic)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=lr)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=lr)
        self.gamma, self.tau = gamma, tau
        self.policy_noise, self.noise_clip, self.policy_delay = policy_noise, noise_clip, policy_delay
        self.iterations = 0

    def update(self, batch: ReplayBatch) -> None:
        """One critic step; every ``policy_delay``-th call also an actor step and the Polyak update."""
        self.iterations += 1
        obs, action, next_obs = batch.obs, batch.action, batch.next_obs
        reward, not_done = batch.reward.unsqueeze(1), 1.0 - batch.terminated.unsqueeze(1)

        with torch.no_grad():
            noise = (torch.randn_like(action) * self.policy_noise).clamp(-self.noise_clip, self.noise_clip)
            next_action = (self.actor_target(next_obs, batch.next_history) + noise).clamp(-1.0, 1.0)
            target_q1, target_q2 = self.critic_target(next_obs, next_action, batch.next_history)
            target_q = reward + not_done * self.gamma * torch.min(target_q1, target_q2)

        current_q1, current_q2 = self.critic(obs, action, batch.history)
        critic_loss = F.mse_loss(current_q1, target_q) + F.mse_loss(current_q2, target_q)
        self.critic_optimizer.zero_grad()
        critic_loss.backward()
        self.critic_optimizer.step()

        if self.iterations % self.policy_delay == 0:
            actor_loss = -self.critic.q1_only(obs, self.actor(obs, batch.history), batch.history).mean()
            self.actor_optimizer.zero_grad()
            actor_loss.backward()
            self.actor_optimizer.step()
            for net, target in ((self.critic, self.critic_target), (self.actor, self.actor_target)):
                for p, tp in _pairs(net, target):
                    tp.data.mul_(1 - self.tau).add_(self.tau * p.data)


def _pairs(net: nn.Module, target: nn.Module) -> Iterator[tuple[nn.Parameter, nn.Parameter]]:
    return zip(net.parameters(), target.parameters(), strict=True)
