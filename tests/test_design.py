"""The layout's promises (issue #14): layers, one place per option, registered state and methods."""

import ast
import inspect
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import ceag_cooper as cc
from ceag_cooper.experiments import ExperimentConfig, Method, get_method, register_method, run_experiment
from ceag_cooper.experiments import registry as registry_module
from ceag_cooper.problems import CEAG, EqualizedLoss, GroupFairnessProblem, ProblemOptions, TensorState

PACKAGE = Path(cc.__file__).resolve().parent
HARNESS = ("experiments", "integrations")  # built on the core; the core must not import them
REF = cc.GroupMetrics(
    torch.tensor([0.9, 0.8, 0.7]), torch.tensor([0.3, 0.5, 0.6]), torch.tensor([50.0, 30.0, 20.0]),
    torch.tensor(0.83), torch.tensor(0.42), torch.tensor(100.0),
)  # fmt: skip


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_the_core_never_imports_the_experiment_harness():
    core = [p for p in PACKAGE.rglob("*.py") if p.relative_to(PACKAGE).parts[0] not in HARNESS]
    assert len(core) > 20  # the walk found the package (a test that cannot fail is a defect)
    offenders = {
        str(p.relative_to(PACKAGE)): sorted(m for m in _imports(p) if m.startswith("ceag_cooper.experiments"))
        for p in core
    }
    assert {k: v for k, v in offenders.items() if v} == {}
    # And at run time: importing the library loads no harness module.
    code = "import sys, ceag_cooper; print(sorted(m for m in sys.modules if m.startswith('ceag_cooper.experiments')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_problem_options_are_the_base_signature():
    """One list of shared options: the TypedDict subclasses forward equals the base's keywords."""
    base = inspect.signature(GroupFairnessProblem.__init__).parameters
    shared = {name for name, p in base.items() if p.kind is p.KEYWORD_ONLY} - {"num_groups", "reference"}
    assert set(ProblemOptions.__annotations__) == shared
    for subclass in (CEAG, EqualizedLoss):  # they forward them, they do not repeat them
        own = inspect.signature(subclass.__init__).parameters
        assert not shared & set(own), f"{subclass.__name__} repeats {shared & set(own)}"
        assert any(p.kind is p.VAR_KEYWORD for p in own.values())


def test_options_reach_the_base_through_a_subclass():
    problem = EqualizedLoss(num_groups=3, start_step=7, constraint_estimate="eval", check_finite=False)
    assert (problem.start_step, problem.constraint_estimate, problem.check_finite) == (7, "eval", False)
    with pytest.raises(TypeError, match="unexpected keyword"):
        CEAG(reference=REF, no_such_option=1)


class _Counting(GroupFairnessProblem):
    """A stateful problem written against the base only: one registered tensor."""

    constraint_type = None

    def __init__(self, **options):
        super().__init__(**options)
        self.seen = self.register_state("seen", TensorState(torch.zeros(self.num_groups)))

    def update_estimates(self, stats):
        self.seen.value += stats.group_count


def _feed(problem, steps=2):
    for step in range(steps):
        problem.compute_cmp_state(
            logits=torch.randn(4, 2), targets=torch.tensor([0, 1, 1, 0]), group_ids=torch.tensor([0, 1, 2, step % 3])
        )


def test_registered_state_saves_loads_and_casts_without_subclass_hooks():
    problem = _Counting(num_groups=3)
    _feed(problem)
    saved = problem.state_dict()
    assert saved["extra"]["seen"]["value"].tolist() == [3.0, 3.0, 2.0]
    fresh = _Counting(num_groups=3)
    fresh.load_state_dict(saved)
    assert fresh.seen.value.tolist() == [3.0, 3.0, 2.0]
    fresh.to(torch.float64)
    assert fresh.seen.value.dtype == torch.float64
    with pytest.raises(ValueError, match="registered already"):
        fresh.register_state("seen", TensorState(torch.zeros(3)))
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        fresh.register_state("raw", torch.zeros(3))


def test_state_saved_by_version_0_1_loads():
    """0.1 saved EL's seen counts as a bare tensor in ``extra``; the buffers' layout is unchanged."""
    problem = EqualizedLoss(num_groups=3, buffer_size=2)
    _feed(problem, steps=3)
    saved = problem.state_dict()
    saved["extra"]["seen_counts"] = saved["extra"]["seen_counts"]["value"]  # the old layout
    fresh = EqualizedLoss(num_groups=3, buffer_size=2)
    fresh.load_state_dict(saved)
    assert fresh.seen_counts.value.tolist() == problem.seen_counts.value.tolist()
    assert [fresh.buffers.contents(g) for g in range(3)] == [problem.buffers.contents(g) for g in range(3)]
    del saved["extra"]["buffers"]
    with pytest.raises(ValueError, match="no state for"):
        EqualizedLoss(num_groups=3, buffer_size=2).load_state_dict(saved)


def test_the_attribute_warning_points_at_the_caller():
    problem = CEAG(reference=REF, buffer_size=None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        problem.compute_cmp_state(
            logits=torch.randn(2, 2), targets=torch.tensor([0, 1]), group_ids=torch.tensor([[0, 1], [1, 2]])
        )
    assert [Path(w.filename).name for w in caught if "attributes" in str(w.message)] == [Path(__file__).name]


def test_a_new_method_is_one_registry_entry(tmp_path):
    def make(config, reference, start, options):
        return CEAG(reference=reference, tolerance=0.05, buffer_size=None, start_step=start, **options)

    method = register_method(Method("ceag_loose", "CEAG at eps = 5 points", make, iterate="last"))
    try:
        assert get_method("ceag_loose") is method
        with pytest.raises(ValueError, match="registered already"):
            register_method(method)
        settings = {"task": "synthetic", "model": "mlp", "width": 8, "dense_epochs": 1, "prune_epochs": 1}
        result = run_experiment(
            ExperimentConfig(**settings, finetune_epochs=1, method="ceag_loose", output_dir=str(tmp_path)),
            progress=False,
        )
        assert result["log"][-1]["multipliers"]  # the run built the registered problem and stepped it
    finally:
        registry_module._REGISTRY.pop("ceag_loose", None)
    with pytest.raises(ValueError, match="unknown method 'ceag_loose'; choose among"):
        ExperimentConfig(method="ceag_loose")


def test_every_registered_method_is_in_the_docs_method_table():
    from ceag_cooper.experiments.registry import METHODS

    lines = (PACKAGE.parent / "docs" / "experiments.md").read_text().splitlines()
    start = lines.index("| method | what it is |") + 2
    table = lines[start : lines.index("", start)]
    documented = {name for line in table for name in line.split("|")[1].replace("`", " ").replace("/", " ").split()}
    assert len(METHODS) >= 6
    assert documented == set(METHODS)  # no registered method missing, no row for a method that is gone
