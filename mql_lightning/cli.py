"""The ``mql`` command: LightningCLI over :class:`MQL` and :class:`MetaRLDataModule`.

Usage::

    mql fit                                  # the embedded default: TD3-context on the point robot
    mql fit --config configs/point.yaml --trainer.max_steps 1000
    mql fit --print_config > my.yaml        # a config that ``mql fit --config my.yaml`` accepts back
    mql validate --config runs/mql/version_0/config.yaml --ckpt_path runs/mql/version_0/checkpoints/last.ckpt
"""

from __future__ import annotations

import re
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI

from mql_lightning.callbacks import AdaptationCallback, ReplayCheckpoint
from mql_lightning.data.datamodule import MetaRLDataModule
from mql_lightning.modules.mql import MQL

_RUN_ROOT, _RUN_NAME = "runs", "mql"
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
        {"class_path": f"lightning.pytorch.loggers.{cls}", "init_args": {"save_dir": _RUN_ROOT, "name": _RUN_NAME}}
        for cls in ("CSVLogger", "TensorBoardLogger")
    ],
    "trainer.callbacks": [{"class_path": "lightning.pytorch.callbacks.RichProgressBar"}],
    "checkpoint.save_last": True,
    "checkpoint.monitor": "val/return",
    "checkpoint.mode": "max",
    "checkpoint.filename": "best",
    "checkpoint.auto_insert_metric_name": False,
    # The embedded default trains on the point robot (configs/point.yaml spells the same run out): networks sized
    # for a 2-D task so that `mql fit` finishes in minutes on two cores.
    "model.agent": {
        "class_path": "mql_lightning.modules.TD3Agent",
        "init_args": {
            "context": {"class_path": "mql_lightning.modules.ContextEncoder", "init_args": {"hidden_size": 20}},
            "hidden_sizes": [128, 128],
            "gamma": 0.9,
        },
    },
    # Fused Adam: one kernel over all parameters instead of about ten small operations per tensor (about 4x faster
    # optimiser steps at these sizes on CPU, same results to float rounding; issue 5).
    **{
        f"model.{name}": {"class_path": "torch.optim.Adam", "init_args": {"lr": 0.001, "fused": True}}
        for name in ("actor_optimizer", "critic_optimizer")
    },
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
        parser.add_lightning_class_args(ReplayCheckpoint, "checkpoint")
        parser.add_lightning_class_args(AdaptationCallback, "adaptation")
        parser.set_defaults(_PARSED_DEFAULTS)

    def before_instantiate_classes(self) -> None:
        """Apply the thread count and give every logger the same fresh run version."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        if config.num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {config.num_threads}")
        torch.set_num_threads(config.num_threads)
        # A new run directory for every command, except when resuming training from a checkpoint.
        resuming = self.subcommand == "fit" and config.get("ckpt_path") is not None
        _share_logger_version(config.trainer.logger, fresh=not resuming)
        if config.trainer.enable_progress_bar is False and isinstance(config.trainer.callbacks, list):
            # `--trainer.enable_progress_bar false` should just work, not clash with the default Rich bar.
            config.trainer.callbacks = [
                cb for cb in config.trainer.callbacks if "ProgressBar" not in str(getattr(cb, "class_path", ""))
            ]


def _share_logger_version(loggers: Any, fresh: bool) -> None:
    """Give every logger the same run directory ``<save_dir>/<name>/<version>``.

    TensorBoard and CSV loggers pick their versions independently and can disagree, and a command-line override
    such as ``--trainer.logger.init_args.name X`` reaches only one of them: a value that differs from the default
    is taken for all, then the next free ``version_N`` is chosen once. With ``fresh``, an automatic version
    (``version_N``, e.g. from a saved ``config.yaml``) is replaced by a new one, so nothing of an earlier run is
    overwritten; a version you named yourself is kept.
    """
    args = [lg.init_args for lg in loggers if hasattr(lg, "init_args")] if isinstance(loggers, list) else []
    if not args:
        return
    for key, default in (("save_dir", _RUN_ROOT), ("name", _RUN_NAME), ("version", None)):
        values = [getattr(a, key) for a in args if key in a]
        chosen = next((v for v in values if v != default), default)
        for a in args:
            if key in a:
                setattr(a, key, chosen)
    version = getattr(args[0], "version", None)
    if version is None or (fresh and re.fullmatch(r"version_\d+", str(version))):
        root = Path(args[0].save_dir) / (getattr(args[0], "name", None) or "")
        taken = [p.name.removeprefix("version_") for p in root.glob("version_*")]
        version = f"version_{max((int(t) for t in taken if t.isdigit()), default=-1) + 1}"
        for a in args:
            if "version" in a:
                a.version = version


def _with_run_config(args: ArgsType) -> ArgsType:
    """``mql test|validate --ckpt_path PATH`` with no ``--config``: use the config saved in the checkpoint's run.

    Raises:
        FileNotFoundError: If the checkpoint does not exist.
    """
    if not isinstance(args, list) or not args or args[0] not in ("test", "validate"):
        return args
    ckpt = next((a.split("=", 1)[1] for a in args if a.startswith("--ckpt_path=")), None)
    if ckpt is None and "--ckpt_path" in args[:-1]:
        ckpt = args[args.index("--ckpt_path") + 1]
    if ckpt is None or ckpt in ("best", "last"):
        return args
    if not Path(ckpt).is_file():
        raise FileNotFoundError(f"checkpoint {ckpt} does not exist")
    if any(a in ("-c", "--config") or a.startswith("--config=") for a in args):
        return args
    run_config = Path(ckpt).resolve().parent.parent / "config.yaml"  # <run>/checkpoints/<name>.ckpt
    return [args[0], "--config", str(run_config), *args[1:]] if run_config.is_file() else args


def main(args: ArgsType = None) -> None:
    """Entry point of the ``mql`` console script.

    Bad values that only show when components are built (an unknown task family, a zero batch size, ...) end the
    program with one ``mql: error: ...`` line and exit code 2, like the parser's own errors.
    """
    # training_step pulls its batch through `dataloader_iter` on purpose (DESIGN decision 11): silence Lightning's
    # "experimental" notices about it, which would otherwise greet every run.
    warnings.filterwarnings("ignore", message=r".*`dataloader_iter`.*")
    warnings.filterwarnings("ignore", message=r".*dataloader_iter. step flavor.*")
    try:
        given = sys.argv[1:] if args is None else args
        completed = _with_run_config(given)
        # Hand LightningCLI the command line itself unless it was completed (it warns when given both).
        args = None if args is None and completed == given else completed
        MQLCLI(
            MQL,
            MetaRLDataModule,
            auto_configure_optimizers=False,
            trainer_defaults=_TRAINER_DEFAULTS,
            args=args,
        )
    except (ValueError, FileNotFoundError) as err:
        print(f"mql: error: {err}", file=sys.stderr)
        raise SystemExit(2) from err


if __name__ == "__main__":
    main()
