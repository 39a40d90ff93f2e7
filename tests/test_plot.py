"""``mql plot``: curves grouped by configuration, mean and spread over seeds, figures and a CSV summary."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml

from mql_lightning.cli import main
from mql_lightning.plot import find_runs, group_runs

pytest.importorskip("matplotlib")


def _write_run(
    root: Path,
    seed: int,
    returns: list[float],
    lr: float = 1e-3,
    lam: float | None = 0.3,
    late: int = 0,
    warmup: int = 0,
) -> Path:
    """A run validating every 1,000 steps, each validation ``late`` steps past its boundary (episodes ending early);
    with ``warmup`` steps of random warm-up collected at once, the first validation comes at its end."""
    run = root / f"version_{seed}"
    run.mkdir(parents=True)
    config = {
        "seed_everything": seed,
        "trainer": {"logger": [{"class_path": "CSVLogger", "init_args": {"name": "exp", "version": seed}}]},
        "model": {"lr": lr},
        "data": {"val_every_env_steps": 1000, "warmup_steps": warmup},
    }
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    columns = ["step", "train/critic_loss", "val/return", "val/return_pre_adapt", "val/lambda", "val/task_0/lambda"]
    with (run / "metrics.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for k, value in enumerate(returns):
            writer.writerow([k * 1000 + 500, 0.1, "", "", "", ""])  # a training row: ignored
            lam_cell = "" if lam is None else lam
            first = warmup or 1000
            step = first if k == 0 else (first // 1000 + k) * 1000
            writer.writerow([step + late, "", value, value - 1.0, lam_cell, lam_cell])
    return run


def test_seeds_of_one_configuration_make_one_curve_and_other_settings_another(tmp_path: Path) -> None:
    _write_run(tmp_path / "a", 0, [-10.0, -8.0])
    _write_run(tmp_path / "a", 1, [-12.0, -6.0])
    _write_run(tmp_path / "b", 0, [-20.0, -19.0], lr=3e-4)
    curves = group_runs(find_runs([tmp_path / "a", tmp_path / "b"]))
    assert [len(c.runs) for c in curves] == [2, 1]
    steps, values = curves[0].aggregate("return")
    assert steps.tolist() == [1000, 2000]
    assert values.tolist() == [[-10.0, -8.0], [-12.0, -6.0]]
    # Same run name, different settings: the labels tell them apart.
    assert curves[0].label != curves[1].label


def test_validations_reached_late_by_different_seeds_are_aligned_on_the_schedule(tmp_path: Path) -> None:
    _write_run(tmp_path / "a", 0, [-10.0, -8.0], late=20)
    _write_run(tmp_path / "a", 1, [-12.0, -6.0], late=7)
    (curve,) = group_runs(find_runs([tmp_path / "a"]))
    steps, values = curve.aggregate("return")
    assert steps.tolist() == [1000, 2000]
    assert values.tolist() == [[-10.0, -8.0], [-12.0, -6.0]]


def test_a_validation_at_the_end_of_a_warm_up_between_boundaries_is_placed_at_the_warm_up(tmp_path: Path) -> None:
    _write_run(tmp_path / "a", 0, [-10.0, -8.0], warmup=2500)  # validations logged at steps 2,500 and 3,000
    _write_run(tmp_path / "a", 1, [-12.0, -6.0], warmup=2500, late=7)
    (curve,) = group_runs(find_runs([tmp_path / "a"]))
    steps, values = curve.aggregate("return")
    assert steps.tolist() == [2500, 3000]
    assert values.tolist() == [[-10.0, -8.0], [-12.0, -6.0]]


def test_plot_writes_figures_and_a_summary_of_mean_min_max(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _write_run(tmp_path / "runs", 0, [-10.0, -8.0])
    _write_run(tmp_path / "runs", 1, [-12.0, -6.0])
    out = tmp_path / "fig"
    main(["plot", str(tmp_path / "runs"), "--out", str(out), "--labels", "MQL"])
    assert (out / "return.png").stat().st_size > 0
    assert (out / "adaptation.png").stat().st_size > 0
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [(r["curve"], r["seeds"], r["step"]) for r in rows] == [("MQL", "2", "1000"), ("MQL", "2", "2000")]
    assert float(rows[1]["return_mean"]) == -7.0
    assert (float(rows[1]["return_min"]), float(rows[1]["return_max"])) == (-8.0, -6.0)
    assert float(rows[0]["return_pre_adapt_mean"]) == -12.0
    per_run = [(r["seed"], r["step"], float(r["return"])) for r in csv.DictReader((out / "runs.csv").open())]
    assert per_run == [("0", "1000", -10.0), ("0", "2000", -8.0), ("1", "1000", -12.0), ("1", "2000", -6.0)]
    assert "wrote" in capsys.readouterr().out


def test_runs_without_adaptation_get_no_adaptation_figure(tmp_path: Path) -> None:
    _write_run(tmp_path / "runs", 0, [-10.0, -8.0], lam=None)
    out = tmp_path / "fig"
    main(["plot", str(tmp_path / "runs"), "--out", str(out)])
    assert (out / "return.png").exists() and not (out / "adaptation.png").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [(["missing"], "does not exist"), (["empty"], "no metrics.csv"), (["runs", "--labels", "a", "b"], "2 labels")],
)
def test_bad_input_is_one_error_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str], message: str
) -> None:
    (tmp_path / "empty").mkdir()
    _write_run(tmp_path / "runs", 0, [-10.0])
    with pytest.raises(SystemExit) as exit_info:
        main(["plot", *(str(tmp_path / a) if not a.startswith("-") and a not in ("a", "b") else a for a in args)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mql plot: error:") and message in err and "\n" not in err


def test_plots_a_real_run(trained_run: Path, tmp_path: Path) -> None:
    main(["plot", str(trained_run), "--out", str(tmp_path)])
    rows = list(csv.DictReader((tmp_path / "summary.csv").open()))
    assert [int(r["step"]) for r in rows] == [0, 2000, 4000]
    assert all(r["return_mean"] for r in rows)
    assert (tmp_path / "adaptation.png").exists()
