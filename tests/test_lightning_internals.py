"""Lightning's private names that mql-lightning relies on still exist (a Lightning upgrade fails here, by name)."""

from __future__ import annotations

import inspect

from lightning.pytorch.callbacks import ModelCheckpoint

from mql_lightning import lightning_internals
from mql_lightning.callbacks import ReplayCheckpoint


def test_every_private_lightning_name_used_still_exists() -> None:
    assert lightning_internals.missing() == []


def test_replay_checkpoint_overrides_only_methods_that_model_checkpoint_still_has() -> None:
    overridden = {
        name for name, member in vars(ReplayCheckpoint).items()
        if name.startswith("_") and not name.startswith("__") and callable(member) and hasattr(ModelCheckpoint, name)
    }
    assert overridden <= set(lightning_internals.MODEL_CHECKPOINT_METHODS)
    for name in overridden:  # same parameters as the method it replaces
        assert inspect.signature(getattr(ReplayCheckpoint, name)).parameters.keys() == inspect.signature(
            getattr(ModelCheckpoint, name)
        ).parameters.keys(), name
