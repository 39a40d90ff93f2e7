"""Behaviour of the Ant families (ant-dir forward/backward, ant-goal): spaces, rewards, termination, tasks, seeding."""

from __future__ import annotations

import math

import gymnasium
import numpy as np
import pytest

from mql_lightning.envs.ant import AntFwdBackEnv, AntGoalEnv

FAMILIES = [AntFwdBackEnv, AntGoalEnv]
EPISODE_STEPS = 200


def _ctrl(env: AntFwdBackEnv | AntGoalEnv, action: np.ndarray) -> np.ndarray:
    """The control the env must apply, recomputed from the model's ctrlrange (NormalizedBoxEnv's rescaling)."""
    low, high = env.model.actuator_ctrlrange[:, 0], env.model.actuator_ctrlrange[:, 1]
    return low + (np.clip(action, -1.0, 1.0) + 1.0) * 0.5 * (high - low)


def _contact_cost(env: AntFwdBackEnv | AntGoalEnv) -> float:
    return 0.5e-3 * float(np.sum(np.clip(env.data.cfrc_ext, -1.0, 1.0) ** 2))


def _torso_xy(env: AntFwdBackEnv | AntGoalEnv) -> np.ndarray:
    return env.data.body("torso").xpos[:2].copy()


def _expected_terminated(env: AntFwdBackEnv | AntGoalEnv) -> bool:
    state = np.concatenate([env.data.qpos, env.data.qvel])
    return not (np.all(np.isfinite(state)) and 0.2 <= env.data.qpos[2] <= 1.0)


@pytest.mark.parametrize(("family", "obs_dim"), [(AntFwdBackEnv, 27), (AntGoalEnv, 113)])
def test_spaces_and_timing(family: type, obs_dim: int) -> None:
    env = family()
    assert env.action_space == gymnasium.spaces.Box(-1.0, 1.0, (8,), np.float32)
    assert env.observation_space.shape == (obs_dim,)
    assert env.dt == pytest.approx(0.05) and env.frame_skip == 5 and env.model.opt.timestep == pytest.approx(0.01)
    assert env.model.nbody == 14
    np.testing.assert_array_equal(env.model.actuator_gear[:, 0], 150.0)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (obs_dim,) and obs.dtype == np.float64
    obs, *_ = env.step(env.action_space.sample())
    assert obs.shape == (obs_dim,)


def test_observation_contents() -> None:
    env = AntFwdBackEnv()
    env.reset(seed=1)
    obs, *_ = env.step(np.zeros(8))
    np.testing.assert_array_equal(obs, np.concatenate([env.data.qpos[2:], env.data.qvel]))
    env = AntGoalEnv()
    env.reset(seed=1)
    obs, *_ = env.step(np.zeros(8))
    expected = np.concatenate([env.data.qpos, env.data.qvel, np.clip(env.data.cfrc_ext, -1, 1).ravel()])
    np.testing.assert_array_equal(obs, expected)


@pytest.mark.parametrize("direction", [0.0, math.pi, 1.0])
def test_fwd_back_reward_matches_formula(direction: float) -> None:
    env = AntFwdBackEnv()
    env.set_task({"angle": direction})
    env.reset(seed=2)
    rng = np.random.default_rng(0)
    unit = np.array([math.cos(direction), math.sin(direction)])
    for _ in range(150):
        # Some actions outside [-1, 1] check the clipping too.
        action = rng.uniform(-1.3, 1.3, 8)
        before = _torso_xy(env)
        _, reward, terminated, truncated, info = env.step(action)
        ctrl = _ctrl(env, action)
        np.testing.assert_allclose(env.data.ctrl, ctrl)
        forward = float(np.dot((_torso_xy(env) - before) / 0.05, unit))
        expected = forward - 0.5 * float(np.sum(ctrl**2)) - _contact_cost(env) + 1.0
        assert reward == pytest.approx(expected, rel=1e-12, abs=1e-12)
        assert info["reward_forward"] == pytest.approx(forward, abs=1e-12)
        assert terminated == _expected_terminated(env) and not truncated
        if terminated:
            env.reset()


@pytest.mark.parametrize("goal", [[0.0, 0.0], [2.5, -1.0], [-1.2, 2.2]])
def test_goal_reward_matches_formula(goal: list[float]) -> None:
    env = AntGoalEnv()
    env.set_task({"goal": goal})
    env.reset(seed=3)
    rng = np.random.default_rng(1)
    for _ in range(150):
        action = rng.uniform(-1.3, 1.3, 8)
        _, reward, terminated, truncated, _ = env.step(action)
        ctrl = _ctrl(env, action)
        expected = -float(np.sum(np.abs(_torso_xy(env) - np.asarray(goal)))) - 0.1 * float(np.sum(ctrl**2))
        expected -= _contact_cost(env)
        assert reward == pytest.approx(expected, rel=1e-12, abs=1e-12)
        assert not terminated and not truncated


@pytest.mark.parametrize("height", [5.0, 1.3])
def test_fwd_back_terminates_out_of_height_range_and_still_pays_survive(height: float) -> None:
    env = AntFwdBackEnv()
    env.reset(seed=0)
    qpos = env.init_qpos.copy()
    qpos[2] = height
    env.set_state(qpos, np.zeros(env.model.nv))
    before = _torso_xy(env)
    _, reward, terminated, _, info = env.step(np.zeros(8))
    assert not 0.2 <= env.data.qpos[2] <= 1.0
    assert terminated
    assert info["reward_survive"] == 1.0
    forward = (_torso_xy(env) - before)[0] / 0.05
    assert reward == pytest.approx(forward - _contact_cost(env) + 1.0, abs=1e-12)


def test_fwd_back_termination_rule_on_set_states() -> None:
    # Below 0.2 the floor pushes the torso back up within a step, so the low side is checked on the state itself.
    env = AntFwdBackEnv()
    env.reset(seed=0)
    assert not env._terminated()
    for height, expected in [(0.1, True), (0.19, True), (0.2, False), (1.0, False), (1.01, True)]:
        qpos = env.init_qpos.copy()
        qpos[2] = height
        env.set_state(qpos, np.zeros(env.model.nv))
        assert env._terminated() is expected
    env.data.qvel[4] = np.nan
    assert env._terminated()


def test_flipped_ant_is_judged_by_torso_height_only() -> None:
    env = AntFwdBackEnv()
    env.reset(seed=0)
    qpos = env.init_qpos.copy()
    qpos[3:7] = [0.0, 1.0, 0.0, 0.0]  # upside down (180 degrees about x), torso at its normal height
    env.set_state(qpos, np.zeros(env.model.nv))
    _, _, terminated, _, _ = env.step(np.zeros(8))
    assert terminated == _expected_terminated(env)
    assert not terminated


def test_goal_never_terminates_even_out_of_range() -> None:
    env = AntGoalEnv()
    env.reset(seed=0)
    qpos = env.init_qpos.copy()
    qpos[2] = 5.0
    env.set_state(qpos, np.zeros(env.model.nv))
    assert not env.step(np.zeros(8))[2]


@pytest.mark.parametrize("family", FAMILIES)
def test_contact_forces_are_populated(family: type) -> None:
    # Under MuJoCo >= 2 without mj_rnePostConstraint cfrc_ext stays all zero (varibad's "mujoco200" bug).
    env = family()
    env.reset(seed=0)
    seen = False
    for _ in range(30):
        obs, *_ = env.step(np.zeros(8))
        assert np.all(env.data.cfrc_ext[0] == 0.0)  # the world row
        if np.any(env.data.cfrc_ext[1:] != 0.0):
            seen = True
            if family is AntGoalEnv:
                assert np.any(obs[29:] != 0.0)
            break
    assert seen


def test_goal_tasks_uniform_on_disc_of_radius_3() -> None:
    env = AntGoalEnv()
    tasks = env.sample_tasks(4000, seed=5)
    goals = np.array([task["goal"] for task in tasks])
    radii = np.linalg.norm(goals, axis=1)
    assert np.all(radii <= 3.0)
    # Uniform in area: P(r <= 1.5) = 1/4, E[r^2] = 4.5, angles balanced.
    assert np.mean(radii <= 1.5) == pytest.approx(0.25, abs=0.03)
    assert np.mean(radii**2) == pytest.approx(4.5, abs=0.15)
    assert abs(np.mean(goals[:, 0])) < 0.1 and abs(np.mean(goals[:, 1])) < 0.1
    assert all(isinstance(x, float) for x in tasks[0]["goal"])
    assert env.sample_tasks(10, seed=5) == env.sample_tasks(10, seed=5)
    assert env.sample_tasks(10, seed=5) != env.sample_tasks(10, seed=6)


def test_direction_tasks_are_forward_and_backward() -> None:
    env = AntFwdBackEnv()
    assert AntFwdBackEnv.eval_on_train_tasks is True
    assert env.sample_tasks(2, seed=0) == [{"angle": 0.0}, {"angle": math.pi}]
    assert env.sample_tasks(2, seed=9) == env.sample_tasks(2, seed=0)
    assert [t["angle"] for t in env.sample_tasks(5, seed=0)] == [0.0, math.pi, 0.0, math.pi, 0.0]
    assert env.sample_tasks(0, seed=0) == []


def test_direction_backward_rewards_negative_x_motion() -> None:
    rewards = {}
    for direction in (0.0, math.pi):
        env = AntFwdBackEnv()
        env.set_task({"angle": direction})
        env.reset(seed=4)
        rewards[direction] = env.step(np.full(8, 0.5))[4]["reward_forward"]
    assert rewards[math.pi] == pytest.approx(-rewards[0.0], abs=1e-9)


@pytest.mark.parametrize(
    ("family", "bad"),
    [
        (AntFwdBackEnv, {"angle": "north"}),
        (AntFwdBackEnv, {"angle": float("nan")}),
        (AntFwdBackEnv, {"goal": 0.0}),
        (AntGoalEnv, {"goal": [1.0]}),
        (AntGoalEnv, {"goal": [1.0, True]}),
        (AntGoalEnv, {"goal": [1.0, 2.0], "extra": 1}),
    ],
)
def test_invalid_tasks_are_rejected(family: type, bad: dict) -> None:
    with pytest.raises(ValueError):
        family().set_task(bad)


def test_set_task_isolation_and_takes_effect_at_reset() -> None:
    env, other = AntGoalEnv(), AntGoalEnv()
    task = {"goal": np.array([1.0, 2.0])}
    env.set_task(task)
    task["goal"][0] = 99.0
    assert env.task == {"goal": [1.0, 2.0]}
    env.task["goal"][0] = 42.0
    assert env.task == {"goal": [1.0, 2.0]}
    assert other.task != env.task

    env.reset(seed=0)
    env.set_task({"goal": [-3.0, 0.0]})
    # Mid-episode: the reward still uses the old goal.
    _, reward, *_ = env.step(np.zeros(8))
    old = -float(np.sum(np.abs(_torso_xy(env) - [1.0, 2.0]))) - _contact_cost(env)
    assert reward == pytest.approx(old, abs=1e-12)
    env.reset(seed=0)
    _, reward, *_ = env.step(np.zeros(8))
    new = -float(np.sum(np.abs(_torso_xy(env) - [-3.0, 0.0]))) - _contact_cost(env)
    assert reward == pytest.approx(new, abs=1e-12)


@pytest.mark.parametrize("family", FAMILIES)
def test_same_seed_same_trajectory(family: type) -> None:
    actions = np.random.default_rng(7).uniform(-1, 1, (60, 8)).astype(np.float32)

    def rollout(seed: int) -> tuple[np.ndarray, np.ndarray]:
        env = gymnasium.wrappers.TimeLimit(family(), EPISODE_STEPS)
        obs, _ = env.reset(seed=seed)
        trajectory, rewards = [obs], []
        for action in actions:
            obs, reward, terminated, truncated, _ = env.step(action)
            trajectory.append(obs)
            rewards.append(reward)
            if terminated or truncated:
                trajectory.append(env.reset()[0])
        return np.array(trajectory), np.array(rewards)

    first, second, third = rollout(11), rollout(11), rollout(12)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    assert not np.array_equal(first[0][0], third[0][0])


def test_time_limit_truncates_goal_episode_at_200() -> None:
    env = gymnasium.wrappers.TimeLimit(AntGoalEnv(), EPISODE_STEPS)
    env.reset(seed=0)
    flags = [env.step(np.zeros(8, dtype=np.float32))[2:4] for _ in range(EPISODE_STEPS)]
    assert flags[:-1] == [(False, False)] * (EPISODE_STEPS - 1)
    assert flags[-1] == (False, True)


def test_the_old_direction_key_is_refused_with_the_new_name() -> None:
    with pytest.raises(ValueError, match=r"task key 'direction' is now 'angle' \(the direction in radians\)"):
        AntFwdBackEnv().set_task({"direction": 1.0})
