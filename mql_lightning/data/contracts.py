"""What the meta-RL ``LightningModule``, the ``LightningDataModule`` and the callbacks need of each other, written down.

Lightning connects a module and a DataModule only through the Trainer; MQL's parts also call each other: the model
logs against the DataModule's environment-step counter and asks it to evaluate a policy on a held-out task, the
DataModule collects with the model's policy and restores the model's per-rank random stream from a replay shard, the
checkpoint callback saves the replay with every checkpoint, and the adaptation callback runs Alg. 2 against the
DataModule's tasks and replay. These protocols are those contracts (``docs/design.md#lightning``): any part can be
swapped for a class that provides its side, and a mismatch is reported in one line (:func:`require`) instead of
surfacing as an ``AttributeError`` deep in the loop. ``MetaRLDataModule`` implements every data protocol and ``MQL``
:class:`MetaLearner`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

import gymnasium
import numpy as np
import torch

if TYPE_CHECKING:
    from mql_lightning.data.replay import EpisodeReplay

Policy = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``(obs (N, O), history (N, H, A+1+O)) -> actions (N, A)`` in [-1, 1], CPU tensors in and out."""


@runtime_checkable
class EnvironmentSteps(Protocol):
    """The counters of environment interaction (the loggers' x-axis, the progress bar's position)."""

    env_steps: int
    last_rollout_return: float


@runtime_checkable
class TrainingData(Protocol):
    """What the model (and the progress bar) need of the DataModule during ``fit``, ``validate`` and ``test``."""

    progress: EnvironmentSteps
    max_env_steps: int

    @property
    def finished(self) -> bool:
        """Whether the budget is spent and no validation is left (a resumed run may have nothing to do)."""

    def num_tasks(self, split: str) -> int:
        """Number of tasks of a split: ``train``, ``val`` or ``test``."""

    def evaluate(self, policy: Policy, split: str, index: int) -> dict[str, float]:
        """Evaluate a deterministic policy on one held-out task: ``return`` (and ``success`` where there is one)."""

    def validation_done(self) -> None:
        """Tell the update stream that the validation it asked for is complete."""


@runtime_checkable
class CheckpointedData(Protocol):
    """What the checkpoint callback needs of the DataModule to write a replay side file with every checkpoint."""

    progress: EnvironmentSteps
    replay: EpisodeReplay | None

    @property
    def train_task_ids(self) -> list[int]:
        """Global ids of the training tasks this rank's replay holds, in buffer order."""

    def rank_state_dict(self) -> dict[str, Any]:
        """This rank's own random streams (saved in its replay shard under several processes)."""


@runtime_checkable
class AdaptationData(Protocol):
    """What Alg. 2 needs of the DataModule: the family, the window settings, the meta-training replay, and each
    held-out task's own random streams and evaluation."""

    replay: EpisodeReplay | None
    history_length: int
    history_padding: str
    exploration_noise: float
    task_weighting: str
    eval_history_length: int
    eval_window: str

    def make_env(self) -> gymnasium.Env:
        """A fresh env of the task family."""

    def task(self, split: str, index: int) -> dict[str, Any]:
        """The task dict of task ``index`` of a split."""

    def rng_for(self, purpose: str, split: str, index: int) -> np.random.Generator:
        """The generator of one held-out task's evaluation (``eval``) or adaptation (``adapt``)."""

    def evaluate(self, policy: Policy, split: str, index: int) -> dict[str, float]:
        """Evaluate a deterministic policy on one held-out task."""


@runtime_checkable
class MetaLearner(Protocol):
    """What the DataModule and the callbacks need of the model."""

    agent: torch.nn.Module
    num_updates: int

    def act(self, obs: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """The deterministic meta-policy (a :data:`Policy`)."""

    def record_eval(self, split: str, task: int, metrics: dict[str, float]) -> None:
        """Log evaluation numbers of one held-out task."""

    def check_finite(self) -> None:
        """Raise if a loss or parameter is not finite (asked before every checkpoint)."""

    def rank_state_dict(self) -> dict[str, Any]:
        """This rank's own random streams, saved in its replay shard under several processes."""

    def load_rank_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`rank_state_dict` returned."""


T = TypeVar("T")


def require(obj: Any, protocol: type[T], role: str) -> T:
    """``obj``, checked to provide ``protocol``.

    Args:
        obj: The object (e.g. the Trainer's ``datamodule`` or ``lightning_module``).
        protocol: The protocol it must follow.
        role: What it is, for the message.

    Raises:
        TypeError: Naming the protocol and the members ``obj`` lacks.
    """
    if isinstance(obj, protocol):
        return obj
    missing = [name for name in members(protocol) if not hasattr(obj, name)]
    raise TypeError(
        f"the {role} ({type(obj).__name__}) does not provide {protocol.__module__}.{protocol.__name__}: missing "
        f"{', '.join(missing) or 'members'}"
    )


def members(protocol: type) -> list[str]:
    """The public attributes and methods a protocol asks for."""
    names: set[str] = set()
    for klass in protocol.__mro__:
        if klass in (object, Protocol) or not getattr(klass, "_is_protocol", False):
            continue
        names |= {n for n in (*vars(klass), *getattr(klass, "__annotations__", {})) if not n.startswith("_")}
    return sorted(names)
