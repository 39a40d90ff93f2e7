"""What every task family must satisfy, applied to every registered ``mql/`` family (docs/adding_a_task_family.md)."""

from __future__ import annotations

import json
import warnings

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from mql_lightning.envs import MetaEnv, make_env, make_task_splits, registered_families

# Meta-World's ML10 and ML45 build their goals by resetting every class's env 50 times per task seed (15-50 s each).
SLOW_FAMILIES = {"mql/MetaWorld-ML10-v0", "mql/MetaWorld-ML45-v0"}
FAMILIES = [
    pytest.param(family, marks=pytest.mark.slow) if family in SLOW_FAMILIES else family
    for family in registered_families()
]


@pytest.fixture(params=FAMILIES)
def env(request: pytest.FixtureRequest) -> gymnasium.Env:
    if request.param.startswith("mql/MetaWorld-"):
        pytest.importorskip("metaworld")  # the optional extra: pip install ".[metaworld]"
    env = make_env(request.param)
    yield env
    env.close()


def rollout(env: gymnasium.Env, task: dict, seed: int, steps: int = 30) -> list[np.ndarray]:
    env.unwrapped.set_task(task)
    obs, _ = env.reset(seed=seed)
    actions = np.random.default_rng(seed).uniform(-1, 1, (steps, *env.action_space.shape)).astype(np.float32)
    trace = [obs]
    for action in actions:
        obs, reward, terminated, truncated, _ = env.step(action)
        trace += [obs, np.array([reward])]
        if terminated or truncated:
            break
    return trace


def test_every_family_is_a_meta_env_acting_in_the_unit_box(env: gymnasium.Env) -> None:
    assert isinstance(env.unwrapped, MetaEnv)
    space = env.action_space
    assert isinstance(space, gymnasium.spaces.Box)
    assert np.all(space.low == -1.0) and np.all(space.high == 1.0)
    obs, _ = env.reset(seed=0)
    assert obs.shape == env.observation_space.shape and np.all(np.isfinite(obs))


def test_every_family_passes_gymnasiums_env_checker(env: gymnasium.Env) -> None:
    with warnings.catch_warnings():
        # Any checker warning fails, except the one about unbounded observation boxes (positions, velocities).
        warnings.filterwarnings("error")
        warnings.filterwarnings("ignore", message=".*infinity.*")
        check_env(env.unwrapped, skip_render_check=True)


def test_tasks_are_plain_json_and_fixed_by_the_task_seed(env: gymnasium.Env) -> None:
    family = env.unwrapped
    first, again = family.sample_tasks(6, 3), family.sample_tasks(6, 3)
    assert json.loads(json.dumps(first)) == first == again


def test_same_seed_and_task_give_the_same_trajectory(env: gymnasium.Env) -> None:
    task = env.unwrapped.sample_tasks(2, 5)[-1]
    first, second = rollout(env, task, seed=11), rollout(env, task, seed=11)
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))


def test_set_task_copies_its_argument_and_task_returns_a_copy(env: gymnasium.Env) -> None:
    family = env.unwrapped
    task = family.sample_tasks(1, 0)[0]
    family.set_task(task)
    expected = json.dumps(family.task, sort_keys=True)
    key = next(iter(task))
    task[key] = "changed"
    family.task[key] = "changed"
    assert json.dumps(family.task, sort_keys=True) == expected


def test_splits_are_fixed_by_the_task_seed(env: gymnasium.Env) -> None:
    family = env.unwrapped
    counts = (2, 2, 2) if family.eval_on_train_tasks else (4, 2, 2)
    first, again = make_task_splits(env, *counts, seed=1), make_task_splits(env, *counts, seed=1)
    assert first == again
    if not family.eval_on_train_tasks:
        keys = [json.dumps(t, sort_keys=True) for split in (first.train, first.val, first.test) for t in split]
        assert len(set(keys)) == len(keys)
