"""Meta-RL task families as gymnasium environments, registered under the ``mql/`` namespace.

Importing this package registers the families, so ``gymnasium.make("mql/PointRobot-v0")`` works afterwards.
Nothing here imports torch: environments only deal in numpy arrays and plain Python tasks.
"""

from __future__ import annotations

import threading
from typing import Any

import gymnasium

from mql_lightning.envs.base import MetaEnv
from mql_lightning.envs.tasks import TaskSplits, make_task_splits

__all__ = ["MetaEnv", "TaskSplits", "make_env", "make_task_splits", "registered_families"]

_NAMESPACE = "mql/"

# Envs are built one at a time: held-out tasks adapt in threads (mql_lightning.callbacks.AdaptationCallback), and
# MuJoCo's XML parser and Meta-World's benchmark construction are not documented as thread-safe (mj_loadXML keeps a
# process-wide "last model"). Building an env is rare and short beside the steps taken in it.
_CONSTRUCTION = threading.Lock()

# id -> (entry point, episode length in steps)
_FAMILIES: dict[str, tuple[str, int]] = {
    "mql/PointRobot-v0": ("mql_lightning.envs.point_robot:PointRobotEnv", 20),
    "mql/SparsePointRobot-v0": ("mql_lightning.envs.point_robot:SparsePointRobotEnv", 20),
    "mql/HalfCheetahVel-v0": ("mql_lightning.envs.half_cheetah:HalfCheetahVelEnv", 200),
    "mql/HalfCheetahFwdBack-v0": ("mql_lightning.envs.half_cheetah:HalfCheetahFwdBackEnv", 200),
    "mql/AntFwdBack-v0": ("mql_lightning.envs.ant:AntFwdBackEnv", 200),
    "mql/AntGoal-v0": ("mql_lightning.envs.ant:AntGoalEnv", 200),
    "mql/HumanoidDir-v0": ("mql_lightning.envs.humanoid:HumanoidDirEnv", 200),
    "mql/Walker2DParams-v0": ("mql_lightning.envs.walker:Walker2DParamsEnv", 200),
    # Meta-World (the optional `metaworld` extra): 500 steps is Meta-World's own episode length (max_path_length).
    "mql/MetaWorld-ML1-v0": ("mql_lightning.envs.meta_world:MetaWorldML1Env", 500),
    "mql/MetaWorld-ML10-v0": ("mql_lightning.envs.meta_world:MetaWorldML10Env", 500),
    "mql/MetaWorld-ML45-v0": ("mql_lightning.envs.meta_world:MetaWorldML45Env", 500),
}

for _env_id, (_entry_point, _max_steps) in _FAMILIES.items():
    # Re-importing (e.g. importlib.reload in tests or notebooks) must not re-register: gymnasium warns on overrides.
    if _env_id not in gymnasium.registry:
        gymnasium.register(id=_env_id, entry_point=_entry_point, max_episode_steps=_max_steps)


def registered_families() -> list[str]:
    """The ids of all registered ``mql/`` task families.

    Returns:
        Sorted environment ids in the ``mql/`` namespace.
    """
    return sorted(env_id for env_id in gymnasium.registry if env_id.startswith(_NAMESPACE))


def make_env(env_id: str, **kwargs: Any) -> gymnasium.Env:
    """Make a task-family env with ``gymnasium.make``, with clear errors.

    Args:
        env_id: A registered id such as ``"mql/PointRobot-v0"``.
        **kwargs: Passed to ``gymnasium.make`` (e.g. ``max_episode_steps``, env constructor arguments).

    Returns:
        The wrapped env (``TimeLimit`` and gymnasium's default wrappers); ``env.unwrapped`` is a :class:`MetaEnv`.

    Raises:
        ValueError: If ``env_id`` is not registered, does not name a meta-RL task family, its constructor does
            not take one of ``kwargs``, or it needs a package that is not installed (Meta-World).
    """
    try:
        with _CONSTRUCTION:
            env = gymnasium.make(env_id, **kwargs)
    except (gymnasium.error.UnregisteredEnv, gymnasium.error.DeprecatedEnv) as err:
        known = ", ".join(registered_families())
        raise ValueError(f"unknown task family {env_id!r}; registered mql families: {known}") from err
    except TypeError as err:
        if not kwargs:
            raise
        # A keyword the family's constructor does not take: a config mistake (data.env_kwargs), not a bug.
        raise ValueError(f"task family {env_id!r} does not accept the keyword arguments {kwargs}: {err}") from err
    except ImportError as err:
        # An optional dependency of the family (the message says which and how to install it), not a bug.
        raise ValueError(f"task family {env_id!r} cannot be loaded: {err}") from err
    if not isinstance(env.unwrapped, MetaEnv):
        env.close()
        # The id (a value) names the wrong kind of env, hence ValueError, as for an unknown id.
        raise ValueError(f"{env_id!r} is not a meta-RL task family (its env is not a MetaEnv)")
    return env
