"""Meta-World's meta-RL benchmarks ML1, ML10 and ML45 as task families (the ``metaworld`` package, 3.1.1).

Every step is Meta-World's own: the family runs the Meta-World environment of the current task's class (a
``SawyerXYZEnv``; :mod:`mql_lightning.envs.meta_world_compat` lets it run on MuJoCo versions newer than the one
Meta-World pins), so observations, rewards, ``info["success"]`` and the 500-step truncation are Meta-World's. The
tasks are Meta-World's benchmark tasks: the goals of ``metaworld.ML1(task_class, seed)``, ``metaworld.ML10(seed)``
or ``metaworld.ML45(seed)``, the task seed being the benchmark's seed, so a seed gives exactly Meta-World's goals.

**Splits.** Meta-World has training tasks (50 goals of each training class) and test tasks (50 goals of each test
class; ML1's test goals are a second draw for its one class), and no validation set. Its evaluation protocol
(``docs/evaluation`` of Meta-World) meta-tests on 40 goals of each test class, which leaves 10 goals of each test
class that it never evaluates. Here:

- ``"train"`` (also ``"all"``): the training tasks, all 50 goals of each training class;
- ``"val"``: goals 40-49 of each test class (never tested), so validation during ``mql fit`` follows meta-test
  performance, as Meta-World's own training loops do, without ever seeing a test goal; for ML10 and ML45 it does see
  the test *classes*: a checkpoint chosen by validation (``best.ckpt``) has been selected on them, ``last.ckpt`` not;
- ``"test"``: goals 0-39 of each test class, the goals of Meta-World's protocol.

Each split lists the goals class by class in turn (goal 0 of every class, then goal 1, ...), so the first ``n`` tasks
of a split cover its classes evenly: ``num_test_tasks: 200`` on ML10 is Meta-World's 5 classes x 40 goals, and task
``i`` of a split belongs to class ``i % (number of classes)`` in the benchmark's class order.

**Tasks** are ``{"class": "reach-v3", "rand_vec": [...]}``: the task class and Meta-World's goal vector (object and
goal positions, its ``rand_vec``), set with Meta-World's own ``set_task``. Observations are 39 float64 numbers (hand,
gripper, objects, the same 18 of the previous step, and the goal, which the ML benchmarks zero; the space is declared
unbounded, Meta-World clips into its own box); actions are 4 in [-1, 1] (hand displacement, gripper), passed to
Meta-World unchanged; ``terminated`` is never set; episodes are truncated at 500 steps (Meta-World's
``max_path_length``, also the registered time limit). Resets are deterministic given the task (Meta-World draws nothing
at reset once a goal is set); the reset seed seeds the env's ``np_random`` as gymnasium specifies.
"""

from __future__ import annotations

import copy
import functools
import math
import numbers
import pickle
from typing import Any, ClassVar

import gymnasium
import numpy as np

from mql_lightning.envs.base import ALL_REGION, MetaEnv
from mql_lightning.envs.meta_world_compat import metaworld

__all__ = ["MetaWorldML1Env", "MetaWorldML10Env", "MetaWorldML45Env"]

#: Goals of each class in a Meta-World benchmark split (``metaworld._N_GOALS``).
GOALS_PER_CLASS = 50
#: Goals of each test class in Meta-World's evaluation protocol; the rest of the 50 are the validation goals.
TEST_GOALS_PER_CLASS = 40
#: Benchmark seed of the task an env runs before any ``set_task`` (``data.task_seed``'s default, so one benchmark
#: build serves both).
DEFAULT_TASK_SEED = 1337
#: Meta-World seeds numpy's legacy global generator with the seed (ML1's test goals with seed + 1).
_MAX_SEED = 2**32 - 2

_ALL_CLASSES: dict[str, type] = dict(metaworld.env_dict.ALL_V3_ENVIRONMENTS)
#: Length of each class's goal vector, learnt from its benchmark tasks or its first env (for checking tasks).
_RAND_VEC_SIZES: dict[str, int] = {}


@functools.lru_cache(maxsize=8)
def benchmark_tasks(benchmark: str, seed: int, task_class: str | None = None) -> tuple[tuple[dict[str, Any], ...], ...]:
    """Meta-World's training and test tasks of a benchmark, as plain task dicts in Meta-World's order.

    Built once per process and arguments: Meta-World resets an env 50 times per class to draw the goals (2-5 s
    for ML1, ~15 s for ML10, ~50 s for ML45 on one core). Callers must not modify the returned dicts.

    Args:
        benchmark: ``"ML1"``, ``"ML10"`` or ``"ML45"``.
        seed: The benchmark's seed (Meta-World's ``seed`` argument).
        task_class: ML1's task class.

    Returns:
        ``(train_tasks, test_tasks)``.
    """
    built = metaworld.ML1(task_class, seed=seed) if benchmark == "ML1" else getattr(metaworld, benchmark)(seed=seed)
    return tuple(tuple(_plain_task(task) for task in tasks) for tasks in (built.train_tasks, built.test_tasks))


def _plain_task(task: Any) -> dict[str, Any]:
    """A Meta-World ``Task`` (a class name and pickled constructor data) as ``{"class", "rand_vec"}``."""
    data = pickle.loads(task.data)  # Meta-World's own in-process pickle of its own task data
    rand_vec = [float(value) for value in data["rand_vec"]]
    _RAND_VEC_SIZES[task.env_name] = len(rand_vec)
    return {"class": task.env_name, "rand_vec": rand_vec}


def _by_class(tasks: tuple[dict[str, Any], ...], classes: list[str], goals: range) -> list[dict[str, Any]]:
    """Goals ``goals`` of every class, class by class in turn: goal g of each class, then goal g + 1, ..."""
    per_class = {name: [task for task in tasks if task["class"] == name] for name in classes}
    return [per_class[name][goal] for goal in goals for name in classes]


class _MetaWorldEnv(MetaEnv):
    """A Meta-World benchmark as one task family: one Meta-World env per task class, switched by the task.

    Subclasses name the benchmark and its training and test classes.

    Args:
        render_mode: gymnasium render mode of the Meta-World envs (``human``, ``rgb_array``, ``depth_array``).
        camera_name: Meta-World's camera name for rendering.
        camera_id: Meta-World's camera id for rendering.
        width: Rendered image width.
        height: Rendered image height.
    """

    benchmark_splits = True
    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["human", "rgb_array", "depth_array"], "render_fps": 80}
    benchmark: ClassVar[str]

    def __init__(
        self,
        render_mode: str | None = None,
        camera_name: str | None = None,
        camera_id: int | None = None,
        width: int = 480,
        height: int = 480,
    ) -> None:
        self.render_mode = render_mode
        self._env_kwargs = {
            "render_mode": render_mode, "camera_name": camera_name, "camera_id": camera_id,
            "width": width, "height": height,
        }
        self._envs: dict[str, Any] = {}
        self._active: Any = None
        self._task_seed: int | None = None
        train_classes, test_classes = self.classes()
        self._classes = list(dict.fromkeys([*train_classes, *test_classes]))
        self._task = self._canonical(self._default_task())
        first = self._env(self._task["class"])
        # Unbounded like every family's: Meta-World's own box pins the hidden goal's 3 numbers to [0, 0], which
        # gymnasium's checker warns about at every make; its observations lie inside either box.
        self.observation_space = gymnasium.spaces.Box(-np.inf, np.inf, first.observation_space.shape, np.float64)
        self.action_space = copy.deepcopy(first.action_space)

    # ---------------------------------------------------------------------------------------------- benchmark
    def classes(self) -> tuple[list[str], list[str]]:
        """The benchmark's training and test task classes, in Meta-World's order."""
        split = getattr(metaworld.env_dict, f"{self.benchmark}_V3")
        return list(split["train"]), list(split["test"])

    def _benchmark_tasks(self, seed: int) -> tuple[tuple[dict[str, Any], ...], ...]:
        return benchmark_tasks(self.benchmark, seed)

    def _default_task(self) -> dict[str, Any]:
        # The first goal of the first training class, drawn as Meta-World draws it (its benchmarks seed once and
        # draw class after class, so this is also the benchmark's first training task) without building all classes.
        return benchmark_tasks("ML1", DEFAULT_TASK_SEED, self.classes()[0][0])[0][0]

    # ------------------------------------------------------------------------------------------------- tasks
    def sample_tasks(self, n: int, seed: int, region: str = ALL_REGION) -> list[dict[str, Any]]:
        """The first ``n`` tasks of one of the benchmark's splits (regions ``"train"``/``"all"``, ``"val"``,
        ``"test"``: see the module docstring); fewer if the split has fewer.

        Args:
            n: Number of tasks, ``>= 0``.
            seed: The benchmark's seed, in ``[0, 2**32 - 2]``.
            region: ``"all"`` (the training tasks), ``"train"``, ``"val"`` or ``"test"``.

        Returns:
            ``min(n, split size)`` tasks ``{"class": str, "rand_vec": [float, ...]}``.

        Raises:
            TypeError: If ``n`` is not an integer.
            ValueError: If ``n < 0``, the region is unknown, or the seed is out of range.
        """
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed <= _MAX_SEED:
            raise ValueError(f"a Meta-World task seed must be an integer in [0, {_MAX_SEED}], got {seed!r}")
        self._task_seed = int(seed)
        try:
            return super().sample_tasks(n, seed, region)
        finally:
            self._task_seed = None

    def _sample_tasks(self, rng: np.random.Generator, n: int, region: str) -> list[dict[str, Any]]:
        # Meta-World's draw from the task seed (kept by sample_tasks); the generator is not used.
        train, test = self._benchmark_tasks(self._task_seed)
        train_classes, test_classes = self.classes()
        if region in (ALL_REGION, "train"):
            tasks = _by_class(train, train_classes, range(GOALS_PER_CLASS))
        elif region == "val":
            tasks = _by_class(test, test_classes, range(TEST_GOALS_PER_CLASS, GOALS_PER_CLASS))
        else:
            tasks = _by_class(test, test_classes, range(TEST_GOALS_PER_CLASS))
        return tasks[:n]

    def _validate_task(self, task: dict[str, Any]) -> dict[str, Any]:
        family = type(self).__name__
        self._check_keys(task, ("class", "rand_vec"))
        name, rand_vec = task["class"], task["rand_vec"]
        if name not in self._classes:
            raise ValueError(
                f"{family} task class {name!r} is not a {self.benchmark} class; its classes: {', '.join(self._classes)}"
            )
        if not isinstance(rand_vec, list) or not all(_is_finite(value) for value in rand_vec):
            raise ValueError(f"{family} task 'rand_vec' must be a list of finite numbers, got {rand_vec!r}")
        if name not in _RAND_VEC_SIZES:
            self._env(name)
        if len(rand_vec) != _RAND_VEC_SIZES[name]:
            raise ValueError(
                f"{family} task 'rand_vec' of {name} must have {_RAND_VEC_SIZES[name]} numbers, got {len(rand_vec)}"
            )
        return {"class": name, "rand_vec": [float(value) for value in rand_vec]}

    # -------------------------------------------------------------------------------------------- the episode
    def _env(self, name: str) -> Any:
        """This family's Meta-World env of task class ``name``, made on first use."""
        env = self._envs.get(name)
        if env is None:
            env = self._envs[name] = _ALL_CLASSES[name](**self._env_kwargs)
            _RAND_VEC_SIZES[name] = int(env._random_reset_space.low.size)
        return env

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode of the current task: Meta-World's ``set_task`` and ``reset`` on its class's env.

        Args:
            seed: Seeds ``np_random`` (gymnasium's contract); Meta-World's reset is deterministic given the task.
            options: Unused.

        Returns:
            Meta-World's first observation and info.
        """
        super().reset(seed=seed)
        env = self._env(self._task["class"])
        env.set_task(self._metaworld_task(self._task))
        self._active = env
        return env.reset()

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Meta-World's step of the current task's env, the action unchanged (Meta-World clips it itself)."""
        if self._active is None:
            raise gymnasium.error.ResetNeeded("call reset before step")
        obs, reward, terminated, truncated, info = self._active.step(action)
        return obs, float(reward), bool(terminated), bool(truncated), info

    def render(self) -> Any:
        """Meta-World's rendering of the current task's env."""
        return None if self._active is None else self._active.render()

    def close(self) -> None:
        """Close every Meta-World env this family made."""
        for env in self._envs.values():
            env.close()
        self._envs.clear()
        self._active = None

    @staticmethod
    def _metaworld_task(task: dict[str, Any]) -> Any:
        """The Meta-World ``Task`` of a task dict, as Meta-World's ML benchmarks encode it (goal hidden)."""
        data = {
            "rand_vec": np.array(task["rand_vec"], dtype=np.float64),
            "env_cls": _ALL_CLASSES[task["class"]],
            "partially_observable": True,
        }
        return metaworld.Task(env_name=task["class"], data=pickle.dumps(data))


class MetaWorldML1Env(_MetaWorldEnv):
    """Meta-World ML1: one task class, 50 training goals and 50 different test goals (see the module docstring).

    Args:
        task_class: The Meta-World task class, e.g. ``"reach-v3"``, ``"push-v3"``, ``"pick-place-v3"`` (Meta-World's
            ``env_name``).
        **kwargs: Rendering options, as :class:`_MetaWorldEnv`.

    Raises:
        ValueError: If ``task_class`` is not a Meta-World v3 task class.
    """

    benchmark = "ML1"

    def __init__(self, task_class: str = "reach-v3", **kwargs: Any) -> None:
        if task_class not in _ALL_CLASSES:
            raise ValueError(
                f"unknown Meta-World task class {task_class!r}; the classes are {', '.join(sorted(_ALL_CLASSES))}"
            )
        self.task_class = task_class
        super().__init__(**kwargs)

    def classes(self) -> tuple[list[str], list[str]]:
        """``([task_class], [task_class])``: ML1 tests on new goals of its training class."""
        return [self.task_class], [self.task_class]

    def _benchmark_tasks(self, seed: int) -> tuple[tuple[dict[str, Any], ...], ...]:
        return benchmark_tasks("ML1", seed, self.task_class)


class MetaWorldML10Env(_MetaWorldEnv):
    """Meta-World ML10: 10 training classes, 5 held-out test classes (see the module docstring).

    Args:
        **kwargs: Rendering options, as :class:`_MetaWorldEnv`.
    """

    benchmark = "ML10"


class MetaWorldML45Env(_MetaWorldEnv):
    """Meta-World ML45: 45 training classes, 5 held-out test classes (see the module docstring).

    Args:
        **kwargs: Rendering options, as :class:`_MetaWorldEnv`.
    """

    benchmark = "ML45"


def _is_finite(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
