"""The contracts between the model, the DataModule and the callbacks: met by MQL's parts, and refused in one line."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from mql_lightning.data.contracts import (
    AdaptationData,
    CheckpointedData,
    MetaLearner,
    TrainingData,
    members,
    require,
)
from mql_lightning.data.datamodule import MetaRLDataModule
from mql_lightning.modules.mql import MQL


def test_the_datamodule_and_the_model_provide_every_contract() -> None:
    data = MetaRLDataModule(num_train_tasks=2, num_val_tasks=1, num_test_tasks=1)
    for protocol in (TrainingData, CheckpointedData, AdaptationData):
        assert require(data, protocol, "DataModule") is data
    model = MQL(obs_dim=data.obs_dim, action_dim=data.action_dim)
    assert require(model, MetaLearner, "LightningModule") is model


def test_a_part_without_the_contract_is_refused_naming_what_it_lacks() -> None:
    partial = SimpleNamespace(progress=None, max_env_steps=10)
    with pytest.raises(TypeError) as error:
        require(partial, TrainingData, "DataModule")
    message = str(error.value)
    assert "mql_lightning.data.contracts.TrainingData" in message
    assert "evaluate" in message and "validation_done" in message and "max_env_steps" not in message


def test_members_lists_attributes_and_methods() -> None:
    assert {"progress", "max_env_steps", "finished", "evaluate", "validation_done", "num_tasks"} == set(
        members(TrainingData)
    )
