"""Multi-process training (docs/design.md#several-processes): task shards, per-rank seeds, global counters, replay
shards.

The end-to-end test runs the real ``mql fit`` command on two CPU processes (DDP over gloo) and checks what the run left
behind, plus what ``RankReport`` (``tests/helpers/callbacks.py``, passed on the command line) saw on each rank. The
counters that decide when the update stream stops are also checked with two ranks driven in threads on a task family
whose episodes end at different times, where a rank stopping alone would deadlock DDP.
"""

from __future__ import annotations

import csv
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from mql_lightning.cli import main
from mql_lightning.data.datamodule import MetaRLDataModule
from mql_lightning.data.replay import EpisodeReplay, join_task_states
from mql_lightning.data.side_file import load_replay_for, replay_path, save_replay
from tests.helpers.callbacks import callback_arg
from tests.helpers.processes import run_mql_script
from tests.helpers.runs import tiny_point_run

# --------------------------------------------------------------------------------------------------------------
# Two processes through the real `mql fit`
# --------------------------------------------------------------------------------------------------------------
TINY = tiny_point_run(
    num_val_tasks=3, tasks_per_validation=3, warmup_steps=200, max_env_steps=600, val_every_env_steps=300
)
DDP = ["--trainer.devices=2", "--trainer.accelerator=cpu"]  # the default strategy: `mql` picks DDP for unused params


def report_callback(directory: Path) -> str:
    return callback_arg("RankReport", directory=str(directory))


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """``mql fit`` on two CPU processes: 600 environment steps over both ranks, validation at 0, 320 and 600."""
    root = tmp_path_factory.mktemp("ddp")
    result = run_mql_script(root, "fit", *TINY, *DDP, report_callback(root / "reports"))
    assert result.returncode == 0, result.stderr[-4000:]
    run = root / "runs" / "mql" / "version_0"
    reports = [torch.load(root / "reports" / f"rank{r}.pt", weights_only=True) for r in range(2)]
    return SimpleNamespace(root=root, run=run, ckpt=run / "checkpoints", reports=reports, stderr=result.stderr)


def test_ddp_ranks_collect_on_their_own_tasks_with_their_own_seeds(ddp_run: SimpleNamespace) -> None:
    rank0, rank1 = ddp_run.reports
    assert (rank0["rank"], rank1["rank"], rank0["world_size"]) == (0, 1, 2)
    assert rank0["tasks"] == [0, 2] and rank1["tasks"] == [1, 3]
    # Rank 0 keeps the single-device streams; rank 1 has its own; evaluation streams are shared.
    collect, sample, _ = np.random.SeedSequence(0).spawn(3)
    assert rank0["streams"]["rng"] == np.random.default_rng(collect).bit_generator.state
    expected_sample = torch.Generator().manual_seed(int(sample.generate_state(1)[0])).get_state()
    assert torch.equal(rank0["streams"]["sample_generator"], expected_sample)
    assert rank1["streams"]["rng"] != rank0["streams"]["rng"]
    assert not torch.equal(rank1["streams"]["sample_generator"], rank0["streams"]["sample_generator"])
    assert (rank0["noise_seed"], rank1["noise_seed"]) == (1, 2)
    assert rank0["eval_seed"] == rank1["eval_seed"]


def test_ddp_counters_are_global_and_identical_on_every_rank(ddp_run: SimpleNamespace) -> None:
    rank0, rank1 = ddp_run.reports
    assert rank0["progress"] == rank1["progress"]
    assert rank0["progress"]["env_steps"] == 600  # the budget counts the environment steps of both ranks
    # Each rank stored its own half of them (20-step episodes: no ring is full).
    assert sum(rank0["replay_sizes"]) == sum(rank1["replay_sizes"]) == 300
    with open(ddp_run.run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    logged_steps = [float(r["time/env_steps"]) for r in rows if r.get("time/env_steps")]
    assert max(logged_steps) == 600 and all(float(r["step"]) == float(r["time/env_steps"]) for r in rows
                                            if r.get("time/env_steps"))
    # Every round collects 2 x 20 global steps: the first boundary past 300 is 320.
    assert [int(float(r["step"])) for r in rows if r.get("val/return")] == [0, 320, 600]


def test_ddp_weights_stay_identical_across_ranks(ddp_run: SimpleNamespace) -> None:
    rank0, rank1 = ddp_run.reports
    assert len(rank0["weights"]) == len(rank1["weights"]) == 3  # after each validation
    for w0, w1 in zip([*rank0["weights"], rank0["final"]], [*rank1["weights"], rank1["final"]], strict=True):
        assert w0.keys() == w1.keys()
        for key in w0:
            assert torch.equal(w0[key], w1[key]), key
    # Training changed them, and the checkpoint holds them.
    assert any(not torch.equal(rank0["weights"][0][k], rank0["final"][k]) for k in rank0["final"])
    checkpoint = torch.load(ddp_run.ckpt / "last.ckpt", weights_only=True)
    for key, value in rank0["final"].items():
        assert torch.equal(checkpoint["state_dict"][key], value), key


def test_ddp_validation_splits_tasks_and_agrees_on_every_rank(ddp_run: SimpleNamespace) -> None:
    rank0, rank1 = ddp_run.reports
    assert rank0["metrics"] == rank1["metrics"]
    metrics = rank0["metrics"]
    # Tasks 0 and 2 were evaluated and adapted to on rank 0, task 1 on rank 1; all are logged, each once.
    for name in ("return", "return_pre_adapt", "ess", "lambda"):
        per_task = [metrics[f"val/task_{t}/{name}"] for t in range(3)]
        assert metrics[f"val/{name}"] == pytest.approx(sum(per_task) / 3, rel=1e-5), name
    with open(ddp_run.run / "metrics.csv", newline="") as f:
        last = [r for r in csv.DictReader(f) if r.get("val/return")][-1]
    assert all(last[f"val/task_{t}/lambda"] for t in range(3))
    assert "sync_dist" not in ddp_run.stderr  # no "use sync_dist=True" advice: every epoch-level log is synced


def test_ddp_checkpoint_has_one_replay_shard_per_rank(ddp_run: SimpleNamespace) -> None:
    checkpoint = torch.load(ddp_run.ckpt / "last.ckpt", weights_only=True)
    env_steps = checkpoint["MetaRLDataModule"]["progress"]["env_steps"]
    assert not replay_path(ddp_run.ckpt / "last.ckpt").exists()  # no whole-buffer file: shards only
    shards = [torch.load(replay_path(ddp_run.ckpt / "last.ckpt", r, 2), weights_only=True) for r in range(2)]
    assert [s["shard"]["tasks"] for s in shards] == [[0, 2], [1, 3]]
    assert all(s["env_steps"] == env_steps == 600 for s in shards)
    assert [int(s["replay"]["size"].sum()) for s in shards] == [300, 300]
    assert not torch.equal(shards[0]["replay"]["entry"], shards[1]["replay"]["entry"])
    assert shards[0]["shard"]["streams"]["datamodule"]["rng"] != shards[1]["shard"]["streams"]["datamodule"]["rng"]
    for name in ("best", "last"):
        assert all(replay_path(ddp_run.ckpt / f"{name}.ckpt", r, 2).is_file() for r in range(2)), name
    assert not list(ddp_run.ckpt.glob(".*")), "temporary files left behind"


def test_one_device_reads_a_ddp_checkpoint_with_the_shards_joined(ddp_run: SimpleNamespace) -> None:
    datamodule = MetaRLDataModule.from_checkpoint(ddp_run.ckpt / "last.ckpt")
    assert datamodule.train_task_ids == [0, 1, 2, 3]
    shards = [torch.load(replay_path(ddp_run.ckpt / "last.ckpt", r, 2), weights_only=True) for r in range(2)]
    sizes = datamodule.replay.sizes.tolist()
    assert sizes[0::2] == shards[0]["replay"]["size"].tolist() and sizes[1::2] == shards[1]["replay"]["size"].tolist()
    assert datamodule.replay.num_transitions() == 600


@pytest.mark.slow
def test_ddp_resume_continues_exactly_like_an_uninterrupted_run(ddp_run: SimpleNamespace, tmp_path: Path) -> None:
    """Resuming on two processes restores every rank's shard and streams: the weights match a run to 920 steps."""
    longer = [*TINY, "--data.max_env_steps=900"]
    straight = run_mql_script(
        tmp_path / "straight", "fit", *longer, *DDP, report_callback(tmp_path / "straight_reports")
    )
    assert straight.returncode == 0, straight.stderr[-4000:]
    resumed = run_mql_script(
        tmp_path / "resumed", "fit", *longer, *DDP, report_callback(tmp_path / "resumed_reports"),
        f"--ckpt_path={ddp_run.ckpt / 'last.ckpt'}",
    )
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    for rank in range(2):
        a = torch.load(tmp_path / "straight_reports" / f"rank{rank}.pt", weights_only=True)
        b = torch.load(tmp_path / "resumed_reports" / f"rank{rank}.pt", weights_only=True)
        assert a["progress"] == b["progress"] and a["progress"]["env_steps"] == 920  # 600 + 8 rounds of 2 x 20
        for key, value in a["final"].items():
            assert torch.equal(b["final"][key], value), (rank, key)


def test_fit_refuses_to_resume_a_ddp_checkpoint_on_another_number_of_processes(
    ddp_run: SimpleNamespace, capsys: pytest.CaptureFixture[str]
) -> None:
    config = (ddp_run.run / "config.yaml").read_bytes()
    with pytest.raises(SystemExit) as exit_info:
        # `fit --ckpt_path` takes the run's config (two processes): one device must be asked for.
        main(["fit", *TINY, "--data.max_env_steps=900", "--trainer.devices=1",
              f"--ckpt_path={ddp_run.ckpt / 'last.ckpt'}"])
    assert exit_info.value.code == 2
    assert "written by a run on 2 process(es)" in capsys.readouterr().err
    assert (ddp_run.run / "config.yaml").read_bytes() == config  # the refused resume changed nothing there


# --------------------------------------------------------------------------------------------------------------
# Replay shards, joined and re-split
# --------------------------------------------------------------------------------------------------------------
def filled_replay(num_tasks: int, seed: int, task_offset: int = 0) -> EpisodeReplay:
    """A buffer whose task ``k`` holds ``3 + k + task_offset`` transitions, one episode, values tagged by task."""
    replay = EpisodeReplay(num_tasks, 16, 2, 1, 3)
    gen = torch.Generator().manual_seed(seed)
    for k in range(num_tasks):
        n = 3 + k + task_offset
        obs = torch.randn(n, 2, generator=gen) + 100 * (k + task_offset)
        replay.add_episode(k, obs, torch.rand(n, 1, generator=gen), torch.randn(n, generator=gen), obs + 1,
                           torch.zeros(n, dtype=torch.bool))
    return replay


def test_shards_are_joined_and_re_split_by_global_task(tmp_path: Path) -> None:
    whole = filled_replay(4, seed=0)
    state = whole.state_dict()
    ckpt = tmp_path / "last.ckpt"
    # Two shards of a 2-process run, cut from the whole buffer: rank r holds tasks r and r + 2.
    for rank in range(2):
        tasks = [rank, rank + 2]
        shard_state = join_task_states([(state, range(4))], tasks)
        save_replay(replay_path(ckpt, rank, 2), 50, shard_state,
                    {"rank": rank, "world_size": 2, "tasks": tasks, "streams": {"datamodule": {"rank": rank}}})
    # Each rank of a 2-process reader gets its own shard back, with its streams.
    own = load_replay_for(ckpt, 50, [1, 3], rank=1, world_size=2)
    assert own.world_size == 2 and own.streams == {"datamodule": {"rank": 1}}
    assert own.state["size"].tolist() == [4, 6]
    # One device gets the union, in global task order, equal to the whole buffer.
    joined = load_replay_for(ckpt, 50, [0, 1, 2, 3])
    assert joined.world_size == 2 and joined.streams is None
    for key, value in state.items():
        assert torch.equal(joined.state[key], value) if torch.is_tensor(value) else joined.state[key] == value, key
    rebuilt = EpisodeReplay(4, 16, 2, 1, 3)
    rebuilt.load_state_dict(joined.state)
    gen_a, gen_b = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    for a, b in zip(whole.sample(8, gen_a), rebuilt.sample(8, gen_b), strict=True):
        assert torch.equal(a, b)
    # Three processes re-split the union (no streams: they belong to the writers' ranks).
    third = load_replay_for(ckpt, 50, [2], rank=2, world_size=3)
    assert third.streams is None and third.state["size"].tolist() == [5]


def test_a_whole_buffer_is_split_for_several_readers_and_missing_shards_are_named(tmp_path: Path) -> None:
    ckpt = tmp_path / "best.ckpt"
    save_replay(replay_path(ckpt), 7, filled_replay(4, seed=2).state_dict())
    part = load_replay_for(ckpt, 7, [1, 3], rank=1, world_size=2)
    assert part.world_size == 1 and part.state["num_tasks"] == 2 and part.state["size"].tolist() == [4, 6]
    with pytest.raises(ValueError, match="written at 7"):
        load_replay_for(ckpt, 8, [0, 1, 2, 3])
    lone = tmp_path / "lone.ckpt"
    save_replay(replay_path(lone, 0, 2), 7, filled_replay(2, seed=3).state_dict(),
                {"rank": 0, "world_size": 2, "tasks": [0, 2], "streams": {}})
    with pytest.raises(FileNotFoundError, match=r"lone\.replay\.rank1\.pt is missing"):
        load_replay_for(lone, 7, [0, 1, 2, 3])
    with pytest.raises(FileNotFoundError, match=r"nothing\.replay\.rank1\.pt is missing"):
        load_replay_for(tmp_path / "nothing.ckpt", 7, [1, 3], rank=1, world_size=2)


# --------------------------------------------------------------------------------------------------------------
# The update stream on two ranks whose episodes end at different times (threads stand in for processes)
# --------------------------------------------------------------------------------------------------------------
class _ThreadGroup:
    """The sum all-reduce of a strategy, between ranks that are threads of this process."""

    def __init__(self, world_size: int) -> None:
        self.barrier = threading.Barrier(world_size, timeout=60)
        self.slots: list[torch.Tensor | None] = [None] * world_size
        self.calls = 0

    def strategy(self, rank: int) -> SimpleNamespace:
        def reduce(tensor: torch.Tensor, reduce_op: str) -> torch.Tensor:
            assert reduce_op == "sum"
            self.slots[rank] = tensor.clone()
            if self.barrier.wait() == 0:
                self.calls += 1
            total = torch.stack(self.slots).sum(0)
            self.barrier.wait()  # nobody overwrites a slot before everyone has summed
            return total

        return SimpleNamespace(reduce=reduce, root_device=torch.device("cpu"))


def test_ranks_stop_at_the_same_update_although_their_episodes_differ_in_length() -> None:
    world_size, group = 2, _ThreadGroup(2)
    events: list[list[Any]] = [[], []]
    datamodules: list[MetaRLDataModule] = []
    errors: list[BaseException] = []
    for rank in range(world_size):
        dm = MetaRLDataModule(
            env_id="mql/Walker2DParams-v0", num_train_tasks=4, num_val_tasks=2, num_test_tasks=2, warmup_steps=150,
            max_env_steps=900, val_every_env_steps=400, batch_size=8, history_length=3, replay_capacity=4000,
            exploration_noise=0.5,
        )
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=world_size, strategy=group.strategy(rank),
                                     should_stop=False, lightning_module=None)
        with torch.random.fork_rng():
            torch.manual_seed(0)  # the same run seed on every rank, as seed_everything gives
            dm.setup("fit")
        weights = torch.randn(dm.obs_dim, dm.action_dim, generator=torch.Generator().manual_seed(5))
        dm._policy = lambda w=weights: (lambda obs, history: torch.tanh(obs @ w))  # type: ignore[method-assign]
        datamodules.append(dm)

    def drive(rank: int) -> None:
        dm = datamodules[rank]
        try:
            while True:
                try:
                    dm.next_batch()
                    events[rank].append("update")
                except StopIteration:
                    events[rank].append(dm.progress.env_steps)
                    if dm.trainer.should_stop:
                        return
        except BaseException as err:  # reported by the main thread, after the join
            errors.append(err)
            group.barrier.abort()

    threads = [threading.Thread(target=drive, args=(rank,)) for rank in range(world_size)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert events[0] == events[1]  # the same updates between the same stops: DDP would not deadlock
    stops = [e for e in events[0] if not isinstance(e, str)]
    assert stops[0] == 0 and stops[-1] >= 900 and len(stops) >= 3
    a, b = (dm.replay.num_transitions() for dm in datamodules)
    assert a != b and a + b == datamodules[0].progress.env_steps  # unequal shares (early falls), counted globally
    assert datamodules[0].progress == datamodules[1].progress
    assert all((dm.replay.sizes > 0).all() for dm in datamodules)  # the warm-up reached every task of each shard
    # One all-reduce per round of collection (one episode per rank per round), never more.
    assert group.calls == datamodules[0].progress.episodes // world_size
