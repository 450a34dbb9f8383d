"""Held-out constraint estimation, the two-sided constraint, constrained model selection, diagnostics."""

import pytest
import torch

import ceag_cooper as cc

REFERENCE = cc.GroupMetrics(
    torch.tensor([0.5, 0.5]),
    torch.ones(2),
    torch.tensor([5.0, 5.0]),
    torch.tensor(0.5),
    torch.tensor(1.0),
    torch.tensor(10.0),
)


class Echo(torch.nn.Module):
    """Logits are the inputs themselves, so each batch fixes which samples are correct."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x):
        return x * self.scale


def logits_with(correct):
    c = torch.tensor(correct, dtype=torch.float32)
    return torch.stack([2 * c - 1, torch.zeros_like(c)], dim=1)


def test_heldout_batches_alone_drive_the_multipliers():
    # Training batches: group 0 always right, group 1 always wrong (would raise lambda_1 only).
    # Held-out batches: the opposite (must raise lambda_0 only).
    train_x, ids, targets = logits_with([1, 1, 0, 0]), torch.tensor([0, 0, 1, 1]), torch.zeros(4, dtype=torch.long)
    heldout = [(logits_with([0, 0, 1, 1]), targets, ids)]
    problem = cc.CEAG(
        reference=REFERENCE, tolerance=0.0, buffer_size=None, heldout=heldout, heldout_reference=REFERENCE
    )
    model = Echo()
    optimizer = cc.build_optimizer(problem, torch.optim.SGD(model.parameters(), lr=0.0), dual_lr=1.0)
    for _ in range(3):
        optimizer.roll(
            compute_cmp_state_kwargs={"model": model, "inputs": train_x, "targets": targets, "group_ids": ids}
        )
    lam = problem.multiplier_values
    assert lam[0] > 0
    assert lam[1] == 0
    # Without held-out data the same training batches move the other multiplier.
    plain = cc.CEAG(reference=REFERENCE, tolerance=0.0, buffer_size=None)
    optimizer = cc.build_optimizer(plain, torch.optim.SGD(model.parameters(), lr=0.0), dual_lr=1.0)
    optimizer.roll(compute_cmp_state_kwargs={"model": model, "inputs": train_x, "targets": targets, "group_ids": ids})
    assert plain.multiplier_values[0] == 0
    assert plain.multiplier_values[1] > 0


def test_heldout_needs_its_reference_and_a_model():
    with pytest.raises(ValueError, match="pass `heldout_reference`"):
        cc.CEAG(reference=REFERENCE, heldout=[])
    with pytest.raises(ValueError, match="must be re-iterable"):
        cc.CEAG(reference=REFERENCE, heldout=iter([]), heldout_reference=REFERENCE)
    problem = cc.CEAG(
        reference=REFERENCE,
        heldout=[(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long))],
        heldout_reference=REFERENCE,
    )
    with pytest.raises(ValueError, match="evaluates the model"):
        problem.compute_cmp_state(
            logits=torch.zeros(1, 2),
            targets=torch.zeros(1, dtype=torch.long),
            group_ids=torch.zeros(1, dtype=torch.long),
        )


def test_two_sided_constraints_by_hand():
    problem = cc.TwoSidedCEAG(reference=REFERENCE, tolerance=0.1, buffer_size=None)
    # Group 0: 1 of 1 right; group 1: 0 of 3 right. Batch accuracy 1/4; Delta = 0.5 - 0.25 = 0.25.
    state = problem.compute_cmp_state(
        logits=logits_with([1, 0, 0, 0]).requires_grad_(),
        targets=torch.zeros(4, dtype=torch.long),
        group_ids=torch.tensor([0, 1, 1, 1]),
    )
    psi = [(0.5 - 1.0) - 0.25, (0.5 - 0.0) - 0.25]  # [-0.75, 0.25]
    expected = [psi[0] - 0.1, psi[1] - 0.1, -psi[0] - 0.1, -psi[1] - 0.1]
    assert state.misc["strict_violation"].tolist() == pytest.approx(expected)
    assert problem.multiplier_values.shape == (4,)


def test_selection_picks_the_documented_iterate():
    runs = [
        cc.selection.Candidate("e0", 0.91, 0.040),
        cc.selection.Candidate("e1", 0.88, 0.009),
        cc.selection.Candidate("e2", 0.89, 0.010),
        cc.selection.Candidate("e3", 0.86, 0.002),
    ]
    assert cc.selection.select_iterate(runs, tolerance=0.01) == 2  # most accurate among feasible (e1, e2, e3)
    assert cc.selection.select_iterate(runs, tolerance=0.001) == 3  # none feasible: smallest max psi
    assert (
        cc.selection.select_iterate(
            [cc.selection.Candidate("a", 0.8, 0.02), cc.selection.Candidate("b", 0.9, 0.02)], tolerance=0.0
        )
        == 1
    )
    with pytest.raises(ValueError, match="empty"):
        cc.selection.select_iterate([], tolerance=0.01)


def test_averaging_keeps_common_zeros_and_the_monitor_warns():
    a = {"w": torch.tensor([0.0, 1.0, 3.0]), "n": torch.tensor(1)}
    b = {"w": torch.tensor([0.0, 3.0, 5.0]), "n": torch.tensor(2)}
    mean = cc.selection.average_state_dicts([a, b])
    assert mean["w"].tolist() == [0.0, 2.0, 4.0]
    assert mean["n"].item() == 2
    monitor = cc.FeasibilityMonitor(names=["White", "Others"], patience=3)
    for step in range(3):  # growth at updates 1 and 2: not yet 3 in a row
        monitor.update(torch.tensor([0.0, 0.1 * step]), torch.tensor([-0.01, 0.05]))
    with pytest.warns(UserWarning, match=r"'Others': multiplier grew to 0\.3 over 3 updates"):
        monitor.update(torch.tensor([0.0, 0.3]), torch.tensor([-0.01, 0.05]))
    assert monitor.never_feasible() == ["Others"]


@pytest.mark.parametrize(("method", "kind"), [("ceag_heldout", cc.CEAG), ("ceag_heldout_two_sided", cc.TwoSidedCEAG)])
def test_pipeline_heldout_methods_build_the_right_problem(method, kind):
    from ceag_cooper.experiments import ExperimentConfig, make_problem

    batches = [(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long))]
    problem = make_problem(ExperimentConfig(method=method), REFERENCE, 0, (batches, REFERENCE))
    assert type(problem) is kind
    assert problem.heldout is batches
    assert torch.equal(problem.heldout_reference.group_accuracy, REFERENCE.group_accuracy)
    assert problem.num_constraints() == (4 if kind is cc.TwoSidedCEAG else 2)


def test_heldout_methods_train_the_dense_model_without_the_heldout_part(tmp_path, monkeypatch):
    """A dense model trained on the held-out part has inflated reference accuracies there."""
    import ceag_cooper.experiments as pipeline

    tiny = {"task": "synthetic", "model": "mlp", "width": 8, "dense_epochs": 1, "augment": False}
    config = pipeline.ExperimentConfig(**tiny, method="ceag_heldout", output_dir=str(tmp_path))
    plain = pipeline.ExperimentConfig(**tiny, method="ceag", output_dir=str(tmp_path))
    assert config.dense_key() != plain.dense_key()
    task = pipeline.load_task(config)
    seen = []
    real_batches = pipeline.tasks.GroupDataset.batches

    def spy(self, *args, **kwargs):
        seen.append(len(self))
        return real_batches(self, *args, **kwargs)

    monkeypatch.setattr(pipeline.tasks.GroupDataset, "batches", spy)
    pipeline.train_dense(config, task, progress=False)
    fit, held = pipeline.heldout_split(config, task)
    assert seen == [len(fit)]  # one dense epoch, on the fit part only
    assert len(fit) + len(held) == len(task.train)
