"""backend="native" (fused C++ kernels) against the reference "torch" backend and the oracles."""

import pytest
import torch
from naive_reference import naive_group_means

from ceag_cooper import (
    CEAG,
    EqualizedLoss,
    GroupMetrics,
    ReplayBufferStore,
    build_optimizer,
    group_loss_accuracy,
    native,
)
from ceag_cooper.native import check_backend


@pytest.fixture(scope="module")
def native_backend():
    if not native.is_available():
        pytest.skip("backend='native' needs a C++ compiler and ninja to build its kernels; none here.")
    return "native"


def random_batch(seed, n=64, groups=7, members=1):
    gen = torch.Generator().manual_seed(seed)
    loss = torch.rand(n, generator=gen, dtype=torch.float64).requires_grad_()
    correct = (torch.rand(n, generator=gen) > 0.4).double()
    ids = torch.randint(0, groups - 1, (n, members) if members > 1 else (n,), generator=gen)  # last group absent
    return loss, correct, ids


@pytest.mark.parametrize("members", [1, 2])
def test_batch_statistics_and_their_gradient_match_the_torch_backend(native_backend, members):
    loss, correct, ids = random_batch(seed=members, members=members)
    weights = torch.randn(7, dtype=torch.float64)
    results = {}
    for name in ("torch", native_backend):
        loss.grad = None
        group_loss, group_acc, counts = group_loss_accuracy(loss, correct, ids, 7, backend=name)
        (weights * group_loss).sum().backward()
        results[name] = (group_loss.detach(), group_acc, counts, loss.grad.clone())
        assert not group_acc.requires_grad
        assert not counts.requires_grad
    for got, want in zip(results["native"], results["torch"], strict=True):
        torch.testing.assert_close(got, want)
    # And against the independent dict-based group-by kept in the tests.
    means, counts = naive_group_means(loss.detach().tolist(), ids.tolist())
    assert results["native"][0].tolist() == pytest.approx([means.get(g, 0.0) for g in range(7)])
    assert results["native"][2].tolist() == [counts.get(g, 0) for g in range(7)]


def test_float32_batch_statistics_match(native_backend):
    loss, correct, ids = random_batch(seed=5, n=128, groups=100)
    loss, correct = loss.detach().float(), correct.float()
    got = group_loss_accuracy(loss, correct, ids, 100, backend=native_backend)
    want = group_loss_accuracy(loss, correct, ids, 100, backend="torch")
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)


REFERENCE = GroupMetrics(
    group_accuracy=torch.tensor([0.9, 0.8, 0.6, 0.7]),
    group_loss=torch.tensor([0.3, 0.5, 0.9, 0.6]),
    group_count=torch.tensor([40.0, 30.0, 20.0, 10.0]),
    accuracy=torch.tensor(0.8),
    loss=torch.tensor(0.5),
    num_samples=torch.tensor(100.0),
)


@pytest.mark.parametrize(
    "make_problem",
    [
        lambda backend: CEAG(reference=REFERENCE, tolerance=0.01, buffer_size=3, backend=backend),
        lambda backend: EqualizedLoss(num_groups=4, buffer_size=2, backend=backend),
    ],
    ids=["ceag", "equalized_loss"],
)
def test_training_runs_are_identical_with_either_backend(native_backend, make_problem):
    runs = {}
    for name in ("torch", native_backend):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
        problem = make_problem(name)
        optimizer = build_optimizer(problem, torch.optim.SGD(model.parameters(), lr=0.2), dual_lr=0.5)
        gen = torch.Generator().manual_seed(1)
        for _ in range(15):
            x, y = torch.randn(16, 4, generator=gen), torch.randint(0, 3, (16,), generator=gen)
            g = torch.randint(0, 4, (16,), generator=gen)
            optimizer.roll(compute_cmp_state_kwargs={"model": model, "inputs": x, "targets": y, "group_ids": g})
        runs[name] = (problem.multiplier_values, [p.detach().clone() for p in model.parameters()])
    assert runs["torch"][0].abs().sum() > 0  # the constraints did act
    torch.testing.assert_close(runs["native"][0], runs["torch"][0])
    for got, want in zip(runs["native"][1], runs["torch"][1], strict=True):
        torch.testing.assert_close(got, want)


def test_native_sums_stay_exact_over_many_updates(native_backend):
    store = ReplayBufferStore(3, 5, backend=native_backend)
    reference = ReplayBufferStore(3, 5)
    gen = torch.Generator().manual_seed(0)
    for _ in range(2000):
        ids, values = torch.randint(0, 3, (8,), generator=gen), (torch.rand(8, generator=gen) > 0.5).float()
        store.update(ids, values)
        reference.update(ids, values)
    assert torch.equal(store.means(), reference.means())  # 0/1 values: running sums are exact


def test_bad_backend_arguments_are_named():
    with pytest.raises(ValueError, match="backend"):
        ReplayBufferStore(2, 2, backend="numpy")
    with pytest.raises(ValueError, match="CPU tensors only"):
        check_backend("native", "cuda")
    with pytest.raises(ValueError, match="backend"):
        CEAG(reference=REFERENCE, backend="fast")


def test_native_kernels_reject_out_of_range_ids(native_backend):
    store = ReplayBufferStore(2, 2, backend=native_backend)
    with pytest.raises(RuntimeError, match="out of range"):
        store.update(torch.tensor([0, 2]), torch.tensor([1.0, 1.0]))


def test_non_contiguous_ids_and_values_are_fine(native_backend):
    ids = torch.tensor([[0, 9], [2, 9], [0, 9], [1, 9]])[:, 0]  # a strided view
    loss = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [4.0, 0.0]])[:, 0]
    correct = torch.tensor([1.0, 0.0, 0.0, 1.0])
    assert not ids.is_contiguous()
    got = group_loss_accuracy(loss, correct, ids, 3, backend=native_backend)
    assert [t.tolist() for t in got] == [[2.0, 4.0, 2.0], [0.5, 1.0, 0.0], [2.0, 1.0, 1.0]]
    store = ReplayBufferStore(3, 2, backend=native_backend)
    store.update(ids, loss)
    assert store.means().tolist() == [2.0, 4.0, 2.0]


def test_second_order_gradient_has_no_nan_for_absent_groups(native_backend):
    # Found in review: backward divided by zero counts, which only shows up with create_graph.
    results = {}
    for name in ("torch", native_backend):
        loss = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64, requires_grad=True)
        weight = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
        ones = torch.ones(3, dtype=torch.float64)
        group_loss = group_loss_accuracy(loss, ones, torch.tensor([0, 0, 1]), 3, backend=name)[0]
        (grad,) = torch.autograd.grad((weight * group_loss).sum(), loss, create_graph=True)
        (grad**2).sum().backward()
        results[name] = weight.grad
    torch.testing.assert_close(results["native"], results["torch"])
    loss = torch.rand(6, dtype=torch.float64, requires_grad=True)
    ids, ones = torch.tensor([0, 2, 2, 0, 2, 0]), torch.ones(6, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: group_loss_accuracy(x, ones, ids, 4, backend=native_backend)[0], loss)


def test_a_nan_stops_counting_when_the_deque_would_drop_it(native_backend):
    # Found in review: a running sum kept the NaN forever once it had entered.
    for capacity in (1, 2, 3):
        stores = [ReplayBufferStore(1, capacity, backend=b) for b in ("torch", native_backend)]
        for value in [float("nan"), float("inf"), 1.0, 1.0, 1.0, 0.0, 1.0]:
            for store in stores:
                store.update(torch.tensor([0]), torch.tensor([value]))
            torch.testing.assert_close(stores[1].means(), stores[0].means(), equal_nan=True)


def test_large_magnitudes_do_not_leave_cancellation_error_behind(native_backend):
    store = ReplayBufferStore(1, 2, dtype=torch.float64, backend=native_backend)
    store.update(torch.tensor([0, 0, 0]), torch.tensor([1e17, 1.0, 1.0], dtype=torch.float64))
    assert store.means().tolist() == [1.0]  # the buffer wrapped: its sum was recomputed exactly


def test_resume_is_bit_identical_and_failed_updates_change_nothing(native_backend):
    gen = torch.Generator().manual_seed(3)
    batches = [(torch.randint(0, 4, (9,), generator=gen), torch.randn(9, generator=gen)) for _ in range(30)]
    straight = ReplayBufferStore(4, 5, backend=native_backend)
    first = ReplayBufferStore(4, 5, backend=native_backend)
    for ids, values in batches[:13]:
        straight.update(ids, values)
        first.update(ids, values)
    resumed = ReplayBufferStore(4, 5, backend=native_backend)
    resumed.load_state_dict(first.state_dict())
    for ids, values in batches[13:]:
        straight.update(ids, values)
        resumed.update(ids, values)
        assert torch.equal(resumed.means(), straight.means())
    before = straight.state_dict()
    with pytest.raises(RuntimeError, match="out of range"):
        straight.update(torch.tensor([1, 2, 7]), torch.ones(3))
    after = straight.state_dict()
    assert all(torch.equal(before[key], after[key]) for key in before)


def test_corrupt_counts_and_unsupported_dtypes_are_refused(native_backend):
    store = ReplayBufferStore(2, 2, backend=native_backend)
    state = store.state_dict()
    state["written"] = torch.tensor([-1, -1])
    with pytest.raises(ValueError, match="corrupt"):
        store.load_state_dict(state)
    store.tensors()[1].fill_(-3)  # written through the live tensors instead
    with pytest.raises(RuntimeError, match="negative count"):
        store.update(torch.tensor([0]), torch.ones(1))
    with pytest.raises(ValueError, match="float32 or float64"):
        ReplayBufferStore(2, 2, dtype=torch.float16, backend=native_backend)
    with pytest.raises(RuntimeError, match="float32 or float64"):
        group_loss_accuracy(
            torch.ones(2, dtype=torch.bfloat16), torch.ones(2), torch.tensor([0, 1]), 2, backend="native"
        )


def test_the_returned_counts_may_be_modified_before_backward(native_backend):
    loss = torch.tensor([1.0, 2.0, 4.0], requires_grad=True)
    group_loss, _, counts = group_loss_accuracy(loss, torch.ones(3), torch.tensor([0, 0, 1]), 2, backend=native_backend)
    counts.clamp_(min=5)
    group_loss.sum().backward()
    assert loss.grad.tolist() == [0.5, 0.5, 1.0]
