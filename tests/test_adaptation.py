"""Tests for the adaptation phase (Alg. 2, Eqs. 18-19, Remark 3) as plain functions: no Trainer involved."""

from __future__ import annotations

import contextlib
import copy
import random
from collections.abc import Iterable, Iterator
from typing import Any

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium.envs.registration import EnvSpec

from mql_lightning.adaptation import AdaptationConfig, AdaptedPolicy, adapt_agent, collect_adaptation_data
from mql_lightning.data.collector import Collector
from mql_lightning.data.replay import EpisodeReplay
from mql_lightning.envs import make_env
from mql_lightning.envs.point_robot import PointRobotEnv
from mql_lightning.modules.agent import TD3Agent
from mql_lightning.modules.context import ContextEncoder
from mql_lightning.modules.td3 import polyak_update
from tests.helpers.td3 import actor_loss_of, critic_loss_of

ENV_ID = "mql/PointRobot-v0"
OBS, ACT = 2, 2
H = 5  # context window
EPISODE_LENGTH = 20  # the point robot's time limit
TRAIN_GOALS = ([0.5, -0.5], [-0.8, 0.3], [0.1, 0.9], [-0.3, -0.7])
NEW_TASK = {"goal": [0.7, 0.7]}


def env_fn() -> gymnasium.Env:
    return make_env(ENV_ID)


def make_agent(seed: int = 0, context: bool = True) -> TD3Agent:
    torch.manual_seed(seed)
    factory = (lambda d: ContextEncoder(d, 8)) if context else None
    return TD3Agent(OBS, ACT, context=factory, hidden_sizes=(32, 32))


def small(**overrides: Any) -> AdaptationConfig:
    """A cheap adaptation: 40 new steps, 5 Eq. 18 and 10 Eq. 19 updates on minibatches of 64."""
    settings: dict[str, Any] = {"num_steps": 40, "new_task_updates": 5, "replay_updates": 10, "replay_batch_size": 64}
    settings.update(overrides)
    return AdaptationConfig(**settings)


def sq_distance(a: Iterable[torch.Tensor], b: Iterable[torch.Tensor]) -> float:
    """Total squared distance ``sum_p ||a_p - b_p||^2`` between matching parameter lists."""
    return sum(float((x.detach() - y.detach()).pow(2).sum()) for x, y in zip(a, b, strict=True))


def state_snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_state_equal(module: torch.nn.Module, snapshot: dict[str, torch.Tensor]) -> None:
    state = module.state_dict()
    assert state.keys() == snapshot.keys()
    for key, value in state.items():
        assert torch.equal(value, snapshot[key]), f"{key} changed"


def states_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def episode_starts(data: EpisodeReplay) -> list[int]:
    """Positions of task 0 whose context window is empty, i.e. the first step of an episode."""
    n = data.num_transitions()
    batch = data.gather(torch.zeros(n, dtype=torch.long), torch.arange(n))
    return torch.nonzero(batch.history.abs().sum(dim=(1, 2)) == 0).squeeze(1).tolist()


# ------------------------------------------------------------------------------------------------------ fixtures
@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """One torch thread, for module fixtures (set up before conftest's per-test thread fixture)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def meta_replay() -> EpisodeReplay:
    """Meta-training replay: 4 random episodes on each of 4 point-robot training tasks (320 transitions)."""
    collector = Collector(env_fn, OBS, ACT, H)
    rng = np.random.default_rng(0)
    replay = EpisodeReplay(len(TRAIN_GOALS), 100, OBS, ACT, H)
    tasks = [{"goal": list(g)} for g in TRAIN_GOALS]
    for _ in range(4):
        for ep in collector.rollout(tasks, list(range(len(tasks))), rng):
            replay.add_episode(ep.task, ep.obs, ep.actions, ep.rewards, ep.next_obs, ep.terminated)
    collector.close()
    return replay


@pytest.fixture(scope="module")
def meta_agent(meta_replay: EpisodeReplay) -> TD3Agent:
    """theta_meta: a small TD3-context agent after 20 TD3 updates (so target networks differ from online ones)."""
    with one_thread():
        return _pretrained_agent(meta_replay)


def _pretrained_agent(meta_replay: EpisodeReplay) -> TD3Agent:
    agent = make_agent(0)
    actor_opt = torch.optim.Adam(agent.actor_parameters(), lr=1e-3)
    critic_opt = torch.optim.Adam(agent.critic_parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(1)
    for i in range(20):
        batch = meta_replay.sample(32, gen)
        loss, _ = critic_loss_of(agent, batch, gen)
        critic_opt.zero_grad()
        loss.backward()
        critic_opt.step()
        if i % 2:
            loss = actor_loss_of(agent, batch)
            actor_opt.zero_grad()
            loss.backward()
            actor_opt.step()
            polyak_update(agent)
    agent.zero_grad(set_to_none=True)
    return agent.eval()


@pytest.fixture(scope="module")
def new_data(meta_agent: TD3Agent) -> EpisodeReplay:
    """40 steps of the meta policy on the new task."""
    with one_thread():
        return collect_adaptation_data(env_fn, meta_agent, NEW_TASK, H, small(), np.random.default_rng(3))


def run_adapt(meta_agent: TD3Agent, meta_replay: EpisodeReplay, new_data: EpisodeReplay, config: AdaptationConfig,
              seed: int = 5):
    return adapt_agent(meta_agent, meta_replay, new_data, config, torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------- theta_meta is untouched
def test_adapt_agent_leaves_every_meta_parameter_and_buffer_bit_for_bit_unchanged(
    meta_agent: TD3Agent, meta_replay: EpisodeReplay, new_data: EpisodeReplay
) -> None:
    before = copy.deepcopy(meta_agent)
    snapshot = state_snapshot(meta_agent)
    flags = [p.requires_grad for p in meta_agent.parameters()]

    result = run_adapt(meta_agent, meta_replay, new_data, small())

    assert_state_equal(meta_agent, snapshot)
    for (name, p), (_, q) in zip(meta_agent.named_parameters(), before.named_parameters(), strict=True):
        assert torch.equal(p, q), name
    for (name, b), (_, c) in zip(meta_agent.named_buffers(), before.named_buffers(), strict=True):
        assert torch.equal(b, c), name
    assert [p.requires_grad for p in meta_agent.parameters()] == flags
    assert all(p.grad is None for p in meta_agent.parameters())
    assert not meta_agent.training  # its mode is not switched either
    # ...while the adapted copy did move, in both the actor and the critic.
    assert result.agent is not meta_agent
    assert sq_distance(result.agent.actor_parameters(), meta_agent.actor_parameters()) > 0
    assert sq_distance(result.agent.critic_parameters(), meta_agent.critic_parameters()) > 0


def test_adapt_agent_leaves_a_meta_optimiser_state_unchanged(
    meta_agent: TD3Agent, meta_replay: EpisodeReplay, new_data: EpisodeReplay
) -> None:
    agent = copy.deepcopy(meta_agent)
    optimizer = torch.optim.Adam(agent.critic_parameters(), lr=1e-3)
    loss, _ = critic_loss_of(agent, meta_replay.sample(16, torch.Generator().manual_seed(0)), None)
    loss.backward()
    optimizer.step()
    saved = copy.deepcopy(optimizer.state_dict())
    params = state_snapshot(agent)

    run_adapt(agent, meta_replay, new_data, small())

    state = optimizer.state_dict()
    assert state["param_groups"] == saved["param_groups"]
    assert state["state"].keys() == saved["state"].keys() and len(state["state"]) > 0
    for key, slot in state["state"].items():
        for name, value in slot.items():
            assert torch.equal(value, saved["state"][key][name]), (key, name)
    assert_state_equal(agent, params)


# ------------------------------------------------------------------------------------------- adaptation data
def test_collect_adaptation_data_keeps_200_steps_as_ten_point_robot_episodes(meta_agent: TD3Agent) -> None:
    data = collect_adaptation_data(env_fn, meta_agent, NEW_TASK, H, AdaptationConfig(), np.random.default_rng(0))
    assert data.num_tasks == 1
    assert data.num_transitions() == 200
    assert episode_starts(data) == list(range(0, 200, EPISODE_LENGTH))


def test_collect_adaptation_data_cuts_the_last_episode_to_num_steps(meta_agent: TD3Agent) -> None:
    data = collect_adaptation_data(env_fn, meta_agent, NEW_TASK, H, small(num_steps=30), np.random.default_rng(0))
    assert data.num_transitions() == 30
    assert episode_starts(data) == [0, 20]


@pytest.mark.parametrize(("num_steps", "starts"), [(200, [0, 50, 100, 150]), (30, [0])])
def test_collect_adaptation_data_episode_length_overrides_the_time_limit(
    meta_agent: TD3Agent, num_steps: int, starts: list[int]
) -> None:
    config = AdaptationConfig(num_steps=num_steps, episode_length=50)
    data = collect_adaptation_data(env_fn, meta_agent, NEW_TASK, H, config, np.random.default_rng(0))
    assert data.num_transitions() == num_steps
    assert episode_starts(data) == starts


def test_collect_adaptation_data_acts_with_the_meta_policy_on_the_given_task(meta_agent: TD3Agent) -> None:
    data = collect_adaptation_data(env_fn, meta_agent, NEW_TASK, H, small(), np.random.default_rng(0))
    n = data.num_transitions()
    batch = data.gather(torch.zeros(n, dtype=torch.long), torch.arange(n))
    with torch.no_grad():
        expected = meta_agent.act(batch.obs, batch.history)
    torch.testing.assert_close(batch.action, expected, rtol=0, atol=1e-6)
    goal = torch.tensor(NEW_TASK["goal"])
    torch.testing.assert_close(batch.reward, -(batch.next_obs - goal).norm(dim=1), rtol=0, atol=1e-5)

    noisy = collect_adaptation_data(env_fn, meta_agent, NEW_TASK, H, small(exploration_noise=0.5),
                                    np.random.default_rng(0))
    noisy_batch = noisy.gather(torch.zeros(n, dtype=torch.long), torch.arange(n))
    with torch.no_grad():
        greedy = meta_agent.act(noisy_batch.obs, noisy_batch.history)
    assert (noisy_batch.action - greedy).abs().max() > 0.1


class _TerminatesAfterSeven(PointRobotEnv):
    """The point robot, but every episode terminates after 7 steps (as walker/hopper-like families can)."""

    def reset(self, **kwargs: Any) -> tuple[np.ndarray, dict[str, Any]]:
        self._t = 0
        return super().reset(**kwargs)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self._t += 1
        obs, reward, _, truncated, info = super().step(action)
        return obs, reward, self._t >= 7, truncated, info


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_collect_adaptation_data_keeps_num_steps_when_episodes_terminate_early(meta_agent: TD3Agent) -> None:
    spec = EnvSpec(id="TerminatesAfterSeven-v0", entry_point=_TerminatesAfterSeven, max_episode_steps=EPISODE_LENGTH)
    data = collect_adaptation_data(lambda: gymnasium.make(spec), meta_agent, NEW_TASK, H, AdaptationConfig(),
                                   np.random.default_rng(0))
    assert data.num_transitions() == 200


# ------------------------------------------------------------------------------------------------- determinism
def _full_adaptation(meta_agent: TD3Agent, meta_replay: EpisodeReplay, rng_seed: int, gen_seed: int):
    config = small()
    data = collect_adaptation_data(env_fn, meta_agent, NEW_TASK, H, config, np.random.default_rng(rng_seed))
    return adapt_agent(meta_agent, meta_replay, data, config, torch.Generator().manual_seed(gen_seed))


def test_adaptation_is_reproducible_from_its_generator_and_rng(
    meta_agent: TD3Agent, meta_replay: EpisodeReplay
) -> None:
    a = _full_adaptation(meta_agent, meta_replay, rng_seed=1, gen_seed=2)
    b = _full_adaptation(meta_agent, meta_replay, rng_seed=1, gen_seed=2)
    assert states_equal(a.agent, b.agent)
    assert (a.ess, a.lam, a.beta_mean, a.classifier_accuracy) == (b.ess, b.lam, b.beta_mean, b.classifier_accuracy)


def test_adaptation_with_other_seeds_gives_another_agent(meta_agent: TD3Agent, meta_replay: EpisodeReplay) -> None:
    base = _full_adaptation(meta_agent, meta_replay, rng_seed=1, gen_seed=2)
    other_generator = _full_adaptation(meta_agent, meta_replay, rng_seed=1, gen_seed=3)
    other_rng = _full_adaptation(meta_agent, meta_replay, rng_seed=4, gen_seed=2)
    for other in (other_generator, other_rng):
        assert not states_equal(base.agent, other.agent)
        assert (base.ess, base.lam) != (other.ess, other.lam)


def test_adaptation_does_not_touch_the_global_random_streams(
    meta_agent: TD3Agent, meta_replay: EpisodeReplay
) -> None:
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    torch_state, np_state, py_state = torch.random.get_rng_state(), np.random.get_state(), random.getstate()

    _full_adaptation(meta_agent, meta_replay, rng_seed=1, gen_seed=2)

    assert torch.equal(torch.random.get_rng_state(), torch_state)
    after = np.random.get_state()
    assert after[0] == np_state[0] and np.array_equal(after[1], np_state[1]) and after[2:] == np_state[2:]
    assert random.getstate() == py_state


# ------------------------------------------------------------------------------------------- ablations via config
def test_no_updates_at_all_returns_an_exact_copy_of_theta_meta(
    meta_agent: TD3Agent, meta_replay: EpisodeReplay, new_data: EpisodeReplay
) -> None:
    result = run_adapt(meta_agent, meta_replay, new_data, small(new_task_updates=0, replay_updates=0))
    assert result.agent is not meta_agent
    assert states_equal(result.agent, meta_agent)


@pytest.mark.parametrize(("new_task_updates", "replay_updates"), [(4, 0), (0, 4)])
def test_each_update_phase_alone_moves_the_parameters(
    meta_agent: TD3Agent, meta_replay: EpisodeReplay, new_data: EpisodeReplay, new_task_updates: int,
    replay_updates: int,
) -> None:
    config = small(new_task_updates=new_task_updates, replay_updates=replay_updates)
    result = run_adapt(meta_agent, meta_replay, new_data, config)
    assert sq_distance(result.agent.critic_parameters(), meta_agent.critic_parameters()) > 0
    assert sq_distance(result.agent.actor_parameters(), meta_agent.actor_parameters()) > 0


def test_lambda_defaults_to_one_minus_ess(
    meta_agent: TD3Agent, meta_replay: EpisodeReplay, new_data: EpisodeReplay
) -> None:
    result = run_adapt(meta_agent, meta_replay, new_data, small())
    assert 0.0 < result.ess < 1.0
    assert result.lam == pytest.approx(1.0 - result.ess)
    assert result.new_transitions == 40
    assert 0.0 <= result.classifier_accuracy <= 1.0
    assert result.metrics() == {"ess": result.ess, "lambda": result.lam, "beta_mean": result.beta_mean,
                                "classifier_accuracy": result.classifier_accuracy}


def test_fixed_lambda_overrides_ess_but_ess_is_still_reported(
    meta_agent: TD3Agent, meta_replay: EpisodeReplay, new_data: EpisodeReplay
) -> None:
    by_ess = run_adapt(meta_agent, meta_replay, new_data, small())
    fixed = run_adapt(meta_agent, meta_replay, new_data, small(fixed_lambda=0.5))
    assert fixed.lam == 0.5
    assert fixed.ess == by_ess.ess  # same generator, same ESS batch


def _distances(result, meta_agent: TD3Agent) -> tuple[float, float]:
    actor = sq_distance(result.agent.actor_parameters(), meta_agent.actor_parameters())
    critic = sq_distance(result.agent.critic_parameters(), meta_agent.critic_parameters())
    return actor, critic


# Enough updates with a large step that the unpenalised agent wanders far from theta_meta.
MANY = {"new_task_updates": 30, "replay_updates": 30, "lr": 1e-2}


@pytest.fixture(scope="module")
def free(meta_agent: TD3Agent, meta_replay: EpisodeReplay, new_data: EpisodeReplay) -> tuple[float, float]:
    """(actor, critic) squared distances from theta_meta after MANY updates with lambda = 0."""
    with one_thread():
        return _distances(run_adapt(meta_agent, meta_replay, new_data, small(fixed_lambda=0.0, **MANY)), meta_agent)


def test_proximal_term_keeps_the_adapted_agent_close_to_theta_meta(
    meta_agent: TD3Agent, meta_replay: EpisodeReplay, new_data: EpisodeReplay, free: tuple[float, float]
) -> None:
    pulled = _distances(run_adapt(meta_agent, meta_replay, new_data, small(fixed_lambda=1.0, **MANY)), meta_agent)
    assert sum(pulled) < 0.25 * sum(free)
    assert pulled[0] < 0.25 * free[0] and pulled[1] < 0.25 * free[1]


def test_actor_only_proximal_scope_leaves_the_critic_free(
    meta_agent: TD3Agent, meta_replay: EpisodeReplay, new_data: EpisodeReplay, free: tuple[float, float]
) -> None:
    everything = _distances(run_adapt(meta_agent, meta_replay, new_data, small(fixed_lambda=1.0, **MANY)), meta_agent)
    actor_only = _distances(
        run_adapt(meta_agent, meta_replay, new_data, small(fixed_lambda=1.0, proximal_scope="actor", **MANY)),
        meta_agent,
    )
    assert actor_only[1] > 4.0 * everything[1]  # the critic is no longer pulled back
    assert actor_only[0] < 0.25 * free[0]  # the actor still is


def test_proximal_new_task_switches_the_penalty_of_eq_18_only(
    meta_agent: TD3Agent, meta_replay: EpisodeReplay, new_data: EpisodeReplay
) -> None:
    eq18 = {"new_task_updates": 20, "replay_updates": 0, "lr": 1e-2}
    with_term = run_adapt(meta_agent, meta_replay, new_data, small(fixed_lambda=1.0, **eq18))
    without = run_adapt(meta_agent, meta_replay, new_data, small(fixed_lambda=1.0, proximal_new_task=False, **eq18))
    assert sum(_distances(with_term, meta_agent)) < 0.5 * sum(_distances(without, meta_agent))
    # With lambda = 0 the switch has nothing to switch: bit-identical results.
    zero = run_adapt(meta_agent, meta_replay, new_data, small(fixed_lambda=0.0, **eq18))
    zero_off = run_adapt(meta_agent, meta_replay, new_data, small(fixed_lambda=0.0, proximal_new_task=False, **eq18))
    assert states_equal(zero.agent, zero_off.agent)


def test_zero_betas_give_zero_ess_full_lambda_and_inert_replay_updates(
    meta_agent: TD3Agent, meta_replay: EpisodeReplay, new_data: EpisodeReplay
) -> None:
    config = small(beta_floor=100.0, new_task_updates=0, replay_updates=20)
    result = run_adapt(meta_agent, meta_replay, new_data, config)
    assert result.ess == 0.0
    assert result.lam == 1.0
    assert result.beta_mean == 0.0
    # Every Eq. 19 loss is weighted by beta = 0 and the proximal term is flat at theta_meta: nothing moves.
    assert sq_distance(result.agent.actor_parameters(), meta_agent.actor_parameters()) == 0.0
    assert sq_distance(result.agent.critic_parameters(), meta_agent.critic_parameters()) == 0.0
    # The same updates with the usual betas do move the agent.
    weighted = run_adapt(meta_agent, meta_replay, new_data, small(new_task_updates=0, replay_updates=20))
    assert sq_distance(weighted.agent.critic_parameters(), meta_agent.critic_parameters()) > 0


def test_context_obs_features_and_plain_td3_adapt(meta_replay: EpisodeReplay, meta_agent: TD3Agent) -> None:
    data = collect_adaptation_data(env_fn, meta_agent, NEW_TASK, H, small(), np.random.default_rng(3))
    with_obs = run_adapt(meta_agent, meta_replay, data, small(features="context_obs"))
    plain_agent = make_agent(0, context=False)
    plain_data = collect_adaptation_data(env_fn, plain_agent, NEW_TASK, H, small(), np.random.default_rng(3))
    plain = run_adapt(plain_agent, meta_replay, plain_data, small())
    for result in (with_obs, plain):
        assert 0.0 <= result.ess <= 1.0
        assert result.lam == pytest.approx(1.0 - result.ess)
    assert sq_distance(plain.agent.actor_parameters(), plain_agent.actor_parameters()) > 0


# --------------------------------------------------------------------------------------------- config validation
@pytest.mark.parametrize(
    "bad",
    [
        {"num_steps": 0},
        {"replay_batch_size": 0},
        {"new_task_updates": -1},
        {"replay_updates": -1},
        {"exploration_noise": -0.1},
        {"beta_clip": -1.0},
        {"fixed_lambda": 1.5},
        {"fixed_lambda": -0.1},
        {"C": 0.0},
        {"lr": 0.0},
        {"episode_length": 0},
        {"features": "observation"},
        {"proximal_scope": "critic"},
    ],
)
def test_adaptation_config_rejects_bad_values(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        AdaptationConfig(**bad)


@pytest.mark.parametrize(
    "edge", [{"fixed_lambda": 0.0}, {"fixed_lambda": 1.0}, {"new_task_updates": 0, "replay_updates": 0},
             {"num_steps": 1, "replay_batch_size": 1}, {"beta_clip": 0.0, "exploration_noise": 0.0}]
)
def test_adaptation_config_accepts_boundary_values(edge: dict[str, Any]) -> None:
    AdaptationConfig(**edge)


# ------------------------------------------------------------------------------------------------ AdaptedPolicy
def test_adapted_policy_acts_like_the_collector_step_by_step(
    meta_agent: TD3Agent, meta_replay: EpisodeReplay, new_data: EpisodeReplay
) -> None:
    agent = run_adapt(meta_agent, meta_replay, new_data, small()).agent

    @torch.no_grad()
    def policy_fn(obs: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        return agent.act(obs, history)

    collector = Collector(env_fn, OBS, ACT, H)
    (episode,) = collector.rollout([NEW_TASK], [0], np.random.default_rng(11), policy_fn, record_history=True)
    collector.close()
    seed = int(np.random.default_rng(11).integers(0, 2**31 - 1, size=1)[0])  # the collector's reset seed

    env = make_env(ENV_ID)
    env.unwrapped.set_task(NEW_TASK)
    obs, _ = env.reset(seed=seed)
    policy = AdaptedPolicy(agent, history_length=H)
    policy.reset()
    steps, done = 0, False
    while not done:
        np.testing.assert_array_equal(policy._history[0].numpy(), episode.histories[steps])
        action = policy.act(obs)
        np.testing.assert_array_equal(action, episode.actions[steps])
        obs, reward, terminated, truncated, _ = env.step(action)
        assert reward == pytest.approx(float(episode.rewards[steps]))
        policy.observe(reward)
        steps += 1
        done = terminated or truncated
    env.close()
    assert steps == EPISODE_LENGTH == episode.length
    assert truncated and not terminated


def test_adapted_policy_reset_starts_from_an_empty_window(meta_agent: TD3Agent) -> None:
    env = make_env(ENV_ID)
    env.unwrapped.set_task(NEW_TASK)
    policy = AdaptedPolicy(meta_agent, history_length=H)
    runs = []
    for _ in range(2):
        obs, _ = env.reset(seed=7)
        policy.reset()
        actions = []
        for _ in range(8):
            action = policy.act(obs)
            obs, reward, *_ = env.step(action)
            policy.observe(reward)
            actions.append(action)
        runs.append(np.stack(actions))
    env.close()
    np.testing.assert_array_equal(runs[0], runs[1])
    assert policy._history.abs().sum() > 0
    policy.reset()
    assert policy._history.abs().sum() == 0


def test_adapted_policy_observe_must_follow_act(meta_agent: TD3Agent) -> None:
    policy = AdaptedPolicy(meta_agent, history_length=H)
    with pytest.raises(RuntimeError):
        policy.observe(0.0)
    policy.act(np.zeros(OBS, dtype=np.float32))
    policy.observe(-1.0)
    with pytest.raises(RuntimeError):  # one observe per act
        policy.observe(-1.0)
    policy.act(np.zeros(OBS, dtype=np.float32))
    policy.reset()
    with pytest.raises(RuntimeError):  # reset drops the pending step
        policy.observe(-1.0)
