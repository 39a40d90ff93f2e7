"""Bad input to the real ``mql`` command: one clear line, a non-zero exit, no traceback, and no run touched.

Every case runs next to an existing run directory (a copy of a small trained run, under ``runs/mql/version_0`` of the
command's working directory, where new runs would go too) and checks that the command leaves every file and folder
there as it was: nothing overwritten, deleted or added, not even an empty ``version_1``.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.helpers.processes import Result, run_mql, run_mql_concurrently
from tests.helpers.runs import TINY_RUN_ARGS

CONFIGS = Path(__file__).parents[1] / "configs"
# Where every command may write a new run: relative to its working directory, as the default `runs/` is.
SAVE_DIR = "--trainer.logger.init_args.save_dir=runs"

# (id, command line after `mql`, what the error line must say). In the command line, `{run}` is the existing run,
# `{ckpt}` its last checkpoint and `{bad}` a folder of broken inputs (see `make_broken_inputs`).
CASES = [
    ("unknown-family", "fit --data.env_id=mql/NoSuchEnv-v0", "unknown task family 'mql/NoSuchEnv-v0'"),
    ("not-a-family", "fit --data.env_id=CartPole-v1", "'CartPole-v1' is not a meta-RL task family"),
    ("unknown-option", "fit --data.no_such_key=1", "unrecognized arguments: --data.no_such_key=1"),
    ("unknown-key-in-config", "fit --config {bad}/unknown_key.yaml", "does not accept option 'data.no_such_key'"),
    ("wrong-type", "fit --data.batch_size=abc", "\"data.batch_size\": Expected a <class 'int'>. Got value: abc"),
    ("wrong-choice", "fit --data.task_weighting=tasks", "\"data.task_weighting\": Expected a typing.Literal"),
    ("unknown-env-argument", 'fit --data.env_kwargs={{"bogus":1}}', "does not accept the keyword arguments"),
    ("negative-noise", "fit --data.exploration_noise=-0.1", "exploration_noise must be >= 0, got -0.1"),
    ("zero-batch-size", "fit --data.batch_size=0", "batch_size must be a positive integer, got 0"),
    ("negative-task-count", "fit --data.num_train_tasks=-3", "num_train_tasks must be a positive integer, got -3"),
    ("zero-layer-width", "fit --model.agent.init_args.hidden_sizes=[64,0]", "hidden_sizes must be positive"),
    ("zero-context-width", "fit --model.agent.init_args.context.init_args.hidden_size=0", "hidden_size > 0"),
    ("zero-updates", "fit --data.updates_per_iteration=0", "updates_per_iteration must be a positive integer"),
    ("negative-beta-clip", "fit --adaptation.settings.beta_clip=-1", "beta_clip must be >= 0, got -1.0"),
    ("zero-history", "fit --data.history_length=0", "history_length must be a positive integer, got 0"),
    ("negative-learning-rate", "fit --model.critic_optimizer.init_args.lr=-1", "Invalid learning rate: -1.0"),
    ("negative-max-steps", "fit --trainer.max_steps=-5", "`max_steps` must be a non-negative integer"),
    ("malformed-yaml", "fit --config {bad}/malformed.yaml", "malformed.yaml is not valid YAML"),
    ("missing-config", "fit --config {bad}/missing.yaml", "File does not exist"),
    ("unknown-subcommand", "fitt", "invalid choice: 'fitt'"),
    ("missing-checkpoint", "test --ckpt_path {bad}/missing.ckpt", "missing.ckpt does not exist"),
    # Resuming writes into the run's own directory: a bad checkpoint must be caught before anything is written.
    ("resume-missing-checkpoint", "fit --config {run}/config.yaml --ckpt_path {bad}/missing.ckpt", "does not exist"),
    ("resume-with-a-bad-value", "fit --ckpt_path {ckpt} --data.batch_size=-1", "batch_size must be a positive"),
    ("truncated-checkpoint", "test --config {run}/config.yaml --ckpt_path {bad}/truncated.ckpt", "truncated"),
    ("not-a-checkpoint", "validate --config {run}/config.yaml --ckpt_path {bad}/notes.ckpt", "cannot be read"),
    ("foreign-checkpoint", "test --ckpt_path {bad}/foreign.ckpt", "foreign.ckpt was not written by `mql fit`"),
    (
        "checkpoint-of-other-dimensions",
        f"test --config {CONFIGS / 'walker.yaml'} --ckpt_path {{ckpt}}",
        "was written for mql/PointRobot-v0 (obs_dim 2, action_dim 2) but the config builds mql/Walker2DParams-v0",
    ),
    ("checkpoint-of-other-replay", "test --ckpt_path {ckpt} --data.num_train_tasks=7", "data.num_train_tasks=4"),
    ("missing-side-file", "test --ckpt_path {bad}/alone/last.ckpt", "last.replay.pt is missing"),
    ("truncated-side-file", "validate --ckpt_path {bad}/truncated_side/last.ckpt", "last.replay.pt cannot be read"),
    ("mismatched-side-file", "fit --ckpt_path {bad}/mismatched_side/last.ckpt", "belong to different checkpoints"),
]


@pytest.fixture(scope="module")
def source_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory of a tiny TD3-context run on the point robot (a few seconds)."""
    root = tmp_path_factory.mktemp("source")
    result = run_mql(
        [
            "fit", *TINY_RUN_ARGS, SAVE_DIR, "--data.num_train_tasks=4", "--data.max_env_steps=300",
            "--data.val_every_env_steps=300", "--data.warmup_steps=200", "--data.tasks_per_validation=1",
            "--adaptation.settings.replay_updates=2",
        ],
        cwd=root,
    )
    assert result.returncode == 0, result.stderr
    return root / "runs" / "mql" / "version_0"


def make_broken_inputs(run: Path, bad: Path) -> None:
    """Broken configs, checkpoints and side files in the folder ``bad``, made from copies of a run's files."""
    ckpts = run / "checkpoints"
    bad.mkdir()
    (bad / "unknown_key.yaml").write_text("data:\n  no_such_key: 3\n")
    (bad / "malformed.yaml").write_text("data:\n  batch_size: [1, 2\n")
    (bad / "notes.ckpt").write_text("not a checkpoint\n")
    checkpoint = (ckpts / "last.ckpt").read_bytes()
    (bad / "truncated.ckpt").write_bytes(checkpoint[: len(checkpoint) // 2])
    torch.save({"state_dict": {}}, bad / "foreign.ckpt")
    side_file = (ckpts / "last.replay.pt").read_bytes()
    mismatched = torch.load(ckpts / "last.replay.pt", weights_only=True)
    mismatched["env_steps"] += 1
    for name in ("alone", "truncated_side", "mismatched_side"):
        (bad / name).mkdir()
        (bad / name / "last.ckpt").write_bytes(checkpoint)
    (bad / "truncated_side" / "last.replay.pt").write_bytes(side_file[: len(side_file) // 2])
    torch.save(mismatched, bad / "mismatched_side" / "last.replay.pt")


def snapshot(root: Path) -> dict[str, tuple[int, bytes] | None]:
    """Every folder (``None``) and file (modification time and content) under ``root``."""
    return {
        str(p.relative_to(root)): None if p.is_dir() else (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(root.rglob("*"))
    }


@dataclass
class Outcome:
    """A case's command, what it left, and its run folder ``runs`` as it was before."""

    args: list[str]
    result: Result
    runs: Path
    before: dict[str, tuple[int, bytes] | None]


@pytest.fixture(scope="module")
def outcomes(source_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    """Every case, run in a folder of its own holding a copy of the source run as ``runs/mql/version_0``.

    The cases run side by side, as many at a time as there are cores: each spends over a second of CPU building
    LightningCLI's parsers.
    """
    bad = tmp_path_factory.mktemp("bad")
    make_broken_inputs(source_run, bad / "inputs")
    commands: dict[str, list[str]] = {}
    homes: dict[str, Path] = {}
    for case_id, command, _ in CASES:
        homes[case_id] = home = tmp_path_factory.mktemp(case_id)
        run = Path(shutil.copytree(source_run, home / "runs" / "mql" / "version_0"))
        args = command.format(run=run, ckpt=run / "checkpoints" / "last.ckpt", bad=bad / "inputs")
        commands[case_id] = [*args.split(), SAVE_DIR]
    before = {case_id: snapshot(home / "runs") for case_id, home in homes.items()}
    results = run_mql_concurrently(
        [(commands[case_id], homes[case_id]) for case_id in commands], max_parallel=os.cpu_count()
    )
    return {
        case_id: Outcome(commands[case_id], result, homes[case_id] / "runs", before[case_id])
        for case_id, result in zip(commands, results, strict=True)
    }


@pytest.mark.parametrize(("case_id", "expected"), [(case[0], case[2]) for case in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_a_non_zero_exit_and_touches_no_run(
    case_id: str, expected: str, outcomes: dict[str, Outcome]
) -> None:
    outcome = outcomes[case_id]
    stderr = outcome.result.stderr
    assert outcome.result.returncode == 2, (outcome.args, stderr)
    assert stderr.startswith("mql: error: ") and stderr.count("\n") == 1, (outcome.args, stderr)
    assert expected in stderr
    assert snapshot(outcome.runs) == outcome.before


# A component that does not do what MQL needs (a context encoder without `output_dim`): a bug, not a bad value.
BROKEN_COMPONENT = ["fit", "--model.agent.init_args.context.class_path=torch.nn.Identity", SAVE_DIR]


def test_an_unexpected_error_is_one_line_with_its_traceback_saved(tmp_path: Path) -> None:
    result = run_mql(BROKEN_COMPONENT, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("mql: internal error: AttributeError: ") and result.stderr.count("\n") == 1
    saved = Path(result.stderr.split("traceback in ", 1)[1].split(";", 1)[0])
    try:
        assert "Traceback (most recent call last)" in saved.read_text()
    finally:
        saved.unlink()
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("args", [["--traceback", *BROKEN_COMPONENT], ["fit", "--data.batch_size=0", "--traceback"]])
def test_traceback_flag_shows_the_traceback_anywhere_on_the_line(args: list[str], tmp_path: Path) -> None:
    result = run_mql(args, cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr and "mql: " not in result.stderr


def test_help_documents_the_traceback_flag(tmp_path: Path) -> None:
    result = run_mql(["--help"], cwd=tmp_path)
    assert result.returncode == 0 and "--traceback" in result.stdout
