"""Gradual magnitude pruning over a few epochs, then CEAG fine-tuning, in one loop.

The mask engine keeps pruned weights at zero through Cooper's primal step; CEAG's constraints
switch on once the last pruning step is done (the paper's default), or during pruning with
``--mitigate-during-pruning``. The replay buffers are fed all along, so they are full when
mitigation starts.

    python examples/prune_and_mitigate.py [--sparsity 0.85] [--prune-epochs 3] [--epochs 12]
"""

from __future__ import annotations

import argparse

import torch
from quickstart_loop import make_model

import ceag_cooper as cc
from ceag_cooper.data import make_group_imbalanced_task
from ceag_cooper.pruning import GradualSchedule, MagnitudePruner


def main(argv: list[str] | None = None) -> tuple[cc.DisparityReport, MagnitudePruner, cc.CEAG]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sparsity", type=float, default=0.85, help="final fraction of weights removed")
    parser.add_argument("--prune-epochs", type=int, default=3, help="epochs over which sparsity ramps up")
    parser.add_argument("--epochs", type=int, default=12, help="total fine-tuning epochs (pruning included)")
    parser.add_argument("--dense-epochs", type=int, default=30, help="dense training epochs")
    parser.add_argument("--samples", type=int, default=4000, help="training samples")
    parser.add_argument("--mitigate-during-pruning", action="store_true", help="constrain from the first step")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    task = make_group_imbalanced_task(args.samples, seed=0)
    model = make_model(task.inputs.shape[1])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for epoch in range(args.dense_epochs):
        for x, y, _ in task.batches(128, seed=epoch):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    reference = cc.evaluate_groups(model, task.batches(512, seed=None), groups=task.num_groups)

    steps_per_epoch = len(task.batches(128, seed=0))
    schedule = GradualSchedule(args.sparsity, num_updates=args.prune_epochs)
    # The first conv / last linear defaults are for CNNs; this MLP prunes every linear layer.
    pruner = MagnitudePruner(model, schedule=schedule, prune_last_linear=True)
    start = 0 if args.mitigate_during_pruning else schedule.last_step * steps_per_epoch
    problem = cc.CEAG(reference=reference, tolerance=0.01, buffer_size=40, start_step=start)
    primal = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    pruner.attach(primal)  # re-apply the masks after every primal step
    cooper_optimizer = cc.build_optimizer(problem, primal, dual_lr=0.05)
    for epoch in range(args.epochs):
        sparsity = pruner.step(epoch)  # one schedule update per epoch
        mitigating = problem.mitigation_active
        for x, y, a in task.batches(128, seed=100 + epoch):
            cooper_optimizer.roll(
                compute_cmp_state_kwargs={"model": model, "inputs": x, "targets": y, "group_ids": a[:, 0]}
            )
        lambdas = problem.multiplier_values.tolist()
        state = "on " if mitigating else "off"
        print(
            f"epoch {epoch:2d}: sparsity {sparsity:.3f}, mitigation {state}, "
            f"multipliers {[round(v, 3) for v in lambdas]}"
        )

    sparse = cc.evaluate_groups(model, task.batches(512, seed=None), groups=task.num_groups)
    report = cc.DisparityReport.from_metrics(reference, sparse, tolerance=0.01)
    print(report.to_markdown(title=f"GMP to {args.sparsity:.0%} + CEAG (train set)"))
    return report, pruner, problem


if __name__ == "__main__":
    main()
