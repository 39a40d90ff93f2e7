"""The environment-interaction DataModule: the task family and its splits, collection, the replay, evaluation.

Its parts have modules of their own: the Alg. 1 schedule (:mod:`~mql_lightning.data.schedule`), the random streams
(:mod:`~mql_lightning.data.streams`), the share of the tasks of this process (:mod:`~mql_lightning.data.sharding`)
and the replay side files (:mod:`~mql_lightning.data.side_file`); what it needs of the model, and the model of it, is
in :mod:`~mql_lightning.data.contracts`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import gymnasium
import lightning as L
import numpy as np
import torch

from mql_lightning import interrupt
from mql_lightning.data.collector import Collector, Episode
from mql_lightning.data.contracts import MetaLearner, Policy, require
from mql_lightning.data.replay import EpisodeReplay, HistoryPadding, ReplayBatch, check_history_padding
from mql_lightning.data.schedule import Progress, Schedule, Step
from mql_lightning.data.sharding import Shard
from mql_lightning.data.side_file import load_replay_for
from mql_lightning.data.streams import RandomStreams
from mql_lightning.envs import make_env, make_task_splits

Split = Literal["train", "val", "test"]


class MetaRLDataModule(L.LightningDataModule):
    """Owns the task family, its splits, the collector and the replay buffer; yields one batch per update.

    One training iteration (Alg. 1) collects ``episodes_per_iteration`` episodes on training tasks drawn uniformly
    with replacement, with the current policy plus Gaussian exploration noise (random actions during warm-up), then
    serves ``updates_per_iteration`` replay batches. Collection and sampling happen when the update asks for its
    batch, never ahead of it (``docs/design.md#the-training-loop``): the model's ``training_step`` pulls from the
    stream itself.

    The stream ends a Lightning epoch every ``val_every_env_steps`` environment steps, so validation runs on an
    interval counted in environment steps, and stops training once ``max_env_steps`` are collected
    (:class:`~mql_lightning.data.schedule.Schedule`). All randomness comes from generators seeded from the run seed
    (``seed_everything``; :class:`~mql_lightning.data.streams.RandomStreams`), so runs are reproducible on CPU.

    Multiple processes (DDP; ``docs/design.md#several-processes``): Lightning never shards an iterable, so this
    DataModule does it (:class:`~mql_lightning.data.sharding.Shard`).

    * Rank ``r`` of ``W`` owns the training tasks ``r, r + W, r + 2W, ...`` and keeps only their replay (each task's
      ring as large as on one device); it collects on them with its own streams. Rank 0 keeps the streams of a
      single-device run, so one device is unchanged; ranks ``r > 0`` derive theirs from the run seed and ``r``.
      Evaluation streams are shared by all ranks: a held-out task is evaluated from the same start states whichever
      rank evaluates it.
    * Environment steps are counted globally: after each round of collection (every rank collects
      ``episodes_per_iteration`` episodes) the ranks' step counts are summed with one all-reduce, so the counters
      of :class:`Progress`, hence warm-up, validation boundaries and the ``max_env_steps`` budget, are identical on
      every rank and the update stream stops at the same update everywhere (a rank stopping alone would deadlock
      the gradient all-reduce). ``time/env_steps`` is this global count.
    * An iteration makes ``ceil(global steps collected / W)`` updates (one per step each rank collected) unless
      ``updates_per_iteration`` is given; every update averages the gradients of ``W`` batches, so the ratio of
      replay samples to environment steps is the single-device one. ``min_buffer_size`` compares with the
      transitions stored over all ranks.
    * Validation and test tasks are split the same way (rank ``r`` evaluates and adapts to tasks ``r, r + W, ...``
      with its own replay shard), so each task is evaluated once; the model gathers the per-task results.

    Args:
        env_id: Registered task family, e.g. ``mql/PointRobot-v0``.
        env_kwargs: Extra keyword arguments for ``gymnasium.make``.
        num_train_tasks: Meta-training tasks.
        num_val_tasks: Validation tasks (held out).
        num_test_tasks: Test tasks (held out, for ``mql test``).
        task_seed: Seed of the task splits, independent of the run seed.
        ood: Out-of-distribution splits: train and held-out tasks from disjoint regions of the family.
        history_length: Context window H (transitions seen by the context encoder).
        replay_capacity: Replay transitions kept in total, split evenly over the training tasks.
        batch_size: Transitions per gradient update.
        task_weighting: ``task``: each batch averages over tasks uniformly (Eq. 15, the paper); ``transition``:
            uniform over stored transitions (the authors' code).
        warmup_steps: Environment steps of uniformly random actions before the first update (see also
            ``warmup_episode_length``).
        episodes_per_iteration: Episodes collected per iteration, stepped in lockstep.
        updates_per_iteration: Gradient updates per iteration; ``None`` gives one update per collected step.
        min_buffer_size: Until the replay holds this many transitions, an iteration makes one update per collected
            step whatever ``updates_per_iteration`` says (the authors' ``min_buffer_size``, 100,000).
        exploration_noise: Std of the Gaussian noise on the policy's actions while collecting.
        max_env_steps: Training budget in environment steps.
        val_every_env_steps: Validation interval in environment steps.
        validate_at_start: Also validate the untrained policy at step 0.
        tasks_per_validation: Validation tasks evaluated (and adapted to) at each validation during ``fit``: the
            first ones of the split, a fixed subset that keeps validation affordable; ``None`` for all.
        eval_episodes: Evaluation episodes per held-out task.
        eval_history_length: Context window at evaluation; ``None`` uses ``history_length``.
        history_padding: What the context windows of training and adaptation data hold before the episode start:
            ``zeros`` (default); ``authors``: zeros and, right before the first entry, a start entry ``e_-1`` =
            (a random action ``N(0, exploration_noise)``, reward 0, first observation), in the window of the
            transition but not in the window of its next state (the released code, inconsistency included);
            ``start_entry``: ``e_-1`` in both windows.
        eval_window: Context windows at evaluation: ``fixed`` (default: ``eval_history_length`` entries, padded as
            ``history_padding`` says) or ``growing`` (the released code: 1 to ``eval_history_length`` entries,
            beginning with ``e_-1``, no padding).
        warmup_episode_length: Cut warm-up episodes after this many steps (the released code: 50, a quarter of
            the 200-step episodes); ``None`` runs them to the family's time limit.
    """

    def __init__(
        self,
        env_id: str = "mql/PointRobot-v0",
        env_kwargs: dict[str, Any] | None = None,
        num_train_tasks: int = 40,
        num_val_tasks: int = 10,
        num_test_tasks: int = 10,
        task_seed: int = 1337,
        ood: bool = False,
        history_length: int = 10,
        replay_capacity: int = 1_000_000,
        batch_size: int = 256,
        task_weighting: Literal["task", "transition"] = "task",
        warmup_steps: int = 2_000,
        episodes_per_iteration: int = 1,
        updates_per_iteration: int | None = None,
        min_buffer_size: int = 0,
        exploration_noise: float = 0.3,
        max_env_steps: int = 20_000,
        val_every_env_steps: int = 4_000,
        validate_at_start: bool = True,
        tasks_per_validation: int | None = 5,
        eval_episodes: int = 4,
        eval_history_length: int | None = None,
        history_padding: HistoryPadding = "zeros",
        eval_window: Literal["fixed", "growing"] = "fixed",
        warmup_episode_length: int | None = None,
    ) -> None:
        super().__init__()
        _check_positive(
            num_train_tasks=num_train_tasks, history_length=history_length, replay_capacity=replay_capacity,
            batch_size=batch_size, episodes_per_iteration=episodes_per_iteration, max_env_steps=max_env_steps,
            val_every_env_steps=val_every_env_steps, eval_episodes=eval_episodes,
        )
        _check_positive(updates_per_iteration=updates_per_iteration, eval_history_length=eval_history_length,
                        tasks_per_validation=tasks_per_validation, warmup_episode_length=warmup_episode_length,
                        optional=True)
        check_history_padding(history_padding)
        if eval_window not in ("fixed", "growing"):
            raise ValueError(f"eval_window must be 'fixed' or 'growing', got {eval_window!r}")
        non_negative = {"warmup_steps": warmup_steps, "exploration_noise": exploration_noise,
                        "num_val_tasks": num_val_tasks, "num_test_tasks": num_test_tasks,
                        "min_buffer_size": min_buffer_size}
        for name, value in non_negative.items():
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if task_weighting not in ("task", "transition"):
            raise ValueError(f"task_weighting must be 'task' or 'transition', got {task_weighting!r}")
        self.save_hyperparameters()
        self.env_id, self.env_kwargs = env_id, dict(env_kwargs or {})
        self.history_length = history_length
        self.eval_history_length = eval_history_length or history_length
        self.batch_size, self.task_weighting = batch_size, task_weighting
        self.warmup_steps, self.max_env_steps = warmup_steps, max_env_steps
        self.episodes_per_iteration, self.updates_per_iteration = episodes_per_iteration, updates_per_iteration
        self.min_buffer_size = min_buffer_size
        self.exploration_noise, self.eval_episodes = exploration_noise, eval_episodes
        self.val_every_env_steps, self.validate_at_start = val_every_env_steps, validate_at_start
        self.replay_capacity, self.tasks_per_validation = replay_capacity, tasks_per_validation
        self.history_padding, self.eval_window = history_padding, eval_window
        self.warmup_episode_length = warmup_episode_length

        # Dimensions and splits are known right away: LightningCLI links obs_dim/action_dim into the model.
        probe = make_env(env_id, **self.env_kwargs)
        self.obs_dim = int(np.prod(probe.observation_space.shape))
        self.action_dim = int(np.prod(probe.action_space.shape))
        self.tasks = make_task_splits(probe, num_train_tasks, num_val_tasks, num_test_tasks, task_seed, ood=ood)
        probe.close()

        self.schedule = Schedule(
            max_env_steps, val_every_env_steps, validate_at_start, warmup_steps, updates_per_iteration, min_buffer_size
        )
        self.replay: EpisodeReplay | None = None
        self._collector: Collector | None = None
        self._eval_collector: Collector | None = None
        self._streams: RandomStreams | None = None
        # This process's share of the tasks (set by setup; a single device until then).
        self._shard = Shard()

    @property
    def progress(self) -> Progress:
        """The counters of environment interaction (global under several processes)."""
        return self.schedule.progress

    # ----------------------------------------------------------------------------------------------------- setup
    def setup(self, stage: str) -> None:
        """Create collectors, random streams and (for ``fit``) the replay buffer of this rank's tasks; idempotent.

        Raises:
            ValueError: If there are fewer training tasks than processes.
        """
        if self._eval_collector is None:
            self._shard = self._process()
            if len(self.tasks.train) < self._shard.world_size:
                raise ValueError(
                    f"{len(self.tasks.train)} training tasks cannot be shared by {self._shard.world_size} processes: "
                    "every rank collects on its own training tasks"
                )
            self._streams = RandomStreams(torch.initial_seed(), self._shard.rank)
            self._collector = self.collector(self.history_length)
            self._eval_collector = self.collector(self.eval_history_length, self.eval_window == "growing")
        if stage == "fit" and self.replay is None:
            self.replay = self._new_replay()

    def _new_replay(self) -> EpisodeReplay:
        # Rings as large as on one device: capacity per task does not depend on the number of processes.
        capacity = max(1, self.replay_capacity // len(self.tasks.train))
        return EpisodeReplay(
            len(self.train_task_ids), capacity, self.obs_dim, self.action_dim, self.history_length, self.history_padding
        )

    def collector(self, history_length: int, growing_window: bool = False) -> Collector:
        """A collector of this family whose windows are built as this DataModule's (``history_padding``; the start
        entry's random action with std ``exploration_noise``, as the authors' runner draws it)."""
        return Collector(
            self.make_env, self.obs_dim, self.action_dim, history_length, self.history_padding,
            self.exploration_noise, growing_window,
        )

    def _process(self) -> Shard:
        """This process's rank and the number of processes (a single device without a trainer)."""
        trainer = self.trainer
        return Shard(trainer.global_rank, trainer.world_size) if trainer is not None else Shard()

    @property
    def train_task_ids(self) -> list[int]:
        """Indices (into ``tasks.train``) of the training tasks this rank collects on, in replay-buffer order."""
        return self._shard.of(len(self.tasks.train))

    def teardown(self, stage: str) -> None:
        """Close the environments."""
        for collector in (self._collector, self._eval_collector):
            if collector is not None:
                collector.close()

    def make_env(self) -> gymnasium.Env:
        """A fresh env of this task family (wrapped as ``gymnasium.make`` wraps it)."""
        return make_env(self.env_id, **self.env_kwargs)

    def task(self, split: Split, index: int) -> dict[str, Any]:
        """The task dict of task ``index`` of a split."""
        return self.tasks.of(split)[index]

    def num_tasks(self, split: Split) -> int:
        """Number of tasks of a split."""
        return len(self.tasks.of(split))

    def rng_for(self, purpose: Literal["eval", "adapt"], split: Split, index: int) -> np.random.Generator:
        """A generator for one held-out task, fixed by the run seed, the purpose, the split and the task index.

        Evaluation and adaptation draw from these, never from the training streams, so running them does not change
        the training run, and every validation evaluates a task from the same start states.
        """
        return self._streams.for_task(purpose, split, index)

    # --------------------------------------------------------------------------------------------- loaders
    def train_dataloader(self) -> Iterator[ReplayBatch]:
        """The update stream: an iterator of replay batches that ends each validation period."""
        return _UpdateStream(self)

    def val_dataloader(self) -> list[int]:
        """One batch per validation task evaluated (the first ``tasks_per_validation``): its index.

        Under several processes, this rank's share of them (see the class docstring): a plain list, which Lightning
        passes through untouched (no ``DistributedSampler``, so no padding duplicates).
        """
        count = min(len(self.tasks.val), self.tasks_per_validation or len(self.tasks.val))
        return self._process().of_held_out("val", count)

    def test_dataloader(self) -> list[int]:
        """One batch per test task: its index (this rank's share of them under several processes)."""
        return self._process().of_held_out("test", len(self.tasks.test))

    # ------------------------------------------------------------------------------------------ the Alg. 1 loop
    def next_batch(self) -> ReplayBatch:
        """Serve the next update's batch, collecting the next iteration's episodes first when one is due (Alg. 1,
        lines 5-7, as :class:`~mql_lightning.data.schedule.Schedule` decides).

        Raises:
            StopIteration: At a validation boundary or when the budget is spent (then ``trainer.should_stop``).
        """
        while (step := self.schedule.next()) is not Step.UPDATE:
            if step in (Step.VALIDATE, Step.STOP):
                if self.schedule.spent and self.trainer is not None:
                    self.trainer.should_stop = True
                raise StopIteration
            if step is Step.WARM_UP:
                self._warm_up()
            else:
                self.schedule.collected(*self._collect_iteration(), self._shard.world_size)
        return self.replay.sample(self.batch_size, self._streams.sample, task_weighting=self.task_weighting)

    def validation_done(self) -> None:
        """Move the schedule past the validation the update stream asked for; call when that validation completed."""
        self.schedule.validation_done()

    @property
    def finished(self) -> bool:
        """Whether the budget is spent and no validation is left to do (a resumed run may have nothing to do)."""
        return self.schedule.finished

    def _warm_up(self) -> None:
        """Collect ``warmup_steps`` of uniformly random actions, cycling through this rank's training tasks so that
        every task has data before the first update (episodes cut at ``warmup_episode_length`` steps if set)."""
        own = self.train_task_ids
        while self.progress.env_steps < self.warmup_steps:
            # Warm-up can take a minute on the MuJoCo families: a stop request is honoured between two rounds of
            # episodes, where the counters, the buffer and the streams agree.
            interrupt.check()
            # Every rank collects the same number of episodes per round: this rank's own count.
            done = self.progress.episodes // self._shard.world_size
            ids = [(done + k) % len(own) for k in range(self.episodes_per_iteration)]
            tasks = [self.tasks.train[own[i]] for i in ids]
            episodes = self._collector.rollout(tasks, ids, self._streams.collect, max_steps=self.warmup_episode_length)
            self._store(episodes)

    def _collect_iteration(self) -> tuple[int, int]:
        """Collect one iteration's episodes on this rank's training tasks drawn uniformly, with the policy plus
        noise; return the environment steps collected and the transitions stored, both over all ranks."""
        own = self.train_task_ids
        ids = self._streams.collect.integers(0, len(own), size=self.episodes_per_iteration).tolist()
        episodes = self._collector.rollout(
            [self.tasks.train[own[i]] for i in ids], ids, self._streams.collect, self._policy(), self.exploration_noise
        )
        self.progress.iterations += 1
        steps, count, return_sum, stored = self._store(episodes)
        self.progress.last_rollout_return = return_sum / count
        return steps, stored

    def _store(self, episodes: list[Episode]) -> tuple[int, int, float, int]:
        """Store this rank's episodes; count them over all ranks.

        Returns:
            Environment steps, episodes, the sum of the episodes' returns, and the transitions now stored, each
            summed over the ranks (one all-reduce).
        """
        for ep in episodes:
            self.replay.add_episode(
                ep.task, ep.obs, ep.actions, ep.rewards, ep.next_obs, ep.terminated, ep.start_action
            )
        # np.sum, like np.mean before it, so a single device logs bit-identical rollout returns.
        local = [sum(ep.length for ep in episodes), len(episodes), float(np.sum([ep.ret for ep in episodes])),
                 len(self.replay)]
        strategy = self.trainer.strategy if self._shard.world_size > 1 else None
        steps, count, return_sum, stored = self._shard.sum(local, strategy)
        self.progress.env_steps += int(steps)
        self.progress.episodes += int(count)
        return int(steps), int(count), return_sum, int(stored)

    def _policy(self) -> Policy:
        """The model's acting policy (the model is a :class:`~mql_lightning.data.contracts.MetaLearner`)."""
        return require(self.trainer.lightning_module, MetaLearner, "LightningModule").act

    # ---------------------------------------------------------------------------------------------- evaluation
    def evaluate(self, policy: Policy, split: Split, index: int) -> dict[str, float]:
        """Evaluate a deterministic policy for ``eval_episodes`` episodes on one held-out task.

        The episodes start from the same states at every call (seeded by split and task index, not by the
        training RNG), so successive validations compare like with like and never perturb training.

        Returns:
            ``{"return": mean undiscounted return, "length": mean episode length}``, and ``"success"``, the fraction
            of episodes with ``info["success"]`` at some step, when the family reports a success flag (Meta-World).
        """
        episodes = self._eval_collector.rollout(
            [self.task(split, index)] * self.eval_episodes, [index] * self.eval_episodes,
            self.rng_for("eval", split, index), policy,
        )
        stats = {
            "return": float(np.mean([ep.ret for ep in episodes])),
            "length": float(np.mean([ep.length for ep in episodes])),
        }
        if all(ep.success is not None for ep in episodes):
            stats["success"] = float(np.mean([ep.success for ep in episodes]))
        return stats

    # ---------------------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Counters and RNG states (plain Python values and tensors only: loads with ``weights_only=True``).

        The RNG states are this DataModule's streams (collection, replay sampling, evaluation seed) and the
        process-global ones (torch, numpy, Python's ``random``): MQL's own code never draws from the latter during
        training, but a swapped-in component might, and resuming must not change its draws either. The environments
        need nothing: every episode starts with a reset seeded from the collection stream, and a checkpoint never
        falls inside an episode (iterations collect whole episodes).

        Under several processes the checkpoint holds rank 0's: the counters are the same on every rank, and each
        rank's own streams go to its replay shard (:meth:`rank_state_dict`).
        """
        state: dict[str, Any] = {"progress": asdict(self.progress)}
        if self._streams is not None:
            state.update(self.rank_state_dict())
            state["eval_seed"] = self._streams.eval_seed
        return state

    def rank_state_dict(self) -> dict[str, Any]:
        """This process's random streams (saved in its replay shard under several processes)."""
        return self._streams.state_dict()

    def load_rank_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`rank_state_dict` returned (the global streams only when resuming ``fit``: loading a
        checkpoint for evaluation, e.g. :meth:`from_checkpoint`, leaves the caller's global streams alone)."""
        self._streams.load_state_dict(state, restore_global=self.trainer is not None and self.trainer.state.fn == "fit")

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore counters and RNG states saved by :meth:`state_dict`, and the replay buffer from its side file(s).

        Raises:
            FileNotFoundError: If the checkpoint being loaded has no replay side file next to it.
            ValueError: If the side file belongs to another step of training or to other dimensions, or if training
                would resume on another number of processes than wrote the checkpoint.
        """
        self.schedule.progress = Progress(**state_dict["progress"])
        if "rng" in state_dict:
            self.setup("fit")
            self.load_rank_state_dict(state_dict)
            self._streams.eval_seed = state_dict["eval_seed"]
        ckpt_path = self.trainer.ckpt_path if self.trainer is not None else None
        if ckpt_path is not None:
            self.load_checkpoint_replay(ckpt_path)

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> MetaRLDataModule:
        """Rebuild the DataModule of a training run from one of its checkpoints, replay buffer included.

        Args:
            path: A checkpoint written by ``mql fit`` (its ``.replay.pt`` side file, or the ``.replay.rank<r>.pt``
                shards of a multi-process run, must lie beside it).

        Returns:
            The DataModule with the run's task splits, counters, random streams and meta-training replay (of every
            training task, the shards of a multi-process run joined).
        """
        datamodule = cls.load_from_checkpoint(path, weights_only=True)
        checkpoint = torch.load(path, weights_only=True)
        datamodule.load_state_dict(checkpoint[cls.__name__])
        datamodule.load_checkpoint_replay(path)
        return datamodule

    def load_checkpoint_replay(self, checkpoint_path: str | Path) -> None:
        """Load this rank's replay buffer from the side file(s) of a checkpoint (see :func:`load_replay_for`).

        Resuming ``fit`` on as many processes as wrote the checkpoint gives every rank its own shard and its own
        random streams back. Evaluation (``validate``, ``test``, :meth:`from_checkpoint`) may run on another number
        of processes: the shards are joined and re-split by task.

        Raises:
            FileNotFoundError: If a side file is missing.
            ValueError: If a side file belongs to another step of training, or ``fit`` would resume a checkpoint on
                another number of processes.
        """
        self.setup("fit")
        shard = self._shard
        loaded = load_replay_for(
            checkpoint_path, self.progress.env_steps, self.train_task_ids, shard.rank, shard.world_size
        )
        fitting = self.trainer is not None and self.trainer.state.fn == "fit"
        if fitting and loaded.world_size != shard.world_size:
            raise ValueError(
                f"checkpoint {checkpoint_path} was written by a run on {loaded.world_size} process(es); resume it on "
                f"as many (this run has {shard.world_size}): every rank's replay shard and random streams belong to "
                "its rank"
            )
        self.replay.load_state_dict(loaded.state)
        if loaded.streams is not None:
            self.load_rank_state_dict(loaded.streams["datamodule"])
            if "model" in loaded.streams and self.trainer is not None:
                # The model was restored before the DataModule (Lightning's order): its per-rank streams live here.
                model = require(self.trainer.lightning_module, MetaLearner, "LightningModule")
                model.load_rank_state_dict(loaded.streams["model"])


class _UpdateStream(Iterator[ReplayBatch]):
    """What the Trainer iterates over: each ``next`` is one update's batch (see :meth:`MetaRLDataModule.next_batch`)."""

    def __init__(self, datamodule: MetaRLDataModule) -> None:
        self.datamodule = datamodule

    def __next__(self) -> ReplayBatch:
        return self.datamodule.next_batch()


def _check_positive(optional: bool = False, **values: int | None) -> None:
    for name, value in values.items():
        if value is None and optional:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
