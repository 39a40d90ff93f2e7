"""Small real ``mql fit`` runs, in-process, and what the tests read back from their run directories."""

from __future__ import annotations

import csv
import functools
import signal
from pathlib import Path
from typing import Any

import pytest
import torch

from mql_lightning.cli import main
from tests.helpers.callbacks import callback_arg

# Small but real: TD3-context on the dense point robot, 4,000 environment steps (2,000 of warm-up) by default.
TINY_RUN_ARGS = [
    "--seed_everything=0",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--model.agent.init_args.hidden_sizes=[64,64]",
    "--model.agent.init_args.gamma=0.9",
    "--data.num_train_tasks=20",
    "--data.num_val_tasks=5",
    "--data.num_test_tasks=5",
    "--data.batch_size=128",
    "--data.warmup_steps=2000",
]


def run_fit(root: Path, *extra: str) -> Path:
    """Run ``mql fit`` with :data:`TINY_RUN_ARGS` in-process, run directories under ``root``; the run directory."""
    main(["fit", *TINY_RUN_ARGS, f"--trainer.logger.init_args.save_dir={root}", *extra])
    runs = sorted((root / "mql").glob("version_*"))
    assert runs, f"no run directory under {root}"
    return runs[-1]


def tiny_point_run(**data: object) -> list[str]:
    """Arguments of a tiny point-robot ``mql fit`` (32x32 networks, GRU 8, 4 training tasks, a 40-step adaptation of
    2 + 3 updates): the runs the resume, interrupt and DDP tests compare; ``data`` sets or adds ``--data.*`` values."""
    settings = {
        "num_train_tasks": 4, "num_val_tasks": 2, "num_test_tasks": 2, "tasks_per_validation": 2, "batch_size": 32,
        "warmup_steps": 100, "val_every_env_steps": 200, "eval_episodes": 1, **data,
    }
    return [
        "--seed_everything=0",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--model.agent.init_args.hidden_sizes=[32,32]",
        "--model.agent.init_args.context.init_args.hidden_size=8",
        *(f"--data.{key}={value}" for key, value in settings.items()),
        "--adaptation.settings.num_steps=40",
        "--adaptation.settings.new_task_updates=2",
        "--adaptation.settings.replay_updates=3",
        "--trainer.log_every_n_steps=10",
    ]


# The exact-resume runs: a point-robot run of 400 environment steps, validating (with adaptation) at 0, 200 and 400,
# logging draws from the global generators (GlobalDraws) besides the model's own numbers.
BUDGET = 400
RESUME_ARGS = [*tiny_point_run(), callback_arg("GlobalDraws")]


def fit(root: Path, *extra: str) -> Path:
    """``mql fit`` of the exact-resume configuration in-process, the runs under ``root``; the run directory."""
    main(["fit", *RESUME_ARGS, f"--trainer.logger.init_args.save_dir={root}", f"--data.max_env_steps={BUDGET}", *extra])
    return root / "mql" / "version_0"


def fit_until_stopped(root: Path, stop: dict[str, Any], *extra: str) -> Path:
    """A run stopped by :class:`~tests.helpers.callbacks.StopAt`; asserts it exits as SIGTERM does (143)."""
    with pytest.raises(SystemExit) as exit_info:
        fit(root, callback_arg("StopAt", **stop), *extra)
    assert exit_info.value.code == 128 + signal.SIGTERM
    return root / "mql" / "version_0"


@functools.cache
def straight(base: Path) -> Path:
    """The uninterrupted exact-resume run under ``base/straight``, made once per test session."""
    return fit(base / "straight")


def resume(run: Path, *extra: str) -> None:
    """The short form: ``mql fit --ckpt_path <run>/checkpoints/last.ckpt`` (the run's config is found by itself)."""
    main(["fit", "--ckpt_path", str(run / "checkpoints" / "last.ckpt"), *extra])


def metrics_rows(run: Path) -> list[dict[str, str]]:
    """The logged rows, without the one wall-clock metric."""
    with open(run / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if v != "" and k != "time/updates_per_s"} for row in csv.DictReader(f)]


def checkpoint(run: Path, name: str = "last") -> dict[str, Any]:
    """A checkpoint of a run directory, loaded as ``mql`` loads it (``weights_only``)."""
    return torch.load(run / "checkpoints" / f"{name}.ckpt", weights_only=True)


def assert_same_run(resumed: Path, straight_run: Path) -> None:
    """Same rows logged (losses, rollout, validation before and after adaptation, global draws), same final state."""
    a, b = metrics_rows(straight_run), metrics_rows(resumed)
    assert [r["step"] for r in b] == [r["step"] for r in a]
    assert b == a
    logged = {"val/return", "val/return_pre_adapt", "rollout/return", "train/critic_loss", "test/numpy"}
    assert logged <= set().union(*a)
    final, expected = checkpoint(resumed), checkpoint(straight_run)
    for key, value in expected["state_dict"].items():
        assert torch.equal(final["state_dict"][key], value), key
    for opt, opt_expected in zip(final["optimizer_states"], expected["optimizer_states"], strict=True):
        for index, state in opt_expected["state"].items():
            for name, value in state.items():
                assert torch.equal(opt["state"][index][name], value), (index, name)
    assert final["MetaRLDataModule"]["progress"] == expected["MetaRLDataModule"]["progress"]
    assert final["mql"]["num_updates"] == expected["mql"]["num_updates"]
    assert torch.equal(final["mql"]["noise_generator"], expected["mql"]["noise_generator"])
    assert final["global_step"] == expected["global_step"]
    assert [p.name for p in resumed.parent.iterdir()] == [resumed.name], "the resumed run opened a new directory"
