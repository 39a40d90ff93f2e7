"""Behaviour of the humanoid-dir family: spaces, reward, termination, tasks."""

from __future__ import annotations

import math

import gymnasium
import numpy as np
import pytest

from mql_lightning.envs.humanoid import HumanoidDirEnv


@pytest.fixture(scope="module")
def env() -> HumanoidDirEnv:
    return HumanoidDirEnv()


def _com_xy(env: HumanoidDirEnv) -> np.ndarray:
    """The mass-weighted mean body centre of mass, recomputed independently of the env's code."""
    mass = np.array(env.model.body_mass)
    xipos = np.array(env.data.xipos)
    return (mass[:, None] * xipos).sum(axis=0)[:2] / mass.sum()


def test_spaces_and_timing(env: HumanoidDirEnv) -> None:
    assert env.action_space == gymnasium.spaces.Box(-1.0, 1.0, (17,), np.float32)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (376,) and env.observation_space.shape == (376,)
    assert env.model.opt.timestep == pytest.approx(0.003)
    assert env.dt == pytest.approx(0.015)
    np.testing.assert_allclose(env.model.actuator_ctrlrange, np.tile([-0.4, 0.4], (17, 1)))


def test_observation_layout_includes_world_rows(env: HumanoidDirEnv) -> None:
    env.reset(seed=1)
    for _ in range(5):
        obs, *_ = env.step(env.action_space.sample())
    d = env.data
    expected = np.concatenate([d.qpos[2:], d.qvel, d.cinert.ravel(), d.cvel.ravel(), d.qfrc_actuator,
                               d.cfrc_ext.ravel()])
    np.testing.assert_array_equal(obs, expected)
    assert d.cinert.shape == (14, 10) and d.cfrc_ext.shape == (14, 6)


def test_cfrc_ext_is_populated(env: HumanoidDirEnv) -> None:
    env.reset(seed=2)
    # The humanoid starts slightly above the floor: step until the feet touch it.
    for _ in range(40):
        obs, *_ = env.step(np.zeros(17, dtype=np.float32))
        if env.data.ncon > 0:
            break
    assert env.data.ncon > 0
    # mj_rnePostConstraint fills the contact forces (all zeros under mujoco-py 2.x, the known MuJoCo-2.0 bug).
    assert np.any(obs[-84:] != 0.0)
    assert np.any(env.data.cfrc_ext != 0.0)


def test_reward_matches_formula_over_random_actions_and_tasks(env: HumanoidDirEnv) -> None:
    rng = np.random.default_rng(0)
    for task in env.sample_tasks(4, seed=5):
        env.set_task(task)
        env.reset(seed=int(rng.integers(1000)))
        direction = np.array([math.cos(task["angle"]), math.sin(task["angle"])])
        for _ in range(40):
            action = rng.uniform(-1.3, 1.3, 17)  # also out of range: clipped before rescaling
            before = _com_xy(env)
            _, reward, terminated, _, _ = env.step(action)
            after = _com_xy(env)
            ctrl = np.array(env.data.ctrl)
            np.testing.assert_allclose(ctrl, 0.4 * np.clip(action, -1.0, 1.0))
            impact = min(0.5e-6 * np.square(env.data.cfrc_ext).sum(), 10.0)
            expected = 0.25 * float((after - before) / 0.003 @ direction) - 0.1 * np.square(ctrl).sum() - impact + 5.0
            assert reward == pytest.approx(expected, rel=1e-9, abs=1e-9)
            z = env.data.qpos[2]
            assert terminated == bool(z < 1.0 or z > 2.0)
            if terminated:
                env.reset()


@pytest.mark.parametrize("z", [0.5, 2.5])
def test_terminates_outside_height_band_and_still_pays_alive_bonus(env: HumanoidDirEnv, z: float) -> None:
    env.reset(seed=0)
    qpos = env.init_qpos.copy()
    qpos[2] = z
    env.set_state(qpos, env.init_qvel)
    _, reward, terminated, truncated, info = env.step(np.zeros(17, dtype=np.float32))
    assert terminated and not truncated
    assert info["reward_alive"] == 5.0
    assert reward == pytest.approx(info["reward_forward"] + info["reward_ctrl"] + info["reward_impact"] + 5.0)


def test_healthy_start_does_not_terminate(env: HumanoidDirEnv) -> None:
    env.reset(seed=0)
    assert not env.step(np.zeros(17, dtype=np.float32))[2]


def test_task_direction_changes_reward_sign(env: HumanoidDirEnv) -> None:
    rewards = []
    for angle in (0.0, math.pi):
        env.set_task({"angle": angle})
        env.reset(seed=3)
        rewards.append(env.step(np.full(17, 0.5, dtype=np.float32))[4]["reward_forward"])
    assert rewards[0] == pytest.approx(-rewards[1])
    assert rewards[0] != 0.0


def test_set_task_takes_effect_at_next_reset(env: HumanoidDirEnv) -> None:
    env.set_task({"angle": 0.0})
    env.reset(seed=0)
    env.set_task({"angle": math.pi})
    first = env.step(np.zeros(17, dtype=np.float32))[4]["reward_forward"]
    env.set_task({"angle": 0.0})
    env.reset(seed=0)
    assert env.step(np.zeros(17, dtype=np.float32))[4]["reward_forward"] == pytest.approx(first)


def test_task_sampling_is_deterministic_and_uniform_on_circle(env: HumanoidDirEnv) -> None:
    tasks = env.sample_tasks(200, seed=7)
    assert tasks == env.sample_tasks(200, seed=7)
    assert tasks != env.sample_tasks(200, seed=8)
    angles = np.array([t["angle"] for t in tasks])
    assert np.all((angles >= 0.0) & (angles < 2.0 * math.pi))
    assert angles.min() < 0.5 and angles.max() > 2.0 * math.pi - 0.5
    assert all(type(t["angle"]) is float for t in tasks)


@pytest.mark.parametrize("task", [{}, {"angle": "north"}, {"angle": True}, {"angle": float("nan")},
                                  {"angle": 0.0, "goal": 1.0}])
def test_invalid_tasks_are_rejected(env: HumanoidDirEnv, task: dict) -> None:
    with pytest.raises(ValueError):
        env.set_task(task)


def test_set_task_is_isolated_from_caller(env: HumanoidDirEnv) -> None:
    task = {"angle": 1.0}
    env.set_task(task)
    task["angle"] = 2.0
    env.task["angle"] = 3.0
    assert env.task == {"angle": 1.0}
