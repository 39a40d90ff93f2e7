"""Updates per second of the TD3-context update (critic step every update, actor + targets every policy_delay).

Run: ``python benchmarks/update_throughput.py`` (not part of the test run). Prints one table: the median of
``--repeats`` timings of ``--updates`` updates each, for the point-robot default and for HalfCheetah-Vel sizes
(obs 20, act 6, history 20, GRU 20, 300x300 networks, batch 256), plain TD3 next to TD3-context.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from rich.console import Console
from rich.table import Table

from mql_lightning.data.replay import ReplayBatch
from mql_lightning.modules.context import ContextEncoder
from mql_lightning.modules.losses import actor_loss, critic_loss
from mql_lightning.modules.td3 import TD3Agent

SETTINGS = {
    # name: (obs, act, history, gru hidden, mlp hidden, batch)
    "point robot (default)": (2, 2, 10, 20, 128, 256),
    "HalfCheetah-Vel sizes": (20, 6, 20, 20, 300, 256),
}


def updates_per_second(obs: int, act: int, hist: int, gru: int, hidden: int, batch: int, context: bool,
                       updates: int, repeats: int) -> float:
    """Median updates/s over ``repeats`` timed runs of ``updates`` updates on a fixed random batch."""
    torch.manual_seed(0)
    agent = TD3Agent(obs, act, context=(lambda d: ContextEncoder(d, gru)) if context else None,
                     hidden_sizes=(hidden, hidden))
    c = act + 1 + obs
    data = ReplayBatch(torch.randn(batch, obs), torch.rand(batch, act) * 2 - 1, torch.randn(batch),
                       torch.randn(batch, obs), torch.zeros(batch), torch.zeros(batch, dtype=torch.long),
                       torch.randn(batch, hist, c), torch.randn(batch, hist, c))
    actor_opt = torch.optim.Adam(list(agent.actor_parameters()), 1e-3)
    critic_params = list(agent.critic_parameters())
    critic_opt = torch.optim.Adam(critic_params, 1e-3)
    generator = torch.Generator().manual_seed(0)

    def update(i: int) -> None:
        loss, _ = critic_loss(agent, data, generator)
        critic_opt.zero_grad(set_to_none=True)
        loss.backward()
        critic_opt.step()
        if i % agent.policy_delay == 0:
            for p in critic_params:
                p.requires_grad_(False)
            loss, _ = actor_loss(agent, data)
            actor_opt.zero_grad(set_to_none=True)
            loss.backward()
            actor_opt.step()
            for p in critic_params:
                p.requires_grad_(True)
            agent.update_targets()

    for i in range(10):  # warm-up
        update(i)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(updates):
            update(i)
        rates.append(updates / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--updates", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    table = Table(title=f"TD3 update throughput (torch {torch.__version__}, {args.threads} thread(s), "
                        f"median of {args.repeats} x {args.updates} updates)")
    for column in ("setting", "plain TD3 updates/s", "TD3-context updates/s"):
        table.add_column(column)
    for name, sizes in SETTINGS.items():
        plain = updates_per_second(*sizes, context=False, updates=args.updates, repeats=args.repeats)
        ctx = updates_per_second(*sizes, context=True, updates=args.updates, repeats=args.repeats)
        table.add_row(name, f"{plain:.1f}", f"{ctx:.1f}")
    Console().print(table)


if __name__ == "__main__":
    main()
