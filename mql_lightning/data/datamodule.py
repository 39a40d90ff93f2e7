"""The environment-interaction DataModule: task splits, collection, replay, and the update stream of Alg. 1."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import gymnasium
import lightning as L
import numpy as np
import torch

from mql_lightning import interrupt
from mql_lightning.data.collector import Collector, Episode, Policy
from mql_lightning.data.replay import EpisodeReplay, HistoryPadding, ReplayBatch, check_history_padding
from mql_lightning.data.side_file import load_replay_for
from mql_lightning.envs import make_env, make_task_splits

Split = Literal["train", "val", "test"]
_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
_PURPOSE_CODES = {"eval": 0, "adapt": 1}
# Spawn-key prefix of the streams of ranks > 0: distinct from the keys (0,), (1,), (2,) of rank 0's streams.
_RANK_SPAWN_KEY = 0x72616E6B


@dataclass
class Progress:
    """Counters of environment interaction, saved in checkpoints.

    Under a multi-process strategy every counter is global (summed over the ranks) and therefore identical on every
    rank: the update stream decides from these alone (DESIGN decision 12). ``last_rollout_return`` is the mean over
    all ranks' episodes of the last iteration. ``next_validation_at`` is the step of the next validation not yet
    completed: a checkpoint taken before a validation (an interrupted one) validates again when resumed, one taken
    after it does not.
    """

    env_steps: int = 0
    episodes: int = 0
    iterations: int = 0
    updates_left: int = 0
    next_validation_at: int = 0
    last_rollout_return: float = float("nan")


class MetaRLDataModule(L.LightningDataModule):
    """Owns the task family, its splits, the collector and the replay buffer; yields one batch per update.

    One training iteration (Alg. 1) collects ``episodes_per_iteration`` episodes on training tasks drawn uniformly
    with replacement, with the current policy plus Gaussian exploration noise (random actions during warm-up), then
    serves ``updates_per_iteration`` replay batches. Collection and sampling happen when the update asks for its
    batch, never ahead of it (DESIGN decision 11): the model's ``training_step`` pulls from the stream itself.

    The stream ends a Lightning epoch every ``val_every_env_steps`` environment steps, so validation runs on an
    interval counted in environment steps, and stops training once ``max_env_steps`` are collected. All randomness
    comes from generators seeded from the run seed (``seed_everything``), so runs are reproducible on CPU.

    Multiple processes (DDP; DESIGN decision 12): Lightning never shards an iterable, so this DataModule does it.

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

        self.progress = Progress(next_validation_at=0 if validate_at_start else val_every_env_steps)
        self.replay: EpisodeReplay | None = None
        self._collector: Collector | None = None
        self._eval_collector: Collector | None = None
        self._rng: np.random.Generator | None = None
        self._sample_generator: torch.Generator | None = None
        self._eval_seed = 0
        # Whether the stream ended an epoch for the validation due at progress.next_validation_at (not saved: a
        # resumed stream asks again, see Progress).
        self._validation_requested = False
        # This process's rank and the number of processes (set by setup; a single device until then).
        self._rank, self._world_size = 0, 1

    # ----------------------------------------------------------------------------------------------------- setup
    def setup(self, stage: str) -> None:
        """Create collectors, generators and (for ``fit``) the replay buffer of this rank's tasks; idempotent.

        Raises:
            ValueError: If there are fewer training tasks than processes.
        """
        if self._eval_collector is None:
            self._rank, self._world_size = self._process()
            if len(self.tasks.train) < self._world_size:
                raise ValueError(
                    f"{len(self.tasks.train)} training tasks cannot be shared by {self._world_size} processes: "
                    "every rank collects on its own training tasks"
                )
            # Every stream gets its own child of the run seed: collection, replay sampling and evaluation never
            # consume each other's random numbers.
            root = np.random.SeedSequence(torch.initial_seed())
            collect_seq, sample_seq, eval_seq = root.spawn(3)
            if self._rank > 0:
                # Each rank collects and samples with its own streams (DESIGN decision 12); rank 0 keeps the ones
                # above, so a single-device run is unchanged. Evaluation keeps the shared stream.
                own = np.random.SeedSequence(root.entropy, spawn_key=(_RANK_SPAWN_KEY, self._rank))
                collect_seq, sample_seq = own.spawn(2)
            self._rng = np.random.default_rng(collect_seq)
            self._sample_generator = torch.Generator().manual_seed(int(sample_seq.generate_state(1)[0]))
            self._eval_seed = int(eval_seq.generate_state(1)[0])
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

    def _process(self) -> tuple[int, int]:
        """``(global rank, world size)`` of this process; ``(0, 1)`` without a trainer."""
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    @property
    def train_task_ids(self) -> list[int]:
        """Indices (into ``tasks.train``) of the training tasks this rank collects on, in replay-buffer order."""
        return list(range(self._rank, len(self.tasks.train), self._world_size))

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
        return getattr(self.tasks, split)[index]

    def rng_for(self, purpose: Literal["eval", "adapt"], split: Split, index: int) -> np.random.Generator:
        """A generator for one held-out task, fixed by the run seed, the purpose, the split and the task index.

        Evaluation and adaptation draw from these, never from the training streams, so running them does not change
        the training run, and every validation evaluates a task from the same start states.
        """
        return np.random.default_rng([self._eval_seed, _PURPOSE_CODES[purpose], _SPLIT_CODES[split], index])

    # --------------------------------------------------------------------------------------------- loaders
    def train_dataloader(self) -> Iterator[ReplayBatch]:
        """The update stream: an iterator of replay batches that ends each validation period."""
        return _UpdateStream(self)

    def val_dataloader(self) -> list[int]:
        """One batch per validation task evaluated (the first ``tasks_per_validation``): its index.

        Under several processes, this rank's share of them (see the class docstring): a plain list, which Lightning
        passes through untouched (no ``DistributedSampler``, so no padding duplicates).
        """
        return self._share("val", min(len(self.tasks.val), self.tasks_per_validation or len(self.tasks.val)))

    def test_dataloader(self) -> list[int]:
        """One batch per test task: its index (this rank's share of them under several processes)."""
        return self._share("test", len(self.tasks.test))

    def _share(self, split: Split, count: int) -> list[int]:
        # Shares may differ by one task: safe because nothing in an evaluation step communicates (the model has no
        # buffers for DDP's forward to broadcast); the ranks meet only at the end of the epoch.
        rank, world_size = self._process()
        if count < world_size:
            # A rank without a task would not join the end-of-epoch synchronisation of the metrics.
            raise ValueError(
                f"{count} {split} tasks cannot be shared by {world_size} processes: use at least as many tasks "
                "(num_val_tasks / tasks_per_validation / num_test_tasks) as processes"
            )
        return list(range(rank, count, world_size))

    # ------------------------------------------------------------------------------------------ the Alg. 1 loop
    def next_batch(self) -> ReplayBatch:
        """Serve the next update's batch, collecting the next iteration's episodes first when one is due.

        Raises:
            StopIteration: At a validation boundary or when the budget is spent (then ``trainer.should_stop``).
        """
        progress = self.progress
        while progress.updates_left == 0:
            spent = progress.env_steps >= self.max_env_steps
            if spent and self.trainer is not None:
                self.trainer.should_stop = True
            if progress.env_steps >= progress.next_validation_at:
                if not self._validation_requested:
                    # Ending the epoch makes Lightning validate; the validation confirms (validation_done). Also when
                    # the budget is spent: the closing validation is then this one, so a run resumed with a larger
                    # budget does not validate the same step twice.
                    self._validation_requested = True
                    raise StopIteration
                self._schedule_next_validation()  # requested, but none ran (validation disabled): go on training
            if spent:
                raise StopIteration
            if progress.env_steps < self.warmup_steps:
                self._warm_up()
                continue
            collected, stored = self._collect_iteration()
            ramping = self.updates_per_iteration is None or stored < self.min_buffer_size
            # One update per step each rank collected (all global counts: identical on every rank).
            progress.updates_left = -(-collected // self._world_size) if ramping else self.updates_per_iteration
        progress.updates_left -= 1
        return self.replay.sample(self.batch_size, self._sample_generator, task_weighting=self.task_weighting)

    def validation_done(self) -> None:
        """Move the schedule past the validation the update stream asked for; call when that validation completed."""
        if self._validation_requested:
            self._schedule_next_validation()

    def _schedule_next_validation(self) -> None:
        interval = self.val_every_env_steps
        self.progress.next_validation_at = (self.progress.env_steps // interval + 1) * interval
        self._validation_requested = False

    @property
    def finished(self) -> bool:
        """Whether the budget is spent and no validation is left to do (a resumed run may have nothing to do).

        A run interrupted during its closing validation is not finished: resuming it runs that validation.
        """
        progress = self.progress
        return progress.env_steps >= self.max_env_steps and progress.next_validation_at > progress.env_steps

    def _warm_up(self) -> None:
        """Collect ``warmup_steps`` of uniformly random actions, cycling through this rank's training tasks so that
        every task has data before the first update (episodes cut at ``warmup_episode_length`` steps if set)."""
        own = self.train_task_ids
        while self.progress.env_steps < self.warmup_steps:
            # Warm-up can take a minute on the MuJoCo families: a stop request is honoured between two rounds of
            # episodes, where the counters, the buffer and the streams agree.
            interrupt.check()
            # Every rank collects the same number of episodes per round: this rank's own count.
            done = self.progress.episodes // self._world_size
            ids = [(done + k) % len(own) for k in range(self.episodes_per_iteration)]
            tasks = [self.tasks.train[own[i]] for i in ids]
            self._store(self._collector.rollout(tasks, ids, self._rng, max_steps=self.warmup_episode_length))

    def _collect_iteration(self) -> tuple[int, int]:
        """Collect one iteration's episodes on this rank's training tasks drawn uniformly, with the policy plus
        noise; return the environment steps collected and the transitions stored, both over all ranks."""
        own = self.train_task_ids
        ids = self._rng.integers(0, len(own), size=self.episodes_per_iteration).tolist()
        episodes = self._collector.rollout(
            [self.tasks.train[own[i]] for i in ids], ids, self._rng, self._policy(), self.exploration_noise
        )
        self.progress.iterations += 1
        steps, count, return_sum, stored = self._store(episodes)
        self.progress.last_rollout_return = return_sum / count
        return steps, stored

    def _store(self, episodes: list[Episode]) -> tuple[int, int, float, int]:
        """Store this rank's episodes; count them over all ranks.

        Returns:
            Environment steps, episodes, the sum of the episodes' returns, and the transitions now stored, each
            summed over the ranks (one all-reduce: DESIGN decision 12).
        """
        for ep in episodes:
            self.replay.add_episode(
                ep.task, ep.obs, ep.actions, ep.rewards, ep.next_obs, ep.terminated, ep.start_action
            )
        # np.sum, like np.mean before it, so a single device logs bit-identical rollout returns.
        local = [sum(ep.length for ep in episodes), len(episodes), float(np.sum([ep.ret for ep in episodes])),
                 len(self.replay)]
        steps, count, return_sum, stored = self._sum_over_ranks(local)
        self.progress.env_steps += int(steps)
        self.progress.episodes += int(count)
        return int(steps), int(count), return_sum, int(stored)

    def _sum_over_ranks(self, values: list[float]) -> list[float]:
        """Element-wise sums over all processes (the values themselves on a single device)."""
        if self._world_size == 1:
            return values
        strategy = self.trainer.strategy
        # float64 holds every count exactly; the tensor goes to the strategy's device (NCCL reduces GPU tensors).
        total = strategy.reduce(torch.tensor(values, dtype=torch.float64, device=strategy.root_device), reduce_op="sum")
        return total.cpu().tolist()

    def _policy(self) -> Policy:
        return self.trainer.lightning_module.act

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
        if self._rng is not None:
            state.update(self.rank_state_dict())
            state["eval_seed"] = self._eval_seed
        return state

    def rank_state_dict(self) -> dict[str, Any]:
        """This process's random streams (saved in its replay shard under several processes)."""
        return {
            "rng": self._rng.bit_generator.state,
            "sample_generator": self._sample_generator.get_state(),
            "global_rng": _global_rng_state(),
        }

    def load_rank_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`rank_state_dict` returned (the global streams only when resuming ``fit``: loading a
        checkpoint for evaluation, e.g. :meth:`from_checkpoint`, leaves the caller's global streams alone)."""
        self._rng.bit_generator.state = state["rng"]
        self._sample_generator.set_state(state["sample_generator"])
        if "global_rng" in state and self.trainer is not None and self.trainer.state.fn == "fit":
            _set_global_rng_state(state["global_rng"])

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore counters and RNG states saved by :meth:`state_dict`, and the replay buffer from its side file(s).

        Raises:
            FileNotFoundError: If the checkpoint being loaded has no replay side file next to it.
            ValueError: If the side file belongs to another step of training or to other dimensions, or if training
                would resume on another number of processes than wrote the checkpoint.
        """
        self.progress = Progress(**state_dict["progress"])
        if "rng" in state_dict:
            self.setup("fit")
            self.load_rank_state_dict(state_dict)
            self._eval_seed = state_dict["eval_seed"]
        ckpt_path = getattr(self.trainer, "ckpt_path", None) if self.trainer is not None else None
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
        loaded = load_replay_for(
            checkpoint_path, self.progress.env_steps, self.train_task_ids, self._rank, self._world_size
        )
        fitting = self.trainer is not None and self.trainer.state.fn == "fit"
        if fitting and loaded.world_size != self._world_size:
            raise ValueError(
                f"checkpoint {checkpoint_path} was written by a run on {loaded.world_size} process(es); resume it on "
                f"as many (this run has {self._world_size}): every rank's replay shard and random streams belong to "
                "its rank"
            )
        self.replay.load_state_dict(loaded.state)
        if loaded.streams is not None:
            self.load_rank_state_dict(loaded.streams["datamodule"])
            module = self.trainer.lightning_module if self.trainer is not None else None
            if "model" in loaded.streams and hasattr(module, "load_rank_state_dict"):
                # The model was restored before the DataModule (Lightning's order): its per-rank streams live here.
                module.load_rank_state_dict(loaded.streams["model"])


class _UpdateStream(Iterator[ReplayBatch]):
    """What the Trainer iterates over: each ``next`` is one update's batch (see :meth:`MetaRLDataModule.next_batch`)."""

    def __init__(self, datamodule: MetaRLDataModule) -> None:
        self.datamodule = datamodule

    def __next__(self) -> ReplayBatch:
        return self.datamodule.next_batch()


def _global_rng_state() -> dict[str, Any]:
    """The process-global random states, as tensors and plain values (``weights_only``-loadable)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_global_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`_global_rng_state` returned."""
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _check_positive(optional: bool = False, **values: int | None) -> None:
    for name, value in values.items():
        if value is None and optional:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
