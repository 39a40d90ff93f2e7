"""A Rich progress bar that counts what meta-RL training is measured in: environment steps."""

from __future__ import annotations

import math
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar


class MQLProgressBar(RichProgressBar):
    """Lightning's Rich progress bar, with the training bar in environment steps of the budget.

    Lightning's bar counts batches of an epoch; here an epoch is a validation period and the budget is
    ``data.max_env_steps`` (DESIGN decision 11), so the training bar shows environment steps out of that budget, and
    next to it the update rate, the last training rollout's return and the last validation return (after adaptation
    when the adaptation callback runs). Values come from the DataModule's counters and the logged metrics: nothing
    extra is computed or synchronised for the bar.

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
        self._measure_rate(pl_module)
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

    def _measure_rate(self, pl_module: L.LightningModule) -> None:
        updates = int(getattr(pl_module, "num_updates", 0))
        now = time.perf_counter()
        if self._clock is None:
            self._clock = (now, updates)
        elif now - self._clock[0] >= self.rate_window:
            self._rate = (updates - self._clock[1]) / (now - self._clock[0])
            self._clock = (now, updates)

    def _show_env_steps(self, trainer: L.Trainer) -> None:
        progress = _progress(trainer)
        if progress is None or self.progress is None or self.train_progress_bar_id is None:
            return
        budget = getattr(trainer.datamodule, "max_env_steps", None)
        self.progress.update(self.train_progress_bar_id, completed=progress.env_steps, total=budget)


def _progress(trainer: L.Trainer) -> Any:
    """The DataModule's environment-step counters, if it has them."""
    return getattr(getattr(trainer, "datamodule", None), "progress", None)
