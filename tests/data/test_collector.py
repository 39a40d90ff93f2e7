"""Tests for the rollout collector, and its agreement with the replay buffer (docs/design.md#replay-stores-episodes,
#truncation-is-not-termination)."""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
import pytest
import torch

from mql_lightning.data import collector as collector_module
from mql_lightning.data.collector import Collector, Episode
from mql_lightning.data.replay import EpisodeReplay
from mql_lightning.envs import make_env

ENV_ID = "mql/PointRobot-v0"
OBS, ACT = 2, 2
C = ACT + 1 + OBS
EPISODE_LENGTH = 20
GOALS = ([0.5, -0.5], [-0.8, 0.3], [0.1, 0.9])


class LinearHistoryPolicy:
    """A fixed random policy ``tanh(obs @ W_o + mean_t(history) @ W_h + b)``: deterministic, uses the history."""

    def __init__(self, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.w_obs = torch.randn(OBS, ACT, generator=gen)
        self.w_hist = 3.0 * torch.randn(C, ACT, generator=gen)
        self.bias = 0.1 * torch.randn(ACT, generator=gen)
        self.calls = 0

    def __call__(self, obs: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return torch.tanh(obs @ self.w_obs + history.mean(dim=1) @ self.w_hist + self.bias)


def make_collector(history_length: int) -> Collector:
    return Collector(lambda: make_env(ENV_ID), OBS, ACT, history_length)


def tasks(n: int = 3) -> list[dict[str, Any]]:
    return [{"goal": list(GOALS[i % len(GOALS)])} for i in range(n)]


def assert_episodes_equal(a: list[Episode], b: list[Episode]) -> None:
    assert len(a) == len(b)
    for ea, eb in zip(a, b, strict=True):
        assert ea.task == eb.task
        for name in ("obs", "actions", "rewards", "next_obs", "terminated"):
            np.testing.assert_array_equal(getattr(ea, name), getattr(eb, name), err_msg=name)
        if ea.histories is None:
            assert eb.histories is None
        else:
            np.testing.assert_array_equal(ea.histories, eb.histories)


# --------------------------------------------------------------------------------------------------------------
# The key test of docs/design.md#replay-stores-episodes: the window the policy sees at act time is the window the buffer
# gathers.
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("history_length", [5, 25])
def test_replay_gathers_exactly_the_windows_the_collector_gave_the_policy(history_length: int) -> None:
    collector = make_collector(history_length)
    policy = LinearHistoryPolicy(seed=1)
    rng = np.random.default_rng(7)
    replay = EpisodeReplay(3, 100, OBS, ACT, history_length)
    task_ids = [0, 1, 2]
    rounds = 2  # two episodes per task, so windows must also stop at the boundary between stored episodes
    stored: list[tuple[Episode, int]] = []  # (episode, ring position of its first transition)
    for _ in range(rounds):
        episodes = collector.rollout(tasks(), task_ids, rng, policy, noise_std=0.2, record_history=True)
        for ep in episodes:
            start = replay.num_transitions(ep.task)
            replay.add_episode(ep.task, ep.obs, ep.actions, ep.rewards, ep.next_obs, ep.terminated)
            stored.append((ep, start))
    collector.close()

    checked = 0
    for ep, start in stored:
        assert ep.histories is not None
        assert ep.histories.shape == (ep.length, history_length, C)
        task = torch.full((ep.length,), ep.task, dtype=torch.int64)
        position = torch.arange(start, start + ep.length, dtype=torch.int64)
        batch = replay.gather(task, position)
        np.testing.assert_array_equal(batch.history.numpy(), ep.histories)
        np.testing.assert_array_equal(batch.obs.numpy(), ep.obs)
        np.testing.assert_array_equal(batch.action.numpy(), ep.actions)
        np.testing.assert_array_equal(batch.reward.numpy(), ep.rewards)
        np.testing.assert_array_equal(batch.next_obs.numpy(), ep.next_obs)
        np.testing.assert_array_equal(batch.terminated.numpy(), ep.terminated.astype(np.float32))
        # The next-history of step t is the window the policy saw at step t + 1.
        np.testing.assert_array_equal(batch.next_history[:-1].numpy(), ep.histories[1:])
        checked += ep.length
    assert checked == replay.num_transitions() == rounds * 3 * EPISODE_LENGTH


def test_history_windows_are_zero_padded_and_slide_by_one_entry() -> None:
    h = 5
    collector = make_collector(h)
    (ep,) = collector.rollout(tasks(1), [0], np.random.default_rng(3), LinearHistoryPolicy(), record_history=True)
    collector.close()
    assert ep.histories is not None
    np.testing.assert_array_equal(ep.histories[0], np.zeros((h, C), dtype=np.float32))
    for t in range(1, ep.length):
        newest = np.concatenate([ep.actions[t - 1], ep.rewards[t - 1 : t], ep.obs[t - 1]])
        np.testing.assert_array_equal(ep.histories[t, -1], newest)
        np.testing.assert_array_equal(ep.histories[t, :-1], ep.histories[t - 1, 1:])
        # Entries before the episode start stay zero.
        assert not ep.histories[t, : max(h - t, 0)].any()


def test_noise_free_actions_are_the_policy_applied_to_the_recorded_windows() -> None:
    collector = make_collector(5)
    policy = LinearHistoryPolicy(seed=2)
    (ep,) = collector.rollout(tasks(1), [0], np.random.default_rng(4), policy, record_history=True)
    collector.close()
    assert ep.histories is not None
    expected = policy(torch.from_numpy(ep.obs), torch.from_numpy(ep.histories)).numpy()
    np.testing.assert_allclose(ep.actions, expected, rtol=0, atol=1e-6)


def test_lockstep_rollout_makes_one_batched_policy_call_per_step() -> None:
    collector = make_collector(5)
    policy = LinearHistoryPolicy()
    episodes = collector.rollout(tasks(3), [2, 0, 1], np.random.default_rng(0), policy)
    collector.close()
    assert [ep.task for ep in episodes] == [2, 0, 1]
    assert policy.calls == EPISODE_LENGTH
    assert episodes[0].histories is None  # not asked for


# --------------------------------------------------------------------------------------------------------------
# Reproducibility, random actions, exploration noise, episode ends.
# --------------------------------------------------------------------------------------------------------------


def test_same_rng_seed_gives_identical_episodes_and_another_seed_does_not() -> None:
    policy = LinearHistoryPolicy()
    runs = []
    for seed in (11, 11, 12):
        collector = make_collector(5)
        runs.append(
            collector.rollout(tasks(), [0, 1, 2], np.random.default_rng(seed), policy, 0.3, record_history=True)
        )
        collector.close()
    assert_episodes_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0][0].obs, runs[2][0].obs)


def test_reused_collector_with_same_seed_reproduces_the_rollout() -> None:
    collector = make_collector(5)
    first = collector.rollout(tasks(), [0, 1, 2], np.random.default_rng(5), None)
    second = collector.rollout(tasks(), [0, 1, 2], np.random.default_rng(5), None)
    collector.close()
    assert_episodes_equal(first, second)


def test_no_policy_acts_uniformly_at_random_in_the_unit_box() -> None:
    collector = make_collector(5)
    episodes = collector.rollout(tasks(), [0, 1, 2], np.random.default_rng(9), policy=None)
    collector.close()
    actions = np.concatenate([ep.actions for ep in episodes])
    assert actions.shape == (3 * EPISODE_LENGTH, ACT)
    assert actions.dtype == np.float32
    assert actions.min() >= -1.0 and actions.max() <= 1.0
    # Spread over the whole box, in every dimension, and not shared between the lockstep envs.
    assert (actions.min(axis=0) < -0.8).all() and (actions.max(axis=0) > 0.8).all()
    assert abs(float(actions.mean())) < 0.2
    assert not np.array_equal(episodes[0].actions, episodes[1].actions)


def test_exploration_noise_changes_actions_but_keeps_them_in_bounds() -> None:
    policy = LinearHistoryPolicy()
    collector = make_collector(5)
    clean = collector.rollout(tasks(), [0, 1, 2], np.random.default_rng(1), policy)
    noisy = collector.rollout(tasks(), [0, 1, 2], np.random.default_rng(1), policy, noise_std=2.0)
    collector.close()
    clean_actions = np.concatenate([ep.actions for ep in clean])
    noisy_actions = np.concatenate([ep.actions for ep in noisy])
    # Same reset seeds: the episodes start from the same states, then the noise makes them diverge.
    np.testing.assert_array_equal(clean[0].obs[0], noisy[0].obs[0])
    assert not np.array_equal(clean[0].actions[0], noisy[0].actions[0])
    assert noisy_actions.min() >= -1.0 and noisy_actions.max() <= 1.0
    # A large noise must hit the bounds: the actions are clipped, not rescaled.
    assert (np.abs(noisy_actions) == 1.0).any()
    assert not (np.abs(clean_actions) == 1.0).all()


def test_point_robot_episodes_are_truncated_at_20_steps_never_terminated() -> None:
    collector = make_collector(5)
    episodes = collector.rollout(tasks(), [0, 1, 2], np.random.default_rng(2), LinearHistoryPolicy())
    collector.close()
    for ep in episodes:
        assert ep.length == EPISODE_LENGTH
        assert ep.obs.shape == ep.next_obs.shape == (EPISODE_LENGTH, OBS)
        assert ep.actions.shape == (EPISODE_LENGTH, ACT)
        assert ep.terminated.dtype == np.bool_ and not ep.terminated.any()
        np.testing.assert_array_equal(ep.next_obs[:-1], ep.obs[1:])
        assert ep.ret == pytest.approx(float(ep.rewards.sum()))
        assert (ep.rewards <= 0).all()  # negative distance to the goal


def test_each_lockstep_episode_runs_on_its_own_task() -> None:
    collector = make_collector(5)
    far = [{"goal": [1.0, 1.0]}, {"goal": [-1.0, -1.0]}]
    episodes = collector.rollout(far, [0, 1], np.random.default_rng(0), None)
    collector.close()
    for ep, task in zip(episodes, far, strict=True):
        distance = np.linalg.norm(ep.next_obs.astype(np.float64) - np.asarray(task["goal"]), axis=1)
        np.testing.assert_allclose(-distance, ep.rewards, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------------------------
# Lockstep episodes of different lengths, trace growth, and what the policy may do with its inputs and outputs.
# --------------------------------------------------------------------------------------------------------------


class CountdownEnv(gymnasium.Env):
    """A tiny task env that terminates after ``task["steps"]`` steps; its state follows the actions.

    Registered nowhere and without a time limit of its own (so ``spec`` is ``None``); wrap it in a ``TimeLimit`` to get
    truncations too.
    """

    observation_space = gymnasium.spaces.Box(-np.inf, np.inf, (OBS,), np.float64)
    action_space = gymnasium.spaces.Box(-1.0, 1.0, (ACT,), np.float32)

    def __init__(self) -> None:
        self.steps, self.t = 1, 0
        self.state = np.zeros(OBS)

    def set_task(self, task: dict[str, Any]) -> None:
        self.steps = task["steps"]

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.t, self.state = 0, self.np_random.normal(size=OBS)
        return self.state.copy(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.t += 1
        self.state = 0.5 * self.state + np.asarray(action, dtype=np.float64)
        return self.state.copy(), float(self.state.sum()), self.t >= self.steps, False, {}


def countdown_collector(history_length: int, time_limit: int | None = None) -> Collector:
    def make() -> gymnasium.Env:
        env = CountdownEnv()
        return env if time_limit is None else gymnasium.wrappers.TimeLimit(env, time_limit)

    return Collector(make, OBS, ACT, history_length)


class ShapeRecordingPolicy(LinearHistoryPolicy):
    """:class:`LinearHistoryPolicy` that also records the batch size of every call."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__(seed)
        self.batch_sizes: list[int] = []

    def __call__(self, obs: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        self.batch_sizes.append(obs.shape[0])
        return super().__call__(obs, history)


def test_lockstep_episodes_of_different_lengths_keep_their_own_windows() -> None:
    h, steps, limit = 4, [3, 9, 1, 6], 7  # the 9-step task is truncated by the time limit at 7
    collector = countdown_collector(h, time_limit=limit)
    policy = ShapeRecordingPolicy(seed=3)
    episodes = collector.rollout([{"steps": k} for k in steps], [0, 1, 2, 3], np.random.default_rng(0), policy, 0.1,
                                 record_history=True)
    collector.close()
    lengths = [min(k, limit) for k in steps]
    assert [ep.length for ep in episodes] == lengths
    # One batched call per step, over the episodes still running at that step.
    assert policy.batch_sizes == [sum(length > t for length in lengths) for t in range(max(lengths))]
    replay = EpisodeReplay(4, 20, OBS, ACT, h)
    for ep, k in zip(episodes, steps, strict=True):
        assert ep.terminated.tolist() == [False] * (ep.length - 1) + [k <= limit]
        assert ep.histories is not None and ep.histories.flags.writeable  # a copy, also for a one-step episode
        np.testing.assert_array_equal(ep.next_obs[:-1], ep.obs[1:])
        replay.add_episode(ep.task, ep.obs, ep.actions, ep.rewards, ep.next_obs, ep.terminated)
        batch = replay.gather(torch.full((ep.length,), ep.task), torch.arange(ep.length))
        np.testing.assert_array_equal(batch.history.numpy(), ep.histories)
    # The policy really was applied to those windows (exploration noise aside, which is small).
    for ep in episodes:
        clean = policy(torch.from_numpy(ep.obs), torch.from_numpy(ep.histories)).numpy()
        assert np.abs(ep.actions - clean).max() < 0.6


def test_episodes_longer_than_the_preallocated_trace_are_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    tasks_, rng_seed = [{"steps": 11}, {"steps": 4}, {"steps": 8}], 5
    reference = countdown_collector(3).rollout(tasks_, [0, 1, 2], np.random.default_rng(rng_seed),
                                               LinearHistoryPolicy(), 0.2, record_history=True)
    monkeypatch.setattr(collector_module, "_episode_limit_hint", lambda env: 2)  # forces the trace to grow twice
    grown = countdown_collector(3).rollout(tasks_, [0, 1, 2], np.random.default_rng(rng_seed),
                                           LinearHistoryPolicy(), 0.2, record_history=True)
    assert [ep.length for ep in grown] == [11, 4, 8]
    assert_episodes_equal(reference, grown)


@pytest.mark.parametrize("n", [1, 3])
def test_policy_gets_copies_and_its_output_is_not_modified(n: int) -> None:
    class Vandal(LinearHistoryPolicy):
        """Returns the same kept tensor every call (out of range, so it gets clipped) and scribbles on its inputs."""

        def __init__(self) -> None:
            super().__init__()
            self.kept = torch.full((n, ACT), 2.0)

        def __call__(self, obs: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
            self.kept[:] = torch.tanh(super().__call__(obs, history)) * 2.0
            obs.fill_(1e6)
            history.fill_(-1e6)
            return self.kept

    class Polite(LinearHistoryPolicy):
        def __call__(self, obs: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
            return torch.tanh(super().__call__(obs, history)) * 2.0

    vandal = Vandal()
    runs = [make_collector(5).rollout(tasks(n), list(range(n)), np.random.default_rng(8), policy, record_history=True)
            for policy in (Polite(), vandal)]
    assert_episodes_equal(*runs)
    # Actions were clipped into a new array, not in the policy's tensor.
    assert (vandal.kept.abs() > 1.0).any()
    assert np.abs(np.concatenate([ep.actions for ep in runs[1]])).max() == 1.0
    # Episode arrays are independent copies.
    ep = runs[1][0]
    arrays = (ep.obs, ep.actions, ep.rewards, ep.next_obs, ep.terminated, ep.histories)
    assert not any(np.shares_memory(a, b) for i, a in enumerate(arrays) for b in arrays[i + 1 :])
