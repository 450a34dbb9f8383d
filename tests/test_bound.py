"""Issue #13's options: nuPI and decayed duals, eval-mode estimates, margin, the paper's EL,
feasibility-first iterates, the primal schedule. Each against an independent reference."""

import json
import random

import cooper
import numpy as np
import pytest
import torch
from tiny_experiment import TINY

import ceag_cooper as cc
from ceag_cooper.experiments import ExperimentConfig, load_task, machine, primal_lr, run_experiment
from ceag_cooper.problems.base import GroupFairnessProblem
from ceag_cooper.selection import IterateSelector, select_iterate

TINY = {**TINY, "finetune_epochs": 2}


def reference_metrics(accuracy=(0.9, 0.8, 0.7), counts=(50.0, 30.0, 20.0)):
    acc, n = torch.tensor(accuracy), torch.tensor(counts)
    overall = (acc * n).sum() / n.sum()
    return cc.GroupMetrics(acc, torch.full_like(acc, 0.4), n, overall, torch.tensor(0.4), n.sum())


class Scripted(GroupFairnessProblem):
    """Strict violations read from a script (one row per step); the proxy is 0."""

    def __init__(self, script, **kwargs):
        self.script = list(script)
        super().__init__(num_groups=len(self.script[0]), **kwargs)

    def proxy_violations(self, stats):
        return stats.group_loss * 0.0, torch.ones(self.num_groups, dtype=torch.bool)

    def strict_violations(self, stats):
        values = torch.tensor(self.script[self.num_steps - 1])
        return values, torch.ones(self.num_groups, dtype=torch.bool)


def run_script(script, **optimizer_kwargs):
    problem = Scripted(script)
    model = torch.nn.Linear(2, 2)
    optimizer = cc.build_optimizer(problem, torch.optim.SGD(model.parameters(), lr=0.0), **optimizer_kwargs)
    history = []
    for _ in script:
        x = torch.randn(4, 2)
        ids = torch.tensor([0, 1, 2, 0]) % problem.num_groups
        kwargs = {"model": model, "inputs": x, "targets": torch.tensor([0, 1, 0, 1]), "group_ids": ids}
        optimizer.roll(compute_cmp_state_kwargs=kwargs)
        history.append(problem.multiplier_values.tolist())
    return np.array(history)


def naive_pi(script, lr, kp, nu, decay=0.0, first_xi_scale=1.0):
    """Reference PI controller (Sohrabi et al.), SGD initialisation, projected on lambda >= 0.

    nuPI's documentation sets xi_0 = e_0 (``first_xi_scale=1``); Cooper 1.0.1's sparse-gradient
    path, the one indexed multipliers take, stores xi_0 = (1 - nu) e_0 (the same when nu = 0).
    """
    lam = np.zeros(len(script[0]))
    xi = None
    out = []
    for e in np.asarray(script, dtype=np.float64):
        p_term = np.zeros_like(e) if xi is None else (1 - nu) * (e - xi)
        lam = np.maximum(lam + lr * (e + kp * p_term - decay * lam), 0.0)
        xi = first_xi_scale * e if xi is None else nu * xi + (1 - nu) * e
        out.append(lam.copy())
    return np.array(out)


SCRIPT = [[0.02, -0.01, 0.0], [0.03, 0.01, -0.02], [0.01, 0.02, 0.05], [-0.04, 0.0, 0.01], [0.02, 0.03, -0.01]]


def test_nupi_matches_a_naive_pi_controller():
    got = run_script(SCRIPT, dual_lr=0.5, dual_optimizer="nupi", proportional_gain=3.0)
    np.testing.assert_allclose(got, naive_pi(SCRIPT, 0.5, 3.0, 0.0), atol=1e-6)
    smoothed = run_script(SCRIPT, dual_lr=0.5, dual_optimizer="nupi", proportional_gain=3.0, ema_nu=0.4)
    np.testing.assert_allclose(smoothed, naive_pi(SCRIPT, 0.5, 3.0, 0.4, first_xi_scale=0.6), atol=1e-6)
    assert not np.allclose(smoothed, got)


def test_nupi_without_proportional_term_is_sgd():
    sgd = run_script(SCRIPT, dual_lr=0.5)
    nupi = run_script(SCRIPT, dual_lr=0.5, dual_optimizer="nupi")
    np.testing.assert_allclose(nupi, sgd, atol=1e-7)
    np.testing.assert_allclose(sgd, naive_pi(SCRIPT, 0.5, 0.0, 0.0), atol=1e-6)
    assert not np.allclose(run_script(SCRIPT, dual_lr=0.5, dual_optimizer="nupi", proportional_gain=3.0), sgd)


def test_dual_weight_decay_bounds_the_multiplier():
    """Constant violation v: lambda_t = v / d * (1 - (1 - lr d)^t) -> v / d, never beyond."""
    script = [[0.05, 0.05]] * 60
    got = run_script(script, dual_lr=1.0, dual_weight_decay=0.5)
    t = np.arange(1, 61)[:, None]
    np.testing.assert_allclose(got, 0.05 / 0.5 * (1 - (1 - 0.5) ** t) * np.ones((1, 2)), atol=1e-6)
    assert got.max() <= 0.1 + 1e-6
    assert run_script(script, dual_lr=1.0)[-1, 0] == pytest.approx(3.0, abs=1e-4)  # without: grows forever


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dual_lr": float("inf")}, "`dual_lr` must be a finite float > 0"),
        ({"dual_optimizer": "adam"}, "'sgd' or 'nupi'"),
        ({"proportional_gain": 1.0}, "pass dual_optimizer='nupi'"),
        ({"dual_optimizer": "nupi", "ema_nu": 1.0}, r"`ema_nu` must be in \[0, 1\)"),
        ({"dual_weight_decay": -1.0}, "`dual_weight_decay` must be a finite float >= 0"),
    ],
)
def test_bad_dual_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        cc.build_optimizer(Scripted(SCRIPT), torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=0.1), **kwargs)


class Noisy(torch.nn.Module):
    """Dropout + BatchNorm: training and eval mode disagree."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Dropout(0.5),
                                       torch.nn.Linear(8, 3))  # fmt: skip

    def forward(self, x):
        return self.net(x)


def test_eval_estimates_see_the_clean_batch_in_eval_mode():
    torch.manual_seed(0)
    model, ref = Noisy(), reference_metrics()
    clean = torch.randn(64, 4)
    augmented = clean + 0.5 * torch.randn_like(clean)
    y, g = torch.randint(0, 3, (64,)), torch.arange(64) % 3
    problem = cc.CEAG(reference=ref, buffer_size=None, constraint_estimate="eval")
    state = problem.compute_cmp_state(model, augmented, y, g, estimate_inputs=clean)
    assert model.training  # restored
    model.eval()
    with torch.no_grad():
        correct = (model(clean).argmax(1) == y).double().numpy()
    model.train()
    group_acc = np.array([correct[g.numpy() == k].mean() for k in range(3)])
    expected = (ref.group_accuracy.numpy() - group_acc) - (float(ref.accuracy) - correct.mean()) - 0.01
    np.testing.assert_allclose(state.misc["strict_violation"].numpy(), expected, atol=1e-6)
    # The model step still uses the training pass on the augmented batch: same proxy as "train".
    train_problem = cc.CEAG(reference=ref, buffer_size=None)
    torch.manual_seed(1)
    a = problem.compute_cmp_state(model, augmented, y, g, estimate_inputs=clean)
    torch.manual_seed(1)
    b = train_problem.compute_cmp_state(model, augmented, y, g)
    va, vb = (s.observed_constraints[p.fairness].violation for s, p in ((a, problem), (b, train_problem)))
    torch.testing.assert_close(va, vb)
    assert not torch.allclose(a.misc["strict_violation"], b.misc["strict_violation"])  # negative control


def test_eval_estimates_feed_the_buffers_with_eval_mode_accuracy():
    torch.manual_seed(0)
    model, ref = Noisy(), reference_metrics()
    x, y, g = torch.randn(30, 4), torch.randint(0, 3, (30,)), torch.arange(30) % 3
    problem = cc.CEAG(reference=ref, buffer_size=10, constraint_estimate="eval")
    problem.compute_cmp_state(model, x + torch.randn_like(x), y, g, estimate_inputs=x)
    model.eval()
    correct = (model(x).argmax(1) == y).float()
    for k in range(3):
        assert problem.buffers.contents(k) == correct[g == k].tolist()


def test_eval_estimates_need_the_model_and_matching_clean_inputs():
    problem = cc.CEAG(reference=reference_metrics(), constraint_estimate="eval")
    y, g = torch.tensor([0, 1]), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="not precomputed `logits`"):
        problem.compute_cmp_state(logits=torch.randn(2, 3), targets=y, group_ids=g)
    with pytest.raises(ValueError, match="same samples as `inputs`"):
        problem.compute_cmp_state(torch.nn.Linear(4, 3), torch.randn(2, 4), y, g, estimate_inputs=torch.randn(3, 4))
    with pytest.raises(ValueError, match="'train' or 'eval'"):
        cc.CEAG(reference=reference_metrics(), constraint_estimate="test")


def test_margin_enforces_tolerance_minus_margin_and_reports_keep_tolerance():
    torch.manual_seed(0)
    ref, logits = reference_metrics(), torch.randn(12, 3)
    y, g = torch.randint(0, 3, (12,)), torch.arange(12) % 3
    with_margin = cc.CEAG(reference=ref, tolerance=0.02, margin=0.005, buffer_size=None)
    stricter = cc.CEAG(reference=ref, tolerance=0.015, buffer_size=None)
    a = with_margin.compute_cmp_state(logits=logits, targets=y, group_ids=g).misc["strict_violation"]
    b = stricter.compute_cmp_state(logits=logits, targets=y, group_ids=g).misc["strict_violation"]
    torch.testing.assert_close(a, b)
    assert with_margin.tolerance == 0.02
    assert with_margin.target == pytest.approx(0.015)
    assert with_margin.config()["margin"] == 0.005
    with pytest.raises(ValueError, match="margin"):
        cc.CEAG(reference=ref, margin=-0.01)


def test_paper_equalized_loss_is_absolute_equality_with_an_unweighted_buffered_overall():
    torch.manual_seed(0)
    ref = reference_metrics(counts=(80.0, 15.0, 5.0))  # unequal shares: weighting matters
    problem = cc.EqualizedLoss(reference=ref, buffer_size=4, form="paper")
    assert problem.constraint_type == cooper.ConstraintType.EQUALITY
    logits, y, g = torch.randn(12, 3), torch.randint(0, 3, (12,)), torch.arange(12) % 3
    state = problem.compute_cmp_state(logits=logits, targets=y, group_ids=g)
    loss = torch.nn.functional.cross_entropy(logits, y, reduction="none").numpy()
    buffered = np.array([loss[g.numpy() == k][-4:].mean() for k in range(3)])
    np.testing.assert_allclose(state.misc["strict_violation"].numpy(), np.abs(buffered - buffered.mean()), atol=1e-6)
    proxy = np.array([loss[g.numpy() == k].mean() for k in range(3)]) - loss.mean()
    np.testing.assert_allclose(state.observed_constraints[problem.fairness].violation.detach().numpy(),
                               np.abs(proxy), atol=1e-6)  # fmt: skip
    signed = cc.EqualizedLoss(reference=ref, buffer_size=4).compute_cmp_state(logits=logits, targets=y, group_ids=g)
    assert not np.allclose(signed.misc["strict_violation"].numpy(), np.abs(buffered - buffered.mean()))
    with pytest.raises(ValueError, match="excludes `absolute=True`"):
        cc.EqualizedLoss(num_groups=3, form="paper", absolute=True)


@pytest.mark.parametrize(
    "make",
    [
        lambda ref: cc.EqualizedLoss(reference=ref, buffer_size=3, form="paper"),
        lambda ref: cc.EqualizedLoss(reference=ref, buffer_size=3),
        lambda ref: cc.CEAG(reference=ref, buffer_size=3),
    ],
)
def test_buffered_problems_train_a_float64_model(make):
    """Regression: float32 loss buffers under a float64 problem made Cooper's einsum fail."""
    model, problem = torch.nn.Linear(4, 3).double(), make(reference_metrics()).to(torch.float64)
    optimizer = cc.build_optimizer(problem, torch.optim.SGD(model.parameters(), lr=0.1), dual_lr=0.1)
    for _ in range(4):
        x, y, g = torch.randn(9, 4, dtype=torch.float64), torch.randint(0, 3, (9,)), torch.arange(9) % 3
        optimizer.roll(compute_cmp_state_kwargs=dict(model=model, inputs=x, targets=y, group_ids=g))
    assert problem.multiplier_values.dtype == torch.float64
    assert bool(problem.multiplier_values.ne(0).any())


def test_online_selector_agrees_with_select_iterate():
    rng = random.Random(0)
    for _ in range(200):
        candidates = [cc.selection.Candidate(f"e{i}", rng.choice([0.8, 0.85, 0.9]), rng.choice([0.0, 0.01, 0.02, 0.03]))
                      for i in range(rng.randint(1, 8))]  # fmt: skip
        selector = IterateSelector(tolerance=0.01)
        for i, c in enumerate(candidates):
            selector.consider(c.name, c.accuracy, c.max_psi, {"i": torch.tensor(i)})
        chosen = select_iterate(candidates, tolerance=0.01)
        assert selector.best_index == chosen
        assert int(selector.best_state["i"]) == chosen
        restored = IterateSelector(tolerance=0.01)
        restored.load_state_dict(selector.state_dict())
        assert restored.best_name == selector.best_name
        assert restored.reason() == selector.reason()


def test_primal_schedule_decays_at_the_milestones():
    config = ExperimentConfig(prune_epochs=4, finetune_epochs=6, lr=0.1, lr_milestones=(0.5,), lr_gamma=0.5)
    assert [primal_lr(config, e) for e in range(10)] == [0.1] * 5 + [0.05] * 5
    assert primal_lr(ExperimentConfig(lr_milestones=()), 11) == ExperimentConfig().lr
    with pytest.raises(ValueError, match="increasing fractions"):
        ExperimentConfig(lr_milestones=(0.9, 0.6))


def test_the_returned_model_is_the_selected_iterate(tmp_path):
    """The final report is the iterate the rule judged: same train numbers as its log entry."""
    config = ExperimentConfig(**TINY, method="ceag", final_iterate="feasible_best", tolerance=0.0, augment=False,
                              output_dir=str(tmp_path), dual_lr=0.05)  # fmt: skip
    result = run_experiment(config, task=load_task(config), progress=False)
    chosen = result["log"][-1]["selected_iterate"]
    entry = next(e for e in result["log"] if f"epoch {e['epoch']}" == chosen)
    train = result["reports"]["train"]["overall"]
    assert train["max_psi"] == pytest.approx(entry["train_max_psi"], abs=1e-4)
    assert train["sparse_accuracy"] == pytest.approx(entry["train_accuracy"], abs=1e-4)
    assert result["final_iterate"].startswith(chosen)
    saved = json.loads((tmp_path / "results" / f"{config.run_name()}.json").read_text())
    assert saved["final_iterate"] == result["final_iterate"]
    assert "code" in saved["versions"]
    assert saved["versions"]["machine"] == machine()  # saved with the result: reproducible per machine only
    nft = run_experiment(ExperimentConfig.from_dict({**config.__dict__, "method": "nft"}), progress=False)
    assert nft["final_iterate"] == "last"  # unconstrained methods are never selected


def test_epoch_log_has_the_diagnosis_fields(tmp_path):
    config = ExperimentConfig(**TINY, method="ceag", augment=False, output_dir=str(tmp_path))
    log = run_experiment(config, task=load_task(config), progress=False)["log"]
    last = log[-1]
    for key in ("lr", "train_accuracy", "train_max_psi", "test_max_psi", "multipliers", "violations"):
        assert key in last, key
    assert set(last["multipliers"]) == {"group=majority", "group=minority", "group=rare"}
    assert [e["lr"] for e in log] == [primal_lr(config, e) for e in range(len(log))]


def test_epoch_log_summarizes_many_constraints():
    from ceag_cooper.experiments.finetuning import _constraint_log

    counts = tuple(float(10 + i) for i in range(30))
    problem = cc.CEAG(reference=reference_metrics(accuracy=(0.8,) * 30, counts=counts), buffer_size=None)
    problem.fairness.multiplier.weight.data = torch.linspace(0, 0.29, 30).unsqueeze(1)
    violation = torch.linspace(-0.1, 0.19, 30)
    entry = _constraint_log(problem, [f"g{i}" for i in range(30)], violation)
    summary = entry["multiplier_summary"]
    assert summary["positive"] == 29
    assert summary["max"] == pytest.approx(0.29)
    assert summary["sum"] == pytest.approx(float(torch.linspace(0, 0.29, 30).sum()), abs=1e-4)
    assert [name for name, _ in summary["top"]] == ["g29", "g28", "g27", "g26", "g25"]
    assert entry["violation_summary"]["positive"] == int((violation > 0).sum())
    assert "multipliers" not in entry


def test_feasibility_monitor_resumes_exactly():
    """Regression (issue #16 item 5): a resumed run must report the same never-feasible groups."""
    from ceag_cooper.selection import FeasibilityMonitor

    steps = [(torch.tensor([0.1 * t, 0.0, 0.2]), torch.tensor([0.05, -0.01 if t == 2 else 0.02, 0.03]))
             for t in range(6)]  # fmt: skip
    whole = FeasibilityMonitor(names=["a", "b", "c"], patience=3)
    first = FeasibilityMonitor(names=["a", "b", "c"], patience=3)

    def feed(monitor, chunk):
        for m, v in chunk:
            monitor.update(m, v)

    with pytest.warns(UserWarning, match="constraint 'a'"):
        feed(whole, steps)
    feed(first, steps[:3])
    state = torch.load(_roundtrip(first.state_dict()), weights_only=True)
    resumed = FeasibilityMonitor(names=["a", "b", "c"], patience=3)
    resumed.load_state_dict(state)
    with pytest.warns(UserWarning, match="constraint 'a'"):
        feed(resumed, steps[3:])
    assert resumed.never_feasible() == whole.never_feasible() == ["a", "c"]
    assert FeasibilityMonitor(names=["a", "b", "c"]).never_feasible() == []


def _roundtrip(obj):
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return buffer


def test_iterate_min_count_judges_only_large_enough_groups(tmp_path):
    """0 (default) keeps run names; above every group's size the rule falls back to all groups."""
    base = {**TINY, "method": "ceag", "final_iterate": "feasible_best", "tolerance": 0.0, "augment": False,
            "output_dir": str(tmp_path), "dual_lr": 0.05}  # fmt: skip
    assert ExperimentConfig(**base).run_name() == ExperimentConfig(**base, iterate_min_count=0).run_name()
    assert ExperimentConfig(**base).run_name() != ExperimentConfig(**base, iterate_min_count=50).run_name()
    with pytest.raises(ValueError, match="iterate_min_count"):
        ExperimentConfig(**base, iterate_min_count=-1)
    task = load_task(ExperimentConfig(**base))
    every = run_experiment(ExperimentConfig(**base), task=task, progress=False)
    none_large = run_experiment(ExperimentConfig(**base, iterate_min_count=10**9), task=task, progress=False)
    assert none_large["final_iterate"] == every["final_iterate"]
    assert none_large["reports"] == every["reports"]
    assert all("train_max_psi_judged" not in e for e in every["log"])  # logged only when groups are judged
    assert {e.get("train_max_psi_judged", "absent") for e in none_large["log"]} <= {None, "absent"}
    all_groups = run_experiment(ExperimentConfig(**base, iterate_min_count=1), task=task, progress=False)
    judged = [(e["train_max_psi_judged"], e["train_max_psi"]) for e in all_groups["log"] if "train_max_psi" in e]
    assert judged
    assert all(a == b for a, b in judged)  # every group has >= 1 sample: the same max as train_max_psi
