"""No host sync on the training hot path: a problem's ``compute_cmp_state`` compiles as one graph.

``torch.compile(..., fullgraph=True)`` raises at the first graph break, which is what a host read
(``.item()``, ``bool(tensor)``, ``.tolist()``), a data-dependent shape (``nonzero``) or an
untraceable call would cause. The compiled step must also compute what the eager step does.
"""

import copy

import pytest
import torch

import ceag_cooper as cc

G = 4


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the accelerator lane)")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]


def setup(seed=0, device="cpu"):
    torch.manual_seed(seed)
    layers = [torch.nn.Linear(6, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(), torch.nn.Linear(16, 3)]
    model = torch.nn.Sequential(*layers).to(device)
    data = [(torch.randn(32, 6), torch.randint(0, 3, (32,)), torch.arange(32) % G) for _ in range(4)]
    data = [tuple(t.to(device) for t in batch) for batch in data]
    return model, data, cc.evaluate_groups(model, data, groups=G)


PROBLEMS = {
    "ceag": lambda ref: cc.CEAG(reference=ref, tolerance=0.01, buffer_size=8),
    "ceag_no_buffers": lambda ref: cc.CEAG(reference=ref, tolerance=0.01, buffer_size=None),
    "ceag_eval_estimates_margin": lambda ref: cc.CEAG(
        reference=ref, tolerance=0.01, buffer_size=8, margin=0.005, constraint_estimate="eval"
    ),
    "two_sided": lambda ref: cc.TwoSidedCEAG(reference=ref, tolerance=0.01, buffer_size=8),
    "equalized_loss_buffers": lambda ref: cc.EqualizedLoss(reference=ref, buffer_size=8),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_compute_cmp_state_compiles_as_one_graph_and_matches_eager(name, device):
    model, data, reference = setup(device=device)
    eager_problem, compiled_problem = PROBLEMS[name](reference), PROBLEMS[name](reference)
    eager_model, compiled_model = model, copy.deepcopy(model)

    def step(problem, model, x, y, g):
        state = problem.compute_cmp_state(model, x, y, g)
        return state.loss, state.misc["strict_violation"]

    compiled = torch.compile(step, fullgraph=True, backend="eager")  # a graph break raises here
    for x, y, g in data:
        loss, violation = step(eager_problem, eager_model, x, y, g)
        compiled_loss, compiled_violation = compiled(compiled_problem, compiled_model, x, y, g)
        torch.testing.assert_close(compiled_loss, loss)
        torch.testing.assert_close(compiled_violation, violation)
    compiled_state, spec = torch.utils._pytree.tree_flatten(compiled_problem.state_dict())
    eager_state, eager_spec = torch.utils._pytree.tree_flatten(eager_problem.state_dict())
    assert spec == eager_spec  # the same keys; then every multiplier, buffer and counter equal
    for ours, theirs in zip(compiled_state, eager_state, strict=True):
        if isinstance(ours, torch.Tensor):
            torch.testing.assert_close(ours, theirs)
        else:
            assert ours == theirs


def test_a_host_read_in_a_hook_is_caught():
    """Negative control: the same check fails on a problem that reads a value back to the host."""

    class Syncing(cc.CEAG):
        def strict_violations(self, stats):
            values, observed = super().strict_violations(stats)
            if values.max().item() > 1.0:  # a host sync: data-dependent Python control flow
                values = values.clamp(max=1.0)
            return values, observed

    model, data, reference = setup()
    problem = Syncing(reference=reference, tolerance=0.01, buffer_size=8)
    compiled = torch.compile(lambda x, y, g: problem.compute_cmp_state(model, x, y, g).loss, fullgraph=True,
                             backend="eager")  # fmt: skip
    x, y, g = data[0]
    with pytest.raises(Exception, match=r"(?i)graph break|data-dependent|item"):
        compiled(x, y, g)


@CUDA
@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_a_cuda_training_step_never_syncs_the_host(name):
    """Whole Cooper steps (problem, dual and primal updates) under ``set_sync_debug_mode("error")``."""
    model, data, reference = setup(device="cuda")
    problem = PROBLEMS[name](reference)
    optimizer = cc.build_optimizer(problem, torch.optim.SGD(model.parameters(), lr=0.01), dual_lr=0.01)

    def roll(x, y, g):
        optimizer.roll(compute_cmp_state_kwargs={"model": model, "inputs": x, "targets": y, "group_ids": g})

    roll(*data[0])  # the first step may do its one-time checks
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for batch in data[1:]:
            roll(*batch)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
    assert problem.num_steps == len(data)
