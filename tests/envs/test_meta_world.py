"""The Meta-World families: Meta-World's own physics, rewards, success flags and benchmark goals, unchanged.

Skipped where Meta-World is not installed (``pip install ".[metaworld]"``; CI installs it).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

metaworld = pytest.importorskip("metaworld")

import mujoco  # noqa: E402

from mql_lightning.cli import main  # noqa: E402
from mql_lightning.envs import make_env, make_task_splits  # noqa: E402
from mql_lightning.envs.meta_world import TEST_GOALS_PER_CLASS  # noqa: E402
from mql_lightning.envs.meta_world_compat import LEGACY_EQ_DATA_WIDTH  # noqa: E402

SEED = 7


def plain(tasks: list) -> list[dict]:
    """Meta-World ``Task`` objects as the family's task dicts (class name and goal vector)."""
    return [{"class": t.env_name, "rand_vec": pickle.loads(t.data)["rand_vec"].tolist()} for t in tasks]


def rollout(env, actions: np.ndarray) -> tuple[list, list, list, list]:
    obs, _ = env.reset(seed=3)
    observations, rewards, successes, ends = [obs], [], [], []
    for action in actions:
        obs, reward, terminated, truncated, info = env.step(action)
        observations.append(obs)
        rewards.append(reward)
        successes.append(info["success"])
        ends.append((terminated, truncated))
        if terminated or truncated:
            break
    return observations, rewards, successes, ends


@pytest.mark.parametrize(
    ("env_id", "task_class"),
    [
        ("mql/MetaWorld-ML1-v0", "reach-v3"),
        ("mql/MetaWorld-ML1-v0", "push-v3"),
        ("mql/MetaWorld-ML10-v0", "door-close-v3"),
    ],
)
def test_a_whole_episode_equals_meta_worlds_own_env_on_the_same_goal_and_actions(env_id: str, task_class: str) -> None:
    kwargs = {"task_class": task_class} if "ML1-" in env_id else {}
    env = make_env(env_id, **kwargs)  # ML10 starts on its first training class and switches to a test class here
    benchmark = metaworld.ML1(task_class, seed=SEED)
    env.unwrapped.set_task(plain(benchmark.test_tasks)[2])
    theirs = benchmark.test_classes[task_class]()
    theirs.set_task(benchmark.test_tasks[2])
    actions = np.random.default_rng(0).uniform(-1, 1, (510, 4)).astype(np.float32)

    ours_trace, their_trace = rollout(env, actions), rollout(theirs, actions)

    for ours, their in zip(ours_trace, their_trace, strict=True):
        assert len(ours) == len(their)
        assert all(np.array_equal(a, b) for a, b in zip(ours, their, strict=True))
    observations, _, _, ends = ours_trace
    assert observations[0].shape == (39,) and observations[0].dtype == np.float64
    assert np.all(observations[0][36:] == 0.0)  # the ML benchmarks hide the goal
    # 500 steps, then truncation (never termination): the registered time limit is Meta-World's own episode length.
    assert len(ends) == 500 and ends[-1] == (False, True) and not any(t for t, _ in ends)
    env.close()
    theirs.close()


def test_ml1_splits_are_meta_worlds_train_goals_and_its_test_goals_split_into_validation_and_test() -> None:
    env = make_env("mql/MetaWorld-ML1-v0", task_class="push-v3")
    benchmark = metaworld.ML1("push-v3", seed=SEED)

    splits = make_task_splits(env, 50, 10, 40, seed=SEED)

    assert splits.train == plain(benchmark.train_tasks)
    assert splits.test == plain(benchmark.test_tasks)[:TEST_GOALS_PER_CLASS]  # the goals of Meta-World's protocol
    assert splits.val == plain(benchmark.test_tasks)[TEST_GOALS_PER_CLASS:]  # the 10 its protocol never evaluates
    with pytest.raises(ValueError, match="gave only 50 train task"):
        make_task_splits(env, 51, 0, 0, seed=SEED)
    with pytest.raises(ValueError, match="has its benchmark's own held-out tasks; data\\.ood does not apply"):
        make_task_splits(env, 2, 1, 1, seed=SEED, ood=True)


@pytest.mark.slow
@pytest.mark.parametrize("benchmark_name", ["ML10", "ML45"])
def test_ml10_and_ml45_splits_take_meta_worlds_classes_in_turn(benchmark_name: str) -> None:
    env = make_env(f"mql/MetaWorld-{benchmark_name}-v0")
    benchmark = getattr(metaworld, benchmark_name)(seed=1337)
    train_classes, test_classes = list(benchmark.train_classes), list(benchmark.test_classes)
    train, test = plain(benchmark.train_tasks), plain(benchmark.test_tasks)

    splits = make_task_splits(env, 50 * len(train_classes), 5 * 10, 5 * 40, seed=1337)

    def goal(tasks: list[dict], name: str, k: int) -> dict:
        return [t for t in tasks if t["class"] == name][k]

    assert splits.train == [goal(train, c, k) for k in range(50) for c in train_classes]
    assert splits.val == [goal(test, c, k) for k in range(40, 50) for c in test_classes]
    assert splits.test == [goal(test, c, k) for k in range(40) for c in test_classes]
    # The task an env runs before any set_task is the benchmark's first training task.
    assert env.unwrapped.task == splits.train[0]


def test_set_task_takes_effect_at_the_next_reset_and_resets_depend_on_the_task_alone() -> None:
    env = make_env("mql/MetaWorld-ML1-v0", task_class="reach-v3")
    family = env.unwrapped
    first, second = family.sample_tasks(2, SEED)
    family.set_task(first)
    start = env.reset(seed=0)[0]
    action = np.full(4, 0.5, np.float32)
    expected = env.step(action)[0]
    env.reset(seed=0)
    family.set_task(second)
    assert family.task == second
    assert np.array_equal(env.step(action)[0], expected)  # mid-episode: still the first goal
    assert not np.array_equal(env.reset(seed=0)[0], start)  # reach draws the object's start with the goal
    family.set_task(first)
    assert np.array_equal(env.reset(seed=1)[0], start)  # Meta-World draws nothing at reset once the goal is set


@pytest.mark.parametrize(
    ("task", "message"),
    [
        ({"class": "push-v3", "rand_vec": [0.0] * 6}, "task class 'push-v3' is not a ML1 class"),
        ({"class": "reach-v3", "rand_vec": [0.0] * 5}, "'rand_vec' of reach-v3 must have 6 numbers, got 5"),
        ({"class": "reach-v3", "rand_vec": [0.0] * 5 + [float("nan")]}, "must be a list of finite numbers"),
        ({"class": "reach-v3"}, "missing key"),
    ],
)
def test_bad_tasks_are_rejected_by_set_task(task: dict, message: str) -> None:
    family = make_env("mql/MetaWorld-ML1-v0", task_class="reach-v3").unwrapped
    with pytest.raises(ValueError, match=message):
        family.set_task(task)


def test_an_unknown_task_class_is_a_one_line_value_error_naming_the_classes() -> None:
    expected = "unknown Meta-World task class 'reach-v9'; the classes are assembly-v3, "
    with pytest.raises(ValueError, match=expected) as e:
        make_env("mql/MetaWorld-ML1-v0", task_class="reach-v9")
    assert "\n" not in str(e.value)


def test_an_unknown_task_class_on_the_command_line_is_one_error_line_and_writes_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exited:
        main(["fit", "--data.env_id=mql/MetaWorld-ML1-v0", '--data.env_kwargs={"task_class": "nope-v3"}'])
    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert err.startswith("mql: error: unknown Meta-World task class 'nope-v3'") and err.count("\n") == 1
    assert not list(tmp_path.iterdir())


def test_a_bad_task_seed_is_rejected() -> None:
    family = make_env("mql/MetaWorld-ML1-v0").unwrapped
    with pytest.raises(ValueError, match="task seed must be an integer in"):
        family.sample_tasks(1, -1)


def test_the_mujoco_adjustments_apply_exactly_where_this_mujoco_needs_them() -> None:
    env = make_env("mql/MetaWorld-ML1-v0")
    model = env.unwrapped._env("reach-v3").model
    welds = model.eq_type == mujoco.mjtEq.mjEQ_WELD
    # Meta-World's weld: anchor 0, relative pose (0, 0, 0; -1, 0, 0, 0), torque scale 5, whatever the row width.
    expected = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 5.0]
    assert np.all(model.eq_data[welds, :LEGACY_EQ_DATA_WIDTH] == expected)
    assert np.all(model.eq_data[welds, LEGACY_EQ_DATA_WIDTH:] == 0.0)
    multiccd_flag = getattr(mujoco.mjtDisableBit, "mjDSBL_MULTICCD", None)
    if multiccd_flag is not None:  # MuJoCo >= 3.8: on by default, off for Meta-World (its single-point contacts)
        assert model.opt.disableflags & multiccd_flag
    else:  # MuJoCo 3.3.0, Meta-World's own: nothing changed
        assert not model.opt.enableflags & mujoco.mjtEnableBit.mjENBL_MULTICCD
