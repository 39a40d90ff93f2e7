"""Algorithm 2 of MQL: adapt the meta-trained agent to a new task. Plain functions over the modules, no Trainer.

Per new task, in the order of DESIGN decision 1:

1. collect the adaptation data on the new task with the meta policy;
2. fit the propensity classifier (Eq. 11) on theta_meta's context features, new-task transitions against
   meta-training replay transitions (a share from every training task);
3. beta (Eq. 12) and the effective sample size (Eq. 13) on a fresh replay batch; lambda = 1 - ESS (Remark 3)
   unless fixed;
4. Eq. 18: TD3 updates on the new data, with the proximal term (lambda / 2) ||theta - theta_meta||^2;
5. Eq. 19: TD3 updates on meta-replay minibatches, every sample's critic and actor loss weighted by its beta,
   plus the proximal term.

Everything happens on a deep copy of the meta agent with fresh optimisers, and all randomness comes from the
generators passed in: theta_meta, its optimisers and the training run's random streams are never touched. So an
adaptation can be abandoned at any point: between two collected episodes and two updates it checks for a stop
request (SIGTERM or SIGINT during ``mql fit``, :mod:`mql_lightning.interrupt`) and raises
:class:`~mql_lightning.interrupt.StopRequested`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import gymnasium
import numpy as np
import torch
from torch import nn

from mql_lightning import interrupt
from mql_lightning.data.collector import Collector
from mql_lightning.data.replay import EpisodeReplay, ReplayBatch
from mql_lightning.modules.losses import proximal_term
from mql_lightning.modules.propensity import PropensityClassifier, effective_sample_size, proximal_coefficient
from mql_lightning.modules.td3 import TD3Agent, td3_update

if TYPE_CHECKING:
    from mql_lightning.data.datamodule import MetaRLDataModule
    from mql_lightning.modules.mql import MQL

__all__ = [
    "AdaptationConfig", "AdaptationResult", "AdaptedPolicy", "acting_policy", "adapt", "adapt_agent",
    "collect_adaptation_data",
]


@dataclass(frozen=True)
class AdaptationConfig:
    """Settings of the adaptation phase (Alg. 2). Defaults follow the paper; the authors' choices are options.

    Args:
        num_steps: Environment steps of adaptation data, collected with the meta policy as consecutive episodes
            (the paper: 200; Appendix B also uses 800 steps from one episode and 1,200 over 6 episodes).
        episode_length: Time limit of those episodes; ``None`` keeps the family's (set 800 for "800 steps from one
            episode").
        exploration_noise: Gaussian noise on the meta policy's actions while collecting (the authors: none).
        new_task_updates: TD3 updates on the new data (Eq. 18).
        replay_updates: TD3 updates on beta-weighted meta-replay minibatches (Eq. 19); 0 gives the "Eq. 18 only"
            ablation (beta = 0).
        replay_batch_size: Minibatch size of the Eq. 19 updates and of the ESS estimate.
        lr: Adam learning rate of the adaptation optimisers (fresh for every task).
        C: Inverse L2 strength of the propensity classifier, as scikit-learn's ``C`` (Eq. 11; small = strong).
        beta_clip: beta is capped at ``exp(beta_clip)`` (Remark 4; Table 1's "beta clipping").
        beta_floor: beta below this is set to 0 (the authors' code uses 0.1; the paper has none).
        features: Classifier features: the actor's context ``context`` (the paper) or ``context_obs`` (context and
            observation, the authors' ``enable_beta_obs_cxt``).
        fixed_lambda: A constant proximal coefficient instead of ``1 - ESS`` (the paper's 0.5 ablation, the released
            code's 0.1).
        proximal_new_task: Keep the proximal term in Eq. 18 (the paper); ``False`` as in the released code.
        proximal_scope: Parameters the proximal term covers: ``all`` (actor and critics with their context
            encoders, DESIGN decision 3) or ``actor``.
    """

    num_steps: int = 200
    episode_length: int | None = None
    exploration_noise: float = 0.0
    new_task_updates: int = 10
    replay_updates: int = 100
    replay_batch_size: int = 256
    lr: float = 1e-3
    C: float = 0.1
    beta_clip: float = 1.0
    beta_floor: float | None = None
    features: Literal["context", "context_obs"] = "context"
    fixed_lambda: float | None = None
    proximal_new_task: bool = True
    proximal_scope: Literal["all", "actor"] = "all"

    def __post_init__(self) -> None:
        for name in ("num_steps", "replay_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"adaptation {name} must be >= 1, got {getattr(self, name)}")
        for name in ("new_task_updates", "replay_updates", "exploration_noise", "beta_clip"):
            if getattr(self, name) < 0:
                raise ValueError(f"adaptation {name} must be >= 0, got {getattr(self, name)}")
        if self.lr <= 0 or self.C <= 0:
            raise ValueError(f"adaptation lr and C must be > 0, got lr={self.lr}, C={self.C}")
        if self.episode_length is not None and self.episode_length < 1:
            raise ValueError(f"adaptation episode_length must be >= 1, got {self.episode_length}")
        if self.fixed_lambda is not None and not 0.0 <= self.fixed_lambda <= 1.0:
            raise ValueError(f"adaptation fixed_lambda must lie in [0, 1], got {self.fixed_lambda}")
        if self.features not in ("context", "context_obs") or self.proximal_scope not in ("all", "actor"):
            raise ValueError(f"bad adaptation features {self.features!r} or proximal_scope {self.proximal_scope!r}")


@dataclass
class AdaptationResult:
    """The adapted agent and the statistics of its adaptation."""

    agent: TD3Agent
    ess: float
    lam: float
    beta_mean: float
    classifier_accuracy: float
    new_transitions: int

    def metrics(self) -> dict[str, float]:
        """The per-task numbers logged by the adaptation callback."""
        return {
            "ess": self.ess,
            "lambda": self.lam,
            "beta_mean": self.beta_mean,
            "classifier_accuracy": self.classifier_accuracy,
        }


def collect_adaptation_data(
    env_fn: Callable[[], gymnasium.Env],
    agent: TD3Agent,
    task: dict,
    history_length: int,
    config: AdaptationConfig,
    rng: np.random.Generator,
) -> EpisodeReplay:
    """Step 1 of Alg. 2: ``config.num_steps`` steps on the new task with the meta policy, in a one-task replay.

    Episodes are collected in lockstep, as many at a time as the remaining steps need, until ``num_steps``
    transitions are in (episodes that terminate early are made up for); the last one is cut to fit.
    """
    make = env_fn if config.episode_length is None else _with_time_limit(env_fn, config.episode_length)
    probe = make()
    limit = getattr(probe.spec, "max_episode_steps", None) or config.episode_length or config.num_steps
    probe.close()
    collector = Collector(make, agent.obs_dim, agent.action_dim, history_length)
    policy, episodes, collected = acting_policy(agent), [], 0
    while collected < config.num_steps:
        interrupt.check()
        n = math.ceil((config.num_steps - collected) / limit)
        batch = collector.rollout([task] * n, [0] * n, rng, policy=policy, noise_std=config.exploration_noise)
        episodes += batch
        collected += sum(ep.length for ep in batch)
    collector.close()
    new_data = EpisodeReplay(1, config.num_steps, agent.obs_dim, agent.action_dim, history_length)
    budget = config.num_steps
    for ep in episodes:
        keep = min(ep.length, budget)
        if keep > 0:
            new_data.add_episode(0, ep.obs[:keep], ep.actions[:keep], ep.rewards[:keep], ep.next_obs[:keep],
                                 ep.terminated[:keep])
        budget -= keep
    return new_data


def adapt_agent(
    meta_agent: TD3Agent,
    meta_replay: EpisodeReplay,
    new_data: EpisodeReplay,
    config: AdaptationConfig,
    generator: torch.Generator,
    task_weighting: str = "task",
) -> AdaptationResult:
    """Steps 2-5 of Alg. 2 on a copy of ``meta_agent``; the meta agent itself is left bit-for-bit unchanged.

    Args:
        meta_agent: theta_meta.
        meta_replay: The meta-training replay buffer.
        new_data: The new task's adaptation data (one task).
        config: Adaptation settings.
        generator: CPU generator for every sample and the target-policy noise.
        task_weighting: How meta-replay minibatches are drawn (as in meta-training).

    Returns:
        The adapted agent with ESS, lambda, mean beta and the classifier's training accuracy.
    """
    with torch.inference_mode(False), torch.enable_grad():
        device = next(meta_agent.parameters()).device
        n_new = new_data.num_transitions()
        # Step 2: the classifier on theta_meta's features: every new transition vs an equal share of replay drawn
        # from every training task (DESIGN decision 2).
        new_batch = _to(new_data.gather(torch.zeros(n_new, dtype=torch.long), torch.arange(n_new)), device)
        replay_fit = _to(_per_task_share(meta_replay, n_new, generator), device)
        features = lambda batch: _features(meta_agent, batch, config.features)  # noqa: E731
        classifier = PropensityClassifier(C=config.C, beta_clip=config.beta_clip, beta_floor=config.beta_floor)
        classifier.fit(features(new_batch), features(replay_fit))
        accuracy = classifier.accuracy(features(new_batch), features(replay_fit))
        # Step 3: beta and ESS on a fresh replay batch (Eq. 13, over replay samples only); lambda (Remark 3).
        ess_batch = _to(meta_replay.sample(config.replay_batch_size, generator, task_weighting=task_weighting), device)
        beta = classifier.beta(features(ess_batch))
        ess = float(effective_sample_size(beta))
        lam = proximal_coefficient(ess, config.fixed_lambda)

        agent = copy.deepcopy(meta_agent).train()
        trainer = _ProximalTD3(agent, config, generator)
        # Step 4, Eq. 18: the new data, batch = all of it (drawn with replacement, as the authors do).
        for _ in range(config.new_task_updates):
            interrupt.check()
            batch = _to(new_data.sample(n_new, generator), device)
            trainer.update(batch, None, lam if config.proximal_new_task else 0.0)
        # Step 5, Eq. 19: beta-weighted meta-replay minibatches.
        for _ in range(config.replay_updates):
            interrupt.check()
            batch = _to(meta_replay.sample(config.replay_batch_size, generator, task_weighting=task_weighting), device)
            trainer.update(batch, classifier.beta(features(batch)), lam)
        agent.eval()
    return AdaptationResult(agent, ess, lam, float(beta.mean()), accuracy, n_new)


def adapt(
    model: MQL, datamodule: MetaRLDataModule, task: dict, config: AdaptationConfig | None = None, seed: int = 0
) -> AdaptedPolicy:
    """Adapt a meta-trained model to a task (Alg. 2) and return a policy that acts in a gymnasium env.

    Example::

        model = MQL.load_from_checkpoint("runs/mql/version_0/checkpoints/last.ckpt")
        data = MetaRLDataModule.from_checkpoint("runs/mql/version_0/checkpoints/last.ckpt")
        policy = adapt(model, data, {"goal": [0.5, -0.3]})
        print(policy.result.lam, policy.result.ess)

    Args:
        model: The meta-trained model (its agent is theta_meta and is not changed).
        datamodule: Its DataModule, holding the task family and the meta-training replay buffer.
        task: The new task, a dict of the family's task keys.
        config: Adaptation settings; the defaults follow the paper.
        seed: Seed of the adaptation's own random streams (data collection, minibatches, target noise).

    Returns:
        The adapted policy; ``policy.result`` holds ESS, lambda, mean beta and the classifier's accuracy.
    """
    config = config or AdaptationConfig()
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    new_data = collect_adaptation_data(datamodule.make_env, model.agent, task, datamodule.history_length, config, rng)
    result = adapt_agent(model.agent, datamodule.replay, new_data, config, generator, datamodule.task_weighting)
    return AdaptedPolicy(result.agent, datamodule.eval_history_length, result)


class _ProximalTD3:
    """TD3 updates with optional per-sample weights and the proximal term (lambda / 2) ||theta - theta_meta||^2."""

    def __init__(self, agent: TD3Agent, config: AdaptationConfig, generator: torch.Generator) -> None:
        self.agent, self.generator = agent, generator
        self.actor_params = list(agent.actor_parameters())
        self.critic_params = list(agent.critic_parameters())
        self.actor_anchor = [p.detach().clone() for p in self.actor_params]
        self.critic_anchor = [p.detach().clone() for p in self.critic_params]
        self.proximal_critic = config.proximal_scope == "all"
        self.actor_opt = torch.optim.Adam(self.actor_params, lr=config.lr, fused=True)
        self.critic_opt = torch.optim.Adam(self.critic_params, lr=config.lr, fused=True)
        self.updates = 0

    def update(self, batch: ReplayBatch, weights: torch.Tensor | None, lam: float) -> None:
        self.updates += 1

        def penalty(kind: str) -> torch.Tensor:
            if kind == "actor":
                return 0.5 * lam * proximal_term(self.actor_params, self.actor_anchor)
            if self.proximal_critic:
                return 0.5 * lam * proximal_term(self.critic_params, self.critic_anchor)
            return torch.zeros((), device=batch.obs.device)

        td3_update(
            self.agent, batch, self.updates, self.actor_opt, self.critic_opt, torch.Tensor.backward,
            freeze_critic=lambda: _frozen(self.critic_params), generator=self.generator, weights=weights,
            penalty=penalty if lam > 0 else None,
        )


class AdaptedPolicy:
    """An adapted agent that acts in a gymnasium env, keeping its own context window.

    Example::

        policy = AdaptedPolicy(result.agent, history_length=10)
        obs, _ = env.reset(seed=0)
        policy.reset()
        done = False
        while not done:
            action = policy.act(obs)
            obs, reward, terminated, truncated, _ = env.step(action)
            policy.observe(reward)
            done = terminated or truncated

    Args:
        agent: The adapted TD3 agent.
        history_length: Context window length.
        result: The adaptation statistics, if any.
    """

    def __init__(self, agent: TD3Agent, history_length: int, result: AdaptationResult | None = None) -> None:
        self.agent, self.history_length, self.result = agent, history_length, result
        self._history = torch.zeros(1, history_length, agent.context_input_dim)
        self._pending: tuple[np.ndarray, np.ndarray] | None = None

    def reset(self) -> None:
        """Start a new episode: an empty (all-zero) context window."""
        self._history.zero_()
        self._pending = None

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> np.ndarray:
        """The deterministic action for ``obs``; call :meth:`observe` with the reward after stepping."""
        obs_t = torch.as_tensor(np.asarray(obs, dtype=np.float32)).reshape(1, -1)
        action = self.agent.act(obs_t, self._history).squeeze(0).numpy()
        self._pending = (np.asarray(obs, dtype=np.float32).reshape(-1), action)
        return action

    def observe(self, reward: float) -> None:
        """Append ``(a_t, r_t, o_t)`` of the step just taken to the context window."""
        if self._pending is None:
            raise RuntimeError("observe() must follow act()")
        obs, action = self._pending
        entry = torch.from_numpy(np.concatenate([action, [np.float32(reward)], obs]).astype(np.float32))
        self._history = torch.cat([self._history[:, 1:], entry.view(1, 1, -1)], dim=1)
        self._pending = None


# ------------------------------------------------------------------------------------------------------- helpers
def acting_policy(agent: TD3Agent) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The collector's policy interface for an agent: CPU tensors in, deterministic CPU float32 actions out."""
    device = next(agent.parameters()).device

    @torch.no_grad()
    def act(obs: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        return agent.act(obs.to(device), history.to(device)).float().cpu()

    return act


def _features(agent: TD3Agent, batch: ReplayBatch, kind: str) -> torch.Tensor:
    """Classifier features: theta_meta's actor context on the transition's history (and the observation)."""
    with torch.no_grad():
        if agent.actor_context is None:  # plain TD3 has no context: the observation is all there is
            return batch.obs.float()
        z = agent.actor_context(batch.history).float()
        return torch.cat([z, batch.obs.float()], -1) if kind == "context_obs" else z


def _per_task_share(replay: EpisodeReplay, total: int, generator: torch.Generator) -> ReplayBatch:
    """About ``total`` replay transitions, an equal number from every task holding data."""
    tasks = torch.nonzero(replay.sizes > 0).squeeze(1)
    per_task = max(1, math.ceil(total / len(tasks)))
    task = tasks.repeat_interleave(per_task)
    position = (torch.rand(len(task), generator=generator, dtype=torch.float64) * replay.sizes[task]).long()
    return replay.gather(task, position)


def _to(batch: ReplayBatch, device: torch.device) -> ReplayBatch:
    return ReplayBatch(*(t.to(device) for t in batch))


class _frozen:
    """Freeze parameters during the actor step, so the actor loss builds no critic gradients."""

    def __init__(self, params: list[nn.Parameter]) -> None:
        self.params = params

    def __enter__(self) -> None:
        for p in self.params:
            p.requires_grad_(False)

    def __exit__(self, *exc: object) -> None:
        for p in self.params:
            p.requires_grad_(True)


def _with_time_limit(env_fn: Callable[[], gymnasium.Env], limit: int) -> Callable[[], gymnasium.Env]:
    def make() -> gymnasium.Env:
        env = env_fn()
        return gymnasium.wrappers.TimeLimit(env.unwrapped, max_episode_steps=limit)

    return make
