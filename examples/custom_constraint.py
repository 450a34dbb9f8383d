"""A new fairness constraint as a small subclass: an absolute accuracy floor per group.

    acc_sparse(g) >= acc_dense(g) - delta      i.e.      Delta_g - delta <= 0

Unlike CEAG's *excess* gap, this bounds each group's own drop, whatever the overall drop is.
It is written against the base class only: it registers its own replay buffers (which are then
saved, moved and broadcast with the problem) and says what its violations are.

    python examples/custom_constraint.py [--delta 0.05] [--epochs 15]
"""

from __future__ import annotations

import argparse

import torch
from quickstart_loop import magnitude_masks, make_model

import ceag_cooper as cc
from ceag_cooper.data import make_group_imbalanced_task
from ceag_cooper.problems import GroupFairnessProblem, ReplayBufferStore


class AccuracyFloor(GroupFairnessProblem):
    """Each group may lose at most ``delta`` accuracy relative to the dense model."""

    requires_reference = True

    def __init__(self, *, reference: cc.GroupMetrics, delta: float = 0.05, buffer_size: int = 40, **options) -> None:
        super().__init__(reference=reference, **options)
        self.delta, self.buffer_size = delta, buffer_size
        store = ReplayBufferStore(self.num_groups, buffer_size, device=self.device)
        self.buffers = self.register_state("buffers", store)

    def update_estimates(self, stats: cc.BatchStatistics) -> None:
        # Every sample's 0/1 accuracy goes to its group's buffer (the base calls this once per batch).
        self.buffers.update(stats.group_ids, stats.per_sample_correct)

    def proxy_violations(self, stats: cc.BatchStatistics) -> tuple[torch.Tensor, torch.Tensor]:
        # Differentiable: the group's loss increase over its dense loss.
        return (stats.group_loss - self.reference.group_loss) - self.delta, stats.present

    def strict_violations(self, stats: cc.BatchStatistics) -> tuple[torch.Tensor, torch.Tensor]:
        # The true accuracy drop, from the replay buffers (full groups only).
        accuracy, observed = self.buffers.query()
        return (self.reference.group_accuracy - accuracy) - self.delta, observed

    def config(self) -> dict:
        return {**super().config(), "delta": self.delta, "buffer_size": self.buffer_size}


def main(argv: list[str] | None = None) -> cc.DisparityReport:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--delta", type=float, default=0.05, help="largest accuracy drop allowed per group")
    parser.add_argument("--epochs", type=int, default=15, help="fine-tuning epochs")
    parser.add_argument("--dense-epochs", type=int, default=30, help="dense training epochs")
    parser.add_argument("--samples", type=int, default=4000, help="training samples")
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

    masks = magnitude_masks(model, 0.85)
    params = dict(model.named_parameters())
    problem = AccuracyFloor(reference=reference, delta=args.delta, buffer_size=40)
    cooper_optimizer = cc.build_optimizer(
        problem, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), dual_lr=0.05
    )
    for epoch in range(args.epochs):
        for x, y, a in task.batches(128, seed=100 + epoch):
            with torch.no_grad():
                for name, mask in masks.items():
                    params[name].mul_(mask)
            cooper_optimizer.roll(
                compute_cmp_state_kwargs={"model": model, "inputs": x, "targets": y, "group_ids": a[:, 0]}
            )
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].mul_(mask)

    sparse = cc.evaluate_groups(model, task.batches(512, seed=None), groups=task.num_groups)
    report = cc.DisparityReport.from_metrics(reference, sparse)
    drops = report.group_gap
    print(report.to_markdown(title="accuracy floor"))
    print(f"largest per-group drop: {100 * drops.max():.2f} points (allowed: {100 * args.delta:.2f})")
    return report


if __name__ == "__main__":
    main()
