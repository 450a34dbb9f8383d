"""Every example runs end to end with tiny settings."""

import importlib.util
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load(name):
    sys.path.insert(0, str(EXAMPLES))
    try:
        spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(EXAMPLES))


def test_quickstart_loop_runs_and_writes_outputs(tmp_path, capsys):
    reports = load("quickstart_loop").main(
        ["--epochs", "1", "--dense-epochs", "2", "--samples", "600", "--output", str(tmp_path)]
    )
    assert set(reports) == {"nft", "ceag"}
    for name in ("nft.json", "ceag.json", "nft.png", "ceag.png", "comparison.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert "max ψ: NFT" in capsys.readouterr().out


def test_custom_constraint_example_runs(capsys):
    report = load("custom_constraint").main(["--epochs", "1", "--dense-epochs", "2", "--samples", "600"])
    assert len(report.group_names) == 3
    assert "largest per-group drop" in capsys.readouterr().out


def test_the_custom_constraint_needs_only_the_base_class_and_its_state_round_trips():
    import torch

    import ceag_cooper as cc

    module = load("custom_constraint")
    assert module.AccuracyFloor.__mro__[1] is cc.GroupFairnessProblem  # not a CEAG subclass
    reference = cc.GroupMetrics(torch.tensor([0.9, 0.6]), torch.tensor([0.3, 0.9]), torch.tensor([5.0, 5.0]),
                                torch.tensor(0.75), torch.tensor(0.6), torch.tensor(10.0))  # fmt: skip
    floor = module.AccuracyFloor(reference=reference, delta=0.05, buffer_size=2, start_step=0)
    logits, targets, ids = (
        torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]]),
        torch.tensor([0, 0, 0]),
        torch.tensor([0, 0, 1]),
    )
    state = floor.compute_cmp_state(logits=logits, targets=targets, group_ids=ids)
    # group 0's buffer is full with accuracies [1, 0]: drop 0.9 - 0.5 - 0.05; group 1 not yet observed
    assert state.misc["strict_violation"].tolist() == pytest.approx([0.35, 0.0])
    copy = module.AccuracyFloor(reference=reference, delta=0.05, buffer_size=2, start_step=0)
    copy.load_state_dict(floor.state_dict())
    assert copy.buffers.contents(0) == [1.0, 0.0]
    with pytest.raises(ValueError, match="config"):
        module.AccuracyFloor(reference=reference, delta=0.1, buffer_size=2).load_state_dict(floor.state_dict())


def test_gmp_then_ceag_keeps_masks_and_switches_mitigation_on_after_pruning(capsys):
    module = load("prune_and_mitigate")
    _, pruner, problem = module.main(
        ["--epochs", "4", "--prune-epochs", "2", "--dense-epochs", "2", "--samples", "600"]
    )
    params = dict(pruner.model.named_parameters())
    for name, mask in pruner.masks.items():
        assert (params[name][~mask] == 0).all()
    assert pruner.measured_sparsity() == pytest.approx(0.85, abs=0.01)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch")]
    assert ["mitigation off" in line for line in lines] == [True, True, False, False]
    assert problem.buffers.is_full().all()
    assert (problem.multiplier_values >= 0).all()
    during = module.main(["--epochs", "2", "--dense-epochs", "1", "--samples", "300", "--mitigate-during-pruning"])[2]
    assert during.start_step == 0


DATA = Path(__import__("ceag_cooper.data", fromlist=["resolve_data_dir"]).resolve_data_dir())


def needs(folder):
    return pytest.mark.skipif(not (DATA / folder).exists(), reason=f"{folder}/ not found under {DATA}")


@needs("utkface/UTKFace.tar.gz")
def test_utkface_race_example(capsys):
    reports = load("utkface_race").main(["--dense-epochs", "1", "--epochs", "2", "--subset", "1024"])
    assert set(reports) == {"train", "test"}
    assert "CEAG, 90% sparse, test" in capsys.readouterr().out


@needs("utkface/UTKFace.tar.gz")
def test_structured_pruning_example(capsys):
    out = load("structured_pruning").main(["--dense-epochs", "1", "--epochs", "1", "--subset", "512"])
    assert out["sizes"]["params"] < 0.5 * out["sizes"]["dense_params"]
    assert "MACs per image" in capsys.readouterr().out


@needs("omniglot")
def test_omniglot_many_groups_example(tmp_path):
    results = load("omniglot_many_groups").main(["--dense-epochs", "1", "--epochs", "2", "--output-dir", str(tmp_path)])
    assert [r["config"]["method"] for r in results] == ["nft", "el_rb", "ceag"]
    assert len(results[0]["groups"]) == 242


@needs("adult")
def test_adult_tabular_example(tmp_path):
    results = load("adult_tabular").main(["--dense-epochs", "1", "--epochs", "2", "--output-dir", str(tmp_path)])
    assert len(results[0]["groups"]) == 10


def test_ddp_example_with_torchrun_on_two_cpu_processes():
    import shutil
    import subprocess
    import sys

    if shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists():
        pytest.skip("torchrun not found")
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    done = subprocess.run(
        [torchrun, "--nproc_per_node=2", str(EXAMPLES / "ddp_train.py"), "--epochs", "1"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "2 ranks, identical multipliers" in done.stdout
