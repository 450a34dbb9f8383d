"""CEAG under DistributedDataParallel: every rank applies the same multiplier update.

Run on CPU with two processes (gloo):

    torchrun --nproc_per_node=2 examples/ddp_train.py [--epochs 10]

Each rank fine-tunes an 85%-sparse copy of the same dense model on its shard of the synthetic
task; DDP averages the model gradients, and the problem all-gathers each step's per-sample
(group, accuracy, loss) so that replay buffers and multipliers are identical on every rank. The
script checks that at the end.
"""

from __future__ import annotations

import argparse

import torch
import torch.distributed as dist

import ceag_cooper as cc
from ceag_cooper.data import make_group_imbalanced_task
from ceag_cooper.pruning import MagnitudePruner, OneShotSchedule


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args(argv)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()

    torch.manual_seed(0)  # same initial model on every rank (DDP also broadcasts it)
    task = make_group_imbalanced_task(4000, seed=0)
    dense = torch.nn.Sequential(torch.nn.Linear(task.inputs.shape[1], 64), torch.nn.ReLU(), torch.nn.Linear(64, 2))
    optimizer = torch.optim.Adam(dense.parameters(), lr=3e-3)
    for epoch in range(20):  # dense training, identical on every rank for simplicity
        for x, y, _ in task.batches(128, seed=epoch):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(dense(x), y).backward()
            optimizer.step()
    reference = cc.evaluate_groups(dense, task.batches(512, seed=None), groups=task.num_groups, distributed=False)

    pruner = MagnitudePruner(dense, schedule=OneShotSchedule(0.85), prune_last_linear=True)
    pruner.step(0)  # same weights on every rank, so the same masks
    model = torch.nn.parallel.DistributedDataParallel(dense)
    problem = cc.CEAG(reference=reference, tolerance=0.01, buffer_size=40)
    primal = torch.optim.SGD(model.parameters(), lr=0.05)
    pruner.attach(primal)
    cooper_optimizer = cc.build_optimizer(problem, primal, dual_lr=0.05)
    for epoch in range(args.epochs):
        for x, y, a in task.batches(128 * world, seed=100 + epoch):
            shard = slice(rank * 128, (rank + 1) * 128)  # this rank's part of the global batch
            batch = {"model": model, "inputs": x[shard], "targets": y[shard], "group_ids": a[shard, 0]}
            cooper_optimizer.roll(compute_cmp_state_kwargs=batch)

    gathered = [torch.zeros_like(problem.multiplier_values) for _ in range(world)]
    dist.all_gather(gathered, problem.multiplier_values)
    assert all(torch.equal(g, gathered[0]) for g in gathered), "multipliers differ between ranks"
    rows = range(rank, len(task), world)  # each rank evaluates its own shard; the sums are all-reduced
    shard = [(task.inputs[list(rows)], task.targets[list(rows)], task.attributes[list(rows)])]
    sparse = cc.evaluate_groups(model.module, shard, groups=task.num_groups)
    if rank == 0:
        report = cc.DisparityReport.from_metrics(reference, sparse, tolerance=0.01)
        print(f"{world} ranks, identical multipliers {problem.multiplier_values.tolist()}")
        print(report.to_markdown(title="train set"))
    dist.barrier()  # no rank tears down its gloo connections while another still uses them
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
