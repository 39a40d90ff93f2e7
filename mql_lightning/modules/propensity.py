"""The propensity classifier of MQL: importance ratios beta (Eqs. 11-12), ESS (Eq. 13) and lambda (Remark 3).

A logistic classifier separates transitions of the new task from transitions of the meta-training replay buffer;
its odds re-weight replay transitions in the adaptation objective (Eq. 19), and the normalised effective sample size
of those weights sets the proximal coefficient ``lambda = 1 - ESS`` (Remark 3). Conventions
(docs/design.md#beta-and-the-effective-sample-size):

- ``beta(x) = P(new | x) / P(replay | x)``, by default with the class prior ``n_new / n_replay`` divided out, so that
  beta = 1 wherever the two sets are indistinguishable, whatever the class counts. The authors' code uses the raw
  odds of the fitted classifier (``prior_correction=False``): with 200 new rows against 400 replay rows every beta is
  then half as large.
- ``beta_clip = c`` caps beta at ``e^c`` (the authors clip the logit; Table 1's "beta clipping" values are this c);
  an optional floor zeroes small betas after the clip (the authors use 0.1).
- ESS is computed over the replay samples that beta re-weights, and is 0 when every beta is 0.
"""

from __future__ import annotations

import importlib.util
import math
import warnings
from typing import Literal

import lightning as L
import numpy as np
import torch

__all__ = ["PropensityClassifier", "effective_sample_size", "proximal_coefficient", "require_solver"]

LBFGS_MAX_ITER = 2000
"""The released code's ``max_iter`` of scikit-learn's lbfgs (their ``max_iter_logistic``)."""


def require_solver(solver: str) -> str:
    """Return ``solver`` if it is ``newton`` or ``lbfgs`` and can run here.

    Raises:
        ValueError: On another value, or for ``lbfgs`` without scikit-learn installed.
    """
    if solver not in ("newton", "lbfgs"):
        raise ValueError(f"classifier solver must be 'newton' or 'lbfgs', got {solver!r}")
    if solver == "lbfgs" and importlib.util.find_spec("sklearn") is None:
        raise ValueError(
            "classifier solver 'lbfgs' (the released code's scikit-learn fit) needs scikit-learn: "
            "pip install scikit-learn, or use classifier_solver: newton"
        )
    return solver


class PropensityClassifier(L.LightningModule):
    """L2-regularised logistic regression between new-task and meta-replay features (Eq. 11).

    The objective is scikit-learn's, with the same ``C`` (inverse L2 strength) and an unpenalised intercept::

        0.5 * ||w||^2 + C * sum_i log(1 + exp(-y_i (w.x_i + b))),   y = +1 for "new", -1 for "replay".

    Dividing it by ``C * n`` (n = total number of samples) gives Eq. 11's form, mean logistic loss plus
    ``c * ||w||^2``, with ``c = 1 / (2 * C * n)``. A small ``C`` is a strong penalty, which Remark 4 asks for: the
    classifier must generalise to replay transitions it was not fitted on.

    The classifier is fitted afresh for every new task (exact Newton's method in float64; the problem is strictly
    convex and ``d`` is small) and is not part of the model's trained state: it has no parameters, and its fitted
    weights are non-persistent buffers, so it never enters a state dict, an optimiser or DDP.

    Args:
        C: Inverse L2 strength, exactly scikit-learn's ``LogisticRegression(C=...)``; must be > 0.
        beta_clip: beta is capped at ``e^beta_clip``; must be >= 0 (Remark 4: large betas inflate the variance of
            the Eq. 19 updates).
        beta_floor: If given, betas below it (after the clip) are set to 0; the authors' code uses 0.1, the paper
            none. Must be >= 0.
        prior_correction: Divide the odds by the class prior ``n_new / n_replay`` of the fit (this project's
            default); ``False`` keeps the raw odds ``exp(w.x + b)``, as the authors' code does.
        solver: ``newton`` (default): the exact optimum of Eq. 11 by Newton's method; ``lbfgs``: scikit-learn's
            ``LogisticRegression(solver="lbfgs", max_iter=2000)`` as the released code calls it (stopping at its
            default tolerance, about 1e-3 from the optimum in the coefficients), on float32 features with the
            new task labelled -1; needs scikit-learn.
        max_iter: Maximum number of Newton iterations.
        tol: Stop when half the Newton decrement (the predicted decrease of the objective) falls below
            ``tol * C * n``, i.e. below ``tol`` on the scale of Eq. 11's mean loss; one more full step is then
            taken.

    Raises:
        ValueError: If an argument is out of range.
    """

    def __init__(
        self,
        C: float = 0.1,
        beta_clip: float = 1.0,
        beta_floor: float | None = None,
        max_iter: int = 100,
        tol: float = 1e-9,
        prior_correction: bool = True,
        solver: Literal["newton", "lbfgs"] = "newton",
    ) -> None:
        super().__init__()
        if not (math.isfinite(C) and C > 0):
            raise ValueError(f"PropensityClassifier needs C > 0 (inverse L2 strength), got C={C}")
        if not (math.isfinite(beta_clip) and beta_clip >= 0):
            raise ValueError(
                f"PropensityClassifier needs a finite beta_clip >= 0 (beta <= e^beta_clip), got {beta_clip}"
            )
        if beta_floor is not None and not (math.isfinite(beta_floor) and beta_floor >= 0):
            raise ValueError(f"PropensityClassifier needs beta_floor >= 0 or None, got {beta_floor}")
        if max_iter < 1:
            raise ValueError(f"PropensityClassifier needs max_iter >= 1, got {max_iter}")
        if not (tol > 0):
            raise ValueError(f"PropensityClassifier needs tol > 0, got {tol}")
        self.C = float(C)
        self.beta_clip = float(beta_clip)
        self.beta_floor = None if beta_floor is None else float(beta_floor)
        self.max_iter = int(max_iter)
        self.tol = float(tol)
        self.prior_correction = bool(prior_correction)
        self.solver = require_solver(solver)
        # Fitted state: non-persistent buffers (follow .to(device), stay out of every state dict;
        # docs/design.md#context-encoders).
        self.register_buffer("weight", torch.zeros(0, dtype=torch.float64), persistent=False)
        self.register_buffer("bias", torch.zeros((), dtype=torch.float64), persistent=False)
        self.n_new = 0
        self.n_replay = 0
        self.n_iter = 0
        self.converged = False

    # ------------------------------------------------------------------ fitting

    @property
    def is_fitted(self) -> bool:
        """Whether :meth:`fit` has been called."""
        return self.n_new > 0

    @property
    def num_features(self) -> int:
        """Width ``d`` of the fitted feature vectors (0 before :meth:`fit`)."""
        return int(self.weight.numel())

    @property
    def log_prior_ratio(self) -> float:
        """``log(n_new / n_replay)``, the class-prior log-odds that :meth:`log_odds` removes if ``prior_correction``."""
        self._check_fitted()
        return math.log(self.n_new / self.n_replay)

    def fit(self, new_features: torch.Tensor, replay_features: torch.Tensor) -> PropensityClassifier:
        """Fit the classifier afresh: "new" (label +1) against "replay" (label -1), Eq. 11.

        Full-batch Newton's method with a backtracking (Armijo) line search in float64, from ``w = 0, b = 0`` (as
        scikit-learn), or scikit-learn's lbfgs (``solver="lbfgs"``). Needs no autograd, and runs outside inference
        mode so the fitted buffers are normal tensors even when called under ``torch.inference_mode()`` (as
        Lightning's validation and test loops do).

        Args:
            new_features: ``(n_new, d)`` features of new-task transitions.
            replay_features: ``(n_replay, d)`` features of meta-training replay transitions.

        Returns:
            ``self``, fitted.

        Raises:
            ValueError: If either set is empty, not 2-D, the widths differ, or a feature is not finite.
        """
        if new_features.dim() != 2 or replay_features.dim() != 2:
            raise ValueError(
                "PropensityClassifier.fit needs 2-D (n, d) features, got shapes "
                f"{tuple(new_features.shape)} and {tuple(replay_features.shape)}"
            )
        n_new, d = new_features.shape
        n_rep, d_rep = replay_features.shape
        if n_new == 0 or n_rep == 0:
            raise ValueError(
                f"PropensityClassifier.fit needs samples of both classes, got n_new={n_new}, n_replay={n_rep}"
            )
        if d != d_rep:
            raise ValueError(f"PropensityClassifier.fit: feature widths differ, new has d={d}, replay has d={d_rep}")
        device = new_features.device
        if device.type == "mps":  # no float64 on MPS; the fit is tiny, do it on the CPU
            device = torch.device("cpu")

        with torch.inference_mode(False), torch.no_grad():
            # torch.cat makes fresh (non-inference, graph-free) float64 tensors from possibly inference inputs.
            x = torch.cat(
                [
                    new_features.detach().to(device=device, dtype=torch.float64),
                    replay_features.detach().to(device=device, dtype=torch.float64),
                ]
            )
            if not bool(torch.isfinite(x).all()):
                raise ValueError("PropensityClassifier.fit: features contain NaN or inf")
            if self.solver == "lbfgs":
                theta, n_iter, converged = _fit_lbfgs(new_features, replay_features, self.C)
                theta = theta.to(device)
            else:
                theta, n_iter, converged = self._fit_newton(x, n_new, n_rep, device)
            # Still outside inference mode: the stored buffers must be normal tensors, usable anywhere later.
            self.weight = theta[:d].clone()
            self.bias = theta[d].clone()

        if not converged:
            warnings.warn(
                f"PropensityClassifier: the {self.solver} fit did not converge in {n_iter} iterations",
                RuntimeWarning,
                stacklevel=2,
            )
        self.n_new, self.n_replay = int(n_new), int(n_rep)
        self.n_iter, self.converged = n_iter, converged
        return self

    def _fit_newton(
        self, x: torch.Tensor, n_new: int, n_rep: int, device: torch.device
    ) -> tuple[torch.Tensor, int, bool]:
        """Eq. 11 on float64 features ``x`` (new rows first) by Newton's method: (theta = [w, b], iters, ok)."""
        n = n_new + n_rep
        x_aug = torch.cat([x, torch.ones(n, 1, dtype=torch.float64, device=device)], dim=1)  # [x, 1] for b
        target = torch.cat(
            [
                torch.ones(n_new, dtype=torch.float64, device=device),
                torch.zeros(n_rep, dtype=torch.float64, device=device),
            ]
        )
        sign = 2.0 * target - 1.0  # y = +1 new, -1 replay
        return self._newton(x_aug, target, sign)

    def _objective(self, theta: torch.Tensor, x_aug: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
        """scikit-learn's objective ``0.5 ||w||^2 + C sum softplus(-y f)``; the intercept is not penalised."""
        w = theta[:-1]
        return 0.5 * w.dot(w) + self.C * torch.nn.functional.softplus(-sign * (x_aug @ theta)).sum()

    def _newton(self, x_aug: torch.Tensor, target: torch.Tensor, sign: torch.Tensor) -> tuple[torch.Tensor, int, bool]:
        """Minimise the (strictly convex) objective of Eq. 11 by damped Newton steps; return (theta, iters, ok)."""
        n, dim = x_aug.shape
        theta = torch.zeros(dim, dtype=torch.float64, device=x_aug.device)
        ridge = torch.ones(dim, dtype=torch.float64, device=x_aug.device)
        ridge[-1] = 0.0  # the intercept is not penalised (as scikit-learn's lbfgs solver)
        scale = self.C * n  # the objective's natural scale: tol is relative to Eq. 11's mean loss
        obj = self._objective(theta, x_aug, sign)
        for it in range(1, self.max_iter + 1):
            p = torch.sigmoid(x_aug @ theta)
            grad = ridge * theta + self.C * (x_aug.T @ (p - target))
            s = p * (1.0 - p)
            hess = torch.diag(ridge) + self.C * (x_aug.T @ (s.unsqueeze(1) * x_aug))
            step = _solve_spd(hess, grad)
            decrement = float(grad.dot(step))  # Newton decrement squared: predicted decrease is half of it
            if not math.isfinite(decrement) or decrement < 0:
                return theta, it, False
            if 0.5 * decrement <= self.tol * scale:
                # Within tolerance; one more full step is essentially free and squares the remaining error.
                candidate = theta - step
                if self._objective(candidate, x_aug, sign) <= obj:
                    theta = candidate
                return theta, it, True
            # Armijo backtracking: a full Newton step is accepted close to the optimum (quadratic convergence).
            alpha = 1.0
            for _ in range(60):
                candidate = theta - alpha * step
                cand_obj = self._objective(candidate, x_aug, sign)
                if cand_obj <= obj - 1e-4 * alpha * decrement:
                    break
                alpha *= 0.5
            else:
                return theta, it, False
            theta, obj = candidate, cand_obj
        return theta, self.max_iter, False

    # --------------------------------------------------------------- prediction

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise RuntimeError("PropensityClassifier is not fitted: call fit(new_features, replay_features) first")

    def _decision(self, features: torch.Tensor) -> torch.Tensor:
        """Uncorrected logit ``w.x + b`` of the "new" class, float64 on the input's device (features detached)."""
        self._check_fitted()
        if features.shape[-1] != self.num_features:
            raise ValueError(
                f"PropensityClassifier was fitted on d={self.num_features} features, got shape {tuple(features.shape)}"
            )
        device = features.device
        compute = torch.device("cpu") if device.type == "mps" else device
        # Detached: beta is a fixed per-sample weight in Eq. 19, not something to back-propagate through.
        x = features.detach().to(device=compute, dtype=torch.float64)
        w = self.weight.to(compute)
        b = self.bias.to(compute)
        return x @ w + b

    def predict_proba_new(self, features: torch.Tensor) -> torch.Tensor:
        """Uncorrected ``P(new | x)``, what scikit-learn's ``predict_proba`` gives for the "new" class.

        Args:
            features: ``(..., d)`` features.

        Returns:
            ``(...)`` probabilities, float32 on the input's device.
        """
        return torch.sigmoid(self._decision(features)).to(device=features.device, dtype=torch.float32)

    def log_odds(self, features: torch.Tensor) -> torch.Tensor:
        """``log P(new | x) / P(replay | x)``, i.e. ``log beta(x)`` before clipping (Eq. 12).

        The logistic fit absorbs the class prior ``n_new / n_replay`` into the intercept; with ``prior_correction``
        it is removed here, so that log-odds are about 0 (beta about 1) where the two sets are indistinguishable
        (docs/design.md#beta-and-the-effective-sample-size). Without it these are the fit's raw log-odds ``w.x + b``,
        the authors' ``-f(x)``.

        Args:
            features: ``(..., d)`` features.

        Returns:
            ``(...)`` log-odds, float32 on the input's device.
        """
        logit = self._decision(features)
        if self.prior_correction:
            logit = logit - self.log_prior_ratio
        return logit.to(device=features.device, dtype=torch.float32)

    def beta(self, features: torch.Tensor) -> torch.Tensor:
        """Importance ratio of Eq. 12 (odds new vs replay), clipped and floored, to weight replay samples (Eq. 19).

        ``beta = exp(min(log_odds, beta_clip))`` (Remark 4: clip large ratios), then values below ``beta_floor`` are
        set to 0 (the authors' code; off by default).

        Args:
            features: ``(..., d)`` features.

        Returns:
            ``(...)`` non-negative weights in ``[0, e^beta_clip]``, float32 on the input's device.
        """
        beta = self.log_odds(features).clamp(max=self.beta_clip).exp()
        if self.beta_floor is not None:
            beta = torch.where(beta < self.beta_floor, torch.zeros_like(beta), beta)
        return beta

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`beta`.

        Args:
            features: ``(..., d)`` features.

        Returns:
            ``(...)`` clipped and floored importance ratios.
        """
        return self.beta(features)

    def accuracy(self, new_features: torch.Tensor, replay_features: torch.Tensor) -> float:
        """Fraction classified correctly at threshold 0.5 of the uncorrected ``P(new | x)`` (scikit-learn's rule).

        Args:
            new_features: ``(n_new, d)`` features that should be classified "new".
            replay_features: ``(n_replay, d)`` features that should be classified "replay".

        Returns:
            Accuracy in ``[0, 1]`` over both sets together.

        Raises:
            ValueError: If both sets are empty.
        """
        total = new_features.shape[0] + replay_features.shape[0]
        if total == 0:
            raise ValueError("PropensityClassifier.accuracy needs at least one sample")
        # scikit-learn predicts class 1 ("new") where the decision function is > 0, i.e. P(new | x) > 0.5.
        correct = (self._decision(new_features) > 0).sum() + (self._decision(replay_features) <= 0).sum()
        return float(correct) / total

    def extra_repr(self) -> str:
        return (
            f"C={self.C}, beta_clip={self.beta_clip}, beta_floor={self.beta_floor}, "
            f"prior_correction={self.prior_correction}, solver={self.solver!r}, "
            f"d={self.num_features}, n_new={self.n_new}, n_replay={self.n_replay}"
        )


def _fit_lbfgs(
    new_features: torch.Tensor, replay_features: torch.Tensor, C: float
) -> tuple[torch.Tensor, int, bool]:
    """The released code's fit: scikit-learn's lbfgs on float32 features, new task -1, replay +1, new rows first.

    Returns ``(theta, iterations, converged)`` with ``theta = [w, b]`` of the "new" logit (the negated
    coefficients of scikit-learn's "replay" class), float64 on the CPU.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    x = np.concatenate([f.detach().float().cpu().numpy() for f in (new_features, replay_features)])
    y = np.concatenate([-np.ones(len(new_features)), np.ones(len(replay_features))])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # reported by PropensityClassifier.fit itself
        model = LogisticRegression(solver="lbfgs", max_iter=LBFGS_MAX_ITER, C=C).fit(x, y)
    theta = -torch.from_numpy(np.concatenate([model.coef_[0], model.intercept_]).astype(np.float64))
    n_iter = int(model.n_iter_[0])
    return theta, n_iter, n_iter < LBFGS_MAX_ITER


def _solve_spd(matrix: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """Solve ``matrix @ x = rhs`` for a symmetric positive (semi-)definite Hessian, with jitter if it is singular.

    The Hessian of Eq. 11's objective is positive definite except in degenerate cases (e.g. saturated probabilities
    leave the unpenalised intercept direction almost flat); a tiny ridge then keeps the Newton step finite.
    """
    jitter = 0.0
    eye = torch.eye(matrix.shape[0], dtype=matrix.dtype, device=matrix.device)
    base = float(matrix.diagonal().abs().max()) or 1.0
    for _ in range(8):
        chol, info = torch.linalg.cholesky_ex(matrix + jitter * eye)
        if int(info) == 0:
            return torch.cholesky_solve(rhs.unsqueeze(1), chol).squeeze(1)
        jitter = base * 1e-12 if jitter == 0.0 else jitter * 100.0
    return torch.linalg.lstsq(matrix, rhs.unsqueeze(1)).solution.squeeze(1)


def effective_sample_size(beta: torch.Tensor) -> torch.Tensor:
    """Normalised effective sample size of importance weights, Eq. 13: ``(sum beta)^2 / (m * sum beta^2)``.

    Near 1 when the replay batch looks like the new task (weights about equal), near 0 when a few samples carry all
    the weight. Computed in float64 (no overflow for clipped betas, no bf16 round-off; docs/design.md#several-processes)
    and without a host sync.

    Args:
        beta: Importance weights (any shape; flattened), non-negative, over the *replay* samples
        (docs/design.md#beta-and-the-effective-sample-size).

    Returns:
        A 0-dim float32 tensor in ``[0, 1]`` on ``beta``'s device; 0 (not NaN) when every beta is 0.

    Raises:
        ValueError: If ``beta`` is empty.
    """
    m = beta.numel()
    if m == 0:
        raise ValueError("effective_sample_size needs at least one weight")
    b = beta.detach().reshape(-1).to(torch.float32 if beta.device.type == "mps" else torch.float64)
    total = b.sum()
    squares = b.square().sum()
    ess = total.square() / (m * squares.clamp_min(torch.finfo(b.dtype).tiny))
    ess = torch.where(squares > 0, ess, torch.zeros_like(ess)).clamp(0.0, 1.0)  # clamp: round-off only
    return ess.to(torch.float32)


def proximal_coefficient(ess: torch.Tensor | float, fixed: float | None = None) -> float:
    """Coefficient lambda of the proximal term of Eqs. 18-19.

    ``lambda = 1 - ESS`` (Remark 3): relax the pull towards theta_meta when the new task resembles the
    meta-training tasks. A ``fixed`` value overrides it (the paper's lambda = 0.5 ablation; the authors' released
    scripts use 0.1). The result is clamped into ``[0, 1]``.

    Args:
        ess: Normalised effective sample size (a float or a one-element tensor).
        fixed: If given, use this lambda instead of ``1 - ess``.

    Returns:
        lambda as a Python float in ``[0, 1]``.

    Raises:
        ValueError: If the value used is not finite.
    """
    value = float(fixed) if fixed is not None else 1.0 - float(ess)
    if not math.isfinite(value):
        raise ValueError(f"proximal_coefficient: lambda is not finite (ess={ess!r}, fixed={fixed!r})")
    return min(1.0, max(0.0, value))
