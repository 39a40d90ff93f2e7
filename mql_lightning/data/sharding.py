"""This process's share of the tasks, and counts summed over all processes (``docs/design.md#several-processes``).

Lightning never shards an iterable, so the DataModule does it: rank ``r`` of ``W`` owns the training tasks
``r, r + W, r + 2W, ...`` (and keeps only their replay) and evaluates the held-out tasks ``r, r + W, ...``, so each
held-out task is evaluated once. Shares may differ by one task: safe because nothing in an evaluation step
communicates; the ranks meet only at the end of the epoch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Shard:
    """Rank ``rank`` of ``world_size`` processes (``Shard()``: a single device)."""

    rank: int = 0
    world_size: int = 1

    def of(self, count: int) -> list[int]:
        """This rank's indices among ``count`` items."""
        return list(range(self.rank, count, self.world_size))

    def of_held_out(self, split: str, count: int) -> list[int]:
        """This rank's share of ``count`` held-out tasks of ``split``.

        Raises:
            ValueError: If some rank would get none (it would not join the end-of-epoch synchronisation).
        """
        if count < self.world_size:
            raise ValueError(
                f"{count} {split} tasks cannot be shared by {self.world_size} processes: use at least as many tasks "
                "(num_val_tasks / tasks_per_validation / num_test_tasks) as processes"
            )
        return self.of(count)

    def sum(self, values: list[float], strategy: Any) -> list[float]:
        """Element-wise sums over all processes (one all-reduce; the values themselves on a single device)."""
        if self.world_size == 1:
            return values
        # float64 holds every count exactly; the tensor goes to the strategy's device (NCCL reduces GPU tensors).
        total = strategy.reduce(torch.tensor(values, dtype=torch.float64, device=strategy.root_device), reduce_op="sum")
        return total.cpu().tolist()
