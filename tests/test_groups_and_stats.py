"""Group ids and per-group statistics against numpy / pandas group-by oracles."""

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from ceag_cooper import GroupSpec, evaluate_groups
from ceag_cooper.metrics import GroupMetricsAccumulator, group_means, group_sums


@st.composite
def attribute_batches(draw):
    sizes = draw(st.lists(st.integers(1, 6), min_size=1, max_size=3))
    n = draw(st.integers(1, 50))
    rows = [[draw(st.integers(0, s - 1)) for s in sizes] for _ in range(n)]
    return sizes, np.array(rows, dtype=np.int64)


@given(attribute_batches())
def test_intersectional_ids_match_numpy_ravel_multi_index(batch):
    sizes, attrs = batch
    spec = GroupSpec(sizes)
    expected = np.ravel_multi_index(attrs.T, sizes)
    assert spec.group_ids(torch.from_numpy(attrs)).tolist() == expected.tolist()
    assert spec.num_groups == int(np.prod(sizes))


@given(attribute_batches())
def test_marginal_ids_are_offsets_per_attribute(batch):
    sizes, attrs = batch
    spec = GroupSpec(sizes, mode="marginal")
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    assert spec.group_ids(torch.from_numpy(attrs)).tolist() == (attrs + offsets).tolist()
    assert spec.num_groups == sum(sizes)


def test_group_names_follow_id_order():
    spec = GroupSpec([2, 2], attribute_names=["sex", "race"], value_names=[["m", "f"], ["a", "b"]])
    assert spec.group_names == ["sex=m, race=a", "sex=m, race=b", "sex=f, race=a", "sex=f, race=b"]
    marginal = GroupSpec([2, 3], attribute_names=["s", "r"], mode="marginal")
    assert marginal.group_names == ["s=0", "s=1", "r=0", "r=1", "r=2"]
    assert GroupSpec.from_dict(spec.to_dict()).group_names == spec.group_names


@pytest.mark.parametrize(
    ("attributes", "error", "match"),
    [
        (torch.tensor([[0, 3]]), ValueError, "attribute 'race' has value 3"),
        (torch.tensor([[-1, 0]]), ValueError, "attribute 'sex' has value -1"),
        (torch.tensor([[0.0, 1.0]]), TypeError, "integer"),
        (torch.tensor([0, 1]), ValueError, r"shape \(N, 2\)"),
        (torch.zeros(0, 2, dtype=torch.long), ValueError, "empty"),
    ],
)
def test_bad_attributes_are_named(attributes, error, match):
    spec = GroupSpec([2, 3], attribute_names=["sex", "race"])
    with pytest.raises(error, match=match):
        spec.group_ids(attributes)


@st.composite
def valued_batches(draw):
    num_groups = draw(st.integers(1, 12))
    members = draw(st.sampled_from([None, 2]))
    n = draw(st.integers(1, 40))
    shape = (n,) if members is None else (n, members)
    ids = np.array(
        draw(st.lists(st.integers(0, num_groups - 1), min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))
    )
    values = np.array(draw(st.lists(st.floats(-3, 3, allow_nan=False), min_size=n, max_size=n)))
    weights = np.array(draw(st.lists(st.floats(0, 2, allow_nan=False), min_size=n, max_size=n)))
    return num_groups, ids.reshape(shape), values, weights


def _pandas_oracle(ids, values, weights, num_groups):
    members = 1 if ids.ndim == 1 else ids.shape[1]
    frame = pd.DataFrame(
        {
            "g": ids.reshape(-1),
            "v": np.repeat(values * weights, members),
            "w": np.repeat(weights, members),
            "x": np.repeat(values, members),
        }
    )
    grouped = frame.groupby("g")
    sums = grouped["v"].sum().reindex(range(num_groups), fill_value=0.0).to_numpy()
    counts = grouped["w"].sum().reindex(range(num_groups), fill_value=0.0).to_numpy()
    means = grouped["x"].mean().reindex(range(num_groups), fill_value=0.0).to_numpy()
    return sums, counts, means


@given(valued_batches())
def test_group_sums_and_means_match_pandas(batch):
    num_groups, ids, values, weights = batch
    sums, counts, means = _pandas_oracle(ids, values, weights, num_groups)
    v, w, g = torch.from_numpy(values), torch.from_numpy(weights), torch.from_numpy(ids)
    got_sums, got_counts = group_sums(v, g, num_groups, weights=w)
    np.testing.assert_allclose(got_sums.numpy(), sums, atol=1e-9)
    np.testing.assert_allclose(got_counts.numpy(), counts, atol=1e-9)
    got_means, _ = group_means(v, g, num_groups)
    np.testing.assert_allclose(got_means.numpy(), means, atol=1e-9)


def test_group_means_are_differentiable():
    values = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    means, _ = group_means(values, torch.tensor([0, 0, 1]), 2)
    (means * torch.tensor([1.0, 10.0])).sum().backward()
    assert values.grad.tolist() == [0.5, 0.5, 10.0]


def test_accumulator_over_batches_matches_pandas_with_weights():
    gen = torch.Generator().manual_seed(0)
    frames, acc = [], GroupMetricsAccumulator(4)
    for _ in range(5):
        logits = torch.randn(16, 3, generator=gen)
        targets = torch.randint(0, 3, (16,), generator=gen)
        ids = torch.randint(0, 4, (16,), generator=gen)
        weights = torch.rand(16, generator=gen)
        acc.update(logits, targets, ids, weights=weights)
        loss = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
        correct = (logits.argmax(1) == targets).double()
        frames.append(pd.DataFrame({"g": ids, "w": weights.double(), "l": loss.double(), "c": correct}))
    frame = pd.concat(frames)
    frame["wl"], frame["wc"] = frame.w * frame.l, frame.w * frame.c
    by = frame.groupby("g")[["w", "wl", "wc"]].sum()
    metrics = acc.compute()
    np.testing.assert_allclose(metrics.group_count.numpy(), by.w.to_numpy(), rtol=1e-5)
    np.testing.assert_allclose(metrics.group_loss.numpy(), (by.wl / by.w).to_numpy(), rtol=1e-5)
    np.testing.assert_allclose(metrics.group_accuracy.numpy(), (by.wc / by.w).to_numpy(), rtol=1e-5)
    np.testing.assert_allclose(float(metrics.accuracy), frame.wc.sum() / frame.w.sum(), rtol=1e-5)
    np.testing.assert_allclose(float(metrics.loss), frame.wl.sum() / frame.w.sum(), rtol=1e-5)
    acc.reset()
    assert acc.compute().group_count.sum().item() == 0


def test_evaluate_groups_uses_eval_mode_and_restores_it():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Dropout(0.9), torch.nn.Linear(4, 2))
    data = [(torch.randn(10, 3), torch.randint(0, 2, (10,)), torch.randint(0, 2, (10, 1)))]
    spec = GroupSpec([2])
    first = evaluate_groups(model, data, groups=spec)
    second = evaluate_groups(model, data, groups=spec)
    assert model.training
    torch.testing.assert_close(first.group_loss, second.group_loss)  # dropout off: deterministic
    np.testing.assert_allclose(first.population_share.sum().item(), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="no batch"):
        evaluate_groups(model, [], groups=spec)


def test_eval_mode_restores_modes_through_each_modules_own_train():
    """A frozen BatchNorm stays frozen, and a ``train()`` override's effect comes back with the mode."""
    from ceag_cooper._modes import eval_mode

    class FreezesInEval(torch.nn.Module):  # a user's module: eval() also freezes its weights
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(2, 2)

        def train(self, mode=True):
            super().train(mode)
            self.linear.weight.requires_grad_(mode)
            return self

    head = FreezesInEval()
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2), head).train()
    model[1].eval()  # frozen by the user
    modes = [m.training for m in model.modules()]
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
        assert not head.linear.weight.requires_grad
    assert [m.training for m in model.modules()] == modes
    assert head.linear.weight.requires_grad  # its train() ran on the way back (a bare flag would leave it frozen)
    with pytest.raises(RuntimeError), eval_mode(model):
        raise RuntimeError("inside")
    assert [m.training for m in model.modules()] == modes
    assert head.linear.weight.requires_grad


@pytest.mark.parametrize(
    ("ids", "error", "match"),
    [
        (torch.tensor([0, 5]), ValueError, r"\[0, 4\)"),
        (torch.tensor([-1, 0]), ValueError, r"\[0, 4\)"),
        (torch.tensor([0.0, 1.0]), TypeError, "integer"),
        (torch.zeros(2, 2, 2, dtype=torch.long), ValueError, "shape"),
        (torch.zeros(0, dtype=torch.long), ValueError, "empty"),
        ([0, 1], TypeError, "torch.Tensor"),
    ],
)
def test_bad_group_ids_are_rejected_with_a_named_argument(ids, error, match):
    acc = GroupMetricsAccumulator(4)
    with pytest.raises(error, match=match):
        acc.update(torch.randn(2, 3), torch.tensor([0, 1]), ids)


def test_evaluate_groups_device_must_match_the_model():
    model = torch.nn.Linear(3, 2)
    data = [(torch.randn(4, 3), torch.randint(0, 2, (4,)), torch.randint(0, 2, (4,)))]
    with pytest.raises(ValueError, match="model is on cpu"):
        evaluate_groups(model, data, groups=2, device="meta")
    with pytest.raises(ValueError, match="num_groups"):
        GroupMetricsAccumulator(0)


def test_statistics_of_different_group_specs_are_not_compared():
    """Regression (issue #16 item 8): a reference of another GroupSpec compared the wrong groups."""
    import ceag_cooper as cc

    x, y = torch.randn(12, 3), torch.randint(0, 2, (12,))
    attributes = torch.stack([torch.arange(12) % 2, torch.arange(12) % 3], dim=1)
    model = torch.nn.Linear(3, 2)
    a = cc.GroupSpec([2, 3], attribute_names=["sex", "race"])
    b = cc.GroupSpec([3, 2], attribute_names=["race", "sex"])
    dense = cc.evaluate_groups(model, [(x, y, attributes)], groups=a)
    swapped = cc.evaluate_groups(model, [(x, y, attributes.flip(1))], groups=b)
    assert dense.spec == a.fingerprint != b.fingerprint
    assert cc.GroupMetrics.from_state_dict(torch.load(_saved(dense.state_dict()), weights_only=True)).spec == dense.spec
    with pytest.raises(ValueError, match="different GroupSpecs"):
        cc.DisparityReport.from_metrics(dense, swapped)
    same = cc.evaluate_groups(model, [(x, y, attributes)], groups=cc.GroupSpec([2, 3], attribute_names=["sex", "race"]))
    assert cc.DisparityReport.from_metrics(dense, same).max_psi == pytest.approx(0.0)
    with pytest.raises(ValueError, match="another GroupSpec than `heldout_spec`"):
        cc.CEAG(reference=dense, heldout=[(x, y, attributes)], heldout_reference=dense, heldout_spec=b)


def _saved(obj):
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return buffer


def test_evaluation_and_recalibration_give_each_submodule_its_own_mode_back():
    """A BatchNorm a user froze in eval mode stays frozen (``model.train(was)`` would unfreeze it)."""
    from ceag_cooper.metrics import predict_groups
    from ceag_cooper.pruning import recalibrate_batchnorm

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    model[1].eval()
    data = [(torch.randn(10, 3), torch.randint(0, 2, (10,)), torch.randint(0, 2, (10,)))]
    evaluate_groups(model, data, groups=2)
    predict_groups(model, data, groups=2)
    recalibrate_batchnorm(model, [x for x, _, _ in data])
    assert [m.training for m in model] == [True, False, True]
    broken = [(torch.randn(10, 5), torch.randint(0, 2, (10,)), torch.randint(0, 2, (10,)))]  # 5 features, not 3
    with pytest.raises(RuntimeError):  # raised inside the evaluation loop: the modes come back all the same
        evaluate_groups(model, broken, groups=2)
    assert [m.training for m in model] == [True, False, True]
