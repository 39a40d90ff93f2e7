"""The shipped presets ``configs/presets/{paper,authors}.yaml``: what they resolve to, and runs made with them.

``paper`` spells out the defaults (a run with it logs exactly what a run without it logs); ``authors`` flips every
switch between the paper and the released code and nothing else, on top of any benchmark config. The switches land in
the run's ``config.yaml`` and checkpoints, and checkpoints written before the switches existed still load.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from mql_lightning.cli import main
from mql_lightning.configs import config_path
from mql_lightning.data.datamodule import MetaRLDataModule
from tests.helpers.processes import run_mql_concurrently

PAPER, AUTHORS, CHEETAH = (str(config_path(n)) for n in ("presets/paper", "presets/authors", "cheetah_vel"))
# Every switch of the released code's behaviour, with its value there (configs/presets/authors.yaml).
AUTHORS_SWITCHES = {
    "data.task_weighting": "transition", "data.history_padding": "authors", "data.eval_window": "growing",
    "data.warmup_episode_length": 50, "adaptation.settings.beta_prior_correction": False,
    "adaptation.settings.classifier_rows": "authors", "adaptation.settings.beta_context": "adapting",
    "adaptation.settings.classifier_solver": "lbfgs",
    "adaptation.settings.beta_floor": 0.1, "adaptation.settings.fixed_lambda": 0.1,
    "adaptation.settings.proximal_scale": "full", "adaptation.settings.proximal_new_task": False,
    "adaptation.settings.actor_step_first": True,
    "model.agent.init_args.context.init_args.implementation": "nn",
}
TINY = [
    "--seed_everything=1", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
    "--model.agent.init_args.hidden_sizes=[64,64]", "--data.num_train_tasks=4", "--data.batch_size=128",
    "--data.warmup_steps=200", "--data.max_env_steps=300", "--data.val_every_env_steps=150",
    "--data.validate_at_start=false", "--data.tasks_per_validation=1", "--data.eval_episodes=2",
    "--adaptation.settings.replay_updates=10",
]


def resolved(*configs: str, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    """``mql fit --config ... --print_config``, flattened to dotted keys (the config files themselves left out)."""
    args = [a for c in configs for a in ("--config", c)]
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args, "--print_config"])
    assert exit_info.value.code == 0
    return {k: v for k, v in flatten(yaml.safe_load(capsys.readouterr().out)).items() if k != "config"}


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def differences(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    return {k: b.get(k) for k in a.keys() | b.keys() if a.get(k) != b.get(k)}


def test_paper_preset_is_exactly_the_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    assert differences(resolved(capsys=capsys), resolved(PAPER, capsys=capsys)) == {}
    assert differences(resolved(CHEETAH, capsys=capsys), resolved(CHEETAH, PAPER, capsys=capsys)) == {}


def test_authors_preset_flips_every_switch_and_keeps_the_benchmark_settings(capsys: pytest.CaptureFixture[str]) -> None:
    benchmark = resolved(CHEETAH, capsys=capsys)
    assert differences(benchmark, resolved(CHEETAH, AUTHORS, capsys=capsys)) == AUTHORS_SWITCHES
    # ... and back: the paper preset after it restores every default.
    assert differences(benchmark, resolved(CHEETAH, AUTHORS, PAPER, capsys=capsys)) == {}


def logged(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if v != "" and k != "time/updates_per_s"} for row in csv.DictReader(f)]


def test_a_run_with_the_paper_preset_logs_exactly_what_a_run_without_it_logs(tmp_path: Path) -> None:
    commands = {"default": ["fit", *TINY], "paper": ["fit", "--config", PAPER, *TINY]}
    results = run_mql_concurrently([
        ([*args, f"--trainer.logger.init_args.save_dir={tmp_path / name}"], tmp_path) for name, args in commands.items()
    ])
    assert all(r.returncode == 0 for r in results), [r.stderr[-2000:] for r in results]
    default, paper = (logged(next((tmp_path / name).glob("*/version_0"))) for name in commands)
    assert default == paper and any("val/return" in row for row in default)


def test_an_authors_run_records_its_switches_in_config_and_checkpoint_and_evaluates(tmp_path: Path) -> None:
    main(["fit", "--config", AUTHORS, *TINY, f"--trainer.logger.init_args.save_dir={tmp_path}"])
    run = tmp_path / "mql" / "version_0"
    config = flatten(yaml.safe_load((run / "config.yaml").read_text()))
    assert {k: config[k] for k in AUTHORS_SWITCHES} == AUTHORS_SWITCHES
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    data = checkpoint["datamodule_hyper_parameters"]
    assert (data["history_padding"], data["eval_window"], data["warmup_episode_length"]) == ("authors", "growing", 50)
    recorded = checkpoint["callbacks"]["AdaptationCallback"]["settings"]
    assert (recorded["proximal_scale"], recorded["beta_context"], recorded["fixed_lambda"]) == ("full", "adapting", 0.1)
    lambdas = [row["val/lambda"] for row in logged(run) if "val/lambda" in row]
    assert lambdas and all(float(v) == pytest.approx(0.1) for v in lambdas)
    # The replay side file holds the start entries; evaluating the checkpoint uses them.
    assert "start_action" in torch.load(run / "checkpoints" / "last.replay.pt", weights_only=True)["replay"]
    main(["validate", "--ckpt_path", str(run / "checkpoints" / "last.ckpt"),
          f"--trainer.logger.init_args.save_dir={tmp_path / 'validate'}"])
    assert any("val/return" in row for row in logged(next((tmp_path / "validate").glob("*/version_0"))))


def test_a_checkpoint_and_config_from_before_the_switches_load_with_the_paper_defaults(
    trained_run: Path, tmp_path: Path
) -> None:
    # Written by a run, then stripped of every switch, as files from before the switches existed.
    new_keys = ("history_padding", "eval_window", "warmup_episode_length")
    old = tmp_path / "old"
    shutil.copytree(trained_run, old)
    checkpoint = torch.load(old / "checkpoints" / "last.ckpt", weights_only=True)
    for key in new_keys:
        checkpoint["datamodule_hyper_parameters"].pop(key)
    checkpoint["callbacks"].pop("AdaptationCallback", None)
    torch.save(checkpoint, old / "checkpoints" / "last.ckpt")
    config = yaml.safe_load((old / "config.yaml").read_text())
    for key in new_keys:
        config["data"].pop(key)
    for key in ("beta_prior_correction", "beta_context", "classifier_rows", "snapshot_size", "classifier_solver",
                "proximal_scale", "lambda_per_minibatch", "actor_step_first"):
        config["adaptation"]["settings"].pop(key)
    (old / "config.yaml").write_text(yaml.safe_dump(config))
    data = MetaRLDataModule.from_checkpoint(old / "checkpoints" / "last.ckpt")
    assert (data.history_padding, data.eval_window, data.warmup_episode_length) == ("zeros", "fixed", None)
    main(["validate", "--ckpt_path", str(old / "checkpoints" / "last.ckpt"), "--data.tasks_per_validation=1",
          f"--trainer.logger.init_args.save_dir={tmp_path / 'validate'}"])
    assert any("val/return" in row for row in logged(next((tmp_path / "validate").glob("*/version_0"))))
