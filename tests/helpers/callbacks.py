"""Test callbacks, passed to real ``mql`` commands on their command line (see :func:`callback_arg`).

They live in an importable module of their own so that ``mql`` processes started by the tests (with the repository on
``PYTHONPATH``) can build them from ``tests.helpers.callbacks.<Name>``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import signal
import sys
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

import mql_lightning.callbacks.checkpoint as checkpoint_module
from mql_lightning import interrupt


def callback_arg(name: str, **init_args: Any) -> str:
    """The command-line option that adds ``tests.helpers.callbacks.<name>(**init_args)`` to the Trainer."""
    spec = {"class_path": f"tests.helpers.callbacks.{name}", "init_args": init_args}
    return f"--trainer.callbacks+={json.dumps(spec)}"


class StopAt(L.Callback):
    """Requests a stop, as SIGTERM does, when training first reaches ``env_steps`` (in this process).

    Args:
        env_steps: Environment step at which to request it.
        during: ``training`` (after an update), ``adaptation`` (when the validation reaches its task ``task``: the
            request is acted on inside that task's adaptation), ``warmup`` (after a round of warm-up episodes).
        task: See ``during``.
    """

    def __init__(self, env_steps: int, during: str = "training", task: int = 1) -> None:
        super().__init__()
        self.env_steps, self.during, self.task = env_steps, during, task
        self._start = 0

    def _due(self, trainer: L.Trainer) -> bool:
        # Only when crossing the step in this process: the resumed run (same config, same callback) goes on.
        return self._start < self.env_steps <= trainer.datamodule.progress.env_steps

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        datamodule = trainer.datamodule
        self._start = datamodule.progress.env_steps
        if self.during == "warmup":
            store = datamodule._store

            def store_then_stop(episodes: Any) -> Any:
                out = store(episodes)
                if self._due(trainer):
                    interrupt.request_stop(signal.SIGTERM)
                return out

            datamodule._store = store_then_stop

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if self.during == "training" and self._due(trainer):
            interrupt.request_stop(signal.SIGTERM)

    def on_validation_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                                  batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.during == "adaptation" and batch_idx == self.task and self._due(trainer):
            interrupt.request_stop(signal.SIGTERM)


class GlobalDraws(L.Callback):
    """Draws from the global torch, numpy and Python generators after every update and logs every tenth draw.

    Per update, not per Lightning batch: the step that closes a validation period makes no update, and a run resumed
    before a validation has one such step more than the uninterrupted run (the restart ends an epoch at once).
    """

    def __init__(self) -> None:
        super().__init__()
        self._seen = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._seen = pl_module.num_updates

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if pl_module.num_updates == self._seen:
            return
        self._seen = pl_module.num_updates
        draws = {"test/torch": float(torch.rand(())), "test/numpy": float(np.random.rand()),
                 "test/python": random.random()}
        if pl_module.num_updates % 10 == 0:
            for logger in trainer.loggers:
                logger.log_metrics(draws, step=trainer.datamodule.progress.env_steps)


MARK = "mql-test-mark:"
"""Prefix of the stderr lines :class:`Mark` prints."""


class Mark(L.Callback):
    """Prints ``mql-test-mark: <text>`` to stderr once, at a chosen moment: the moment for a test to send a signal.

    Args:
        text: What to print after the prefix.
        at: ``validation_task`` (a validation task starts; its adaptation follows) or ``update`` (an update is done
            past environment step ``after``).
        after: See ``at``.
    """

    def __init__(self, text: str, at: str = "validation_task", after: int = 0) -> None:
        super().__init__()
        self.text, self.at, self.after = text, at, after
        self._done = False

    def _mark(self) -> None:
        if not self._done:
            print(f"{MARK} {self.text}", file=sys.stderr, flush=True)
            self._done = True

    def on_validation_batch_start(self, *args: Any, **kwargs: Any) -> None:
        if self.at == "validation_task":
            self._mark()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self.at == "update" and trainer.datamodule.progress.env_steps > self.after and pl_module.num_updates > 0:
            self._mark()


class DieWhileWriting(L.Callback):
    """Kills the process (``os._exit(137)``, no clean-up) halfway through writing ``last.ckpt`` at ``env_steps``.

    Half of the checkpoint's bytes go to a temporary file beside it, as the atomic writer would have left them. Only
    in a process started with ``MQL_TEST_DIE=1``: the resumed run, in the test process, has the same callback.
    """

    def __init__(self, env_steps: int) -> None:
        super().__init__()
        self.env_steps = env_steps

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.datamodule.progress.env_steps != self.env_steps or os.environ.get("MQL_TEST_DIE") != "1":
            return
        write = checkpoint_module.atomic_save

        def die_halfway(obj: Any, path: Any) -> None:
            if Path(path).name != "last.ckpt":
                return write(obj, path)
            data = io.BytesIO()
            torch.save(obj, data)
            partial = Path(path).with_name(f".{Path(path).name}.killed.tmp")
            partial.write_bytes(data.getvalue()[: len(data.getvalue()) // 2])
            os._exit(137)

        checkpoint_module.atomic_save = die_halfway


def digests(directory: Path) -> dict[str, str]:
    """SHA-256 of every file in ``directory``, by name."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


class Poison(L.Callback):
    """Writes NaN into the first critic weight once training reaches ``env_steps``; records the checkpoint files.

    Args:
        env_steps: Environment step from which to poison.
        at: ``update`` (after an update) or ``period_end`` (on the step that ends a validation period: the next
            thing to run is that validation, then its checkpoint).
        record: JSON file receiving the SHA-256 of every file in the checkpoint directory at that moment.
    """

    def __init__(self, env_steps: int, record: str, at: str = "update") -> None:
        super().__init__()
        self.env_steps, self.record, self.at = env_steps, Path(record), at
        self._done = False

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        datamodule = trainer.datamodule
        if self._done or datamodule.progress.env_steps < self.env_steps:
            return
        if self.at == "period_end" and not datamodule.schedule.validation_requested:
            return
        with torch.no_grad():
            next(pl_module.agent.critic.parameters()).view(-1)[0] = float("nan")
        self._done = True
        self.record.write_text(json.dumps(digests(Path(trainer.checkpoint_callback.dirpath))))


class GradNorms(L.Callback):
    """Records the largest total gradient norm any optimiser stepped with (in ``path``, as text)."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path, self.largest = Path(path), 0.0

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        self.largest = max(self.largest, float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.path.write_text(str(self.largest))


class RankReport(L.Callback):
    """Saves, on every rank, what that rank saw: its weights after every validation and at the end, its streams
    before any collection, its counters, its tasks and its final validation metrics (``<directory>/rank<r>.pt``).

    Args:
        directory: Where to write the reports.
    """

    def __init__(self, directory: str) -> None:
        super().__init__()
        self.directory = Path(directory)
        self.report: dict[str, Any] = {"weights": []}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        datamodule = trainer.datamodule
        self.report.update(
            rank=trainer.global_rank,
            world_size=trainer.world_size,
            tasks=datamodule.train_task_ids,
            streams=datamodule.rank_state_dict(),
            noise_seed=pl_module.noise_generator.initial_seed(),
            eval_seed=datamodule.state_dict()["eval_seed"],
        )

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.report["weights"].append(_weights(pl_module))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        datamodule = trainer.datamodule
        self.report.update(
            final=_weights(pl_module),
            progress=dict(vars(datamodule.progress)),
            replay_sizes=datamodule.replay.sizes.tolist(),
            metrics={k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")},
        )
        self.directory.mkdir(parents=True, exist_ok=True)
        torch.save(self.report, self.directory / f"rank{trainer.global_rank}.pt")


def _weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
