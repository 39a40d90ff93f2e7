"""``mql plot``: learning curves and adaptation statistics from runs' CSV logs.

Usage::

    mql plot runs/point_mql runs/point_td3 --out figures/point
    mql plot runs/cheetah_vel/version_0 runs/cheetah_vel/version_1 --labels MQL

Every directory given is searched for ``metrics.csv`` files (the CSV logger's output), so a run directory, a folder of
seeds (``runs/<name>``) or several of each all work. Runs whose ``config.yaml`` agree on everything but the seed and
the run directory are one curve: the mean over seeds with a band from the lowest to the highest seed. Writes

* ``return.png``: validation return (after adaptation) against environment steps, and dashed the return before
  adaptation: the pre-adaptation curve of an MQL run is TD3-context (same meta-training, no adaptation);
* ``success.png``: the same for the success rate, when the runs have one (Meta-World);
* ``adaptation.png``: lambda, ESS and mean beta of every validation task over training (thin lines: tasks of the
  first seed; thick: mean over tasks and seeds);
* ``summary.csv``: the plotted numbers (step, curve, seeds, mean / min / max of every statistic), small enough to
  commit next to a results page;
* ``runs.csv``: every run's own validation statistics (curve, run directory, seed, step), the per-seed numbers.

Needs matplotlib: ``pip install "mql-lightning[plot]"``.
"""

from __future__ import annotations

import argparse
import csv
import math
import re
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

STATS = ("return", "return_pre_adapt", "lambda", "ess", "beta_mean", "success", "success_pre_adapt")
"""Validation statistics read from the logs (``val/<name>`` and ``val/task_<k>/<name>``)."""
_SUCCESS_STATS = ("success", "success_pre_adapt")
_TASK_COLUMN = re.compile(r"^val/task_(\d+)/(\w+)$")
# Parts of a run's config that differ between seeds of one experiment, not between experiments.
_PER_RUN_KEYS = ("seed_everything", "ckpt_path")


@dataclass
class Run:
    """One run's validation records: per environment step, the aggregate and per-task statistics."""

    path: Path
    name: str
    config_key: str
    seed: int | None = None
    steps: list[int] = field(default_factory=list)
    values: dict[str, list[float]] = field(default_factory=dict)
    tasks: dict[str, dict[int, list[float]]] = field(default_factory=dict)


@dataclass
class Curve:
    """Runs of one configuration (seeds), plotted as one curve."""

    label: str
    runs: list[Run]

    def aggregate(self, stat: str) -> tuple[np.ndarray, np.ndarray]:
        """Steps present in every seed and the ``(seeds, steps)`` values of ``val/<stat>`` there."""
        common = sorted(set.intersection(*(set(r.steps) for r in self.runs)))
        table = np.array([[_at(r, stat, s) for s in common] for r in self.runs], dtype=float)
        return np.array(common), table.reshape(len(self.runs), len(common))


def load_run(metrics: Path) -> Run:
    """Read one CSV log: every row with a validation return, the last row per validation winning (a resumed run may
    log a step twice).

    Validations are placed on the run's validation schedule: one logged at environment step ``s`` is the one due at
    ``(s // val_every_env_steps) * val_every_env_steps``. Iterations collect whole episodes, so a family whose
    episodes end early reaches each boundary a few steps past it, differently in every seed; aligned, the seeds'
    validations average together. The random warm-up is collected in one go, so a boundary inside it is validated
    when it ends: that validation is placed at ``data.warmup_steps``.
    """
    run_dir = metrics.parent
    config_path = run_dir / "config.yaml"
    config: dict[str, Any] = yaml.safe_load(config_path.read_text()) if config_path.exists() else {}
    name = _run_name(config, run_dir)
    key = yaml.safe_dump(_experiment(config), sort_keys=True)
    data = config.get("data") or {}
    interval, warmup = data.get("val_every_env_steps") or 1, data.get("warmup_steps") or 0
    by_step: dict[int, dict[str, float]] = {}
    with metrics.open(newline="") as f:
        for row in csv.DictReader(f):
            if not row.get("val/return") or not row.get("step"):
                continue
            logged = int(float(row["step"]))
            step = logged // interval * interval
            if step < warmup <= logged:
                step = warmup
            by_step.setdefault(step, {}).update({k: float(v) for k, v in row.items() if k.startswith("val/") and v})
    run = Run(run_dir, name, key, seed=config.get("seed_everything"), steps=sorted(by_step))
    for stat in STATS:
        run.values[stat] = [by_step[s].get(f"val/{stat}", math.nan) for s in run.steps]
    for step_index, step in enumerate(run.steps):
        for column, value in by_step[step].items():
            match = _TASK_COLUMN.match(column)
            if match and match.group(2) in STATS:
                series = run.tasks.setdefault(match.group(2), {}).setdefault(int(match.group(1)), [])
                series.extend([math.nan] * (step_index + 1 - len(series)))
                series[step_index] = value
    return run


def find_runs(paths: Sequence[Path]) -> list[Run]:
    """Every run under the given directories (or CSV files), in the order given."""
    runs = []
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist")
        files = [path] if path.is_file() else sorted(path.rglob("metrics.csv"))
        if not files:
            raise FileNotFoundError(f"no metrics.csv under {path}: pass a run directory written by `mql fit`")
        runs += [load_run(f) for f in files]
    runs = [r for r in runs if r.steps]
    if not runs:
        raise ValueError("none of the runs has logged a validation yet")
    return runs


def group_runs(runs: Sequence[Run], labels: Sequence[str] | None = None) -> list[Curve]:
    """One curve per distinct configuration, labelled by ``labels`` (in order) or by the runs' names."""
    curves: dict[str, Curve] = {}
    for run in runs:
        curves.setdefault(run.config_key, Curve(run.name, [])).runs.append(run)
    result = list(curves.values())
    if labels:
        if len(labels) != len(result):
            raise ValueError(f"{len(labels)} labels for {len(result)} curves (distinct configurations)")
        for curve, label in zip(result, labels, strict=True):
            curve.label = label
    names = [c.label for c in result]
    for curve in result:
        if names.count(curve.label) > 1:  # same run name, different settings: tell them apart
            curve.label = f"{curve.label} ({curve.runs[0].path})"
    return result


def plot(curves: Sequence[Curve], out: Path) -> list[Path]:
    """Draw ``return.png`` and ``adaptation.png``, write ``summary.csv`` and ``runs.csv`` into ``out``; return the
    paths."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError('mql plot needs matplotlib: pip install "mql-lightning[plot]"') from err
    out.mkdir(parents=True, exist_ok=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]

    paths = [_plot_before_after(plt, curves, colors, "return", "return", out / "return.png")]
    stats = STATS if _has_success(curves) else tuple(s for s in STATS if s not in _SUCCESS_STATS)
    if stats == STATS:
        paths.append(_plot_before_after(plt, curves, colors, "success", "success rate", out / "success.png"))

    adapted = [c for c in curves if not np.all(np.isnan(c.aggregate("lambda")[1]))]
    if adapted:
        fig, axes = plt.subplots(1, 3, figsize=(13, 4))
        for k, curve in enumerate(adapted):
            color = colors[curves.index(curve) % len(colors)]
            first = curve.runs[0]
            for ax, stat, title in zip(axes, ("lambda", "ess", "beta_mean"), ("λ = 1 - ESS", "ESS", "mean β"),
                                       strict=True):
                for series in first.tasks.get(stat, {}).values():
                    ax.plot(first.steps[: len(series)], series, color=color, alpha=0.25, linewidth=0.8)
                steps, values = curve.aggregate(stat)
                with warnings.catch_warnings():  # no adaptation at step 0: an all-NaN column is expected there
                    warnings.simplefilter("ignore", RuntimeWarning)
                    ax.plot(steps, np.nanmean(values, 0), color=color, linewidth=2, label=curve.label)
                ax.set_title(f"{title} per validation task")
                ax.set_xlabel("environment steps")
                ax.grid(alpha=0.3)
                if k == 0:
                    ax.set_ylim(0, None if stat == "beta_mean" else 1.05)
        axes[0].legend(fontsize="small")
        fig.tight_layout()
        paths.append(out / "adaptation.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)

    paths.append(out / "summary.csv")
    _write_summary(curves, paths[-1], stats)
    paths.append(out / "runs.csv")
    _write_runs(curves, paths[-1], stats)
    return paths


def _plot_before_after(
    plt: Any, curves: Sequence[Curve], colors: list[str], stat: str, what: str, path: Path
) -> Path:
    """One validation statistic after adaptation against environment steps, and dashed before adaptation."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for k, curve in enumerate(curves):
        color = colors[k % len(colors)]
        seeds = f" ({len(curve.runs)} seeds)" if len(curve.runs) > 1 else ""
        _band(ax, *curve.aggregate(stat), color, f"{curve.label}{seeds}", "-")
        steps, pre = curve.aggregate(f"{stat}_pre_adapt")
        _, post = curve.aggregate(stat)
        if not np.allclose(pre, post, equal_nan=True):  # adaptation ran: its starting point is TD3-context
            _band(ax, steps, pre, color, f"{curve.label}: before adaptation (TD3-context)", "--")
    ax.set_xlabel("environment steps")
    ax.set_ylabel(f"validation {what}")
    ax.set_title(f"{what[0].upper()}{what[1:]} on validation tasks")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _has_success(curves: Sequence[Curve]) -> bool:
    """Whether any run logged a success rate (families without a success flag log none)."""
    return any(not np.all(np.isnan(run.values["success"])) for curve in curves for run in curve.runs)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``mql plot``."""
    parser = argparse.ArgumentParser(
        prog="mql plot", description="Learning curves and adaptation statistics (PNGs, a CSV summary) from runs' logs."
    )
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (or folders of runs) with metrics.csv")
    parser.add_argument("--out", type=Path, default=Path("figures"), help="output directory (default: figures)")
    parser.add_argument("--labels", nargs="+", help="one legend label per distinct configuration, in order")
    args = parser.parse_args(argv)
    try:
        curves = group_runs(find_runs(args.runs), args.labels)
        paths = plot(curves, args.out)
    except (FileNotFoundError, ValueError, ImportError, OSError, yaml.YAMLError) as err:
        print(f"mql plot: error: {err}", file=sys.stderr)
        raise SystemExit(2) from err
    for curve in curves:
        print(f"{curve.label}: {len(curve.runs)} run(s): {', '.join(str(r.path) for r in curve.runs)}")
    for path in paths:
        print(f"wrote {path}")


def _at(run: Run, stat: str, step: int) -> float:
    return run.values[stat][run.steps.index(step)]


def _band(ax: Any, steps: np.ndarray, values: np.ndarray, color: str, label: str, style: str) -> None:
    ax.plot(steps, np.nanmean(values, 0), style, color=color, label=label)
    if len(values) > 1:
        ax.fill_between(steps, np.nanmin(values, 0), np.nanmax(values, 0), color=color, alpha=0.15)


def _run_name(config: dict[str, Any], run_dir: Path) -> str:
    loggers = (config.get("trainer") or {}).get("logger")
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        if isinstance(logger, dict) and (logger.get("init_args") or {}).get("name"):
            return str(logger["init_args"]["name"])
    return run_dir.parent.name if run_dir.name.startswith("version_") else run_dir.name


def _experiment(config: dict[str, Any]) -> dict[str, Any]:
    """The config without what differs between seeds and run directories of one experiment."""
    config = {k: v for k, v in config.items() if k not in _PER_RUN_KEYS}
    trainer = dict(config.get("trainer") or {})
    trainer.pop("logger", None)
    config["trainer"] = trainer
    return config


def _write_summary(curves: Sequence[Curve], path: Path, stats: Sequence[str]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["curve", "seeds", "step", *(f"{s}_{a}" for s in stats for a in ("mean", "min", "max"))])
        for curve in curves:
            columns = [curve.aggregate(stat) for stat in stats]
            for i, step in enumerate(columns[0][0]):
                row: list[Any] = [curve.label, len(curve.runs), int(step)]
                for _, values in columns:
                    v = values[:, i]
                    empty = np.all(np.isnan(v))  # e.g. lambda of a run without adaptation
                    row += ["", "", ""] if empty else [f"{f(v):.4f}" for f in (np.nanmean, np.nanmin, np.nanmax)]
                writer.writerow(row)


def _write_runs(curves: Sequence[Curve], path: Path, stats: Sequence[str]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["curve", "run", "seed", "step", *stats])
        for curve in curves:
            for run in curve.runs:
                for i, step in enumerate(run.steps):
                    cells = [run.values[stat][i] for stat in stats]
                    writer.writerow([curve.label, run.path, run.seed, step,
                                     *("" if math.isnan(v) else f"{v:.4f}" for v in cells)])


if __name__ == "__main__":
    main()
