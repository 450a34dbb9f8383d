"""CEAG under torch.distributed (gloo, 2 processes spawned by the test)."""

import os
import tempfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import ceag_cooper as cc

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")

GROUPS, BATCH, STEPS = 4, 8, 6  # BATCH samples per rank and step
REFERENCE = cc.GroupMetrics(
    torch.tensor([0.9, 0.8, 0.7, 0.6]), torch.full((4,), 0.5), torch.tensor([40.0, 30.0, 20.0, 10.0]),
    torch.tensor(0.8), torch.tensor(0.5), torch.tensor(100.0),
)  # fmt: skip


def global_batches():
    gen = torch.Generator().manual_seed(0)
    for _ in range(STEPS):
        yield (
            torch.randn(2 * BATCH, 5, generator=gen),
            torch.randint(0, 3, (2 * BATCH,), generator=gen),
            torch.randint(0, GROUPS, (2 * BATCH,), generator=gen),
        )


def train(model, problem, lr, shard):
    """Roll through the global batches; ``shard(x)`` picks this process's part. Records the state."""
    optimizer = cc.build_optimizer(problem, torch.optim.SGD(model.parameters(), lr=lr), dual_lr=0.5)
    trace = []
    for x, y, g in global_batches():
        optimizer.roll(
            compute_cmp_state_kwargs={"model": model, "inputs": shard(x), "targets": shard(y), "group_ids": shard(g)}
        )
        trace.append([problem.multiplier_values.clone(), *(t.clone() for t in list(problem.buffers.buffers()))])
    return trace


def worker(rank, world, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    results = {}
    for lr in (0.0, 0.05):
        torch.manual_seed(0)
        model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(5, 3))
        problem = cc.CEAG(reference=REFERENCE, tolerance=0.0, buffer_size=3)
        if rank == 1:  # a different start on rank 1 must be overwritten by rank 0's at the first step
            problem.fairness.multiplier.weight.data.fill_(7.0)
        results[lr] = train(model, problem, lr, lambda t: t[rank * BATCH : (rank + 1) * BATCH])
    # Reference statistics over a DistributedSampler that pads the last shard (37 = 2 * 18 + 1).
    data = torch.utils.data.TensorDataset(torch.randn(37, 5, generator=torch.Generator().manual_seed(1)),
                                          torch.arange(37) % 3, torch.arange(37) % GROUPS)  # fmt: skip
    sampler = torch.utils.data.distributed.DistributedSampler(data, shuffle=True, seed=3)
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    loader = torch.utils.data.DataLoader(data, batch_size=8, sampler=sampler)
    results["reference"] = cc.evaluate_groups(model, loader, groups=GROUPS, dataset_size=len(data)).state_dict()
    # Mismatched problems on the ranks: a clear error on every rank, no hang.
    try:
        bad = cc.CEAG(reference=REFERENCE, tolerance=0.01 * (rank + 1), buffer_size=3)
        bad.compute_cmp_state(logits=torch.randn(2, 3), targets=torch.tensor([0, 1]), group_ids=torch.tensor([0, 1]))
        results["mismatch"] = None
    except ValueError as error:
        results["mismatch"] = str(error)
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks():
    with tempfile.TemporaryDirectory() as out_dir:
        init_file = os.path.join(out_dir, "init")
        mp.spawn(worker, args=(2, init_file, out_dir), nprocs=2, join=True)
        return [torch.load(Path(out_dir) / f"rank{r}.pt", weights_only=True) for r in range(2)]


def test_multipliers_and_buffers_are_bit_identical_on_both_ranks_after_every_step(ranks):
    for lr in (0.0, 0.05):
        for step, (a, b) in enumerate(zip(ranks[0][lr], ranks[1][lr], strict=True)):
            for x, y in zip(a, b, strict=True):
                assert torch.equal(x, y), f"lr={lr}: ranks differ at step {step}"


def test_two_ranks_with_batch_b_equal_one_process_with_batch_2b(ranks):
    for lr, tolerance in ((0.0, 1e-6), (0.05, 2e-2)):
        torch.manual_seed(0)
        single = train(
            torch.nn.Linear(5, 3), cc.CEAG(reference=REFERENCE, tolerance=0.0, buffer_size=3), lr, lambda t: t
        )
        for step, (a, b) in enumerate(zip(ranks[0][lr], single, strict=True)):
            torch.testing.assert_close(a[0], b[0], atol=tolerance, rtol=0, msg=f"multipliers, lr={lr}, step {step}")
            if lr == 0.0:  # same model all along: the buffers hold the same accuracies
                torch.testing.assert_close(a[1], b[1])
                assert torch.equal(a[2], b[2])


def test_reference_statistics_under_a_padding_distributed_sampler_equal_one_process(ranks):
    data_x = torch.randn(37, 5, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    batches = [(data_x, torch.arange(37) % 3, torch.arange(37) % GROUPS)]
    single = cc.evaluate_groups(model, batches, groups=GROUPS).state_dict()
    for rank in ranks:
        for key, value in single.items():
            torch.testing.assert_close(rank["reference"][key], value, msg=key)
    assert single["num_samples"].item() == 37


def test_mismatched_problems_raise_on_every_rank(ranks):
    for rank in ranks:
        assert rank["mismatch"] is not None
        assert "differs between ranks" in rank["mismatch"]
        assert "tolerance" in rank["mismatch"]


def failing_worker(rank, world, init_file, out_dir):
    """Each case fails on rank 1 only; every rank must raise at the same step, without a hang."""
    import datetime

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=20))  # fmt: skip
    outcomes = {}
    y, g = torch.randint(0, 3, (BATCH,)), torch.arange(BATCH) % GROUPS
    cases = {
        "nan loss": lambda: (torch.full((BATCH, 3), float("nan")) if rank == 1 else torch.randn(BATCH, 3), y, g),
        "empty batch": lambda: (torch.randn(0 if rank == 1 else BATCH, 3), y[: 0 if rank == 1 else BATCH],
                                g[: 0 if rank == 1 else BATCH]),
    }  # fmt: skip
    for name, make in cases.items():
        problem = cc.CEAG(reference=REFERENCE, tolerance=0.0, buffer_size=3)
        steps = 0
        try:
            for step in range(3):
                logits, targets, ids = make() if step == 1 else (torch.randn(BATCH, 3), y, g)
                problem.compute_cmp_state(logits=logits, targets=targets, group_ids=ids)
                steps += 1
            outcomes[name] = ("no error", steps)
        except ValueError as error:
            outcomes[name] = (type(error).__name__, steps)
        # Caught and continued: the collectives of both ranks must still pair up.
        problem.compute_cmp_state(logits=torch.randn(BATCH, 3), targets=y, group_ids=g)
    for name, other in {"detach_overall": {"detach_overall": rank == 1},
                        "reference": {"reference": REFERENCE if rank == 0 else cc.GroupMetrics(
                            REFERENCE.group_accuracy.flip(0), REFERENCE.group_loss, REFERENCE.group_count,
                            REFERENCE.accuracy, REFERENCE.loss, REFERENCE.num_samples)}}.items():  # fmt: skip
        try:
            problem = cc.CEAG(**{"reference": REFERENCE, "buffer_size": 3, **other})
            problem.compute_cmp_state(logits=torch.randn(BATCH, 3), targets=y, group_ids=g)
            outcomes[name] = ("no error", "")
        except ValueError as error:
            outcomes[name] = (type(error).__name__, str(error))
    torch.save(outcomes, Path(out_dir) / f"fail{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


def test_a_failure_on_one_rank_fails_every_rank_at_the_same_step_without_hanging():
    """Regression (issue #16 item 3): the other rank blocked until the process-group timeout."""
    import time

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(failing_worker, args=(2, os.path.join(out_dir, "init"), out_dir), nprocs=2, join=True)
        outcomes = [torch.load(Path(out_dir) / f"fail{r}.pt", weights_only=True) for r in range(2)]
    assert time.perf_counter() - started < 60  # a hang would have hit the 20 s timeout and failed the spawn
    assert outcomes[1]["nan loss"] == ("NonFiniteError", 1)
    assert outcomes[0]["nan loss"] == ("OtherRankError", 1)
    assert outcomes[1]["empty batch"] == ("ValueError", 1)
    assert outcomes[0]["empty batch"] == ("OtherRankError", 1)
    for rank in outcomes:
        assert rank["detach_overall"][0] == "ValueError"
        assert "detach_overall: [False, True]" in rank["detach_overall"][1]
        assert rank["reference"][0] == "ValueError"
        assert "reference:" in rank["reference"][1]
