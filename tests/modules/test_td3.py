"""Tests for the TD3 agent (shapes, parameter groups, target networks) and its update (TD target, Polyak)."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from mql_lightning.data.replay import ReplayBatch
from mql_lightning.modules.agent import TD3Agent
from mql_lightning.modules.context import ContextEncoder
from mql_lightning.modules.td3 import polyak_update, td3_update, td_target

OBS, ACT, H, B, Z = 3, 2, 4, 6, 5
C = ACT + 1 + OBS


@pytest.fixture(autouse=True)
def _single_thread_private_rng() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with torch.random.fork_rng():  # tests seed the global RNG to build agents; leave it as it was
        yield
    torch.set_num_threads(threads)


def small_context(input_dim: int) -> ContextEncoder:
    return ContextEncoder(input_dim, hidden_size=Z)


def make_agent(seed: int = 0, **kwargs: object) -> TD3Agent:
    torch.manual_seed(seed)
    kwargs.setdefault("context", small_context)
    return TD3Agent(OBS, ACT, hidden_sizes=(8,), **kwargs)  # type: ignore[arg-type]


def inputs(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    obs = torch.randn(B, OBS, generator=gen)
    action = torch.rand(B, ACT, generator=gen) * 2 - 1
    history = torch.randn(B, H, C, generator=gen)
    return obs, action, history


def target(
    agent: TD3Agent, next_obs: torch.Tensor, next_history: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The TD target of transitions with reward 0 that did not terminate: ``gamma min(Q1', Q2')(x', a')``."""
    zeros = torch.zeros(len(next_obs))
    batch = ReplayBatch(next_obs, next_obs[:, :ACT], zeros, next_obs, zeros, zeros.long(), next_history, next_history)
    return td_target(agent, batch, generator)


def ids(params: Iterator[nn.Parameter]) -> list[int]:
    return [id(p) for p in params]


# --------------------------------------------------------------------------------------------------------------
# Forward passes
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("context", [small_context, None], ids=["context", "plain"])
def test_output_shapes(context: object) -> None:
    agent = make_agent(context=context)
    obs, action, history = inputs()
    assert agent.act(obs, history).shape == (B, ACT)
    q1, q2 = agent.q_values(obs, action, history)
    assert q1.shape == q2.shape == (B,)
    assert agent.q1(obs, action, history).shape == (B,)
    assert target(agent, obs, history, torch.Generator().manual_seed(0)).shape == (B,)


def test_actions_lie_in_the_unit_box_even_for_extreme_inputs() -> None:
    agent = make_agent()
    obs, _, history = inputs()
    actions = agent.act(1e3 * obs, 1e3 * history)
    assert actions.abs().max() <= 1.0
    assert agent.act(obs, history).abs().max() < 1.0  # tanh output, not a hard clip of ordinary inputs


def test_q1_is_the_first_of_the_twin_critics() -> None:
    agent = make_agent()
    obs, action, history = inputs()
    q1, q2 = agent.q_values(obs, action, history)
    torch.testing.assert_close(agent.q1(obs, action, history), q1)
    assert not torch.allclose(q1, q2)  # independently initialised critics


def test_context_agent_uses_the_history() -> None:
    agent = make_agent()
    obs, action, history = inputs()
    other = history + 1.0
    assert not torch.allclose(agent.act(obs, history), agent.act(obs, other))
    assert not torch.allclose(agent.q_values(obs, action, history)[0], agent.q_values(obs, action, other)[0])


def test_plain_td3_has_no_context_encoders_and_ignores_the_history() -> None:
    agent = make_agent(context=None)
    assert not agent.uses_context
    assert agent.actor_context is None and agent.critic_context is None
    assert agent.actor_context_target is None and agent.critic_context_target is None
    assert not any(isinstance(m, nn.GRU) for m in agent.modules())
    obs, action, history = inputs()
    other = torch.randn(B, H, C)
    torch.testing.assert_close(agent.act(obs, history), agent.act(obs, other), rtol=0, atol=0)
    torch.testing.assert_close(agent.q_values(obs, action, history), agent.q_values(obs, action, other))
    gen = torch.Generator
    torch.testing.assert_close(
        target(agent, obs, history, gen().manual_seed(0)), target(agent, obs, other, gen().manual_seed(0))
    )
    assert agent.actor.net[0].in_features == OBS
    assert agent.critic.q1[0].in_features == OBS + ACT


def test_context_widens_the_network_inputs_by_the_context_size() -> None:
    agent = make_agent()
    assert agent.uses_context
    assert agent.actor.net[0].in_features == OBS + Z
    assert agent.critic.q1[0].in_features == OBS + ACT + Z


# --------------------------------------------------------------------------------------------------------------
# Parameter groups
# --------------------------------------------------------------------------------------------------------------


def test_separate_encoders_split_the_trainable_parameters_into_disjoint_actor_and_critic_groups() -> None:
    agent = make_agent()
    assert agent.actor_context is not agent.critic_context
    actor, critic = ids(agent.actor_parameters()), ids(agent.critic_parameters())
    assert len(actor) == len(set(actor)) and len(critic) == len(set(critic))
    assert not set(actor) & set(critic)
    trainable = {id(p) for p in agent.parameters() if p.requires_grad}
    assert set(actor) | set(critic) == trainable
    assert set(ids(agent.actor_context.parameters())) <= set(actor)
    assert set(ids(agent.critic_context.parameters())) <= set(critic)


def test_plain_td3_parameter_groups_cover_actor_and_critic() -> None:
    agent = make_agent(context=None)
    actor, critic = set(ids(agent.actor_parameters())), set(ids(agent.critic_parameters()))
    assert actor == set(ids(agent.actor.parameters()))
    assert critic == set(ids(agent.critic.parameters()))
    assert actor | critic == {id(p) for p in agent.parameters() if p.requires_grad}


def test_shared_context_is_one_encoder_trained_by_the_critic_only() -> None:
    agent = make_agent(shared_context=True)
    assert agent.shared_context
    assert agent.actor_context is agent.critic_context
    assert agent.actor_context_target is agent.critic_context_target
    encoder = set(ids(agent.actor_context.parameters()))
    actor, critic = set(ids(agent.actor_parameters())), set(ids(agent.critic_parameters()))
    assert not encoder & actor
    assert encoder <= critic
    assert not actor & critic
    assert actor | critic == {id(p) for p in agent.parameters() if p.requires_grad}
    # The actor's gradient does not reach the shared encoder (its z is detached in act()).
    obs, _, history = inputs()
    agent.act(obs, history).sum().backward()
    assert all(p.grad is None for p in agent.actor_context.parameters())
    assert all(p.grad is not None for p in agent.actor.parameters())


def test_separate_actor_encoder_receives_the_actor_gradient() -> None:
    agent = make_agent()
    obs, _, history = inputs()
    agent.act(obs, history).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in agent.actor_context.parameters())
    assert all(p.grad is None for p in agent.critic_context.parameters())


# --------------------------------------------------------------------------------------------------------------
# Target networks
# --------------------------------------------------------------------------------------------------------------


def online_target_pairs(agent: TD3Agent) -> list[tuple[nn.Module, nn.Module]]:
    return [
        (agent.actor, agent.actor_target),
        (agent.critic, agent.critic_target),
        (agent.actor_context, agent.actor_context_target),
        (agent.critic_context, agent.critic_context_target),
    ]


def test_targets_are_frozen_independent_copies_equal_to_the_online_networks() -> None:
    agent = make_agent()
    for online, target in online_target_pairs(agent):
        assert online is not target
        for p, t in zip(online.parameters(), target.parameters(), strict=True):
            assert not t.requires_grad
            assert p.requires_grad
            assert p.data_ptr() != t.data_ptr()
            torch.testing.assert_close(p, t, rtol=0, atol=0)


def test_polyak_update_moves_every_target_by_exactly_tau() -> None:
    tau = 0.25
    agent = make_agent(tau=tau)
    with torch.no_grad():
        for online, _ in online_target_pairs(agent):
            for p in online.parameters():
                p.add_(torch.randn_like(p))
    before = {name: t.clone() for name, t in agent.named_parameters() if not t.requires_grad}
    polyak_update(agent)

    # One tensor numerically: the first actor layer's weight.
    w, w_t0 = agent.actor.net[0].weight, before["actor_target.net.0.weight"]
    expected = w_t0 + tau * (w - w_t0)
    torch.testing.assert_close(agent.actor_target.net[0].weight, expected)
    assert not torch.allclose(agent.actor_target.net[0].weight, w_t0)
    # And every target, context encoders included.
    for online, target in online_target_pairs(agent):
        target_names = {id(t): n for n, t in agent.named_parameters() if not t.requires_grad}
        for p, t in zip(online.parameters(), target.parameters(), strict=True):
            old = before[target_names[id(t)]]
            torch.testing.assert_close(t, old + tau * (p - old))


def test_polyak_update_with_tau_one_copies_the_online_networks() -> None:
    agent = make_agent(tau=1.0, shared_context=True)
    with torch.no_grad():
        for p in agent.parameters():
            if p.requires_grad:
                p.mul_(2.0).add_(0.5)
    polyak_update(agent)
    for online, target in online_target_pairs(agent):
        for p, t in zip(online.parameters(), target.parameters(), strict=True):
            torch.testing.assert_close(t, p)


def test_a_copy_of_an_agent_updates_its_own_targets() -> None:
    # The agent keeps its Polyak parameter lists between calls: a deep copy (adaptation trains one) must get its own.
    agent = make_agent(tau=1.0)
    polyak_update(agent)  # builds the lists
    copy_ = copy.deepcopy(agent)
    with torch.no_grad():
        copy_.actor.net[0].weight.add_(1.0)
    polyak_update(copy_)
    torch.testing.assert_close(copy_.actor_target.net[0].weight, copy_.actor.net[0].weight)
    torch.testing.assert_close(agent.actor_target.net[0].weight, agent.actor.net[0].weight)
    assert not torch.equal(agent.actor_target.net[0].weight, copy_.actor_target.net[0].weight)


def test_polyak_update_after_casting_the_agent_updates_the_cast_parameters() -> None:
    agent = make_agent(tau=1.0)
    polyak_update(agent)
    agent.double()
    with torch.no_grad():
        agent.critic.q2[0].bias.add_(1.0)
    polyak_update(agent)
    assert agent.critic_target.q2[0].bias.dtype == torch.float64
    torch.testing.assert_close(agent.critic_target.q2[0].bias, agent.critic.q2[0].bias)


def test_td_target_is_reproducible_per_generator_seed() -> None:
    agent = make_agent(policy_noise=0.5, noise_clip=0.5)
    obs, _, history = inputs()
    a = target(agent, obs, history, torch.Generator().manual_seed(3))
    b = target(agent, obs, history, torch.Generator().manual_seed(3))
    c = target(agent, obs, history, torch.Generator().manual_seed(4))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)
    assert not a.requires_grad


def test_td_target_records_no_autograd_graph(monkeypatch: pytest.MonkeyPatch) -> None:
    agent = make_agent(policy_noise=0.5)
    grad_modes: list[bool] = []
    target_action = agent.target_action

    def recording(*args: object, **kwargs: object) -> torch.Tensor:
        grad_modes.append(torch.is_grad_enabled())
        return target_action(*args, **kwargs)

    monkeypatch.setattr(agent, "target_action", recording)
    obs, _, history = inputs()
    target(agent, obs, history, torch.Generator().manual_seed(3))
    assert grad_modes == [False]


def test_td_target_without_smoothing_noise_ignores_the_generator() -> None:
    agent = make_agent(policy_noise=0.0)
    obs, _, history = inputs()
    a = target(agent, obs, history, torch.Generator().manual_seed(3))
    c = target(agent, obs, history, torch.Generator().manual_seed(4))
    torch.testing.assert_close(a, c, rtol=0, atol=0)


def test_td_target_is_the_minimum_of_the_twin_target_critics() -> None:
    agent = make_agent(policy_noise=0.0)
    obs, _, history = inputs()
    with torch.no_grad():
        z_actor = agent.actor_context_target(history)
        next_action = agent.actor_target(torch.cat([obs, z_actor], -1))
        z_critic = agent.critic_context_target(history)
        q1, q2 = agent.critic_target(torch.cat([obs, next_action, z_critic], -1))
    assert (q1 < q2).any() and (q2 < q1).any()  # so the minimum really picks from both critics
    torch.testing.assert_close(target(agent, obs, history), agent.gamma * torch.minimum(q1, q2))


# --------------------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"policy_delay": 0},
        {"tau": 0.0},
        {"tau": 1.5},
        {"gamma": -0.1},
        {"gamma": 1.1},
    ],
    ids=lambda k: "-".join(f"{n}={v}" for n, v in k.items()),
)
def test_invalid_hyper_parameters_raise_value_error(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        TD3Agent(OBS, ACT, hidden_sizes=(4,), **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(("obs_dim", "action_dim"), [(0, 2), (3, 0), (-1, 2)])
def test_invalid_dimensions_raise_value_error(obs_dim: int, action_dim: int) -> None:
    with pytest.raises(ValueError):
        TD3Agent(obs_dim, action_dim, hidden_sizes=(4,))



@contextlib.contextmanager
def frozen(params: list[nn.Parameter]) -> Iterator[None]:
    for p in params:
        p.requires_grad_(False)
    yield
    for p in params:
        p.requires_grad_(True)


@pytest.mark.parametrize("shared_context", [False, True], ids=["separate", "shared"])
def test_updates_with_the_compiled_gru_and_the_torch_gru_agree(shared_context: bool) -> None:
    # The same TD3-context updates (critic steps, actor steps, target updates) with the context GRUs computed by the
    # compiled kernel and by the torch implementation: the same losses and parameters, to float rounding.
    gen = torch.Generator().manual_seed(5)
    window = torch.randn(32, H + 1, C, generator=gen)
    current = window[:, -1]
    batch = ReplayBatch(
        obs=current[:, ACT + 1 :], action=current[:, :ACT].tanh(), reward=current[:, ACT],
        next_obs=torch.randn(32, OBS, generator=gen), terminated=torch.zeros(32),
        task=torch.zeros(32, dtype=torch.long), history=window[:, :-1], next_history=window[:, 1:],
    )
    runs = []
    for implementation in ("compiled", "torch"):
        agent = make_agent(context=lambda d, i=implementation: ContextEncoder(d, hidden_size=Z, implementation=i),
                           shared_context=shared_context, policy_noise=0.2)
        actor_opt = torch.optim.Adam(agent.actor_parameters(), lr=1e-3)
        critic_params = list(agent.critic_parameters())
        critic_opt = torch.optim.Adam(critic_params, lr=1e-3)
        noise = torch.Generator().manual_seed(6)
        losses = [
            td3_update(agent, batch, n, actor_opt, critic_opt, torch.Tensor.backward,
                       lambda params=critic_params: frozen(params), noise)[:2]
            for n in range(1, 7)
        ]
        runs.append((losses, agent.state_dict()))
    (kernel_losses, kernel_state), (torch_losses, torch_state) = runs
    for (c_k, a_k), (c_t, a_t) in zip(kernel_losses, torch_losses, strict=True):
        torch.testing.assert_close(c_k, c_t, rtol=1e-4, atol=1e-6)
        assert (a_k is None) == (a_t is None)
        if a_k is not None:
            torch.testing.assert_close(a_k, a_t, rtol=1e-4, atol=1e-6)
    for key, value in torch_state.items():
        torch.testing.assert_close(kernel_state[key], value, rtol=1e-4, atol=1e-6)
