"""Hypothesis fuzzing of compute_cmp_state, NaN handling, and the catalogue of bad inputs."""

import warnings

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import ceag_cooper as cc
from ceag_cooper.data import load_utkface
from ceag_cooper.experiments import ExperimentConfig
from ceag_cooper.pruning import ChannelPruner, GradualSchedule, MagnitudePruner, OneShotSchedule


def reference(groups):
    counts = torch.arange(1, groups + 1, dtype=torch.float32)
    return cc.GroupMetrics(torch.linspace(0.5, 0.95, groups), torch.linspace(0.2, 1.0, groups), counts,
                           torch.tensor(0.8), torch.tensor(0.5), counts.sum())  # fmt: skip


@st.composite
def batches(draw):
    groups = draw(st.sampled_from([1, 2, 7, 300]))
    n = draw(st.sampled_from([1, 2, 5, 64]))
    one_group = draw(st.booleans())
    ids = (
        [draw(st.integers(0, groups - 1))] * n
        if one_group
        else draw(st.lists(st.integers(0, groups - 1), min_size=n, max_size=n))
    )
    scale = draw(st.sampled_from([0.0, 1.0, 50.0]))
    return groups, torch.tensor(ids), scale, draw(st.integers(0, 2**16))


@given(batches(), st.sampled_from(["ceag", "ceag_batch", "el_rb", "el_abs"]))
def test_compute_cmp_state_never_fails_or_returns_nan(batch, kind):
    groups, ids, scale, seed = batch
    gen = torch.Generator().manual_seed(seed)
    problem = {
        "ceag": lambda: cc.CEAG(reference=reference(groups), buffer_size=3),
        "ceag_batch": lambda: cc.CEAG(reference=reference(groups), buffer_size=None, overall="balanced"),
        "el_rb": lambda: cc.EqualizedLoss(num_groups=groups, buffer_size=2),
        "el_abs": lambda: cc.EqualizedLoss(num_groups=groups, absolute=True, tolerance=0.1),
    }[kind]()
    model = torch.nn.Linear(4, 3)
    optimizer = cc.build_optimizer(problem, torch.optim.SGD(model.parameters(), lr=0.1), dual_lr=1.0)
    for _ in range(3):
        x = scale * torch.randn(len(ids), 4, generator=gen)
        y = torch.randint(0, 3, (len(ids),), generator=gen)
        rollout = optimizer.roll(compute_cmp_state_kwargs={"model": model, "inputs": x, "targets": y, "group_ids": ids})
        strict = rollout.cmp_state.misc["strict_violation"]
        assert torch.isfinite(strict).all()
        assert torch.isfinite(problem.multiplier_values).all()
        if problem.constraint_type == cc.CEAG.constraint_type:  # inequality: multipliers stay >= 0
            assert (problem.multiplier_values >= 0).all()


def test_nonfinite_loss_skips_the_step_when_asked():
    problem = cc.CEAG(reference=reference(2), buffer_size=1, skip_nonfinite=True)
    model = torch.nn.Linear(2, 2)
    optimizer = cc.build_optimizer(problem, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), dual_lr=1.0)
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.tensor([[float("nan"), 0.0], [1.0, 1.0]])
    optimizer.roll(
        compute_cmp_state_kwargs={
            "model": model,
            "inputs": x,
            "targets": torch.tensor([0, 1]),
            "group_ids": torch.tensor([0, 1]),
        }
    )
    assert problem.skipped_steps == 1
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert problem.multiplier_values.tolist() == [0.0, 0.0]
    assert problem.buffers.fill.tolist() == [0, 0]


def ceag(**kwargs):
    return cc.CEAG(**{"reference": reference(3), **kwargs})


def roll(problem, ids, logits=None):
    logits = torch.zeros(len(ids), 2) if logits is None else logits
    return problem.compute_cmp_state(logits=logits, targets=torch.zeros(len(ids), dtype=torch.long), group_ids=ids)


CASES = {
    "group id out of range": (lambda: roll(ceag(), torch.tensor([0, 3])), ValueError, r"\[0, 3\) for 3 groups"),
    "negative group id": (lambda: roll(ceag(), torch.tensor([-1, 0])), ValueError, r"must lie in \[0, 3\)"),
    "float group ids": (lambda: roll(ceag(), torch.tensor([0.0, 1.0])), TypeError, "integer group ids"),
    "group ids of wrong shape": (
        lambda: roll(ceag(), torch.zeros(2, 1, 1, dtype=torch.long)),
        ValueError,
        r"shape \(N,\) or \(N, M\)",
    ),
    "group ids on another device": (
        lambda: ceag().batch_statistics(
            torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long, device="meta")
        ),
        ValueError,
        "is on meta but the problem lives on cpu",
    ),
    "empty batch": (lambda: roll(ceag(), torch.zeros(0, dtype=torch.long)), ValueError, "at least one sample"),
    "attribute value above its count": (
        lambda: cc.GroupSpec([2, 3], attribute_names=["sex", "race"]).group_ids(torch.tensor([[1, 3]])),
        ValueError,
        "attribute 'race' has value 3, outside",
    ),
    "negative tolerance": (lambda: ceag(tolerance=-0.01), ValueError, "`tolerance` must be a finite float >= 0"),
    "buffer size 0": (lambda: ceag(buffer_size=0), ValueError, "`buffer_size` must be >= 1"),
    "group without reference samples": (
        lambda: cc.CEAG(
            reference=cc.GroupMetrics(**{**reference(3).state_dict(), "group_count": torch.tensor([1.0, 0.0, 2.0])})
        ),
        ValueError,
        r"groups \[1\] have zero samples",
    ),
    "NaN loss": (
        lambda: roll(ceag(), torch.tensor([0]), torch.tensor([[float("nan"), 0.0]])),
        ValueError,
        "batch loss at step 0 is not finite",
    ),
    "reference for other groups": (
        lambda: cc.EqualizedLoss(num_groups=4, reference=reference(3)),
        ValueError,
        "computed for 3 groups but `num_groups=4`",
    ),
    "sparsity of 1": (lambda: GradualSchedule(1.0), ValueError, r"`final_sparsity` must be a fraction in \[0, 1\)"),
    "unknown dense layer": (
        lambda: MagnitudePruner(torch.nn.Linear(2, 2), schedule=OneShotSchedule(0.5), keep_dense=["head"]),
        ValueError,
        "`keep_dense` names 'head'",
    ),
    "frozen layer selected": (
        lambda: MagnitudePruner(
            torch.nn.Linear(2, 2).requires_grad_(False), schedule=OneShotSchedule(0.5), parameters=["weight"]
        ),
        ValueError,
        "'weight' is frozen",
    ),
    "no prunable layer": (
        lambda: MagnitudePruner(torch.nn.Linear(2, 2), schedule=OneShotSchedule(0.5)),
        ValueError,
        "no prunable parameter",
    ),
    "untraceable model": (
        lambda: ChannelPruner(
            torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4, 2)),
            torch.randn(1, 5, 3, 3),
            schedule=OneShotSchedule(0.5),
        ).step(0),
        ValueError,
        "could not trace Sequential",
    ),
    "missing data directory": (lambda: load_utkface("/nonexistent"), FileNotFoundError, "UTKFace not found under"),
    "unknown attribute": (
        lambda: load_utkface("/nonexistent", protected=("ethnicity",)),
        ValueError,
        "unknown UTKFace attribute 'ethnicity'",
    ),
    "unknown method": (lambda: ExperimentConfig(method="lasso"), ValueError, "unknown method 'lasso'"),
    "bad dual lr": (
        lambda: cc.build_optimizer(ceag(), torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=0.1), dual_lr=-1.0),
        ValueError,
        "`dual_lr` must be a finite float > 0",
    ),
}


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_raises_a_clear_error(case):
    call, error, message = CASES[case]
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda t: cc.GroupMetrics(t([0.9, float("nan")]), t([0.3, 0.5]), t([6.0, 4.0]), t(0.86), t(0.38), t(10.0)),
         "NaN or inf"),
        (lambda t: cc.GroupMetrics(t([0.9, 0.8]), t([0.3, 0.5, 0.1]), t([6.0, 4.0]), t(0.86), t(0.38), t(10.0)),
         "1-D of one length"),
        (lambda t: cc.GroupMetrics(t([90.0, 80.0]), t([0.3, 0.5]), t([6.0, 4.0]), t(0.86), t(0.38), t(10.0)),
         r"accuracies must lie in \[0, 1\]"),
        (lambda t: cc.GroupMetrics(t([0.9, 0.8]), t([0.3, 0.5]), t([6.0, 4.0]), t([0.86]), t(0.38), t(10.0)),
         "must be 0-d tensors"),
    ],
)  # fmt: skip
def test_malformed_reference_statistics_are_refused_at_construction(make, message):
    """Regression (issue #16 item 8): they were accepted and failed later with an unrelated message."""
    with pytest.raises(ValueError, match=message):
        make(torch.tensor)


def test_ignore_index_targets_and_repeated_group_ids_are_refused():
    """Regression (issue #16 item 8): -100 targets counted as errors; a repeated id counted a sample twice."""
    problem = cc.CEAG(reference=cc.GroupMetrics(torch.tensor([0.9, 0.8]), torch.ones(2), torch.tensor([6.0, 4.0]),
                                                torch.tensor(0.86), torch.tensor(1.0), torch.tensor(10.0)),
                      buffer_size=None)  # fmt: skip
    logits = torch.randn(3, 4)
    with pytest.raises(ValueError, match=r"class indices in \[0, 4\).*ignore_index of -100"):
        problem.compute_cmp_state(logits=logits, targets=torch.tensor([0, -100, 1]), group_ids=torch.tensor([0, 1, 0]))
    with pytest.raises(ValueError, match="names the same group twice"):
        problem.compute_cmp_state(logits=logits, targets=torch.tensor([0, 1, 1]),
                                  group_ids=torch.tensor([[0, 1], [1, 1], [0, 1]]))  # fmt: skip
    state = problem.compute_cmp_state(logits=logits, targets=torch.tensor([0, 1, 1]),
                                      group_ids=torch.tensor([[0, 1], [1, 0], [0, 1]]))  # fmt: skip
    assert state.misc["stats"].group_count.tolist() == [3.0, 3.0]


def test_likely_unit_mistakes_warn():
    """Issue #17 item 7: tolerance in points, and raw attributes passed as (N, 2) group ids."""
    ref = cc.GroupMetrics(torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5]), torch.ones(5), torch.full((5,), 2.0),
                          torch.tensor(0.7), torch.tensor(1.0), torch.tensor(10.0))  # fmt: skip
    with pytest.warns(UserWarning, match=r"tolerances are fractions \(0.01 = one point\)"):
        cc.CEAG(reference=ref, tolerance=5)
    with pytest.warns(UserWarning, match="a negative target"):
        cc.CEAG(reference=ref, tolerance=0.01, margin=0.02)
    spec = cc.GroupSpec([2, 3], mode="marginal")
    attributes = torch.tensor([[0, 2], [1, 0], [0, 1]])
    problem = cc.CEAG(reference=ref, buffer_size=None)
    with pytest.warns(UserWarning, match=r"look like protected \*attributes\*"):
        problem.compute_cmp_state(logits=torch.randn(3, 2), targets=torch.tensor([0, 1, 0]), group_ids=attributes)
    fresh = cc.CEAG(reference=ref, buffer_size=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the right ids: no warning (negative control)
        fresh.compute_cmp_state(logits=torch.randn(3, 2), targets=torch.tensor([0, 1, 0]),
                                group_ids=spec.group_ids(attributes))  # fmt: skip
