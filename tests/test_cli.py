"""End-to-end behaviour of the ``mql`` command: real LightningCLI, real Trainer, real environments."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.strategies import DDPStrategy

from mql_lightning.cli import MQLCLI, main
from mql_lightning.configs import config_path
from mql_lightning.data.datamodule import MetaRLDataModule
from mql_lightning.modules.mql import MQL
from tests.helpers.processes import run_mql
from tests.helpers.runs import run_fit


def read_metrics(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def val_returns(run: Path) -> list[tuple[int, float]]:
    return [(int(float(r["step"])), float(r["val/return"])) for r in read_metrics(run) if "val/return" in r]


def test_fit_writes_one_run_directory_with_config_metrics_and_checkpoints(trained_run: Path) -> None:
    for name in ("config.yaml", "metrics.csv", "hparams.yaml", "checkpoints/last.ckpt", "checkpoints/best.ckpt"):
        assert (trained_run / name).is_file(), name
    assert list(trained_run.glob("events.out.tfevents.*")), "TensorBoard events missing from the run directory"
    assert [p.name for p in trained_run.parent.iterdir()] == [trained_run.name], "loggers split the run"


def test_validation_runs_on_an_env_step_interval_and_logs_every_task(trained_run: Path) -> None:
    steps = [step for step, _ in val_returns(trained_run)]
    assert steps == [0, 2000, 4000]  # at start, then every 2,000 environment steps, and at the budget
    last_val = [r for r in read_metrics(trained_run) if "val/return" in r][-1]
    per_task = [float(last_val[f"val/task_{i}/return"]) for i in range(5)]
    assert float(last_val["val/return"]) == pytest.approx(sum(per_task) / 5, rel=1e-5)


def test_training_logs_losses_and_env_steps_against_env_steps(trained_run: Path) -> None:
    rows = [r for r in read_metrics(trained_run) if "train/critic_loss" in r]
    assert rows, "no training metrics logged"
    assert all(float(r["step"]) == float(r["time/env_steps"]) for r in rows)  # the x-axis is environment steps
    assert {"train/actor_loss", "rollout/return", "time/updates_per_s"} <= set().union(*rows)


def test_td3_context_improves_validation_return_over_the_untrained_policy(trained_run: Path) -> None:
    returns = val_returns(trained_run)
    untrained, final = returns[0][1], returns[-1][1]
    assert final > untrained + 2.0, returns


def test_checkpoint_loads_with_weights_only(trained_run: Path) -> None:
    ckpt = torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["MetaRLDataModule"]["progress"]["env_steps"] == 4000
    assert ckpt["mql"]["num_updates"] > 0


def test_validate_from_checkpoint_writes_a_new_run_directory(trained_run: Path) -> None:
    before = (trained_run / "metrics.csv").read_bytes()
    main([
        "validate", "--config", str(trained_run / "config.yaml"),
        "--ckpt_path", str(trained_run / "checkpoints" / "last.ckpt"),
    ])
    runs = sorted(trained_run.parent.glob("version_*"))
    assert len(runs) == 2 and (trained_run / "metrics.csv").read_bytes() == before
    new = read_metrics(runs[-1])
    assert new[-1]["val/return"] == [r for r in read_metrics(trained_run) if "val/return" in r][-1]["val/return"]


def test_plain_td3_runs_from_the_same_code_path(tmp_path: Path) -> None:
    run = run_fit(tmp_path, "--model.agent.init_args.context=null", "--data.max_env_steps=400",
                  "--data.warmup_steps=200")
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"]["agent"]["init_args"]["context"] is None
    assert len(val_returns(run)) == 2


def test_print_config_round_trips_through_fit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--print_config"])
    assert exit_info.value.code == 0
    printed = tmp_path / "printed.yaml"
    printed.write_text(capsys.readouterr().out)
    assert yaml.safe_load(printed.read_text())["data"]["env_id"] == "mql/PointRobot-v0"
    main(["fit", "--config", str(printed), *_quiet(tmp_path), "--data.max_env_steps=300", "--data.warmup_steps=200"])
    assert (tmp_path / "mql" / "version_0" / "checkpoints" / "last.ckpt").is_file()


def _printed_config(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args, "--print_config"])
    assert exit_info.value.code == 0
    return yaml.safe_load(capsys.readouterr().out)


def test_mql_fit_without_a_config_runs_exactly_configs_point_yaml(capsys: pytest.CaptureFixture[str]) -> None:
    embedded = _printed_config(capsys)
    spelled_out = _printed_config(capsys, "--config", str(config_path("point")))
    assert embedded == spelled_out
    assert embedded["model"]["agent"]["init_args"]["hidden_sizes"] == [128, 128]  # the file's values, not TD3Agent's
    assert yaml.safe_load(config_path("point").read_text())["data"].items() <= embedded["data"].items()


def test_shipped_point_config_trains_and_validates(tmp_path: Path) -> None:
    main(["fit", "--config", str(config_path("point")), *_quiet(tmp_path), "--data.max_env_steps=300",
          "--data.warmup_steps=200"])
    run = tmp_path / "mql" / "version_0"
    assert [step for step, _ in val_returns(run)] == [0, 300]  # at the start and at the budget
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["MetaRLDataModule"]["progress"]["env_steps"] == 300 and ckpt["mql"]["num_updates"] == 100


def test_default_root_dir_holds_the_run(tmp_path: Path) -> None:
    main(["fit", f"--trainer.default_root_dir={tmp_path / 'here'}", "--trainer.enable_progress_bar=false",
          "--data.max_env_steps=200", "--data.warmup_steps=200", "--data.validate_at_start=false"])
    run = tmp_path / "here" / "mql" / "version_0"
    assert (run / "config.yaml").is_file() and (run / "metrics.csv").is_file()
    assert (run / "checkpoints" / "last.ckpt").is_file()


def test_trainer_max_steps_bounds_training(tmp_path: Path) -> None:
    run = run_fit(tmp_path, "--trainer.max_steps=30", "--data.warmup_steps=200")
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 30  # optimizer steps: 20 critic + 10 actor updates with policy_delay 2


def test_unknown_task_family_is_one_clear_line_and_exit_code_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mql_lightning.cli", "fit", "--data.env_id=mql/NoSuchEnv-v0", *_quiet(tmp_path)],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 2
    assert "unknown task family 'mql/NoSuchEnv-v0'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.iterdir())


def test_invalid_value_is_rejected_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--data.batch_size=0", *_quiet(tmp_path)])
    assert exit_info.value.code == 2
    assert not list(tmp_path.iterdir())


def _quiet(root: Path) -> list[str]:
    return ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
            f"--trainer.logger.init_args.save_dir={root}"]


def test_fit_logs_ess_driven_lambda_per_validation_task(trained_run: Path) -> None:
    last_val = [r for r in read_metrics(trained_run) if "val/return" in r][-1]
    for i in range(5):
        ess, lam = float(last_val[f"val/task_{i}/ess"]), float(last_val[f"val/task_{i}/lambda"])
        assert 0.0 <= ess <= 1.0 and lam == pytest.approx(1.0 - ess, abs=1e-6)
    assert {"val/return_pre_adapt", "val/beta_mean", "val/classifier_accuracy"} <= set(last_val)


def test_test_with_only_a_checkpoint_adapts_to_every_test_task_in_a_new_directory(trained_run: Path) -> None:
    before = {p: p.read_bytes() for p in trained_run.rglob("*") if p.is_file()}
    result = run_mql(["test", "--ckpt_path", str(trained_run / "checkpoints" / "last.ckpt"),
                      "--trainer.enable_progress_bar=false"], trained_run.parent)
    assert result.returncode == 0, result.stderr
    # One table that fits 80 columns, per task and the mean; no second dump of the same numbers, no warning.
    table = result.stdout[result.stdout.index("mql test: before (the meta-policy) and after adaptation"):]
    assert [line.split()[0] for line in table.splitlines() if line.strip()[:1].isdigit()] == list("01234")
    assert "mean" in table and max(len(line) for line in table.splitlines()) <= 80
    assert "Test metric" not in result.stdout and "dirpath" not in result.stderr
    assert {p: p.read_bytes() for p in trained_run.rglob("*") if p.is_file()} == before
    new_run = sorted(trained_run.parent.glob("version_*"))[-1]
    with open(new_run / "test_results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["task"]) for r in rows] == list(range(5))
    assert all(float(r["lambda"]) == pytest.approx(1 - float(r["ess"]), abs=1e-6) for r in rows)


def test_missing_replay_side_file_is_a_clear_error(trained_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_bytes((trained_run / "config.yaml").read_bytes())
    (run / "checkpoints" / "last.ckpt").write_bytes((trained_run / "checkpoints" / "last.ckpt").read_bytes())
    result = subprocess.run(
        [sys.executable, "-m", "mql_lightning.cli", "test", "--ckpt_path", str(run / "checkpoints" / "last.ckpt"),
         f"--trainer.logger.init_args.save_dir={tmp_path / 'out'}"],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 2
    assert "last.replay.pt is missing" in result.stderr and "Traceback" not in result.stderr


def test_checkpoint_without_its_run_config_tests_with_the_data_settings_it_was_trained_with(
    trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The tiny run trained on 20 tasks with 5 test tasks; the defaults (40, 10) would not fit its replay layout.
    copied = tmp_path / "copied"
    copied.mkdir()
    for name in ("last.ckpt", "last.replay.pt"):
        (copied / name).write_bytes((trained_run / "checkpoints" / name).read_bytes())
    main(["test", "--ckpt_path", str(copied / "last.ckpt"), *_quiet(tmp_path), "--data.eval_episodes=1",
          "--adaptation.settings.replay_updates=2"])
    assert "settings (mql/PointRobot-v0, ...) read from the checkpoint" in capsys.readouterr().err
    with open(next((tmp_path / "mql").glob("version_*")) / "test_results.csv", newline="") as f:
        assert [int(r["task"]) for r in csv.DictReader(f)] == list(range(5))


def test_several_devices_with_the_default_strategy_get_ddp_that_tolerates_unused_parameters() -> None:
    common = ["fit", "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.logger=false"]
    auto = MQLCLI(MQL, MetaRLDataModule, auto_configure_optimizers=False, run=False, args=common[1:])
    assert isinstance(auto.trainer.strategy, DDPStrategy)
    assert auto.trainer.strategy._ddp_kwargs["find_unused_parameters"] is True
    chosen = MQLCLI(MQL, MetaRLDataModule, auto_configure_optimizers=False, run=False,
                    args=[*common[1:], "--trainer.strategy=ddp"])
    assert "find_unused_parameters" not in chosen.trainer.strategy._ddp_kwargs  # the user's explicit choice stands


def test_predict_is_not_a_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["predict"])
    assert exit_info.value.code == 2 and "invalid choice: 'predict'" in capsys.readouterr().err


def test_missing_checkpoint_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["test", "--ckpt_path", str(tmp_path / "nope.ckpt")])
    assert exit_info.value.code == 2
    assert "nope.ckpt does not exist" in capsys.readouterr().err


def test_python_api_adapts_a_trained_checkpoint_and_acts_in_an_env(trained_run: Path) -> None:
    import gymnasium

    from mql_lightning.adaptation import AdaptationConfig, adapt
    from mql_lightning.data.datamodule import MetaRLDataModule
    from mql_lightning.modules import MQL

    ckpt = trained_run / "checkpoints" / "last.ckpt"
    model, data = MQL.load_from_checkpoint(ckpt), MetaRLDataModule.from_checkpoint(ckpt)
    assert data.replay.num_transitions() == 4000
    before = {k: v.clone() for k, v in model.agent.state_dict().items()}
    task = {"goal": [0.5, -0.3]}
    policy = adapt(model, data, task, AdaptationConfig(replay_updates=20))
    assert policy.result.lam == pytest.approx(1 - policy.result.ess)
    assert all(torch.equal(before[k], v) for k, v in model.agent.state_dict().items())
    env = gymnasium.make("mql/PointRobot-v0")
    env.unwrapped.set_task(task)
    obs, _ = env.reset(seed=0)
    policy.reset()
    steps, done = 0, False
    while not done:
        obs, reward, terminated, truncated, _ = env.step(policy.act(obs))
        policy.observe(reward)
        steps, done = steps + 1, terminated or truncated
    assert steps == 20
