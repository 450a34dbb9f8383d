"""Structured pruning: remove half the channels of a residual CNN, fine-tune with CEAG, finalize.

During fine-tuning the channels are only masked (so Cooper's optimizer and the replay buffers
need no rebuild); ``finalize()`` then removes them for a smaller, faster model with the same
outputs. Data: UTKFace (race) at 32 px.

    python examples/structured_pruning.py [--channels 0.5] [--dense-epochs 8] [--epochs 4]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import ceag_cooper as cc
from ceag_cooper.data import load_utkface
from ceag_cooper.models import cifar_resnet
from ceag_cooper.pruning import ChannelPruner, OneShotSchedule, recalibrate_batchnorm


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--channels", type=float, default=0.5, help="fraction of channels removed")
    parser.add_argument("--dense-epochs", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--subset", type=int, default=None)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    train = load_utkface(args.data_dir, split="train", target="race", protected=("race",))
    if args.subset:
        train = train.subset(torch.arange(args.subset))
    spec = train.group_spec()
    model = cifar_resnet(20, num_classes=train.num_classes, width=16)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    for epoch in range(args.dense_epochs):
        for x, y, _ in train.batches(128, seed=epoch):
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
    reference = cc.evaluate_groups(model, train.batches(512), groups=spec)

    example = train.inputs[:1]
    pruner = ChannelPruner(model, example, schedule=OneShotSchedule(args.channels))
    pruner.step(0)
    problem = cc.CEAG(reference=reference, tolerance=0.01, buffer_size=40)
    primal = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    pruner.attach(primal)
    cooper_optimizer = cc.build_optimizer(problem, primal, dual_lr=1e-2)
    for epoch in range(args.epochs):
        for x, y, a in train.batches(128, seed=100 + epoch):
            batch = {"model": model, "inputs": x, "targets": y, "group_ids": spec.group_ids(a)}
            cooper_optimizer.roll(compute_cmp_state_kwargs=batch)
    recalibrate_batchnorm(model, train.batches(512))
    model.eval()
    masked_logits = model(train.inputs[:64])
    report = cc.DisparityReport.from_metrics(reference, cc.evaluate_groups(model, train.batches(512), groups=spec),
                                             group_names=spec.group_names, tolerance=0.01)  # fmt: skip

    small = pruner.finalize()
    assert torch.allclose(small(train.inputs[:64]), masked_logits, atol=1e-4)
    sizes = pruner.report()
    print(report.to_markdown(title=f"CEAG after removing {args.channels:.0%} of the channels (train)"))
    print(f"parameters {sizes['dense_params']:,} -> {sizes['params']:,}")
    print(f"MACs per image {sizes['dense_macs']:,} -> {sizes['macs']:,}")
    return {"report": report, "sizes": sizes}


if __name__ == "__main__":
    main()
