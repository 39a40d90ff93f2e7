"""The adaptation phase of MQL (Alg. 2) at validation and test time, logged per held-out task."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import lightning as L
import torch
from rich import box
from rich.console import Console
from rich.table import Table

from mql_lightning.adaptation import AdaptationConfig, AdaptationResult, adapt_to_task
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

    Where the process has more cores than its torch threads use, held-out tasks adapt concurrently, in threads
    (``docs/design.md#concurrent-adaptation``): each task's adaptation draws only from its own random streams and
    runs torch at the process's thread count, so the results are bit for bit those of adapting the tasks one at a time;
    the adapted policies are evaluated and logged in task order once the last task of the validation (or test) has
    been evaluated before adaptation.

    Args:
        enabled: ``False`` evaluates without adaptation: TD3-context (``return`` equals ``return_pre_adapt``).
        settings: The adaptation settings (numbers of Eq. 18 / Eq. 19 updates, beta clip, lambda, ...).
        concurrent_tasks: How many held-out tasks adapt at once. ``None`` (the default): the cores this process may
            use divided by its torch threads (and, under several processes on a machine, by their number); ``1``
            adapts one task after the other in the main thread.
    """

    def __init__(
        self,
        enabled: bool = True,
        settings: AdaptationConfig = AdaptationConfig(),  # noqa: B008 - frozen, shared safely
        concurrent_tasks: int | None = None,
    ) -> None:
        super().__init__()
        if concurrent_tasks is not None and concurrent_tasks < 1:
            raise ValueError(f"concurrent_tasks must be >= 1 (or null: as many as the cores allow), got "
                             f"{concurrent_tasks}")
        self.enabled = enabled
        self.settings = settings
        self.concurrent_tasks = concurrent_tasks
        self._rows: list[dict[str, Any]] = []
        self._pool: ThreadPoolExecutor | None = None
        self._pool_size = 0
        # Tasks of the running validation/test whose adaptation runs in the pool: (index, pre-adaptation row, future).
        self._pending: list[tuple[int, dict[str, Any], Future[AdaptationResult]]] = []

    def state_dict(self) -> dict[str, Any]:
        """The adaptation settings, kept in every checkpoint as a record of how the run adapted.

        A record only (nothing is loaded back): the settings of the command that loads a checkpoint apply, so a
        checkpoint can be evaluated with other adaptation settings.
        """
        return {"enabled": self.enabled, "settings": dataclasses.asdict(self.settings)}

    def workers(self, trainer: L.Trainer) -> int:
        """The number of held-out tasks adapted at once in this process (``concurrent_tasks``, resolved)."""
        if self.concurrent_tasks is not None:
            return self.concurrent_tasks
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return max(1, cores // (torch.get_num_threads() * max(1, trainer.num_devices)))

    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Adapt to one validation task (or start its adaptation, and finish all of them after the last task)."""
        if not trainer.sanity_checking:  # validation rows are logged, not kept
            self._adapt_and_log(
                trainer, pl_module, "val", int(batch), outputs, last=batch_idx + 1 == trainer.num_val_batches[0]
            )

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Start a fresh results table."""
        self._rows = []

    def on_test_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Adapt to one test task (or start its adaptation, and finish all of them after the last task)."""
        self._rows.extend(self._adapt_and_log(
            trainer, pl_module, "test", int(batch), outputs, last=batch_idx + 1 == trainer.num_test_batches[0]
        ))

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        """Abandon the adaptations still running (a stop request, an error)."""
        self._shutdown()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Stop the adaptation threads."""
        self._shutdown()

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
        self, trainer: L.Trainer, pl_module: L.LightningModule, split: str, index: int, outputs: Any, last: bool
    ) -> list[dict[str, Any]]:
        """The results rows of the tasks finished by this batch: this one, or (concurrently) none until the last."""
        # return_pre_adapt, and success_pre_adapt for a family with a success flag (Meta-World).
        pre = {name: float(value) for name, value in outputs.items()}
        row: dict[str, Any] = {"task": index, **pre}
        data = require(trainer.datamodule, AdaptationData, "DataModule")
        learner = require(pl_module, MetaLearner, "LightningModule")
        if not self.enabled or data.replay is None or data.replay.num_transitions() == 0:
            # Nothing to adapt with before any meta-training data exists (the validation at step 0).
            same = {name.removesuffix("_pre_adapt"): value for name, value in pre.items()}
            learner.record_eval(split, index, same)
            return [{**row, **same}]
        # Alg. 2 with the task's own random stream: adapting never changes the training run, nor depends on which
        # other tasks adapt at the same time.
        task, rng = data.task(split, index), data.rng_for("adapt", split, index)
        workers = self.workers(trainer)
        if workers == 1:
            result = adapt_to_task(learner.agent, data, task, self.settings, rng)
            return [self._evaluate_and_log(data, learner, split, index, row, result)]
        if self._pool is None or self._pool_size != workers:
            self._shutdown()
            # torch.set_num_threads sets OpenMP's team size for the calling thread only: a new thread would run its
            # first operations (those that do not pass through ATen's parallel_for first, BLAS among them) on OpenMP's
            # default of one thread per core, and a larger team splits sums differently (results 1 ulp apart).
            self._pool = ThreadPoolExecutor(
                workers, thread_name_prefix="mql-adapt", initializer=torch.set_num_threads,
                initargs=(torch.get_num_threads(),),
            )
            self._pool_size = workers
        self._pending.append(
            (index, row, self._pool.submit(adapt_to_task, learner.agent, data, task, self.settings, rng))
        )
        if not last:
            return []
        # Logged from this hook, like the sequential path (Lightning keys logged values by the hook), and evaluated
        # in the main thread, in task order: the DataModule's one evaluation collector serves one caller at a time.
        pending, self._pending = self._pending, []
        return [self._evaluate_and_log(data, learner, split, i, r, future.result()) for i, r, future in pending]

    @staticmethod
    def _evaluate_and_log(
        data: AdaptationData, learner: MetaLearner, split: str, index: int, row: dict[str, Any],
        result: AdaptationResult,
    ) -> dict[str, Any]:
        """Evaluate an adapted agent on its task's start states and log it; its results row."""
        stats = data.evaluate(acting_policy(result.agent), split, index)
        metrics = {name: stats[name] for name in ("return", "success") if name in stats}
        metrics.update(result.metrics())
        learner.record_eval(split, index, metrics)
        return {**row, **metrics}

    def _shutdown(self) -> None:
        self._pending = []
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


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
