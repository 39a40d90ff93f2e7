"""Every shipped benchmark config parses and trains end to end (tiny budgets here; as written in the slow test)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mql_lightning.cli import main

CONFIGS = sorted((Path(__file__).parents[1] / "mql_lightning" / "configs").glob("*.yaml"))

# Long warm-ups, big replay buffers and long validations overridden so that each config trains for seconds.
TINY = [
    "--data.warmup_steps=200", "--data.max_env_steps=400", "--data.val_every_env_steps=400",
    "--data.validate_at_start=false", "--data.replay_capacity=20000", "--data.min_buffer_size=0",
    "--data.updates_per_iteration=2", "--data.eval_episodes=1", "--data.tasks_per_validation=1",
    "--data.num_train_tasks=2", "--data.num_val_tasks=1", "--data.num_test_tasks=1",
    "--adaptation.settings.new_task_updates=1", "--adaptation.settings.replay_updates=1",
    "--adaptation.settings.replay_batch_size=64", "--adaptation.settings.num_steps=20",
    "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
]


def test_every_benchmark_has_a_config() -> None:
    names = {p.stem for p in CONFIGS}
    assert names >= {
        "point", "cheetah_vel", "cheetah_fwd_back", "ant_fwd_back", "ant_goal", "humanoid_dir", "walker",
        "cheetah_vel_ood_medium", "cheetah_vel_ood_hard",
    }


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_config_trains_for_a_tiny_budget(config: Path, tmp_path: Path) -> None:
    main(["fit", "--config", str(config), f"--trainer.logger.init_args.save_dir={tmp_path}", *TINY])
    loggers = yaml.safe_load(config.read_text()).get("trainer", {}).get("logger", [{"init_args": {"name": "mql"}}])
    run = tmp_path / loggers[0]["init_args"]["name"] / "version_0"
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "checkpoints" / "last.replay.pt").is_file()
    assert "val/task_0/lambda" in (run / "metrics.csv").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_config_starts_training_as_written(config: Path, tmp_path: Path) -> None:
    # As written (warm-up included), stopped after the first few optimizer steps; no validation on the way (one
    # validation with the authors' adaptation settings alone takes minutes per task on a CPU).
    main(["fit", "--config", str(config), f"--trainer.logger.init_args.save_dir={tmp_path}",
          "--trainer.max_steps=3", "--data.validate_at_start=false", "--data.val_every_env_steps=1000000000",
          "--trainer.enable_progress_bar=false"])
    assert list(tmp_path.rglob("last.ckpt"))
