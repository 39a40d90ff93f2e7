"""Table 6: the wall clock of a real ``mql fit`` run, split by what it spends it on, against a previous commit.

Run: ``python benchmarks/end_to_end.py [--threads 1] [--runs 2] [--configs cheetah_vel walker] [--baseline REV]
[--warmup 1000] [--train-steps 2000] [--val-tasks 2] [--concurrent-tasks N] [--quick]`` (not part of the test run;
``python benchmarks/run_all.py`` prints every table).

Each run is the real ``mql fit`` (``mql_lightning.cli.main``, in a child process of its own) at a shipped config
(``configs/cheetah_vel.yaml``, ``configs/walker.yaml``: networks, optimisers, data and adaptation settings as shipped)
over a short window: ``--warmup`` steps of random actions, ``--train-steps`` of training, then one validation on the
first ``--val-tasks`` validation tasks (evaluation, adaptation with the shipped settings, evaluation again) and its
checkpoint. The validation tasks adapt concurrently where the shipped default finds free cores (on 2 cores at 1 torch
thread: 2 at a time; ``--concurrent-tasks 1`` for one at a time). Changed for the window only: the warm-up length, the
budget, the validation schedule and task count, and ``min_buffer_size 0`` (the ratio of updates to environment steps
of a run past its first 100,000 steps from the start; the shipped value would make the whole window the initial
one-update-per-step phase); no progress bar.

The child times the library's own methods by wrapping them (the library has no timing of its own): each call's time
goes to one category, minus the time of timed calls inside it. Categories: updates (``training_step`` without what
follows), replay sampling, collection (training episodes; warm-up separately), evaluation (before and after
adaptation), adaptation (its data collection; its Eq. 18/19 updates, by batch size; the rest: classifier, beta,
ESS), checkpointing (the checkpoint callback's hooks), logging (the loggers), compiling the GRU kernel (or loading
it from numba's cache), and the rest (start-up, Lightning's loops). From these: environment steps per second of
training (between the end of warm-up and the validation), seconds per adapted validation task, updates per second
and samples per second of meta-training and of adaptation, and an estimate for a whole run at the config's own
validation schedule (``val_every_env_steps`` steps of training, then ``tasks_per_validation`` or all validation
tasks at the measured seconds per task, and a checkpoint).

``--baseline REV`` (default ``f43baa9``, the commit before the compiled GRU kernel; ``none`` to skip) runs the same
window on that commit's package (``git archive`` of it, put first on ``PYTHONPATH``) with its own copy of the
config, interleaved with this checkout's runs, so "before" and "after" come from the same session. Numbers are
medians over ``--runs``.

Target: HalfCheetah-Vel environment steps per second of wall time, validation included, >= 1.5x the
baseline's.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import functools
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BASELINE = "f43baa9"
TARGET_SPEEDUP = 1.5
#: Columns of the wall-time table: name -> the categories it sums (a name ending in "*" sums every category that
#: starts with it).
SHARES = {
    "updates": ("updates",),
    "replay sampling": ("replay sampling",),
    "collection": ("collection",),
    "warm-up": ("warm-up collection",),
    "adapt: data": ("adaptation: data collection",),
    "adapt: updates": ("adaptation: updates*",),
    "adapt: classifier, beta": ("adaptation: classifier, beta, ESS",),
    "evaluation": ("evaluation",),
    "waiting for adaptation threads": ("main thread waiting for adaptation threads",),
    "checkpoints": ("checkpointing",),
    "logging": ("logging",),
    "GRU kernel compile/load": ("GRU kernel compile/load",),
    "other": ("other",),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """This benchmark's own flags."""
    p.add_argument("--configs", nargs="+", default=["cheetah_vel", "walker"], help="shipped configs to run")
    p.add_argument("--baseline", default=DEFAULT_BASELINE, help="git revision to compare with ('none': skip)")
    p.add_argument("--runs", type=int, default=2, help="runs of each config and version (table: medians)")
    p.add_argument("--warmup", type=int, default=1000, help="warm-up environment steps of each run")
    p.add_argument("--train-steps", type=int, default=2000, help="training environment steps after warm-up")
    p.add_argument("--val-tasks", type=int, default=2, help="validation tasks adapted to at the validation")
    p.add_argument("--concurrent-tasks", type=int, default=None,
                   help="adaptation.concurrent_tasks of this checkout's runs (default: the shipped default)")


# ------------------------------------------------------------------------------------------------ the child run
class _Clock:
    """Exclusive seconds and call counts per category, from wrapped methods; time marks of the run's phases.

    Both clocks: wall time, and CPU time (what the run got of the CPU, however busy the machine). A call's CPU time
    is its own thread's; the marks and the totals read the whole process's. Calls timed in other threads (held-out
    tasks adapting concurrently) run beside the main thread: their seconds count in their categories but are not
    part of the main thread's wall time, so ``in_threads`` keeps them apart for "other".
    """

    CLOCKS: ClassVar[dict[str, Callable[[], float]]] = {"wall": time.perf_counter, "cpu": time.thread_time}
    PROCESS: ClassVar[dict[str, Callable[[], float]]] = {"wall": time.perf_counter, "cpu": time.process_time}

    def __init__(self) -> None:
        self.seconds: dict[str, dict[str, float]] = {name: defaultdict(float) for name in self.CLOCKS}
        self.marks: dict[str, dict[str, float]] = {name: {} for name in self.CLOCKS}
        self.calls: dict[str, int] = defaultdict(int)
        self.in_threads: dict[str, float] = dict.fromkeys(self.CLOCKS, 0.0)
        self._local = threading.local()  # each thread's stack of timed calls
        self._lock = threading.Lock()

    def now(self, clocks: dict[str, Callable[[], float]] | None = None) -> dict[str, float]:
        """The readings of ``clocks`` (default: the per-call clocks)."""
        return {name: clock() for name, clock in (clocks or self.CLOCKS).items()}

    def wrap(self, owner: Any, name: str, label: str | Callable[..., str], mark: str | None = None) -> None:
        """Time ``owner.name`` under ``label`` (or ``label(*args)``); ``mark`` records the first entry, last exit."""
        original = getattr(owner, name, None)
        if original is None:  # a method this version does not have: its category stays empty
            return

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if mark is not None:
                with self._lock:
                    for clock, value in self.now(self.PROCESS).items():
                        self.marks[clock].setdefault(f"{mark} start", value)
            start = self.now()
            nested = self._local.__dict__.setdefault("nested", [])
            nested.append(dict.fromkeys(self.CLOCKS, 0.0))
            try:
                return original(*args, **kwargs)
            finally:
                end, inner = self.now(), nested.pop()
                category = label(*args, **kwargs) if callable(label) else label
                with self._lock:
                    self.calls[category] += 1
                    for clock in self.CLOCKS:
                        self.seconds[clock][category] += end[clock] - start[clock] - inner[clock]
                        if nested:
                            nested[-1][clock] += end[clock] - start[clock]
                        elif threading.current_thread() is not threading.main_thread():
                            self.in_threads[clock] += end[clock] - start[clock]
                    if mark is not None:
                        for clock, value in self.now(self.PROCESS).items():
                            self.marks[clock][f"{mark} end"] = value

        setattr(owner, name, timed)


def _instrument(clock: _Clock, state: dict[str, Any]) -> None:
    """Wrap the methods that make up a run (those this version has)."""
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from mql_lightning import adaptation
    from mql_lightning.callbacks import ReplayCheckpoint
    from mql_lightning.callbacks import adaptation as adaptation_callback
    from mql_lightning.data.datamodule import MetaRLDataModule
    from mql_lightning.data.replay import EpisodeReplay
    from mql_lightning.modules import gru
    from mql_lightning.modules.mql import MQL

    clock.wrap(MQL, "training_step", "updates")
    clock.wrap(EpisodeReplay, "sample", "replay sampling")
    clock.wrap(MetaRLDataModule, "_warm_up", "warm-up collection", mark="warm-up")
    clock.wrap(MetaRLDataModule, "_collect_iteration", "collection")
    clock.wrap(MetaRLDataModule, "evaluate", "evaluation")

    def validation_step(model: Any, *args: Any, **kwargs: Any) -> str:
        state.setdefault("env_steps_at_validation", model.trainer.datamodule.progress.env_steps)
        state["validation_tasks"] = state.get("validation_tasks", 0) + 1
        return "evaluation"

    clock.wrap(MQL, "validation_step", validation_step, mark="validation")
    clock.wrap(adaptation_callback.AdaptationCallback, "on_validation_batch_end", "evaluation", mark="validation")
    # Where the code under test looks the adaptation's steps up: mql_lightning.adaptation (its one adaptation path,
    # adapt_to_task), or the callback module that imported them by name (f43baa9 and before).
    for name, label in (("collect_adaptation_data", "adaptation: data collection"),
                        ("adapt_agent", "adaptation: classifier, beta, ESS")):
        clock.wrap(adaptation_callback if hasattr(adaptation_callback, name) else adaptation, name, label)
    # With held-out tasks adapting in threads, the main thread waits for them at the last task.
    clock.wrap(concurrent.futures.Future, "result", "main thread waiting for adaptation threads")
    clock.wrap(adaptation._ProximalTD3, "update", lambda _, batch, *a, **k: f"adaptation: updates at {len(batch.obs)}")
    for hook in [name for name in vars(ReplayCheckpoint) if name.startswith("on_")]:
        clock.wrap(ReplayCheckpoint, hook, "checkpointing")
    for logger in (CSVLogger, TensorBoardLogger):
        for name in ("log_metrics", "log_hyperparams", "save", "finalize"):
            clock.wrap(logger, name, "logging")
    clock.wrap(gru, "compiled_kernel", "GRU kernel compile/load")


def child(out: Path, mql_args: list[str]) -> None:
    """Run ``mql fit`` with ``mql_args`` in this process, timed; write the measurements to ``out`` as JSON."""
    import torch

    import mql_lightning
    from mql_lightning.cli import main

    clock, state = _Clock(), {}
    _instrument(clock, state)
    start = clock.now(clock.PROCESS)
    with contextlib.suppress(SystemExit):
        main(["fit", *mql_args])
    end = clock.now(clock.PROCESS)
    totals = {name: end[name] - start[name] for name in clock.CLOCKS}
    for name, seconds in clock.seconds.items():
        # The main thread's untimed rest (the process's, by CPU time: every thread's CPU time is in the total).
        timed = sum(seconds.values()) - (clock.in_threads[name] if name == "wall" else 0.0)
        seconds["other"] = totals[name] - timed
    marks = {name: {k: v - start[name] for k, v in clock.marks[name].items()} for name in clock.CLOCKS}
    out.write_text(json.dumps({
        "package": mql_lightning.__file__, "threads": torch.get_num_threads(), "total": totals,
        "seconds": clock.seconds, "calls": clock.calls, "marks": marks, **state,
    }))


# ----------------------------------------------------------------------------------------------- the parent
def _baseline_tree(revision: str, root: Path) -> Path:
    """The package of ``revision`` (``git archive``) under ``root``; the directory to put on ``PYTHONPATH``."""
    archive = root / "baseline.tar"
    with open(archive, "wb") as f:
        subprocess.run(["git", "-C", str(REPO), "archive", revision, "mql_lightning"], stdout=f, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(root / "baseline", filter="data")
    return root / "baseline"


def _run(tree: Path, config: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """One timed ``mql fit`` of ``tree``'s package at its ``config``, in a child process."""
    import yaml

    config_path = tree / "mql_lightning" / "configs" / f"{config}.yaml"
    warmup, train, tasks, extra = args.warmup, args.train_steps, args.val_tasks, []
    if args.quick:
        warmup, train, tasks, extra = 300, 300, 1, ["--adaptation.settings.replay_updates=10"]
    budget = warmup + train
    out = workdir / "result.json"
    mql_args = [
        f"--config={config_path}", f"--num_threads={args.threads}", "--seed_everything=0",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        f"--trainer.logger.init_args.save_dir={workdir / 'runs'}", f"--data.warmup_steps={warmup}",
        f"--data.max_env_steps={budget}", f"--data.val_every_env_steps={budget}", "--data.validate_at_start=false",
        f"--data.tasks_per_validation={tasks}", "--data.min_buffer_size=0", *extra,
    ]
    if args.concurrent_tasks is not None and tree == REPO:  # earlier commits adapt one task at a time
        mql_args.append(f"--adaptation.concurrent_tasks={args.concurrent_tasks}")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, __file__, "--child", str(out), *mql_args]
    done = subprocess.run(command, env=env, cwd=workdir, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not out.is_file():
        raise RuntimeError(f"mql fit ({config}, {tree}) failed:\n{done.stderr[-3000:]}")
    result = json.loads(out.read_text())
    if not result["package"].startswith(str(tree)):
        raise RuntimeError(f"the run imported {result['package']}, not the package under {tree}")
    shipped = yaml.safe_load(config_path.read_text())["data"]
    result["warmup"], result["config_data"] = warmup, shipped
    return result


def summarise(result: dict[str, Any], clock: str) -> dict[str, float]:
    """The table's numbers of one run, by one clock (``wall`` or ``cpu``)."""
    seconds, marks, total = result["seconds"][clock], result["marks"][clock], result["total"][clock]
    calls = result["calls"]
    train_steps = result["env_steps_at_validation"] - result["warmup"]
    train_rate = train_steps / (marks["validation start"] - marks["warm-up end"])
    per_task = (marks["validation end"] - marks["validation start"]) / result["validation_tasks"]
    shipped = result["config_data"]
    interval = shipped["val_every_env_steps"]
    tasks = shipped.get("tasks_per_validation") or shipped["num_val_tasks"]
    checkpoint = seconds.get("checkpointing", 0.0)
    row = {
        "train_rate": train_rate, "per_task": per_task,
        "run_rate": interval / (interval / train_rate + tasks * per_task + checkpoint),
        "updates_per_s": calls["updates"] / (seconds["updates"] + seconds.get("replay sampling", 0.0)),
        "batch": shipped["batch_size"], "total": total,
    }
    adapt = {k: v for k, v in seconds.items() if k.startswith("adaptation: updates at ")}
    if adapt:
        batch = max(adapt, key=lambda k: int(k.rsplit(" ", 1)[1]))
        row["adapt_updates_per_s"], row["adapt_batch"] = calls[batch] / adapt[batch], int(batch.rsplit(" ", 1)[1])
    for share, parts in SHARES.items():
        matches = [k for k in seconds for p in parts if k == p or (p.endswith("*") and k.startswith(p[:-1]))]
        row[share] = sum(seconds[k] for k in matches) / total
    return row


def measure(args: argparse.Namespace) -> dict[tuple[str, str], list[dict[str, float]]]:
    """Every run, interleaved: for each repetition, each config, this checkout then the baseline.

    Returns:
        ``(config, version) -> one row per run``, each number keyed ``"wall <name>"`` and ``"cpu <name>"``.
    """
    results: dict[tuple[str, str], list[dict[str, float]]] = defaultdict(list)
    with tempfile.TemporaryDirectory(prefix="mql-e2e-") as tmp:
        trees = {"this checkout": REPO}
        if args.baseline != "none":
            trees[f"baseline {args.baseline}"] = _baseline_tree(args.baseline, Path(tmp))
        for repetition in range(args.runs):
            for config in args.configs:
                for version, tree in trees.items():
                    workdir = Path(tempfile.mkdtemp(dir=tmp))
                    result = _run(tree, config, args, workdir)
                    row = {f"{clock} {key}": value for clock in ("wall", "cpu")
                           for key, value in summarise(result, clock).items()}
                    results[config, version].append(row)
                    print(f"[{repetition + 1}/{args.runs}] {config}, {version}: {row['wall total']:.0f} s wall, "
                          f"{row['wall train_rate']:.0f} training steps/s, {row['wall per_task']:.1f} s per "
                          f"validation task (CPU time: {row['cpu train_rate']:.0f}, {row['cpu per_task']:.1f})",
                          file=sys.stderr)
    return results


def tables(args: argparse.Namespace) -> list[Any]:
    """Run and build Tables 6 and 6b."""
    import torch
    from _common import table, target_cell

    results = measure(args)
    warmup, train, tasks = (300, 300, 1) if args.quick else (args.warmup, args.train_steps, args.val_tasks)
    setting = (f"(torch {torch.__version__}, {args.threads} thread(s), medians of {args.runs} run(s) of each, "
               "interleaved)")
    window = (f"window: {warmup} warm-up + {train} training steps, one validation on {tasks} task(s) with the shipped "
              "adaptation settings, and its checkpoint")
    rates = table(
        f"6. End to end: `mql fit` at the shipped configs\n{setting}",
        ["config, code", "train env steps/s", "s per val task", "run env steps/s (est.)", "updates/s x batch",
         "Eq. 19 updates/s x batch", "vs baseline (run, train)", "target >= 1.5x (HalfCheetah-Vel run)"],
        caption=f"{window}. Each cell: by wall time | by the process's CPU time (on an idle machine at 1 thread the "
        "two agree; on a shared one CPU time is what the run itself cost). Run estimate: env steps per second over "
        "the config's validation interval (its training at the measured rate, then its validation tasks at the "
        "measured time per task, and a checkpoint).",
    )
    shares = table(f"6b. Where the window's wall time goes (%)\n{setting}", ["config, code", "wall (s)", *SHARES],
                   caption=f"{window}; each call's time counts once, in the innermost timed activity; held-out "
                   "tasks adapting concurrently count every thread's seconds, so the shares may sum to over 100% "
                   "('waiting for adaptation threads': the main thread's wait for them after the last task)")
    for config in args.configs:
        versions = [v for c, v in results if c == config]
        medians = {v: {k: statistics.median(r[k] for r in results[config, v]) for k in results[config, v][0]}
                   for v in versions}
        base = next((medians[v] for v in versions if v.startswith("baseline")), None)
        for version in versions:
            m = medians[version]

            def both(key: str, fmt: str, m: dict[str, float] = m) -> str:
                return f"{m['wall ' + key]:{fmt}} | {m['cpu ' + key]:{fmt}}"

            versus, target = "", ""
            if base is not None and not version.startswith("baseline"):
                ratio = {c: m[f"{c} run_rate"] / base[f"{c} run_rate"] for c in ("wall", "cpu")}
                train = {c: m[f"{c} train_rate"] / base[f"{c} train_rate"] for c in ("wall", "cpu")}
                versus = " | ".join(f"{ratio[c]:.2f}x, {train[c]:.2f}x" for c in ("wall", "cpu"))
                if config == "cheetah_vel":
                    target = " | ".join(target_cell(ratio[c], TARGET_SPEEDUP, "x") for c in ("wall", "cpu"))
            adapt = ""
            if "wall adapt_batch" in m:
                adapt = f"({both('adapt_updates_per_s', '.1f')}) x {m['wall adapt_batch']:.0f}"
            rates.add_row(
                f"{config}, {version}", both("train_rate", ".0f"), both("per_task", ".1f"), both("run_rate", ".0f"),
                f"({both('updates_per_s', '.1f')}) x {m['wall batch']:.0f}", adapt, versus, target,
            )
            shares.add_row(f"{config}, {version}", f"{m['wall total']:.0f}",
                           *(f"{100 * m['wall ' + name]:.0f}" for name in SHARES))
    return [rates, shares]


def main() -> None:
    """Command-line entry point (and, with ``--child OUT ARGS...``, the timed run itself)."""
    if sys.argv[1:2] == ["--child"]:
        child(Path(sys.argv[2]), sys.argv[3:])
        return
    from _common import main_for

    main_for(__doc__, add_arguments, tables)


if __name__ == "__main__":
    main()
