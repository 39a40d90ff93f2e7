"""The schedule of Alg. 1 in environment steps: when to warm up, collect, update, validate and stop.

Meta-training alternates collection (``data.episodes_per_iteration`` episodes on training tasks) and gradient
updates, validates every ``data.val_every_env_steps`` environment steps and stops at ``data.max_env_steps``
(``docs/design.md#the-training-loop``). The decisions depend on the counters of :class:`Progress` alone, which are
global under several processes (summed over the ranks), so every rank takes the same decision at the same update: a
rank stopping alone would deadlock the gradient all-reduce.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


@dataclass
class Progress:
    """Counters of environment interaction, saved in checkpoints.

    ``last_rollout_return`` is the mean over all ranks' episodes of the last iteration. ``next_validation_at`` is
    the step of the next validation not yet completed: a checkpoint taken before a validation (an interrupted one)
    validates again when resumed, one taken after it does not.
    """

    env_steps: int = 0
    episodes: int = 0
    iterations: int = 0
    updates_left: int = 0
    next_validation_at: int = 0
    last_rollout_return: float = float("nan")


class Step(enum.Enum):
    """What the update stream does next."""

    UPDATE = "update"  # serve a replay batch
    VALIDATE = "validate"  # end the Lightning epoch: Lightning validates
    STOP = "stop"  # the budget is spent (and validated)
    WARM_UP = "warm_up"  # collect the random-action warm-up
    COLLECT = "collect"  # collect an iteration's episodes with the policy


class Schedule:
    """Decides each step of the update stream from the counters (Alg. 1, lines 3-8).

    Args:
        max_env_steps: The training budget.
        val_every_env_steps: The validation interval.
        validate_at_start: Validate the untrained policy at step 0 too.
        warmup_steps: Environment steps of random actions before the first update.
        updates_per_iteration: Updates after each iteration; ``None``: one per collected step.
        min_buffer_size: Below this many stored transitions, one update per collected step whatever
            ``updates_per_iteration`` says.
    """

    def __init__(
        self,
        max_env_steps: int,
        val_every_env_steps: int,
        validate_at_start: bool,
        warmup_steps: int,
        updates_per_iteration: int | None,
        min_buffer_size: int,
    ) -> None:
        self.max_env_steps, self.val_every_env_steps = max_env_steps, val_every_env_steps
        self.warmup_steps, self.updates_per_iteration = warmup_steps, updates_per_iteration
        self.min_buffer_size = min_buffer_size
        self.progress = Progress(next_validation_at=0 if validate_at_start else val_every_env_steps)
        # Whether the stream ended an epoch for the validation due at progress.next_validation_at (not saved: a
        # resumed stream asks again, see Progress).
        self.validation_requested = False

    @property
    def spent(self) -> bool:
        """Whether the budget is collected."""
        return self.progress.env_steps >= self.max_env_steps

    @property
    def finished(self) -> bool:
        """Whether the budget is spent and no validation is left to do. A run interrupted during its closing
        validation is not finished: resuming it runs that validation."""
        progress = self.progress
        return self.spent and progress.next_validation_at > progress.env_steps

    def next(self) -> Step:
        """The next step; :attr:`Step.UPDATE` consumes one of the iteration's updates."""
        progress = self.progress
        if progress.updates_left > 0:
            progress.updates_left -= 1
            return Step.UPDATE
        if progress.env_steps >= progress.next_validation_at:
            if not self.validation_requested:
                # Ending the epoch makes Lightning validate; the validation confirms (validation_done). Also when the
                # budget is spent: the closing validation is then this one, so a run resumed with a larger budget does
                # not validate the same step twice.
                self.validation_requested = True
                return Step.VALIDATE
            self._schedule_next_validation()  # requested, but none ran (validation disabled): go on training
        if self.spent:
            return Step.STOP
        return Step.WARM_UP if progress.env_steps < self.warmup_steps else Step.COLLECT

    def collected(self, steps: int, stored: int, world_size: int) -> None:
        """An iteration collected ``steps`` environment steps (over all ranks) and the replay now holds ``stored``
        transitions: set its number of updates (one per step each rank collected while ramping up)."""
        ramping = self.updates_per_iteration is None or stored < self.min_buffer_size
        self.progress.updates_left = -(-steps // world_size) if ramping else self.updates_per_iteration

    def validation_done(self) -> None:
        """Move past the validation the stream asked for; call when that validation completed."""
        if self.validation_requested:
            self._schedule_next_validation()

    def _schedule_next_validation(self) -> None:
        interval = self.val_every_env_steps
        self.progress.next_validation_at = (self.progress.env_steps // interval + 1) * interval
        self.validation_requested = False
