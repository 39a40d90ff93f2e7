"""A Rich progress bar that counts what meta-RL training is measured in: environment steps."""

from __future__ import annotations

import math
import time
from datetime import timedelta
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.callbacks.progress.rich_progress import CustomTimeColumn
from rich.progress import ProgressColumn, Task
from rich.text import Text

from mql_lightning.data.contracts import EnvironmentSteps, MetaLearner, TrainingData


class MQLProgressBar(RichProgressBar):
    """Lightning's Rich progress bar, with the training bar in environment steps of the budget.

    Lightning's bar counts batches of an epoch; here an epoch is a validation period and the budget is
    ``data.max_env_steps`` (``docs/design.md#the-training-loop``), so the training bar shows environment steps out of
    that budget, the time the whole run has taken (validations included, and the time before a resume, which is
    saved with the checkpoint) and an estimate of the time left to the budget at the pace of this run so far, then the
    update rate, the last training rollout's return and the last validation return (after adaptation when the
    adaptation callback runs). Values come from the DataModule's counters and the logged metrics: nothing extra is
    computed or synchronised for the bar.

    Args:
        refresh_rate: Update the bar every this many updates.
        leave: Keep finished bars on screen.
        rate_window: Seconds over which the updates-per-second figure is averaged.
    """

    def __init__(self, refresh_rate: int = 1, leave: bool = False, rate_window: float = 2.0) -> None:
        super().__init__(refresh_rate=refresh_rate, leave=leave)
        if refresh_rate < 1 or rate_window <= 0:
            raise ValueError(f"need refresh_rate >= 1 and rate_window > 0, got {refresh_rate}, {rate_window}")
        self.rate_window = rate_window
        self._clock: tuple[float, int] | None = None
        self._rate = math.nan
        # The run's wall time before this process (from the checkpoint), and when and where this process started.
        self._elapsed_before = 0.0
        self._start: tuple[float, int] | None = None
        self._env_steps: tuple[int, int | None] = (0, None)  # now, budget

    def configure_columns(self, trainer: L.Trainer) -> list[ProgressColumn]:
        """Lightning's columns, with the time column showing the whole run's time on the training bar."""
        return [
            _RunTimeColumn(self, column.style) if isinstance(column, CustomTimeColumn) else column
            for column in super().configure_columns(trainer)
        ]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Start the run clock here (a resumed run adds the time saved with its checkpoint)."""
        super().on_train_start(trainer, pl_module)
        progress = _progress(trainer)
        self._start = (time.monotonic(), progress.env_steps if progress is not None else 0)

    def run_times(self) -> tuple[float, float | None]:
        """Seconds the run has taken (every process that trained it), and an estimate of the seconds left."""
        if self._start is None:
            return self._elapsed_before, None
        started, start_steps = self._start
        now = time.monotonic() - started
        steps, budget = self._env_steps
        done = steps - start_steps
        remaining = None if budget is None or done <= 0 else max(0.0, (budget - steps) * now / done)
        return self._elapsed_before + now, remaining

    def state_dict(self) -> dict[str, Any]:
        """The run's wall time so far, so that a resumed run's bar shows the whole run's."""
        return {"elapsed": self.run_times()[0]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self._elapsed_before = float(state_dict.get("elapsed", 0.0))

    def _get_train_description(self, current_epoch: int) -> str:
        # Epochs are validation periods and max_epochs is -1: "Epoch 3/-2" would say nothing.
        return f"{'Env steps':{len(self.validation_description)}}"

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Start the training bar at the current environment step, out of the budget."""
        super().on_train_epoch_start(trainer, pl_module)
        self._clock = None  # validation time is not update time
        self._show_env_steps(trainer)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Advance the bar to the current environment step (not the batch index) every ``refresh_rate`` updates."""
        if self.is_disabled or (batch_idx + 1) % self.refresh_rate:
            return
        if self.train_progress_bar_id is None:  # e.g. resumed mid-period
            self._initialize_train_progress_bar_id()
        self._measure_rate(trainer, pl_module)
        self._show_env_steps(trainer)
        self._update_metrics(trainer, pl_module)
        self.refresh()

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """Updates/s, the last rollout return and the last validation return, then Lightning's own items."""
        items: dict[str, Any] = {}
        if not math.isnan(self._rate):
            items["updates/s"] = f"{self._rate:.1f}"
        progress = _progress(trainer)
        if progress is not None and not math.isnan(progress.last_rollout_return):
            items["rollout return"] = f"{progress.last_rollout_return:.2f}"
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)  # the run directory's version_N, truncated by Lightning to its last 4 characters
        val_return = metrics.pop("val/return", None)
        if val_return is not None:
            items["val return"] = f"{float(val_return):.2f}"
        return {**items, **metrics}

    def _measure_rate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # MQL counts its TD3 updates; Lightning's global step counts critic and actor steps apart.
        updates = pl_module.num_updates if isinstance(pl_module, MetaLearner) else trainer.global_step
        now = time.perf_counter()
        if self._clock is None:
            self._clock = (now, updates)
        elif now - self._clock[0] >= self.rate_window:
            self._rate = (updates - self._clock[1]) / (now - self._clock[0])
            self._clock = (now, updates)

    def _show_env_steps(self, trainer: L.Trainer) -> None:
        data = _data(trainer)
        if data is None or self.progress is None or self.train_progress_bar_id is None:
            return
        self._env_steps = (data.progress.env_steps, data.max_env_steps)
        self.progress.update(self.train_progress_bar_id, completed=data.progress.env_steps, total=data.max_env_steps)


def _data(trainer: L.Trainer) -> TrainingData | None:
    """The DataModule, if it counts environment steps (:class:`~mql_lightning.data.contracts.TrainingData`); the bar
    shows batches as Lightning's does otherwise."""
    datamodule = getattr(trainer, "datamodule", None)
    return datamodule if isinstance(datamodule, TrainingData) else None


def _progress(trainer: L.Trainer) -> EnvironmentSteps | None:
    data = _data(trainer)
    return data.progress if data is not None else None


class _RunTimeColumn(ProgressColumn):
    """"elapsed • remaining": of the whole run on the training bar (:meth:`MQLProgressBar.run_times`), of the bar's
    own task on the others (as Lightning's column)."""

    max_refresh = 0.5  # as Lightning's: refreshing more often makes the numbers jitter

    def __init__(self, bar: MQLProgressBar, style: Any) -> None:
        super().__init__()
        self.bar, self.style = bar, style

    def render(self, task: Task) -> Text:
        if task.id == self.bar.train_progress_bar_id:
            elapsed, remaining = self.bar.run_times()
        else:
            elapsed = task.finished_time if task.finished else task.elapsed
            remaining = task.time_remaining
        return Text(f"{_clock(elapsed)} • {_clock(remaining)}", style=self.style)


def _clock(seconds: float | None) -> str:
    return "-:--:--" if seconds is None else str(timedelta(seconds=int(seconds)))
