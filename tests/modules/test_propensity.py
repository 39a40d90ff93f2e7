"""Tests for the propensity classifier, beta, ESS and lambda (Eqs. 11-13, Remarks 3-4,
docs/design.md#beta-and-the-effective-sample-size)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from mql_lightning.modules.propensity import PropensityClassifier, effective_sample_size, proximal_coefficient

D = 20


def gaussian(n: int, mean: float | torch.Tensor, seed: int, d: int = D) -> torch.Tensor:
    """``n`` samples of ``N(mean, I_d)`` from a private generator."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=gen) + mean


def shifted_mean(shift: float, d: int = D) -> torch.Tensor:
    """A mean vector at distance ``shift`` from the origin along the first few axes."""
    mean = torch.zeros(d)
    mean[:4] = shift / 2.0
    return mean


# ------------------------------------------------------------------------------------ agreement with sklearn


@pytest.mark.parametrize("C", [0.05, 0.1, 1.0])
def test_fit_matches_sklearn_logistic_regression_with_unequal_classes(C: float) -> None:
    new = gaussian(200, shifted_mean(0.8), seed=1)
    replay = gaussian(400, 0.0, seed=2)
    clf = PropensityClassifier(C=C).fit(new, replay)

    x = torch.cat([new, replay]).double().numpy()
    y = np.r_[np.ones(200), np.zeros(400)]  # new = 1, replay = 0
    reference = LogisticRegression(C=C, solver="lbfgs", max_iter=10000, tol=1e-10).fit(x, y)

    assert clf.converged
    probs = clf.predict_proba_new(torch.cat([new, replay])).double().numpy()
    np.testing.assert_allclose(probs, reference.predict_proba(x)[:, 1], atol=1e-3)
    np.testing.assert_allclose(clf.weight.numpy(), reference.coef_[0], atol=1e-4)
    assert clf.bias.item() == pytest.approx(reference.intercept_[0], abs=1e-4)
    assert clf.accuracy(new, replay) == pytest.approx(reference.score(x, y))
    assert (clf.n_new, clf.n_replay) == (200, 400)


def test_log_odds_are_prior_corrected_and_float32_on_input_device() -> None:
    new = gaussian(200, shifted_mean(0.8), seed=1)
    replay = gaussian(400, 0.0, seed=2)
    clf = PropensityClassifier(C=0.1).fit(new, replay)
    feats = gaussian(50, 0.0, seed=3)
    log_odds = clf.log_odds(feats)
    assert log_odds.dtype == torch.float32 and log_odds.device == feats.device and log_odds.shape == (50,)
    uncorrected = torch.logit(clf.predict_proba_new(feats).double())
    torch.testing.assert_close(log_odds.double(), uncorrected - math.log(200 / 400), atol=1e-4, rtol=0)
    torch.testing.assert_close(clf(feats), clf.beta(feats))


def test_without_prior_correction_beta_is_the_raw_odds_of_the_released_code() -> None:
    # 200 new rows against 400 replay rows, as the authors fit for HalfCheetah-Vel: every raw beta is the corrected
    # beta times n_new / n_replay = 1/2 (below the clip), and is sklearn's exp(-f) with their labels (new = -1).
    new, replay = gaussian(200, shifted_mean(0.8), seed=1), gaussian(400, 0.0, seed=2)
    corrected = PropensityClassifier(C=0.1, beta_clip=5.0).fit(new, replay)
    raw = PropensityClassifier(C=0.1, beta_clip=5.0, prior_correction=False).fit(new, replay)
    feats = gaussian(300, 0.0, seed=3)
    torch.testing.assert_close(raw.beta(feats).double() / corrected.beta(feats).double(),
                               torch.full((300,), 0.5, dtype=torch.float64), rtol=1e-5, atol=0)
    assert 0.3 < float(raw.beta(feats).mean()) < 0.6 < float(corrected.beta(feats).mean()) < 1.2
    x = torch.cat([new, replay]).double().numpy()
    labels = np.r_[-np.ones(200), np.ones(400)]  # theirs: new task -1, replay +1; f = their decision function
    theirs = LogisticRegression(C=0.1, solver="lbfgs", max_iter=10000, tol=1e-10).fit(x, labels)
    f = theirs.decision_function(feats.double().numpy())
    np.testing.assert_allclose(raw.beta(feats).numpy(), np.exp(-np.maximum(f, -5.0)), rtol=1e-3)


def test_lbfgs_solver_is_the_released_codes_scikit_learn_fit() -> None:
    # Their call: LogisticRegression(solver="lbfgs", max_iter=2000, C) at its default tolerance, float32 features,
    # new task -1 and replay +1; beta = exp(-max(f, -clip)).
    new, replay = gaussian(200, shifted_mean(0.8), seed=1), gaussian(400, 0.0, seed=2)
    clf = PropensityClassifier(C=0.1, beta_clip=1.0, prior_correction=False, solver="lbfgs").fit(new, replay)
    x = torch.cat([new, replay]).numpy()
    theirs = LogisticRegression(solver="lbfgs", max_iter=2000, C=0.1).fit(x, np.r_[-np.ones(200), np.ones(400)])
    feats = gaussian(300, 0.0, seed=3)
    f = theirs.decision_function(feats.numpy())
    np.testing.assert_allclose(clf.beta(feats).numpy(), np.exp(-np.maximum(f, -1.0)), rtol=1e-6)
    exact = PropensityClassifier(C=0.1, beta_clip=1.0, prior_correction=False).fit(new, replay)
    assert 1e-6 < float((exact.weight - clf.weight).abs().max()) < 1e-2  # lbfgs stops short of the optimum
    with pytest.raises(ValueError, match="'newton' or 'lbfgs'"):
        PropensityClassifier(solver="sgd")


def test_fit_leaves_no_trainable_or_persistent_state() -> None:
    clf = PropensityClassifier().fit(gaussian(30, 1.0, seed=1), gaussian(40, 0.0, seed=2))
    assert list(clf.parameters()) == []
    assert clf.state_dict() == {}
    assert not clf.weight.requires_grad


# --------------------------------------------------------------------------------------------- beta semantics


def test_replay_from_the_new_task_distribution_gets_larger_beta_than_other_tasks() -> None:
    mu_new, mu_other = shifted_mean(0.0), shifted_mean(6.0)
    new = gaussian(200, mu_new, seed=1)
    replay = torch.cat([gaussian(200, mu_new, seed=2), gaussian(200, mu_other, seed=3)])
    clf = PropensityClassifier(C=0.1, beta_clip=2.0).fit(new, replay)

    same = clf.beta(gaussian(300, mu_new, seed=4))
    other = clf.beta(gaussian(300, mu_other, seed=5))
    assert same.mean() > 5 * other.mean()
    assert (same >= 0).all() and (other >= 0).all()


@pytest.mark.parametrize(("n_new", "n_replay"), [(200, 400), (400, 200), (300, 300)])
def test_indistinguishable_sets_give_log_odds_near_zero_whatever_the_class_counts(n_new: int, n_replay: int) -> None:
    new = gaussian(n_new, 0.5, seed=1, d=8)
    replay = gaussian(n_replay, 0.5, seed=2, d=8)
    clf = PropensityClassifier(C=0.1).fit(new, replay)
    fresh = gaussian(500, 0.5, seed=3, d=8)
    assert abs(clf.log_odds(fresh).mean().item()) < 0.2
    assert abs(clf.beta(fresh).mean().item() - 1.0) < 0.25


def test_beta_is_capped_at_exp_beta_clip() -> None:
    new = gaussian(200, shifted_mean(6.0), seed=1)
    replay = gaussian(400, 0.0, seed=2)
    clip = 1.5
    clf = PropensityClassifier(C=0.1, beta_clip=clip).fit(new, replay)
    feats = torch.cat([gaussian(100, shifted_mean(6.0), seed=3), gaussian(100, 0.0, seed=4)])
    log_odds, beta = clf.log_odds(feats), clf.beta(feats)
    assert (log_odds > clip).any(), "the test needs samples above the clip"
    assert beta.max().item() == pytest.approx(math.exp(clip), rel=1e-6)
    torch.testing.assert_close(beta, log_odds.clamp(max=clip).exp())


def test_zero_beta_clip_caps_beta_at_one() -> None:
    clf = PropensityClassifier(C=1.0, beta_clip=0.0).fit(gaussian(100, 3.0, seed=1), gaussian(100, 0.0, seed=2))
    assert clf.beta(gaussian(100, 3.0, seed=3)).max().item() == pytest.approx(1.0)


def test_beta_below_the_floor_is_zeroed_after_the_clip() -> None:
    new = gaussian(200, shifted_mean(3.0), seed=1)
    replay = gaussian(400, 0.0, seed=2)
    feats = torch.cat([gaussian(100, shifted_mean(3.0), seed=3), gaussian(100, 0.0, seed=4)])
    plain = PropensityClassifier(C=0.1, beta_clip=1.0).fit(new, replay).beta(feats)
    floored = PropensityClassifier(C=0.1, beta_clip=1.0, beta_floor=0.1).fit(new, replay).beta(feats)
    below = plain < 0.1
    assert below.any() and (~below).any(), "the test needs samples on both sides of the floor"
    assert (floored[below] == 0).all()
    torch.testing.assert_close(floored[~below], plain[~below])
    # A floor above the cap zeroes everything: the clip is applied first.
    above_cap = PropensityClassifier(C=0.1, beta_clip=1.0, beta_floor=3.0).fit(new, replay).beta(feats)
    assert (above_cap == 0).all()


# ---------------------------------------------------------------------------------------------- ESS and lambda


def ess_end_to_end(replay_shift: float) -> torch.Tensor:
    """Fit on new vs replay, then ESS of beta on a fresh replay batch (ESS over replay:
    docs/design.md#beta-and-the-effective-sample-size)."""
    d = 8
    new = gaussian(200, shifted_mean(0.0, d), seed=1, d=d)
    replay = gaussian(400, shifted_mean(replay_shift, d), seed=2, d=d)
    clf = PropensityClassifier(C=0.1, beta_clip=1.0).fit(new, replay)
    return effective_sample_size(clf.beta(gaussian(400, shifted_mean(replay_shift, d), seed=3, d=d)))


def test_replay_far_from_the_new_task_gives_small_ess_and_lambda_near_one() -> None:
    ess = ess_end_to_end(replay_shift=6.0)
    assert ess.item() < 0.2
    assert proximal_coefficient(ess) > 0.8


def test_replay_from_the_new_task_distribution_gives_ess_near_one_and_lambda_near_zero() -> None:
    ess = ess_end_to_end(replay_shift=0.0)
    assert ess.item() > 0.8
    assert proximal_coefficient(ess) < 0.2


def test_effective_sample_size_of_equal_single_and_zero_weights() -> None:
    assert effective_sample_size(torch.full((7,), 2.5)).item() == 1.0
    one_hot = torch.zeros(10)
    one_hot[3] = 4.0
    assert effective_sample_size(one_hot).item() == pytest.approx(1 / 10)
    zeros = effective_sample_size(torch.zeros(5))
    assert zeros.item() == 0.0 and not torch.isnan(zeros)


def test_effective_sample_size_is_float32_in_unit_interval_even_for_bf16_input() -> None:
    beta = torch.rand(1000, generator=torch.Generator().manual_seed(0)).bfloat16() * math.e
    ess = effective_sample_size(beta)
    assert ess.dtype == torch.float32 and ess.dim() == 0
    assert 0.0 <= ess.item() <= 1.0
    b = beta.double()
    assert ess.item() == pytest.approx((b.sum() ** 2 / (1000 * (b**2).sum())).item(), rel=1e-6)


def test_proximal_coefficient_is_one_minus_ess_fixed_overrides_and_clamps() -> None:
    assert proximal_coefficient(0.3) == pytest.approx(0.7)
    assert proximal_coefficient(torch.tensor(0.9)) == pytest.approx(0.1)
    assert proximal_coefficient(0.3, fixed=0.5) == 0.5
    assert proximal_coefficient(torch.tensor(0.9), fixed=0.1) == 0.1
    assert proximal_coefficient(1.2) == 0.0
    assert proximal_coefficient(-0.5) == 1.0
    assert proximal_coefficient(0.3, fixed=2.0) == 1.0
    assert proximal_coefficient(0.3, fixed=-1.0) == 0.0


# ------------------------------------------------------------------------------------------ inference mode


def test_fit_and_beta_work_under_inference_mode() -> None:
    new, replay = gaussian(200, shifted_mean(2.0), seed=1), gaussian(400, 0.0, seed=2)
    reference = PropensityClassifier(C=0.1).fit(new, replay)
    with torch.inference_mode():
        clf = PropensityClassifier(C=0.1).fit(new.clone(), replay.clone())  # inference tensors as inputs
        beta = clf.beta(replay)
        ess = effective_sample_size(beta)
    assert not clf.weight.is_inference() and not clf.bias.is_inference()
    torch.testing.assert_close(clf.weight, reference.weight)
    torch.testing.assert_close(beta, reference.beta(replay))
    assert 0.0 <= ess.item() <= 1.0
    # A classifier fitted under inference mode is usable outside it, and vice versa.
    torch.testing.assert_close(clf.beta(new), reference.beta(new))
    with torch.inference_mode():
        torch.testing.assert_close(reference.beta(new), clf.beta(new))


def test_beta_is_detached_from_the_feature_graph() -> None:
    clf = PropensityClassifier().fit(gaussian(50, 1.0, seed=1, d=4), gaussian(50, 0.0, seed=2, d=4))
    feats = gaussian(10, 0.5, seed=3, d=4).requires_grad_()
    assert not clf.beta(feats).requires_grad


# ---------------------------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"C": 0.0}, "C > 0"),
        ({"C": -1.0}, "C > 0"),
        ({"beta_clip": -0.1}, "beta_clip"),
        ({"beta_floor": -0.1}, "beta_floor"),
        ({"max_iter": 0}, "max_iter"),
        ({"tol": 0.0}, "tol"),
    ],
)
def test_invalid_constructor_arguments_raise(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PropensityClassifier(**kwargs)


def test_fit_rejects_empty_sets_and_mismatched_widths() -> None:
    clf = PropensityClassifier()
    with pytest.raises(ValueError, match="both classes"):
        clf.fit(torch.zeros(0, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match="both classes"):
        clf.fit(torch.randn(5, 3), torch.zeros(0, 3))
    with pytest.raises(ValueError, match="widths differ"):
        clf.fit(torch.randn(5, 3), torch.randn(5, 4))
    with pytest.raises(ValueError, match="2-D"):
        clf.fit(torch.randn(5), torch.randn(5, 1))


def test_unfitted_classifier_and_wrong_width_raise() -> None:
    with pytest.raises(RuntimeError, match="not fitted"):
        PropensityClassifier().beta(torch.randn(3, 2))
    clf = PropensityClassifier().fit(torch.randn(5, 3) + 1, torch.randn(5, 3))
    with pytest.raises(ValueError, match="d=3"):
        clf.beta(torch.randn(3, 2))
    with pytest.raises(ValueError, match="at least one"):
        effective_sample_size(torch.zeros(0))
