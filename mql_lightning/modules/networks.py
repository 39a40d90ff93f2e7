"""Plain MLP building blocks for the TD3 actor and twin critics."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def mlp(in_dim: int, hidden_sizes: Sequence[int], out_dim: int) -> nn.Sequential:
    """A ReLU multi-layer perceptron with a linear output layer."""
    layers: list[nn.Module] = []
    for width in hidden_sizes:
        layers += [nn.Linear(in_dim, width), nn.ReLU()]
        in_dim = width
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


class Actor(nn.Module):
    """Deterministic policy u(x, z) with a tanh output in [-1, 1] (every task family acts in [-1, 1]).

    Args:
        in_dim: Observation width plus context width.
        action_dim: Number of action dimensions.
        hidden_sizes: Hidden layer widths.
    """

    def __init__(self, in_dim: int, action_dim: int, hidden_sizes: Sequence[int]) -> None:
        super().__init__()
        self.net = mlp(in_dim, hidden_sizes, action_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Map ``(B, in_dim)`` features to ``(B, action_dim)`` actions."""
        return torch.tanh(self.net(features))


class TwinCritic(nn.Module):
    """The two action-value functions q_phi1, q_phi2 of TD3 ("double Q-learning", Sec. 3.1).

    Args:
        in_dim: Observation, action and context widths summed.
        hidden_sizes: Hidden layer widths of each Q network.
    """

    def __init__(self, in_dim: int, hidden_sizes: Sequence[int]) -> None:
        super().__init__()
        self.q1 = mlp(in_dim, hidden_sizes, 1)
        self.q2 = mlp(in_dim, hidden_sizes, 1)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both Q estimates, each ``(B,)``."""
        return self.q1(features).squeeze(-1), self.q2(features).squeeze(-1)
