"""Tests for the environment-interaction DataModule, driven by hand (no Trainer): the Alg. 1 update stream."""

from __future__ import annotations

import io
import math
import random
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from mql_lightning.data.collector import Policy
from mql_lightning.data.datamodule import MetaRLDataModule
from mql_lightning.data.replay import ReplayBatch

OBS, ACT = 2, 2
C = ACT + 1 + OBS
EPISODE_LENGTH = 20
SMALL: dict[str, Any] = {
    "num_train_tasks": 4,
    "num_val_tasks": 2,
    "num_test_tasks": 2,
    "warmup_steps": 40,
    "max_env_steps": 200,
    "val_every_env_steps": 100,
    "batch_size": 8,
    "history_length": 4,
    "replay_capacity": 1000,
}


def linear_policy(seed: int = 0) -> Policy:
    """A fixed, deterministic policy that uses both the observation and the history."""
    gen = torch.Generator().manual_seed(seed)
    w_obs, w_hist = torch.randn(OBS, ACT, generator=gen), torch.randn(C, ACT, generator=gen)

    def policy(obs: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        return torch.tanh(obs @ w_obs + history.mean(dim=1) @ w_hist)

    return policy


def make_dm(monkeypatch: pytest.MonkeyPatch, seed: int = 0, **overrides: Any) -> MetaRLDataModule:
    """A set-up datamodule whose collection policy is :func:`linear_policy` (there is no trainer to ask)."""
    dm = MetaRLDataModule(**{**SMALL, **overrides})
    with torch.random.fork_rng():  # setup() seeds its generators from the run seed; keep the global one intact
        torch.manual_seed(seed)
        dm.setup("fit")
    policy = linear_policy()
    monkeypatch.setattr(dm, "_policy", lambda: policy)
    return dm


def drain(dm: MetaRLDataModule, max_calls: int = 1000) -> list[ReplayBatch | int]:
    """Pull from the stream until two StopIterations in a row at the budget; a stop is recorded as env_steps."""
    events: list[ReplayBatch | int] = []
    for _ in range(max_calls):
        try:
            events.append(dm.next_batch())
        except StopIteration:
            events.append(dm.progress.env_steps)
            if dm.progress.env_steps >= dm.max_env_steps and len(events) > 1 and isinstance(events[-2], int):
                return events
    raise AssertionError("the update stream never ended")


def assert_batches_equal(a: ReplayBatch, b: ReplayBatch) -> None:
    for name, x, y in zip(ReplayBatch._fields, a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0, msg=name)


# --------------------------------------------------------------------------------------------------------------
# Construction
# --------------------------------------------------------------------------------------------------------------


def test_dimensions_and_splits_are_known_right_after_init() -> None:
    dm = MetaRLDataModule(**SMALL)
    assert (dm.obs_dim, dm.action_dim) == (OBS, ACT)
    assert (len(dm.tasks.train), len(dm.tasks.val), len(dm.tasks.test)) == (4, 2, 2)
    assert dm.replay is None  # the buffer is only allocated by setup("fit")


def test_task_splits_depend_on_the_task_seed_only() -> None:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        a = MetaRLDataModule(**SMALL, task_seed=5)
        torch.manual_seed(1)  # the run seed must not matter
        b = MetaRLDataModule(**SMALL, task_seed=5)
    c = MetaRLDataModule(**SMALL, task_seed=6)
    assert a.tasks == b.tasks
    assert a.tasks.train != c.tasks.train
    assert a.tasks.val != c.tasks.val


@pytest.mark.parametrize(
    "overrides",
    [
        {"batch_size": 0},
        {"warmup_steps": -1},
        {"task_weighting": "episode"},
        {"env_id": "mql/NoSuchFamily-v0"},
        {"max_env_steps": 0},
        {"updates_per_iteration": 0},
        {"exploration_noise": -0.1},
    ],
    ids=lambda o: next(iter(o)),
)
def test_invalid_arguments_raise_value_error(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        MetaRLDataModule(**{**SMALL, **overrides})


def test_setup_splits_replay_capacity_over_training_tasks() -> None:
    dm = MetaRLDataModule(**SMALL)
    dm.setup("fit")
    assert dm.replay is not None
    assert dm.replay.num_tasks == 4
    assert dm.replay.capacity_per_task == 250
    assert dm.replay.history_length == 4
    replay = dm.replay
    dm.setup("fit")  # idempotent: a second setup keeps the filled buffer
    assert dm.replay is replay


# --------------------------------------------------------------------------------------------------------------
# The update stream
# --------------------------------------------------------------------------------------------------------------


def test_stream_validates_at_start_warms_up_then_stops_at_each_validation_boundary_and_the_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dm = make_dm(monkeypatch)
    with pytest.raises(StopIteration):  # validation of the untrained policy at step 0
        dm.next_batch()
    assert dm.progress.env_steps == 0

    first = dm.next_batch()
    # Warm-up (40 random steps, cycling over the training tasks) plus one policy episode.
    assert dm.progress.env_steps >= dm.warmup_steps
    assert dm.progress.env_steps == 40 + EPISODE_LENGTH
    assert dm.progress.iterations == 1
    assert dm.replay is not None
    assert int(dm.replay.sizes.sum()) == 60
    assert (dm.replay.sizes[:2] >= 20).all()  # the warm-up episodes cycle through the tasks: 0, then 1
    assert isinstance(first, ReplayBatch)
    assert first.obs.shape == (8, OBS)
    assert first.history.shape == first.next_history.shape == (8, 4, C)

    events = drain(dm)
    stops = [e for e in events if isinstance(e, int)]
    batches = [e for e in events if isinstance(e, ReplayBatch)]
    # Validation at 100 env steps, then the budget (200) ends the stream, and it stays ended.
    assert stops == [100, 200, 200]
    assert all(b.reward.shape == (8,) and b.task.shape == (8,) for b in batches)
    assert all(int(b.task.max()) < 4 and int(b.task.min()) >= 0 for b in batches)
    # One update per policy step collected: 200 - 40 warm-up steps, the first batch included.
    assert 1 + len(batches) == 200 - 40
    assert events.index(100) == 3 * EPISODE_LENGTH - 1  # 19 more batches at 60, 20 at 80, 20 at 100, the stop
    assert dm.progress.env_steps == 200
    assert dm.progress.episodes == 10
    assert math.isfinite(dm.progress.last_rollout_return)


def test_without_validation_at_start_the_first_call_collects(monkeypatch: pytest.MonkeyPatch) -> None:
    dm = make_dm(monkeypatch, validate_at_start=False)
    batch = dm.next_batch()
    assert batch.obs.shape == (8, OBS)
    assert dm.progress.env_steps == 60


def test_default_updates_per_iteration_is_one_per_collected_step(monkeypatch: pytest.MonkeyPatch) -> None:
    dm = make_dm(monkeypatch, validate_at_start=False, warmup_steps=0, episodes_per_iteration=2)
    dm.next_batch()
    assert dm.progress.env_steps == 2 * EPISODE_LENGTH
    for _ in range(2 * EPISODE_LENGTH - 1):
        dm.next_batch()
    assert dm.progress.env_steps == 2 * EPISODE_LENGTH  # no collection while updates are still due
    dm.next_batch()
    assert dm.progress.env_steps == 4 * EPISODE_LENGTH
    assert dm.progress.iterations == 2


def test_explicit_updates_per_iteration(monkeypatch: pytest.MonkeyPatch) -> None:
    dm = make_dm(monkeypatch, validate_at_start=False, updates_per_iteration=5)
    steps = []
    for _ in range(11):
        dm.next_batch()
        steps.append(dm.progress.env_steps)
    assert steps == [60] * 5 + [80] * 5 + [100]


def test_same_run_seed_gives_the_same_stream_and_another_seed_does_not(monkeypatch: pytest.MonkeyPatch) -> None:
    def first_batches(seed: int) -> list[ReplayBatch]:
        dm = make_dm(monkeypatch, seed=seed, validate_at_start=False)
        return [dm.next_batch() for _ in range(25)]

    a, b, c = first_batches(3), first_batches(3), first_batches(4)
    for x, y in zip(a, b, strict=True):
        assert_batches_equal(x, y)
    assert not torch.equal(a[0].obs, c[0].obs)


def test_state_dict_round_trip_reproduces_the_next_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    dm = make_dm(monkeypatch, seed=1)
    with pytest.raises(StopIteration):
        dm.next_batch()
    for _ in range(30):  # mid-iteration: 10 updates of the second iteration are still due
        dm.next_batch()
    assert dm.progress.updates_left == 10
    assert dm.replay is not None

    buffer = io.BytesIO()
    torch.save({"dm": dm.state_dict(), "replay": dm.replay.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    fresh = make_dm(monkeypatch, seed=99)  # another run seed: everything must come from the state
    assert fresh.replay is not None
    fresh.load_state_dict(saved["dm"])
    fresh.replay.load_state_dict(saved["replay"])
    assert fresh.progress == dm.progress

    # 10 batches from the restored iteration, then a collection (env RNG) and more batches.
    for _ in range(30):
        assert_batches_equal(dm.next_batch(), fresh.next_batch())
    assert fresh.progress == dm.progress
    assert fresh.progress.env_steps == 100


def test_state_dict_before_setup_holds_only_the_counters() -> None:
    dm = MetaRLDataModule(**SMALL)
    state = dm.state_dict()
    assert set(state) == {"progress"}
    assert state["progress"]["next_validation_at"] == 0


def test_the_schedule_moves_past_a_validation_once_it_completed(monkeypatch: pytest.MonkeyPatch) -> None:
    dm = make_dm(monkeypatch)
    with pytest.raises(StopIteration):  # the validation at 0 is due
        dm.next_batch()
    pending = dm.state_dict()  # a checkpoint taken now (an interrupted validation) still has it ahead
    assert pending["progress"]["next_validation_at"] == 0
    dm.validation_done()
    assert dm.state_dict()["progress"]["next_validation_at"] == 100
    dm.next_batch()  # trains on

    resumed = make_dm(monkeypatch)
    resumed.load_state_dict(pending)
    with pytest.raises(StopIteration):  # asks for the validation again
        resumed.next_batch()


def test_a_validation_that_never_runs_is_not_asked_for_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    dm = make_dm(monkeypatch)
    with pytest.raises(StopIteration):
        dm.next_batch()
    dm.next_batch()  # no validation came (e.g. limit_val_batches=0): training goes on instead of stopping again
    assert dm.progress.next_validation_at == 100


def test_a_run_with_its_closing_validation_pending_is_not_finished(monkeypatch: pytest.MonkeyPatch) -> None:
    dm = make_dm(monkeypatch, validate_at_start=False)
    dm.progress.env_steps = dm.progress.next_validation_at = 200  # budget spent, last validation interrupted
    assert not dm.finished
    dm.progress.next_validation_at = 300
    assert dm.finished


def test_global_random_states_are_saved_and_restored_only_when_fitting(monkeypatch: pytest.MonkeyPatch) -> None:
    dm = make_dm(monkeypatch)
    state = dm.state_dict()
    expected = (torch.rand(2), np.random.rand(), random.random())
    dm.load_state_dict(state)  # no trainer fitting (e.g. MetaRLDataModule.from_checkpoint): left alone
    assert torch.rand(2).ne(expected[0]).any()
    monkeypatch.setattr(dm, "trainer", SimpleNamespace(state=SimpleNamespace(fn="fit")))
    dm.load_rank_state_dict(state)  # resuming fit
    assert torch.equal(torch.rand(2), expected[0])
    assert (np.random.rand(), random.random()) == expected[1:]


# --------------------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------------------


def test_evaluate_is_deterministic_and_does_not_touch_the_training_rng(monkeypatch: pytest.MonkeyPatch) -> None:
    dm = make_dm(monkeypatch, eval_episodes=3)
    rng_state = dm.rank_state_dict()["rng"]
    policy = linear_policy(seed=5)
    first = dm.evaluate(policy, "val", 0)
    second = dm.evaluate(policy, "val", 0)
    assert first == second
    assert set(first) == {"return", "length"}
    assert math.isfinite(first["return"]) and first["return"] < 0  # dense reward: minus the goal distance
    assert first["length"] == EPISODE_LENGTH
    assert dm.rank_state_dict()["rng"] == rng_state
    assert dm.progress.env_steps == 0  # evaluation steps are not training steps


def test_evaluate_differs_between_tasks_and_splits(monkeypatch: pytest.MonkeyPatch) -> None:
    dm = make_dm(monkeypatch)
    policy = linear_policy(seed=5)
    returns = {(split, i): dm.evaluate(policy, split, i)["return"] for split in ("val", "test") for i in (0, 1)}
    assert len(set(returns.values())) == 4


def test_evaluate_averages_over_eval_episodes(monkeypatch: pytest.MonkeyPatch) -> None:
    dm = make_dm(monkeypatch, eval_episodes=2)
    calls: list[int] = []
    policy = linear_policy()

    def counting(obs: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        calls.append(obs.shape[0])
        return policy(obs, history)

    result = dm.evaluate(counting, "test", 1)
    assert calls == [2] * EPISODE_LENGTH  # the eval episodes run in lockstep
    assert np.isfinite(result["return"])
