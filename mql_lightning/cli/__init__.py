"""The ``mql`` command: LightningCLI over :class:`~mql_lightning.modules.MQL` and its DataModule.

Usage::

    mql fit                                  # the embedded default, configs/point.yaml
    mql fit --config configs/walker.yaml --data.max_env_steps 200000
    mql fit --print_config > my.yaml        # a config that ``mql fit --config my.yaml`` accepts back
    mql test --ckpt_path runs/mql/version_0/checkpoints/last.ckpt

Modules: :mod:`~mql_lightning.cli.app` (the LightningCLI subclass and ``main``), :mod:`~mql_lightning.cli.defaults`
(what a command gets without asking), :mod:`~mql_lightning.cli.arguments` (the command line completed before
parsing), :mod:`~mql_lightning.cli.checkpoint_check` (a checkpoint checked before anything is written) and
:mod:`~mql_lightning.cli.errors` (every failure as one line).
"""

from mql_lightning.cli.app import MQLCLI, main

__all__ = ["MQLCLI", "main"]
