"""Tests for the adaptation callback: Alg. 2 per held-out task inside real Lightning validation and test loops."""

from __future__ import annotations

import copy
import csv
import json
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from mql_lightning.adaptation import AdaptationConfig, adapt_to_task
from mql_lightning.callbacks import AdaptationCallback
from mql_lightning.data.datamodule import MetaRLDataModule
from mql_lightning.modules.agent import TD3Agent
from mql_lightning.modules.context import ContextEncoder
from mql_lightning.modules.mql import MQL

SETTINGS = AdaptationConfig(new_task_updates=2, replay_updates=3, num_steps=40)
PER_TASK = ("ess", "lambda", "beta_mean", "classifier_accuracy")


def small_agent(obs_dim: int, action_dim: int) -> TD3Agent:
    return TD3Agent(obs_dim, action_dim, context=lambda d: ContextEncoder(d, 8), hidden_sizes=(32, 32))


@dataclass
class Run:
    trainer: L.Trainer
    model: MQL
    datamodule: MetaRLDataModule
    callback: AdaptationCallback
    fit_metrics: dict[str, float]
    fit_logged: set[str]


def fit_run(
    root: Path, enabled: bool = True, val_every_env_steps: int = 400, csv_logger: bool = False,
    concurrent_tasks: int | None = None,
) -> Run:
    """Fit MQL for 400 environment steps (200 of warm-up) on the point robot with an adaptation callback.

    Runs on one torch thread, as every test (module fixtures are set up before the autouse thread fixture): runs
    compared bit for bit must use the same thread count.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _fit_run(root, enabled, val_every_env_steps, csv_logger, concurrent_tasks)
    finally:
        torch.set_num_threads(threads)


def _fit_run(
    root: Path, enabled: bool, val_every_env_steps: int, csv_logger: bool, concurrent_tasks: int | None
) -> Run:
    torch.manual_seed(0)  # the run seed: the DataModule's streams derive from torch.initial_seed()
    model = MQL(obs_dim=2, action_dim=2, agent=small_agent)
    datamodule = MetaRLDataModule(
        num_train_tasks=4, num_val_tasks=3, num_test_tasks=2, warmup_steps=200, max_env_steps=400,
        val_every_env_steps=val_every_env_steps, batch_size=32, eval_episodes=1, tasks_per_validation=2,
    )
    callback = AdaptationCallback(enabled=enabled, settings=SETTINGS, concurrent_tasks=concurrent_tasks)
    trainer = make_trainer(root, callback, logger=CSVLogger(save_dir=root) if csv_logger else False)
    trainer.fit(model, datamodule=datamodule)
    return Run(trainer, model, datamodule, callback, metrics(trainer.callback_metrics), set(trainer.logged_metrics))


def make_trainer(root: Path, callback: AdaptationCallback, logger: Any = False, inference_mode: bool = False
                 ) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu", devices=1, logger=logger, default_root_dir=root, callbacks=[callback],
        enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False, num_sanity_val_steps=0,
        inference_mode=inference_mode,
    )


def metrics(values: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items()}


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_unchanged(module: torch.nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = module.state_dict()
    assert after.keys() == before.keys()
    for key, value in after.items():
        assert torch.equal(value, before[key]), f"{key} changed"


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """A fitted run with a CSVLogger, then tested; ``test_results`` holds what ``trainer.test`` returned."""
    run = fit_run(tmp_path_factory.mktemp("fitted"), csv_logger=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run.test_results = metrics(run.trainer.test(run.model, datamodule=run.datamodule)[0])
    finally:
        torch.set_num_threads(threads)
    return run


@pytest.fixture(scope="module")
def disabled(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """A run without adaptation that also validates at 200 environment steps, mid-training."""
    return fit_run(tmp_path_factory.mktemp("disabled"), enabled=False, val_every_env_steps=200)


# ----------------------------------------------------------------------------------------------------- validation
def test_fit_logs_adaptation_metrics_for_the_validation_subset_only(fitted: Run) -> None:
    logged = fitted.fit_metrics
    for key in ("val/return", "val/return_pre_adapt", "val/ess", "val/lambda", "val/beta_mean",
                "val/classifier_accuracy"):
        assert key in logged, key
    for task in (0, 1):
        for name in ("return", "return_pre_adapt", *PER_TASK):
            assert f"val/task_{task}/{name}" in logged, (task, name)
        assert logged[f"val/task_{task}/lambda"] == pytest.approx(1.0 - logged[f"val/task_{task}/ess"], abs=1e-6)
        assert 0.0 <= logged[f"val/task_{task}/lambda"] <= 1.0
    # Task 2 is outside tasks_per_validation=2: neither evaluated nor adapted during fit.
    for name in ("return", "return_pre_adapt", *PER_TASK):
        assert f"val/task_2/{name}" not in logged, name
    assert fitted.fit_logged >= {"val/task_0/lambda", "val/task_1/ess"}


def test_validation_aggregates_average_before_and_after_over_the_same_tasks(fitted: Run) -> None:
    logged = fitted.fit_metrics
    for name in ("return", "return_pre_adapt", *PER_TASK):
        mean = sum(logged[f"val/task_{t}/{name}"] for t in (0, 1)) / 2
        assert logged[f"val/{name}"] == pytest.approx(mean, rel=1e-5), name


# ------------------------------------------------------------------------------------------------------------ test
def test_test_adapts_to_every_test_task_and_logs_it(fitted: Run) -> None:
    results = fitted.test_results
    for task in (0, 1):
        for name in ("return", "return_pre_adapt", *PER_TASK):
            assert f"test/task_{task}/{name}" in results, (task, name)
        assert results[f"test/task_{task}/lambda"] == pytest.approx(1.0 - results[f"test/task_{task}/ess"], abs=1e-6)
        # The adapted policy was evaluated on its own: a real return, not a copy of the pre-adaptation one.
        assert results[f"test/task_{task}/return"] != results[f"test/task_{task}/return_pre_adapt"]
    assert "test/task_2/return" not in results


def test_test_writes_one_results_row_per_test_task_into_the_log_dir(fitted: Run) -> None:
    log_dir = Path(fitted.trainer.log_dir)
    assert log_dir.is_relative_to(fitted.trainer.logger.save_dir)
    with open(log_dir / "test_results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    table = json.loads((log_dir / "test_results.json").read_text())
    assert [int(r["task"]) for r in rows] == [0, 1]
    assert [r["task"] for r in table] == [0, 1]
    for row, entry in zip(rows, table, strict=True):
        task = entry["task"]
        for name in ("return", "return_pre_adapt", *PER_TASK):
            assert float(row[name]) == pytest.approx(entry[name])
            assert entry[name] == pytest.approx(fitted.test_results[f"test/task_{task}/{name}"], rel=1e-5), name


def test_logged_test_lambda_is_what_a_direct_adaptation_of_the_task_gives(fitted: Run) -> None:
    for task in (0, 1):
        data = fitted.datamodule
        rng = data.rng_for("adapt", "test", task)
        result = adapt_to_task(fitted.model.agent, data, data.task("test", task), SETTINGS, rng)
        assert result.lam == pytest.approx(fitted.test_results[f"test/task_{task}/lambda"], rel=1e-6)
        assert result.ess == pytest.approx(fitted.test_results[f"test/task_{task}/ess"], rel=1e-6)
        assert result.new_transitions == SETTINGS.num_steps


def test_test_adaptation_is_the_same_under_inference_mode(fitted: Run, tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, AdaptationCallback(settings=SETTINGS), inference_mode=True)
    results = metrics(trainer.test(fitted.model, datamodule=fitted.datamodule)[0])
    assert results == pytest.approx(fitted.test_results, rel=1e-6)


def test_validation_and_test_leave_the_meta_agent_and_its_optimisers_unchanged(fitted: Run) -> None:
    trainer, model = fitted.trainer, fitted.model
    agent_before = snapshot(model.agent)
    optimizers = list(trainer.optimizers)
    assert len(optimizers) == 2 and all(opt.state for opt in optimizers)  # Adam moments from meta-training
    optim_before = [copy.deepcopy(opt.state_dict()) for opt in optimizers]
    progress_before, updates_before = asdict(fitted.datamodule.progress), model.num_updates
    replay_before = fitted.datamodule.replay.num_transitions()

    validated = metrics(trainer.validate(model, datamodule=fitted.datamodule)[0])
    tested = metrics(trainer.test(model, datamodule=fitted.datamodule)[0])

    assert "val/task_0/lambda" in validated and "test/task_1/lambda" in tested
    assert_unchanged(model.agent, agent_before)
    for opt, before in zip(optimizers, optim_before, strict=True):
        state = opt.state_dict()["state"]
        assert state.keys() == before["state"].keys()
        for key, slot in state.items():
            for name, value in slot.items():
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(before["state"][key][name]))
    assert asdict(fitted.datamodule.progress) == progress_before
    assert model.num_updates == updates_before
    assert fitted.datamodule.replay.num_transitions() == replay_before
    assert tested == pytest.approx(fitted.test_results, rel=1e-6)  # and a second test run repeats the first


# -------------------------------------------------------------------------------------------- adaptation disabled
def test_disabled_callback_logs_the_meta_policy_return_and_no_adaptation_metrics(disabled: Run) -> None:
    logged = disabled.fit_metrics
    assert logged["val/return"] == logged["val/return_pre_adapt"]
    for task in range(2):  # the first tasks_per_validation=2 validation tasks
        assert logged[f"val/task_{task}/return"] == logged[f"val/task_{task}/return_pre_adapt"]
    assert not [k for k in logged if k.rsplit("/", 1)[-1] in PER_TASK]


def test_adaptation_during_validation_does_not_change_the_training_run(disabled: Run, tmp_path: Path) -> None:
    enabled = fit_run(tmp_path, enabled=True, val_every_env_steps=200)
    assert "val/task_0/lambda" in enabled.fit_metrics
    # Validation at 200 steps adapted (enabled) or not (disabled); training afterwards is the same either way.
    assert asdict(enabled.datamodule.progress) == asdict(disabled.datamodule.progress)
    assert enabled.model.num_updates == disabled.model.num_updates > 0
    assert_unchanged(enabled.model.agent, snapshot(disabled.model.agent))


# ------------------------------------------------------------------------------------------ concurrent adaptation
def test_concurrent_test_adaptation_gives_the_results_of_one_task_at_a_time(
    fitted: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: dict[int, str] = {}
    real = adapt_to_task

    def spy(agent: Any, data: Any, task: dict, settings: AdaptationConfig, rng: Any) -> Any:
        threads[data.tasks.test.index(task)] = threading.current_thread().name
        return real(agent, data, task, settings, rng)

    monkeypatch.setattr("mql_lightning.callbacks.adaptation.adapt_to_task", spy)
    one_by_one, concurrent = AdaptationCallback(settings=SETTINGS, concurrent_tasks=1), AdaptationCallback(
        settings=SETTINGS, concurrent_tasks=2)
    sequential = metrics(make_trainer(tmp_path / "a", one_by_one).test(fitted.model, datamodule=fitted.datamodule)[0])
    assert set(threads.values()) == {threading.main_thread().name}
    threads.clear()
    together = metrics(make_trainer(tmp_path / "b", concurrent).test(fitted.model, datamodule=fitted.datamodule)[0])
    assert len(threads) == 2 and all(name.startswith("mql-adapt") for name in threads.values())
    assert together == sequential  # bit for bit
    assert concurrent._rows == one_by_one._rows
    assert [row["task"] for row in concurrent._rows] == [0, 1]


def test_adaptation_threads_round_as_the_main_thread_from_their_first_operation(
    fitted: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A batch-1 matrix product (an action during the adaptation rollouts) is the operation that rounded differently in
    # a fresh thread: it ran on OpenMP's default team of one thread per core, not on the process's torch threads.
    generator = torch.Generator().manual_seed(0)
    row, matrix = torch.randn(1, 4096, generator=generator), torch.randn(4096, 64, generator=generator)
    products: list[torch.Tensor] = []
    real = adapt_to_task

    def first_a_product(agent: Any, data: Any, task: dict, settings: AdaptationConfig, rng: Any) -> Any:
        products.append(row @ matrix)
        return real(agent, data, task, settings, rng)

    monkeypatch.setattr("mql_lightning.callbacks.adaptation.adapt_to_task", first_a_product)
    torch.set_num_threads(1)
    make_trainer(tmp_path, AdaptationCallback(settings=SETTINGS, concurrent_tasks=2)).test(
        fitted.model, datamodule=fitted.datamodule
    )
    assert len(products) == 2
    assert all(torch.equal(product, row @ matrix) for product in products)


def test_concurrent_validation_logs_what_one_task_at_a_time_logs(tmp_path: Path) -> None:
    one_by_one = fit_run(tmp_path / "a", concurrent_tasks=1)
    concurrent = fit_run(tmp_path / "b", concurrent_tasks=2)
    assert "val/task_1/lambda" in concurrent.fit_metrics
    assert concurrent.fit_metrics == one_by_one.fit_metrics
    assert_unchanged(concurrent.model.agent, snapshot(one_by_one.model.agent))


def test_concurrent_tasks_default_to_the_cores_left_by_the_torch_threads(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, AdaptationCallback())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(1)
    assert AdaptationCallback().workers(trainer) == cores
    torch.set_num_threads(cores + 1)  # more threads than cores: one task at a time
    assert AdaptationCallback().workers(trainer) == 1
    assert AdaptationCallback(concurrent_tasks=3).workers(trainer) == 3


@pytest.mark.parametrize("value", [0, -2])
def test_concurrent_tasks_below_one_are_refused(value: int) -> None:
    with pytest.raises(ValueError, match="concurrent_tasks must be >= 1"):
        AdaptationCallback(concurrent_tasks=value)
