"""CEAG violations against hand computations and the naive reference; bad input."""

import math

import pytest
import torch
from naive_reference import NaiveBuffers, naive_ceag_strict

from ceag_cooper import CEAG, GroupMetrics, NonFiniteError, build_optimizer

# Dense reference: group accuracies 0.9 / 0.8 / 0.6, shares 0.5 / 0.3 / 0.2, so the
# whole-data dense accuracy is 0.45 + 0.24 + 0.12 = 0.81 and the loss 0.15 + 0.15 + 0.18 = 0.48.
REFERENCE = GroupMetrics(
    group_accuracy=torch.tensor([0.9, 0.8, 0.6]),
    group_loss=torch.tensor([0.3, 0.5, 0.9]),
    group_count=torch.tensor([50.0, 30.0, 20.0]),
    accuracy=torch.tensor(0.81),
    loss=torch.tensor(0.48),
    num_samples=torch.tensor(100.0),
)
EPS = 0.01


def logits_for(correct):
    """Two-class logits whose argmax is class 0 exactly where ``correct`` is 1 (targets are 0)."""
    c = torch.tensor(correct, dtype=torch.float32)
    return torch.stack([2 * c - 1, torch.zeros_like(c)], dim=1).requires_grad_()


def strict(problem, ids, correct):
    state = problem.compute_cmp_state(
        logits=logits_for(correct),
        targets=torch.zeros(len(ids), dtype=torch.long),
        group_ids=torch.tensor(ids, dtype=torch.long),
    )
    if "strict_violation" not in state.misc:  # mitigation not active yet
        return None, None, state
    return state.misc["strict_violation"].tolist(), state.misc["observed"].tolist(), state


# Batch: g0 = samples 0-3 (3 of 4 right), g1 = samples 4-5 (1 of 2), g2 absent; batch acc 4/6.
BATCH_IDS, BATCH_CORRECT = [0, 0, 0, 0, 1, 1], [1, 1, 1, 0, 1, 0]


def test_batch_mode_population_by_hand():
    # Delta = 0.81 - 4/6 = 0.143333; psi_0 = (0.9 - 0.75) - Delta; psi_1 = (0.8 - 0.5) - Delta.
    values, observed, _ = strict(CEAG(reference=REFERENCE, tolerance=EPS, buffer_size=None), BATCH_IDS, BATCH_CORRECT)
    assert observed == [True, True, False]
    assert values == pytest.approx([0.0066667 - EPS, 0.1566667 - EPS, 0.0], abs=1e-6)


def test_batch_mode_balanced_by_hand():
    # Balanced sparse accuracy = (0.75 + 0.5) / 2 = 0.625; Delta = 0.81 - 0.625 = 0.185.
    problem = CEAG(reference=REFERENCE, tolerance=EPS, buffer_size=None, overall="balanced")
    values, _, _ = strict(problem, BATCH_IDS, BATCH_CORRECT)
    assert values == pytest.approx([-0.035 - EPS, 0.115 - EPS, 0.0], abs=1e-6)


# Buffers with k = 2. Batch 1 fills g0 with [0, 1] and g1 with [1, 0]; g2 holds [0] (not full).
B1_IDS, B1_CORRECT = [0, 0, 0, 1, 1, 2], [1, 0, 1, 1, 0, 0]
# Batch 2: g1 gets [1, 1] -> [1, 1]; g2 gets [1, 1, 0] -> last two [1, 0]. All full.
B2_IDS, B2_CORRECT = [1, 1, 2, 2, 2], [1, 1, 1, 1, 0]


def test_buffer_mode_population_by_hand():
    problem = CEAG(reference=REFERENCE, tolerance=EPS, buffer_size=2)
    values, observed, _ = strict(problem, B1_IDS, B1_CORRECT)
    # Observed g0, g1 with weights 0.5, 0.3: dense 0.69 / 0.8 = 0.8625, sparse 0.5, Delta 0.3625.
    assert observed == [True, True, False]
    assert values == pytest.approx([0.0375 - EPS, -0.0625 - EPS, 0.0], abs=1e-6)
    values, observed, _ = strict(problem, B2_IDS, B2_CORRECT)
    # All full: sparse = 0.5 * 0.5 + 0.3 * 1.0 + 0.2 * 0.5 = 0.65, dense 0.81, Delta = 0.16.
    assert observed == [True, True, True]
    assert values == pytest.approx([0.24 - EPS, -0.36 - EPS, -0.06 - EPS], abs=1e-6)


def test_buffer_mode_balanced_by_hand():
    problem = CEAG(reference=REFERENCE, tolerance=EPS, buffer_size=2, overall="balanced")
    values, _, _ = strict(problem, B1_IDS, B1_CORRECT)
    # sparse = mean(0.5, 0.5) = 0.5 vs dense 0.81: Delta = 0.31.
    assert values == pytest.approx([0.09 - EPS, -0.01 - EPS, 0.0], abs=1e-6)
    values, _, _ = strict(problem, B2_IDS, B2_CORRECT)
    # sparse = (0.5 + 1 + 0.5) / 3 = 0.666667: Delta = 0.143333.
    assert values == pytest.approx([0.2566667 - EPS, -0.3433333 - EPS, -0.0433333 - EPS], abs=1e-6)


@pytest.mark.parametrize("overall", ["population", "balanced"])
@pytest.mark.parametrize("buffer_size", [None, 1, 3])
def test_random_batches_match_naive_reference(overall, buffer_size):
    gen = torch.Generator().manual_seed(buffer_size or 0)
    problem = CEAG(reference=REFERENCE, tolerance=EPS, buffer_size=buffer_size, overall=overall)
    naive = NaiveBuffers(3, buffer_size or 1)
    for _ in range(8):
        n = int(torch.randint(1, 9, (1,), generator=gen))
        ids = torch.randint(0, 3, (n,), generator=gen).tolist()
        correct = torch.randint(0, 2, (n,), generator=gen).tolist()
        values, observed, _ = strict(problem, ids, correct)
        if buffer_size is None:
            per_group = {g: [c for i, c in zip(ids, correct, strict=True) if i == g] for g in range(3)}
            group_acc = [sum(v) / len(v) if v else 0.0 for v in per_group.values()]
            seen = [bool(v) for v in per_group.values()]
        else:
            naive.update(ids, correct)
            group_acc, seen = naive.means(), naive.full()
        expected = naive_ceag_strict(
            dense_group_acc=[0.9, 0.8, 0.6],
            dense_acc=0.81,
            shares=[0.5, 0.3, 0.2],
            group_acc=group_acc,
            observed=seen,
            batch_acc=sum(correct) / n,
            tolerance=EPS,
            overall=overall,
            buffered=buffer_size is not None,
        )
        assert observed == seen
        for got, want in zip(values, expected, strict=True):
            assert got == pytest.approx(0.0 if want is None else want, abs=1e-6)


def test_proxy_is_the_cross_entropy_gap_on_present_groups():
    problem = CEAG(reference=REFERENCE, tolerance=EPS, buffer_size=None)
    _, _, state = strict(problem, BATCH_IDS, BATCH_CORRECT)
    violation = state.observed_constraints[problem.fairness].violation
    right, wrong = math.log(1 + math.exp(-1)), math.log(1 + math.exp(1))
    losses = [right if c else wrong for c in BATCH_CORRECT]
    overall = sum(losses) / 6
    l0, l1 = sum(losses[:4]) / 4, sum(losses[4:]) / 2
    expected = [(l0 - 0.3) - (overall - 0.48) - EPS, (l1 - 0.5) - (overall - 0.48) - EPS, 0.0]
    assert violation.tolist() == pytest.approx(expected, abs=1e-6)
    assert violation.requires_grad


def test_marginal_groups_feed_every_membership():
    ref = GroupMetrics(
        torch.tensor([0.9, 0.7, 0.8, 0.84]),  # both attributes average to 0.82
        torch.ones(4),
        torch.tensor([60.0, 40.0, 50.0, 50.0]),
        torch.tensor(0.82),
        torch.tensor(1.0),
        torch.tensor(100.0),
    )
    problem = CEAG(reference=ref, tolerance=0.0, buffer_size=1)
    # Sample 0 in groups (0, 2), sample 1 in groups (1, 3): every buffer gets one value.
    values, observed, _ = strict(problem, [[0, 2], [1, 3]], [1, 0])
    assert observed == [True, True, True, True]
    # Weighted sparse = (0.6 * 1 + 0.4 * 0 + 0.5 * 1 + 0.5 * 0) / 2 = 0.55; dense = 0.82.
    delta = 0.82 - 0.55
    assert values == pytest.approx([-0.1 - delta, 0.7 - delta, -0.2 - delta, 0.84 - delta], abs=1e-6)


def test_mitigation_starts_at_start_step_but_buffers_fill_before():
    problem = CEAG(reference=REFERENCE, tolerance=EPS, buffer_size=1, start_step=2)
    for _ in range(2):
        assert not problem.mitigation_active
        values, _, state = strict(problem, [0, 1, 2], [1, 1, 0])
        assert values is None
        assert state.observed_constraints == {}
    assert problem.buffers.is_full().all()
    assert problem.mitigation_active
    values, observed, state = strict(problem, [0], [1])
    assert problem.fairness in state.observed_constraints
    assert observed == [True, True, True]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"tolerance": -0.1}, ValueError, "tolerance"),
        ({"tolerance": float("nan")}, ValueError, "tolerance"),
        ({"buffer_size": 0}, ValueError, "buffer_size"),
        ({"overall": "mean"}, ValueError, "overall"),
        ({"start_step": -1}, ValueError, "start_step"),
        ({"reference": None}, ValueError, "needs `reference`"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        CEAG(**{"reference": REFERENCE, **kwargs})


def test_reference_with_an_empty_group_is_rejected():
    empty = GroupMetrics(**{**REFERENCE.state_dict(), "group_count": torch.tensor([50.0, 0.0, 50.0])})
    with pytest.raises(ValueError, match=r"groups \[1\] have zero samples"):
        CEAG(reference=empty)


def test_group_ids_beyond_the_reference_and_nan_losses_are_rejected():
    problem = CEAG(reference=REFERENCE)
    with pytest.raises(ValueError, match=r"\[0, 3\) for 3 groups"):
        strict(problem, [0, 3], [1, 1])
    with pytest.raises(ValueError, match="empty"):
        strict(problem, [], [])
    with pytest.raises(NonFiniteError, match="not finite"):  # a ValueError subclass, raised on divergence
        problem.compute_cmp_state(
            logits=torch.tensor([[float("nan"), 0.0]]), targets=torch.tensor([0]), group_ids=torch.tensor([0])
        )
    with pytest.raises(ValueError, match="rows but the batch"):
        problem.compute_cmp_state(
            logits=torch.zeros(3, 2), targets=torch.zeros(3, dtype=torch.long), group_ids=torch.tensor([0, 1])
        )
    with pytest.raises(ValueError, match="either `model` and `inputs`"):
        problem.compute_cmp_state(targets=torch.zeros(3, dtype=torch.long), group_ids=torch.tensor([0, 1, 2]))


def test_per_group_tolerances_from_group_sizes_by_hand():
    """Issue #15 item 3: eps_g = eps + z * SE_g, SE_g the Laplace-smoothed binomial SE at the group's size."""
    problem = CEAG(reference=REFERENCE, tolerance=EPS, buffer_size=None, resolution_z=2.0)
    sizes, accuracy = [50, 30, 20], [0.9, 0.8, 0.6]
    expected = []
    for n, p in zip(sizes, accuracy, strict=True):
        smoothed = (n * p + 1) / (n + 2)
        expected.append(EPS + 2.0 * math.sqrt(smoothed * (1 - smoothed) / n))
    assert problem.group_tolerance.tolist() == pytest.approx(expected, rel=1e-6)
    assert problem.group_target is problem.group_target  # a constant, computed once
    plain = CEAG(reference=REFERENCE, tolerance=EPS, buffer_size=None)
    got, _, _ = strict(problem, BATCH_IDS, BATCH_CORRECT)
    base, _, _ = strict(plain, BATCH_IDS, BATCH_CORRECT)
    # the same estimate, each group's own bound subtracted (g2 absent: 0 for both)
    assert [g - b for g, b in zip(got[:2], base[:2], strict=True)] == pytest.approx(
        [EPS - t for t in expected[:2]], abs=1e-6
    )
    assert problem.config()["resolution_z"] == 2.0
    old = plain.state_dict()  # as 0.1 wrote it: no key for the options added since
    old["config"] = {k: v for k, v in old["config"].items() if k not in ("resolution_z", "fit_buffers_to_groups")}
    CEAG(reference=REFERENCE, tolerance=EPS, buffer_size=None).load_state_dict(old)  # read as their old values
    with pytest.raises(ValueError, match="config"):
        problem.load_state_dict(old)  # resolution_z=2 is not what a checkpoint without the key implies
    two = cc_two_sided(resolution_z=2.0)
    state = two.compute_cmp_state(logits=logits_for(BATCH_CORRECT), targets=torch.zeros(6, dtype=torch.long),
                                  group_ids=torch.tensor(BATCH_IDS))  # fmt: skip
    assert state.misc["strict_violation"].shape == (6,)
    # both sides' bounds: each group's eps_g twice, built once for the run, not every step
    torch.testing.assert_close(two.constraint_target, two.group_target.repeat(2))
    assert two.constraint_target is two.constraint_target
    seen, violation = state.misc["observed"][:3], state.misc["strict_violation"]  # upper + lower = -2 eps_g
    assert seen.sum() == 2
    torch.testing.assert_close((violation[:3] + violation[3:])[seen], -2 * two.group_target[seen])


def one_dual_step(problem, ids, correct, dual_lr=0.1, start=1.0):
    """One dual step (SGD) from multipliers at ``start``: the multipliers, and the rollout's two violations."""
    optimizer = build_optimizer(problem, torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.0), dual_lr=dual_lr)
    problem.fairness.multiplier.weight.data.fill_(start)  # away from 0: steps down are not clipped
    kwargs = {"logits": logits_for(correct), "targets": torch.zeros(len(ids), dtype=torch.long),
              "group_ids": torch.tensor(ids, dtype=torch.long)}  # fmt: skip
    state = optimizer.roll(compute_cmp_state_kwargs=kwargs).cmp_state
    proxy = state.observed_constraints[problem.fairness].violation
    return problem.multiplier_values.tolist(), state.misc["strict_violation"].tolist(), proxy.tolist()


def test_share_scaled_dual_steps_by_hand():
    """Issue #15: with dual_step_scale='share', group g's multiplier moves by dual_lr * n_g / mean(n) * violation."""
    # g0, g1 all wrong and g2 all right: batch accuracy 2/6, so the overall gap is 0.81 - 1/3 = 0.47667 and the
    # accuracy excess gaps (eps = 0) are 0.9 - 0 - 0.47667, 0.8 - 0 - 0.47667 and 0.6 - 1 - 0.47667
    ids, correct = [0, 0, 1, 1, 2, 2], [0, 0, 0, 0, 1, 1]
    gaps = [0.9 - 0.47667, 0.8 - 0.47667, 0.6 - 1.0 - 0.47667]
    factors = [50 / (100 / 3), 30 / (100 / 3), 20 / (100 / 3)]  # sizes over their mean: 1.5, 0.9, 0.6
    uniform = CEAG(reference=REFERENCE, tolerance=0.0, buffer_size=None)
    share = CEAG(reference=REFERENCE, tolerance=0.0, buffer_size=None, dual_step_scale="share")
    lam_uniform, strict_uniform, proxy_uniform = one_dual_step(uniform, ids, correct)
    lam_share, strict_share, proxy_share = one_dual_step(share, ids, correct)
    assert lam_uniform == pytest.approx([1 + 0.1 * v for v in gaps], abs=1e-5)
    assert lam_share == pytest.approx([1 + 0.1 * f * v for f, v in zip(factors, gaps, strict=True)], abs=1e-5)
    # only the dual step changes: the reported violation and the model step's proxy are the same
    assert strict_share == pytest.approx(gaps, abs=1e-5)
    assert strict_share == strict_uniform
    assert proxy_share == proxy_uniform
    assert share.config()["dual_step_scale"] == "share"
    assert cc_two_sided(dual_step_scale="share").dual_step_weights().tolist() == pytest.approx([1.5, 0.9, 0.6] * 2)
    assert uniform.dual_step_weights() is None
    # one tensor for the run, in the multipliers' dtype: no allocation or cast per step
    assert share.dual_step_weights() is share.dual_step_weights()
    assert share.dual_step_weights().dtype == share.fairness.multiplier.weight.dtype
    integer_counts = GroupMetrics(**{**REFERENCE.state_dict(), "group_count": torch.tensor([50, 30, 20])})
    assert CEAG(reference=integer_counts, dual_step_scale="share").dual_step_weights().tolist() == pytest.approx(
        factors
    )
    with pytest.raises(ValueError, match="'uniform' or 'share'"):
        CEAG(reference=REFERENCE, dual_step_scale="size")
    old = uniform.state_dict()  # a checkpoint written before the option: read as uniform steps
    old["config"].pop("dual_step_scale")
    CEAG(reference=REFERENCE, tolerance=0.0, buffer_size=None).load_state_dict(old)
    with pytest.raises(ValueError, match="config"):
        share.load_state_dict(old)


def cc_two_sided(**options):
    from ceag_cooper import TwoSidedCEAG

    return TwoSidedCEAG(**{"reference": REFERENCE, "tolerance": EPS, "buffer_size": None, **options})


def test_small_groups_get_buffers_of_their_size():
    """Issue #15 item 3: a group smaller than k is estimated from each of its samples once."""
    small = GroupMetrics(
        group_accuracy=torch.tensor([0.9, 0.5]), group_loss=torch.tensor([0.3, 0.7]),
        group_count=torch.tensor([50.0, 3.0]), accuracy=torch.tensor(0.877), loss=torch.tensor(0.32),
        num_samples=torch.tensor(53.0),
    )  # fmt: skip
    problem = CEAG(reference=small, tolerance=EPS, buffer_size=4, fit_buffers_to_groups=True)
    assert problem.buffers.group_capacity.tolist() == [4, 3]
    strict(problem, [0, 0, 0, 0, 1, 1, 1], [1, 1, 0, 1, 1, 0, 0])
    assert problem.buffers.is_full().tolist() == [True, True]  # 3 samples fill the small group's buffer
    assert problem.buffers.contents(1) == [1.0, 0.0, 0.0]
    default = CEAG(reference=small, tolerance=EPS, buffer_size=4)
    strict(default, [0, 0, 0, 0, 1, 1, 1], [1, 1, 0, 1, 1, 0, 0])
    assert default.buffers.is_full().tolist() == [True, False]  # the paper's k for all: it waits for a repeat
    copy = CEAG(reference=small, tolerance=EPS, buffer_size=4, fit_buffers_to_groups=True)
    copy.load_state_dict(problem.state_dict())
    assert copy.buffers.contents(1) == [1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="config"):
        default.load_state_dict(problem.state_dict())


def test_cached_bounds_and_step_factors_follow_a_loaded_reference():
    """Values derived from the reference are rebuilt after load_state_dict (a stale eps_g was kept before)."""
    other = GroupMetrics(**{**REFERENCE.state_dict(), "group_accuracy": torch.tensor([0.5, 0.99, 0.7]),
                            "group_count": torch.tensor([10.0, 60.0, 30.0])})  # fmt: skip
    mine = cc_two_sided(resolution_z=2.0, dual_step_scale="share")
    theirs = cc_two_sided(resolution_z=2.0, dual_step_scale="share", reference=other)
    before = mine.constraint_target.clone(), mine.dual_step_weights().clone()
    mine.load_state_dict(theirs.state_dict())
    torch.testing.assert_close(mine.constraint_target, theirs.constraint_target)
    torch.testing.assert_close(mine.dual_step_weights(), theirs.dual_step_weights())
    assert not torch.allclose(before[0], mine.constraint_target)
    assert not torch.allclose(before[1], mine.dual_step_weights())
    # and after a cast: the step factors follow the multipliers' dtype (they stayed float32 before)
    mine.to(torch.float64)
    assert mine.fairness.multiplier.weight.dtype == mine.dual_step_weights().dtype == torch.float64
