"""Same seed, same results on CPU: ``mql fit``, ``validate`` and ``test`` through the real command.

Two runs with the same seed must log the same values, to the last digit (wall-clock throughput aside), and ``fit`` must
end with the same weights; a run with another seed must log other returns, so that these tests can fail. ``validate``
and ``test`` take their random streams from the checkpoint (docs/design.md#the-training-loop): the same checkpoint
evaluated twice must give the same returns, a checkpoint trained with another seed other ones.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from tests.helpers.processes import run_mql_concurrently
from tests.helpers.runs import TINY_RUN_ARGS

# Small but complete: warm-up, 100 updates, a validation with adaptation at 150 and at 300 environment steps.
FIT_ARGS = [
    *TINY_RUN_ARGS, "--data.num_train_tasks=4", "--data.max_env_steps=300", "--data.warmup_steps=200",
    "--data.val_every_env_steps=150", "--data.validate_at_start=false", "--data.tasks_per_validation=1",
    "--data.eval_episodes=2", "--adaptation.settings.replay_updates=10",
]
# Wall-clock measurements differ between identical runs.
WALL_CLOCK = ("time/updates_per_s",)
# Two runs with this seed are compared with each other and with one run with the other seed.
SEED, OTHER_SEED = 1, 2


def run_all(commands: dict[str, list[str]], root: Path) -> dict[str, Path]:
    """Run ``mql`` commands at the same time, each with its own run root ``root/<name>``; return their run dirs."""
    results = run_mql_concurrently(
        [([*args, f"--trainer.logger.init_args.save_dir={root / name}"], root) for name, args in commands.items()]
    )
    for name, result in zip(commands, results, strict=True):
        assert result.returncode == 0, f"{name}: {result.stderr}"
    return {name: next((root / name).glob("*/version_0")) for name in commands}


@pytest.fixture(scope="module")
def fits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Run directories of ``mql fit``: ``same`` and ``again`` with one seed, ``other`` with another."""
    seeds = {"same": SEED, "again": SEED, "other": OTHER_SEED}
    commands = {name: ["fit", *FIT_ARGS, f"--seed_everything={seed}"] for name, seed in seeds.items()}
    return run_all(commands, tmp_path_factory.mktemp("fit"))


def logged(run: Path) -> list[dict[str, str]]:
    """Every value a run logged, as written (``metrics.csv``, and ``test_results.json`` under ``mql test``)."""
    with open(run / "metrics.csv", newline="") as f:
        rows = [{k: v for k, v in row.items() if v != "" and k not in WALL_CLOCK} for row in csv.DictReader(f)]
    results = run / "test_results.json"  # one row per test task
    return rows + (json.loads(results.read_text()) if results.is_file() else [])


def returns(run: Path) -> list[tuple[str, str]]:
    """The logged returns (of exploration episodes and evaluations, before and after adaptation)."""
    values = [(k, str(v)) for row in logged(run) for k, v in sorted(row.items()) if "return" in k]
    assert values, f"no returns logged in {run}"
    return values


def test_fit_with_the_same_seed_logs_the_same_values_and_ends_with_the_same_weights(fits: dict[str, Path]) -> None:
    assert logged(fits["same"]) == logged(fits["again"])
    weights = [torch.load(fits[n] / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"] for n in fits]
    same, again, other = weights
    assert same.keys() == again.keys() and all(torch.equal(same[k], again[k]) for k in same)
    assert not all(torch.equal(same[k], other[k]) for k in same)
    assert returns(fits["same"]) != returns(fits["other"])


@pytest.mark.parametrize("subcommand", ["validate", "test"])
def test_evaluating_a_checkpoint_twice_gives_the_same_returns(
    subcommand: str, fits: dict[str, Path], tmp_path: Path
) -> None:
    # The same checkpoint twice, and the one trained with the other seed; test on two tasks to stay fast.
    checkpoints = {"same": fits["same"], "again": fits["same"], "other": fits["other"]}
    commands = {
        name: [subcommand, "--ckpt_path", str(run / "checkpoints" / "last.ckpt"), "--data.num_test_tasks=2"]
        for name, run in checkpoints.items()
    }
    runs = run_all(commands, tmp_path)
    assert logged(runs["same"]) == logged(runs["again"])
    assert returns(runs["same"]) != returns(runs["other"])
