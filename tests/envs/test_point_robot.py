"""Behaviour of the point-robot families: spaces, dynamics, rewards, seeding, registration."""

from __future__ import annotations

import importlib
import warnings

import gymnasium
import numpy as np
import pytest

from mql_lightning import envs
from mql_lightning.envs import MetaEnv, make_env
from mql_lightning.envs.point_robot import PointRobotEnv, SparsePointRobotEnv

FAMILY_IDS = ["mql/PointRobot-v0", "mql/SparsePointRobot-v0"]


@pytest.mark.parametrize("env_id", FAMILY_IDS)
def test_registered_episode_is_truncated_after_20_steps_never_terminated(env_id: str) -> None:
    env = gymnasium.make(env_id)
    env.reset(seed=0)
    flags = [env.step(np.zeros(2, dtype=np.float32))[2:4] for _ in range(20)]
    assert flags[:-1] == [(False, False)] * 19
    assert flags[-1] == (False, True)


@pytest.mark.parametrize("env_id", FAMILY_IDS)
def test_spaces_are_unit_action_box_and_float32_position(env_id: str) -> None:
    env = make_env(env_id)
    assert isinstance(env.unwrapped, MetaEnv)
    assert env.action_space == gymnasium.spaces.Box(-1.0, 1.0, (2,), np.float32)
    obs, _ = env.reset(seed=3)
    assert obs.shape == (2,) and obs.dtype == np.float32


def test_unit_action_moves_one_tenth() -> None:
    env = PointRobotEnv()
    start, _ = env.reset(seed=1)
    obs, *_ = env.step(np.array([1.0, 0.0], dtype=np.float32))
    np.testing.assert_allclose(obs - start, [0.1, 0.0], atol=1e-6)


def test_out_of_range_action_is_clipped_to_unit_box() -> None:
    env = SparsePointRobotEnv()
    env.reset(seed=0)
    obs, *_ = env.step(np.array([5.0, -7.0]))
    np.testing.assert_allclose(obs, [0.1, -0.1], atol=1e-7)


def test_dense_reward_is_negative_distance_after_move() -> None:
    env = PointRobotEnv()
    goal = np.array([0.3, -0.4])
    env.set_task({"goal": goal.tolist()})
    env.reset(seed=2)
    obs, reward, terminated, truncated, info = env.step(np.array([0.5, -1.0], dtype=np.float32))
    expected = -np.linalg.norm(obs.astype(np.float64) - goal)
    assert reward == pytest.approx(expected, abs=1e-6)
    assert info["dense_reward"] == reward
    assert (terminated, truncated) == (False, False)


def test_reaching_the_goal_does_not_terminate() -> None:
    env = SparsePointRobotEnv()
    env.set_task({"goal": [0.1, 0.0]})
    env.reset()
    _, reward, terminated, truncated, _ = env.step(np.array([1.0, 0.0]))
    assert reward == pytest.approx(1.0)
    assert (terminated, truncated) == (False, False)


def test_sparse_reward_is_zero_outside_radius_with_dense_in_info() -> None:
    env = SparsePointRobotEnv()
    env.set_task({"goal": [0.0, 1.0]})
    env.reset()
    _, reward, _, _, info = env.step(np.array([0.0, 1.0]))
    assert reward == 0.0
    assert info["sparse_reward"] == 0.0
    assert info["dense_reward"] == pytest.approx(-0.9)


def test_sparse_reward_is_one_minus_distance_inside_radius() -> None:
    env = SparsePointRobotEnv()
    env.set_task({"goal": [0.0, 0.25]})
    env.reset()
    _, reward, _, _, info = env.step(np.array([0.0, 1.0]))
    assert reward == pytest.approx(1.0 - 0.15)
    assert info["sparse_reward"] == reward
    assert info["dense_reward"] == pytest.approx(-0.15)


def test_sparse_env_always_resets_at_origin() -> None:
    env = SparsePointRobotEnv()
    for seed in (0, 1, 2):
        obs, _ = env.reset(seed=seed)
        np.testing.assert_array_equal(obs, [0.0, 0.0])


def test_same_seed_and_task_give_same_trajectory() -> None:
    actions = np.random.default_rng(0).uniform(-1.5, 1.5, size=(20, 2))
    task = PointRobotEnv().sample_tasks(1, seed=11)[0]

    def rollout(seed: int) -> tuple[np.ndarray, list[float]]:
        env = gymnasium.make("mql/PointRobot-v0")
        env.unwrapped.set_task(task)
        observations = [env.reset(seed=seed)[0]]
        rewards = []
        for action in actions:
            obs, reward, *_ = env.step(action.astype(np.float32))
            observations.append(obs)
            rewards.append(reward)
        return np.stack(observations), rewards

    first_obs, first_rewards = rollout(seed=5)
    again_obs, again_rewards = rollout(seed=5)
    other_obs, _ = rollout(seed=6)
    np.testing.assert_array_equal(first_obs, again_obs)
    assert first_rewards == again_rewards
    assert not np.array_equal(first_obs[0], other_obs[0])


def test_set_task_takes_effect_at_next_reset() -> None:
    env = SparsePointRobotEnv()
    env.set_task({"goal": [0.1, 0.0]})
    env.reset()
    env.set_task({"goal": [-0.5, 0.0]})
    _, reward_old_goal, *_ = env.step(np.array([1.0, 0.0]))
    env.reset()
    _, reward_new_goal, *_ = env.step(np.array([1.0, 0.0]))
    assert reward_old_goal == pytest.approx(1.0)
    assert reward_new_goal == 0.0


def test_render_mode_is_rejected() -> None:
    with pytest.raises(ValueError, match="render"):
        PointRobotEnv(render_mode="human")


def test_make_env_unknown_id_raises_value_error_naming_it() -> None:
    with pytest.raises(ValueError, match=r"unknown task family 'mql/NoSuchRobot-v0'.*mql/PointRobot-v0"):
        make_env("mql/NoSuchRobot-v0")


def test_make_env_rejects_registered_env_that_is_not_a_task_family() -> None:
    with pytest.raises(ValueError, match="CartPole-v1"):
        make_env("CartPole-v1")


def test_make_env_passes_kwargs_to_gymnasium() -> None:
    env = make_env("mql/PointRobot-v0", max_episode_steps=3)
    env.reset(seed=0)
    truncated = [env.step(np.zeros(2, dtype=np.float32))[3] for _ in range(3)]
    assert truncated == [False, False, True]


def test_reimporting_envs_does_not_reregister() -> None:
    with warnings.catch_warnings():
        # gymnasium warns "Overriding environment ... already in registry" on double registration.
        warnings.simplefilter("error")
        importlib.reload(envs)
    assert set(FAMILY_IDS) <= set(envs.registered_families())
