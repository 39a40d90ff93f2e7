"""The adaptation's switches between the paper (defaults) and the authors' released code, one at a time.

Each test flips one :class:`AdaptationConfig` switch and checks what it changes: the classifier's rows, whose context
beta reads in Eq. 19, the penalty's scale, lambda per minibatch, the proximal term in Eq. 18, the phase of the
delayed actor step. Driven through :class:`mql_lightning.adaptation.Adaptation`, the step-by-step entry point.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
import torch

from mql_lightning.adaptation import (
    Adaptation,
    AdaptationConfig,
    adapt_agent,
    classifier_rows,
    collect_adaptation_data,
)
from mql_lightning.data.collector import Collector
from mql_lightning.data.replay import EpisodeReplay, ReplayBatch
from mql_lightning.envs import make_env
from mql_lightning.modules.agent import TD3Agent
from mql_lightning.modules.context import ContextEncoder
from mql_lightning.modules.propensity import effective_sample_size

OBS, ACT, H = 2, 2, 4
GOALS = ([0.5, -0.5], [-0.8, 0.3], [0.1, 0.9], [-0.3, -0.7])
EPISODES_PER_TASK = 3  # of 20 steps: 60 transitions per task
NEW_STEPS = 40


def env_fn() -> Any:
    return make_env("mql/PointRobot-v0")


def agent(policy_delay: int = 2) -> TD3Agent:
    torch.manual_seed(0)
    return TD3Agent(OBS, ACT, context=lambda d: ContextEncoder(d, 8), hidden_sizes=(32, 32), policy_delay=policy_delay)


def settings(**overrides: Any) -> AdaptationConfig:
    base = {"num_steps": NEW_STEPS, "new_task_updates": 4, "replay_updates": 6, "replay_batch_size": 32}
    return AdaptationConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def data() -> dict[str, tuple[EpisodeReplay, EpisodeReplay]]:
    """(meta replay, new-task data) per history padding, collected with a random meta agent."""
    out = {}
    for padding in ("zeros", "authors"):
        collector = Collector(env_fn, OBS, ACT, H, padding, 0.3)
        replay = EpisodeReplay(len(GOALS), 100, OBS, ACT, H, padding)
        rng = np.random.default_rng(0)
        for _ in range(EPISODES_PER_TASK):
            for ep in collector.rollout([{"goal": g} for g in GOALS], list(range(len(GOALS))), rng):
                replay.add_episode(ep.task, ep.obs, ep.actions, ep.rewards, ep.next_obs, ep.terminated, ep.start_action)
        new = collect_adaptation_data(env_fn, agent(), {"goal": [0.7, 0.7]}, H, settings(), rng, padding, 0.3)
        out[padding] = (replay, new)
    return out


def rows_of(batch: ReplayBatch) -> set[tuple[float, ...]]:
    """Transitions identified by (task, obs, action): unique in these data."""
    values = torch.cat([batch.task[:, None].float(), batch.obs, batch.action], 1)
    return {tuple(row.tolist()) for row in values}


def test_paper_classifier_rows_are_every_new_transition_and_an_equal_share_of_every_task(data: Any) -> None:
    replay, new = data["zeros"]
    new_rows, replay_rows = classifier_rows(new, replay, settings(), torch.Generator().manual_seed(1))
    assert len(new_rows.obs) == NEW_STEPS and len(rows_of(new_rows)) == NEW_STEPS  # each new transition once
    assert torch.bincount(replay_rows.task).tolist() == [NEW_STEPS // len(GOALS)] * len(GOALS)


def test_authors_classifier_rows_are_resampled_new_rows_and_int_share_plus_2_from_each_tasks_latest(
    data: Any,
) -> None:
    replay, new = data["authors"]
    config = settings(classifier_rows="authors", snapshot_size=20)
    new_rows, replay_rows = classifier_rows(new, replay, config, torch.Generator().manual_seed(1))
    every_new = new.gather(torch.zeros(NEW_STEPS, dtype=torch.long), torch.arange(NEW_STEPS))
    assert len(new_rows.obs) == NEW_STEPS
    assert rows_of(new_rows) < rows_of(every_new)  # drawn with replacement: some repeat, some are left out
    per_task = NEW_STEPS // len(GOALS) + 2
    assert torch.bincount(replay_rows.task).tolist() == [per_task] * len(GOALS)
    # Only from each task's last 20 transitions (its last episode), the authors' per-task snapshot.
    latest = torch.arange(len(GOALS)).repeat_interleave(20), torch.arange(40, 60).repeat(len(GOALS))
    assert rows_of(replay_rows) <= rows_of(replay.gather(*latest))


def fitted(data: Any, padding: str = "zeros", meta: TD3Agent | None = None, **overrides: Any) -> Adaptation:
    """An Adaptation through steps 2 and 3, on the module's data."""
    replay, new = data[padding]
    generator = torch.Generator().manual_seed(2)
    run = Adaptation(meta or agent(), settings(**overrides), generator)
    run.fit_classifier(*classifier_rows(new, replay, run.config, generator))
    run.estimate_lambda(replay.sample(32, generator))
    return run


@pytest.mark.parametrize("reader", ["meta", "adapting"])
def test_eq19_beta_reads_the_context_of_theta_meta_or_of_the_adapting_actor(data: Any, reader: str) -> None:
    replay, new = data["zeros"]
    run = fitted(data, beta_context=reader)
    generator = torch.Generator().manual_seed(3)
    for _ in range(4):
        run.new_task_update(new.sample(NEW_STEPS, generator))
    for _ in range(3):
        batch = replay.sample(32, generator)
        by_meta = run.classifier.beta(run.features(batch))
        by_adapting = run.classifier.beta(run.features(batch, run.agent))  # before this update changes the actor
        record = run.replay_update(batch)
        assert torch.equal(record.beta, by_adapting if reader == "adapting" else by_meta)
        assert not torch.equal(by_meta, by_adapting)  # the adapting actor's context has moved away


def test_full_proximal_scale_with_lambda_is_half_scale_with_twice_lambda(data: Any) -> None:
    replay, new = data["zeros"]

    def adapted(**overrides: Any) -> dict[str, torch.Tensor]:
        result = adapt_agent(agent(), replay, new, settings(**overrides), torch.Generator().manual_seed(4))
        return result.agent.state_dict()

    full = adapted(fixed_lambda=0.1, proximal_scale="full")  # the released code's prox_coef 0.1
    half = adapted(fixed_lambda=0.2)  # the same penalty in the paper's (lambda / 2) form
    assert all(torch.equal(full[k], half[k]) for k in full)
    other = adapted(fixed_lambda=0.1)
    assert not all(torch.equal(full[k], other[k]) for k in full)


def test_per_minibatch_lambda_is_one_minus_the_ess_of_that_minibatch(data: Any) -> None:
    replay, _ = data["zeros"]
    run = fitted(data, lambda_per_minibatch=True, fixed_lambda=0.1)
    generator = torch.Generator().manual_seed(5)
    records = [run.replay_update(replay.sample(32, generator)) for _ in range(4)]
    lambdas = []
    for record in records:
        expected = 1.0 - float(effective_sample_size(record.beta))
        lambdas.append(expected if expected > 1e-7 else 0.1)
        assert float(record.lam) == pytest.approx(lambdas[-1], abs=1e-7)
    assert len(set(lambdas)) > 1
    assert run.result(NEW_STEPS).lam == pytest.approx(float(np.mean(lambdas)), abs=1e-6)


def test_without_per_minibatch_lambda_every_update_uses_the_step_3_lambda(data: Any) -> None:
    replay, _ = data["zeros"]
    run = fitted(data)
    generator = torch.Generator().manual_seed(5)
    assert {run.replay_update(replay.sample(32, generator)).lam for _ in range(3)} == {run.lam}
    assert run.lam == pytest.approx(1.0 - run.ess)


@pytest.mark.parametrize("on", [True, False])
def test_eq18_proximal_term_switch(data: Any, on: bool) -> None:
    replay, new = data["zeros"]
    run = fitted(data, proximal_new_task=on, fixed_lambda=0.5)
    generator = torch.Generator().manual_seed(6)
    first, second = (run.new_task_update(new.sample(NEW_STEPS, generator)) for _ in range(2))
    assert first.lam == (0.5 if on else 0.0)
    # The first update starts at theta_meta: its penalty is exactly 0; the second's is positive.
    assert set(second.proximal) == ({"critic", "actor"} if on else set())
    if on:
        assert float(first.proximal["critic"]) == 0.0 and float(second.proximal["critic"]) > 0
    assert set(run.replay_update(replay.sample(32, generator)).proximal) >= {"critic"}  # Eq. 19 keeps its term


@pytest.mark.parametrize(("first", "delay"), [(False, 2), (True, 2), (False, 3), (True, 3)])
def test_the_delayed_actor_step_comes_first_in_each_step_only_when_switched(data: Any, first: bool, delay: int) -> None:
    replay, new = data["zeros"]
    run = fitted(data, meta=agent(policy_delay=delay), actor_step_first=first, fixed_lambda=0.5)
    generator = torch.Generator().manual_seed(7)
    eq18 = ["actor" in run.new_task_update(new.sample(NEW_STEPS, generator)).proximal for _ in range(4)]
    eq19 = ["actor" in run.replay_update(replay.sample(32, generator)).proximal for _ in range(4)]
    if first:  # the authors' `it % policy_freq == 0`, `it` from 0 in each of the two steps
        assert eq18 == [i % delay == 0 for i in range(4)] and eq19 == [i % delay == 0 for i in range(4)]
    else:  # updates d, 2d, ... counted through both steps
        assert eq18 + eq19 == [(i + 1) % delay == 0 for i in range(8)]


def test_authors_settings_adapt_end_to_end_and_leave_theta_meta_unchanged(data: Any) -> None:
    replay, new = data["authors"]
    meta = agent()
    before = {k: v.clone() for k, v in meta.state_dict().items()}
    config = settings(
        beta_prior_correction=False, classifier_rows="authors", beta_context="adapting", classifier_solver="lbfgs",
        beta_floor=0.1,
        fixed_lambda=0.1, proximal_scale="full", proximal_new_task=False, actor_step_first=True,
    )
    result = adapt_agent(meta, replay, new, config, torch.Generator().manual_seed(8), "transition")
    assert result.lam == 0.1 and 0 < result.ess <= 1 and np.isfinite(result.beta_mean)
    assert all(torch.equal(meta.state_dict()[k], v) for k, v in before.items())
    changed = result.agent.state_dict()
    assert not all(torch.equal(changed[k], before[k]) for k in before)


def test_every_switch_has_the_papers_value_by_default() -> None:
    paper = {"beta_prior_correction": True, "beta_context": "meta", "classifier_rows": "paper",
             "classifier_solver": "newton", "proximal_scale": "half", "lambda_per_minibatch": False,
             "actor_step_first": False, "proximal_new_task": True, "beta_floor": None, "fixed_lambda": None}
    defaults = dataclasses.asdict(AdaptationConfig())
    assert {k: defaults[k] for k in paper} == paper


@pytest.mark.parametrize(("name", "value"), [("beta_context", "actor"), ("classifier_rows", "all"),
                                              ("proximal_scale", "double"), ("snapshot_size", 0),
                                              ("classifier_solver", "sgd")])
def test_bad_switch_values_are_rejected(name: str, value: Any) -> None:
    with pytest.raises(ValueError, match=name):
        AdaptationConfig(**{name: value})
