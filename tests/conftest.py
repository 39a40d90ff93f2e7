"""Shared fixtures: one small trained run, reused by every test that needs a trained model or a run directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from mql_lightning.cli import main

# Small but real: TD3-context on the dense point robot, 4,000 environment steps (2,000 of warm-up).
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
    """Run ``mql fit`` in-process with run directories under ``root``; return the run directory."""
    main(["fit", *TINY_RUN_ARGS, f"--trainer.logger.init_args.save_dir={root}", *extra])
    runs = sorted((root / "mql").glob("version_*"))
    assert runs, f"no run directory under {root}"
    return runs[-1]


@pytest.fixture(autouse=True)
def _single_thread() -> Iterator[None]:
    """One torch thread in every test, as in training (DESIGN decision 12): fast and deterministic."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory of a 4,000-step TD3-context run (about half a minute on one core)."""
    root = tmp_path_factory.mktemp("trained")
    return run_fit(root, "--data.max_env_steps=4000", "--data.val_every_env_steps=2000")


@pytest.fixture
def straight_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted reference run of ``test_resume.py`` and ``test_interrupt.py``, made once per test session."""
    from tests.test_resume import _straight

    return _straight(tmp_path_factory.getbasetemp())
