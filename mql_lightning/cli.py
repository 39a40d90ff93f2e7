"""The ``mql`` command: LightningCLI over :class:`MQL` and :class:`MetaRLDataModule`.

Usage::

    mql fit                                  # the embedded default: TD3-context on the point robot
    mql fit --config configs/point.yaml --trainer.max_steps 1000
    mql fit --print_config > my.yaml        # a config that ``mql fit --config my.yaml`` accepts back
    mql validate --config runs/mql/version_0/config.yaml --ckpt_path runs/mql/version_0/checkpoints/last.ckpt
"""

from __future__ import annotations

import itertools
import logging
import re
import sys
import tempfile
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from jsonargparse import ArgumentError
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.strategies import DDPStrategy

from mql_lightning.callbacks import AdaptationCallback, ReplayCheckpoint
from mql_lightning.callbacks.checkpoint import SaveConfigOnResume, continue_run_logs, run_directory_of
from mql_lightning.data.datamodule import MetaRLDataModule
from mql_lightning.data.side_file import previous_path, replay_path, side_file_steps
from mql_lightning.modules.mql import MQL, NonFiniteError

_RUN_ROOT, _RUN_NAME = "runs", "mql"
# Taken out of the command line by `main` before parsing, so it works anywhere on the line and for parse errors too.
_TRACEBACK_FLAG = "--traceback"
_DESCRIPTION = (
    "Meta-Q-Learning on Lightning: meta-train (fit), evaluate (validate) and adapt to test tasks (test). "
    f"Errors are reported in one line; add {_TRACEBACK_FLAG} anywhere on the command line for the full Python "
    "traceback."
)
# Bad input the user can fix (Lightning raises MisconfigurationException for bad Trainer settings): one `mql: error:`
# line and exit code 2 (argparse's code for usage errors).
_USER_ERRORS = (ValueError, FileNotFoundError, ArgumentError, MisconfigurationException)
# Lines of jsonargparse's errors that describe its internals rather than the bad value.
_PARSER_NOISE = ("Subtypes:", "Errors:", "Given value type:")
# `--ckpt_path` values that are not files: Lightning resolves them itself.
_CKPT_KEYWORDS = ("best", "last", "hpc")
# Data settings that fix the layout of the replay buffer saved with a checkpoint: a run that loads the checkpoint must
# use the same values.
_REPLAY_LAYOUT = ("num_train_tasks", "replay_capacity", "history_length")
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
    "trainer.callbacks": [{"class_path": "mql_lightning.callbacks.MQLProgressBar"}],
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
    """LightningCLI with MQL's argument links, a checkpoint callback and a torch thread setting.

    Bad input is rejected before anything is written: the parsers raise instead of printing their usage (``main``
    reports the error in one line), and a checkpoint to load is checked, with its replay side file, right after
    parsing and again against the model and data once they are built, before the Trainer and its loggers exist.
    """

    _checkpoint: _Checkpoint | None = None

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """``fit``, ``validate`` and ``test``: Lightning's ``predict`` has nothing to run in MQL (no predict step)."""
        return {name: skip for name, skip in LightningCLI.subcommands().items() if name != "predict"}

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        """A parser that raises :class:`~jsonargparse.ArgumentError` instead of printing its usage and exiting."""
        return super().init_parser(exit_on_error=False, **kwargs)

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        """Parse, then check the checkpoint given by ``ckpt_path``: LightningCLI reads it right after this."""
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        ckpt_path = (self.config[subcommand] if subcommand else self.config).get("ckpt_path")
        if ckpt_path is not None and ckpt_path not in _CKPT_KEYWORDS and not str(ckpt_path).startswith("registry"):
            self._checkpoint = _Checkpoint.read(Path(ckpt_path))

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        """Check the model and data just built, then build the Trainer (and its loggers, which create the run).

        The optimisers are built once here, and thrown away, because torch checks their settings (a negative
        learning rate, ...) only then: the Trainer would do it after creating the run directory.
        """
        try:
            self.model.configure_optimizers()
        except ValueError as err:
            raise ValueError(f"model.actor_optimizer or model.critic_optimizer: {err}") from err
        config = self.config[self.subcommand] if self.subcommand else self.config
        if self._checkpoint is not None:
            self._checkpoint.check_fits(self.model, self.datamodule)
            run_config = self._checkpoint.path.resolve().parent.parent / "config.yaml"
            if not config.get("config") and not run_config.is_file():  # see _with_run_config
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
            trainer.strategy._ddp_kwargs.setdefault("find_unused_parameters", True)
        return trainer

    def before_fit(self) -> None:
        """When resuming, make the loggers continue the run's records in place (:func:`continue_run_logs`)."""
        ckpt_path = self.config[self.subcommand].get("ckpt_path")
        if ckpt_path is not None and Path(ckpt_path).is_file():
            continue_run_logs(self.trainer.loggers, ckpt_path)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Link task-family dimensions into the model; add ``--num_threads`` and the ``checkpoint`` group."""
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
        parser.set_defaults(_PARSED_DEFAULTS)

    def before_instantiate_classes(self) -> None:
        """Apply the thread count and give every logger the same fresh run version."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        if config.num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {config.num_threads}")
        torch.set_num_threads(config.num_threads)
        # A new run directory for every command, except when resuming training from a checkpoint of a run directory:
        # that run goes on in its own directory, wherever the command is started from.
        run = run_directory_of(config.ckpt_path) if self.subcommand == "fit" and config.get("ckpt_path") else None
        _share_logger_version(config.trainer.logger, fresh=run is None)
        if run is not None:
            for logger in config.trainer.logger if isinstance(config.trainer.logger, list) else []:
                if hasattr(logger, "init_args") and "save_dir" in logger.init_args:
                    logger.init_args.save_dir, logger.init_args.name = str(run.parent.parent), run.parent.name
                    logger.init_args.version = run.name
        if run is not None:
            # A resumed run records the configuration it continues with (e.g. a larger budget) in its own config.yaml,
            # once its checkpoint is restored.
            self.save_config_callback, self.save_config_kwargs["overwrite"] = SaveConfigOnResume, True
        if config.trainer.enable_progress_bar is False and isinstance(config.trainer.callbacks, list):
            # `--trainer.enable_progress_bar false` should just work, not clash with the default Rich bar.
            config.trainer.callbacks = [
                cb for cb in config.trainer.callbacks if "ProgressBar" not in str(getattr(cb, "class_path", ""))
            ]


def _share_logger_version(loggers: Any, fresh: bool) -> None:
    """Give every logger the same run directory ``<save_dir>/<name>/<version>``.

    TensorBoard and CSV loggers pick their versions independently and can disagree, and a command-line override
    such as ``--trainer.logger.init_args.name X`` reaches only the last of them: the last value that differs from
    the default is taken for all (so the command line wins over a config such as a run's ``config.yaml``, which
    gives every logger the same values), then the next free ``version_N`` is chosen once. With ``fresh``, an
    automatic version (``version_N``, e.g. from a saved ``config.yaml``) is replaced by a new one, so nothing of an
    earlier run is overwritten; a version you named yourself is kept.
    """
    args = [lg.init_args for lg in loggers if hasattr(lg, "init_args")] if isinstance(loggers, list) else []
    if not args:
        return
    for key, default in (("save_dir", _RUN_ROOT), ("name", _RUN_NAME), ("version", None)):
        values = [getattr(a, key) for a in args if key in a]
        chosen = next((v for v in reversed(values) if v != default), default)
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


@dataclass
class _Checkpoint:
    """What a checkpoint to load must agree with, read without loading its tensors.

    Attributes:
        path: The checkpoint.
        shapes: Shape of every tensor of its state dict.
        dims: The model's ``(obs_dim, action_dim)``.
        data: The DataModule's hyper-parameters (``env_id``, ``num_train_tasks``, ...).
    """

    path: Path
    shapes: dict[str, tuple[int, ...]]
    dims: tuple[int, int]
    data: dict[str, Any]

    @classmethod
    def read(cls, path: Path) -> _Checkpoint:
        """Read a checkpoint written by ``mql fit`` and check its replay side file.

        Raises:
            FileNotFoundError: If the checkpoint or its side file does not exist.
            ValueError: If either cannot be read (truncated, not a checkpoint), the checkpoint was not written by
                ``mql fit``, or the side file belongs to another checkpoint.
        """
        if not path.is_file():
            raise FileNotFoundError(
                f"checkpoint {path} {'is not a file' if path.exists() else 'does not exist'}: pass a .ckpt written by "
                f"`mql fit`, e.g. {_RUN_ROOT}/{_RUN_NAME}/version_0/checkpoints/last.ckpt"
            )
        fix = "pass a complete .ckpt written by `mql fit` (every run keeps checkpoints/last.ckpt)"
        ckpt = _load_lazily(path, f"checkpoint {path}", fix)
        try:
            hparams, progress = ckpt["hyper_parameters"], ckpt[MetaRLDataModule.__name__]["progress"]
            record = cls(
                path,
                {key: tuple(value.shape) for key, value in ckpt["state_dict"].items()},
                (int(hparams["obs_dim"]), int(hparams["action_dim"])),
                dict(ckpt["datamodule_hyper_parameters"]),
            )
            env_steps = int(progress["env_steps"])
        except (KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"checkpoint {path} was not written by `mql fit` (it has no {err}): {fix}") from err
        record._check_side_file(env_steps)
        return record

    def _check_side_file(self, env_steps: int) -> None:
        """Check that the replay side file exists, is readable and was written with this checkpoint.

        The whole buffer's file, or rank 0's shard for a multi-process run (the loader checks every shard).
        """
        whole, shard = replay_path(self.path), replay_path(self.path, 0, 2)
        side = shard if shard.is_file() and not whole.is_file() else whole
        fix = f"copy {side.name} from the run directory that wrote {self.path.name} into {side.parent}"
        if not side.is_file():
            raise FileNotFoundError(
                f"replay side file {side} is missing (resuming and adaptation need the replay buffer saved with "
                f"the checkpoint): {fix}"
            )
        saved = _load_lazily(side, f"replay side file {side}", fix).get("env_steps")
        # A process killed while replacing the pair leaves the new side file with the old checkpoint, and the old
        # side file beside them: the loader takes that one (mql_lightning.data.side_file.matching_side_file).
        previous = previous_path(side)
        if saved != env_steps and not (previous.is_file() and side_file_steps(previous) == env_steps):
            raise ValueError(
                f"replay side file {side} was written at {saved} environment steps but its checkpoint at {env_steps}: "
                f"they belong to different checkpoints; {fix}"
            )

    def check_fits(self, model: Any, datamodule: MetaRLDataModule) -> None:
        """Check that the model and DataModule built from the config can load this checkpoint.

        Raises:
            ValueError: If the task family's dimensions, the replay layout or any tensor's shape differ.
        """
        run_config = self.path.resolve().parent.parent / "config.yaml"  # <run>/checkpoints/<name>.ckpt
        fix = f"pass the run's own config (--config {run_config})" if run_config.is_file() else "pass the run's config"
        dims = (datamodule.obs_dim, datamodule.action_dim)
        if dims != self.dims:
            raise ValueError(
                f"checkpoint {self.path} was written for {self.data.get('env_id')} (obs_dim {self.dims[0]}, "
                f"action_dim {self.dims[1]}) but the config builds {datamodule.env_id} (obs_dim {dims[0]}, action_dim "
                f"{dims[1]}): {fix} or --data.env_id {self.data.get('env_id')}"
            )
        for key in _REPLAY_LAYOUT:
            if key in self.data and self.data[key] != datamodule.hparams[key]:
                raise ValueError(
                    f"checkpoint {self.path} was written with data.{key}={self.data[key]} but the config has "
                    f"{datamodule.hparams[key]}, so its replay buffer does not fit: {fix} or --data.{key} "
                    f"{self.data[key]}"
                )
        shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
        for key in sorted(shapes.keys() | self.shapes.keys()):
            if shapes.get(key) != self.shapes.get(key):
                raise ValueError(
                    f"checkpoint {self.path} does not fit the model the config builds ({key}: "
                    f"{_shape(self.shapes.get(key))} in the checkpoint, {_shape(shapes.get(key))} in the model): {fix}"
                )


def _load_lazily(path: Path, what: str, fix: str) -> dict[str, Any]:
    """``torch.load`` with memory-mapped tensors (nothing large is read), any failure as one ``ValueError``."""
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except PermissionError as err:
        raise ValueError(f"{what} cannot be read ({err.strerror}): check its permissions") from err
    except Exception as err:  # zip, pickle, OS and torch errors alike (their messages say little): a broken file
        raise ValueError(f"{what} cannot be read: it is truncated or not a torch file; {fix}") from err
    if not isinstance(loaded, dict):
        raise ValueError(f"{what} holds a {type(loaded).__name__}, not a checkpoint: {fix}")
    return loaded


def _shape(shape: tuple[int, ...] | None) -> str:
    return "absent" if shape is None else f"shape {list(shape)}"


def _with_run_config(args: ArgsType) -> ArgsType:
    """``mql fit|test|validate --ckpt_path PATH`` with no ``--config``: use the config saved in the checkpoint's run.

    For ``fit`` this resumes the run as it was configured, in its own run directory; options given after it still
    apply (e.g. a larger ``--data.max_env_steps``). A path that is not a file is left for the CLI to report (see
    :meth:`_Checkpoint.read`).
    """
    if not isinstance(args, list) or not args or args[0] not in ("fit", "test", "validate"):
        return args
    ckpt = next((a.split("=", 1)[1] for a in args if a.startswith("--ckpt_path=")), None)
    if ckpt is None and "--ckpt_path" in args[:-1]:
        ckpt = args[args.index("--ckpt_path") + 1]
    if ckpt is None or not Path(ckpt).is_file():
        return args
    if any(a in ("-c", "--config") or a.startswith("--config=") for a in args):
        return args
    run_config = Path(ckpt).resolve().parent.parent / "config.yaml"  # <run>/checkpoints/<name>.ckpt
    if run_config.is_file():
        return [args[0], "--config", str(run_config), *args[1:]]
    # A checkpoint copied out of its run: the model's settings come from the checkpoint anyway (LightningCLI), and
    # so do the data settings (task family, splits, replay layout), ahead of the command line so that it still wins.
    try:
        data = _load_lazily(Path(ckpt), "checkpoint", "").get("datamodule_hyper_parameters")
    except ValueError:
        return args  # reported by the CLI in one line (_Checkpoint.read)
    if not isinstance(data, dict):
        return args
    data = {key: value for key, value in data.items() if not key.startswith("_")}
    return [args[0], "--data", yaml.safe_dump(data, default_flow_style=True, width=10**6).strip(), *args[1:]]


def _check_config_files(args: ArgsType) -> None:
    """Reject a config file that is not valid YAML, naming the file and the position (the parser names neither).

    Raises:
        ValueError: If a ``--config`` file does not parse as YAML.
    """
    if not isinstance(args, list):
        return
    paths = [b for a, b in itertools.pairwise(args) if a in ("-c", "--config")]
    paths += [a.split("=", 1)[1] for a in args if a.startswith("--config=")]
    for path in filter(lambda p: Path(p).is_file(), paths):
        try:
            yaml.safe_load(Path(path).read_text())
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(err, "problem", None) or _one_line(err)
            raise ValueError(f"config {path} is not valid YAML: {problem}{where}; fix its syntax there") from err


def _one_line(err: BaseException) -> str:
    """An exception's message on one line (parser and torch messages span several)."""
    return " ".join(str(err).split()) or type(err).__name__


def _parser_message(err: ArgumentError) -> str:
    """A parser error on one line, without jsonargparse's internals (the types it tried, the type of the value)."""
    lines = [line for line in str(err).splitlines() if not line.strip().startswith(_PARSER_NOISE)]
    return " ".join(" ".join(lines).split())


def _report(err: Exception, args: ArgsType) -> int:
    """Print the one line that ends a failed command; return its exit code.

    Bad input (parser errors, ``ValueError``, ``FileNotFoundError``) exits with 2; anything else is a bug: exit code
    1, and its traceback goes to a file, so that a run that fails hours in can still be diagnosed.
    """
    if isinstance(err, ArgumentError):
        subcommand = next((a for a in args if a in MQLCLI.subcommands()), None) if isinstance(args, list) else None
        usage = f"mql {subcommand} --help" if subcommand else "mql --help"
        message, code = f"error: {_parser_message(err)} (`{usage}` lists the accepted options)", 2
    elif isinstance(err, _USER_ERRORS):
        message, code = f"error: {_one_line(err)}", 2
    elif isinstance(err, NonFiniteError):  # a diverged run, not a bug: the message says where and what to do
        message, code = f"error: {_one_line(err)}", 1
    else:
        with tempfile.NamedTemporaryFile("w", prefix="mql-traceback-", suffix=".txt", delete=False) as file:
            traceback.print_exception(err, file=file)
        message = f"internal error: {type(err).__name__}: {_one_line(err)} (traceback in {file.name}; "
        message, code = f"{message}{_TRACEBACK_FLAG} prints it)", 1
    print(f"mql: {message}", file=sys.stderr)
    return code


def main(args: ArgsType = None) -> None:
    """Entry point of the ``mql`` console script.

    Every error ends the program with one line on stderr, ``mql: error: ...`` and exit code 2 for bad input (an
    unknown option, task family or checkpoint, a value out of range, a malformed config, ...), ``mql: internal error:
    ...`` and exit code 1 for anything else; ``--traceback`` anywhere on the command line raises the error instead,
    with its full traceback.
    """
    # training_step pulls its batch through `dataloader_iter` on purpose (DESIGN decision 11): silence Lightning's
    # "experimental" notices about it, which would otherwise greet every run.
    warnings.filterwarnings("ignore", message=r".*`dataloader_iter`.*")
    warnings.filterwarnings("ignore", message=r".*dataloader_iter. step flavor.*")
    # The run seed is recorded in the run's config.yaml: no need for two lines about it before every run (and before
    # every error message).
    warnings.filterwarnings("ignore", message=r"No seed found, seed set to")
    logging.getLogger("lightning.fabric.utilities.seed").setLevel(logging.WARNING)
    if (sys.argv[1:] if args is None else list(args or []))[:1] == ["plot"]:
        from mql_lightning.plot import main as plot  # matplotlib is optional: imported only for `mql plot`

        plot((sys.argv[1:] if args is None else list(args))[1:])
        return
    given = sys.argv[1:] if args is None else args
    show_traceback = isinstance(given, list) and _TRACEBACK_FLAG in given
    if show_traceback:
        given = [a for a in given if a != _TRACEBACK_FLAG]
    try:
        _check_config_files(given)
        completed = _with_run_config(given)
        if args is None:
            # LightningCLI reads the command line itself: it warns when given both a command line and `args`.
            sys.argv[1:] = completed
        MQLCLI(
            MQL,
            MetaRLDataModule,
            auto_configure_optimizers=False,
            trainer_defaults=_TRAINER_DEFAULTS,
            parser_kwargs={"description": _DESCRIPTION},
            args=None if args is None else completed,
        )
    except Exception as err:
        if show_traceback:
            raise
        raise SystemExit(_report(err, given)) from err


if __name__ == "__main__":
    main()
