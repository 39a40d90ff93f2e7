"""Every shipped benchmark config parses and trains end to end (tiny budgets here; as written in the slow test)."""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

import pytest
import yaml

from mql_lightning.cli import main

CONFIG_DIR = Path(__file__).parents[1] / "mql_lightning" / "configs"
# Overlays change a few settings of a run's config (metaworld_eval.yaml: Meta-World's test protocol); not runs alone.
OVERLAYS = {"metaworld_eval"}


def _config(path: Path) -> pytest.ParameterSet:
    """A benchmark config as a test parameter: Meta-World's need the extra, ML10/ML45 build their goals for a minute."""
    env_id = yaml.safe_load(path.read_text())["data"]["env_id"]
    marks = []
    if env_id.startswith("mql/MetaWorld-"):
        marks.append(pytest.mark.skipif(find_spec("metaworld") is None, reason='needs pip install ".[metaworld]"'))
        if not env_id.startswith("mql/MetaWorld-ML1-"):
            marks.append(pytest.mark.slow)
    return pytest.param(path, marks=marks, id=path.stem)


CONFIGS = [_config(p) for p in sorted(CONFIG_DIR.glob("*.yaml")) if p.stem not in OVERLAYS]

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
    names = {p.stem for p in CONFIG_DIR.glob("*.yaml")}
    assert names >= {
        "point", "cheetah_vel", "cheetah_fwd_back", "ant_fwd_back", "ant_goal", "humanoid_dir", "walker",
        "cheetah_vel_ood_medium", "cheetah_vel_ood_hard", "metaworld_ml1", "metaworld_ml10", "metaworld_ml45",
        "metaworld_eval",
    }


def test_the_metaworld_evaluation_overlay_sets_meta_worlds_protocol(capsys: pytest.CaptureFixture[str]) -> None:
    configs = ["--config", str(CONFIG_DIR / "metaworld_ml1.yaml"), "--config", str(CONFIG_DIR / "metaworld_eval.yaml")]
    with pytest.raises(SystemExit) as done:
        main(["test", *configs, "--print_config"])
    assert done.value.code == 0
    config = yaml.safe_load(capsys.readouterr().out)
    # 10 adaptation episodes of 500 steps, then 3 evaluation episodes, on each of the 40 protocol goals.
    assert config["adaptation"]["settings"]["num_steps"] == 5000
    assert config["data"]["eval_episodes"] == 3 and config["data"]["num_test_tasks"] == 40


@pytest.mark.parametrize("config", CONFIGS)
def test_config_trains_for_a_tiny_budget(config: Path, tmp_path: Path) -> None:
    main(["fit", "--config", str(config), f"--trainer.logger.init_args.save_dir={tmp_path}", *TINY])
    loggers = yaml.safe_load(config.read_text()).get("trainer", {}).get("logger", [{"init_args": {"name": "mql"}}])
    run = tmp_path / loggers[0]["init_args"]["name"] / "version_0"
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "checkpoints" / "last.replay.pt").is_file()
    assert "val/task_0/lambda" in (run / "metrics.csv").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS)
def test_config_starts_training_as_written(config: Path, tmp_path: Path) -> None:
    # As written (warm-up included), stopped after the first few optimizer steps; no validation on the way (one
    # validation with the authors' adaptation settings alone takes minutes per task on a CPU).
    main(["fit", "--config", str(config), f"--trainer.logger.init_args.save_dir={tmp_path}",
          "--trainer.max_steps=3", "--data.validate_at_start=false", "--data.val_every_env_steps=1000000000",
          "--trainer.enable_progress_bar=false"])
    assert list(tmp_path.rglob("last.ckpt"))
