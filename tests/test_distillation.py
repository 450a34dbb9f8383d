"""Distillation from the dense model in the model step (issue #15's churn lever): loss, problem option, pipeline."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from ceag_cooper import CEAG, Distillation, EqualizedLoss, GroupMetrics, Unconstrained, build_optimizer
from ceag_cooper.problems import distillation_loss

REFERENCE = GroupMetrics(
    group_accuracy=torch.tensor([0.9, 0.6]),
    group_loss=torch.tensor([0.3, 0.9]),
    group_count=torch.tensor([60.0, 40.0]),
    accuracy=torch.tensor(0.78),
    loss=torch.tensor(0.54),
    num_samples=torch.tensor(100.0),
)


def naive_distillation(logits, teacher, targets, weight, temperature):
    """Sample by sample in numpy: (1 - w) * CE + w * T^2 * sum_c q_c (log q_c - log p_c), softmaxes at T."""
    out = []
    for z, t, y in zip(logits.tolist(), teacher.tolist(), targets.tolist(), strict=True):
        z, t = np.array(z, dtype=np.float64), np.array(t, dtype=np.float64)
        hard = -(z[y] - math.log(np.exp(z).sum()))
        p = np.exp(z / temperature) / np.exp(z / temperature).sum()
        q = np.exp(t / temperature) / np.exp(t / temperature).sum()
        out.append((1 - weight) * hard + weight * temperature**2 * float((q * (np.log(q) - np.log(p))).sum()))
    return np.array(out)


@pytest.mark.parametrize(("weight", "temperature"), [(0.0, 1.0), (0.5, 2.0), (1.0, 4.0), (0.9, 0.5)])
def test_distillation_loss_matches_a_sample_by_sample_reference(weight, temperature):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 5, generator=generator, dtype=torch.float64) * 3
    teacher = torch.randn(7, 5, generator=generator, dtype=torch.float64) * 3
    targets = torch.randint(0, 5, (7,), generator=generator)
    got = distillation_loss(logits, teacher, targets, weight=weight, temperature=temperature)
    np.testing.assert_allclose(got.numpy(), naive_distillation(logits, teacher, targets, weight, temperature),
                               rtol=1e-12, atol=1e-12)  # fmt: skip


def test_soft_term_vanishes_and_has_no_gradient_at_the_teacher():
    teacher = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]])
    student = teacher.clone().requires_grad_(True)
    loss = distillation_loss(student, teacher, torch.tensor([0, 1]), weight=1.0, temperature=3.0)
    loss.sum().backward()
    assert loss.abs().max() < 1e-6
    assert student.grad.abs().max() < 1e-6
    # and the teacher's outputs are constants: no gradient flows into them
    teacher = teacher.clone().requires_grad_(True)
    assert not distillation_loss(student.detach(), teacher, torch.tensor([0, 1]), weight=1.0,
                                 temperature=3.0).requires_grad  # fmt: skip


class DropoutTeacher(torch.nn.Module):
    """A teacher whose training mode differs from its eval mode (dropout), to see which one is used."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)
        self.dropout = torch.nn.Dropout(0.9)

    def forward(self, x):
        return self.dropout(self.linear(x))


def batch(seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(8, 4, generator=generator), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]), torch.tensor([0, 1] * 4)


@pytest.mark.parametrize("kind", ["nft", "ceag", "el"])
def test_problem_option_mixes_the_eval_mode_teacher_into_the_model_step_only(kind):
    torch.manual_seed(0)
    teacher, student = DropoutTeacher().train(), torch.nn.Linear(4, 3)
    option = Distillation(teacher, weight=0.7, temperature=2.0)
    make = {
        "nft": lambda **o: Unconstrained(num_groups=2, **o),
        "ceag": lambda **o: CEAG(reference=REFERENCE, buffer_size=None, **o),
        "el": lambda **o: EqualizedLoss(reference=REFERENCE, **o),
    }[kind]
    x, y, ids = batch()
    calls = []  # how the teacher is called: grad mode and training flag at its forward
    teacher.register_forward_hook(lambda module, *_: calls.append((torch.is_grad_enabled(), module.training)))
    plain = make().compute_cmp_state(student, x, y, ids)
    distilled = make(distillation=option).compute_cmp_state(student, x, y, ids)
    assert calls == [(False, False)]  # once, without gradient, in eval mode
    with torch.no_grad():
        teacher.eval()
        expected = distillation_loss(student(x), teacher.linear(x), y, weight=0.7, temperature=2.0)
    teacher.train()
    stats, plain_stats = distilled.misc["stats"], plain.misc["stats"]
    torch.testing.assert_close(stats.per_sample_loss, expected)
    torch.testing.assert_close(stats.loss, expected.mean())
    assert teacher.training  # its mode is restored
    # accuracies (what CEAG's multiplier step and the reports read) are unchanged
    assert torch.equal(stats.per_sample_correct, plain_stats.per_sample_correct)
    if kind == "ceag":
        torch.testing.assert_close(distilled.misc["strict_violation"], plain.misc["strict_violation"])
        assert not torch.allclose(
            distilled.observed_constraints[next(iter(distilled.observed_constraints))].violation,
            plain.observed_constraints[next(iter(plain.observed_constraints))].violation,
        )  # the proxies are built from the distilled per-group losses


@pytest.mark.parametrize("estimate", ["train", "eval"])
def test_equalized_loss_multiplier_step_reads_distilled_losses_only_on_the_training_pass(estimate):
    """As EqualizedLoss's docstring says: "train" estimates see the distilled loss, "eval" ones the plain loss."""
    teacher, student = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    x, y, ids = batch(2)
    option = Distillation(teacher, weight=0.8, temperature=2.0)
    plain = EqualizedLoss(reference=REFERENCE, constraint_estimate=estimate).compute_cmp_state(student, x, y, ids)
    distilled = EqualizedLoss(reference=REFERENCE, constraint_estimate=estimate, distillation=option)
    distilled = distilled.compute_cmp_state(student, x, y, ids)
    same = torch.allclose(distilled.misc["strict_violation"], plain.misc["strict_violation"])
    assert same == (estimate == "eval")


def test_masked_teacher_classes_and_wrong_devices():
    """A class the teacher rules out (logit -inf) contributes 0, not nan; a teacher elsewhere is a clear error."""
    teacher = torch.tensor([[2.0, -math.inf, 0.0]])
    loss = distillation_loss(torch.tensor([[1.0, 0.5, 0.0]]), teacher, torch.tensor([0]), weight=1.0, temperature=1.0)
    q = torch.tensor([2.0, 0.0]).softmax(0)
    p = torch.tensor([1.0, 0.5, 0.0]).log_softmax(0)[[0, 2]]
    torch.testing.assert_close(loss, (q * (q.log() - p)).sum().reshape(1))
    with pytest.raises(ValueError, match="device"):
        distillation_loss(torch.zeros(1, 3), torch.zeros(1, 3, device="meta"), torch.tensor([0]), weight=0.5,
                          temperature=1.0)  # fmt: skip


def test_precomputed_teacher_logits_and_clear_errors():
    teacher, student = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    x, y, ids = batch(1)
    problem = Unconstrained(num_groups=2, distillation=Distillation(teacher, weight=0.5))
    called = problem.compute_cmp_state(student, x, y, ids).misc["stats"].loss
    with torch.no_grad():
        given = problem.compute_cmp_state(logits=student(x), targets=y, group_ids=ids, teacher_logits=teacher(x))
    torch.testing.assert_close(given.misc["stats"].loss, called)
    with pytest.raises(ValueError, match="teacher_logits"):
        problem.compute_cmp_state(logits=student(x), targets=y, group_ids=ids)
    with pytest.raises(ValueError, match="no `distillation=` option"):
        Unconstrained(num_groups=2).compute_cmp_state(student, x, y, ids, teacher_logits=teacher(x))
    with pytest.raises(ValueError, match="same batch"):
        problem.compute_cmp_state(student, x, y, ids, teacher_logits=teacher(x)[:5])
    for bad, match in (({"weight": 1.5}, "in \\[0, 1\\]"), ({"temperature": 0.0}, "> 0"),
                       ({"weight": float("nan")}, "finite"), ({"weight": True}, "finite")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            Distillation(teacher, **bad)
    with pytest.raises(TypeError, match=r"nn\.Module"):
        Distillation(lambda x: x)
    with pytest.raises(TypeError, match="Distillation"):
        Unconstrained(num_groups=2, distillation=0.5)


def test_checkpoints_record_the_distillation_and_old_ones_still_load():
    teacher = torch.nn.Linear(4, 3)
    with_it = CEAG(reference=REFERENCE, buffer_size=None, distillation=Distillation(teacher, weight=0.5))
    without = CEAG(reference=REFERENCE, buffer_size=None)
    assert with_it.state_dict()["config"]["distillation"] == {"weight": 0.5, "temperature": 2.0}
    old = without.state_dict()  # written before the option existed: read as no distillation
    old["config"].pop("distillation")
    CEAG(reference=REFERENCE, buffer_size=None).load_state_dict(old)
    with pytest.raises(ValueError, match="config"):
        with_it.load_state_dict(old)
    with pytest.raises(ValueError, match="config"):
        without.load_state_dict(with_it.state_dict())


def agreement_after_finetuning(weight, seed=0, *, lr=0.05, temperature=2.0, sparsity=0.9, steps=150):
    """Share of training samples on which a pruned MLP, fine-tuned with SGD, predicts as its dense teacher."""
    from ceag_cooper import MagnitudePruner
    from ceag_cooper.pruning import OneShotSchedule

    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(600, 10, generator=generator)
    y = ((x[:, :3].sum(1) + 0.8 * torch.randn(600, generator=generator)) > 0).long() + (x[:, 3] > 1).long()
    ids = (x[:, 4] > 0).long()
    torch.manual_seed(seed)
    dense = torch.nn.Sequential(torch.nn.Linear(10, 64), torch.nn.ReLU(), torch.nn.Linear(64, 3))
    opt = torch.optim.Adam(dense.parameters(), lr=0.01)
    for _ in range(300):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(dense(x), y).backward()
        opt.step()
    sparse = torch.nn.Sequential(torch.nn.Linear(10, 64), torch.nn.ReLU(), torch.nn.Linear(64, 3))
    sparse.load_state_dict(dense.state_dict())
    pruner = MagnitudePruner(sparse, schedule=OneShotSchedule(sparsity), prune_last_linear=True)
    pruner.step(0)
    option = Distillation(dense, weight=weight, temperature=temperature) if weight else None
    problem = Unconstrained(num_groups=2, distillation=option)
    primal = torch.optim.SGD(sparse.parameters(), lr=lr, momentum=0.9)
    pruner.attach(primal)
    optimizer = build_optimizer(problem, primal)
    for step in range(steps):
        rows = torch.arange(step * 40, step * 40 + 40) % 600
        optimizer.roll(compute_cmp_state_kwargs={"model": sparse, "inputs": x[rows], "targets": y[rows],
                                                 "group_ids": ids[rows]})  # fmt: skip
    with torch.no_grad():
        return (sparse(x).argmax(1) == dense(x).argmax(1)).float().mean().item()


def test_distillation_keeps_the_dense_models_predictions_where_plain_finetuning_does_not():
    """End to end: at 80% sparsity, distilled fine-tuning flips fewer of the dense model's training predictions."""
    settings = {"lr": 0.03, "temperature": 3.0, "sparsity": 0.8, "steps": 300}
    plain = np.array([agreement_after_finetuning(0.0, seed, **settings) for seed in (0, 1, 2)])
    distilled = np.array([agreement_after_finetuning(1.0, seed, **settings) for seed in (0, 1, 2)])
    # measured when written: 84.3% of the dense model's predictions kept plain, 86.7% distilled (means of 3 seeds)
    assert (distilled >= plain).all(), (plain, distilled)
    assert distilled.mean() - plain.mean() > 0.01, (plain, distilled)


def test_experiment_config_distills_the_dense_model_for_every_method(tmp_path, monkeypatch):
    """``ExperimentConfig(distill_weight=...)`` (``--distill-weight``) reaches every method's problem; a real run."""
    from tiny_experiment import TINY

    from ceag_cooper import evaluate_groups
    from ceag_cooper.experiments import (
        METHODS,
        ExperimentConfig,
        finetuning,
        get_method,
        load_task,
        make_problem,
        run_experiment,
    )
    from ceag_cooper.experiments.cli import build_parser

    config = ExperimentConfig(**TINY, method="nft", distill_weight=0.5, distill_temperature=3.0)
    assert config.run_name() != ExperimentConfig(**TINY, method="nft").run_name()
    task = load_task(config)
    dense = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(task.train.inputs[0].numel(), 3))
    reference = evaluate_groups(dense, task.train.batches(512), groups=task.spec)
    for method in METHODS:  # every registered method's factory passes the option on
        held = (list(task.train.batches(64)), reference) if get_method(method).uses_heldout else None
        problem = make_problem(dataclasses.replace(config, method=method), reference, 0, held, teacher=dense)
        assert problem.distillation.teacher is dense, method
        assert problem.config()["distillation"] == {"weight": 0.5, "temperature": 3.0}
    assert make_problem(ExperimentConfig(**TINY), reference, 0, teacher=dense).distillation is None
    with pytest.raises(ValueError, match="teacher=dense"):
        make_problem(config, reference, 0)
    for bad in ({"distill_weight": 1.2}, {"distill_weight": -0.1}, {"distill_temperature": 0.0}):
        with pytest.raises(ValueError, match=f"`{next(iter(bad))}`"):
            ExperimentConfig(**TINY, **bad)
    arguments = build_parser().parse_args(["prune", "--distill-weight", "0.9", "--distill-temperature", "4"])
    assert (arguments.distill_weight, arguments.distill_temperature) == (0.9, 4.0)
    teachers = []  # the pipeline's teacher is the dense model, not the model being pruned (negative control)
    original = finetuning.make_problem
    monkeypatch.setattr(finetuning, "make_problem", lambda *a, **k: teachers.append(k["teacher"]) or original(*a, **k))
    result = run_experiment(dataclasses.replace(config, method="ceag", output_dir=str(tmp_path)), task=task,
                            progress=False)  # fmt: skip
    assert result["config"]["distill_weight"] == 0.5
    assert all(math.isfinite(entry["train_loss_running"]) for entry in result["log"])
    weights = torch.cat([p.detach().flatten() for p in teachers[0].parameters()])
    assert (weights == 0).float().mean() < 0.01  # the run pruned its model to 90% zeros; the teacher is intact
    assert not teachers[0].training
    # run names: the temperature changes nothing without distillation, and 1 and 1.0 are one setting
    assert ExperimentConfig(**TINY, distill_temperature=5.0).run_name() == ExperimentConfig(**TINY).run_name()
    assert (
        ExperimentConfig(**TINY, distill_weight=1).run_name() == ExperimentConfig(**TINY, distill_weight=1.0).run_name()
    )


def test_a_subclass_with_its_own_added_keys_still_reads_checkpoints_from_before_distillation():
    """config_added counts over the class hierarchy: a user's subclass need not repeat its bases' keys."""

    class Custom(Unconstrained):
        config_added = {"smoothing": 0.0}  # noqa: RUF012 - as a user would write it

        def config(self):
            return {**super().config(), "smoothing": 0.0}

    old = Custom(num_groups=2).state_dict()
    del old["config"]["distillation"], old["config"]["smoothing"]
    Custom(num_groups=2).load_state_dict(old)
    with pytest.raises(ValueError, match="config"):
        Custom(num_groups=2, distillation=Distillation(torch.nn.Linear(4, 3))).load_state_dict(old)
