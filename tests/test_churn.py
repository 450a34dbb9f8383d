"""ceag_cooper.metrics.churn: per-group flips against the dense model and the null models of max psi (issue #15)."""

import numpy as np
import pytest
import torch

from ceag_cooper import DisparityReport
from ceag_cooper.metrics.churn import group_churn, null_max_psi, summarize_churn


def test_churn_null_without_gains_is_feasible_by_chances_null_and_gains_widen_it():
    """The churn null models: at gained = 0 the exact binomial of feasible_by_chance (an independent
    computation); gaining samples at the same net gap makes max psi <= eps rarer (negative control); each group's
    psi is centred on 0 with the variance of its binomials, also when only the dense model's errors can be gained."""
    counts = np.array([101, 153, 229, 397, 641] * 6)  # off the lattice: no psi lands exactly on eps
    gap, eps = 0.0317, 0.02
    report = DisparityReport(
        [f"g{i}" for i in range(counts.size)], [0.9] * counts.size, [0.9 - gap] * counts.size, counts.tolist(),
        0.9, 0.9 - gap, tolerance=eps,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    loss_only = null_max_psi(counts, gap=gap, draws=40_000, rng=rng)
    assert (loss_only <= eps).mean() == pytest.approx(report.feasible_by_chance(), abs=0.006)  # ~3 Monte Carlo SEs
    with_gains = null_max_psi(counts, gap=gap, gained=0.02, draws=40_000, rng=rng)
    assert (with_gains <= eps).mean() < 0.7 * (loss_only <= eps).mean()
    assert np.median(with_gains) > np.median(loss_only)
    one = null_max_psi(np.array([200]), gap=0.04, gained=0.02, draws=200_000, rng=rng)
    assert one.mean() == pytest.approx(0.0, abs=3e-4)  # psi is centred on the net gap
    assert one.var() == pytest.approx((0.06 * 0.94 + 0.02 * 0.98) / 200, rel=0.02)  # two independent binomials
    # only the dense model's 14 errors can be gained (q = 0.02 * 200 / 14), the other 186 samples lost at p
    q = 0.02 * 200 / 14
    p = (0.04 * 200 + 14 * q) / 186
    given = null_max_psi(np.array([200]), gap=0.04, gained=0.02, dense_errors=np.array([14]), draws=200_000,
                               rng=rng)  # fmt: skip
    assert given.mean() == pytest.approx(0.0, abs=3e-4)
    assert given.var() == pytest.approx((186 * p * (1 - p) + 14 * q * (1 - q)) / 200**2, rel=0.02)
    capped = null_max_psi(np.array([200]), gap=0.04, gained=0.02, dense_errors=np.array([2]), draws=50_000,
                                rng=rng)  # fmt: skip
    p = (0.04 * 200 + 2) / 198  # both errors always gained
    assert capped.var() == pytest.approx(198 * p * (1 - p) / 200**2, rel=0.03)


def test_group_churn_gives_the_reports_psi():
    """Per-group flips give the psi a DisparityReport computes from the two models' accuracies."""
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 6, 3000)
    dense_correct = rng.random(3000) < 0.9
    correct = np.where(rng.random(3000) < 0.1, ~dense_correct, dense_correct)  # 10% of the predictions flip
    flips = group_churn(torch.from_numpy(dense_correct), torch.from_numpy(correct), torch.from_numpy(ids), 6)
    counts = np.bincount(ids, minlength=6)
    dense_acc = np.bincount(ids, dense_correct, minlength=6) / counts
    sparse_acc = np.bincount(ids, correct, minlength=6) / counts
    report = DisparityReport([f"g{g}" for g in range(6)], dense_acc.tolist(), sparse_acc.tolist(),
                                counts.tolist(), dense_correct.mean(), correct.mean())  # fmt: skip
    psi = (flips["lost"] - flips["gained"]) / flips["count"] - (flips["lost"] - flips["gained"]).sum() / 3000
    np.testing.assert_allclose(psi.numpy(), report.psi, atol=1e-6)
    np.testing.assert_array_equal(flips["dense_errors"].numpy(), counts - np.bincount(ids, dense_correct, minlength=6))
    # the summary's max psi is the report's over the same groups; its rates are the flags' means
    for min_count in (1, int(np.sort(counts)[3])):
        summary = summarize_churn(flips, min_count=min_count)
        assert summary.max_psi == pytest.approx(report.max_psi_among(min_count=min_count), abs=1e-6)
        assert summary.counts.size == (counts >= min_count).sum()
    assert summary.lost == pytest.approx((dense_correct & ~correct).mean())
    assert summary.gained == pytest.approx((~dense_correct & correct).mean())
    with pytest.raises(ValueError, match="min_count"):
        summarize_churn(flips, min_count=10_000)


def test_group_churn_refuses_flags_of_other_samples():
    with pytest.raises(ValueError, match="same samples"):
        group_churn(torch.ones(4, dtype=torch.bool), torch.ones(3, dtype=torch.bool), torch.zeros(4).long(), 1)


def test_null_max_psi_refuses_empty_groups_and_impossible_rates():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="min_count"):
        null_max_psi(np.array([100, 0]), gap=0.02, draws=10, rng=rng)  # would be nan draws, read as "never"
    with pytest.raises(ValueError, match="dense_errors"):
        null_max_psi(np.array([100]), gap=-0.05, gained=0.01, draws=10, rng=rng)
    # a more accurate sparse model is fine when only the dense model's errors can be gained
    assert np.isfinite(null_max_psi(np.array([100]), gap=-0.05, gained=0.06, dense_errors=np.array([20]),
                                    draws=10, rng=rng)).all()  # fmt: skip
