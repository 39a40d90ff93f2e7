"""The ``mql`` command: LightningCLI over :class:`MQL` and :class:`MetaRLDataModule`.

Usage::

    mql fit                                  # the embedded default: TD3-context on the point robot
    mql fit --config configs/point.yaml --trainer.max_steps 1000
    mql fit --print_config > my.yaml        # a config that ``mql fit --config my.yaml`` accepts back
    mql validate --config runs/mql/version_0/config.yaml --ckpt_path runs/mql/version_0/checkpoints/last.ckpt
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI

from mql_lightning.data.datamodule import MetaRLDataModule
from mql_lightning.modules.mql import MQL

_TRAINER_DEFAULTS: dict[str, Any] = {
    # Epochs are validation periods cut by the DataModule; the budget is in environment steps.
    "max_epochs": -1,
    "num_sanity_val_steps": 0,
    "log_every_n_steps": 50,
    # Adaptation (and anything else that trains at evaluation time) needs gradients under validate/test.
    "inference_mode": False,
}
# Parsed like user config (not instances), so they print with --print_config and can be overridden from YAML.
_PARSED_DEFAULTS: dict[str, Any] = {
    "trainer.logger": [
        {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "runs", "name": "mql"}},
        {"class_path": "lightning.pytorch.loggers.TensorBoardLogger", "init_args": {"save_dir": "runs", "name": "mql"}},
    ],
    "trainer.callbacks": [{"class_path": "lightning.pytorch.callbacks.RichProgressBar"}],
    "checkpoint.save_last": True,
    "checkpoint.monitor": "val/return",
    "checkpoint.mode": "max",
    "checkpoint.filename": "best",
    "checkpoint.auto_insert_metric_name": False,
}


class MQLCLI(LightningCLI):
    """LightningCLI with MQL's argument links, a checkpoint callback and a torch thread setting."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Link task-family dimensions into the model; add ``--num_threads`` and the ``checkpoint`` group."""
        parser.add_argument(
            "--num_threads", type=int, default=1,
            help="torch intra-op threads (1 is fastest for MQL's small matrices on few cores)",
        )
        parser.link_arguments("data.obs_dim", "model.obs_dim", apply_on="instantiate")
        parser.link_arguments("data.action_dim", "model.action_dim", apply_on="instantiate")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(_PARSED_DEFAULTS)

    def before_instantiate_classes(self) -> None:
        """Apply the thread count and give every logger the same fresh run version."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        if config.num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {config.num_threads}")
        torch.set_num_threads(config.num_threads)
        _share_logger_version(config.trainer.logger)
        if config.trainer.enable_progress_bar is False and isinstance(config.trainer.callbacks, list):
            # `--trainer.enable_progress_bar false` should just work, not clash with the default Rich bar.
            config.trainer.callbacks = [
                cb for cb in config.trainer.callbacks if "ProgressBar" not in str(getattr(cb, "class_path", ""))
            ]


def _share_logger_version(loggers: Any) -> None:
    """TensorBoard and CSV loggers pick their versions independently and can disagree; make one run directory."""
    if not isinstance(loggers, list) or not loggers:
        return
    args = [lg.init_args for lg in loggers if hasattr(lg, "init_args")]
    if not args or any(getattr(a, "version", None) is not None for a in args):
        return
    first = args[0]
    root = Path(first.save_dir) / (getattr(first, "name", None) or "")
    existing = [int(p.name.split("_")[1]) for p in root.glob("version_*") if p.name.split("_")[1].isdigit()]
    version = f"version_{max(existing, default=-1) + 1}"
    for a in args:
        if "version" in a:
            a.version = version


def main(args: ArgsType = None) -> None:
    """Entry point of the ``mql`` console script."""
    MQLCLI(
        MQL,
        MetaRLDataModule,
        auto_configure_optimizers=False,
        trainer_defaults=_TRAINER_DEFAULTS,
        args=args,
    )


if __name__ == "__main__":
    main()
