"""Tests for the episode replay buffer (docs/design.md#replay-stores-episodes, #truncation-is-not-termination)."""

from __future__ import annotations

import io
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

from mql_lightning.data.replay import EpisodeReplay, ReplayBatch

OBS, ACT, H = 3, 2, 4
C = ACT + 1 + OBS


def make_episode(rng: np.random.Generator, length: int, obs_dim: int = OBS, act_dim: int = ACT, *, terminal: bool):
    """Random episode with nonzero values everywhere so zero padding is distinguishable."""
    obs = rng.uniform(1.0, 2.0, size=(length, obs_dim)) * rng.choice([-1.0, 1.0], size=(length, obs_dim))
    actions = rng.uniform(0.1, 1.0, size=(length, act_dim))
    rewards = rng.uniform(1.0, 5.0, size=(length,))
    next_obs = rng.normal(size=(length, obs_dim)) + 10.0
    terminated = np.zeros(length, dtype=bool)
    terminated[-1] = terminal
    return obs, actions, rewards, next_obs, terminated


# ---------------------------------------------------------------------------------------------------------------
# A slow, obvious reference: a Python ring of (episode id, step) references per task, windows built from
# per-episode lists, an entry valid iff it is in the same episode and still physically stored in the ring.
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class RefReplay:
    num_tasks: int
    capacity: int
    history: int
    episodes: list[tuple] = field(default_factory=list)
    rings: list[list] = field(init=False)
    ptrs: list[int] = field(init=False)

    def __post_init__(self) -> None:
        self.rings = [[None] * self.capacity for _ in range(self.num_tasks)]
        self.ptrs = [0] * self.num_tasks

    def add(self, task: int, episode: tuple) -> None:
        ep_id = len(self.episodes)
        self.episodes.append(episode)
        for step in range(len(episode[0])):
            self.rings[task][self.ptrs[task]] = (ep_id, step)
            self.ptrs[task] = (self.ptrs[task] + 1) % self.capacity

    def size(self, task: int) -> int:
        return sum(x is not None for x in self.rings[task])

    def entry(self, ep_id: int, step: int) -> np.ndarray:
        obs, actions, rewards, _, _ = self.episodes[ep_id]
        return np.concatenate([actions[step], [rewards[step]], obs[step]]).astype(np.float32)

    def item(self, task: int, position: int) -> dict[str, np.ndarray]:
        ep_id, step = self.rings[task][position]
        stored = {x for x in self.rings[task] if x is not None}
        window = []
        for k in range(self.history, -1, -1):  # oldest first, the transition itself last
            if step - k >= 0 and (ep_id, step - k) in stored:
                window.append(self.entry(ep_id, step - k))
            else:
                window.append(np.zeros(C, dtype=np.float32))
        window = np.stack(window)
        obs, actions, rewards, next_obs, terminated = self.episodes[ep_id]
        return {
            "obs": obs[step],
            "action": actions[step],
            "reward": rewards[step],
            "next_obs": next_obs[step],
            "terminated": float(terminated[step]),
            "task": task,
            "history": window[:-1],
            "next_history": window[1:],
        }


def assert_matches_reference(buf: EpisodeReplay, ref: RefReplay) -> int:
    tasks, positions = [], []
    for task in range(ref.num_tasks):
        assert buf.num_transitions(task) == ref.size(task)
        for position in range(ref.size(task)):
            tasks.append(task)
            positions.append(position)
    if not tasks:
        return 0
    batch = buf.gather(torch.tensor(tasks), torch.tensor(positions))
    items = [ref.item(task, position) for task, position in zip(tasks, positions, strict=True)]
    for name in ReplayBatch._fields:  # every field, every stored transition
        got = getattr(batch, name).numpy()
        expected = np.stack([np.asarray(item[name], dtype=got.dtype) for item in items])
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6, err_msg=name)
    return len(tasks)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gather_matches_reference_with_wraparound(seed: int) -> None:
    rng = np.random.default_rng(seed)
    num_tasks, capacity = 3, 13
    buf = EpisodeReplay(num_tasks, capacity, OBS, ACT, H)
    ref = RefReplay(num_tasks, capacity, H)
    checked = 0
    added = [0] * num_tasks
    for i in range(36):
        task = int(rng.integers(num_tasks)) if i % 2 else (i // 2) % num_tasks  # random order, all tasks fed
        length = int(rng.integers(1, capacity + 1))
        episode = make_episode(rng, length, terminal=bool(rng.integers(2)))
        buf.add_episode(task, *episode)
        ref.add(task, episode)
        added[task] += length
        checked += assert_matches_reference(buf, ref)
    assert all(n > 3 * capacity for n in added), "every ring must have wrapped several times"
    assert checked > 500


def test_gather_matches_reference_numpy_and_torch_inputs() -> None:
    rng = np.random.default_rng(5)
    buf = EpisodeReplay(2, 50, OBS, ACT, H)
    ref = RefReplay(2, 50, H)
    for i in range(6):
        episode = make_episode(rng, int(rng.integers(1, 12)), terminal=i % 2 == 0)
        as_torch = tuple(torch.as_tensor(x) for x in episode) if i % 2 else episode
        buf.add_episode(i % 2, *as_torch)
        ref.add(i % 2, episode)
    assert assert_matches_reference(buf, ref) == len(buf)


def test_zero_padding_at_episode_start() -> None:
    rng = np.random.default_rng(0)
    buf = EpisodeReplay(1, 20, OBS, ACT, H)
    buf.add_episode(0, *make_episode(rng, 3, terminal=False))  # a previous episode must not leak in
    obs, actions, rewards, next_obs, terminated = make_episode(rng, 6, terminal=False)
    buf.add_episode(0, obs, actions, rewards, next_obs, terminated)
    batch = buf.gather(torch.tensor([0, 0]), torch.tensor([3, 4]))  # steps 0 and 1 of the second episode
    assert torch.count_nonzero(batch.history[0]) == 0
    e0 = torch.as_tensor(np.concatenate([actions[0], [rewards[0]], obs[0]]), dtype=torch.float32)
    assert torch.count_nonzero(batch.history[1][:-1]) == 0
    torch.testing.assert_close(batch.history[1][-1], e0)
    # The next-history of step 0 is zeros followed by e_0 itself.
    assert torch.count_nonzero(batch.next_history[0][:-1]) == 0
    torch.testing.assert_close(batch.next_history[0][-1], e0)


def test_next_history_is_history_shifted_by_one() -> None:
    rng = np.random.default_rng(1)
    buf = EpisodeReplay(2, 40, OBS, ACT, H)
    for task in (0, 1, 0):
        buf.add_episode(task, *make_episode(rng, 15, terminal=False))
    batch = buf.sample(64, torch.Generator().manual_seed(0))
    assert isinstance(batch, ReplayBatch)
    torch.testing.assert_close(batch.next_history[:, :-1], batch.history[:, 1:])
    current = torch.cat([batch.action, batch.reward.unsqueeze(1), batch.obs], dim=1)
    torch.testing.assert_close(batch.next_history[:, -1], current)


def test_batch_shapes_and_dtypes() -> None:
    rng = np.random.default_rng(2)
    buf = EpisodeReplay(2, 30, OBS, ACT, H)
    buf.add_episode(1, *make_episode(rng, 10, terminal=True))
    batch = buf.sample(7, torch.Generator().manual_seed(0))
    shapes = {
        "obs": (7, OBS),
        "action": (7, ACT),
        "reward": (7,),
        "next_obs": (7, OBS),
        "terminated": (7,),
        "task": (7,),
        "history": (7, H, C),
        "next_history": (7, H, C),
    }
    for name, shape in shapes.items():
        value = getattr(batch, name)
        assert tuple(value.shape) == shape, name
        assert value.dtype == (torch.int64 if name == "task" else torch.float32), name
    assert torch.all(batch.task == 1)


def test_collector_rolling_window_equals_gathered_window() -> None:
    # docs/design.md#replay-stores-episodes: the window a collector feeds the policy at act time (a deque of H zero
    # entries, appended (a_t, r_t, o_t) after every step) must equal the window the buffer gathers for that transition.
    rng = np.random.default_rng(3)
    obs, actions, rewards, next_obs, terminated = make_episode(rng, 11, terminal=True)
    buf = EpisodeReplay(1, 64, OBS, ACT, H)
    buf.add_episode(0, obs, actions, rewards, next_obs, terminated)
    rolling = deque([np.zeros(C, dtype=np.float32)] * H, maxlen=H)
    act_time_windows = []
    for t in range(len(obs)):
        act_time_windows.append(np.stack(rolling))
        rolling.append(np.concatenate([actions[t], [rewards[t]], obs[t]]).astype(np.float32))
    batch = buf.gather(torch.zeros(len(obs), dtype=torch.int64), torch.arange(len(obs)))
    np.testing.assert_allclose(batch.history.numpy(), np.stack(act_time_windows), atol=1e-6)


def test_truncation_is_not_termination() -> None:
    rng = np.random.default_rng(4)
    buf = EpisodeReplay(1, 50, OBS, ACT, H)
    buf.add_episode(0, *make_episode(rng, 10, terminal=False))  # ended by the time limit
    buf.add_episode(0, *make_episode(rng, 10, terminal=True))
    batch = buf.gather(torch.zeros(20, dtype=torch.int64), torch.arange(20))
    expected = torch.zeros(20)
    expected[19] = 1.0
    torch.testing.assert_close(batch.terminated, expected)


def _weighted_buffer() -> EpisodeReplay:
    rng = np.random.default_rng(6)
    buf = EpisodeReplay(4, 1000, OBS, ACT, H)
    for task, episodes in ((0, 1), (1, 10), (2, 1)):  # task 1 holds 10x more data; task 3 is empty
        for _ in range(episodes):
            buf.add_episode(task, *make_episode(rng, 100, terminal=False))
    return buf


def test_task_weighting_uniform_over_tasks() -> None:
    buf = _weighted_buffer()
    batch = buf.sample(30000, torch.Generator().manual_seed(0), task_weighting="task")
    freq = torch.bincount(batch.task, minlength=4).double() / 30000
    assert freq[3] == 0
    assert torch.all((freq[:3] - 1 / 3).abs() < 0.02), freq


def test_transition_weighting_proportional_to_data() -> None:
    buf = _weighted_buffer()
    batch = buf.sample(30000, torch.Generator().manual_seed(0), task_weighting="transition")
    freq = torch.bincount(batch.task, minlength=4).double() / 30000
    expected = torch.tensor([100, 1000, 100, 0], dtype=torch.float64) / 1200
    assert torch.all((freq - expected).abs() < 0.02), freq


@pytest.mark.parametrize("weighting", ["task", "transition"])
def test_positions_uniform_within_task(weighting: str) -> None:
    buf = _weighted_buffer()
    batch = buf.sample(20000, torch.Generator().manual_seed(1), tasks=[1], task_weighting=weighting)
    assert torch.all(batch.task == 1)
    # Rewards identify transitions; every one of the 1000 transitions of task 1 shows up.
    all_rewards = buf.gather(torch.ones(1000, dtype=torch.int64), torch.arange(1000)).reward
    assert torch.isin(all_rewards, batch.reward).all()


@pytest.mark.parametrize("weighting", ["task", "transition"])
def test_tasks_argument_restricts_sampling(weighting: str) -> None:
    buf = _weighted_buffer()
    gen = torch.Generator().manual_seed(2)
    batch = buf.sample(2000, gen, tasks=[0, 2, 2], task_weighting=weighting)
    assert set(batch.task.tolist()) == {0, 2}
    batch = buf.sample(500, gen, tasks=torch.tensor([3, 2]), task_weighting=weighting)  # empty task 3 skipped
    assert set(batch.task.tolist()) == {2}
    with pytest.raises(ValueError, match="none of the allowed tasks"):
        buf.sample(10, gen, tasks=[3], task_weighting=weighting)
    with pytest.raises(ValueError, match="tasks must lie"):
        buf.sample(10, gen, tasks=[0, 4], task_weighting=weighting)


def test_same_seed_identical_batches() -> None:
    buf = _weighted_buffer()
    for weighting in ("task", "transition"):
        a = buf.sample(256, torch.Generator().manual_seed(7), task_weighting=weighting)
        b = buf.sample(256, torch.Generator().manual_seed(7), task_weighting=weighting)
        for x, y in zip(a, b, strict=True):
            assert torch.equal(x, y)


def _assert_same_samples(a: EpisodeReplay, b: EpisodeReplay) -> None:
    for weighting in ("task", "transition"):
        x = a.sample(128, torch.Generator().manual_seed(3), task_weighting=weighting)
        y = b.sample(128, torch.Generator().manual_seed(3), task_weighting=weighting)
        for u, v in zip(x, y, strict=True):
            assert torch.equal(u, v)


def test_state_dict_round_trip_weights_only() -> None:
    rng = np.random.default_rng(8)
    buf = EpisodeReplay(3, 17, OBS, ACT, H)
    for _ in range(12):  # wraps the rings
        buf.add_episode(int(rng.integers(3)), *make_episode(rng, int(rng.integers(1, 18)), terminal=True))
    stream = io.BytesIO()
    torch.save(buf.state_dict(), stream)
    stream.seek(0)
    state = torch.load(stream, weights_only=True)
    other = EpisodeReplay(3, 17, OBS, ACT, H)
    other.load_state_dict(state)
    assert torch.equal(other.sizes, buf.sizes)
    _assert_same_samples(buf, other)
    # load_state_dict copies: later writes to the loaded buffer do not alias the state.
    other.add_episode(0, *make_episode(rng, 5, terminal=False))
    assert not torch.equal(other.state_dict()["entry"], state["entry"])


@pytest.mark.parametrize(
    "dims",
    [
        (3, 17, OBS, ACT, H),
        (2, 18, OBS, ACT, H),
        (2, 17, OBS + 1, ACT, H),
        (2, 17, OBS, ACT + 1, H),
        (2, 17, OBS, ACT, 5),
    ],
)
def test_load_state_dict_dimension_mismatch(dims: tuple[int, ...]) -> None:
    buf = EpisodeReplay(2, 17, OBS, ACT, H)
    buf.add_episode(0, *make_episode(np.random.default_rng(0), 5, terminal=False))
    with pytest.raises(ValueError, match="does not match"):
        EpisodeReplay(*dims).load_state_dict(buf.state_dict())


def test_load_state_dict_rejects_bad_tensors() -> None:
    buf = EpisodeReplay(2, 17, OBS, ACT, H)
    state = dict(buf.state_dict())
    state["next_obs"] = torch.zeros(2 * 17, OBS + 1)
    with pytest.raises(ValueError, match="next_obs"):
        EpisodeReplay(2, 17, OBS, ACT, H).load_state_dict(state)
    state = dict(buf.state_dict())
    del state["step"]
    with pytest.raises(ValueError, match="missing"):
        EpisodeReplay(2, 17, OBS, ACT, H).load_state_dict(state)
    state = dict(buf.state_dict())
    state["ptr"] = torch.tensor([3, 0])
    with pytest.raises(ValueError, match="inconsistent"):
        EpisodeReplay(2, 17, OBS, ACT, H).load_state_dict(state)


@pytest.mark.parametrize(
    "dims", [(0, 10, 3, 2, 4), (2, 0, 3, 2, 4), (2, 10, 0, 2, 4), (2, 10, 3, 0, 4), (2, 10, 3, 2, 0)]
)
def test_constructor_rejects_non_positive(dims: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="positive integer"):
        EpisodeReplay(*dims)


def test_bad_inputs_raise() -> None:
    rng = np.random.default_rng(10)
    buf = EpisodeReplay(2, 10, OBS, ACT, H)
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="none of the allowed tasks"):
        buf.sample(4, gen)  # empty buffer
    obs, actions, rewards, next_obs, terminated = make_episode(rng, 5, terminal=False)
    with pytest.raises(ValueError, match="task index"):
        buf.add_episode(2, obs, actions, rewards, next_obs, terminated)
    with pytest.raises(ValueError, match="task index"):
        buf.add_episode(-1, obs, actions, rewards, next_obs, terminated)
    with pytest.raises(ValueError, match="integer index"):
        buf.add_episode(0.5, obs, actions, rewards, next_obs, terminated)
    with pytest.raises(ValueError, match="obs"):
        buf.add_episode(0, obs[:, :2], actions, rewards, next_obs, terminated)
    with pytest.raises(ValueError, match="actions"):
        buf.add_episode(0, obs, actions[:4], rewards, next_obs, terminated)
    with pytest.raises(ValueError, match="rewards"):
        buf.add_episode(0, obs, actions, rewards[:, None], next_obs, terminated)
    with pytest.raises(ValueError, match="next_obs"):
        buf.add_episode(0, obs, actions, rewards, next_obs[:, :1], terminated)
    with pytest.raises(ValueError, match="terminated"):
        buf.add_episode(0, obs, actions, rewards, next_obs, terminated[:3])
    with pytest.raises(ValueError, match="obs"):
        buf.add_episode(0, obs[0], actions, rewards, next_obs, terminated)
    with pytest.raises(ValueError, match="capacity"):
        buf.add_episode(0, *make_episode(rng, 11, terminal=False))
    with pytest.raises(ValueError, match="empty"):
        buf.add_episode(0, np.zeros((0, OBS)), np.zeros((0, ACT)), np.zeros(0), np.zeros((0, OBS)), np.zeros(0, bool))
    assert len(buf) == 0  # nothing was written by the failed calls
    buf.add_episode(0, obs, actions, rewards, next_obs, terminated)
    with pytest.raises(ValueError, match="batch_size"):
        buf.sample(0, gen)
    with pytest.raises(ValueError, match="task_weighting"):
        buf.sample(4, gen, task_weighting="episode")
    with pytest.raises(ValueError, match="position out of range"):
        buf.gather(torch.tensor([0]), torch.tensor([5]))
    with pytest.raises(ValueError, match="position out of range"):
        buf.gather(torch.tensor([1]), torch.tensor([0]))  # task 1 holds nothing
    with pytest.raises(ValueError, match="task indices"):
        buf.gather(torch.tensor([2]), torch.tensor([0]))
    with pytest.raises(ValueError, match="1-D"):
        buf.gather(torch.tensor([0, 0]), torch.tensor([0]))


def test_sizes_counts_and_memory_accounting() -> None:
    rng = np.random.default_rng(11)
    buf = EpisodeReplay(3, 10, OBS, ACT, H)
    buf.add_episode(0, *make_episode(rng, 7, terminal=False))
    buf.add_episode(0, *make_episode(rng, 7, terminal=False))  # wraps: size capped at capacity
    buf.add_episode(2, *make_episode(rng, 4, terminal=True))
    assert buf.sizes.tolist() == [10, 0, 4]
    assert buf.num_transitions(0) == 10 and buf.num_transitions() == 14 == len(buf)
    sizes = buf.sizes
    sizes[0] = 0  # a copy
    assert buf.num_transitions(0) == 10
    assert buf.bytes_per_transition == 4 * C + 4 * OBS + 1 + 4  # independent of H
    assert buf.nbytes >= 30 * buf.bytes_per_transition
    assert buf.nbytes < 31 * buf.bytes_per_transition + 64


def test_state_dict_keeps_only_the_filled_slots_and_round_trips() -> None:
    replay = EpisodeReplay(num_tasks=3, capacity_per_task=50, obs_dim=2, action_dim=1, history_length=3)
    rng = np.random.default_rng(0)
    for task, length in ((0, 7), (2, 20), (2, 40)):  # task 2 wraps, task 1 stays empty
        replay.add_episode(task, rng.normal(size=(length, 2)), rng.normal(size=(length, 1)), rng.normal(size=length),
                           rng.normal(size=(length, 2)), np.zeros(length, dtype=bool))
    state = replay.state_dict()
    assert state["entry"].shape[0] == state["next_obs"].shape[0] == 7 + 50
    copy = EpisodeReplay(num_tasks=3, capacity_per_task=50, obs_dim=2, action_dim=1, history_length=3)
    copy.load_state_dict(state)
    task, position = torch.tensor([0, 0, 2, 2, 2]), torch.tensor([0, 6, 0, 9, 49])
    for a, b in zip(replay.gather(task, position), copy.gather(task, position), strict=True):
        assert torch.equal(a, b)
