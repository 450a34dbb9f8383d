"""ReplayBufferStore against one deque(maxlen=k) per group (property-based)."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from naive_reference import NaiveBuffers

from ceag_cooper.problems import ReplayBufferStore


@st.composite
def buffer_runs(draw):
    num_groups = draw(st.sampled_from([1, 2, 3, 7, 50, 2000]))
    k = draw(st.integers(1, 6))
    members = draw(st.sampled_from([1, 1, 2]))  # 2 = marginal-style (N, 2) ids
    batches = []
    for _ in range(draw(st.integers(1, 6))):
        n = draw(st.integers(1, 40))
        # Concentrate ids on a few groups sometimes, so that groups get > k samples per batch.
        hot = draw(st.integers(1, num_groups))
        ids = draw(
            st.lists(st.lists(st.integers(0, hot - 1), min_size=members, max_size=members), min_size=n, max_size=n)
        )
        values = draw(st.lists(st.floats(-5, 5, allow_nan=False, width=32), min_size=n, max_size=n))
        batches.append((ids, values))
    return num_groups, k, members, batches


@given(run=buffer_runs(), per_group=st.booleans(), seed=st.integers(0, 2**16))
def test_buffer_matches_deque_oracle_after_every_update(run, per_group, seed):
    num_groups, k, members, batches = run
    capacities = None
    if per_group:  # some groups smaller than k (issue #15: a small group's buffer holds it once)
        capacities = torch.randint(1, k + 1, (num_groups,), generator=torch.Generator().manual_seed(seed))
    store = ReplayBufferStore(num_groups, k, group_capacity=capacities)
    oracle = NaiveBuffers(num_groups, k, None if capacities is None else capacities.tolist())
    for ids, values in batches:
        ids_tensor = torch.tensor(ids)
        if members == 1:
            ids_tensor, ids = ids_tensor[:, 0], [row[0] for row in ids]
        store.update(ids_tensor, torch.tensor(values))
        oracle.update(ids, values)
        assert store.is_full().tolist() == oracle.full()
        assert store.fill.tolist() == [len(d) for d in oracle.deques]
        torch.testing.assert_close(store.means(), torch.tensor(oracle.means()), rtol=1e-5, atol=1e-5)
        means, full = store.query()
        assert full.tolist() == oracle.full()
        torch.testing.assert_close(means, store.means(), rtol=0, atol=0)
        for g in {i for row in ids for i in (row if isinstance(row, list) else [row])}:
            assert store.contents(g) == pytest.approx(list(oracle.deques[g]), abs=1e-6)


def test_more_than_k_samples_in_one_batch_keeps_the_last_k():
    store = ReplayBufferStore(2, 3)
    store.update(torch.tensor([0, 1, 0, 0, 0, 0]), torch.tensor([1.0, 9.0, 2.0, 3.0, 4.0, 5.0]))
    assert store.contents(0) == [3.0, 4.0, 5.0]
    assert store.contents(1) == [9.0]
    assert store.is_full().tolist() == [True, False]


def test_state_dict_round_trip_and_reset():
    for legacy in (False, True):  # version 0.1's native backend also saved running sums
        store = ReplayBufferStore(4, 2)
        store.update(torch.tensor([0, 0, 1, 3, 3, 3]), torch.arange(6.0))
        saved = store.state_dict()
        assert set(saved) == {"ring", "written"}
        if legacy:
            saved["sums"] = torch.zeros(4, dtype=torch.float64)
        fresh = ReplayBufferStore(4, 2)
        fresh.load_state_dict(saved)
        assert [fresh.contents(g) for g in range(4)] == [store.contents(g) for g in range(4)]
        torch.testing.assert_close(fresh.means(), store.means())
        fresh.update(torch.tensor([1, 3]), torch.tensor([7.0, 8.0]))
        store.update(torch.tensor([1, 3]), torch.tensor([7.0, 8.0]))
        torch.testing.assert_close(fresh.means(), store.means())
        assert fresh.means().tolist() == [0.5, 4.5, 0.0, 6.5]  # [0, 1], [2, 7], [], [5, 8]
        store.reset()
        assert store.fill.sum().item() == 0
        assert store.means().abs().sum().item() == 0
    with pytest.raises(ValueError, match="expected"):
        ReplayBufferStore(5, 2).load_state_dict(fresh.state_dict())


@pytest.mark.parametrize(("kwargs", "error"), [({"capacity": 0}, ValueError), ({"capacity": 2.5}, TypeError)])
def test_bad_capacity(kwargs, error):
    with pytest.raises(error, match="capacity"):
        ReplayBufferStore(3, **kwargs)


def test_state_dict_is_a_copy_and_the_store_moves_and_casts_as_a_module():
    store = ReplayBufferStore(3, 2)
    store.update(torch.tensor([0, 0, 2]), torch.tensor([1.0, 0.0, 1.0]))
    saved = store.state_dict()
    store.update(torch.tensor([0]), torch.tensor([1.0]))
    assert saved["written"].tolist() == [2, 0, 1]  # not a view of the live counts
    store.to(torch.float64)
    assert store.ring.dtype == torch.float64
    assert store.written.dtype == torch.long
    assert [name for name, _ in store.named_buffers()] == ["ring", "written"]


def test_group_capacity_is_checked_and_saved():
    with pytest.raises(ValueError, match=r"in \[1, 3\]"):
        ReplayBufferStore(2, 3, group_capacity=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="2 integers"):
        ReplayBufferStore(2, 3, group_capacity=torch.tensor([1.0, 3.0]))
    store = ReplayBufferStore(2, 3, group_capacity=torch.tensor([1, 3]))
    store.update(torch.tensor([0, 0, 1]), torch.tensor([5.0, 7.0, 1.0]))
    assert store.contents(0) == [7.0]
    assert store.is_full().tolist() == [True, False]
    assert store.means().tolist() == [7.0, 1.0]
    same = ReplayBufferStore(2, 3, group_capacity=torch.tensor([1, 3]))
    same.load_state_dict(store.state_dict())
    assert same.contents(1) == [1.0]
    with pytest.raises(ValueError, match="other per-group capacities"):
        ReplayBufferStore(2, 3, group_capacity=torch.tensor([2, 3])).load_state_dict(store.state_dict())
    with pytest.raises(ValueError, match="pass the same group_capacity"):
        ReplayBufferStore(2, 3).load_state_dict(store.state_dict())


@given(run=buffer_runs(), seed=st.integers(0, 2**16))
def test_running_sums_give_bit_identical_means_for_accuracies(run, seed):
    """Issue #15 item 5: O(batch) running sums instead of the O(G k) ring sum, for CEAG's 0/1 values."""
    num_groups, k, members, batches = run
    summed, running = ReplayBufferStore(num_groups, k), ReplayBufferStore(num_groups, k, running_sums=True)
    generator = torch.Generator().manual_seed(seed)
    for ids, values in batches:
        ids_tensor = torch.tensor(ids) if members > 1 else torch.tensor(ids)[:, 0]
        correct = (torch.rand(len(values), generator=generator) < 0.6).float()
        summed.update(ids_tensor, correct)
        running.update(ids_tensor, correct)
        assert torch.equal(running.means(), summed.means())
        assert torch.equal(running.query()[1], summed.query()[1])


def test_running_sums_save_and_load_and_rebuild_from_a_ring():
    store = ReplayBufferStore(3, 2, running_sums=True)
    store.update(torch.tensor([0, 0, 0, 2]), torch.tensor([1.0, 0.0, 1.0, 1.0]))
    saved = store.state_dict()
    assert saved["running"].tolist() == [1.0, 0.0, 1.0]  # group 0 holds [0, 1]
    again = ReplayBufferStore(3, 2, running_sums=True)
    again.load_state_dict({"ring": saved["ring"], "written": saved["written"]})  # saved without running sums
    assert again.running.tolist() == [1.0, 0.0, 1.0]
    plain = ReplayBufferStore(3, 2)
    plain.load_state_dict(saved)  # the other way round: the sums are not needed
    assert torch.equal(plain.means(), store.means())
    store.reset()
    assert store.running.abs().sum().item() == 0
