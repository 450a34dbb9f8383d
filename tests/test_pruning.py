"""Gradual magnitude pruning: schedule, selection oracles, masks through optimizers, state."""

import copy

import pytest
import torch
import torch.nn.utils.prune as torch_prune
from torch import nn

import ceag_cooper as cc
from ceag_cooper.pruning import GradualSchedule, MagnitudePruner, OneShotSchedule, default_prunable_parameters


def small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 32),
        nn.ReLU(),
        nn.Linear(32, 3),
    )


@pytest.mark.parametrize("final", [0.9, 0.95, 0.99])
def test_schedule_matches_the_closed_form_every_epoch(final):
    schedule = GradualSchedule(final, num_updates=15)
    for t in range(20):
        expected = final + (0.0 - final) * (1 - min(t, 15) / 15) ** 3
        assert schedule.sparsity_at(t) == pytest.approx(expected, abs=1e-12)
    assert schedule.last_step == 15
    delayed = GradualSchedule(final, initial_sparsity=0.5, start=4, num_updates=3, frequency=2)
    assert [delayed.sparsity_at(t) for t in (0, 4, 5)] == [0.5, 0.5, 0.5]
    assert delayed.sparsity_at(6) == pytest.approx(final + (0.5 - final) * (2 / 3) ** 3)
    assert delayed.sparsity_at(10) == pytest.approx(final)


def test_default_prunable_layers_follow_the_paper():
    model = small_cnn()
    assert default_prunable_parameters(model) == ["3.weight", "7.weight"]
    assert default_prunable_parameters(model, keep_dense=["7"]) == ["3.weight"]
    assert default_prunable_parameters(model, prune_first_conv=True, prune_last_linear=True) == [
        "0.weight",
        "3.weight",
        "7.weight",
        "9.weight",
    ]


def test_layerwise_selection_equals_torch_l1_unstructured():
    model, oracle = small_cnn(), small_cnn()
    pruner = MagnitudePruner(model, schedule=OneShotSchedule(0.7))
    pruner.step(0)
    for name in pruner.parameter_names:
        module = dict(oracle.named_modules())[name.rsplit(".", 1)[0]]
        torch_prune.l1_unstructured(module, "weight", amount=0.7)
        assert torch.equal(pruner.masks[name], module.weight_mask.bool()), name


def test_global_selection_equals_torch_global_unstructured():
    model, oracle = small_cnn(), small_cnn()
    pruner = MagnitudePruner(model, schedule=OneShotSchedule(0.8), scope="global")
    pruner.step(0)
    modules = dict(oracle.named_modules())
    targets = [(modules[n.rsplit(".", 1)[0]], "weight") for n in pruner.parameter_names]
    torch_prune.global_unstructured(targets, pruning_method=torch_prune.L1Unstructured, amount=0.8)
    for name, (module, _) in zip(pruner.parameter_names, targets, strict=True):
        assert torch.equal(pruner.masks[name], module.weight_mask.bool()), name


def test_global_cap_keeps_every_layer_below_it():
    model = small_cnn()
    with torch.no_grad():
        model[3].weight.mul_(1e-3)  # this layer would be pruned almost entirely
    pruner = MagnitudePruner(model, schedule=OneShotSchedule(0.8), scope="global", max_layer_sparsity=0.9)
    pruner.step(0)
    layer_sparsity = {n: 1 - m.float().mean().item() for n, m in pruner.masks.items()}
    assert all(s <= 0.9 + 1e-9 for s in layer_sparsity.values()), layer_sparsity
    assert pruner.measured_sparsity() == pytest.approx(0.8, abs=2 / sum(m.numel() for m in pruner.masks.values()))


def run_steps(model, optimizer_step, steps=50):
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 3, (16,))
    for _ in range(steps):
        optimizer_step(model, x, y)


@pytest.mark.parametrize("kind", ["sgd", "adam", "cooper"])
def test_pruned_weights_stay_exactly_zero_through_optimizers(kind):
    model = small_cnn()
    pruner = MagnitudePruner(model, schedule=OneShotSchedule(0.9))
    if kind == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-3)
    pruner.attach(optimizer)
    pruner.step(0)
    if kind == "cooper":
        ref = cc.GroupMetrics(
            torch.full((2,), 0.5), torch.ones(2), torch.ones(2), torch.tensor(0.5), torch.tensor(1.0), torch.tensor(2.0)
        )
        problem = cc.CEAG(reference=ref, buffer_size=None)
        cooper_optimizer = cc.build_optimizer(problem, optimizer, dual_lr=0.1)

        def one_step(m, x, y):
            groups = torch.arange(len(y)) % 2
            cooper_optimizer.roll(compute_cmp_state_kwargs={"model": m, "inputs": x, "targets": y, "group_ids": groups})
    else:

        def one_step(m, x, y):
            optimizer.zero_grad()
            nn.functional.cross_entropy(m(x), y).backward()
            optimizer.step()

    run_steps(model, one_step)
    params = dict(model.named_parameters())
    for name, mask in pruner.masks.items():
        assert (params[name][~mask] == 0).all(), name
        assert (params[name][mask] != 0).float().mean() > 0.5  # the kept weights did train
        expected_zeros = round(0.9 * mask.numel())
        assert abs(int((~mask).sum()) - expected_zeros) <= 1


def test_gradual_pruning_only_shrinks_masks():
    model = small_cnn()
    pruner = MagnitudePruner(model, schedule=GradualSchedule(0.9, num_updates=4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    pruner.attach(optimizer)
    previous = {n: m.clone() for n, m in pruner.masks.items()}
    sparsities = []
    for epoch in range(6):
        sparsities.append(pruner.step(epoch))
        for name, mask in pruner.masks.items():
            assert not (mask & ~previous[name]).any(), "a pruned weight came back"
            previous[name] = mask.clone()
        run_steps(
            model,
            lambda m, x, y: (optimizer.zero_grad(), nn.functional.cross_entropy(m(x), y).backward(), optimizer.step()),
            steps=3,
        )
    assert sparsities == sorted(sparsities)
    assert sparsities[-1] == pytest.approx(0.9, abs=0.01)
    assert pruner.done


def test_checkpoint_round_trip_and_deepcopy():
    def train(model, optimizer, steps, seed):
        gen = torch.Generator().manual_seed(seed)
        for _ in range(steps):
            x, y = torch.randn(8, 3, 8, 8, generator=gen), torch.randint(0, 3, (8,), generator=gen)
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()

    model = small_cnn()
    pruner = MagnitudePruner(model, schedule=GradualSchedule(0.8, num_updates=2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    pruner.attach(optimizer)
    pruner.step(0)
    pruner.step(1)
    train(model, optimizer, 5, seed=1)
    saved = copy.deepcopy({"model": model.state_dict(), "pruner": pruner.state_dict(), "opt": optimizer.state_dict()})
    twin = small_cnn()
    twin_pruner = MagnitudePruner(twin, schedule=GradualSchedule(0.8, num_updates=2))
    twin_optimizer = torch.optim.SGD(twin.parameters(), lr=0.05, momentum=0.9)
    twin_pruner.attach(twin_optimizer)
    twin.load_state_dict(saved["model"])
    twin_pruner.load_state_dict(saved["pruner"])
    twin_optimizer.load_state_dict(saved["opt"])
    assert set(twin.state_dict()) == set(small_cnn().state_dict())  # keys unchanged
    for p, q, opt in ((pruner, model, optimizer), (twin_pruner, twin, twin_optimizer)):
        p.step(2)
        train(q, opt, 5, seed=2)
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)
    clone = copy.deepcopy(model)
    assert all((dict(clone.named_parameters())[n][~m] == 0).all() for n, m in pruner.masks.items())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"schedule": OneShotSchedule(0.5), "keep_dense": ["nope"]}, "keep_dense"),
        ({"schedule": OneShotSchedule(0.5), "parameters": []}, "no prunable parameter"),
        ({"schedule": OneShotSchedule(0.5), "parameters": ["7.bias_x"]}, "not a parameter"),
        ({"schedule": OneShotSchedule(0.5), "scope": "chunky"}, "scope"),
        ({"schedule": OneShotSchedule(0.5), "max_layer_sparsity": 0.9}, "scope='global'"),
    ],
)
def test_bad_pruner_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MagnitudePruner(small_cnn(), **kwargs)


def test_bad_sparsities_and_frozen_layers():
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"\[0, 1\)"):
            GradualSchedule(bad)
    with pytest.raises(ValueError, match="exceeds"):
        GradualSchedule(0.5, initial_sparsity=0.6)
    model = small_cnn()
    model[3].weight.requires_grad_(False)
    with pytest.raises(ValueError, match=r"'3.weight' is frozen"):
        MagnitudePruner(model, schedule=OneShotSchedule(0.5))


def test_sparsity_report_counts_layers_and_effective_macs():
    from ceag_cooper.pruning import sparsity_report

    model = small_cnn()
    pruner = MagnitudePruner(model, schedule=OneShotSchedule(0.75))
    pruner.step(0)
    report = sparsity_report(model, example_inputs=torch.randn(1, 3, 8, 8))
    by_name = {layer.name: layer for layer in report.layers}
    assert by_name["3"].sparsity == pytest.approx(0.75, abs=1 / by_name["3"].params)
    assert by_name["0"].sparsity == 0.0  # first conv stays dense
    assert by_name["3"].nonzeros == int((model[3].weight != 0).sum())
    assert report.effective_macs < report.macs
    dense_part = sum(layer.macs for layer in report.layers if layer.name in ("0", "9"))
    assert report.effective_macs >= dense_part
    text = report.to_markdown()
    assert "| 3 |" in text
    assert report.to_dict()["sparsity"] == pytest.approx(report.sparsity)


def test_masks_hold_under_torch_compile():
    pytest.importorskip("torch._inductor", reason="torch.compile backend unavailable")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 2))
    pruner = MagnitudePruner(model, schedule=OneShotSchedule(0.8), prune_last_linear=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    pruner.attach(optimizer)
    pruner.step(0)
    compiled = torch.compile(model)
    for _ in range(5):
        x, y = torch.randn(16, 8), torch.randint(0, 2, (16,))
        optimizer.zero_grad()
        nn.functional.cross_entropy(compiled(x), y).backward()
        optimizer.step()
    params = dict(model.named_parameters())
    for name, mask in pruner.masks.items():
        assert (params[name][~mask] == 0).all()
        assert (params[name].grad[~mask] == 0).all()


def test_skipped_schedule_steps_still_reach_the_target():
    model = small_cnn()
    pruner = MagnitudePruner(model, schedule=GradualSchedule(0.9, num_updates=3))
    assert pruner.step(0) == 0.0
    assert pruner.step(5) == pytest.approx(0.9, abs=0.01)  # steps 1-4 were never called
    state = pruner.state_dict()
    twin = MagnitudePruner(small_cnn(), schedule=GradualSchedule(0.9, num_updates=3))
    twin.load_state_dict(state)
    assert twin.step(6) == pytest.approx(0.9, abs=0.01)
