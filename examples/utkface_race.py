"""UTKFace, target race, groups race: gradual magnitude pruning and CEAG in a hand-written loop.

Needs the UTKFace archive (``--data-dir`` or ``$CEAG_DATA_DIR``, default ``../shared/data``).
The CLI runs the same experiment with more options: ``ceag-cooper prune --method ceag``.

    python examples/utkface_race.py [--sparsity 0.9] [--dense-epochs 15] [--epochs 8]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import ceag_cooper as cc
from ceag_cooper.data import load_utkface
from ceag_cooper.models import SmallCNN
from ceag_cooper.pruning import GradualSchedule, MagnitudePruner, recalibrate_batchnorm


def main(argv: list[str] | None = None) -> dict[str, cc.DisparityReport]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None, help="folder holding utkface/")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--dense-epochs", type=int, default=15)
    parser.add_argument("--epochs", type=int, default=8, help="fine-tuning epochs, the first half pruning")
    parser.add_argument("--subset", type=int, default=None, help="use this many training images")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    train = load_utkface(args.data_dir, split="train", target="race", protected=("race",))
    test = load_utkface(args.data_dir, split="test", target="race", protected=("race",), progress=False)
    if args.subset:
        train = train.subset(torch.arange(args.subset))
    spec = train.group_spec()
    model = SmallCNN(num_classes=train.num_classes)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    steps = max(1, args.dense_epochs * train.num_batches(128))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.05, total_steps=steps)
    for epoch in range(args.dense_epochs):
        for x, y, _ in train.batches(128, seed=epoch):
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
            schedule.step()
    reference = cc.evaluate_groups(model, train.batches(512), groups=spec)  # dense, train set, eval mode
    dense_test = cc.evaluate_groups(model, test.batches(512), groups=spec)

    prune_epochs = max(1, args.epochs // 2)
    pruner = MagnitudePruner(model, schedule=GradualSchedule(args.sparsity, num_updates=prune_epochs))
    problem = cc.CEAG(reference=reference, tolerance=0.01, buffer_size=40,
                      start_step=(prune_epochs - 1) * train.num_batches(128))  # fmt: skip
    primal = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    pruner.attach(primal)
    cooper_optimizer = cc.build_optimizer(problem, primal, dual_lr=1e-2)
    for epoch in range(args.epochs):
        pruner.step(epoch + 1)
        for x, y, a in train.batches(128, seed=100 + epoch):
            batch = {"model": model, "inputs": x, "targets": y, "group_ids": spec.group_ids(a)}
            cooper_optimizer.roll(compute_cmp_state_kwargs=batch)
        recalibrate_batchnorm(model, train.batches(512))
        print(f"epoch {epoch}: sparsity {pruner.sparsity:.3f}, multipliers {problem.multiplier_values.tolist()}")

    reports = {
        "train": cc.DisparityReport.from_metrics(
            reference, cc.evaluate_groups(model, train.batches(512), groups=spec), group_names=spec.group_names,
            tolerance=0.01,
        ),
        "test": cc.DisparityReport.from_metrics(
            dense_test, cc.evaluate_groups(model, test.batches(512), groups=spec), group_names=spec.group_names,
            tolerance=0.01,
        ),
    }  # fmt: skip
    for split, report in reports.items():
        print(report.to_markdown(title=f"CEAG, {args.sparsity:.0%} sparse, {split}"))
    return reports


if __name__ == "__main__":
    main()
