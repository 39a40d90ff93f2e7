"""Tests for the TD3 losses and the proximal term, against hand computations, as the TD3 update composes them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from mql_lightning.data.replay import ReplayBatch
from mql_lightning.modules.agent import TD3Agent
from mql_lightning.modules.context import ContextEncoder
from mql_lightning.modules.losses import proximal_term, weighted_mean
from mql_lightning.modules.td3 import polyak_update
from tests.helpers.td3 import actor_loss_of, critic_loss_of

OBS, ACT, H, B = 3, 2, 4, 5
C = ACT + 1 + OBS
GAMMA = 0.9


@pytest.fixture(autouse=True)
def _single_thread_private_rng() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with torch.random.fork_rng():
        yield
    torch.set_num_threads(threads)


def linear_agent(policy_noise: float = 0.0) -> TD3Agent:
    """Plain TD3 with linear networks (no hidden layer), online weights moved away from the targets."""
    torch.manual_seed(0)
    agent = TD3Agent(OBS, ACT, context=None, hidden_sizes=(), gamma=GAMMA, policy_noise=policy_noise)
    with torch.no_grad():
        for p in agent.parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn_like(p))
    return agent


def context_agent() -> TD3Agent:
    torch.manual_seed(1)
    return TD3Agent(
        OBS, ACT, context=lambda d: ContextEncoder(d, hidden_size=4), hidden_sizes=(8,), gamma=GAMMA, policy_noise=0.0
    )


def make_batch(seed: int = 2, terminated: torch.Tensor | None = None) -> ReplayBatch:
    gen = torch.Generator().manual_seed(seed)
    return ReplayBatch(
        obs=torch.randn(B, OBS, generator=gen),
        action=torch.rand(B, ACT, generator=gen) * 2 - 1,
        reward=torch.randn(B, generator=gen),
        next_obs=torch.randn(B, OBS, generator=gen),
        terminated=torch.tensor([0.0, 1.0, 0.0, 0.0, 1.0]) if terminated is None else terminated,
        task=torch.zeros(B, dtype=torch.int64),
        history=torch.randn(B, H, C, generator=gen),
        next_history=torch.randn(B, H, C, generator=gen),
    )


def linear(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x @ W.T + b`` of a Linear layer, by hand."""
    return x @ layer.weight.T + layer.bias


def hand_q(critic: nn.Module, obs: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.cat([obs, action], -1)
    return linear(critic.q1[0], x).squeeze(-1), linear(critic.q2[0], x).squeeze(-1)


def hand_critic_per_sample(agent: TD3Agent, batch: ReplayBatch) -> torch.Tensor:
    with torch.no_grad():
        next_action = torch.tanh(linear(agent.actor_target.net[0], batch.next_obs))
        t1, t2 = hand_q(agent.critic_target, batch.next_obs, next_action)
        y = batch.reward + GAMMA * (1 - batch.terminated) * torch.minimum(t1, t2)
        q1, q2 = hand_q(agent.critic, batch.obs, batch.action)
    return (q1 - y) ** 2 + (q2 - y) ** 2


# --------------------------------------------------------------------------------------------------------------
# Critic loss
# --------------------------------------------------------------------------------------------------------------


def test_critic_loss_equals_the_hand_computed_clipped_double_q_td_error() -> None:
    agent = linear_agent()
    batch = make_batch()
    loss, metrics = critic_loss_of(agent, batch)
    torch.testing.assert_close(loss, hand_critic_per_sample(agent, batch).mean())
    with torch.no_grad():
        q1, _ = hand_q(agent.critic, batch.obs, batch.action)
    torch.testing.assert_close(metrics["q1_mean"], q1.mean())
    assert not metrics["q1_mean"].requires_grad


def test_critic_loss_uses_the_target_networks_for_the_bootstrap() -> None:
    agent = linear_agent()
    batch = make_batch(terminated=torch.zeros(B))
    loss, _ = critic_loss_of(agent, batch)
    polyak_update(agent)  # moves the targets (only) toward the online networks
    moved, _ = critic_loss_of(agent, batch)
    assert not torch.allclose(loss, moved)
    torch.testing.assert_close(moved, hand_critic_per_sample(agent, batch).mean())


def test_terminated_transitions_are_not_bootstrapped() -> None:
    agent = linear_agent()
    batch = make_batch(terminated=torch.ones(B))
    loss, metrics = critic_loss_of(agent, batch)
    with torch.no_grad():
        q1, q2 = hand_q(agent.critic, batch.obs, batch.action)
    torch.testing.assert_close(loss, ((q1 - batch.reward) ** 2 + (q2 - batch.reward) ** 2).mean())
    torch.testing.assert_close(metrics["target_mean"], batch.reward.mean())
    # Changing next_obs cannot matter once every transition terminated, and does matter otherwise.
    other = batch._replace(next_obs=batch.next_obs + 5.0)
    torch.testing.assert_close(critic_loss_of(agent, other)[0], loss)
    live = batch._replace(terminated=torch.zeros(B))
    assert not torch.allclose(
        critic_loss_of(agent, live)[0], critic_loss_of(agent, live._replace(next_obs=other.next_obs))[0]
    )


def test_critic_loss_with_context_matches_the_agent_components() -> None:
    agent = context_agent()
    batch = make_batch()
    loss, _ = critic_loss_of(agent, batch)
    with torch.no_grad():
        z_actor = agent.actor_context_target(batch.next_history)
        z_critic = agent.critic_context_target(batch.next_history)
        next_action = agent.actor_target(torch.cat([batch.next_obs, z_actor], -1))
        next_q = torch.minimum(*agent.critic_target(torch.cat([batch.next_obs, next_action, z_critic], -1)))
        y = batch.reward + GAMMA * (1 - batch.terminated) * next_q
        q1, q2 = agent.q_values(batch.obs, batch.action, batch.history)
    torch.testing.assert_close(loss, ((q1 - y) ** 2 + (q2 - y) ** 2).mean())
    # Histories matter: the next-history enters the target, the history the online estimate.
    assert not torch.allclose(critic_loss_of(agent, batch._replace(next_history=batch.history))[0], loss)
    assert not torch.allclose(critic_loss_of(agent, batch._replace(history=batch.next_history))[0], loss)


def test_critic_loss_trains_the_critic_and_its_encoder_but_not_the_actor_or_targets() -> None:
    agent = context_agent()
    loss, _ = critic_loss_of(agent, make_batch())
    loss.backward()
    assert all(p.grad is not None for p in agent.critic_parameters())
    assert all(p.grad is None for p in agent.actor_parameters())


def test_target_smoothing_noise_is_reproducible_with_a_seeded_generator() -> None:
    agent = linear_agent(policy_noise=0.5)
    batch = make_batch(terminated=torch.zeros(B))
    a, _ = critic_loss_of(agent, batch, torch.Generator().manual_seed(0))
    b, _ = critic_loss_of(agent, batch, torch.Generator().manual_seed(0))
    c, _ = critic_loss_of(agent, batch, torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)


# --------------------------------------------------------------------------------------------------------------
# Per-sample weights (beta of Eq. 19)
# --------------------------------------------------------------------------------------------------------------


def test_unit_weights_equal_the_unweighted_critic_loss() -> None:
    agent, batch = linear_agent(), make_batch()
    torch.testing.assert_close(critic_loss_of(agent, batch, weights=torch.ones(B))[0], critic_loss_of(agent, batch)[0])


def test_zero_weights_give_zero_loss_and_zero_gradient() -> None:
    agent, batch = linear_agent(), make_batch()
    loss, _ = critic_loss_of(agent, batch, weights=torch.zeros(B))
    assert loss.item() == 0.0
    loss.backward()
    assert all(p.grad is not None and not p.grad.any() for p in agent.critic_parameters())


def test_weights_scale_each_sample_loss() -> None:
    agent, batch = linear_agent(), make_batch()
    base = critic_loss_of(agent, batch)[0]
    torch.testing.assert_close(critic_loss_of(agent, batch, weights=torch.full((B,), 2.5))[0], 2.5 * base)
    per_sample = hand_critic_per_sample(agent, batch)
    weights = torch.tensor([0.0, 2.0, 0.5, 1.0, 3.0])
    torch.testing.assert_close(critic_loss_of(agent, batch, weights=weights)[0], (weights * per_sample).mean())
    # A single weight of B on one sample is that sample's loss alone.
    k = 3
    one_hot = torch.zeros(B)
    one_hot[k] = float(B)
    single = ReplayBatch(*(t[k : k + 1] for t in batch))
    torch.testing.assert_close(critic_loss_of(agent, batch, weights=one_hot)[0], critic_loss_of(agent, single)[0])


def test_weighted_mean() -> None:
    values = torch.tensor([1.0, 2.0, 3.0, 6.0])
    assert weighted_mean(values).item() == 3.0
    assert weighted_mean(values, torch.tensor([1.0, 0.0, 0.0, 1.0])).item() == 7.0 / 4


# --------------------------------------------------------------------------------------------------------------
# Actor loss
# --------------------------------------------------------------------------------------------------------------


def test_actor_loss_is_minus_the_mean_first_critic_value_of_the_policy_action() -> None:
    agent, batch = linear_agent(), make_batch()
    loss = actor_loss_of(agent, batch)
    with torch.no_grad():
        action = torch.tanh(linear(agent.actor.net[0], batch.obs))
        q1, q2 = hand_q(agent.critic, batch.obs, action)
    torch.testing.assert_close(loss, -q1.mean())
    assert not torch.allclose(loss, -q2.mean())  # Q1, not Q2 nor the minimum
    weights = torch.tensor([1.0, 0.0, 2.0, 0.5, 1.5])
    torch.testing.assert_close(actor_loss_of(agent, batch, weights), -(weights * q1).mean())


def test_actor_loss_ignores_the_stored_action() -> None:
    agent, batch = linear_agent(), make_batch()
    other = batch._replace(action=-batch.action)
    torch.testing.assert_close(actor_loss_of(agent, batch), actor_loss_of(agent, other))


def test_actor_loss_with_context_matches_the_agent_components() -> None:
    agent, batch = context_agent(), make_batch()
    with torch.no_grad():
        expected = -agent.q1(batch.obs, agent.act(batch.obs, batch.history), batch.history).mean()
    torch.testing.assert_close(actor_loss_of(agent, batch), expected)


# --------------------------------------------------------------------------------------------------------------
# Proximal term (Eqs. 18-19)
# --------------------------------------------------------------------------------------------------------------


def proximal_setup() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(5)
    params = [torch.randn(3, 2, generator=gen).requires_grad_(), torch.randn(4, generator=gen).requires_grad_()]
    anchor = [torch.randn(3, 2, generator=gen), torch.randn(4, generator=gen)]
    return params, anchor


def test_proximal_term_is_the_sum_of_squared_differences() -> None:
    params, anchor = proximal_setup()
    expected = sum(float(((p.detach() - a) ** 2).sum()) for p, a in zip(params, anchor, strict=True))
    assert proximal_term(params, anchor).item() == pytest.approx(expected, rel=1e-6)


def test_proximal_term_is_zero_at_the_anchor() -> None:
    params, _ = proximal_setup()
    anchor = [p.detach().clone() for p in params]
    assert proximal_term(params, anchor).item() == 0.0


def test_proximal_term_gradient_pulls_toward_the_anchor() -> None:
    params, anchor = proximal_setup()
    proximal_term(params, anchor).backward()
    for p, a in zip(params, anchor, strict=True):
        torch.testing.assert_close(p.grad, 2 * (p.detach() - a))


def test_proximal_term_over_an_agent_copy() -> None:
    agent = context_agent()
    anchor = [p.detach().clone() for p in agent.parameters()]
    assert proximal_term(agent.parameters(), anchor).item() == 0.0
    with torch.no_grad():
        next(agent.actor.parameters()).add_(0.5)
    n = next(agent.actor.parameters()).numel()
    assert proximal_term(agent.parameters(), anchor).item() == pytest.approx(0.25 * n, rel=1e-5)


def test_proximal_term_rejects_mismatched_parameter_lists() -> None:
    params, anchor = proximal_setup()
    with pytest.raises(ValueError):
        proximal_term(params, anchor[:1])
