"""The MQL LightningModule: meta-training with the multi-task TD3 objective (Alg. 1, Eq. 15)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import nn
from torchmetrics import MeanMetric

from mql_lightning.data.replay import ReplayBatch
from mql_lightning.modules.td3 import TD3Agent, td3_update

EVAL_METRICS = ("return", "return_pre_adapt", "ess", "lambda", "beta_mean", "classifier_accuracy")
"""What is logged per held-out task: return after and before adaptation, ESS, lambda, mean beta, classifier accuracy."""


class MQL(L.LightningModule):
    """Meta-Q-Learning: a context-conditioned TD3 agent meta-trained on many tasks at once.

    Meta-training minimises the average TD error over all training tasks (Eq. 15) with manual optimisation: a
    critic step every update, an actor step and a Polyak target update every ``policy_delay`` updates. Batches are
    pulled from the DataModule's update stream inside ``training_step``, so environment interaction happens exactly
    when the update needs it (DESIGN decision 11). Validation evaluates the policy on each validation task.

    Under DDP (DESIGN decision 12) every rank updates on batches of its own training tasks and the gradients are
    averaged, so the weights stay identical across ranks; each rank evaluates its share of the held-out tasks, and
    the per-task results are gathered from all ranks at the end of the epoch, the averages over tasks synchronised
    by their metrics. Use ``strategy="ddp_find_unused_parameters_true"``: the critic loss leaves the actor's
    parameters unused and the actor step freezes the critics'.

    Args:
        obs_dim: Observation width (linked from the DataModule).
        action_dim: Action width (linked from the DataModule).
        agent: Factory ``(obs_dim, action_dim) -> TD3Agent``; its ``context`` picks TD3-context or plain TD3.
        actor_optimizer: Optimiser factory for the actor (and its context encoder).
        critic_optimizer: Optimiser factory for the twin critics (and their context encoder).
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        agent: Callable[[int, int], TD3Agent] = TD3Agent,
        actor_optimizer: OptimizerCallable = torch.optim.Adam,
        critic_optimizer: OptimizerCallable = torch.optim.Adam,
    ) -> None:
        super().__init__()
        # Under LightningCLI these hold the parsed config, so MQL.load_from_checkpoint rebuilds the agent.
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.agent = agent(obs_dim, action_dim)
        # The CLI stores optimiser configs in hparams as dicts; keep the callables themselves.
        self.actor_optimizer, self.critic_optimizer = actor_optimizer, critic_optimizer
        self.num_updates = 0
        self.noise_generator = torch.Generator()
        # Means over held-out tasks, synchronised across ranks (not part of the state dict).
        self.eval_metrics = nn.ModuleDict(
            {f"{split}_{name}": MeanMetric() for split in ("val", "test") for name in EVAL_METRICS}
        )
        self._clock: tuple[float, int] | None = None
        # Per-task results of this rank's held-out tasks in the running validation/test epoch: split -> task -> name.
        self._eval_rows: dict[str, dict[int, dict[str, float]]] = {}

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """Two optimisers with no shared parameters: actor and critic (DESIGN decision 4)."""
        actor = self.actor_optimizer(self.agent.actor_parameters())
        critic = self.critic_optimizer(self.agent.critic_parameters())
        return [actor, critic]

    def setup(self, stage: str) -> None:
        """Seed the target-smoothing noise from the run seed and the rank (its own stream, checkpointed).

        Rank 0 (a single device) keeps the seed it always had; every other rank gets its own (DESIGN decision 12).
        """
        self.noise_generator.manual_seed(torch.initial_seed() + 1 + self.global_rank)

    # ------------------------------------------------------------------------------------------------- acting
    @torch.no_grad()
    def act(self, obs: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """The deterministic meta-policy: ``(N, O)`` observations and ``(N, H, C)`` windows to ``(N, A)`` actions."""
        return self.agent.act(obs.to(self.device), history.to(self.device)).float().cpu()

    # ------------------------------------------------------------------------------------------------ training
    def training_step(self, dataloader_iter: Iterator[tuple[ReplayBatch, int, int]]) -> None:
        """One TD3 update on the next replay batch; a closed stream means "validate now" (or the budget is spent)."""
        item = next(dataloader_iter, None)
        if item is None:
            return
        batch = ReplayBatch(*(t.to(self.device, non_blocking=True) for t in item[0]))
        actor_opt, critic_opt = self.optimizers()

        self.num_updates += 1
        loss_c, loss_a, info = td3_update(
            self.agent, batch, self.num_updates, actor_opt, critic_opt, self.manual_backward,
            freeze_critic=lambda: self.toggled_optimizer(actor_opt), generator=self.noise_generator,
        )

        if self.num_updates % self.trainer.log_every_n_steps == 0:
            self._log_training(loss_c, loss_a, info)

    def _log_training(self, loss_c: torch.Tensor, loss_a: torch.Tensor | None, info: dict[str, torch.Tensor]) -> None:
        metrics: dict[str, Any] = {"train/critic_loss": loss_c.detach(), "train/q1_mean": info["q1_mean"]}
        if loss_a is not None:
            metrics["train/actor_loss"] = loss_a.detach()
        metrics["train/num_updates"] = float(self.num_updates)
        progress = getattr(self.trainer.datamodule, "progress", None)
        if progress is not None:
            metrics["time/env_steps"] = float(progress.env_steps)
            metrics["rollout/return"] = progress.last_rollout_return
            metrics["step"] = float(progress.env_steps)  # loggers' x-axis: environment steps
        now = time.perf_counter()
        if self._clock is not None and now > self._clock[0]:
            metrics["time/updates_per_s"] = (self.num_updates - self._clock[1]) / (now - self._clock[0])
        self._clock = (now, self.num_updates)
        self.log_dict(metrics, on_step=True, on_epoch=False, batch_size=1)

    # ------------------------------------------------------------------------------------------ validation/test
    def validation_step(self, batch: int) -> dict[str, float]:
        """Evaluate the meta-policy (before any adaptation) on one validation task."""
        return self._evaluate("val", int(batch))

    def test_step(self, batch: int) -> dict[str, float]:
        """Evaluate the meta-policy (before any adaptation) on one test task."""
        return self._evaluate("test", int(batch))

    def _evaluate(self, split: str, index: int) -> dict[str, float]:
        stats = self.trainer.datamodule.evaluate(self.act, split, index)
        self.record_eval(split, index, {"return_pre_adapt": stats["return"]})
        return {"return_pre_adapt": stats["return"]}

    def record_eval(self, split: str, task: int, metrics: dict[str, float]) -> None:
        """Log evaluation numbers of one held-out task, per task and aggregated over tasks (and ranks).

        Used by ``validation_step``/``test_step`` and by the adaptation callback (``self.log`` belongs to the
        top-level module, DESIGN decision 5). The averages over tasks are metrics, synchronised over the ranks when
        the epoch ends; the per-task values are kept and logged then, gathered from every rank
        (:meth:`on_validation_epoch_end`).

        Args:
            split: ``val`` or ``test``.
            task: Index of the task in its split.
            metrics: Values by name, each one of :data:`EVAL_METRICS`.
        """
        row = self._eval_rows.setdefault(split, {}).setdefault(task, {})
        for name, value in metrics.items():
            row[name] = float(value)
            aggregate = self.eval_metrics[f"{split}_{name}"]
            aggregate.update(value)
            self.log(f"{split}/{name}", aggregate, prog_bar=name == "return", batch_size=1)

    def on_validation_epoch_end(self) -> None:
        """Log the per-task validation results of all ranks."""
        self._log_per_task("val")

    def on_test_epoch_end(self) -> None:
        """Log the per-task test results of all ranks."""
        self._log_per_task("test")

    def _log_per_task(self, split: str) -> None:
        table = self._gather_rows(split, self._eval_rows.pop(split, {}))
        if not table:
            return
        # Identical on every rank after the gather: logging with sync_dist is exact, and keeps every rank's logged
        # keys in step for Lightning's end-of-epoch reduction.
        sync = self.trainer.world_size > 1
        for task in sorted(table):
            for name, value in table[task].items():
                self.log(f"{split}/task_{task}/{name}", value, batch_size=1, sync_dist=sync)
        progress = getattr(self.trainer.datamodule, "progress", None)
        if progress is not None:
            self.log("step", float(progress.env_steps), batch_size=1, sync_dist=sync)

    def _gather_rows(self, split: str, rows: dict[int, dict[str, float]]) -> dict[int, dict[str, float]]:
        """The per-task results of every rank (each task is evaluated by exactly one rank); ``rows`` on one device."""
        if self.trainer.world_size == 1:
            return rows
        num_tasks = len(getattr(self.trainer.datamodule.tasks, split))
        table = torch.zeros(2, num_tasks, len(EVAL_METRICS), dtype=torch.float64)  # values, then presence
        for task, row in rows.items():
            for name, value in row.items():
                table[:, task, EVAL_METRICS.index(name)] = torch.tensor([value, 1.0], dtype=torch.float64)
        # A sum over ranks: every task's values come from the one rank that evaluated it (zeros elsewhere).
        total = self.trainer.strategy.reduce(table.to(self.trainer.strategy.root_device), reduce_op="sum").cpu()
        values, count = total[0] / total[1].clamp(min=1), total[1]
        return {
            task: {name: float(values[task, j]) for j, name in enumerate(EVAL_METRICS) if count[task, j] > 0}
            for task in range(num_tasks)
            if bool((count[task] > 0).any())
        }

    def on_train_epoch_start(self) -> None:
        """Restart the throughput clock (validation time is not update time)."""
        self._clock = None

    # ----------------------------------------------------------------------------------------------- checkpoints
    def rank_state_dict(self) -> dict[str, Any]:
        """This rank's own random stream (saved in its replay shard under several processes, DESIGN decision 12)."""
        return {"noise_generator": self.noise_generator.get_state()}

    def load_rank_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`rank_state_dict` returned."""
        self.noise_generator.set_state(state["noise_generator"])

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the update counter and the target-noise RNG (tensors and ints only)."""
        checkpoint["mql"] = {"num_updates": self.num_updates, "noise_generator": self.noise_generator.get_state()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore what :meth:`on_save_checkpoint` stored."""
        state = checkpoint.get("mql", {})
        self.num_updates = state.get("num_updates", 0)
        if "noise_generator" in state:
            self.noise_generator.set_state(state["noise_generator"])
