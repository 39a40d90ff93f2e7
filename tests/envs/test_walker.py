"""Behaviour of the walker-rand-params family: spaces, reward, termination, parameter tasks."""

from __future__ import annotations

from collections.abc import Callable

import gymnasium
import mujoco
import numpy as np
import pytest

from mql_lightning.envs.walker import Walker2DParamsEnv

PARAMS = ("body_mass", "body_inertia", "dof_damping", "geom_friction")


@pytest.fixture(scope="module")
def env() -> Walker2DParamsEnv:
    return Walker2DParamsEnv()


def _identity(env: Walker2DParamsEnv) -> dict:
    return {name: np.ones_like(getattr(env.model, name)).tolist() for name in PARAMS}


def _rollout(env: Walker2DParamsEnv, seed: int = 0, steps: int = 30) -> np.ndarray:
    """Observations of a fixed action sequence from a seeded reset (no termination handling: short enough)."""
    obs = [env.reset(seed=seed)[0]]
    actions = np.random.default_rng(123).uniform(-1.0, 1.0, (steps, 6))
    obs += [env.step(action)[0] for action in actions]
    return np.array(obs)


def test_spaces_and_timing(env: Walker2DParamsEnv) -> None:
    assert env.action_space == gymnasium.spaces.Box(-1.0, 1.0, (6,), np.float32)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (17,) and env.observation_space.shape == (17,)
    assert env.model.opt.timestep == 0.004
    assert env.frame_skip == 4
    assert env.dt == pytest.approx(0.016)
    # Feet friction of rand_param_envs' model: right 0.9, left 1.9.
    assert env.model.geom("foot_geom").friction[0] == pytest.approx(0.9)
    assert env.model.geom("foot_left_geom").friction[0] == pytest.approx(1.9)


def test_reward_observation_and_termination_match_rules(env: Walker2DParamsEnv) -> None:
    rng = np.random.default_rng(0)
    seen_terminal = False
    for task in env.sample_tasks(4, seed=1):
        env.set_task(task)
        env.reset(seed=int(rng.integers(1000)))
        for _ in range(60):
            action = rng.uniform(-1.3, 1.3, 6)
            x_before = float(env.data.qpos[0])
            obs, reward, terminated, truncated, _ = env.step(action)
            qpos, qvel = np.array(env.data.qpos), np.array(env.data.qvel)
            ctrl = np.clip(action, -1.0, 1.0)
            np.testing.assert_allclose(env.data.ctrl, ctrl)
            expected = (qpos[0] - x_before) / 0.016 + 1.0 - 1e-3 * np.square(ctrl).sum()
            assert reward == pytest.approx(expected, rel=1e-9, abs=1e-9)
            np.testing.assert_array_equal(obs, np.concatenate([qpos[1:], np.clip(qvel, -10.0, 10.0)]))
            assert terminated == (not (0.8 < qpos[1] < 2.0 and -1.0 < qpos[2] < 1.0))
            assert not truncated
            if terminated:
                seen_terminal = True
                env.reset()
    assert seen_terminal  # random actions topple the walker, so the terminating branch was exercised


@pytest.mark.parametrize(("index", "value"), [(1, 0.5), (2, 1.5), (2, -1.5)])
def test_terminating_states(env: Walker2DParamsEnv, index: int, value: float) -> None:
    env.set_task(_identity(env))
    env.reset(seed=0)
    qpos = env.init_qpos.copy()
    qpos[index] = value
    env.set_state(qpos, env.init_qvel)
    _, reward, terminated, _, info = env.step(np.zeros(6, dtype=np.float32))
    assert terminated
    assert info["reward_alive"] == 1.0
    assert reward == pytest.approx(info["reward_forward"] + 1.0)


def test_different_tasks_give_different_dynamics(env: Walker2DParamsEnv) -> None:
    first, second = env.sample_tasks(2, seed=3)
    env.set_task(first)
    a = _rollout(env)
    env.set_task(second)
    b = _rollout(env)
    assert not np.allclose(a[1:], b[1:])


def test_same_task_twice_gives_identical_dynamics(env: Walker2DParamsEnv) -> None:
    first, other = env.sample_tasks(2, seed=4)
    env.set_task(first)
    a = _rollout(env)
    env.set_task(other)
    _rollout(env)
    env.set_task(first)
    b = _rollout(env)
    env.set_task(first)
    c = _rollout(env)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


def test_parameters_never_drift_and_constants_follow() -> None:
    env = Walker2DParamsEnv()
    fresh = Walker2DParamsEnv()
    original = {name: getattr(env.model, name).copy() for name in (*PARAMS, "body_subtreemass", "dof_M0")}
    for task in env.sample_tasks(50, seed=9):
        env.set_task(task)
        env.reset(seed=0)
        for name in PARAMS:
            np.testing.assert_allclose(getattr(env.model, name), original[name] * np.array(task[name]), rtol=1e-12)
    env.set_task(_identity(env))
    env.reset(seed=5)
    for name in PARAMS:
        np.testing.assert_array_equal(getattr(env.model, name), original[name])
    for name in ("body_subtreemass", "dof_M0"):
        np.testing.assert_allclose(getattr(env.model, name), original[name], rtol=1e-12)
    # Same dynamics as a never-modified env.
    np.testing.assert_allclose(_rollout(env, seed=5), _rollout(fresh, seed=5), rtol=1e-9, atol=1e-12)


def test_mj_set_const_updates_subtree_mass(env: Walker2DParamsEnv) -> None:
    task = _identity(env)
    task["body_mass"] = [2.0] * env.model.nbody
    env.set_task(task)
    env.reset(seed=0)
    assert env.model.body_subtreemass[0] == pytest.approx(env.model.body_mass.sum())
    fresh = mujoco.MjModel.from_xml_path(str(env.fullpath))
    assert env.model.body_subtreemass[0] == pytest.approx(2.0 * fresh.body_subtreemass[0])
    # The model changes only at reset, never in the middle of an episode.
    env.set_task(_identity(env))
    assert env.model.body_mass[1] == pytest.approx(2.0 * fresh.body_mass[1])


def test_set_task_is_isolated(env: Walker2DParamsEnv) -> None:
    other = Walker2DParamsEnv()
    task = env.sample_tasks(1, seed=11)[0]
    env.set_task(task)
    expected = env.task
    task["body_mass"][1] = 100.0
    env.task["dof_damping"][3] = 100.0
    assert env.task == expected
    env.reset(seed=0)
    # Each env owns its model: another instance keeps the default parameters.
    other.reset(seed=0)
    fresh = mujoco.MjModel.from_xml_path(str(env.fullpath))
    np.testing.assert_array_equal(other.model.body_mass, fresh.body_mass)
    assert not np.array_equal(env.model.body_mass, fresh.body_mass)


def test_task_sampling_ranges_and_determinism(env: Walker2DParamsEnv) -> None:
    tasks = env.sample_tasks(30, seed=2)
    assert tasks == env.sample_tasks(30, seed=2)
    stack = {name: np.array([t[name] for t in tasks]) for name in PARAMS}
    assert stack["body_mass"].shape == (30, 8) and stack["body_inertia"].shape == (30, 8, 3)
    assert stack["dof_damping"].shape == (30, 9) and stack["geom_friction"].shape == (30, 8, 3)
    for name, base in (("body_mass", 1.5), ("body_inertia", 1.5), ("geom_friction", 1.5), ("dof_damping", 1.3)):
        logs = np.log(stack[name]) / np.log(base)
        assert logs.min() >= -3.0 and logs.max() <= 3.0
        assert logs.min() < -2.5 and logs.max() > 2.5  # elementwise, spread over the whole range


@pytest.mark.parametrize(
    "mutate",
    [
        lambda t: t.pop("body_mass"),
        lambda t: t.update(extra=[1.0]),
        lambda t: t.update(body_mass=[1.0] * 7),
        lambda t: t.update(body_inertia=[1.0] * 24),
        lambda t: t.update(geom_friction=[[1.0, 1.0]] * 8),
        lambda t: t.update(dof_damping=[1.0] * 8 + [-1.0]),
        lambda t: t.update(dof_damping=[1.0] * 8 + [float("inf")]),
        lambda t: t.update(dof_damping=[True] * 9),
        lambda t: t.update(dof_damping="ones"),
        lambda t: t.update(body_inertia=[[1.0, 1.0, 1.0]] * 7 + [[1.0]]),
    ],
)
def test_invalid_tasks_are_rejected(env: Walker2DParamsEnv, mutate: Callable[[dict], object]) -> None:
    task = _identity(env)
    mutate(task)
    with pytest.raises(ValueError):
        env.set_task(task)
