"""The TD3 agent of MQL: a context-conditioned actor, twin critics, their target copies, and its acting policy.

The networks and their forward passes only; the update rule that trains them is :mod:`mql_lightning.modules.td3`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import lightning as L
import torch
from torch import nn

from mql_lightning.data.contracts import Policy
from mql_lightning.modules.context import ContextEncoder, encode
from mql_lightning.modules.networks import Actor, TwinCritic


class TD3Agent(L.LightningModule):
    """Networks and TD3 hyper-parameters; the update rule itself is :func:`mql_lightning.modules.td3.td3_update`.

    With a context factory this is TD3-context (the meta-training of MQL, Alg. 1): actor and critics are conditioned
    on the context z of a recurrent encoder. With ``context=None`` it is plain TD3 from the same code path.

    Args:
        obs_dim: Observation width (linked from the task family).
        action_dim: Action width (linked from the task family).
        context: Factory ``input_dim -> encoder`` for the context encoder, e.g. ``ContextEncoder``; ``None`` for
            plain TD3. The encoder must expose ``output_dim``.
        shared_context: One encoder for actor and critic (trained by the critic loss) instead of the paper's
            separate encoders (``docs/design.md#context-encoders``).
        hidden_sizes: Hidden widths of the actor and of each critic.
        gamma: Discount factor.
        tau: Polyak coefficient of the target networks.
        policy_noise: Std of the target-policy smoothing noise.
        noise_clip: Clip of the target-policy smoothing noise.
        policy_delay: Critic updates per actor (and target) update.
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        context: Callable[[int], nn.Module] | None = ContextEncoder,
        shared_context: bool = False,
        hidden_sizes: Sequence[int] = (300, 300),
        gamma: float = 0.99,
        tau: float = 0.005,
        policy_noise: float = 0.2,
        noise_clip: float = 0.5,
        policy_delay: int = 2,
    ) -> None:
        super().__init__()
        if obs_dim <= 0 or action_dim <= 0:
            raise ValueError(f"TD3Agent needs obs_dim > 0 and action_dim > 0, got {obs_dim}, {action_dim}")
        if policy_delay < 1:
            raise ValueError(f"policy_delay must be >= 1, got {policy_delay}")
        if any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in hidden_sizes):
            raise ValueError(f"hidden_sizes must be positive integers, got {list(hidden_sizes)}")
        if not 0.0 < tau <= 1.0 or not 0.0 <= gamma <= 1.0:
            raise ValueError(f"need 0 < tau <= 1 and 0 <= gamma <= 1, got tau={tau}, gamma={gamma}")
        if policy_noise < 0 or noise_clip < 0:
            raise ValueError(f"policy_noise and noise_clip must be >= 0, got {policy_noise}, {noise_clip}")
        self.obs_dim, self.action_dim = obs_dim, action_dim
        self.gamma, self.tau = gamma, tau
        self.policy_noise, self.noise_clip, self.policy_delay = policy_noise, noise_clip, policy_delay
        self.shared_context = shared_context and context is not None
        self.context_input_dim = action_dim + 1 + obs_dim  # one history entry (a, r, o)

        self.actor_context = context(self.context_input_dim) if context is not None else None
        if context is None or self.shared_context:
            self.critic_context = self.actor_context
        else:
            self.critic_context = context(self.context_input_dim)
        z_dim = self.actor_context.output_dim if self.actor_context is not None else 0
        self.actor = Actor(obs_dim + z_dim, action_dim, hidden_sizes)
        self.critic = TwinCritic(obs_dim + action_dim + z_dim, hidden_sizes)

        # Target copies of every network, context encoders included (the authors' four GRUs).
        self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_context_target = _frozen_copy(self.actor_context)
        self.critic_context_target = (
            self.actor_context_target if self.shared_context else _frozen_copy(self.critic_context)
        )
        # (target, online) parameter lists of Polyak averaging, built on first use (not at every actor step).
        self._polyak_pairs: tuple[list[nn.Parameter], list[nn.Parameter]] | None = None

    @property
    def uses_context(self) -> bool:
        """Whether actor and critics see a context (TD3-context) or not (plain TD3)."""
        return self.actor_context is not None

    # ----------------------------------------------------------------------------------------------- forward passes
    def act(self, obs: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """Deterministic action u_theta(x, z) of the online actor."""
        return self.actor(_with_context(obs, history, self.actor_context, detach=self.shared_context))

    def q_values(
        self, obs: torch.Tensor, action: torch.Tensor, history: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Both online Q estimates q_phi(x, u, z)."""
        return self.critic(_with_context(torch.cat([obs, action], -1), history, self.critic_context))

    def q1(self, obs: torch.Tensor, action: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """The first online Q estimate, the one the actor ascends."""
        return self.critic.q1(_with_context(torch.cat([obs, action], -1), history, self.critic_context)).squeeze(-1)

    def actor_q1(self, obs: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """``Q1(x, u_theta(x, z), z)``, what the actor ascends: the actor's and the critic's contexts in one pass."""
        z_actor, z_critic = self._contexts(self.actor_context, self.critic_context, history)
        action = self.actor(_with(obs, z_actor, detach=self.shared_context))
        return self.critic.q1(_with(torch.cat([obs, action], -1), z_critic)).squeeze(-1)

    def target_action(self, next_obs: torch.Tensor, z_actor: torch.Tensor | None) -> torch.Tensor:
        """``u'(x', z')`` of the target actor, before smoothing noise."""
        return self.actor_target(_with(next_obs, z_actor))

    def target_q_values(
        self, next_obs: torch.Tensor, next_action: torch.Tensor, z_critic: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Both target critics' estimates ``q'_phi(x', a', z')``."""
        return self.critic_target(_with(torch.cat([next_obs, next_action], -1), z_critic))

    def target_contexts(self, history: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The target actor's and target critic's contexts of the same windows, in one grouped pass."""
        return self._contexts(self.actor_context_target, self.critic_context_target, history)

    @staticmethod
    def _contexts(
        actor_encoder: nn.Module | None, critic_encoder: nn.Module | None, history: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        # Both encoders read the same windows: one grouped recurrent pass (one pass when they are the same module).
        if actor_encoder is None or critic_encoder is None:
            return None, None
        z_actor, z_critic = encode([actor_encoder, critic_encoder], history)
        return z_actor, z_critic

    # ------------------------------------------------------------------------------------------ parameter groups
    def actor_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters the actor loss trains: the actor and, unless shared, its context encoder."""
        yield from self.actor.parameters()
        if self.actor_context is not None and not self.shared_context:
            yield from self.actor_context.parameters()

    def critic_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters the critic loss trains: both critics and their context encoder."""
        yield from self.critic.parameters()
        if self.critic_context is not None:
            yield from self.critic_context.parameters()

    def polyak_pairs(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """Every target network's parameters and, in the same order, the online parameters they follow."""
        if self._polyak_pairs is None:
            online, target = [self.actor, self.critic], [self.actor_target, self.critic_target]
            if self.actor_context is not None:
                online.append(self.actor_context)
                target.append(self.actor_context_target)
                if not self.shared_context:
                    online.append(self.critic_context)
                    target.append(self.critic_context_target)
            self._polyak_pairs = (
                [p for m in target for p in m.parameters()], [p for m in online for p in m.parameters()]
            )
        return self._polyak_pairs

    def _apply(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> TD3Agent:
        # Moving or casting the agent may replace parameter tensors: the Polyak lists are rebuilt on next use.
        self._polyak_pairs = None
        return super()._apply(fn, *args, **kwargs)

def acting_policy(agent: TD3Agent) -> Policy:
    """The agent's deterministic policy as the collector calls it: CPU tensors in, CPU float32 actions out, no graph.

    The one adapter between an agent and the environments (meta-training's collection, evaluation, adaptation data).
    """
    device = next(agent.parameters()).device

    @torch.no_grad()
    def act(obs: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        return agent.act(obs.to(device), history.to(device)).float().cpu()

    return act


def _frozen_copy(module: nn.Module | None) -> nn.Module | None:
    return None if module is None else copy.deepcopy(module).requires_grad_(False)


def _with_context(
    features: torch.Tensor, history: torch.Tensor, encoder: nn.Module | None, detach: bool = False
) -> torch.Tensor:
    return features if encoder is None else _with(features, encoder(history), detach)


def _with(features: torch.Tensor, z: torch.Tensor | None, detach: bool = False) -> torch.Tensor:
    if z is None:
        return features
    return torch.cat([features, z.detach() if detach else z], -1)
