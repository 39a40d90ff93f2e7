"""Shared fixtures: one thread per test, and small trained runs reused by every test that needs one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.helpers.runs import run_fit, straight


@pytest.fixture(autouse=True)
def _single_thread() -> Iterator[None]:
    """One torch thread in every test: results are reproducible for a given thread count (docs/design.md)."""
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
    """The uninterrupted exact-resume run that the resume and interrupt tests compare with (made once)."""
    return straight(tmp_path_factory.getbasetemp())
