"""One Cooper roll: the multiplier update and the model gradient, checked independently."""

import copy

import pytest
import torch
import torch.nn.functional as F

from ceag_cooper import CEAG, EqualizedLoss, GroupMetrics, Unconstrained, build_optimizer

REFERENCE = GroupMetrics(
    group_accuracy=torch.tensor([0.9, 0.8, 0.6]),
    group_loss=torch.tensor([0.3, 0.5, 0.9]),
    group_count=torch.tensor([50.0, 30.0, 20.0]),
    accuracy=torch.tensor(0.81),
    loss=torch.tensor(0.48),
    num_samples=torch.tensor(100.0),
)


def tiny_batch(seed=0, n=12, groups=(0, 1)):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=gen)
    y = torch.randint(0, 3, (n,), generator=gen)
    g = torch.tensor([groups[i % len(groups)] for i in range(n)])
    return x, y, g


def set_multipliers(problem, values):
    problem.fairness.multiplier.weight.data.copy_(torch.tensor(values).unsqueeze(1))


@pytest.mark.parametrize("buffer_size", [None, 2])
def test_one_roll_updates_observed_multipliers_by_projected_ascent(buffer_size):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    problem = CEAG(reference=REFERENCE, tolerance=0.01, buffer_size=buffer_size)
    eta = 0.5
    optimizer = build_optimizer(problem, torch.optim.SGD(model.parameters(), lr=0.1), dual_lr=eta)
    x, y, g = tiny_batch(groups=(0, 0, 0, 1))  # g0 x 9 samples, g1 x 3, g2 absent
    set_multipliers(problem, [0.05, 0.2, 0.3])
    before = problem.multiplier_values
    # Independent strict violations, from the definitions (batch or buffers of the last 2).
    with torch.no_grad():
        correct = (model(x).argmax(1) == y).float()
    if buffer_size is None:
        group_acc = torch.stack([correct[g == k].mean() if (g == k).any() else torch.tensor(0.0) for k in range(3)])
        observed = torch.tensor([True, True, False])
        psi = (REFERENCE.group_accuracy - group_acc) - (0.81 - correct.mean())
    else:
        group_acc = torch.stack(
            [correct[g == k][-2:].mean() if (g == k).any() else torch.tensor(0.0) for k in range(3)]
        )
        observed = torch.tensor([True, True, False])
        w = torch.tensor([0.5, 0.3, 0.0])
        sparse, dense = (w * group_acc).sum() / w.sum(), (w * REFERENCE.group_accuracy).sum() / w.sum()
        psi = (REFERENCE.group_accuracy - group_acc) - (dense - sparse)
    rollout = optimizer.roll(compute_cmp_state_kwargs={"model": model, "inputs": x, "targets": y, "group_ids": g})
    expected = torch.where(observed, torch.relu(before + eta * (psi - 0.01)), before)
    torch.testing.assert_close(problem.multiplier_values, expected)
    assert (problem.multiplier_values >= 0).all()
    assert rollout.cmp_state.misc["observed"].tolist() == observed.tolist()


@pytest.mark.parametrize("detach_overall", [False, True])
def test_model_gradient_is_that_of_loss_plus_weighted_proxies_of_batch_groups(detach_overall):
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    twin = copy.deepcopy(model)
    problem = CEAG(reference=REFERENCE, tolerance=0.01, buffer_size=None, detach_overall=detach_overall)
    optimizer = build_optimizer(problem, torch.optim.SGD(model.parameters(), lr=0.1), dual_lr=0.3)
    set_multipliers(problem, [0.4, 0.0, 5.0])  # group 2 is absent: its large multiplier must not count
    x, y, g = tiny_batch(seed=3, groups=(0, 1))
    optimizer.roll(compute_cmp_state_kwargs={"model": model, "inputs": x, "targets": y, "group_ids": g})
    lam = problem.multiplier_values  # dual step first: the primal step uses the new multipliers
    losses = F.cross_entropy(twin(x), y, reduction="none")
    overall = losses.mean()
    lagrangian = overall
    for k in (0, 1):  # only the groups in the batch
        # detach_overall: the overall term is a constant, so no -lambda_g * grad(L) term
        constant = overall.detach() if detach_overall else overall
        proxy = (losses[g == k].mean() - REFERENCE.group_loss[k]) - (constant - REFERENCE.loss) - 0.01
        lagrangian = lagrangian + lam[k] * proxy
    lagrangian.backward()
    for got, want in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(got.grad, want.grad)


def test_equalized_loss_multipliers_move_both_ways():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    problem = EqualizedLoss(num_groups=3)
    optimizer = build_optimizer(problem, torch.optim.SGD(model.parameters(), lr=0.0), dual_lr=1.0)
    x, y, g = tiny_batch(seed=5, groups=(0, 1))
    with torch.no_grad():
        losses = F.cross_entropy(model(x), y, reduction="none")
    expected = torch.tensor([losses[g == 0].mean() - losses.mean(), losses[g == 1].mean() - losses.mean(), 0.0])
    optimizer.roll(compute_cmp_state_kwargs={"model": model, "inputs": x, "targets": y, "group_ids": g})
    torch.testing.assert_close(problem.multiplier_values, expected)
    assert (problem.multiplier_values[:2] < 0).any()
    assert (problem.multiplier_values[:2] > 0).any()


def test_equalized_loss_buffers_and_absolute_form():
    problem = EqualizedLoss(num_groups=2, buffer_size=1, absolute=True, tolerance=0.1, reference=None)
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]], requires_grad=True)
    state = problem.compute_cmp_state(logits=logits, targets=torch.tensor([0, 0]), group_ids=torch.tensor([0, 1]))
    l0, l1 = F.cross_entropy(logits.detach(), torch.tensor([0, 0]), reduction="none").tolist()
    overall = (l0 + l1) / 2  # seen counts are equal: population weights 1/2 each
    assert state.misc["strict_violation"].tolist() == pytest.approx(
        [abs(l0 - overall) - 0.1, abs(l1 - overall) - 0.1], abs=1e-6
    )
    with pytest.raises(ValueError, match="absolute=True"):
        EqualizedLoss(num_groups=2, tolerance=0.1)


def test_unconstrained_is_plain_fine_tuning():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    twin = copy.deepcopy(model)
    optimizer = build_optimizer(Unconstrained(num_groups=2), torch.optim.SGD(model.parameters(), lr=0.1))
    x, y, g = tiny_batch()
    optimizer.roll(compute_cmp_state_kwargs={"model": model, "inputs": x, "targets": y, "group_ids": g})
    twin_opt = torch.optim.SGD(twin.parameters(), lr=0.1)
    F.cross_entropy(twin(x), y).backward()
    twin_opt.step()
    for got, want in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(got, want)


def test_state_dict_round_trip_continues_identically():
    torch.manual_seed(0)
    runs = []
    for restore in (False, True):
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 3)
        problem = CEAG(reference=REFERENCE, tolerance=0.0, buffer_size=3)
        optimizer = build_optimizer(problem, torch.optim.SGD(model.parameters(), lr=0.1), dual_lr=0.1)
        for step in range(6):
            if restore and step == 3:
                saved = copy.deepcopy((model.state_dict(), problem.state_dict(), optimizer.state_dict()))
                model = torch.nn.Linear(4, 3)
                problem = CEAG(reference=REFERENCE, tolerance=0.0, buffer_size=3)
                optimizer = build_optimizer(problem, torch.optim.SGD(model.parameters(), lr=0.1), dual_lr=0.1)
                model.load_state_dict(saved[0])
                problem.load_state_dict(saved[1])
                optimizer.load_state_dict(saved[2])
            x, y, g = tiny_batch(seed=step, groups=(0, 1, 2))
            optimizer.roll(compute_cmp_state_kwargs={"model": model, "inputs": x, "targets": y, "group_ids": g})
        runs.append((problem.multiplier_values, [p.detach().clone() for p in model.parameters()]))
    assert torch.equal(runs[0][0], runs[1][0])
    for a, b in zip(runs[0][1], runs[1][1], strict=True):
        assert torch.equal(a, b)
    mismatched = CEAG(reference=REFERENCE, tolerance=0.05, buffer_size=3)
    with pytest.raises(ValueError, match="config"):
        mismatched.load_state_dict(problem.state_dict())


def test_simultaneous_order_and_bad_optimizer_arguments():
    problem = CEAG(reference=REFERENCE)
    model = torch.nn.Linear(4, 3)
    optimizer = build_optimizer(problem, torch.optim.SGD(model.parameters(), lr=0.1), order="simultaneous")
    assert type(optimizer).__name__ == "SimultaneousOptimizer"
    with pytest.raises(ValueError, match="dual_lr"):
        build_optimizer(problem, torch.optim.SGD(model.parameters(), lr=0.1), dual_lr=0.0)
    with pytest.raises(ValueError, match="order"):
        build_optimizer(problem, torch.optim.SGD(model.parameters(), lr=0.1), order="primal_dual")
    with pytest.raises(TypeError, match="GroupFairnessProblem"):
        build_optimizer(object(), torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="computed for 3 groups"):
        EqualizedLoss(num_groups=4, reference=REFERENCE)


def test_unconstrained_problem_still_validates_optimizer_arguments():
    model = torch.nn.Linear(4, 3)
    with pytest.raises(ValueError, match="order"):
        build_optimizer(Unconstrained(num_groups=2), torch.optim.SGD(model.parameters(), lr=0.1), order="bogus")


def test_a_subclass_hook_with_the_wrong_shape_is_named():
    class Broken(CEAG):
        def strict_violations(self, stats):
            return stats.group_accuracy[:2], stats.present[:2]

    problem = Broken(reference=REFERENCE, buffer_size=None)
    with pytest.raises(ValueError, match=r"Broken.strict_violations must return .* shape \(3,\)"):
        problem.compute_cmp_state(
            logits=torch.randn(3, 2, requires_grad=True),
            targets=torch.tensor([0, 1, 0]),
            group_ids=torch.tensor([0, 1, 2]),
        )


def test_group_ids_on_another_device_and_dtype_only_moves():
    problem = CEAG(reference=REFERENCE)
    with pytest.raises(ValueError, match="is on meta but the problem lives on cpu"):
        problem.batch_statistics(
            torch.zeros(2, 2), torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long, device="meta")
        )
    problem.to(torch.float64)
    assert problem.device == torch.device("cpu")
    assert problem.multiplier_values.dtype == torch.float64


def test_detach_overall_must_be_a_bool():
    with pytest.raises(TypeError, match="`detach_overall` must be a bool"):
        CEAG(reference=REFERENCE, detach_overall="yes")


class _Output:
    """What Hugging Face classifiers return: an object with ``.logits`` (and a loss we ignore)."""

    def __init__(self, logits):
        self.logits, self.loss = logits, None


class _TinyTextClassifier(torch.nn.Module):
    """Called as ``model(input_ids=..., attention_mask=...)``, like a Hugging Face model."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(20, 8)
        self.head = torch.nn.Linear(8, 2)

    def forward(self, input_ids, attention_mask):
        mask = attention_mask.unsqueeze(-1).float()
        pooled = (self.embed(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1)
        return _Output(self.head(pooled))


def test_models_with_dict_inputs_and_output_objects_train_and_evaluate():
    """Issue #17 item 5: `roll` and `evaluate_groups` failed on SequenceClassifierOutput and dict inputs."""
    from collections import UserDict

    import ceag_cooper as cc

    torch.manual_seed(0)
    batches = [({"input_ids": torch.randint(0, 20, (6, 5)), "attention_mask": torch.ones(6, 5, dtype=torch.long)},
                torch.randint(0, 2, (6,)), torch.arange(6) % 2) for _ in range(4)]  # fmt: skip
    model = _TinyTextClassifier()
    reference = cc.evaluate_groups(model, batches, groups=2)
    plain = cc.evaluate_groups(lambda_model(model), [(torch.stack([b[0]["input_ids"], b[0]["attention_mask"]]),
                                                      b[1], b[2]) for b in batches], groups=2)  # fmt: skip
    torch.testing.assert_close(reference.group_accuracy, plain.group_accuracy)
    problem = cc.CEAG(reference=reference, buffer_size=None, constraint_estimate="eval")
    optimizer = cc.build_optimizer(problem, torch.optim.SGD(model.parameters(), lr=0.5), dual_lr=0.5)
    before = model.head.weight.detach().clone()
    for inputs, targets, ids in batches:
        encoded = UserDict(inputs)  # tokenizer output (BatchEncoding) is a UserDict
        optimizer.roll(compute_cmp_state_kwargs={"model": model, "inputs": encoded, "targets": targets,
                                                 "group_ids": ids})  # fmt: skip
    assert not torch.equal(model.head.weight, before)
    with pytest.raises(TypeError, match="cannot find logits"):
        cc.CEAG(reference=reference, buffer_size=None).compute_cmp_state(
            lambda_model(lambda x: "not logits"), torch.zeros(1), torch.tensor([0]), torch.tensor([0])
        )


def lambda_model(function):
    """Wrap ``function`` as a module; for the stacked-tensor form of the same batches."""

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = function if isinstance(function, torch.nn.Module) else None
            self.function = function

        def forward(self, x):
            if self.inner is not None:
                return self.inner(input_ids=x[0], attention_mask=x[1])
            return self.function(x)

    return Wrapped()


def test_auto_dual_lr_is_ten_primal_lrs_over_the_constraints():
    """Issue #15 item 1: the dual step shrinks with the number of constraints (Cooper's FAQ rule)."""
    from ceag_cooper import TwoSidedCEAG

    model = torch.nn.Linear(4, 2)
    primal = torch.optim.SGD(model.parameters(), lr=0.03)
    one_sided = build_optimizer(CEAG(reference=REFERENCE, buffer_size=None), primal, dual_lr="auto")
    assert one_sided.dual_optimizers[0].param_groups[0]["lr"] == pytest.approx(10 * 0.03 / REFERENCE.num_groups)
    two = build_optimizer(TwoSidedCEAG(reference=REFERENCE, buffer_size=None), [primal], dual_lr="auto")
    assert two.dual_optimizers[0].param_groups[0]["lr"] == pytest.approx(10 * 0.03 / (2 * REFERENCE.num_groups))
    with pytest.raises(ValueError, match="or 'auto'"):
        build_optimizer(CEAG(reference=REFERENCE, buffer_size=None), primal, dual_lr="fast")


def test_plain_sgd_gets_a_dense_multiplier_gradient_and_the_same_trajectory():
    """Issue #15 item 5: the sparse COO gradient (C entries every step) was most of the cost at 100k groups."""
    torch.manual_seed(0)
    batches = [(torch.randn(16, 4), torch.randint(0, 2, (16,)), torch.randint(0, 3, (16,))) for _ in range(6)]

    def run(dense):
        torch.manual_seed(1)
        model = torch.nn.Linear(4, 2)
        problem = CEAG(reference=REFERENCE, tolerance=0.01, buffer_size=2)
        optimizer = build_optimizer(problem, torch.optim.SGD(model.parameters(), lr=0.1), dual_lr=0.5)
        assert problem.fairness.multiplier.dense_gradient  # set by build_optimizer for plain SGD
        problem.fairness.multiplier.dense_gradient = dense
        for x, y, g in batches:
            optimizer.roll(compute_cmp_state_kwargs=dict(model=model, inputs=x, targets=y, group_ids=g))
            assert problem.fairness.multiplier.weight.grad.is_sparse is not dense
        return problem.multiplier_values, [p.detach().clone() for p in model.parameters()]

    (dense_multipliers, dense_params), (sparse_multipliers, sparse_params) = run(True), run(False)
    assert bool((dense_multipliers > 0).any())  # the test moves the multipliers
    assert torch.equal(dense_multipliers, sparse_multipliers)  # bit for bit
    assert all(torch.equal(a, b) for a, b in zip(dense_params, sparse_params, strict=True))
    stateful = CEAG(reference=REFERENCE, tolerance=0.01, buffer_size=None)
    build_optimizer(stateful, torch.optim.SGD(torch.nn.Linear(4, 2).parameters(), lr=0.1), dual_optimizer="nupi")
    assert not stateful.fairness.multiplier.dense_gradient  # nuPI keeps Cooper's sparse gradient
