"""The command line, completed before LightningCLI parses it.

* No ``--config`` that chooses a task family (``data.env_id``): ``mql fit|validate|test`` start from the embedded
  default, ``configs/point.yaml`` (one source of the default run's settings: ``mql fit`` is exactly ``mql fit
  --config configs/point.yaml``, and a config that only changes some settings, such as a preset of
  ``configs/presets/``, changes them in that run).
* ``--ckpt_path`` without ``--config``: the config saved in the checkpoint's run directory, so a run is resumed,
  validated or tested as it was configured; for a checkpoint copied out of its run, the data settings saved in the
  checkpoint itself.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import yaml

from mql_lightning.cli.checkpoint_check import load_lazily
from mql_lightning.cli.defaults import DEFAULT_CONFIG
from mql_lightning.configs import config_path
from mql_lightning.run_directory import config_beside

_CONFIGURED = ("fit", "validate", "test")


def config_files(args: list[str]) -> list[str]:
    """The ``--config`` files named on a command line."""
    paths = [b for a, b in itertools.pairwise(args) if a in ("-c", "--config")]
    return paths + [a.split("=", 1)[1] for a in args if a.startswith("--config=")]


def _has_config(args: list[str]) -> bool:
    return any(a in ("-c", "--config") or a.startswith("--config=") for a in args)


def with_run_config(args: list[str]) -> list[str]:
    """``mql fit|test|validate --ckpt_path PATH`` with no ``--config``: use the config saved in the checkpoint's run.

    For ``fit`` this resumes the run as it was configured, in its own run directory; options given after it still
    apply (e.g. a larger ``--data.max_env_steps``). A path that is not a file is left for the CLI to report (see
    :meth:`~mql_lightning.cli.checkpoint_check.CheckpointSummary.read`).
    """
    if not args or args[0] not in _CONFIGURED or _has_config(args):
        return args
    ckpt = next((a.split("=", 1)[1] for a in args if a.startswith("--ckpt_path=")), None)
    if ckpt is None and "--ckpt_path" in args[:-1]:
        ckpt = args[args.index("--ckpt_path") + 1]
    if ckpt is None or not Path(ckpt).is_file():
        return args
    run_config = config_beside(ckpt)
    if run_config.is_file():
        return [args[0], "--config", str(run_config), *args[1:]]
    # A checkpoint copied out of its run: the model's settings come from the checkpoint anyway (LightningCLI), and
    # so do the data settings (task family, splits, replay layout), ahead of the command line so that it still wins.
    try:
        data = load_lazily(Path(ckpt), "checkpoint", "").get("datamodule_hyper_parameters")
    except ValueError:
        return args  # reported by the CLI in one line (CheckpointSummary.read)
    if not isinstance(data, dict):
        return args
    data = {key: value for key, value in data.items() if not key.startswith("_")}
    return [args[0], "--data", yaml.safe_dump(data, default_flow_style=True, width=10**6).strip(), *args[1:]]


def with_default_config(args: list[str]) -> list[str]:
    """``mql fit|validate|test`` with no ``--config`` choosing a task family: ``--config configs/point.yaml`` first.

    The embedded default run is then the base that the given configs (a preset, a few overrides) and options change.
    """
    if not args or args[0] not in _CONFIGURED or any(_chooses_family(path) for path in config_files(args)):
        return args
    return [args[0], "--config", str(config_path(DEFAULT_CONFIG)), *args[1:]]


def _chooses_family(path: str) -> bool:
    """Whether a config file sets ``data.env_id`` (an unreadable one counts: the parser reports it)."""
    try:
        config = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return True
    data = config.get("data") if isinstance(config, dict) else None
    return isinstance(data, dict) and "env_id" in data
