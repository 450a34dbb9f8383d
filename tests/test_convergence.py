"""End to end on a small synthetic, group-imbalanced task: NFT leaves a large excess gap, CEAG
brings it within the tolerance at comparable accuracy.

Task: ``make_group_imbalanced_task`` (16 Gaussian features plus a one-hot group indicator; each
group's label is the sign of its own random linear score), with shares 80% / 15% / 5%. A dense MLP
learns all groups (~99% accuracy); keeping only the 15% largest weights of each linear layer
and fine-tuning with the mask applied favours the majority under plain fine-tuning.
"""

import torch
import torch.nn.functional as F

from ceag_cooper import CEAG, DisparityReport, Unconstrained, build_optimizer, evaluate_groups
from ceag_cooper.data import make_group_imbalanced_task

NUM_GROUPS, FEATURES = 3, 16
TOLERANCE = 0.01
# Margin on the final iterate: the multipliers react to buffered estimates (k = 40 samples per
# group, standard error ~3 points at 90% accuracy), so the last iterate oscillates around the
# boundary by a fraction of a point; 1 point is the smallest margin that covers that, and it is
# still 3x below what NFT leaves on this task.
MARGIN = 0.01


def batches(task, seed):
    return [(x, y, a[:, 0]) for x, y, a in task.batches(128, seed=seed)]


def fine_tune(method, dense_state, model, data, reference):
    model.load_state_dict(dense_state)
    masks = {}
    for name, p in model.named_parameters():
        if p.dim() == 2:  # keep the 15% largest weights of each linear layer
            threshold = p.detach().abs().flatten().kthvalue(int(0.85 * p.numel())).values
            masks[name] = p.detach().abs() > threshold
            p.data.mul_(masks[name])
    problem = {
        "nft": lambda: Unconstrained(num_groups=NUM_GROUPS),
        "ceag": lambda: CEAG(reference=reference, tolerance=TOLERANCE, buffer_size=40),
    }[method]()
    optimizer = build_optimizer(problem, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), dual_lr=0.05)
    for epoch in range(15):
        for x, y, g in batches(data, seed=100 + epoch):
            optimizer.roll(compute_cmp_state_kwargs={"model": model, "inputs": x, "targets": y, "group_ids": g})
            assert problem.multiplier_values is None or (problem.multiplier_values >= 0).all()
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if name in masks:
                        p.mul_(masks[name])
    sparse = evaluate_groups(model, batches(data, seed=0), groups=NUM_GROUPS)
    return DisparityReport.from_metrics(reference, sparse, tolerance=TOLERANCE), problem


def test_ceag_meets_the_tolerance_where_naive_fine_tuning_does_not():
    torch.manual_seed(0)
    data = make_group_imbalanced_task(4000, shares=(0.8, 0.15, 0.05), features=FEATURES, seed=0)
    model = torch.nn.Sequential(
        torch.nn.Linear(FEATURES + NUM_GROUPS, 64),
        torch.nn.ReLU(),
        torch.nn.Linear(64, 64),
        torch.nn.ReLU(),
        torch.nn.Linear(64, 2),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for epoch in range(30):
        for x, y, _ in batches(data, seed=epoch):
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
    reference = evaluate_groups(model, batches(data, seed=0), groups=NUM_GROUPS)
    assert reference.accuracy > 0.97
    dense_state = {k: v.clone() for k, v in model.state_dict().items()}

    nft, _ = fine_tune("nft", dense_state, model, data, reference)
    ceag, problem = fine_tune("ceag", dense_state, model, data, reference)

    assert nft.max_psi > 3 * TOLERANCE, nft.to_markdown()
    assert ceag.max_psi <= TOLERANCE + MARGIN, ceag.to_markdown()
    assert ceag.sparse_overall >= nft.sparse_overall - 0.03, (ceag.sparse_overall, nft.sparse_overall)
    # The constraint was active: some multiplier is positive, all are non-negative.
    assert (problem.multiplier_values > 0).any()
    assert (problem.multiplier_values >= 0).all()
