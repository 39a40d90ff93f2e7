"""The task API (sample_tasks / set_task / task) and train/val/test splits."""

from __future__ import annotations

import json
import math
from typing import Any

import gymnasium
import numpy as np
import pytest

from mql_lightning.envs import MetaEnv, TaskSplits, make_task_splits
from mql_lightning.envs.point_robot import PointRobotEnv, SparsePointRobotEnv

FAMILIES = [PointRobotEnv, SparsePointRobotEnv]


class _NoOodFamily(PointRobotEnv):
    """A family without out-of-distribution regions."""

    ood_regions = ()


class _TwoTaskFamily(PointRobotEnv):
    """A family with a finite task set, which cannot give more than two tasks."""

    ood_regions = ()

    def _sample_tasks(self, rng: np.random.Generator, n: int, region: str) -> list[dict[str, Any]]:
        return [{"goal": [1.0, 0.0]}, {"goal": [-1.0, 0.0]}][:n]


def _angles(tasks: list[dict[str, Any]]) -> np.ndarray:
    return np.array([math.atan2(t["goal"][1], t["goal"][0]) for t in tasks])


# --- sample_tasks ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("region", ["all", "ood_train", "ood_test"])
def test_sample_tasks_is_deterministic_in_seed(family: type[MetaEnv], region: str) -> None:
    assert family().sample_tasks(10, seed=3, region=region) == family().sample_tasks(10, seed=3, region=region)
    assert family().sample_tasks(10, seed=3, region=region) != family().sample_tasks(10, seed=4, region=region)


@pytest.mark.parametrize("family", FAMILIES)
def test_sample_tasks_are_json_plain_floats(family: type[MetaEnv]) -> None:
    tasks = family().sample_tasks(5, seed=0)
    assert json.loads(json.dumps(tasks)) == tasks
    for task in tasks:
        assert type(task["goal"]) is list and len(task["goal"]) == 2
        assert all(type(x) is float for x in task["goal"])


def test_sample_tasks_ignores_and_leaves_env_rng_alone() -> None:
    env = PointRobotEnv()
    env.reset(seed=1)
    tasks_after_seed_1 = env.sample_tasks(4, seed=9)
    env.reset(seed=2)
    state = env.np_random.bit_generator.state
    assert env.sample_tasks(4, seed=9) == tasks_after_seed_1
    assert env.np_random.bit_generator.state == state


@pytest.mark.parametrize("family", FAMILIES)
def test_sample_tasks_zero_gives_empty_and_negative_raises(family: type[MetaEnv]) -> None:
    assert family().sample_tasks(0, seed=0) == []
    with pytest.raises(ValueError, match=">= 0"):
        family().sample_tasks(-1, seed=0)


def test_unknown_region_raises_listing_valid_regions() -> None:
    with pytest.raises(ValueError, match=r"'middle'.*'all', 'ood_train', 'ood_test'"):
        PointRobotEnv().sample_tasks(3, seed=0, region="middle")


def test_family_without_ood_regions_rejects_ood_region() -> None:
    with pytest.raises(ValueError, match=r"_NoOodFamily has no out-of-distribution regions.*'all'"):
        _NoOodFamily().sample_tasks(3, seed=0, region="ood_train")


def test_dense_regions_split_the_square_at_the_top_right_quadrant() -> None:
    env = PointRobotEnv()
    every = np.array([t["goal"] for t in env.sample_tasks(500, seed=0, region="all")])
    train = np.array([t["goal"] for t in env.sample_tasks(500, seed=0, region="ood_train")])
    test = np.array([t["goal"] for t in env.sample_tasks(500, seed=0, region="ood_test")])
    assert np.all(np.abs(every) <= 1.0) and np.any((every[:, 0] > 0) & (every[:, 1] > 0))
    assert np.all(np.abs(train) <= 1.0)
    assert not np.any((train[:, 0] > 0) & (train[:, 1] > 0))
    # The L-shape is three quadrants of equal area, so each should get about a third of the goals.
    for in_quadrant in (train[:, 0] <= 0) & (train[:, 1] > 0), (train[:, 0] <= 0) & (train[:, 1] <= 0):
        assert 0.25 < in_quadrant.mean() < 0.42
    assert np.all((test > 0) & (test <= 1.0))


def test_sparse_all_region_is_shuffled_half_circle_linspace() -> None:
    tasks = SparsePointRobotEnv().sample_tasks(7, seed=1)
    goals = np.array([t["goal"] for t in tasks])
    np.testing.assert_allclose(np.linalg.norm(goals, axis=1), 1.0)
    angles = _angles(tasks)
    angles[np.isclose(angles, -np.pi)] = np.pi  # atan2 may give -pi for the goal at angle pi
    np.testing.assert_allclose(np.sort(angles), np.linspace(0.0, np.pi, 7), atol=1e-12)
    assert not np.all(np.diff(angles) > 0), "angles should be permuted, not in linspace order"


def test_sparse_ood_regions_split_angles_at_two_thirds_pi() -> None:
    env = SparsePointRobotEnv()
    train = _angles(env.sample_tasks(50, seed=0, region="ood_train"))
    test = np.abs(_angles(env.sample_tasks(50, seed=0, region="ood_test")))
    assert np.all((train >= -1e-12) & (train <= 2 * np.pi / 3 + 1e-12))
    assert np.all((test > 2 * np.pi / 3 + 1e-6) & (test <= np.pi + 1e-12))
    assert np.isclose(train.max(), 2 * np.pi / 3) and np.isclose(test.max(), np.pi)


# --- set_task / task ------------------------------------------------------------------------------------------


def test_mutating_the_dict_passed_to_set_task_does_not_change_env() -> None:
    env = PointRobotEnv()
    task = {"goal": [0.5, 0.5]}
    env.set_task(task)
    task["goal"][0] = 9.0
    task["extra"] = 1.0
    assert env.task == {"goal": [0.5, 0.5]}


def test_mutating_the_returned_task_does_not_change_env() -> None:
    env = PointRobotEnv()
    env.set_task({"goal": [0.5, 0.5]})
    returned = env.task
    returned["goal"][1] = -9.0
    assert env.task == {"goal": [0.5, 0.5]}


def test_set_task_accepts_numpy_and_stores_plain_floats() -> None:
    env = PointRobotEnv()
    env.set_task({"goal": np.array([1, -1], dtype=np.int64)})
    assert env.task == {"goal": [1.0, -1.0]}
    assert all(type(x) is float for x in env.task["goal"])


def test_default_task_is_the_first_task_of_seed_zero() -> None:
    env = SparsePointRobotEnv()
    assert env.task == env.sample_tasks(1, seed=0)[0]


@pytest.mark.parametrize(
    ("task", "message"),
    [
        ({}, "missing key"),
        ({"goal": [0.0, 0.0], "velocity": 1.0}, "unknown key"),
        ({"goal": [0.0, 0.0, 0.0]}, "2 finite numbers"),
        ({"goal": [[0.0, 0.0]]}, "2 finite numbers"),
        ({"goal": 0.5}, "2 finite numbers"),
        ({"goal": ["a", "b"]}, "2 finite numbers"),
        ({"goal": [float("nan"), 0.0]}, "2 finite numbers"),
    ],
)
def test_bad_task_raises_value_error_and_keeps_old_task(task: Any, message: str) -> None:
    env = PointRobotEnv()
    before = env.task
    with pytest.raises(ValueError, match=message):
        env.set_task(task)
    assert env.task == before


def test_non_dict_task_raises_type_error() -> None:
    with pytest.raises(TypeError, match="must be a dict"):
        PointRobotEnv().set_task([0.0, 0.0])  # type: ignore[arg-type]


# --- splits ---------------------------------------------------------------------------------------------------


def _keys(tasks: list[dict[str, Any]]) -> set[str]:
    return {json.dumps(t, sort_keys=True) for t in tasks}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("ood", [False, True])
def test_splits_have_requested_sizes_and_are_disjoint(family: type[MetaEnv], ood: bool) -> None:
    splits = make_task_splits(family(), 8, 3, 4, seed=0, ood=ood)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (8, 3, 4)
    train, val, test = _keys(splits.train), _keys(splits.val), _keys(splits.test)
    assert (len(train), len(val), len(test)) == (8, 3, 4)
    assert not (train & val or train & test or val & test)


@pytest.mark.parametrize("ood", [False, True])
def test_splits_depend_only_on_task_seed(ood: bool) -> None:
    first_env, second_env = gymnasium.make("mql/PointRobot-v0"), gymnasium.make("mql/PointRobot-v0")
    first_env.reset(seed=1)  # a run seed must not matter
    second_env.reset(seed=2)
    first = make_task_splits(first_env, 5, 2, 2, seed=42, ood=ood)
    assert make_task_splits(second_env, 5, 2, 2, seed=42, ood=ood) == first
    assert make_task_splits(second_env, 5, 2, 2, seed=43, ood=ood) != first


def test_in_distribution_splits_slice_one_draw_in_order() -> None:
    env = PointRobotEnv()
    drawn = env.sample_tasks(9, seed=7)
    splits = make_task_splits(env, 5, 3, 1, seed=7)
    assert splits == TaskSplits(train=drawn[:5], val=drawn[5:8], test=drawn[8:])


def test_dense_ood_splits_train_outside_and_eval_inside_top_right_quadrant() -> None:
    splits = make_task_splits(gymnasium.make("mql/PointRobot-v0"), 40, 10, 10, seed=0, ood=True)
    for task in splits.train:
        x, y = task["goal"]
        assert not (x > 0 and y > 0)
    for task in splits.val + splits.test:
        x, y = task["goal"]
        assert 0 < x <= 1 and 0 < y <= 1


def test_sparse_ood_splits_angles_in_their_ranges() -> None:
    splits = make_task_splits(SparsePointRobotEnv(), 10, 5, 5, seed=0, ood=True)
    assert np.all(_angles(splits.train) <= 2 * np.pi / 3 + 1e-12)
    assert np.all(np.abs(_angles(splits.val + splits.test)) > 2 * np.pi / 3 + 1e-6)


def test_empty_val_and_test_are_allowed() -> None:
    splits = make_task_splits(PointRobotEnv(), 3, 0, 0, seed=0, ood=True)
    assert (len(splits.train), splits.val, splits.test) == (3, [], [])


@pytest.mark.parametrize(
    ("counts", "message"),
    [((0, 1, 1), "num_train must be >= 1"), ((2, -1, 1), ">= 0"), ((2, 1, -3), ">= 0")],
)
def test_bad_split_counts_raise(counts: tuple[int, int, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_task_splits(PointRobotEnv(), *counts, seed=0)


def test_ood_splits_on_family_without_ood_regions_raise() -> None:
    with pytest.raises(ValueError, match="no out-of-distribution regions"):
        make_task_splits(_NoOodFamily(), 2, 1, 1, seed=0, ood=True)


def test_split_short_of_tasks_raises() -> None:
    with pytest.raises(ValueError, match="only 0 val task"):
        make_task_splits(_TwoTaskFamily(), 2, 1, 0, seed=0)


def test_splits_need_a_task_family() -> None:
    with pytest.raises(TypeError, match="MetaEnv"):
        make_task_splits(gymnasium.make("CartPole-v1"), 2, 1, 1, seed=0)


def test_task_splits_reject_a_task_in_two_splits() -> None:
    shared = {"goal": [0.1, 0.2]}
    with pytest.raises(ValueError, match="train and test"):
        TaskSplits(train=[shared], val=[], test=[dict(shared)])
