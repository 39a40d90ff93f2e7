"""What an ``mql`` command gets without asking.

Hyper-parameters have one source: the classes' signatures, and the shipped configs. ``mql fit`` with no ``--config``
runs ``configs/point.yaml`` exactly (:func:`~mql_lightning.cli.arguments.with_default_config` puts it on the command
line). The defaults here are the command's own, for every config: where runs go, what is checkpointed, the progress
bar, the optimiser implementation, and the Trainer settings MQL's training loop relies on.
"""

from __future__ import annotations

from typing import Any

from mql_lightning.run_directory import DEFAULT_NAME, DEFAULT_SAVE_DIR

DEFAULT_CONFIG = "point"
"""The shipped config that ``mql fit|validate|test`` run when given no ``--config`` (``configs/point.yaml``)."""

TRAINER_DEFAULTS: dict[str, Any] = {
    # Epochs are validation periods cut by the DataModule; the budget is in environment steps.
    "max_epochs": -1,
    "num_sanity_val_steps": 0,
    "log_every_n_steps": 50,
    # Adaptation (and anything else that trains at evaluation time) needs gradients under validate/test.
    "inference_mode": False,
}
"""Trainer settings MQL's loop relies on (the Trainer's own keyword defaults, so they print with the config)."""

PARSED_DEFAULTS: dict[str, Any] = {
    "trainer.logger": [
        {"class_path": f"lightning.pytorch.loggers.{logger}", "init_args": {"save_dir": DEFAULT_SAVE_DIR, "name": name}}
        for logger, name in (("CSVLogger", DEFAULT_NAME), ("TensorBoardLogger", DEFAULT_NAME))
    ],
    "trainer.callbacks": [{"class_path": "mql_lightning.callbacks.MQLProgressBar"}],
    "checkpoint.save_last": True,
    "checkpoint.monitor": "val/return",
    "checkpoint.mode": "max",
    "checkpoint.filename": "best",
    "checkpoint.auto_insert_metric_name": False,
    # Fused Adam: one kernel over all parameters instead of about ten small operations per tensor (about 4x faster
    # optimiser steps at these sizes on CPU, same results to float rounding).
    **{
        f"model.{name}": {"class_path": "torch.optim.Adam", "init_args": {"lr": 0.001, "fused": True}}
        for name in ("actor_optimizer", "critic_optimizer")
    },
}
"""Parsed like user config (not instances), so they print with ``--print_config`` and can be overridden from YAML."""
