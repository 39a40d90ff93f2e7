"""The adaptation phase of MQL (Alg. 2) at validation and test time, logged per held-out task."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Any

import lightning as L
import torch
from rich import box
from rich.console import Console
from rich.table import Table

from mql_lightning.adaptation import AdaptationConfig, adapt_to_task
from mql_lightning.data.contracts import AdaptationData, MetaLearner, require
from mql_lightning.modules.agent import acting_policy


class AdaptationCallback(L.Callback):
    """Adapts the meta-trained agent to held-out tasks and logs what happened, task by task.

    After the model has evaluated the meta-policy on a held-out task (``<split>/return_pre_adapt``), this callback
    runs Alg. 2 on a copy of the agent (:func:`mql_lightning.adaptation.adapt_to_task`), evaluates the adapted policy
    on the same start states, and logs ``<split>/return`` with ``ess``, ``lambda``, ``beta_mean`` and
    ``classifier_accuracy``, per task (``val/task_3/lambda``) and averaged over tasks; for a family with a success
    flag (Meta-World) also ``<split>/success`` beside the model's ``<split>/success_pre_adapt``. It adapts to every
    task the validation evaluates (the DataModule's ``tasks_per_validation``, so that before and after average over
    the same tasks) and, under ``mql test``, to every test task; it then prints a per-task table and, when the run has a
    logger, writes it to ``test_results.csv`` / ``.json`` in the run directory.

    Under several processes (``docs/design.md#several-processes``) each rank adapts to its own share of the held-out
    tasks, against the meta-training replay it holds (its shard: the transitions of its own training tasks); the table
    gathers every rank's rows.

    Args:
        enabled: ``False`` evaluates without adaptation: TD3-context (``return`` equals ``return_pre_adapt``).
        settings: The adaptation settings (numbers of Eq. 18 / Eq. 19 updates, beta clip, lambda, ...).
    """

    def __init__(
        self,
        enabled: bool = True,
        settings: AdaptationConfig = AdaptationConfig(),  # noqa: B008 - frozen, shared safely
    ) -> None:
        super().__init__()
        self.enabled = enabled
        self.settings = settings
        self._rows: list[dict[str, Any]] = []

    def state_dict(self) -> dict[str, Any]:
        """The adaptation settings, kept in every checkpoint as a record of how the run adapted.

        A record only (nothing is loaded back): the settings of the command that loads a checkpoint apply, so a
        checkpoint can be evaluated with other adaptation settings.
        """
        return {"enabled": self.enabled, "settings": dataclasses.asdict(self.settings)}

    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Adapt to one validation task."""
        if not trainer.sanity_checking:
            self._adapt_and_log(trainer, pl_module, "val", int(batch), outputs)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Start a fresh results table."""
        self._rows = []

    def on_test_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Adapt to one test task."""
        self._rows.append(self._adapt_and_log(trainer, pl_module, "test", int(batch), outputs))

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Print the per-task results of every rank and write them next to the run's metrics (from rank 0)."""
        rows = _gather_rows(trainer, self._rows)
        # trainer.log_dir broadcasts from rank 0 under several processes: every rank must ask.
        log_dir = trainer.log_dir if trainer.loggers else None
        if not rows or not trainer.is_global_zero:
            return
        self._rows = rows
        columns = list(self._rows[0])
        console = Console()
        console.print("mql test: before (the meta-policy) and after adaptation (Alg. 2)")
        console.print(results_table(self._rows))
        if log_dir is not None:  # no logger: nothing is written to the disk
            out = Path(log_dir)
            out.mkdir(parents=True, exist_ok=True)
            with open(out / "test_results.csv", "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=columns)
                writer.writeheader()
                writer.writerows(self._rows)
            (out / "test_results.json").write_text(json.dumps(self._rows, indent=2))

    def _adapt_and_log(
        self, trainer: L.Trainer, pl_module: L.LightningModule, split: str, index: int, outputs: Any
    ) -> dict[str, Any]:
        # return_pre_adapt, and success_pre_adapt for a family with a success flag (Meta-World).
        pre = {name: float(value) for name, value in outputs.items()}
        row: dict[str, Any] = {"task": index, **pre}
        data = require(trainer.datamodule, AdaptationData, "DataModule")
        learner = require(pl_module, MetaLearner, "LightningModule")
        if not self.enabled or data.replay is None or data.replay.num_transitions() == 0:
            # Nothing to adapt with before any meta-training data exists (the validation at step 0).
            same = {name.removesuffix("_pre_adapt"): value for name, value in pre.items()}
            learner.record_eval(split, index, same)
            return {**row, **same}
        # Alg. 2 with the task's own random stream: adapting never changes the training run.
        task, rng = data.task(split, index), data.rng_for("adapt", split, index)
        result = adapt_to_task(learner.agent, data, task, self.settings, rng)
        stats = data.evaluate(acting_policy(result.agent), split, index)
        metrics = {name: stats[name] for name in ("return", "success") if name in stats}
        metrics.update(result.metrics())
        learner.record_eval(split, index, metrics)
        return {**row, **metrics}


# Short headers, so that the table fits an 80-column terminal; the CSV and JSON keep the metric names.
_HEADERS = {
    "task": "task", "return_pre_adapt": "return\nbefore", "return": "return\nafter",
    "success_pre_adapt": "success\nbefore", "success": "success\nafter", "ess": "ESS", "lambda": "λ",
    "beta_mean": "mean β", "classifier_accuracy": "classif.\naccuracy",
}


def results_table(rows: list[dict[str, Any]]) -> Table:
    """The ``mql test`` table: one row per test task and their mean, returns (and success rates) before and after
    adaptation, then ESS, lambda, mean beta and the classifier's accuracy."""
    columns = [c for c in _HEADERS if c in rows[0]]
    table = Table(box=box.SIMPLE_HEAD, show_footer=True, pad_edge=False, collapse_padding=True)
    for column in columns:
        values = [row[column] for row in rows if isinstance(row.get(column), float)]
        footer = "mean" if column == "task" else (_number(sum(values) / len(values)) if values else "")
        table.add_column(_HEADERS[column], footer=footer, justify="right")
    for row in rows:
        table.add_row(*(_number(row[c]) if isinstance(row[c], float) else str(row[c]) for c in columns))
    return table


def _number(value: float) -> str:
    return f"{value:.1f}" if abs(value) >= 100 else f"{value:.2f}" if abs(value) >= 10 else f"{value:.3f}"


def _gather_rows(trainer: L.Trainer, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The results rows of every rank, by task (each rank adapted to its share of the tasks)."""
    if trainer.world_size == 1 or not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return rows
    gathered: list[list[dict[str, Any]] | None] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, rows)
    return sorted((row for part in gathered for row in part or []), key=lambda row: row["task"])
