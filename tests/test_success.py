"""The success rate: logged beside the return for a family with a success flag (Meta-World), absent for the others.

A tiny real ``mql fit`` then ``mql test`` on Meta-World ML1 reach (seconds, not minutes: two training goals, one short
validation, two test goals) checks every place the success rate appears: validation and test metrics before and after
adaptation (per task and mean), the test table's CSV and JSON, and ``mql plot``'s success figure.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mql_lightning.cli import main
from mql_lightning.data.collector import Collector
from mql_lightning.envs import make_env

SUCCESS_KEYS = ("success", "success_pre_adapt")

TINY_METAWORLD_RUN = [
    "--seed_everything=0",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--data.env_id=mql/MetaWorld-ML1-v0",
    '--data.env_kwargs={"task_class": "reach-v3"}',
    "--data.num_train_tasks=2",
    "--data.num_val_tasks=1",
    "--data.num_test_tasks=2",
    "--data.history_length=4",
    "--data.batch_size=32",
    "--data.warmup_steps=500",
    "--data.updates_per_iteration=10",
    "--data.max_env_steps=1000",
    "--data.val_every_env_steps=1000",
    "--data.validate_at_start=false",
    "--data.eval_episodes=1",
    "--model.agent.init_args.hidden_sizes=[16,16]",
    "--model.agent.init_args.context.init_args.hidden_size=4",
    "--adaptation.settings.num_steps=20",
    "--adaptation.settings.new_task_updates=2",
    "--adaptation.settings.replay_updates=2",
    "--adaptation.settings.replay_batch_size=32",
]


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_families_without_a_success_flag_log_no_success(trained_run: Path) -> None:
    header = next(csv.reader((trained_run / "metrics.csv").open()))
    assert not [column for column in header if "success" in column]
    collector = Collector(lambda: make_env("mql/PointRobot-v0"), 2, 2, 3)
    assert collector.rollout([{"goal": [0.5, 0.5]}], [0], np.random.default_rng(0))[0].success is None


def test_an_episode_succeeds_when_any_step_reports_success() -> None:
    pytest.importorskip("metaworld")
    make_reach = lambda: make_env("mql/MetaWorld-ML1-v0", task_class="reach-v3")  # noqa: E731
    collector = Collector(make_reach, 39, 4, 3)
    task = make_reach().unwrapped.sample_tasks(1, 0)[0]
    goal = torch.tensor(task["rand_vec"][3:], dtype=torch.float32)  # reach's goal position, hidden from the policy

    def reach(obs: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """Move the hand (obs[:, :3]) straight to the goal, then hold it there."""
        move = torch.clamp(20.0 * (goal - obs[:, :3]), -1.0, 1.0)
        return torch.cat([move, torch.zeros(len(obs), 1)], dim=1)

    def still(obs: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(obs), 4)

    reached, idle = (collector.rollout([task], [0], np.random.default_rng(0), policy)[0] for policy in (reach, still))
    assert reached.success is True and idle.success is False
    assert reached.length == idle.length == 500  # success ends nothing: episodes run to Meta-World's time limit


@pytest.fixture(scope="module")
def metaworld_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny ML1 reach run and its ``mql test`` run: ``(fit run directory, test run directory)``."""
    pytest.importorskip("metaworld")
    root = tmp_path_factory.mktemp("metaworld")
    save_dir = f"--trainer.logger.init_args.save_dir={root}"
    main(["fit", *TINY_METAWORLD_RUN, save_dir])
    fit_run = root / "mql" / "version_0"
    main(["test", "--ckpt_path", str(fit_run / "checkpoints" / "last.ckpt"), save_dir])
    return fit_run, root / "mql" / "version_1"


def test_validation_logs_the_success_rate_before_and_after_adaptation_per_task_and_mean(
    metaworld_runs: tuple[Path, Path],
) -> None:
    validation = [row for row in rows(metaworld_runs[0] / "metrics.csv") if row.get("val/return")]
    assert validation
    for row in validation:
        for name in SUCCESS_KEYS:
            for key in (f"val/{name}", f"val/task_0/{name}"):
                assert float(row[key]) in (0.0, 1.0), key  # one evaluation episode: it succeeded or it did not


def test_mql_test_reports_the_success_rate_of_every_test_task(metaworld_runs: tuple[Path, Path]) -> None:
    test_run = metaworld_runs[1]
    table = rows(test_run / "test_results.csv")
    assert [row["task"] for row in table] == ["0", "1"]
    assert all(0.0 <= float(row[name]) <= 1.0 for row in table for name in SUCCESS_KEYS)
    assert json.loads((test_run / "test_results.json").read_text())[1].keys() == table[1].keys()
    logged = rows(test_run / "metrics.csv")[-1]
    assert {f"test/{name}" for name in SUCCESS_KEYS} | {f"test/task_1/{name}" for name in SUCCESS_KEYS} <= set(logged)


def test_mql_plot_draws_the_success_rate_of_runs_that_have_one(
    metaworld_runs: tuple[Path, Path], trained_run: Path, tmp_path: Path
) -> None:
    pytest.importorskip("matplotlib")
    from mql_lightning.plot import main as plot_main

    plot_main([str(metaworld_runs[0]), "--out", str(tmp_path / "with")])
    assert (tmp_path / "with" / "success.png").is_file()
    assert "success_mean" in next(csv.reader((tmp_path / "with" / "summary.csv").open()))
    plot_main([str(trained_run), "--out", str(tmp_path / "without")])
    assert not (tmp_path / "without" / "success.png").exists()
    assert "success_mean" not in next(csv.reader((tmp_path / "without" / "summary.csv").open()))
