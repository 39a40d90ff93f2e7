"""The random streams of meta-training: collection, replay sampling, and one stream per held-out task.

Every stream is a child of the run seed (``seed_everything``), so a run is reproducible on CPU, and no stream
consumes another's numbers: collecting more episodes never changes which minibatches are drawn, and evaluating or
adapting to a held-out task never changes the training run (each held-out task gets a generator of its own, fixed by
the run seed, the purpose, the split and the task index, so every validation evaluates a task from the same start
states). Under several processes rank 0 keeps a single device's streams and every other rank derives its own
(``docs/design.md#several-processes``); the held-out tasks' streams are shared by all ranks.
"""

from __future__ import annotations

import random
from typing import Any, Literal

import numpy as np
import torch

_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
_PURPOSE_CODES = {"eval": 0, "adapt": 1}
# Spawn-key prefix of the streams of ranks > 0: distinct from the keys (0,), (1,), (2,) of rank 0's streams.
_RANK_SPAWN_KEY = 0x72616E6B


class RandomStreams:
    """The collection stream, the replay-sampling stream and the seed of the held-out tasks' streams.

    Args:
        seed: The run seed.
        rank: This process's rank.
    """

    def __init__(self, seed: int, rank: int = 0) -> None:
        root = np.random.SeedSequence(seed)
        collect_seq, sample_seq, eval_seq = root.spawn(3)
        if rank > 0:
            own = np.random.SeedSequence(root.entropy, spawn_key=(_RANK_SPAWN_KEY, rank))
            collect_seq, sample_seq = own.spawn(2)
        self.collect = np.random.default_rng(collect_seq)
        """Env reset seeds, random and noisy actions, training-task draws."""
        self.sample = torch.Generator().manual_seed(int(sample_seq.generate_state(1)[0]))
        """Replay minibatches."""
        self.eval_seed = int(eval_seq.generate_state(1)[0])
        """The seed of every held-out task's stream (:meth:`for_task`)."""

    def for_task(self, purpose: Literal["eval", "adapt"], split: str, index: int) -> np.random.Generator:
        """A fresh generator for one held-out task's evaluation or adaptation."""
        return np.random.default_rng([self.eval_seed, _PURPOSE_CODES[purpose], _SPLIT_CODES[split], index])

    def state_dict(self) -> dict[str, Any]:
        """The collection and sampling streams' states, with the process-global generators' (:func:`global_state`)."""
        return {
            "rng": self.collect.bit_generator.state,
            "sample_generator": self.sample.get_state(),
            "global_rng": global_state(),
        }

    def load_state_dict(self, state: dict[str, Any], restore_global: bool) -> None:
        """Restore what :meth:`state_dict` returned; the global generators too if ``restore_global`` (resuming
        ``fit``: loading a checkpoint for evaluation leaves the caller's global generators alone)."""
        self.collect.bit_generator.state = state["rng"]
        self.sample.set_state(state["sample_generator"])
        if restore_global and "global_rng" in state:
            set_global_state(state["global_rng"])


def global_state() -> dict[str, Any]:
    """The process-global random states (torch, numpy, Python's ``random``), ``weights_only``-loadable.

    MQL's own code never draws from them during training, but a swapped-in component might, and resuming must not
    change its draws either.
    """
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_global_state(state: dict[str, Any]) -> None:
    """Restore what :func:`global_state` returned."""
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
