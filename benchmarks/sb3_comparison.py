"""Table 2: updates per second of our plain TD3 next to Stable-Baselines3's TD3, in the same run.

Run: ``python benchmarks/sb3_comparison.py [--threads 1] [--repeats 5] [--updates 100] [--fill 50000] [--quick]``
(not part of the test run; ``python benchmarks/run_all.py`` prints every table).

Stable-Baselines3 is an optional benchmark dependency (``pip install stable-baselines3``; check with
``pip install --dry-run`` that it leaves torch alone). Without it the SB3 row reads "not installed" and the rest of
the table is still measured.

Both sides use SB3's current TD3 defaults, read from the installed SB3 at run time (``TD3.__init__``'s defaults and
the networks it builds: 400x300 actor and critics, batch 256, Adam lr 1e-3, policy_delay 2, tau 0.005, gamma 0.99),
on a HalfCheetah-v5-shaped problem (obs 17, action 6) whose replay buffers hold ``--fill`` identical random
transitions. SB3 runs ``TD3.train(gradient_steps=N, batch_size=256)``, which samples its replay buffer at every
gradient step; ours is ``TD3Agent(context=None)`` through ``td3_update``, sampling an ``EpisodeReplay`` at every
update (the like-for-like row), and, for reference, on one fixed batch. An update is counted alike on both sides: a
critic step every update, an actor step and the target update every second one. Repetitions are interleaved.

Target : ours (with sampling) >= 1.5x SB3.
"""

from __future__ import annotations

import argparse
import inspect
from typing import Any

import gymnasium
import numpy as np
import torch
from _common import (
    OurUpdate,
    Sizes,
    interleaved_rates,
    main_for,
    repeat,
    table,
    target_cell,
    td3_defaults,
    title,
)
from rich.table import Table

from mql_lightning.data.replay import EpisodeReplay

OBS, ACT = 17, 6  # gymnasium HalfCheetah-v5
TARGET_SPEEDUP = 1.5
WARMUP_UPDATES = 10
#: SB3 2.x defaults (``stable_baselines3/td3``), used only when SB3 is not installed to read them from.
FALLBACK_DEFAULTS: dict[str, Any] = {"hidden": (400, 300), "batch_size": 256, "learning_rate": 1e-3}


class _HalfCheetahShapes(gymnasium.Env):
    """An env with HalfCheetah-v5's spaces: SB3 builds its networks from an env's spaces; it is never stepped."""

    observation_space = gymnasium.spaces.Box(-np.inf, np.inf, (OBS,), np.float32)
    action_space = gymnasium.spaces.Box(-1.0, 1.0, (ACT,), np.float32)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """This benchmark's own flags."""
    p.add_argument("--updates", type=int, default=100, help="updates per timed repetition (rounded up to even)")
    p.add_argument("--fill", type=int, default=50_000, help="transitions in each replay buffer")


def make_sb3(fill: dict[str, np.ndarray]) -> tuple[Any, dict[str, Any]] | None:
    """An SB3 TD3 with default settings and a filled replay buffer, and the defaults it runs with.

    Args:
        fill: The transitions to store (``obs``, ``next_obs``, ``action``, ``reward``, ``done``).

    Returns:
        ``(model, defaults)``, or ``None`` if Stable-Baselines3 is not installed.
    """
    try:  # optional dependency, imported only here
        import stable_baselines3
        from stable_baselines3.common.logger import Logger
    except ImportError:
        return None
    signature = inspect.signature(stable_baselines3.TD3.__init__).parameters
    model = stable_baselines3.TD3("MlpPolicy", _HalfCheetahShapes(), device="cpu", seed=0)
    model.set_logger(Logger(folder=None, output_formats=[]))  # train() records its losses; keep them in memory
    linears = [m for m in model.actor.mu if isinstance(m, torch.nn.Linear)]
    defaults = {
        "hidden": tuple(layer.out_features for layer in linears[:-1]),
        "batch_size": signature["batch_size"].default,
        "learning_rate": signature["learning_rate"].default,
        "td3": ", ".join(f"{name} {signature[name].default:g}" for name in ("gamma", "tau", "policy_delay")),
        "sb3_version": stable_baselines3.__version__,
    }
    for i in range(len(fill["obs"])):
        model.replay_buffer.add(
            fill["obs"][i : i + 1], fill["next_obs"][i : i + 1], fill["action"][i : i + 1],
            fill["reward"][i : i + 1], fill["done"][i : i + 1], [{}],
        )
    return model, defaults


def random_transitions(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``n`` random HalfCheetah-shaped transitions (float32; done 1% of the time)."""
    rng = np.random.default_rng(seed)
    obs = rng.standard_normal((n + 1, OBS)).astype(np.float32)
    return {
        "obs": obs[:-1],
        "next_obs": obs[1:],
        "action": rng.uniform(-1, 1, (n, ACT)).astype(np.float32),
        "reward": rng.standard_normal(n).astype(np.float32),
        "done": (rng.random(n) < 0.01).astype(np.float32),
    }


def make_replay(fill: dict[str, np.ndarray], chunk: int = 1000) -> EpisodeReplay:
    """One-task ``EpisodeReplay`` (history 1: plain TD3 needs none) holding ``fill`` in episodes of ``chunk``."""
    n = len(fill["obs"])
    replay = EpisodeReplay(1, n, OBS, ACT, 1)
    for start in range(0, n, chunk):
        s = slice(start, min(start + chunk, n))
        replay.add_episode(0, fill["obs"][s], fill["action"][s], fill["reward"][s], fill["next_obs"][s],
                           fill["done"][s] > 0)
    return replay


def tables(args: argparse.Namespace) -> list[Table]:
    """Measure and build Table 2."""
    updates = 10 if args.quick else args.updates
    updates += updates % 2
    fill = random_transitions(2_000 if args.quick else args.fill)
    sb3 = make_sb3(fill)
    torch.set_num_threads(args.threads)  # whatever SB3's construction did, measure both sides alike
    defaults = sb3[1] if sb3 is not None else FALLBACK_DEFAULTS
    sizes = Sizes(OBS, ACT, history=1, gru_hidden=0, hidden=defaults["hidden"], batch=defaults["batch_size"],
                  lr=defaults["learning_rate"])

    replay, generator = make_replay(fill), torch.Generator().manual_seed(0)
    fixed_batch = replay.sample(sizes.batch, generator)
    sampled, fixed = OurUpdate(sizes, context=False), OurUpdate(sizes, context=False)
    steps = {
        "ours_sampled": lambda: sampled(replay.sample(sizes.batch, generator)),
        "ours_fixed": lambda: fixed(fixed_batch),
    }
    work = {name: repeat(step, updates) for name, step in steps.items()}
    if sb3 is not None:
        model = sb3[0]
        model.train(gradient_steps=WARMUP_UPDATES, batch_size=sizes.batch)

        def sb3_repetition() -> int:
            model.train(gradient_steps=updates, batch_size=sizes.batch)
            return updates

        work["sb3"] = sb3_repetition
    for step in steps.values():
        repeat(step, WARMUP_UPDATES)()
    rates = interleaved_rates(work, args.repeats)

    if sb3 is not None:
        version = f"SB3 {defaults['sb3_version']}"
        source = f"SB3's defaults, read from the installed package (SB3: {defaults['td3']})"
    else:
        version, source = "SB3 not installed", "SB3's documented defaults"
    t = table(
        title(f"2. Plain TD3 vs Stable-Baselines3, HalfCheetah-v5 shapes ({version})", args,
              f"{updates} updates per repetition"),
        ["implementation", "updates/s", "ms/update", "vs SB3", "target (>= 1.5x SB3)"],
        caption=f"{sizes.describe()}, {td3_defaults()}: {source}; both replay buffers hold {len(fill['obs']):,} "
        "random transitions; update = critic step (+ actor step and targets every 2nd)",
    )
    sb3_rate = rates.get("sb3")
    if sb3_rate is None:
        t.add_row("SB3 TD3.train (samples its ReplayBuffer)", "not installed", "", "", "")
    else:
        t.add_row("SB3 TD3.train (samples its ReplayBuffer)", f"{sb3_rate:.1f}", f"{1000 / sb3_rate:.2f}", "1.00x", "")
    for label, key, has_target in (
        ("ours, td3_update + EpisodeReplay.sample (like for like)", "ours_sampled", True),
        ("ours, td3_update on a fixed batch (no sampling)", "ours_fixed", False),
    ):
        rate = rates[key]
        ratio = f"{rate / sb3_rate:.2f}x" if sb3_rate else "n/a"
        target = ""
        if has_target:
            target = target_cell(rate / sb3_rate, TARGET_SPEEDUP, "x") if sb3_rate else "n/a (SB3 not installed)"
        t.add_row(label, f"{rate:.1f}", f"{1000 / rate:.2f}", ratio, target)
    return [t]


def main() -> None:
    """Command-line entry point."""
    main_for(__doc__, add_arguments, tables)


if __name__ == "__main__":
    main()
