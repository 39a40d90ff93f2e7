"""Table 4: environment steps per second of data collection with the context policy in the loop.

Run: ``python benchmarks/collection.py [--threads 1] [--repeats 5] [--lockstep 10] [--quick]``
(not part of the test run; ``python benchmarks/run_all.py`` prints every table).

``Collector.rollout`` drives a ``TD3Agent`` at HalfCheetah-Vel sizes (history 20, GRU hidden 20, 300x300 networks;
obs and action widths from the env) through ``mql_lightning.modules.agent.acting_policy``, with Gaussian exploration
noise on (``--noise``, the configs' 0.3), for ``mql/HalfCheetahVel-v0`` and ``mql/AntGoal-v0``: one task at a time
(``--single-episodes`` one-episode rollouts per repetition) and ``--lockstep`` tasks stepped in lockstep (one
rollout per repetition). Adding the episodes to a replay buffer is excluded. The reference is gymnasium's own
``HalfCheetah-v5`` / ``Ant-v5`` stepped with pre-drawn uniform random actions, reset on termination or truncation
(``--gym-steps`` steps per repetition); the task family's env alone in that same loop (its default task) shows how
much of the gap is the env itself. Repetitions of all four are interleaved.

A second table splits a collected step into the policy call (the adapter and the agent's forward pass), the env's
``step``/``reset`` (measured through a thin timing wrapper) and the rest, the collector's own bookkeeping (window
and trace handling, numpy <-> torch, exploration noise and clipping), from separate instrumented rollouts.

Target : lockstep collection at >= 50% of gymnasium's random-action rate for the same robot.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import gymnasium
import numpy as np
import torch
from _common import interleaved_rates, main_for, table, target_cell, title
from rich.table import Table

from mql_lightning.data.collector import Collector, Policy
from mql_lightning.envs import make_env
from mql_lightning.modules.agent import TD3Agent, acting_policy
from mql_lightning.modules.context import ContextEncoder

#: (task family, gymnasium's env of the same robot)
ROBOTS = (("mql/HalfCheetahVel-v0", "HalfCheetah-v5"), ("mql/AntGoal-v0", "Ant-v5"))
HISTORY, GRU_HIDDEN, HIDDEN = 20, 20, (300, 300)  # HalfCheetah-Vel sizes
TARGET_FRACTION = 0.5
QUICK_EPISODE_STEPS = 20


def add_arguments(p: argparse.ArgumentParser) -> None:
    """This benchmark's own flags."""
    p.add_argument("--lockstep", type=int, default=10, help="episodes stepped in lockstep (one policy call per step)")
    p.add_argument("--single-episodes", type=int, default=2, help="one-task rollouts per repetition")
    p.add_argument("--gym-steps", type=int, default=2000, help="random-action gymnasium steps per repetition")
    p.add_argument("--noise", type=float, default=0.3, help="exploration noise std (the configs' value)")


class _Clock:
    """Seconds spent in the policy and in the envs, for the breakdown."""

    def __init__(self) -> None:
        self.policy = 0.0
        self.env = 0.0

    def timed_policy(self, policy: Policy) -> Policy:
        """``policy``, adding its wall time to :attr:`policy`."""

        def timed(obs: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
            start = time.perf_counter()
            out = policy(obs, history)
            self.policy += time.perf_counter() - start
            return out

        return timed


class _TimedEnv(gymnasium.Wrapper):
    """Adds the wall time of ``step`` and ``reset`` to a :class:`_Clock`."""

    def __init__(self, env: gymnasium.Env, clock: _Clock) -> None:
        super().__init__(env)
        self.clock = clock

    def step(self, action: Any) -> Any:
        """Timed ``step``."""
        start = time.perf_counter()
        out = self.env.step(action)
        self.clock.env += time.perf_counter() - start
        return out

    def reset(self, **kwargs: Any) -> Any:
        """Timed ``reset``."""
        start = time.perf_counter()
        out = self.env.reset(**kwargs)
        self.clock.env += time.perf_counter() - start
        return out


class _Robot:
    """Everything the measurements of one task family need: tasks, agent, policy, env factory."""

    def __init__(self, env_id: str, quick: bool) -> None:
        self.kwargs = {"max_episode_steps": QUICK_EPISODE_STEPS} if quick else {}
        probe = make_env(env_id, **self.kwargs)
        self.obs_dim = int(np.prod(probe.observation_space.shape))
        self.action_dim = int(np.prod(probe.action_space.shape))
        self.tasks = probe.unwrapped.sample_tasks(64, seed=0)
        probe.close()
        self.env_id = env_id
        torch.manual_seed(0)
        agent = TD3Agent(self.obs_dim, self.action_dim, context=lambda d: ContextEncoder(d, GRU_HIDDEN),
                         hidden_sizes=HIDDEN)
        self.policy = acting_policy(agent)
        self.seed = 0

    def env_fn(self, clock: _Clock | None = None) -> Callable[[], gymnasium.Env]:
        """A factory of this family's env, timed by ``clock`` if given."""
        if clock is None:
            return lambda: make_env(self.env_id, **self.kwargs)
        return lambda: _TimedEnv(make_env(self.env_id, **self.kwargs), clock)

    def rollouts(self, collector: Collector, n: int, episodes: int, noise: float, policy: Policy | None = None) -> int:
        """``episodes`` rollouts of ``n`` lockstep tasks; returns the env steps taken."""
        steps = 0
        for _ in range(episodes):
            self.seed += 1
            tasks = [self.tasks[(self.seed * n + k) % len(self.tasks)] for k in range(n)]
            out = collector.rollout(tasks, list(range(n)), np.random.default_rng(self.seed), policy or self.policy,
                                    noise)
            steps += sum(ep.length for ep in out)
        return steps


def gym_random(env_id: str, steps: int) -> Callable[[], int]:
    """A repetition of ``steps`` gymnasium steps with pre-drawn uniform random actions."""
    env = gymnasium.make(env_id)
    env.reset(seed=0)
    space = env.action_space
    actions = np.random.default_rng(0).uniform(space.low, space.high, (steps, *space.shape)).astype(space.dtype)

    def run() -> int:
        for action in actions:
            _, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                env.reset()
        return steps

    return run


def breakdown(robot: _Robot, modes: dict[str, tuple[int, int]], noise: float, repeats: int) -> dict[str, dict]:
    """Median microseconds per env step in the policy, the env and the collector's bookkeeping (the rest).

    Args:
        robot: The task family.
        modes: Label -> (lockstep width, rollouts per repetition); their repetitions are interleaved.
        noise: Exploration noise std.
        repeats: Repetitions per mode.

    Returns:
        Label -> ``{"policy", "env", "bookkeeping", "total"}`` in microseconds per env step.
    """
    clock = _Clock()
    policy = clock.timed_policy(robot.policy)
    collectors = {label: Collector(robot.env_fn(clock), robot.obs_dim, robot.action_dim, HISTORY) for label in modes}
    for label, (n, _) in modes.items():  # warm-up: env creation, first policy call
        robot.rollouts(collectors[label], n, 1, noise, policy)
    samples: dict[str, dict[str, list[float]]] = {label: {} for label in modes}
    for _ in range(repeats):
        for label, (n, episodes) in modes.items():
            clock.policy = clock.env = 0.0
            start = time.perf_counter()
            steps = robot.rollouts(collectors[label], n, episodes, noise, policy)
            total = time.perf_counter() - start
            parts = {"policy": clock.policy, "env": clock.env, "bookkeeping": total - clock.policy - clock.env,
                     "total": total}
            for key, seconds in parts.items():
                samples[label].setdefault(key, []).append(1e6 * seconds / steps)
    for collector in collectors.values():
        collector.close()
    return {label: {k: statistics.median(v) for k, v in parts.items()} for label, parts in samples.items()}


def tables(args: argparse.Namespace) -> list[Table]:
    """Measure and build Table 4 and its breakdown."""
    n = args.lockstep
    single_episodes = 1 if args.quick else args.single_episodes
    gym_steps = 200 if args.quick else args.gym_steps
    episode = f"{QUICK_EPISODE_STEPS}-step (--quick)" if args.quick else "200-step"
    main_table = table(
        title("4. Collection: env steps/s with the context policy in the loop", args,
              f"{episode} episodes, replay adding excluded"),
        ["robot", "collection", "env steps/s", "vs gymnasium random", "target (lockstep >= 50%)"],
        caption=f"TD3Agent at HalfCheetah-Vel sizes (H {HISTORY}, GRU {GRU_HIDDEN}, {HIDDEN[0]}x{HIDDEN[1]}) acting "
        f"through Collector.rollout with exploration noise {args.noise}; gymnasium: pre-drawn uniform random actions",
    )
    split = table(
        title(f"4b. Where a collected step goes ({n} lockstep / 1 task), microseconds per env step", args),
        ["robot", "collection", "policy", "env step/reset", "collector bookkeeping", "total"],
        caption="policy = the acting_policy call (agent forward); bookkeeping = the rest of Collector.rollout",
    )
    for env_id, gym_id in ROBOTS:
        robot = _Robot(env_id, args.quick)
        single, lockstep = (Collector(robot.env_fn(), robot.obs_dim, robot.action_dim, HISTORY) for _ in range(2))
        work = {
            "gym": gym_random(gym_id, gym_steps),
            "family_random": gym_random(env_id, gym_steps),
            "single": lambda r=robot, c=single: r.rollouts(c, 1, single_episodes, args.noise),
            "lockstep": lambda r=robot, c=lockstep: r.rollouts(c, n, 1, args.noise),
        }
        for run in work.values():  # warm-up: env creation, first policy call
            run()
        rates = interleaved_rates(work, args.repeats)
        single.close()
        lockstep.close()
        main_table.add_row(env_id, f"gymnasium {gym_id}, random actions", f"{rates['gym']:,.0f}", "100%", "")
        main_table.add_row("", f"{env_id} alone, random actions (same loop)", f"{rates['family_random']:,.0f}",
                           f"{rates['family_random'] / rates['gym']:.0%}", "")
        main_table.add_row("", "Collector, 1 task at a time", f"{rates['single']:,.0f}",
                           f"{rates['single'] / rates['gym']:.0%}", "")
        main_table.add_row("", f"Collector, {n} tasks in lockstep", f"{rates['lockstep']:,.0f}",
                           f"{rates['lockstep'] / rates['gym']:.0%}",
                           target_cell(100 * rates["lockstep"] / rates["gym"], 100 * TARGET_FRACTION, "%"),
                           end_section=True)
        modes = {f"{n} in lockstep": (n, 1), "1 task": (1, single_episodes)}
        for k, (label, us) in enumerate(breakdown(robot, modes, args.noise, args.repeats).items()):
            split.add_row(env_id if k == 0 else "", label,
                          *(f"{us[p]:.0f} ({us[p] / us['total']:.0%})" for p in ("policy", "env", "bookkeeping")),
                          f"{us['total']:.0f}", end_section=k == len(modes) - 1)
    return [main_table, split]


def main() -> None:
    """Command-line entry point."""
    main_for(__doc__, add_arguments, tables)


if __name__ == "__main__":
    main()
