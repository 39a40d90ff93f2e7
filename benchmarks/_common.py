"""Shared plumbing of the benchmark scripts: command line, timing, the benchmark batch, and rich tables.

Not a benchmark itself; the scripts next to it import it (they run as ``python benchmarks/<name>.py``, so this
directory is on ``sys.path``).
"""

from __future__ import annotations

import argparse
import functools
import inspect
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from mql_lightning.data.replay import ReplayBatch
from mql_lightning.modules.agent import TD3Agent
from mql_lightning.modules.context import ContextEncoder
from mql_lightning.modules.td3 import frozen, td3_update

# Wide enough for every table when the output is piped to a file (rich falls back to 80 columns there).
CONSOLE = Console() if Console().is_terminal else Console(width=160)


@dataclass(frozen=True)
class Sizes:
    """Problem sizes of a TD3(-context) update benchmark."""

    obs: int
    act: int
    history: int
    gru_hidden: int
    hidden: tuple[int, ...]
    batch: int
    lr: float = 1e-3
    policy_noise: float = 0.2

    def describe(self) -> str:
        """The sizes in one line, for table captions."""
        context = f"H {self.history}, GRU {self.gru_hidden}, " if self.gru_hidden else ""
        return (
            f"obs {self.obs}, act {self.act}, {context}{'x'.join(map(str, self.hidden))}, batch {self.batch}, "
            f"fused Adam lr {self.lr:g}, policy noise {self.policy_noise:g}"
        )


#: HalfCheetah-Vel as configs/cheetah_vel.yaml ships it (the authors' settings: history 20, GRU 15, 300x300 networks,
#: batch 256, lr 1e-3, policy noise 0.3; Table 1 of the paper lists GRU 20).
CHEETAH_VEL = Sizes(obs=20, act=6, history=20, gru_hidden=15, hidden=(300, 300), batch=256, policy_noise=0.3)


# ------------------------------------------------------------------------------------------------- command line
def parser(description: str | None, conflict_handler: str = "error") -> argparse.ArgumentParser:
    """The flags every benchmark shares: ``--threads``, ``--repeats``, ``--quick``.

    Args:
        description: Shown by ``--help`` (the script's docstring).
        conflict_handler: ``"resolve"`` lets several scripts' flags of the same name and meaning be added to one
            parser (``run_all.py``).
    """
    p = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
        conflict_handler=conflict_handler,
    )
    # One thread by default: docs/design.md#precision-and-threads.
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--repeats", type=int, default=5, help="timed repetitions per measurement; tables show medians")
    p.add_argument("--quick", action="store_true", help="smoke run: much less work per repetition")
    return p


def setup(args: argparse.Namespace) -> None:
    """Apply the thread count (before any torch work, so every measurement runs with it)."""
    if args.repeats < 1:
        raise SystemExit("--repeats must be >= 1")
    torch.set_num_threads(args.threads)


def title(name: str, args: argparse.Namespace, detail: str = "") -> str:
    """A table title stating what every table must state: torch version, thread count, repetitions."""
    extra = f"; {detail}" if detail else ""
    return (
        f"{name}\n(torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
        f"median of {args.repeats} repetitions{extra})"
    )


# ------------------------------------------------------------------------------------------------------- timing
def interleaved_rates(work: dict[str, Callable[[], int]], repeats: int) -> dict[str, float]:
    """Median rate (units per second) of each workload, its repetitions interleaved with the others'.

    Interleaving (A, B, C, A, B, C, ...) exposes every workload to the same background load, which matters on a
    shared CPU more than any single measurement does.

    Args:
        work: Name -> callable doing one repetition and returning how many units (updates, steps) it did.
        repeats: Repetitions per workload.

    Returns:
        Name -> median of units / second.
    """
    samples: dict[str, list[float]] = {name: [] for name in work}
    for _ in range(repeats):
        for name, fn in work.items():
            start = time.perf_counter()
            units = fn()
            samples[name].append(units / (time.perf_counter() - start))
    return {name: statistics.median(rates) for name, rates in samples.items()}


# -------------------------------------------------------------------------------------------------- the update
def random_batch(sizes: Sizes, seed: int = 0) -> ReplayBatch:
    """A fixed random batch laid out as :meth:`EpisodeReplay.sample` lays it out: views of one window tensor.

    Args:
        sizes: Problem sizes.
        seed: Seed of the batch's values.

    Returns:
        The batch (obs, action, reward and both histories are views into one ``(B, H + 1, C)`` tensor).
    """
    gen = torch.Generator().manual_seed(seed)
    b, a = sizes.batch, sizes.act
    window = torch.randn(b, sizes.history + 1, a + 1 + sizes.obs, generator=gen)
    window[:, :, :a] = window[:, :, :a].tanh()  # actions live in [-1, 1]
    current = window[:, -1]
    return ReplayBatch(
        obs=current[:, a + 1 :],
        action=current[:, :a],
        reward=current[:, a],
        next_obs=torch.randn(b, sizes.obs, generator=gen),
        terminated=(torch.rand(b, generator=gen) < 0.01).float(),
        task=torch.randint(0, 10, (b,), generator=gen),
        history=window[:, :-1],
        next_history=window[:, 1:],
    )


class OurUpdate:
    """One of our TD3(-context) updates per call, through the public :func:`td3_update` with fused Adam (as shipped).

    Args:
        sizes: Problem sizes (``gru_hidden`` is ignored when ``context`` is false).
        context: TD3-context (a :class:`ContextEncoder`) or plain TD3.
        shared_context: One encoder for actor and critic instead of the faithful separate ones.
        compiled: The context GRUs' compiled kernel (the default) or the torch implementation.
        seed: Seed of the initial weights and of the target-smoothing noise.
        encoder: Factory ``(input_dim, hidden_size) -> encoder`` used instead of :class:`ContextEncoder`.
    """

    def __init__(
        self,
        sizes: Sizes,
        context: bool = True,
        shared_context: bool = False,
        compiled: bool = True,
        seed: int = 0,
        encoder: Callable[[int, int], nn.Module] | None = None,
    ) -> None:
        torch.manual_seed(seed)
        gru = sizes.gru_hidden
        if encoder is None:
            encoder = functools.partial(ContextEncoder, implementation="compiled" if compiled else "torch")
        self.agent = TD3Agent(
            sizes.obs,
            sizes.act,
            context=(lambda d: encoder(d, gru)) if context else None,
            shared_context=shared_context,
            hidden_sizes=sizes.hidden,
            policy_noise=sizes.policy_noise,
        )
        self.actor_opt = torch.optim.Adam(self.agent.actor_parameters(), lr=sizes.lr, fused=True)
        self.critic_params = list(self.agent.critic_parameters())
        self.critic_opt = torch.optim.Adam(self.critic_params, lr=sizes.lr, fused=True)
        self.generator = torch.Generator().manual_seed(seed)
        self.count = 0

    def __call__(self, batch: ReplayBatch) -> None:
        """One update: a critic step, and every ``policy_delay``-th call an actor step and the target update."""
        self.count += 1
        td3_update(
            self.agent, batch, self.count, self.actor_opt, self.critic_opt, torch.Tensor.backward,
            freeze_critic=lambda: frozen(self.critic_params), generator=self.generator,
        )


def td3_defaults() -> str:
    """The TD3 hyper-parameters our updates run with (``TD3Agent``'s defaults, read from its signature)."""
    params = inspect.signature(TD3Agent).parameters
    return ", ".join(f"{name} {params[name].default:g}" for name in ("gamma", "tau", "policy_delay"))


def repeat(step: Callable[[], None], n: int) -> Callable[[], int]:
    """A repetition of ``n`` calls of ``step``, returning ``n`` (for :func:`interleaved_rates`)."""

    def run() -> int:
        for _ in range(n):
            step()
        return n

    return run


# ------------------------------------------------------------------------------------------------------ tables
def table(title_text: str, columns: Sequence[str], caption: str | None = None) -> Table:
    """A rich table with right-aligned numeric columns (every column but the first)."""
    t = Table(title=title_text, caption=caption, caption_justify="left")
    for i, name in enumerate(columns):
        t.add_column(name, justify="left" if i == 0 else "right")
    return t


def target_cell(value: float, target: float, unit: str = "", higher_is_better: bool = True) -> str:
    """``met (value vs target)`` or ``missed by X (value vs target)``, ``X`` the gap in the target's unit."""
    met = value >= target if higher_is_better else value <= target
    compared = f"{_num(value)}{unit} vs {_num(target)}{unit}"
    if met:
        return f"[green]met[/] ({compared})"
    return f"[red]missed by {_num(abs(target - value))}{unit}[/] ({compared})"


def _num(x: float) -> str:
    return f"{x:.2f}" if abs(x) < 10 else f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.1f}"


def show(tables: Sequence[Table]) -> None:
    """Print tables, one blank line apart."""
    for t in tables:
        CONSOLE.print(t)
        CONSOLE.print()


def main_for(
    description: str | None,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    tables: Callable[[argparse.Namespace], Sequence[Table]],
) -> None:
    """The command-line entry point of one benchmark script: parse its flags, set threads, print its tables."""
    p = parser(description)
    add_arguments(p)
    args = p.parse_args()
    setup(args)
    show(tables(args))
