"""The LightningCLI subclass behind ``mql`` and the console script's entry point, :func:`main`."""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.strategies import DDPStrategy

from mql_lightning import lightning_internals
from mql_lightning.callbacks import AdaptationCallback, ReplayCheckpoint
from mql_lightning.cli.arguments import config_files, with_default_config, with_run_config
from mql_lightning.cli.checkpoint_check import CheckpointSummary
from mql_lightning.cli.defaults import PARSED_DEFAULTS, TRAINER_DEFAULTS
from mql_lightning.cli.errors import TRACEBACK_FLAG, check_config_files, report
from mql_lightning.data.datamodule import MetaRLDataModule
from mql_lightning.modules.mql import MQL
from mql_lightning.run_directory import (
    SaveConfigOnResume,
    config_beside,
    continue_run_logs,
    place_loggers,
    run_directory_of,
)

_DESCRIPTION = (
    "Meta-Q-Learning on Lightning: meta-train (fit), evaluate (validate) and adapt to test tasks (test). "
    f"Errors are reported in one line; add {TRACEBACK_FLAG} anywhere on the command line for the full Python "
    "traceback."
)
# `--ckpt_path` values that are not files: Lightning resolves them itself.
_CKPT_KEYWORDS = ("best", "last", "hpc")


class MQLCLI(LightningCLI):
    """LightningCLI with MQL's argument links, a checkpoint callback, the adaptation callback and a thread setting.

    Bad input is rejected before anything is written: the parsers raise instead of printing their usage (``main``
    reports the error in one line), and a checkpoint to load is checked, with its replay side file, right after
    parsing and again against the model and data once they are built, before the Trainer and its loggers exist.
    """

    _checkpoint: CheckpointSummary | None = None

    def __init__(self, *args: Any, config_given: bool = True, **kwargs: Any) -> None:
        """As ``LightningCLI``; ``config_given``: whether the user named a ``--config`` (for the notes printed)."""
        self._config_given = config_given
        super().__init__(*args, **kwargs)

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """``fit``, ``validate`` and ``test``: Lightning's ``predict`` has nothing to run in MQL (no predict step)."""
        return {name: skip for name, skip in LightningCLI.subcommands().items() if name != "predict"}

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        """A parser that raises :class:`~jsonargparse.ArgumentError` instead of printing its usage and exiting."""
        return super().init_parser(exit_on_error=False, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Link task-family dimensions into the model; add ``--num_threads``, the ``checkpoint`` and ``adaptation``
        groups."""
        parser.add_argument(
            "--num_threads", type=int, default=1,
            help="torch intra-op threads per process. 1 (the default) measured fastest on a 2-core machine shared with "
            "other runs: with 2, every multi-threaded operation waited for a core another process held (10-20x "
            "slower). On cores of its own a run gains from more (matrix products); under DDP give each process its "
            "share of the cores",
        )
        parser.link_arguments("data.obs_dim", "model.obs_dim", apply_on="instantiate")
        parser.link_arguments("data.action_dim", "model.action_dim", apply_on="instantiate")
        parser.add_lightning_class_args(ReplayCheckpoint, "checkpoint")
        parser.add_lightning_class_args(AdaptationCallback, "adaptation")
        parser.set_defaults(PARSED_DEFAULTS)

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        """Parse, then check the checkpoint given by ``ckpt_path``: LightningCLI reads it right after this."""
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        ckpt_path = (self.config[subcommand] if subcommand else self.config).get("ckpt_path")
        if ckpt_path is not None and ckpt_path not in _CKPT_KEYWORDS and not str(ckpt_path).startswith("registry"):
            self._checkpoint = CheckpointSummary.read(Path(ckpt_path))

    def before_instantiate_classes(self) -> None:
        """Apply the thread count; place the run directory (a fresh version, or the resumed run's own)."""
        config = self._command_config()
        if config.num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {config.num_threads}")
        torch.set_num_threads(config.num_threads)
        # A new run directory for every command, except when resuming training from a checkpoint of a run directory:
        # that run goes on in its own directory, wherever the command is started from.
        run = run_directory_of(config.ckpt_path) if self.subcommand == "fit" and config.get("ckpt_path") else None
        place_loggers(config.trainer.logger, resume_in=run, default_root_dir=config.trainer.default_root_dir)
        if run is not None:
            # A resumed run records the configuration it continues with (e.g. a larger budget) in its own config.yaml,
            # once its checkpoint is restored.
            self.save_config_callback, self.save_config_kwargs["overwrite"] = SaveConfigOnResume, True
        if config.trainer.enable_progress_bar is False and isinstance(config.trainer.callbacks, list):
            # `--trainer.enable_progress_bar false` should just work, not clash with the default Rich bar.
            config.trainer.callbacks = [
                cb for cb in config.trainer.callbacks if "ProgressBar" not in str(getattr(cb, "class_path", ""))
            ]

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        """Check the model and data just built, then build the Trainer (and its loggers, which create the run).

        The optimisers are built once here, and thrown away, because torch checks their settings (a negative
        learning rate, ...) only then: the Trainer would do it after creating the run directory.
        """
        try:
            self.model.configure_optimizers()
        except ValueError as err:
            raise ValueError(f"model.actor_optimizer or model.critic_optimizer: {err}") from err
        config = self._command_config()
        if self._checkpoint is not None:
            self._checkpoint.check_fits(self.model, self.datamodule)
            run_config = config_beside(self._checkpoint.path)
            if not self._config_given and not run_config.is_file():  # see arguments.with_run_config
                env_id = self._checkpoint.data.get("env_id")
                print(
                    f"mql: note: {run_config} not found: model and data settings ({env_id}, ...) read from the "
                    "checkpoint; trainer and adaptation settings are the defaults unless given",
                    file=sys.stderr,
                )
        trainer = super().instantiate_trainer(**kwargs)
        if config.trainer.strategy == "auto" and isinstance(trainer.strategy, DDPStrategy):
            # Several devices with the default strategy: Lightning picks plain DDP, whose reducer fails on MQL's TD3
            # steps (the critic step does not use the actor; the actor step freezes the critics). Same as asking for
            # `ddp_find_unused_parameters_true`, before the model is wrapped at fit time.
            lightning_internals.find_unused_parameters(trainer.strategy)
        return trainer

    def before_fit(self) -> None:
        """When resuming, make the loggers continue the run's records in place (:func:`continue_run_logs`)."""
        ckpt_path = self._command_config().get("ckpt_path")
        if ckpt_path is not None and Path(ckpt_path).is_file():
            continue_run_logs(self.trainer.loggers, ckpt_path)

    def before_test(self) -> None:
        """No Lightning "Test metric" dump: the adaptation callback prints one table, per task and the mean."""
        self.config_init[self.subcommand]["verbose"] = False

    def _command_config(self) -> Any:
        return self.config[self.subcommand] if self.subcommand else self.config


def _quiet_lightning() -> None:
    """Filter, at their sources, the messages that would greet every run without telling the user anything."""
    # training_step pulls its batch through `dataloader_iter` on purpose (docs/design.md#the-training-loop): Lightning's
    # "experimental" notices about it.
    warnings.filterwarnings("ignore", message=r".*`dataloader_iter`.*")
    warnings.filterwarnings("ignore", message=r".*dataloader_iter. step flavor.*")
    # The run seed is recorded in the run's config.yaml: no need for two lines about it before every run (and before
    # every error message).
    warnings.filterwarnings("ignore", message=r"No seed found, seed set to")
    logging.getLogger("lightning.fabric.utilities.seed").setLevel(logging.WARNING)
    # Lightning 2.6 with torch >= 2.10: its own pytree helper trips torch's deprecation of `isinstance(x, LeafSpec)`.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    # A resumed run continues in its own checkpoint directory, which is not empty (a new run's always is).
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    # The progress bar keeps the run's wall time in checkpoints; a command run without the bar misses nothing.
    warnings.filterwarnings("ignore", message=r"Be aware that when using `ckpt_path`.*\['MQLProgressBar'\]\.$")
    # An advertisement printed by every Trainer without a LitLogger.
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_NoAdvertisement())


class _NoAdvertisement(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in str(record.msg)


def main(args: ArgsType = None) -> None:
    """Entry point of the ``mql`` console script.

    Every error ends the program with one line on stderr, ``mql: error: ...`` and exit code 2 for bad input (an
    unknown option, task family or checkpoint, a value out of range, a malformed config, ...), exit code 1 for a
    diverged run or a file that cannot be written (a full disk), ``mql: internal error: ...`` and exit code 1 for
    anything else; ``--traceback`` anywhere on the command line raises the error instead, with its full traceback.
    """
    _quiet_lightning()
    given = list(sys.argv[1:] if args is None else args or [])
    if given[:1] == ["plot"]:
        from mql_lightning.plot import main as plot  # matplotlib is optional: imported only for `mql plot`

        plot(given[1:])
        return
    show_traceback = TRACEBACK_FLAG in given
    given = [a for a in given if a != TRACEBACK_FLAG]
    subcommand = next((a for a in given if a in MQLCLI.subcommands()), None)
    try:
        check_config_files(config_files(given))
        completed = with_default_config(with_run_config(given))
        if args is None:
            # LightningCLI reads the command line itself: it warns when given both a command line and `args`.
            sys.argv[1:] = completed
        MQLCLI(
            MQL,
            MetaRLDataModule,
            auto_configure_optimizers=False,
            trainer_defaults=TRAINER_DEFAULTS,
            parser_kwargs={"description": _DESCRIPTION},
            args=None if args is None else completed,
            config_given=bool(config_files(given)),
        )
    except Exception as err:
        if show_traceback:
            raise
        raise SystemExit(report(err, subcommand)) from err
