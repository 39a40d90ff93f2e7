"""The MQL LightningModule: meta-training with the multi-task TD3 objective (Alg. 1, Eq. 15)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import nn
from torchmetrics import MeanMetric

from mql_lightning.data.contracts import TrainingData, require
from mql_lightning.data.replay import ReplayBatch
from mql_lightning.modules.agent import TD3Agent, acting_policy
from mql_lightning.modules.td3 import td3_update

EVAL_METRICS = (
    "return", "return_pre_adapt", "ess", "lambda", "beta_mean", "classifier_accuracy", "success", "success_pre_adapt",
)
"""What is logged per held-out task: return after and before adaptation, ESS, lambda, mean beta, classifier accuracy,
and, for families with a success flag (Meta-World), the success rate after and before adaptation."""


class NonFiniteError(FloatingPointError):
    """Training produced a non-finite loss or parameter; the message names the update, the step and the loss."""


class MQL(L.LightningModule):
    """Meta-Q-Learning: a context-conditioned TD3 agent meta-trained on many tasks at once.

    Meta-training minimises the average TD error over all training tasks (Eq. 15) with manual optimisation: a
    critic step every update, an actor step and a Polyak target update every ``policy_delay`` updates. Batches are
    pulled from the DataModule's update stream inside ``training_step``, so environment interaction happens exactly
    when the update needs it (docs/design.md#the-training-loop). Validation evaluates the policy on each validation
    task.

    Under DDP (docs/design.md#several-processes) every rank updates on batches of its own training tasks and the
    gradients are averaged, so the weights stay identical across ranks; each rank evaluates its share of the held-out
    tasks, and the per-task results are gathered from all ranks at the end of the epoch, the averages over tasks
    synchronised by their metrics. Use ``strategy="ddp_find_unused_parameters_true"``: the critic loss leaves the
    actor's parameters unused and the actor step freezes the critics'.

    Numerical faults: a non-finite loss or parameter stops training with :class:`NonFiniteError`, naming the update,
    the environment step and the loss, before any checkpoint could store the diverged state (the last good
    ``last.ckpt`` stays as it was). To keep the update free of host synchronisation (which would stall a GPU every
    update), the losses are only accumulated on their device at each update; :meth:`check_finite` reads them, and
    screens every parameter with one fused norm, every ``log_every_n_steps`` updates (when the losses are logged
    anyway), before every validation and before every checkpoint. The cost: one synchronisation and one pass over
    the parameters per check (about 0.3 ms for 2 million parameters on one CPU core); the trade-off: a fault is
    reported up to ``log_every_n_steps - 1`` updates after the update that produced it (the message gives the
    range).

    Args:
        obs_dim: Observation width (linked from the DataModule).
        action_dim: Action width (linked from the DataModule).
        agent: Factory ``(obs_dim, action_dim) -> TD3Agent``; its ``context`` picks TD3-context or plain TD3.
        actor_optimizer: Optimiser factory for the actor (and its context encoder).
        critic_optimizer: Optimiser factory for the twin critics (and their context encoder).
        grad_clip_norm: Clip the gradients of every critic and actor step to this total 2-norm; ``None`` does not
            clip. A setting of the training procedure, not of the model: it is not stored with the model's
            hyper-parameters, so a run can be resumed with another value (e.g. after a divergence).
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        agent: Callable[[int, int], TD3Agent] = TD3Agent,
        actor_optimizer: OptimizerCallable = torch.optim.Adam,
        critic_optimizer: OptimizerCallable = torch.optim.Adam,
        grad_clip_norm: float | None = None,
    ) -> None:
        super().__init__()
        if grad_clip_norm is not None and not grad_clip_norm > 0:
            raise ValueError(f"grad_clip_norm must be > 0 (or null: no clipping), got {grad_clip_norm}")
        # Under LightningCLI these hold the parsed config, so MQL.load_from_checkpoint rebuilds the agent. LightningCLI
        # gives a checkpoint's hyper-parameters precedence over the command line when resuming: the clipping norm
        # stays out of them so that it can be changed then.
        self.save_hyperparameters(ignore=["grad_clip_norm"])
        self.automatic_optimization = False
        self.agent = agent(obs_dim, action_dim)
        # The CLI stores optimiser configs in hparams as dicts; keep the callables themselves.
        self.actor_optimizer, self.critic_optimizer = actor_optimizer, critic_optimizer
        self.grad_clip_norm = grad_clip_norm
        self.num_updates = 0
        self.noise_generator = torch.Generator()
        # Losses summed on their device since the last finiteness check, the update that check covered, and the
        # last losses (see check_finite).
        self._loss_sums: dict[str, torch.Tensor] = {}
        self._checked_updates = 0
        self._last_losses: dict[str, torch.Tensor] = {}
        # Means over held-out tasks, synchronised across ranks (not part of the state dict).
        self.eval_metrics = nn.ModuleDict(
            {f"{split}_{name}": MeanMetric() for split in ("val", "test") for name in EVAL_METRICS}
        )
        self._clock: tuple[float, int] | None = None
        # Per-task results of this rank's held-out tasks in the running validation/test epoch: split -> task -> name.
        self._eval_rows: dict[str, dict[int, dict[str, float]]] = {}

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """Two optimisers with no shared parameters: actor and critic (docs/design.md#context-encoders)."""
        actor = self.actor_optimizer(self.agent.actor_parameters())
        critic = self.critic_optimizer(self.agent.critic_parameters())
        return [actor, critic]

    @property
    def _data(self) -> TrainingData:
        """The Trainer's DataModule, which must provide :class:`~mql_lightning.data.contracts.TrainingData`."""
        return require(self.trainer.datamodule, TrainingData, "DataModule")

    def _attached_trainer(self) -> L.Trainer | None:
        """The Trainer, or ``None`` for a module used on its own (e.g. loaded from a checkpoint)."""
        try:
            return self.trainer
        except RuntimeError:  # "... is not attached to a `Trainer`"
            return None

    def setup(self, stage: str) -> None:
        """Seed the target-smoothing noise from the run seed and the rank (its own stream, checkpointed).

        Rank 0 (a single device) keeps the seed it always had; every other rank gets its own
        (docs/design.md#several-processes).
        """
        self.noise_generator.manual_seed(torch.initial_seed() + 1 + self.global_rank)

    # ------------------------------------------------------------------------------------------------- acting
    def act(self, obs: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """The deterministic meta-policy: ``(N, O)`` observations and ``(N, H, C)`` windows to ``(N, A)`` actions
        (:func:`~mql_lightning.modules.agent.acting_policy` of the agent)."""
        return acting_policy(self.agent)(obs, history)

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
            clip_gradients=self._clip if self.grad_clip_norm is not None else None,
        )
        self._accumulate_losses(critic=loss_c, actor=loss_a)

        if self.num_updates % self.trainer.log_every_n_steps == 0:
            self.check_finite()
            self._log_training(loss_c, loss_a, info)

    def _clip(self, optimizer: torch.optim.Optimizer) -> None:
        # Lightning's clipping unscales fp16 gradients first and works under every strategy.
        self.clip_gradients(optimizer, gradient_clip_val=self.grad_clip_norm, gradient_clip_algorithm="norm")

    # --------------------------------------------------------------------------------------- numerical faults
    def _accumulate_losses(self, **losses: torch.Tensor | None) -> None:
        """Add this update's losses to their running sums, on their device (a non-finite value stays non-finite)."""
        for name, loss in losses.items():
            if loss is not None:
                value = loss.detach().float()
                total = self._loss_sums.get(name)
                self._loss_sums[name] = value if total is None else total + value
                self._last_losses[name] = value

    def check_finite(self) -> None:
        """Raise :class:`NonFiniteError` if a loss since the last check, or any parameter, is not finite.

        One host synchronisation: the summed losses and one fused 2-norm per parameter tensor are screened together;
        only if that finds something are the culprits looked up (a norm that merely overflows is not a fault).

        Raises:
            NonFiniteError: Naming the updates, the environment step, the losses and the first bad parameter.
        """
        names, params = zip(*self.agent.named_parameters(), strict=True)
        sums = [total.to(params[0].device) for total in self._loss_sums.values()]
        suspect = bool((~torch.stack([*sums, *torch._foreach_norm(list(params))]).isfinite()).any())  # the sync
        losses, bad_param = [], None
        if suspect:
            losses = [name for name, total in self._loss_sums.items() if not bool(torch.isfinite(total))]
            bad_param = next((n for n, p in zip(names, params, strict=True) if not bool(torch.isfinite(p).all())), None)
        fault = torch.tensor(float(bool(losses) or bad_param is not None), device=params[0].device)
        if self._attached_trainer() is not None and self.trainer.world_size > 1:
            # Every rank stops together: one rank's loss may be non-finite while the others' are not (yet).
            fault = self.trainer.strategy.reduce(fault, reduce_op="max")
        if not bool(fault):
            self._loss_sums, self._checked_updates = {}, self.num_updates
            return
        raise NonFiniteError(self._fault_message(losses, bad_param))

    def _fault_message(self, losses: list[str], bad_param: str | None) -> str:
        first, last = self._checked_updates + 1, self.num_updates
        updates = f"update {last}" if first >= last else f"updates {first}-{last}"
        trainer = self._attached_trainer()
        progress = self._data.progress if trainer is not None else None
        where = f"{updates}" + (f" (environment step {progress.env_steps})" if progress is not None else "")
        what = [f"{name} loss (last value {self._last_losses[name].item():g})" for name in losses]
        if bad_param is not None:
            what.append(f"parameter agent.{bad_param}")
        what = what or ["values on another process"]
        callback = trainer.checkpoint_callback if trainer is not None else None
        checkpoint = callback.last_model_path if isinstance(callback, ModelCheckpoint) else ""
        # Optimiser settings come from the checkpoint when resuming (model hyper-parameters and optimiser states);
        # the clipping norm does not.
        clip = "gradient clipping (--model.grad_clip_norm 10)" if self.grad_clip_norm is None else (
            f"a smaller --model.grad_clip_norm than {self.grad_clip_norm:g}"
        )
        if checkpoint:
            outcome = (
                f"the last good checkpoint, {checkpoint}, is kept as it was: resume from it with {clip}, or start "
                "again with a smaller learning rate"
            )
        else:
            outcome = f"no checkpoint had been written yet: start again with {clip} or a smaller learning rate"
        return f"training diverged at {where}: non-finite {', '.join(what)}; {outcome}"

    def _log_training(self, loss_c: torch.Tensor, loss_a: torch.Tensor | None, info: dict[str, torch.Tensor]) -> None:
        metrics: dict[str, Any] = {"train/critic_loss": loss_c.detach(), "train/q1_mean": info["q1_mean"]}
        if loss_a is not None:
            metrics["train/actor_loss"] = loss_a.detach()
        metrics["train/num_updates"] = float(self.num_updates)
        progress = self._data.progress
        step = progress.env_steps  # the loggers' x-axis: environment steps
        metrics["time/env_steps"] = float(progress.env_steps)
        metrics["rollout/return"] = progress.last_rollout_return
        now = time.perf_counter()
        if self._clock is not None and now > self._clock[0]:
            metrics["time/updates_per_s"] = (self.num_updates - self._clock[1]) / (now - self._clock[0])
        self._clock = (now, self.num_updates)
        # Straight to the loggers: through self.log, Lightning would pass a row on only when its own batch counter is
        # a multiple of log_every_n_steps, a counter that the empty step closing each validation period and the
        # restart of a resumed run shift, so which updates get a row would depend on the run's history.
        values = {name: float(value) for name, value in metrics.items()}
        for logger in self.trainer.loggers:
            logger.log_metrics(values, step=step)

    # ------------------------------------------------------------------------------------------ validation/test
    def validation_step(self, batch: int) -> dict[str, float]:
        """Evaluate the meta-policy (before any adaptation) on one validation task."""
        return self._evaluate("val", int(batch))

    def test_step(self, batch: int) -> dict[str, float]:
        """Evaluate the meta-policy (before any adaptation) on one test task."""
        return self._evaluate("test", int(batch))

    def _evaluate(self, split: str, index: int) -> dict[str, float]:
        stats = self._data.evaluate(self.act, split, index)
        # The success rate only where the family reports success: no meaningless zeros for the others.
        metrics = {f"{name}_pre_adapt": stats[name] for name in ("return", "success") if name in stats}
        self.record_eval(split, index, metrics)
        return metrics

    def record_eval(self, split: str, task: int, metrics: dict[str, float]) -> None:
        """Log evaluation numbers of one held-out task, per task and aggregated over tasks (and ranks).

        Used by ``validation_step``/``test_step`` and by the adaptation callback (``self.log`` belongs to the
        top-level module, docs/design.md#td3-losses-as-pure-functions). The averages over tasks are metrics,
        synchronised over the ranks when the epoch ends; the per-task values are kept and logged then, gathered from
        every rank (:meth:`on_validation_epoch_end`).

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

    def on_train_start(self) -> None:
        """Stop at once if the run is already finished (resumed without a larger ``max_env_steps``)."""
        datamodule = self._data
        if datamodule.finished:
            rank_zero_info(
                f"mql: nothing to train: the checkpoint is at {datamodule.progress.env_steps} environment steps, the "
                f"budget is data.max_env_steps={datamodule.max_env_steps}"
            )
            self.trainer.should_stop = True

    def on_validation_start(self) -> None:
        """Check the state for non-finite values before it is validated and checkpointed (during ``fit``)."""
        if self.trainer.state.fn == "fit" and not self.trainer.sanity_checking:
            self.check_finite()

    def on_validation_epoch_end(self) -> None:
        """Log the per-task validation results of all ranks; tell the update stream its validation is complete."""
        self._log_per_task("val")
        if self.trainer.state.fn == "fit" and not self.trainer.sanity_checking:
            self._data.validation_done()

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
        self.log("step", float(self._data.progress.env_steps), batch_size=1, sync_dist=sync)

    def _gather_rows(self, split: str, rows: dict[int, dict[str, float]]) -> dict[int, dict[str, float]]:
        """The per-task results of every rank (each task is evaluated by exactly one rank); ``rows`` on one device."""
        if self.trainer.world_size == 1:
            return rows
        num_tasks = self._data.num_tasks(split)
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
        """This rank's own random stream (saved in its replay shard under several processes,
        ``docs/design.md#several-processes``)."""
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
