"""Behaviour of the half-cheetah families: spaces, rewards recomputed from MuJoCo state, tasks, seeding."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium
import mujoco
import numpy as np
import pytest
from gymnasium.wrappers import TimeLimit

from mql_lightning.envs.half_cheetah import HalfCheetahFwdBackEnv, HalfCheetahVelEnv

FAMILIES = [HalfCheetahVelEnv, HalfCheetahFwdBackEnv]
TASKS: dict[type, list[dict[str, Any]]] = {
    HalfCheetahVelEnv: [{"velocity": 0.0}, {"velocity": 1.3}, {"velocity": 3.0}],
    HalfCheetahFwdBackEnv: [{"direction": -1}, {"direction": 1}],
}


def _task_term(task: dict[str, Any], v_x: float) -> float:
    if "velocity" in task:
        return -abs(v_x - task["velocity"])
    return task["direction"] * v_x


@pytest.mark.parametrize("family", FAMILIES)
def test_spaces_and_observation_layout(family: type) -> None:
    env = family()
    assert env.action_space == gymnasium.spaces.Box(-1.0, 1.0, (6,), np.float32)
    assert env.observation_space.shape == (20,)
    assert env.dt == pytest.approx(0.05)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (20,) and obs.dtype == np.float64
    data = env.unwrapped.data
    np.testing.assert_array_equal(obs, np.concatenate([data.qpos[1:], data.qvel, data.body("torso").xpos]))


@pytest.mark.parametrize("family", FAMILIES)
def test_reward_matches_formula_recomputed_from_mujoco_state(family: type) -> None:
    env = family()
    model, data = env.unwrapped.model, env.unwrapped.data
    low, high = model.actuator_ctrlrange.T
    rng = np.random.default_rng(0)
    for i, task in enumerate(TASKS[family]):
        env.set_task(task)
        env.reset(seed=i)
        for _ in range(60):
            # Half the draws fall outside [-1, 1] and must be clipped before rescaling.
            action = rng.uniform(-2.0, 2.0, size=6)
            x_before = float(data.qpos[0])
            _, reward, terminated, truncated, info = env.step(action)
            v_x = (float(data.qpos[0]) - x_before) / 0.05
            ctrl = low + (np.clip(action, -1.0, 1.0) + 1.0) / 2.0 * (high - low)
            np.testing.assert_allclose(data.ctrl, ctrl, rtol=0, atol=1e-12)
            expected = _task_term(task, v_x) - 0.05 * float(np.sum(ctrl**2))
            assert reward == pytest.approx(expected, rel=1e-9, abs=1e-9)
            assert info["forward_velocity"] == pytest.approx(v_x, rel=1e-12, abs=1e-12)
            assert info["ctrl_cost"] == pytest.approx(0.05 * float(np.sum(ctrl**2)), rel=1e-12)
            assert not terminated and not truncated


@pytest.mark.parametrize("family", FAMILIES)
def test_never_terminates_and_time_limit_truncates_at_200(family: type) -> None:
    env = TimeLimit(family(), 200)
    env.reset(seed=0)
    # Full-force actions flip the cheetah over; it must still never terminate.
    flags = [env.step(np.ones(6, dtype=np.float32))[2:4] for _ in range(200)]
    assert flags[:-1] == [(False, False)] * 199
    assert flags[-1] == (False, True)


def test_cheetah_vel_default_task_set_is_the_legacy_seed_1337_draw() -> None:
    saved = np.random.get_state()  # restored below so other tests do not see a re-seeded global RNG
    try:
        np.random.seed(1337)  # the original's exact legacy global-RNG calls are the reference
        expected = np.random.uniform(0, 3.0, size=(130,))
        # sample_tasks uses its own RandomState: the global RNG is left untouched.
        state = np.random.get_state()
        velocities = [task["velocity"] for task in HalfCheetahVelEnv().sample_tasks(130, 1337)]
        assert np.array_equal(np.random.get_state()[1], state[1])
    finally:
        np.random.set_state(saved)
    assert velocities == expected.tolist()
    assert all(type(v) is float for v in velocities)


def test_cheetah_vel_all_region_is_prefix_consistent_and_seed_dependent() -> None:
    env = HalfCheetahVelEnv()
    assert env.sample_tasks(100, 1337) == env.sample_tasks(130, 1337)[:100]
    assert env.sample_tasks(10, 1) != env.sample_tasks(10, 1337)
    assert env.task == env.sample_tasks(1, 1337)[0]


@pytest.mark.parametrize(("train_max", "train_range"), [(2.5, (0.0, 2.5)), (1.5, (0.0, 1.5))])
def test_cheetah_vel_ood_regions_medium_and_hard(train_max: float, train_range: tuple[float, float]) -> None:
    env = HalfCheetahVelEnv(ood_train_max_velocity=train_max)
    train = np.array([t["velocity"] for t in env.sample_tasks(500, 0, "ood_train")])
    test = np.array([t["velocity"] for t in env.sample_tasks(500, 0, "ood_test")])
    assert train.min() >= train_range[0] and train.max() < train_range[1]
    assert train.max() > train_range[1] - 0.1  # covers the range, not a sub-interval
    assert test.min() >= 2.5 and test.max() < 3.0
    assert env.sample_tasks(7, 3, "ood_test") == env.sample_tasks(7, 3, "ood_test")


@pytest.mark.parametrize("bad", [0.0, -1.0, 2.6, float("nan")])
def test_cheetah_vel_rejects_overlapping_ood_split(bad: float) -> None:
    with pytest.raises(ValueError, match="ood_train_max_velocity"):
        HalfCheetahVelEnv(ood_train_max_velocity=bad)


def test_cheetah_vel_task_validation() -> None:
    env = HalfCheetahVelEnv()
    env.set_task({"velocity": np.float32(1.5)})
    assert env.task == {"velocity": 1.5}
    for bad in ({"velocity": float("inf")}, {"velocity": True}, {"velocity": [1.0]}, {"v": 1.0}, {}):
        with pytest.raises(ValueError):
            env.set_task(bad)


def test_fwd_back_tasks_cycle_and_validation() -> None:
    env = HalfCheetahFwdBackEnv()
    assert env.eval_on_train_tasks is True
    assert env.regions() == ("all",)
    assert env.sample_tasks(2, 0) == [{"direction": -1}, {"direction": 1}]
    assert env.sample_tasks(2, 123) == env.sample_tasks(2, 0)
    assert env.sample_tasks(5, 0) == [{"direction": d} for d in (-1, 1, -1, 1, -1)]
    assert env.sample_tasks(0, 0) == []
    env.set_task({"direction": -1})
    assert env.task == {"direction": -1.0}
    for bad in ({"direction": 0}, {"direction": 0.5}, {"direction": True}, {"direction": 2}, {"dir": 1}):
        with pytest.raises(ValueError):
            env.set_task(bad)
    with pytest.raises(ValueError, match="no out-of-distribution"):
        env.sample_tasks(2, 0, "ood_train")


def test_fwd_back_directions_score_velocity_with_opposite_signs() -> None:
    env = HalfCheetahFwdBackEnv()
    actions = np.random.default_rng(5).uniform(-1, 1, size=(20, 6))
    runs = {}
    for direction in (-1, 1):
        env.set_task({"direction": direction})
        env.reset(seed=0)
        runs[direction] = [env.step(a)[1:5:3] for a in actions]  # (reward, info)
    for (r_back, i_back), (r_fwd, i_fwd) in zip(runs[-1], runs[1], strict=True):
        # The task does not change the dynamics, only the sign of the velocity term.
        assert i_back == i_fwd
        assert r_fwd - r_back == pytest.approx(2.0 * i_fwd["forward_velocity"], abs=1e-12)
        assert r_fwd + r_back == pytest.approx(-2.0 * i_fwd["ctrl_cost"], abs=1e-12)


@pytest.mark.parametrize("family", FAMILIES)
def test_set_task_is_isolated_and_applies_at_reset(family: type) -> None:
    env = family()
    task = dict(TASKS[family][0])
    env.set_task(task)
    task[next(iter(task))] = 99.0  # the caller's dict no longer reaches the env
    got = env.task
    assert got == TASKS[family][0]
    got[next(iter(got))] = 42.0  # nor does a change to the returned copy
    assert env.task == TASKS[family][0]
    # Two envs keep their own tasks.
    other = family()
    other.set_task(TASKS[family][1])
    assert env.task == TASKS[family][0] and other.task == TASKS[family][1]


@pytest.mark.parametrize("family", FAMILIES)
def test_same_seed_same_trajectory(family: type) -> None:
    actions = np.random.default_rng(1).uniform(-1, 1, size=(30, 6)).astype(np.float32)

    def rollout(seed: int) -> tuple[np.ndarray, np.ndarray]:
        env = family()
        env.set_task(TASKS[family][-1])
        obs, _ = env.reset(seed=seed)
        steps = [env.step(a) for a in actions]
        return np.stack([obs] + [s[0] for s in steps]), np.array([s[1] for s in steps])

    obs_a, rew_a = rollout(7)
    obs_b, rew_b = rollout(7)
    obs_c, _ = rollout(8)
    np.testing.assert_array_equal(obs_a, obs_b)
    np.testing.assert_array_equal(rew_a, rew_b)
    assert not np.array_equal(obs_a[0], obs_c[0])


def test_reset_noise_matches_original_scales() -> None:
    env = HalfCheetahVelEnv()
    model = env.unwrapped.model
    init_qpos, init_qvel = env.unwrapped.init_qpos.copy(), env.unwrapped.init_qvel.copy()
    dq, dv = [], []
    for seed in range(200):
        env.reset(seed=seed)
        dq.append(env.unwrapped.data.qpos - init_qpos)
        dv.append(env.unwrapped.data.qvel - init_qvel)
    dq, dv = np.array(dq), np.array(dv)
    assert dq.shape == (200, model.nq) and np.abs(dq).max() <= 0.1
    assert 0.07 < dv.std() < 0.13  # 0.1 * N(0, 1)


def test_model_loads_without_the_settotalmass_warning_and_is_the_one_mujoco_compiles(
    capfd: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # MuJoCo appends its warnings to MUJOCO_LOG.TXT in the working directory
    env = HalfCheetahVelEnv()
    printed = capfd.readouterr()
    assert "settotalmass" not in printed.out + printed.err and not (tmp_path / "MUJOCO_LOG.TXT").exists()
    compiled = mujoco.MjModel.from_xml_path(env.fullpath)  # the deprecated attribute, compiled by MuJoCo itself
    arrays = [n for n in dir(compiled) if isinstance(getattr(compiled, n, None), np.ndarray) and not n.startswith("_")]
    assert len(arrays) > 100 and float(np.sum(env.model.body_mass)) == pytest.approx(14.0)
    for name in arrays:
        np.testing.assert_array_equal(getattr(env.model, name), getattr(compiled, name), err_msg=name)
