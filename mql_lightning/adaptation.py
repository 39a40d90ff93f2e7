"""Algorithm 2 of MQL: adapt the meta-trained agent to a new task. Plain functions over the modules, no Trainer.

Per new task, in the order of docs/design.md#the-adaptation-order:

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

:func:`adapt_agent` draws its own minibatches; :class:`Adaptation` runs steps 2-5 one call at a time on batches the
caller brings (e.g. to drive it and another implementation on identical inputs). Where the paper and the authors'
released code differ, :class:`AdaptationConfig` has one switch per difference, the paper's choice by default.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import gymnasium
import numpy as np
import torch

from mql_lightning import interrupt
from mql_lightning.data.collector import Collector
from mql_lightning.data.contracts import AdaptationData
from mql_lightning.data.replay import EpisodeReplay, HistoryPadding, ReplayBatch
from mql_lightning.modules.agent import TD3Agent, acting_policy
from mql_lightning.modules.losses import proximal_term
from mql_lightning.modules.propensity import (
    PropensityClassifier,
    effective_sample_size,
    proximal_coefficient,
    require_solver,
)
from mql_lightning.modules.td3 import frozen, td3_update

if TYPE_CHECKING:
    from mql_lightning.data.datamodule import MetaRLDataModule
    from mql_lightning.modules.mql import MQL

__all__ = [
    "Adaptation", "AdaptationConfig", "AdaptationResult", "AdaptedPolicy", "UpdateRecord", "adapt",
    "adapt_agent", "adapt_to_task", "classifier_rows", "collect_adaptation_data",
]

# The authors' guard on lambda = 1 - ESS per minibatch: at or below it (every beta equal) they keep the constant.
_AUTHORS_LAMBDA_EPS = 1e-7


@dataclass(frozen=True)
class AdaptationConfig:
    """Settings of the adaptation phase (Alg. 2). Defaults follow the paper; the authors' choices are options.

    The last group of settings are switches between the paper's equations (the defaults) and the authors' released
    code, one per difference; ``configs/presets/authors.yaml`` sets all of them (with the DataModule's
    ``history_padding``, ``eval_window``, ``warmup_episode_length`` and ``task_weighting``).

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
        fixed_lambda: A constant proximal coefficient instead of ``1 - ESS`` (the paper's 0.5 ablation; the
            released code's constant ``prox_coef`` 0.1 is ``fixed_lambda: 0.1`` with ``proximal_scale: full``, or
            ``0.2`` with the default ``half``).
        proximal_new_task: Keep the proximal term in Eq. 18 (the paper); ``False`` as in the released code.
        proximal_scope: Parameters the proximal term covers: ``all`` (actor and critics with their context
            encoders, docs/design.md#the-proximal-term) or ``actor``.
        beta_prior_correction: Divide beta by the classifier's class prior ``n_new / n_replay``, so that beta is
            about 1 where new and replay data look alike (this project's reading of Eq. 12); ``False``: the raw odds
            of the fit, as the released code (half as large with its 200 new against 400 replay rows).
        beta_context: Whose context beta reads in the Eq. 19 updates: ``meta`` (theta_meta's, the classifier's
            own features) or ``adapting`` (the adapting actor's, recomputed every minibatch, as the released code).
        classifier_rows: The classifier's training rows (step 2): ``paper`` (every new transition once, and
            ``ceil(n_new / tasks)`` replay transitions from each training task's whole ring) or ``authors``
            (``n_new`` new rows drawn with replacement, and ``int(n_new / tasks) + 2`` from each task's last
            ``snapshot_size`` transitions).
        snapshot_size: The authors' per-task snapshot: how many of each task's latest transitions the ``authors``
            classifier rows come from (their ``snapshot_size``: 2,000; 4,000 for Walker, 1,000 for Ant-Goal).
        classifier_solver: ``newton``: the exact optimum of Eq. 11; ``lbfgs``: scikit-learn's lbfgs with the
            released code's call (``max_iter=2000``, default tolerance: about 1e-3 from the optimum), its labels and
            its feature order (observation first with ``context_obs``); needs scikit-learn.
        proximal_scale: ``half``: the penalty is (lambda / 2) ||theta - theta_meta||^2 as Eqs. 18-19 write it;
            ``full``: lambda ||theta - theta_meta||^2, as the released code adds its ``prox_coef``.
        lambda_per_minibatch: Recompute lambda = 1 - ESS from every Eq. 19 minibatch's betas (the released code
            with ``--use_ess_clipping``, which none of its run scripts sets); where 1 - ESS <= 1e-7 the step-3 lambda
            (``fixed_lambda`` if set) is kept, as their code keeps ``prox_coef``. Off: one lambda for both steps.
        actor_step_first: Under TD3's policy delay d, take the actor and target step on updates 1, 1 + d, ... of
            Eq. 18 and again of Eq. 19 (the released code's ``it % policy_freq == 0`` with ``it`` from 0 per step)
            instead of on updates d, 2d, ... counted through both steps.
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
    beta_prior_correction: bool = True
    beta_context: Literal["meta", "adapting"] = "meta"
    classifier_rows: Literal["paper", "authors"] = "paper"
    snapshot_size: int = 2000
    classifier_solver: Literal["newton", "lbfgs"] = "newton"
    proximal_scale: Literal["half", "full"] = "half"
    lambda_per_minibatch: bool = False
    actor_step_first: bool = False

    def __post_init__(self) -> None:
        for name in ("num_steps", "replay_batch_size", "snapshot_size"):
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
        choices = {"beta_context": ("meta", "adapting"), "classifier_rows": ("paper", "authors"),
                   "proximal_scale": ("half", "full")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"adaptation {name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        try:
            require_solver(self.classifier_solver)
        except ValueError as err:
            raise ValueError(f"adaptation classifier_solver: {err}") from err


@dataclass
class AdaptationResult:
    """The adapted agent and the statistics of its adaptation.

    ``lam`` is the lambda of the proximal term (with ``lambda_per_minibatch``, the mean over the Eq. 19 updates);
    ``ess`` and ``beta_mean`` are those of step 3's fresh replay batch.
    """

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


@dataclass
class UpdateRecord:
    """What one adaptation update used (detached tensors: reading them is the caller's host synchronisation).

    Attributes:
        beta: The minibatch's per-sample weights ``(B,)`` (Eq. 19); ``None`` in the Eq. 18 updates.
        lam: The lambda of this update's proximal term (0 where it has none).
        proximal: ``sum ||theta - theta_meta||^2`` before scaling, per network the update penalised: ``critic``
            and, in updates with an actor step, ``actor``. The penalty added to that loss is
            ``scale * lam * proximal[...]`` with ``scale`` 0.5 or 1 (``proximal_scale``).
    """

    beta: torch.Tensor | None
    lam: float | torch.Tensor
    proximal: dict[str, torch.Tensor] = field(default_factory=dict)


def collect_adaptation_data(
    env_fn: Callable[[], gymnasium.Env],
    agent: TD3Agent,
    task: dict,
    history_length: int,
    config: AdaptationConfig,
    rng: np.random.Generator,
    history_padding: HistoryPadding = "zeros",
    start_action_std: float = 0.0,
) -> EpisodeReplay:
    """Step 1 of Alg. 2: ``config.num_steps`` steps on the new task with the meta policy, in a one-task replay.

    Episodes are collected in lockstep, as many at a time as the remaining steps need, until ``num_steps``
    transitions are in (episodes that terminate early are made up for); the last one is cut to fit. The windows
    are built as in meta-training (``history_padding``; ``start_action_std``: the std of the start entry's random
    action, the authors' exploration noise).
    """
    make = env_fn if config.episode_length is None else _with_time_limit(env_fn, config.episode_length)
    probe = make()
    limit = getattr(probe.spec, "max_episode_steps", None) or config.episode_length or config.num_steps
    probe.close()
    collector = Collector(make, agent.obs_dim, agent.action_dim, history_length, history_padding, start_action_std)
    policy, episodes, collected = acting_policy(agent), [], 0
    while collected < config.num_steps:
        interrupt.check()
        n = math.ceil((config.num_steps - collected) / limit)
        batch = collector.rollout([task] * n, [0] * n, rng, policy=policy, noise_std=config.exploration_noise)
        episodes += batch
        collected += sum(ep.length for ep in batch)
    collector.close()
    new_data = EpisodeReplay(1, config.num_steps, agent.obs_dim, agent.action_dim, history_length, history_padding)
    budget = config.num_steps
    for ep in episodes:
        keep = min(ep.length, budget)
        if keep > 0:
            new_data.add_episode(0, ep.obs[:keep], ep.actions[:keep], ep.rewards[:keep], ep.next_obs[:keep],
                                 ep.terminated[:keep], ep.start_action)
        budget -= keep
    return new_data


def classifier_rows(
    new_data: EpisodeReplay, meta_replay: EpisodeReplay, config: AdaptationConfig, generator: torch.Generator
) -> tuple[ReplayBatch, ReplayBatch]:
    """Step 2's training rows for the propensity classifier: new-task rows and meta-replay rows.

    ``classifier_rows: paper``: every new transition once, and an equal share of ``ceil(n_new / tasks)`` from every
    training task holding data (docs/design.md#beta-and-the-effective-sample-size). ``authors``: ``n_new`` rows drawn
    with replacement from the new data, and ``int(n_new / tasks) + 2`` from each task's last ``snapshot_size``
    transitions (e.g. 200 + 4 x 100 for HalfCheetah-Vel).

    Returns:
        ``(new_rows, replay_rows)``.
    """
    n_new = new_data.num_transitions()
    tasks = int((meta_replay.sizes > 0).sum())
    if config.classifier_rows == "authors":
        new_rows = new_data.sample(n_new, generator)
        return new_rows, meta_replay.sample_per_task(n_new // tasks + 2, generator, recent=config.snapshot_size)
    new_rows = new_data.gather(torch.zeros(n_new, dtype=torch.long), torch.arange(n_new))
    return new_rows, meta_replay.sample_per_task(max(1, math.ceil(n_new / tasks)), generator)


class Adaptation:
    """Steps 2-5 of Alg. 2 on a copy of ``meta_agent``, one call per step, on batches the caller brings.

    :func:`adapt_agent` is this class with the minibatches drawn for it. Call :meth:`fit_classifier` (step 2), then
    :meth:`estimate_lambda` (step 3), then :meth:`new_task_update` for every Eq. 18 update and
    :meth:`replay_update` for every Eq. 19 update; ``agent`` is then the adapted agent. Each update returns an
    :class:`UpdateRecord` with the beta, lambda and proximal sums it used. The meta agent is never changed.

    Example::

        run = Adaptation(meta_agent, AdaptationConfig(), torch.Generator().manual_seed(0))
        run.fit_classifier(new_rows, replay_rows)
        run.estimate_lambda(replay.sample(256, generator))
        for _ in range(10):
            run.new_task_update(new_data.sample(200, generator))
        for _ in range(100):
            record = run.replay_update(replay.sample(256, generator))
        adapted = run.agent

    Args:
        meta_agent: theta_meta.
        config: Adaptation settings.
        generator: CPU generator of the target-policy smoothing noise.
    """

    def __init__(self, meta_agent: TD3Agent, config: AdaptationConfig, generator: torch.Generator) -> None:
        self.meta_agent, self.config = meta_agent, config
        self.classifier = PropensityClassifier(
            C=config.C, beta_clip=config.beta_clip, beta_floor=config.beta_floor,
            prior_correction=config.beta_prior_correction, solver=config.classifier_solver,
        )
        with torch.inference_mode(False):
            self.agent = copy.deepcopy(meta_agent).train()
            self._trainer = _ProximalTD3(self.agent, config, generator)
        self.accuracy = float("nan")
        self.ess, self.lam, self.beta_mean = float("nan"), 0.0, float("nan")
        self._minibatch_lambdas: list[torch.Tensor] = []
        self._in_replay_step = False

    def features(self, batch: ReplayBatch, agent: TD3Agent | None = None) -> torch.Tensor:
        """Classifier features of ``batch``: ``agent``'s (default theta_meta's) actor context on its histories."""
        obs_first = self.config.classifier_solver == "lbfgs"  # the released code's column order, for its solver
        return _features(self.meta_agent if agent is None else agent, batch, self.config.features, obs_first)

    def fit_classifier(self, new_rows: ReplayBatch, replay_rows: ReplayBatch) -> float:
        """Step 2: fit the classifier (Eq. 11) on theta_meta's features; return its training accuracy."""
        with torch.inference_mode(False):
            new, replay = self.features(new_rows), self.features(replay_rows)
            self.classifier.fit(new, replay)
            self.accuracy = self.classifier.accuracy(new, replay)
        return self.accuracy

    def estimate_lambda(self, batch: ReplayBatch) -> tuple[torch.Tensor, float, float]:
        """Step 3: beta (Eq. 12) and the ESS (Eq. 13) on a fresh replay batch, and lambda (Remark 3).

        Returns:
            ``(beta, ess, lam)``; ``lam`` is ``fixed_lambda`` if that is set.
        """
        beta = self.classifier.beta(self.features(batch))
        self.ess = float(effective_sample_size(beta))
        self.lam = proximal_coefficient(self.ess, self.config.fixed_lambda)
        self.beta_mean = float(beta.mean())
        return beta, self.ess, self.lam

    def new_task_update(self, batch: ReplayBatch) -> UpdateRecord:
        """One Eq. 18 update on a batch of new-task data (proximal term unless ``proximal_new_task`` is off)."""
        lam = self.lam if self.config.proximal_new_task else 0.0
        with torch.inference_mode(False), torch.enable_grad():
            self._trainer.update(batch, None, lam)
        return UpdateRecord(None, lam, dict(self._trainer.proximal))

    def replay_update(self, batch: ReplayBatch) -> UpdateRecord:
        """One Eq. 19 update on a meta-replay minibatch, each sample weighted by its beta, with the proximal term."""
        if not self._in_replay_step:
            self._in_replay_step = True
            if self.config.actor_step_first:
                self._trainer.restart_policy_delay()
        reader = self.agent if self.config.beta_context == "adapting" else None
        beta = self.classifier.beta(self.features(batch, reader))
        lam: float | torch.Tensor = self.lam
        if self.config.lambda_per_minibatch:
            lam = 1.0 - effective_sample_size(beta)
            lam = torch.where(lam > _AUTHORS_LAMBDA_EPS, lam, torch.full_like(lam, self.lam))
            self._minibatch_lambdas.append(lam)
        with torch.inference_mode(False), torch.enable_grad():
            self._trainer.update(batch, beta, lam)
        return UpdateRecord(beta, lam, dict(self._trainer.proximal))

    def result(self, new_transitions: int) -> AdaptationResult:
        """The adapted agent (in eval mode) and the adaptation's statistics."""
        lam = self.lam
        if self._minibatch_lambdas:
            lam = float(torch.stack(self._minibatch_lambdas).mean())
        self.agent.eval()
        return AdaptationResult(self.agent, self.ess, lam, self.beta_mean, self.accuracy, new_transitions)


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
        run = Adaptation(meta_agent, config, generator)
        # Step 2: the classifier on theta_meta's features (docs/design.md#beta-and-the-effective-sample-size).
        new_rows, replay_rows = classifier_rows(new_data, meta_replay, config, generator)
        run.fit_classifier(_to(new_rows, device), _to(replay_rows, device))
        # Step 3: beta and ESS on a fresh replay batch (Eq. 13, over replay samples only); lambda (Remark 3).
        run.estimate_lambda(
            _to(meta_replay.sample(config.replay_batch_size, generator, task_weighting=task_weighting), device)
        )
        # Step 4, Eq. 18: the new data, batch = all of it (drawn with replacement, as the authors do).
        for _ in range(config.new_task_updates):
            interrupt.check()
            run.new_task_update(_to(new_data.sample(n_new, generator), device))
        # Step 5, Eq. 19: beta-weighted meta-replay minibatches.
        for _ in range(config.replay_updates):
            interrupt.check()
            run.replay_update(
                _to(meta_replay.sample(config.replay_batch_size, generator, task_weighting=task_weighting), device)
            )
        return run.result(n_new)


def adapt_to_task(
    meta_agent: TD3Agent, data: AdaptationData, task: dict, config: AdaptationConfig, rng: np.random.Generator
) -> AdaptationResult:
    """Alg. 2 on one task of a DataModule's family: collect its adaptation data, then steps 2-5 (:func:`adapt_agent`).

    The one adaptation path of the adaptation callback (validation, ``mql test``) and of :func:`adapt`.

    Args:
        meta_agent: theta_meta (not changed).
        data: The DataModule: the task family, the window settings and the meta-training replay.
        task: The task, a dict of the family's task keys.
        config: Adaptation settings.
        rng: The adaptation's own random stream: the collection draws from it, and the minibatches and target noise
            from a generator seeded from it.

    Returns:
        The adapted agent and the adaptation's statistics.
    """
    generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
    new_data = collect_adaptation_data(
        data.make_env, meta_agent, task, data.history_length, config, rng, data.history_padding, data.exploration_noise,
    )
    return adapt_agent(meta_agent, data.replay, new_data, config, generator, data.task_weighting)


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
        datamodule: Its DataModule, holding the task family, the meta-training replay buffer and the window
            settings (``history_padding``, ``eval_window``).
        task: The new task, a dict of the family's task keys.
        config: Adaptation settings; the defaults follow the paper.
        seed: Seed of the adaptation's own random streams (data collection, minibatches, target noise, the
            policy's start entries).

    Returns:
        The adapted policy; ``policy.result`` holds ESS, lambda, mean beta and the classifier's accuracy.
    """
    rng = np.random.default_rng(seed)
    result = adapt_to_task(model.agent, datamodule, task, config or AdaptationConfig(), rng)
    growing = datamodule.eval_window == "growing"
    return AdaptedPolicy(
        result.agent, datamodule.eval_history_length, result, datamodule.history_padding, datamodule.exploration_noise,
        growing, rng,
    )


class _ProximalTD3:
    """TD3 updates with optional per-sample weights and the proximal term (lambda / 2) ||theta - theta_meta||^2.

    ``proximal_scale: full`` drops the 1/2 (the released code); ``actor_step_first`` takes the delayed actor step
    on the first update after :meth:`restart_policy_delay`. ``proximal`` holds the last unscaled proximal sums.
    """

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
        self.scale = 0.5 if config.proximal_scale == "half" else 1.0
        # td3_update steps the actor when its update index is a multiple of the delay: shift the count so that the
        # first update after a restart is one.
        self.delay_shift = agent.policy_delay - 1 if config.actor_step_first else 0
        self.proximal: dict[str, torch.Tensor] = {}

    def restart_policy_delay(self) -> None:
        """Count the policy delay from here afresh (the released code's Eq. 19 step restarts its counter)."""
        self.updates = 0

    def update(self, batch: ReplayBatch, weights: torch.Tensor | None, lam: float | torch.Tensor) -> None:
        self.updates += 1
        self.proximal = {}

        def penalty(kind: str) -> torch.Tensor:
            if kind == "actor":
                term = proximal_term(self.actor_params, self.actor_anchor)
            elif self.proximal_critic:
                term = proximal_term(self.critic_params, self.critic_anchor)
            else:
                return torch.zeros((), device=batch.obs.device)
            self.proximal[kind] = term.detach()
            return self.scale * lam * term

        td3_update(
            self.agent, batch, self.updates + self.delay_shift, self.actor_opt, self.critic_opt, torch.Tensor.backward,
            freeze_critic=lambda: frozen(self.critic_params), generator=self.generator, weights=weights,
            penalty=penalty if isinstance(lam, torch.Tensor) or lam > 0 else None,
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
        history_padding: Window before the episode start, as the DataModule's: ``zeros``, or (``authors``,
            ``start_entry``) zeros and the start entry ``e_-1`` = (random action, 0, first observation).
        start_action_std: Std of the start entry's random action.
        growing_window: Windows of 1 to ``history_length`` entries beginning with ``e_-1`` (the authors'
            evaluation) instead of zero-padded ones.
        rng: Source of the start entries' random actions (a fixed seed if not given).
    """

    def __init__(
        self,
        agent: TD3Agent,
        history_length: int,
        result: AdaptationResult | None = None,
        history_padding: HistoryPadding = "zeros",
        start_action_std: float = 0.0,
        growing_window: bool = False,
        rng: np.random.Generator | None = None,
    ) -> None:
        self.agent, self.history_length, self.result = agent, history_length, result
        self.start_entry = history_padding != "zeros" or growing_window
        self.start_action_std, self.growing_window = start_action_std, growing_window
        self.rng = rng if rng is not None else np.random.default_rng(0)
        self._history = torch.zeros(1, history_length, agent.context_input_dim)
        self._pending: tuple[np.ndarray, np.ndarray] | None = None
        self._entries = 0  # entries of this episode in the window (growing windows show only these)

    def reset(self) -> None:
        """Start a new episode: an empty (all-zero) context window."""
        self._history.zero_()
        self._pending = None
        self._entries = 0

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> np.ndarray:
        """The deterministic action for ``obs``; call :meth:`observe` with the reward after stepping."""
        obs = np.asarray(obs, dtype=np.float32).reshape(-1)
        if self.start_entry and self._entries == 0:
            # e_-1 = (a_rand, 0, o_0), the authors' first window entry.
            start = self.rng.normal(0.0, self.start_action_std, size=self.agent.action_dim).clip(-1.0, 1.0)
            self._append(start.astype(np.float32), 0.0, obs)
        window = self._history[:, -min(self._entries, self.history_length) :] if self.growing_window else self._history
        action = self.agent.act(torch.from_numpy(obs).reshape(1, -1), window).squeeze(0).numpy()
        self._pending = (obs, action)
        return action

    def observe(self, reward: float) -> None:
        """Append ``(a_t, r_t, o_t)`` of the step just taken to the context window."""
        if self._pending is None:
            raise RuntimeError("observe() must follow act()")
        obs, action = self._pending
        self._append(action, reward, obs)
        self._pending = None

    def _append(self, action: np.ndarray, reward: float, obs: np.ndarray) -> None:
        entry = torch.from_numpy(np.concatenate([action, [np.float32(reward)], obs]).astype(np.float32))
        self._history = torch.cat([self._history[:, 1:], entry.view(1, 1, -1)], dim=1)
        self._entries += 1


# ------------------------------------------------------------------------------------------------------- helpers
def _features(agent: TD3Agent, batch: ReplayBatch, kind: str, obs_first: bool = False) -> torch.Tensor:
    """Classifier features: the agent's actor context on the transition's history (and the observation)."""
    with torch.no_grad():
        if agent.actor_context is None:  # plain TD3 has no context: the observation is all there is
            return batch.obs.float()
        z = agent.actor_context(batch.history).float()
        if kind != "context_obs":
            return z
        return torch.cat([batch.obs.float(), z] if obs_first else [z, batch.obs.float()], -1)


def _to(batch: ReplayBatch, device: torch.device) -> ReplayBatch:
    return ReplayBatch(*(t.to(device) for t in batch))


def _with_time_limit(env_fn: Callable[[], gymnasium.Env], limit: int) -> Callable[[], gymnasium.Env]:
    def make() -> gymnasium.Env:
        env = env_fn()
        return gymnasium.wrappers.TimeLimit(env.unwrapped, max_episode_steps=limit)

    return make
