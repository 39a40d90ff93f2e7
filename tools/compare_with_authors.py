"""Check "the same update as the authors'": this project and the authors' released MQL code on identical inputs.

Usage (not run by CI: the authors' code is CC-BY-NC and is not part of this repository; bring your own checkout)::

    git clone https://github.com/amazon-research/meta-q-learning /path/to/meta-q-learning
    pip install scikit-learn        # their algs/MQL/mql.py imports it (this project's test extra has it)
    python tools/compare_with_authors.py --authors-repo /path/to/meta-q-learning [--config cheetah_vel] [--speed]

What it does, on a benchmark's shipped settings (network sizes, H, learning rate, policy delay, adaptation settings)
with a few training tasks of that family:

1. collects real episodes of the family with this project's collector (``history_padding: authors``), and builds the
   same replay with zero padding (``paper``) from the same episodes;
2. **windows**: runs one episode through the authors' ``Runner.run`` (their runner, with this project's actor as its
   policy) and compares the windows it stores with what this project's replay gathers for that episode;
3. **meta-training update**: builds the authors' ``Actor``/``Critic`` (their ``models/networks.py``) with this
   project's weights, and runs their ``MQL.train_TD3`` and this project's ``td3_update`` on the same minibatches with
   the same target-policy noise (their global torch stream and this project's generator, seeded alike); compares
   losses and every online and target parameter, with plain and fused Adam;
4. **adaptation under the ``authors`` preset**: runs their ``MQL.adapt`` (``train_cs``, ``get_propensity``,
   ``do_training``) and this project's :class:`~mql_lightning.adaptation.Adaptation` on the same classifier rows and
   minibatches, with the same target-policy noise; compares the classifier's coefficients, beta of every Eq. 19
   minibatch, lambda, ESS, the proximal penalty of every update and the adapted parameters, with their constant
   ``prox_coef`` and with their ``--use_ess_clipping`` (``lambda_per_minibatch``);
5. **the ``paper`` default**: the same inputs (zero-padded windows) through this project's defaults, and the authors'
   settings with one switch at a time set back to the paper's, each against the authors' code: what differs, and
   by how much;
6. with ``--speed``, **speed**: updates per second of their ``MQL.train_TD3`` (their batches handed over as their
   buffer hands them out, numpy arrays) and of this project's ``td3_update`` as shipped (compiled GRU kernel, fused
   Adam), each over the same 100 fresh minibatches per repetition, repetitions interleaved, medians, at the
   process's torch threads (``--threads``, default 1).

Only the authors' algorithm and network modules are imported from the given path (``algs/MQL``, ``models``,
``misc/runner_multi_snapshot.py``); their ``misc/utils.py`` (which needs gym, pandas and psutil) is replaced by a
one-function stand-in giving the action width of a Box. Nothing of theirs is copied here. Their batches come from
small stand-ins for their buffers that hand out the batches this project drew, converted to their flat layout.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import functools
import importlib
import io
import math
import sys
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from mql_lightning.adaptation import Adaptation, AdaptationConfig, classifier_rows
from mql_lightning.configs import config_path
from mql_lightning.data.collector import Collector, Episode
from mql_lightning.data.datamodule import MetaRLDataModule
from mql_lightning.data.replay import EpisodeReplay, ReplayBatch
from mql_lightning.modules.agent import TD3Agent, acting_policy
from mql_lightning.modules.context import ContextEncoder
from mql_lightning.modules.td3 import frozen, td3_update

# The authors' released settings (configs/presets/authors.yaml); the data-side switches act before the arithmetic
# compared here (task_weighting picks the batches, which both sides share; warm-up and evaluation windows are
# checked in part 2 and in tests/data/test_history_padding.py).
AUTHORS = {
    "beta_prior_correction": False, "classifier_rows": "authors", "beta_context": "adapting",
    "classifier_solver": "lbfgs", "beta_floor": 0.1,
    "fixed_lambda": 0.1, "proximal_scale": "full", "proximal_new_task": False, "actor_step_first": True,
}
PAPER = {name: getattr(AdaptationConfig(), name) for name in AUTHORS}
PROX_COEF = 0.1  # the authors' constant --prox_coef


# ----------------------------------------------------------------------------------------------- the authors' code
def import_authors(repo: Path) -> dict[str, Any]:
    """Their MQL class, networks and runner, imported from their checkout."""
    if not (repo / "algs" / "MQL" / "mql.py").is_file():
        raise SystemExit(f"compare_with_authors: {repo} is not a checkout of amazon-research/meta-q-learning")
    sys.path.insert(0, str(repo))
    stand_in = types.ModuleType("misc.utils")
    stand_in.get_action_info = lambda space, obs_space=None: (int(space.shape[0]), type(space).__name__)
    importlib.import_module("misc")
    sys.modules["misc.utils"] = stand_in
    return {
        "mql": importlib.import_module("algs.MQL.mql"),
        "networks": importlib.import_module("models.networks"),
        "runner": importlib.import_module("misc.runner_multi_snapshot"),
    }


def authors_networks(
    theirs: dict[str, Any], agent: TD3Agent, hidden: list[int], history_length: int
) -> dict[str, torch.nn.Module]:
    """Their actor, critic and target copies, holding ``agent``'s weights."""
    import gymnasium

    net, o, a = theirs["networks"], agent.obs_dim, agent.action_dim
    z = agent.actor_context.hidden_size
    space = gymnasium.spaces.Box(-1.0, 1.0, (a,), np.float32)
    common = {"action_space": space, "hidden_sizes": hidden, "enable_context": True, "hiddens_dim_conext": [z],
              "input_dim_context": a + 1 + o, "output_conext": z, "only_concat_context": 3,
              "history_length": history_length, "obsr_dim": o}
    make_actor = lambda: net.Actor(input_dim=[o + z], max_action=1.0, **common)  # noqa: E731
    make_critic = lambda: net.Critic(input_dim=[o], dim_others=z, **common)  # noqa: E731
    nets = {name: make() for name, make in (("actor", make_actor), ("actor_target", make_actor),
                                             ("critic", make_critic), ("critic_target", make_critic))}
    for theirs_module, ours in module_pairs(nets, agent):
        theirs_module.load_state_dict(ours.state_dict())
    return nets


def module_pairs(nets: dict[str, torch.nn.Module], agent: TD3Agent) -> list[tuple[torch.nn.Module, torch.nn.Module]]:
    """(their module, this project's module) for every layer and GRU, online and target."""
    pairs = []
    for suffix in ("", "_target"):
        actor, critic = nets[f"actor{suffix}"], nets[f"critic{suffix}"]
        our_actor, our_critic = getattr(agent, f"actor{suffix}"), getattr(agent, f"critic{suffix}")
        pairs += [(actor.actor[0], our_actor.net[0]), (actor.actor[2], our_actor.net[2]), (actor.out, our_actor.net[4])]
        pairs += [(actor.context.recurrent, getattr(agent, f"actor_context{suffix}").gru)]
        for q in ("q1", "q2"):
            pairs += [(getattr(critic, q)[i], getattr(our_critic, q)[i]) for i in (0, 2, 4)]
        pairs += [(critic.context.recurrent, getattr(agent, f"critic_context{suffix}").gru)]
    return pairs


def authors_mql(theirs: dict[str, Any], nets: dict[str, torch.nn.Module], agent: TD3Agent, lr: float | None,
                batch_size: int, settings: AdaptationConfig, use_ess_clipping: bool = False) -> Any:
    with contextlib.redirect_stdout(io.StringIO()):  # their constructor prints its settings
        return theirs["mql"].MQL(
            actor=nets["actor"], actor_target=nets["actor_target"], critic=nets["critic"],
            critic_target=nets["critic_target"], lr=lr, gamma=agent.gamma, ptau=agent.tau,
            policy_noise=agent.policy_noise, noise_clip=agent.noise_clip, policy_freq=agent.policy_delay,
            batch_size=batch_size, max_action=1.0, beta_clip=settings.beta_clip,
            enable_beta_obs_cxt=settings.features == "context_obs", prox_coef=PROX_COEF, lam_csc=settings.C,
            use_ess_clipping=use_ess_clipping, use_normalized_beta=False,
        )


def flat(batch: ReplayBatch) -> tuple[np.ndarray, ...]:
    """A batch in the authors' layout: (x, y, u, r, d, pu, pr, px, nu, nr, nx), histories flattened per row."""
    a, b = batch.action.shape[1], batch.obs.shape[0]

    def split(window: torch.Tensor) -> list[np.ndarray]:
        actions, rewards, observations = window[..., :a], window[..., a], window[..., a + 1 :]
        return [actions.reshape(b, -1).numpy(), rewards.numpy(), observations.reshape(b, -1).numpy()]

    return (batch.obs.numpy(), batch.next_obs.numpy(), batch.action.numpy(), batch.reward[:, None].numpy(),
            batch.terminated[:, None].numpy(), *split(batch.history), *split(batch.next_history))


class BatchQueue:
    """Stands in for their ``Buffer``: ``sample`` hands out the given batches, in order."""

    def __init__(self, batches: list[ReplayBatch]) -> None:
        self.batches: Iterator[ReplayBatch] = iter(batches)

    def sample(self, batch_size: int) -> tuple[np.ndarray, ...]:
        batch = next(self.batches)
        assert batch.obs.shape[0] == batch_size, (batch.obs.shape, batch_size)
        return flat(batch)


class Snapshots:
    """Stands in for their ``MultiTasksSnapshot``: the classifier's rows, and the new task's Eq. 18 batches."""

    def __init__(self, rows: ReplayBatch, per_task: int, eq18: list[ReplayBatch] | None = None) -> None:
        self.rows, self.per_task, self.eq18 = rows, per_task, BatchQueue(eq18 or [])

    def size_rb(self, task_id: int) -> int:
        return self.rows.obs.shape[0]

    def get_buffer(self, task_id: int) -> BatchQueue:
        return self.eq18

    def sample(self, task_ids: list[int], batch_size: int) -> tuple[np.ndarray, ...]:
        x, _, _, _, _, pu, pr, px, *_ = flat(self.rows)
        if len(task_ids) == 1:
            return pu, pr, px, x
        assert batch_size == self.per_task, (batch_size, self.per_task)
        shape = (len(task_ids), batch_size)
        return tuple(v.reshape(*shape, -1) for v in (pu, pr, px, x))


# ----------------------------------------------------------------------------------------------------- this project
@dataclasses.dataclass
class Setting:
    """A benchmark's shipped settings and the data collected for the comparison."""

    agent: TD3Agent
    hidden: list[int]
    lr: float
    batch_size: int
    adaptation: AdaptationConfig
    replays: dict[str, EpisodeReplay]  # per history padding, the same transitions
    new_data: dict[str, EpisodeReplay]
    datamodule: MetaRLDataModule
    agent_args: dict[str, Any]  # the config's TD3Agent arguments, without the context encoder
    context_size: int


def build(config: str, tasks: int, seed: int) -> Setting:
    cfg = yaml.safe_load(config_path(config).read_text())
    agent_args = dict(cfg["model"]["agent"]["init_args"])
    z = agent_args.pop("context")["init_args"]["hidden_size"]
    data = {k: v for k, v in cfg["data"].items() if k in ("env_id", "env_kwargs", "history_length", "task_seed", "ood")}
    dm = MetaRLDataModule(**data, num_train_tasks=tasks, num_val_tasks=1, num_test_tasks=1,
                          replay_capacity=tasks * 2000, exploration_noise=cfg["data"]["exploration_noise"],
                          history_padding="authors")
    torch.manual_seed(seed)
    # nn.GRU itself, as theirs: the released code's arithmetic (configs/presets/authors.yaml selects it too).
    agent = TD3Agent(
        dm.obs_dim, dm.action_dim, context=lambda d: ContextEncoder(d, z, implementation="nn"), **agent_args
    )
    adaptation = AdaptationConfig(**cfg["adaptation"]["settings"])
    rng = np.random.default_rng(seed)
    collector = dm.collector(dm.history_length)
    # Random actions on every task (the warm-up), then one episode each with the agent acting plus noise.
    episodes: list[Episode] = []
    ids = list(range(tasks))
    for policy in (None, acting_policy(agent)):
        episodes += collector.rollout(dm.tasks.train, ids, rng, policy, dm.exploration_noise)
    new = collector.rollout([dm.task("val", 0)], [0], rng, acting_policy(agent))  # noise-free, as they collect
    collector.close()
    replays, new_data = {}, {}
    for padding in ("authors", "zeros"):
        replays[padding] = fill(EpisodeReplay(tasks, 2000, dm.obs_dim, dm.action_dim, dm.history_length, padding),
                                episodes)
        new_data[padding] = fill(EpisodeReplay(1, 2000, dm.obs_dim, dm.action_dim, dm.history_length, padding), new)
    lr = cfg["model"]["actor_optimizer"]["init_args"]["lr"]
    return Setting(agent, list(agent_args.get("hidden_sizes", [300, 300])), lr, cfg["data"]["batch_size"], adaptation,
                   replays, new_data, dm, agent_args, z)


def fill(replay: EpisodeReplay, episodes: list[Episode]) -> EpisodeReplay:
    for ep in episodes:
        task = ep.task if replay.num_tasks > 1 else 0
        start = ep.start_action if replay.has_start_entry else None
        replay.add_episode(task, ep.obs, ep.actions, ep.rewards, ep.next_obs, ep.terminated, start)
    return replay


# ------------------------------------------------------------------------------------------------------- results
Row = tuple  # (part, what, max abs difference, scale for the relative difference[, rounding floor])
BEYOND = 1e-4  # parameter entries differing by more than this are counted


def max_diff(a: Any, b: Any) -> tuple[float, float]:
    x = torch.as_tensor(np.asarray(a, dtype=np.float64) if not isinstance(a, torch.Tensor) else a).double()
    y = torch.as_tensor(np.asarray(b, dtype=np.float64) if not isinstance(b, torch.Tensor) else b).double()
    x, y = x.reshape(-1), y.reshape(-1)
    return float((x - y).abs().max()) if x.numel() else 0.0, float(y.abs().max()) if y.numel() else 0.0


def parameter_pairs(reference: Any, agent: TD3Agent) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(reference tensor, this project's tensor) of every parameter, online and target; ``reference`` is the
    authors' networks (a dict) or another agent of this project."""
    if isinstance(reference, TD3Agent):
        theirs = reference.state_dict()
        return [(theirs[k], v) for k, v in agent.state_dict().items()]
    return [(p, q) for theirs, ours in module_pairs(reference, agent)
            for p, q in zip(theirs.state_dict().values(), ours.state_dict().values(), strict=True)]


def parameter_row(part: str, label: str, reference: Any, agent: TD3Agent, floor: float = 0.0) -> Row:
    """Max abs difference of all parameters, with how many entries differ by more than BEYOND."""
    diffs = torch.cat([(q.double() - p.double()).abs().reshape(-1) for p, q in parameter_pairs(reference, agent)])
    scale = max(float(p.abs().max()) for p, _ in parameter_pairs(reference, agent))
    beyond = int((diffs > BEYOND).sum())
    what = f"{label} ({beyond:,} of {diffs.numel():,} entries differ by > {BEYOND:g})"
    return (part, what, float(diffs.max()), scale, floor)


# ------------------------------------------------------------------------------------------------------- part 2
def compare_windows(theirs: dict[str, Any], s: Setting, seed: int) -> list[Row]:
    """One episode through their Runner.run, and this project's gather of the same episode."""
    dm, agent = s.datamodule, s.agent
    env = dm.make_env()
    env.unwrapped.set_task(dm.tasks.train[0])

    class OldApi:  # the gym interface their runner speaks
        action_space = env.action_space

        def reset(self) -> np.ndarray:
            return env.reset(seed=seed)[0]

        def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, dict]:
            obs, reward, terminated, truncated, info = env.step(np.asarray(action, dtype=np.float32))
            return obs, reward, terminated or truncated, info

    class Policy:  # this project's actor as their model
        def select_action(self, obs: np.ndarray, pu: np.ndarray, pr: np.ndarray, px: np.ndarray) -> np.ndarray:
            h, a = dm.history_length, dm.action_dim
            window = np.concatenate([pu.reshape(h, a), pr.reshape(h, 1), px.reshape(h, -1)], 1)
            act = acting_policy(agent)(torch.tensor(obs, dtype=torch.float32)[None],
                                       torch.tensor(window, dtype=torch.float32)[None])
            return act[0].numpy().astype(np.float64)

    buffer, snapshots = _Recorder(), _Recorder()
    np.random.seed(seed)
    runner = theirs["runner"].Runner(env=OldApi(), model=Policy(), replay_buffer=buffer, tasks_buffer=snapshots,
                                     burn_in=0, expl_noise=dm.exploration_noise, max_path_length=200,
                                     history_length=dm.history_length)
    runner.run(update_iter=0, task_id=0)
    stored = buffer.items
    obs = np.array([t[0] for t in stored], np.float32)
    actions, rewards = np.array([t[2] for t in stored], np.float32), np.array([t[3] for t in stored], np.float32)
    next_obs = np.array([t[1] for t in stored], np.float32)
    start = stored[0][5].reshape(dm.history_length, -1)[-1]  # e_-1's action: the last entry of the first window
    rows: list[Row] = []
    gathered = {}
    for padding in ("authors", "zeros", "start_entry"):
        replay = EpisodeReplay(1, len(stored), dm.obs_dim, dm.action_dim, dm.history_length, padding)
        replay.add_episode(0, obs, actions, rewards, next_obs, np.zeros(len(stored), bool),
                           None if padding == "zeros" else start)
        gathered[padding] = flat(replay.gather(torch.zeros(len(stored), dtype=torch.long), torch.arange(len(stored))))
    theirs_flat = [np.array([t[k] for t in stored], np.float32) for k in range(5, 11)]
    for padding, label in (("authors", "history_padding: authors"), ("zeros", "history_padding: zeros (paper)"),
                           ("start_entry", "history_padding: start_entry")):
        ours = gathered[padding][5:]
        prev = max(max_diff(o, t)[0] for o, t in zip(ours[:3], theirs_flat[:3], strict=True))
        nxt = max(max_diff(o, t)[0] for o, t in zip(ours[3:], theirs_flat[3:], strict=True))
        rows.append(("windows", f"{label}: window of (o_t, a_t), {len(stored)} steps", prev, 1.0))
        rows.append(("windows", f"{label}: window of o_t+1", nxt, 1.0))
    early = _Recorder()
    runner.replay_buffer, runner.tasks_buffer = early, _Recorder()
    runner.run(update_iter=0, task_id=0, early_leave=200 / 4)
    cut = Collector(dm.make_env, dm.obs_dim, dm.action_dim, dm.history_length).rollout(
        [dm.tasks.train[0]], [0], np.random.default_rng(seed), max_steps=50)[0].length
    rows.append(("warm-up", "episode length: their early_leave vs data.warmup_episode_length 50",
                 float(abs(len(early.items) - cut)), None))
    env.close()
    return rows


class _Recorder:
    """Stands in for their buffers in Runner.run: keeps what it is given."""

    def __init__(self) -> None:
        self.items: list[tuple] = []

    def add(self, *args: Any) -> None:
        self.items.append(args[-1])


# ------------------------------------------------------------------------------------------------------- part 3
def sampled_batches(s: Setting, seed: int, updates: int) -> list[ReplayBatch]:
    """``updates`` minibatches of the authors-layout replay, the same for both sides' updates."""
    sampler = torch.Generator().manual_seed(seed)
    return [s.replays["authors"].sample(s.batch_size, sampler, task_weighting="transition") for _ in range(updates)]


def our_update(agent: TD3Agent, s: Setting, seed: int, fused: bool) -> Callable[[ReplayBatch, int], tuple]:
    """``td3_update`` of ``agent`` with Adam optimisers of its own and the target-noise stream ``seed + 1`` (theirs
    draws from the global stream seeded the same): ``(batch, update index) -> td3_update's losses``."""
    actor_opt = torch.optim.Adam(agent.actor_parameters(), lr=s.lr, fused=fused)
    critic_opt = torch.optim.Adam(agent.critic_parameters(), lr=s.lr, fused=fused)
    noise = torch.Generator().manual_seed(seed + 1)
    freeze = functools.partial(frozen, list(agent.critic_parameters()))

    def update(batch: ReplayBatch, index: int) -> tuple:
        return td3_update(agent, batch, index, actor_opt, critic_opt, torch.Tensor.backward, freeze_critic=freeze,
                          generator=noise)

    return update


def compare_update(theirs: dict[str, Any], s: Setting, seed: int, updates: int) -> list[Row]:
    rows: list[Row] = []
    for fused in (False, True):
        agent = copy.deepcopy(s.agent)
        nets = authors_networks(theirs, agent, s.hidden, s.datamodule.history_length)
        mql = authors_mql(theirs, nets, agent, s.lr, s.batch_size, s.adaptation)
        batches = sampled_batches(s, seed, updates)
        torch.manual_seed(seed + 1)
        out, _ = mql.train_TD3(replay_buffer=BatchQueue(batches), iterations=updates)
        update = our_update(agent, s, seed, fused)
        critic_losses, actor_losses = [], []
        for it, batch in enumerate(batches):
            # Their `it % policy_freq == 0` (it from 0) is this update index's `% policy_delay == 0`.
            loss_c, loss_a, _ = update(batch, it + agent.policy_delay)
            critic_losses.append(float(loss_c.detach()))
            if loss_a is not None:
                actor_losses.append(float(loss_a.detach()))
        adam = "fused Adam" if fused else "Adam"
        rows.append(("update", f"critic loss, mean of {updates} updates ({adam})",
                     abs(float(np.mean(critic_losses)) - out["critic_loss"]), abs(out["critic_loss"])))
        ours_actor = agent.policy_delay * float(np.sum(actor_losses)) / updates
        rows.append(("update", f"actor loss, mean ({adam})", abs(ours_actor - out["actor_loss"]),
                     abs(out["actor_loss"])))
        rows.append(parameter_row("update", f"all online and target parameters after {updates} updates ({adam})",
                                  nets, agent))
    return rows


# ------------------------------------------------------------------------------------------------------- part 6
def compare_speed(theirs: dict[str, Any], s: Setting, seed: int, updates: int = 100, repeats: int = 5) -> str:
    """Median updates/s of their ``train_TD3`` and of ``td3_update`` with the shipped encoders, interleaved."""
    nets = authors_networks(theirs, s.agent, s.hidden, s.datamodule.history_length)
    mql = authors_mql(theirs, nets, s.agent, s.lr, s.batch_size, s.adaptation)
    # The shipped encoder (the compiled kernel), holding the same weights as the nn.GRU ones compared above.
    agent = TD3Agent(s.agent.obs_dim, s.agent.action_dim, context=lambda d: ContextEncoder(d, s.context_size),
                     **s.agent_args)
    agent.load_state_dict(s.agent.state_dict())
    update, batches, count = our_update(agent, s, seed, fused=True), sampled_batches(s, seed, updates), 0

    def ours() -> int:
        nonlocal count
        for batch in batches:
            count += 1
            update(batch, count)
        return updates

    def authors() -> int:
        mql.train_TD3(replay_buffer=BatchQueue(batches), iterations=updates)
        return updates

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from _common import interleaved_rates  # the benchmarks' interleaved medians

    ours(), authors()  # warm-up: compiling or loading the kernel, first allocations
    rates = interleaved_rates({"ours": ours, "authors": authors}, repeats)
    ours_rate, authors_rate = rates["ours"], rates["authors"]
    return (f"speed, {torch.get_num_threads()} torch thread(s), medians of {repeats} x {updates} updates: td3_update "
            f"{ours_rate:.1f} updates/s, their train_TD3 {authors_rate:.1f}/s: {ours_rate / authors_rate:.2f}x")


# ------------------------------------------------------------------------------------------------------- part 4
@dataclasses.dataclass
class Inputs:
    """What both adaptations get: classifier rows and minibatches (per padding: same transitions)."""

    new_rows: dict[str, ReplayBatch]
    replay_rows: dict[str, ReplayBatch]
    per_task: int
    eq18: dict[str, list[ReplayBatch]]
    eq19: dict[str, list[ReplayBatch]]


def adaptation_inputs(s: Setting, seed: int, replay_updates: int) -> Inputs:
    authors_cfg = dataclasses.replace(s.adaptation, **AUTHORS)
    new_rows, replay_rows, eq18, eq19 = {}, {}, {}, {}
    n_new = s.new_data["authors"].num_transitions()
    for padding in ("authors", "zeros"):
        g = torch.Generator().manual_seed(seed)  # the same draws for both paddings: the same transitions
        rows = classifier_rows(s.new_data[padding], s.replays[padding], authors_cfg, g)
        new_rows[padding], replay_rows[padding] = rows
        eq18[padding] = [s.new_data[padding].sample(n_new, g) for _ in range(s.adaptation.new_task_updates)]
        eq19[padding] = [s.replays[padding].sample(s.adaptation.replay_batch_size, g, task_weighting="transition")
                         for _ in range(replay_updates)]
    per_task = n_new // s.replays["authors"].num_tasks + 2
    return Inputs(new_rows, replay_rows, per_task, eq18, eq19)


@dataclasses.dataclass
class Trace:
    """Per-update beta, lambda and scaled penalties, the classifier and the adapted networks."""

    betas: list[torch.Tensor]
    lambdas: list[float]
    penalties: list[float]
    coef: np.ndarray
    intercept: float
    final: Any


def run_authors(theirs: dict[str, Any], s: Setting, inputs: Inputs, seed: int, ess_clipping: bool) -> Trace:
    agent = copy.deepcopy(s.agent)
    nets = authors_networks(theirs, agent, s.hidden, s.datamodule.history_length)
    mql = authors_mql(theirs, nets, agent, s.lr, s.adaptation.replay_batch_size, s.adaptation, ess_clipping)
    mql.set_tasks_list(list(range(s.replays["authors"].num_tasks)))
    betas, lambdas, penalties, fit = [], [], [], {}
    train_cs, get_propensity, get_prox_penalty = mql.train_cs, mql.get_propensity, mql.get_prox_penalty

    def record_fit(*args: Any, **kwargs: Any) -> Any:
        fit["model"], info = train_cs(*args, **kwargs)
        return fit["model"], info

    def record_beta(*args: Any, **kwargs: Any) -> Any:
        beta, clipping = get_propensity(*args, **kwargs)
        betas.append(beta.reshape(-1).clone())
        lambdas.append(float(mql.prox_coef))
        return beta, clipping

    def record_penalty(model: Any, anchor: Any) -> torch.Tensor:
        value = get_prox_penalty(model, anchor)
        penalties.append(float(mql.prox_coef * value.detach()))
        return value

    mql.train_cs, mql.get_propensity, mql.get_prox_penalty = record_fit, record_beta, record_penalty
    new = Snapshots(inputs.new_rows["authors"], inputs.per_task, inputs.eq18["authors"])
    train = Snapshots(inputs.replay_rows["authors"], inputs.per_task)
    torch.manual_seed(seed + 2)
    with contextlib.redirect_stdout(io.StringIO()):
        mql.adapt(train_replay_buffer=BatchQueue(inputs.eq19["authors"]), train_tasks_buffer=train,
                  eval_task_buffer=new, task_id=-1, snap_iter_nums=len(inputs.eq18["authors"]),
                  main_snap_iter_nums=len(inputs.eq19["authors"]), sample_mult=1)
    model = fit["model"]
    return Trace(betas, lambdas, penalties, model.coef_[0], float(model.intercept_[0]), nets)


def run_ours(s: Setting, inputs: Inputs, seed: int, config: AdaptationConfig, padding: str,
             plain_adam: bool = False) -> Trace:
    run = Adaptation(s.agent, config, torch.Generator().manual_seed(seed + 2))
    if plain_adam:  # their optimiser instead of this project's fused Adam: shows what float rounding alone does
        trainer = run._trainer
        trainer.actor_opt = torch.optim.Adam(trainer.actor_params, lr=config.lr)
        trainer.critic_opt = torch.optim.Adam(trainer.critic_params, lr=config.lr)
    if config.classifier_rows == "authors":
        run.fit_classifier(inputs.new_rows[padding], inputs.replay_rows[padding])
    else:  # the paper's rows, drawn for this run
        run.fit_classifier(*classifier_rows(s.new_data[padding], s.replays[padding], config,
                                            torch.Generator().manual_seed(seed)))
    run.estimate_lambda(inputs.eq19[padding][0])
    scale = 0.5 if config.proximal_scale == "half" else 1.0
    betas, lambdas, penalties = [], [], []
    records = [run.new_task_update(b) for b in inputs.eq18[padding]]
    records += [run.replay_update(b) for b in inputs.eq19[padding]]
    for record in records:
        if record.beta is not None:
            betas.append(record.beta)
            lambdas.append(float(record.lam))
        # Their order: the critic's penalty, then the actor's (when it steps).
        penalties += [scale * float(record.lam) * float(record.proximal[k]) for k in ("critic", "actor")
                      if k in record.proximal]
    return Trace(betas, lambdas, penalties, -run.classifier.weight.numpy(), -float(run.classifier.bias), run.agent)


def trace_rows(part: str, label: str, ours: Trace, theirs: Trace, floor: float = 0.0, ess: bool = False) -> list[Row]:
    beta = max((max_diff(a, b) for a, b in zip(ours.betas, theirs.betas, strict=True)), default=(0.0, 0.0))
    rows = [(part, f"{label}: beta of every Eq. 19 minibatch", *beta)]
    rows.append((part, f"{label}: lambda of every Eq. 19 update", *max_diff(ours.lambdas, theirs.lambdas)))
    if ess:
        rows.append((part, f"{label}: ESS of every Eq. 19 minibatch (1 - lambda)",
                     *max_diff([1 - x for x in ours.lambdas], [1 - x for x in theirs.lambdas])))
    if len(ours.penalties) == len(theirs.penalties):
        rows.append((part, f"{label}: proximal penalty of every update", *max_diff(ours.penalties, theirs.penalties)))
    else:
        rows.append((part, f"{label}: proximal penalties: {len(ours.penalties)} here, {len(theirs.penalties)} there",
                     math.inf, None))
    rows.append(parameter_row(part, f"{label}: adapted parameters", theirs.final, ours.final, floor))
    return rows


def compare_adaptation(theirs: dict[str, Any], s: Setting, seed: int, replay_updates: int) -> list[Row]:
    inputs = adaptation_inputs(s, seed, replay_updates)
    authors_cfg = dataclasses.replace(s.adaptation, **AUTHORS)
    reference = run_authors(theirs, s, inputs, seed, ess_clipping=False)
    ours = run_ours(s, inputs, seed, authors_cfg, "authors")
    # The rounding floor: this project against itself with another float order (plain Adam, as the authors use,
    # instead of fused). Adam turns rounding in near-zero gradients into steps of up to lr, so after a hundred
    # updates a few entries differ by up to ~1e-3 between two equally valid float orders.
    plain = run_ours(s, inputs, seed, authors_cfg, "authors", plain_adam=True)
    floor_row = parameter_row("adaptation", "rounding floor: this project, fused vs plain Adam", plain.final,
                              ours.final)
    floor = floor_row[2]
    floor_row = (*floor_row[:4], "reference")
    # Their labels are new = -1: their coefficients are minus this project's.
    rows: list[Row] = [("adaptation", "authors preset: classifier coefficients (scikit-learn lbfgs on both sides)",
                        *max_diff(np.r_[ours.coef, ours.intercept], np.r_[reference.coef, reference.intercept]))]
    rows += trace_rows("adaptation", "authors preset", ours, reference, floor)
    rows.append(parameter_row("adaptation", "authors preset with plain Adam as theirs: adapted parameters",
                              reference.final, plain.final, floor))
    rows.append(floor_row)
    newton = run_ours(s, inputs, seed, dataclasses.replace(authors_cfg, classifier_solver="newton"), "authors")
    rows.append(("adaptation", "classifier_solver newton (else authors): coefficients, exact optimum vs their lbfgs",
                 *max_diff(np.r_[newton.coef, newton.intercept], np.r_[reference.coef, reference.intercept])))
    clipped = run_authors(theirs, s, inputs, seed, ess_clipping=True)
    per_minibatch = run_ours(s, inputs, seed, dataclasses.replace(authors_cfg, lambda_per_minibatch=True), "authors")
    rows += trace_rows("adaptation", "authors preset + lambda_per_minibatch vs their --use_ess_clipping",
                       per_minibatch, clipped, floor, ess=True)
    # Part 5: the paper default on the same transitions, and one switch at a time back to the paper's value.
    paper = run_ours(s, inputs, seed, s.adaptation, "zeros")
    rows += trace_rows("paper default", "all paper defaults", paper, reference, floor)
    for name, value in PAPER.items():
        one = run_ours(s, inputs, seed, dataclasses.replace(authors_cfg, **{name: value}), "authors")
        rows.append(parameter_row("one switch", f"{name}: {value!r}, else authors", reference.final, one.final, floor))
    one = run_ours(s, inputs, seed, authors_cfg, "zeros")
    rows.append(parameter_row("one switch", "data.history_padding: 'zeros', else authors", reference.final, one.final,
                              floor))
    return rows


# --------------------------------------------------------------------------------------------------------- main
def print_table(rows: list[Row], atol: float, rtol: float) -> None:
    print("| part | compared | max abs diff | max rel diff | verdict |")
    print("|---|---|---|---|---|")
    for part, what, diff, scale, *floor in rows:
        rel = diff / scale if scale else (0.0 if diff == 0 else math.inf)
        if floor == ["reference"]:
            verdict = "(the floor)"
        elif diff <= atol + rtol * (scale or 0.0):
            verdict = "equal"
        elif floor and diff <= floor[0]:
            verdict = "equal to rounding (<= the floor)"
        else:
            verdict = "DIFFERS"
        print(f"| {part} | {what} | {diff:.3g} | {rel:.3g} | {verdict} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--authors-repo", type=Path, required=True, help="checkout of amazon-research/meta-q-learning")
    parser.add_argument("--config", default="cheetah_vel", help="shipped benchmark config whose settings to use")
    parser.add_argument("--tasks", type=int, default=10, help="training tasks of the family to collect on")
    parser.add_argument("--updates", type=int, default=6, help="meta-training updates compared")
    parser.add_argument("--replay-updates", type=int, default=None, help="Eq. 19 updates (default: the config's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--atol", type=float, default=1e-5, help="'equal' means |diff| <= atol + rtol * |value|")
    parser.add_argument("--rtol", type=float, default=1e-4)
    parser.add_argument("--speed", action="store_true", help="also time their train_TD3 against td3_update (part 6)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    theirs = import_authors(args.authors_repo.resolve())
    start = time.perf_counter()
    s = build(args.config, args.tasks, args.seed)
    rows = compare_windows(theirs, s, args.seed)
    rows += compare_update(theirs, s, args.seed, args.updates)
    rows += compare_adaptation(theirs, s, args.seed, args.replay_updates or s.adaptation.replay_updates)
    print(f"# compare_with_authors: {args.config}, {args.tasks} training tasks, seed {args.seed}, torch "
          f"{torch.__version__}, {args.threads} thread(s), {time.perf_counter() - start:.0f} s; equal = within atol "
          f"{args.atol:g} + rtol {args.rtol:g}")
    print_table(rows, args.atol, args.rtol)
    if args.speed:
        print(f"\n{compare_speed(theirs, s, args.seed)}")


if __name__ == "__main__":
    main()
