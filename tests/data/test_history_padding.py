"""What a context window holds near the episode start, under each ``history_padding`` and ``eval_window``.

The paper's windows are zero before the episode start; the authors' runner puts a start entry
``e_-1 = (random action, 0, o_0)`` right before ``e_0`` in the window of a transition (not in the window of its next
state), and their evaluation windows grow from one entry. Checked here entry by entry at t = 0, 1, H - 1 and H, in the
replay's gather, at act time in the collector (which must equal the gather), and at evaluation; plus the warm-up
episodes the authors cut at 50 steps.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from mql_lightning.data.collector import Collector
from mql_lightning.data.datamodule import MetaRLDataModule
from mql_lightning.data.replay import HISTORY_PADDINGS, EpisodeReplay
from mql_lightning.data.side_file import load_replay_for, load_side_file, replay_path, save_replay
from mql_lightning.envs import make_env

OBS, ACT, H = 2, 2, 4
C = ACT + 1 + OBS
T = H + 3  # an episode long enough for windows of e_-1 .. e_{H}
START = np.array([-0.5, 0.25], dtype=np.float32)
# Distinct, recognisable values: transition j has obs (10j + 1, 10j + 2), action (10j + 3, 10j + 4), reward 10j + 5.
STEPS = np.arange(T, dtype=np.float32)[:, None] * 10
OBS_J, ACT_J = STEPS + np.array([1, 2], np.float32), STEPS + np.array([3, 4], np.float32)
REW_J = STEPS[:, 0] + 5


def e(j: int) -> np.ndarray:
    """Context entry e_j = (a_j, r_j, o_j); e(-1) is the start entry (random action, reward 0, o_0)."""
    if j == -1:
        return np.concatenate([START, [0.0], OBS_J[0]]).astype(np.float32)
    return np.concatenate([ACT_J[j], [REW_J[j]], OBS_J[j]]).astype(np.float32)


def padded(entries: list[int], length: int = H) -> np.ndarray:
    """The last ``length`` of the given entries, zero rows in front."""
    rows = [e(j) for j in entries][-length:]
    return np.stack([np.zeros(C, np.float32)] * (length - len(rows)) + rows)


def expected_windows(padding: str, t: int) -> tuple[np.ndarray, np.ndarray]:
    """(history, next_history) of transition t, written out from the definitions."""
    start = [] if padding == "zeros" else [-1]
    history = padded(start + list(range(t)))
    next_start = [-1] if padding == "start_entry" else []  # the authors' next-history has no e_-1
    return history, padded(next_start + list(range(t + 1)))


def one_episode_replay(padding: str) -> EpisodeReplay:
    replay = EpisodeReplay(1, 50, OBS, ACT, H, padding)
    replay.add_episode(0, OBS_J, ACT_J, REW_J, OBS_J + 0.5, np.zeros(T, bool),
                       None if padding == "zeros" else START)
    return replay


@pytest.mark.parametrize("padding", HISTORY_PADDINGS)
@pytest.mark.parametrize("t", [0, 1, H - 1, H])
def test_replay_windows_at_t_0_1_h_minus_1_and_h(padding: str, t: int) -> None:
    batch = one_episode_replay(padding).gather(torch.tensor([0]), torch.tensor([t]))
    history, next_history = expected_windows(padding, t)
    np.testing.assert_array_equal(batch.history[0].numpy(), history)
    np.testing.assert_array_equal(batch.next_history[0].numpy(), next_history)
    np.testing.assert_array_equal(batch.obs[0].numpy(), OBS_J[t])  # the transition itself is unchanged


def test_written_out_windows_say_what_each_padding_means() -> None:
    # At t = 0 the paper's window is all zeros; the authors' ends with e_-1; at t = H the three agree.
    assert not expected_windows("zeros", 0)[0].any()
    np.testing.assert_array_equal(expected_windows("authors", 0)[0][-1], e(-1))
    np.testing.assert_array_equal(expected_windows("authors", H)[0], expected_windows("zeros", H)[0])
    # The authors' inconsistency: the next-history of t is not the history of t + 1 before step H - 1.
    assert not np.array_equal(expected_windows("authors", 1)[1], expected_windows("authors", 2)[0])
    np.testing.assert_array_equal(expected_windows("start_entry", 1)[1], expected_windows("start_entry", 2)[0])


def test_no_start_entry_once_a_newer_episode_overwrote_the_episode_start() -> None:
    replay = EpisodeReplay(1, 6, OBS, ACT, H, "authors")
    replay.add_episode(0, OBS_J[:4], ACT_J[:4], REW_J[:4], OBS_J[:4], np.zeros(4, bool), START)
    replay.add_episode(0, OBS_J[:4] + 100, ACT_J[:4], REW_J[:4], OBS_J[:4], np.zeros(4, bool), -START)
    # Ring of 6: the second episode took positions 4, 5, 0, 1; the first keeps its steps 2, 3 at positions 2, 3.
    survivor = replay.gather(torch.tensor([0]), torch.tensor([2]))
    assert not survivor.history.any()  # neither e_0, e_1 nor e_-1 of the first episode are left
    newest = replay.gather(torch.tensor([0]), torch.tensor([4]))  # step 0 of the second episode
    np.testing.assert_array_equal(newest.history[0, -1].numpy(), np.concatenate([-START, [0.0], OBS_J[0] + 100]))


@pytest.mark.parametrize("padding", HISTORY_PADDINGS)
def test_replay_state_round_trips_the_start_actions(padding: str, tmp_path: Any) -> None:
    replay = one_episode_replay(padding)
    save_replay(tmp_path / "last.replay.pt", 7, replay.state_dict())
    loaded = EpisodeReplay(1, 50, OBS, ACT, H, padding)
    loaded.load_state_dict(load_side_file(tmp_path / "last.replay.pt", 7)["replay"])
    assert loaded.history_padding == padding
    positions = torch.arange(T)
    for a, b in zip(replay.gather(torch.zeros(T, dtype=torch.long), positions),
                    loaded.gather(torch.zeros(T, dtype=torch.long), positions), strict=True):
        assert torch.equal(a, b)


def test_a_state_with_start_actions_does_not_load_into_a_zero_padded_buffer_or_back() -> None:
    with pytest.raises(ValueError, match="history_padding"):
        EpisodeReplay(1, 50, OBS, ACT, H).load_state_dict(one_episode_replay("authors").state_dict())
    with pytest.raises(ValueError, match="history_padding"):
        EpisodeReplay(1, 50, OBS, ACT, H, "authors").load_state_dict(one_episode_replay("zeros").state_dict())


def test_start_action_is_required_exactly_where_windows_hold_the_start_entry() -> None:
    with pytest.raises(ValueError, match="needs start_action"):
        EpisodeReplay(1, 50, OBS, ACT, H, "authors").add_episode(0, OBS_J, ACT_J, REW_J, OBS_J, np.zeros(T, bool))
    with pytest.raises(ValueError, match="takes no start_action"):
        EpisodeReplay(1, 50, OBS, ACT, H).add_episode(0, OBS_J, ACT_J, REW_J, OBS_J, np.zeros(T, bool), START)
    with pytest.raises(ValueError, match="history_padding must be one of"):
        EpisodeReplay(1, 50, OBS, ACT, H, "random")


def test_side_files_of_two_processes_rejoin_with_their_start_actions(tmp_path: Any) -> None:
    # Two ranks' shards (tasks 0, 2 and 1, 3), joined by an evaluation on one process.
    shards = [EpisodeReplay(2, 50, OBS, ACT, H, "authors") for _ in range(2)]
    whole = EpisodeReplay(4, 50, OBS, ACT, H, "authors")
    for task in range(4):
        args = (OBS_J + task, ACT_J, REW_J, OBS_J, np.zeros(T, bool), START * task)
        shards[task % 2].add_episode(task // 2, *args)
        whole.add_episode(task, *args)
    checkpoint = tmp_path / "last.ckpt"
    for rank, shard in enumerate(shards):
        save_replay(replay_path(checkpoint, rank, 2), 7, shard.state_dict(),
                    {"rank": rank, "world_size": 2, "tasks": [rank, rank + 2]})
    joined = EpisodeReplay(4, 50, OBS, ACT, H, "authors")
    joined.load_state_dict(load_replay_for(checkpoint, 7, [0, 1, 2, 3], 0, 1).state)
    task, position = torch.arange(4).repeat_interleave(T), torch.arange(T).repeat(4)
    assert torch.equal(joined.gather(task, position).history, whole.gather(task, position).history)


# --------------------------------------------------------------------------------------------------------------
# The collector: the window the policy sees at act time is the window the replay gathers, under every padding.
# --------------------------------------------------------------------------------------------------------------


class RecordingPolicy:
    """A deterministic policy that uses the window, and keeps a copy of every window it was given."""

    def __init__(self) -> None:
        gen = torch.Generator().manual_seed(0)
        self.w_obs, self.w_hist = torch.randn(OBS, ACT, generator=gen), torch.randn(C, ACT, generator=gen)
        self.windows: list[torch.Tensor] = []

    def __call__(self, obs: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        self.windows.append(history.clone())
        return torch.tanh(obs @ self.w_obs + history.sum(dim=1) @ self.w_hist)


def point_collector(padding: str = "zeros", std: float = 0.3, growing: bool = False, h: int = H) -> Collector:
    return Collector(lambda: make_env("mql/PointRobot-v0"), OBS, ACT, h, padding, std, growing)


GOALS = [{"goal": [0.5, -0.5]}, {"goal": [-0.8, 0.3]}]


@pytest.mark.parametrize("padding", HISTORY_PADDINGS)
def test_collector_windows_at_act_time_equal_the_replay_windows(padding: str) -> None:
    policy = RecordingPolicy()
    episodes = point_collector(padding).rollout(GOALS, [0, 1], np.random.default_rng(1), policy, 0.3,
                                                record_history=True)
    replay = EpisodeReplay(2, 50, OBS, ACT, H, padding)
    for ep in episodes:
        replay.add_episode(ep.task, ep.obs, ep.actions, ep.rewards, ep.next_obs, ep.terminated, ep.start_action)
    for i, ep in enumerate(episodes):
        gathered = replay.gather(torch.full((ep.length,), i), torch.arange(ep.length))
        at_act_time = torch.stack([w[i] for w in policy.windows[: ep.length]])
        assert torch.equal(gathered.history, at_act_time)
        np.testing.assert_array_equal(ep.histories, at_act_time.numpy())
        if padding == "zeros":
            assert ep.start_action is None and not at_act_time[0].any()
        else:
            # t = 0: zeros, then e_-1 = (the episode's random action, 0, o_0).
            start = np.concatenate([ep.start_action, [0.0], ep.obs[0]])
            np.testing.assert_array_equal(at_act_time[0, -1].numpy(), start)
            assert not at_act_time[0, :-1].any()


def test_start_actions_are_gaussian_draws_clipped_into_the_action_box() -> None:
    def starts(std: float) -> np.ndarray:
        episodes = point_collector("authors", std=std).rollout(GOALS * 20, [0, 1] * 20, np.random.default_rng(2))
        return np.stack([ep.start_action for ep in episodes])

    assert starts(5.0).min() == -1.0 and starts(5.0).max() == 1.0  # clipped, as the authors clip to the action box
    narrow = starts(0.3)
    assert len(np.unique(narrow)) == narrow.size  # a fresh draw for every episode and dimension
    assert 0.2 < narrow.std() < 0.4
    still = point_collector("authors", std=0.0).rollout(GOALS, [0, 1], np.random.default_rng(2))
    assert all(not ep.start_action.any() for ep in still)


def test_zero_padding_draws_nothing_for_start_entries() -> None:
    # The paper's windows consume no random numbers for start entries: same episodes whatever start_action_std.
    policy = RecordingPolicy()
    a = point_collector("zeros", std=0.0).rollout(GOALS, [0, 1], np.random.default_rng(3), policy, 0.3)
    b = point_collector("zeros", std=0.7).rollout(GOALS, [0, 1], np.random.default_rng(3), policy, 0.3)
    for ea, eb in zip(a, b, strict=True):
        np.testing.assert_array_equal(ea.actions, eb.actions)
        np.testing.assert_array_equal(ea.obs, eb.obs)


def test_growing_windows_hold_the_start_entry_and_the_episode_so_far_without_padding() -> None:
    policy = RecordingPolicy()
    [ep] = point_collector("zeros", growing=True).rollout(GOALS[:1], [0], np.random.default_rng(4), policy)
    lengths = [w.shape[1] for w in policy.windows]
    assert lengths == [min(t + 1, H) for t in range(ep.length)]
    entries = np.concatenate([np.concatenate([ep.start_action, [0.0], ep.obs[0]])[None],
                              np.concatenate([ep.actions, ep.rewards[:, None], ep.obs], axis=1)])
    for t in (0, 1, H - 1, H):
        # The window at t: the last min(t + 1, H) of e_-1, e_0, .., e_{t-1} (entries[k] is e_{k-1}).
        np.testing.assert_array_equal(policy.windows[t][0].numpy(), entries[max(0, t + 1 - H) : t + 1])
    with pytest.raises(ValueError, match="fixed-length"):
        point_collector(growing=True).rollout(GOALS[:1], [0], np.random.default_rng(4), policy, record_history=True)


def test_max_steps_cuts_episodes_as_a_time_limit_would() -> None:
    episodes = point_collector().rollout(GOALS, [0, 1], np.random.default_rng(5), max_steps=7)
    assert [ep.length for ep in episodes] == [7, 7]
    assert not any(ep.terminated.any() for ep in episodes)  # truncated, so bootstrapped through


# --------------------------------------------------------------------------------------------------------------
# The DataModule's switches
# --------------------------------------------------------------------------------------------------------------


def datamodule(**overrides: Any) -> MetaRLDataModule:
    settings: dict[str, Any] = {"num_train_tasks": 3, "num_val_tasks": 1, "num_test_tasks": 1, "warmup_steps": 60,
                                "history_length": H, "replay_capacity": 600, "batch_size": 8}
    dm = MetaRLDataModule(**{**settings, **overrides})
    with torch.random.fork_rng():
        torch.manual_seed(0)
        dm.setup("fit")
    return dm


def test_warmup_episodes_are_cut_at_warmup_episode_length() -> None:
    cut, full = datamodule(warmup_episode_length=7), datamodule()
    cut._warm_up()
    full._warm_up()
    assert cut.progress.env_steps == 63 and cut.progress.episodes == 9  # 9 episodes of 7 steps reach 60
    assert full.progress.episodes == 3  # the point robot's own 20-step episodes
    assert cut.replay.num_transitions(0) == 21  # tasks taken in turn: task 0 got episodes 1, 4 and 7
    with pytest.raises(ValueError, match="warmup_episode_length"):
        datamodule(warmup_episode_length=0)


def test_authors_padding_reaches_the_replay_and_growing_windows_reach_evaluation() -> None:
    dm = datamodule(history_padding="authors", eval_window="growing", eval_history_length=3)
    dm._warm_up()
    assert dm.replay.history_padding == "authors"
    first = dm.replay.gather(torch.tensor([0]), torch.tensor([0]))
    # The window of the first transition ends with e_-1 (a random action, reward 0, o_0); its next window with
    # e_0 alone, after zeros.
    assert first.history[0, -1, :ACT].abs().sum() > 0 and first.history[0, -1, ACT] == 0
    assert torch.equal(first.history[0, -1, ACT + 1 :], first.obs[0])
    e_0 = torch.cat([first.action[0], first.reward[:1], first.obs[0]])
    assert torch.equal(first.next_history[0, -1], e_0) and not first.next_history[0, :-1].any()
    policy = RecordingPolicy()
    dm.evaluate(policy, "val", 0)
    assert [w.shape[1] for w in policy.windows[:5]] == [1, 2, 3, 3, 3]
    with pytest.raises(ValueError, match="eval_window"):
        datamodule(eval_window="grow")
