"""The experiment pipeline and the ``ceag-cooper`` CLI on tiny settings."""

import dataclasses
import json
import warnings
from pathlib import Path

import pytest
import torch
from tiny_experiment import TINY

from ceag_cooper.data import resolve_data_dir
from ceag_cooper.experiments import (
    METHODS,
    ExperimentConfig,
    build_model,
    load_task,
    run_experiment,
    weights_digest,
)
from ceag_cooper.experiments.cli import main

UTKFACE = resolve_data_dir() / "utkface" / "UTKFace.tar.gz"


@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs_and_reuses_the_dense_checkpoint(tmp_path, method):
    config = ExperimentConfig(**TINY, method=method, output_dir=str(tmp_path), augment=False)
    task = load_task(config)
    first = run_experiment(config, task=task, progress=False)
    assert first["config"]["method"] == method
    assert set(first["reports"]) == {"train", "test"}
    assert first["sparsity"] == pytest.approx(0.9, abs=0.01)
    assert len(first["log"]) == 2
    saved = json.loads((tmp_path / "results" / f"{config.run_name()}.json").read_text())
    assert saved["reports"]["train"]["overall"]["max_psi"] == first["reports"]["train"]["overall"]["max_psi"]
    never = saved["reports"]["train"]["overall"]["never_feasible"]
    if method in ("nft", "nft_es"):  # no constraints: nothing tracked
        assert never is None
    else:
        assert set(never) <= set(saved["groups"])
        assert never == saved["log"][-1]["never_feasible"]
    again = run_experiment(config, task=task, progress=False)
    assert again["dense_reused"]
    # The cell names the dense model it started from: the digest of the saved dense weights, not of the sparse model.
    saved_dense = torch.load(tmp_path / "dense" / Path(first["dense_checkpoint"]).name, weights_only=True)["model"]
    dense = build_model(config, task)
    dense.load_state_dict(saved_dense)
    assert first["dense_weights"] == again["dense_weights"] == weights_digest(dense)


def test_cli_train_dense_prune_report(tmp_path, capsys):
    common = [
        "--task",
        "synthetic",
        "--model",
        "mlp",
        "--width",
        "8",
        "--dense-epochs",
        "2",
        "--output-dir",
        str(tmp_path),
    ]
    assert main(["train-dense", *common]) == 0
    assert "dense checkpoint written" in capsys.readouterr().out
    prune = ["--prune-epochs", "1", "--finetune-epochs", "1", "--no-augment"]
    for method in ("nft", "ceag"):
        assert main(["prune", *common, *prune, "--method", method]) == 0
    out = capsys.readouterr().out
    assert "| synthetic-" in out
    results = sorted((tmp_path / "results").glob("*.json"))
    assert len(results) == 2
    assert main(["report", *map(str, results), "--output", str(tmp_path / "report")]) == 0
    table = (tmp_path / "report" / "report.md").read_text()
    assert table.count("| synthetic-") == 2
    rows = {line.split(" | ")[1]: line for line in table.splitlines() if line.startswith("| synthetic-")}
    assert rows["nft"].endswith("| – |")  # unconstrained: not tracked
    never = json.loads(next(r for r in results if "-ceag-" in r.name).read_text())["log"][-1]["never_feasible"]
    assert rows["ceag"].endswith(f"| {', '.join(never) or 'none'} |")
    assert (tmp_path / "report" / "psi_train.png").stat().st_size > 1000


def test_cli_errors_are_one_clear_line(tmp_path, capsys):
    assert main(["prune", "--data-dir", str(tmp_path), "--output-dir", str(tmp_path)]) == 2
    assert "UTKFace not found under" in capsys.readouterr().err
    assert main(["prune", "--task", "synthetic", "--method", "magic", "--output-dir", str(tmp_path)]) == 2
    assert "unknown method 'magic'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["prune", "--help"])
    assert "--dual-lr" in capsys.readouterr().out


@pytest.mark.skipif(not UTKFACE.is_file(), reason=f"UTKFace archive not found at {UTKFACE}")
def test_demo_quick_on_real_utkface(tmp_path, capsys):
    assert main(["demo", "--quick", "--output-dir", str(tmp_path), "--cache-dir", str(tmp_path / "cache")]) == 0
    out = capsys.readouterr().out
    assert "train max ψ: NFT" in out
    assert (tmp_path / "report.md").exists()
    assert len(list((tmp_path / "results").glob("*.json"))) == 2
    # The README's demo table is generated from this summary (issue #16 item 2: not by hand).
    import importlib.util
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "readme_results.py"
    sys.path.insert(0, str(script.parent))
    spec = importlib.util.spec_from_file_location("readme_results_demo", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = module.demo_section(tmp_path)
    summary = json.loads((tmp_path / "demo.json").read_text())
    assert f"| NFT | {100 * summary['rows']['nft']['train']['sparse_accuracy']:.2f} |" in text
    assert "ceag-cooper demo --quick" in text


BOUND_OPTIONS = {"final_iterate": "feasible_best", "constraint_estimate": "eval", "margin": 0.005,
                 "dual_optimizer": "nupi", "nupi_kp": 5.0, "nupi_ema": 0.5, "dual_lr": 0.05}  # fmt: skip


@pytest.mark.parametrize(("method", "options"), [("nft_es", {}), ("ceag_heldout_select", {}), ("ceag", BOUND_OPTIONS)])
def test_an_interrupted_run_resumes_to_the_same_result(tmp_path, monkeypatch, method, options):
    import ceag_cooper.experiments.finetuning as pipeline

    settings = {**TINY, "finetune_epochs": 2, **options}
    config = ExperimentConfig(**settings, method=method, output_dir=str(tmp_path / "a"))
    task = load_task(config)
    uninterrupted = run_experiment(config, task=task, progress=False)
    config = ExperimentConfig.from_dict({**config.__dict__, "output_dir": str(tmp_path / "b")})
    original = pipeline.save_checkpoint
    saved_log = []

    def interrupt(*args, **kwargs):
        original(*args, **kwargs)
        if kwargs["counters"]["epoch"] == 1:
            saved_log.extend(kwargs["extra"]["log"])
            raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "save_checkpoint", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(config, task=task, progress=False)
    monkeypatch.setattr(pipeline, "save_checkpoint", original)
    resumed = run_experiment(config, task=task, progress=False, resume=True)
    assert resumed["reports"] == uninterrupted["reports"]
    assert [e["epoch"] for e in resumed["log"]] == [0, 1, 2]
    assert resumed["log"][:2] == saved_log  # epochs 0-1 came from the checkpoint (their timings too)
    assert resumed["final_iterate"] == uninterrupted["final_iterate"]


def test_a_reused_dense_checkpoint_must_be_intact_and_match_its_settings(tmp_path):
    """Regression (issue #16 items 2 and 9): a foreign or truncated dense file was used or crashed."""
    import torch

    from ceag_cooper.checkpoint import CheckpointError
    from ceag_cooper.experiments import train_dense

    config = ExperimentConfig(**TINY, output_dir=str(tmp_path), augment=False)
    task = load_task(config)
    _, path, reused = train_dense(config, task, progress=False)
    assert not reused
    payload = torch.load(path, weights_only=True)
    torch.save({**payload, "dense_config": {**payload["dense_config"], "dense_lr": 9.0}}, path)
    with pytest.raises(CheckpointError, match="holds a dense model trained with"):
        train_dense(config, task, progress=False)
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="not a readable dense checkpoint"):
        train_dense(config, task, progress=False)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--batch-size", "0"], "`batch_size` must be an integer >= 1, got 0"),
        (["--batch-size", "-1"], "`batch_size` must be an integer >= 1, got -1"),
        (["--width", "0"], "`width` must be an integer >= 1"),
        (["--subset", "-5"], "`subset` must be an integer >= 4"),
        (["--buffer-size", "0"], "`buffer_size` must be an integer >= 1"),
        (["--dual-lr", "inf"], "`dual_lr` must be a finite number > 0"),
        (["--lr", "0"], "`lr` must be a finite number > 0"),
    ],
)
def test_cli_refuses_bad_numbers_before_any_training(tmp_path, capsys, flags, message):
    """Regression (issue #16 item 7): these ended in tracebacks, some after saving an untrained dense model."""
    out = tmp_path / "out"
    assert main(["prune", "--task", "synthetic", "--model", "mlp", "--output-dir", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1  # one line, no traceback
    assert not (out / "dense").exists()


def test_cli_unwritable_output_and_bad_results_files_are_one_line_errors(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    assert main(["prune", "--task", "synthetic", "--output-dir", str(blocker / "sub")]) == 2
    assert "--output-dir" in capsys.readouterr().err
    empty = tmp_path / "empty.json"
    empty.write_text("{}")
    assert main(["report", str(empty), "--output", str(tmp_path / "r")]) == 2
    assert f"{empty}: not a results JSON written by" in capsys.readouterr().err
    garbage = tmp_path / "garbage.json"
    garbage.write_bytes(b"\xff\xfe not json")
    assert main(["report", str(garbage)]) == 2
    assert f"{garbage}: not a readable results JSON" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.startswith("ceag-cooper ")


def test_runs_know_their_data_and_settings(tmp_path, monkeypatch):
    """Regression (issue #16 item 2): other data reused the old dense model; resume ignored what changed."""
    import dataclasses

    import ceag_cooper.experiments as pipeline
    import ceag_cooper.experiments.finetuning as finetuning
    from ceag_cooper.checkpoint import CheckpointError

    config = ExperimentConfig(**{**TINY, "finetune_epochs": 2}, method="ceag", output_dir=str(tmp_path))
    task = load_task(config)
    result = run_experiment(config, task=task, progress=False)
    assert result["data_fingerprint"] == pipeline.data_fingerprint(task)
    other = dataclasses.replace(task, train=task.train.subset(torch.arange(len(task.train) - 1)))
    assert pipeline.data_fingerprint(other) != result["data_fingerprint"]
    with pytest.raises(CheckpointError, match="trained on other data"):
        run_experiment(config, task=other, progress=False)
    # An interrupted run resumes only with the same settings.
    original = finetuning.save_checkpoint

    def interrupt(*args, **kwargs):
        original(*args, **kwargs)
        raise KeyboardInterrupt

    fresh = ExperimentConfig.from_dict({**config.__dict__, "output_dir": str(tmp_path / "b")})
    monkeypatch.setattr(finetuning, "save_checkpoint", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(fresh, task=task, progress=False)
    monkeypatch.setattr(finetuning, "save_checkpoint", original)
    changed = ExperimentConfig.from_dict({**fresh.__dict__, "dual_lr": 0.5})
    checkpoint = tmp_path / "b" / "checkpoints" / f"{fresh.run_name()}.pt"
    (checkpoint.parent / f"{changed.run_name()}.pt").write_bytes(checkpoint.read_bytes())  # as if renamed
    with pytest.raises(CheckpointError, match=r"other settings \(dual_lr\)"):
        run_experiment(changed, task=task, progress=False, resume=True)


def test_the_dense_key_follows_the_code_that_trains_the_dense_model(monkeypatch):
    """Issue #16 item 2: a cached dense model must not outlive a change of the code that trained it."""
    import ceag_cooper.experiments as pipeline

    config = ExperimentConfig(**TINY)
    before = config.dense_key()
    assert pipeline.dense_code_fingerprint() == pipeline.dense_code_fingerprint()  # stable within a version
    monkeypatch.setattr(pipeline.dense, "dense_code_fingerprint", lambda: "another version")
    assert config.dense_key() != before


def test_results_record_repository_paths_relative():
    """Committed results must hold no machine paths: paths inside the repository are written relative."""
    from pathlib import Path

    from ceag_cooper.experiments import portable_path as _portable

    root = Path(__file__).resolve().parents[1]
    assert _portable(root / "benchmarks" / "runs" / "x") == "benchmarks/runs/x"
    assert _portable("/elsewhere/out") == "/elsewhere/out"
    for path in (root / "benchmarks").rglob("*.json"):
        assert f'"{root}/' not in path.read_text(), path


def test_a_results_file_from_before_a_field_existed_reads_back_at_that_fields_old_value(tmp_path):
    """The defaults changed (issue #13's protocol); an old run read back with --config reruns as it ran."""
    from ceag_cooper.experiments.results import config_file_values

    old = {k: v for k, v in dataclasses.asdict(ExperimentConfig(**TINY)).items()
           if k not in ("lr_milestones", "final_iterate", "el_form")}  # fmt: skip
    (tmp_path / "old.json").write_text(json.dumps({"config": old, "reports": {}}))
    values = config_file_values(tmp_path / "old.json")
    assert (values["lr_milestones"], values["final_iterate"], values["el_form"]) == ((), "last", "signed")
    assert ExperimentConfig().final_iterate == "feasible_best"  # while the default is the new one
    (tmp_path / "plain.json").write_text(json.dumps({"finetune_epochs": 3}))  # a plain settings file: no fill
    assert config_file_values(tmp_path / "plain.json") == {"finetune_epochs": 3}


def test_a_schedule_that_decays_before_fine_tuning_warns_and_names_the_fix():
    with pytest.warns(UserWarning, match=r"lr_milestones=\(\)"):
        ExperimentConfig(task="synthetic", prune_epochs=1, finetune_epochs=1)  # decays from epoch 1 of 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ExperimentConfig(task="synthetic")  # the defaults: 4 + 8 epochs, first decay at epoch 7
        ExperimentConfig(task="synthetic", prune_epochs=1, finetune_epochs=1, lr_milestones=())


def test_many_group_options_reach_the_problem_and_keep_old_names(tmp_path):
    """Issue #15: dual_lr='auto', per-group tolerances and fitted buffers from the config and the CLI."""
    from ceag_cooper.experiments.finetuning import _check_same_run, make_problem

    config = ExperimentConfig(**TINY, method="ceag", resolution_z=1.0, fit_buffers_to_groups=True, dual_lr="auto",
                              dual_step_scale="share")  # fmt: skip
    assert config.run_name() != ExperimentConfig(**TINY, method="ceag").run_name()
    # (that old values leave names as they were is test_benchmark_runner's committed-cells check)
    task = load_task(config)
    from ceag_cooper import evaluate_groups

    features = task.train.inputs[0].numel()
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(features, task.train.num_classes))
    reference = evaluate_groups(model, task.train.batches(512), groups=task.spec)
    problem = make_problem(config, reference, 0)
    assert problem.resolution_z == 1.0
    assert problem.dual_step_scale == "share"
    assert problem.buffers.group_capacity is not None
    result = run_experiment(ExperimentConfig.from_dict({**config.__dict__, "output_dir": str(tmp_path)}),
                            task=task, progress=False)  # fmt: skip
    assert result["log"][-1]["multipliers"]
    # a checkpoint written before these fields existed resumes when they hold their old values
    old = {k: v for k, v in dataclasses.asdict(ExperimentConfig(**TINY)).items()
           if k not in ("resolution_z", "fit_buffers_to_groups", "dual_step_scale")}  # fmt: skip
    _check_same_run(tmp_path / "x.pt", {"data": "d", "config": old},
                    {"data": "d", "config": dataclasses.asdict(ExperimentConfig(**TINY))})  # fmt: skip
    with pytest.raises(SystemExit):
        main(["prune", "--dual-lr", "fast", "--output-dir", str(tmp_path)])
    from ceag_cooper.experiments.cli import build_parser

    assert build_parser().parse_args(["prune", "--dual-step-scale", "share"]).dual_step_scale == "share"


def tiny_user_model(*, num_classes, input_shape):
    """A factory for --model module:factory (this test module is importable as test_cli_and_pipeline)."""
    features = 1
    for size in input_shape:
        features *= size
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(features, 16), torch.nn.ReLU(),
                               torch.nn.Linear(16, num_classes))  # fmt: skip


def test_a_run_is_reproduced_from_its_results_json_and_flags_override_it(tmp_path, capsys, monkeypatch):
    """Issue #17 item 6: the results JSON's config is a valid --config; a user model via module:factory."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    flags = ["--task", "synthetic", "--model", "test_cli_and_pipeline:tiny_user_model", "--dense-epochs", "2",
             "--prune-epochs", "1", "--finetune-epochs", "1", "--no-augment", "--method", "ceag"]  # fmt: skip
    assert main(["prune", *flags, "--output-dir", str(tmp_path / "first")]) == 0
    first = json.loads(next((tmp_path / "first" / "results").glob("*.json")).read_text())
    path = tmp_path / "first" / "results" / f"{first['run']}.json"
    assert main(["prune", "--config", str(path), "--output-dir", str(tmp_path / "again")]) == 0
    again = json.loads((tmp_path / "again" / "results" / f"{first['run']}.json").read_text())
    assert again["reports"] == first["reports"]  # the same numbers from the results file alone
    assert main(["prune", "--config", str(path), "--method", "nft", "--output-dir", str(tmp_path / "nft")]) == 0
    assert json.loads(next((tmp_path / "nft" / "results").glob("*.json")).read_text())["config"]["method"] == "nft"
    capsys.readouterr()
    (tmp_path / "typo.json").write_text(json.dumps({"tolerence": 0.02}))
    assert main(["prune", "--config", str(tmp_path / "typo.json")]) == 2
    assert "unknown settings ['tolerence']" in capsys.readouterr().err


@pytest.mark.skipif(not UTKFACE.is_file(), reason=f"UTKFace archive not found at {UTKFACE}")
def test_prune_a_torchvision_resnet18_by_channels_end_to_end_and_rerun_it_from_its_results(tmp_path):
    """Issue #17: `prune --model resnet18 --pruning channel --device cpu` on a subset, then `--config` reruns it."""
    pytest.importorskip("torchvision", reason="torchvision (the `vision` extra) is not installed")
    flags = ["--task", "utkface", "--model", "resnet18", "--pruning", "channel", "--device", "cpu", "--subset", "256",
             "--image-size", "32", "--dense-epochs", "1", "--prune-epochs", "1", "--finetune-epochs", "1",
             "--sparsity", "0.3", "--method", "ceag", "--no-augment"]  # fmt: skip
    assert main(["prune", *flags, "--output-dir", str(tmp_path / "first")]) == 0
    path = next((tmp_path / "first" / "results").glob("*.json"))
    first = json.loads(path.read_text())
    assert first["config"]["model"] == "resnet18"
    assert first["config"]["pruning"] == "channel"
    assert 0.0 < first["sparsity"] < 1.0  # the fraction of weights that are zero
    assert main(["prune", "--config", str(path), "--output-dir", str(tmp_path / "again")]) == 0
    again = json.loads((tmp_path / "again" / "results" / path.name).read_text())
    assert again["reports"] == first["reports"]  # the same numbers from the results file alone


def test_model_names_reach_the_right_builder():
    """resnet18 was caught by the CIFAR-ResNet branch ('depth must be 6n + 2'); Adult ignored --target."""
    from ceag_cooper.experiments import build_model

    config = ExperimentConfig(**{**TINY, "model": "resnet18"})
    task = load_task(ExperimentConfig(**TINY))
    try:
        import torchvision  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="needs torchvision"):
            build_model(config, task)
    else:
        assert type(build_model(config, task)).__name__ == "ResNet"
    with pytest.raises(ValueError, match="cannot import"):
        build_model(ExperimentConfig(**{**TINY, "model": "no_such_module:factory"}), task)
    with pytest.raises(ValueError, match="target is income"):
        ExperimentConfig(task="adult")
    assert ExperimentConfig(task="adult", target="income").target == "income"


def test_demo_without_the_shared_data_falls_back_to_the_synthetic_task(tmp_path, capsys):
    """Issue #17 item 8: `make demo` on a machine without ../shared/data ends with a disparity table."""
    missing = str(tmp_path / "no-data")
    assert main(["demo", "--quick", "--data-dir", missing, "--output-dir", str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out
    assert "UTKFace is not here" in out
    assert "Running the synthetic demo instead" in out
    assert "| run | method | sparsity | train acc | train max ψ |" in out
    assert "| nft | 90% |" in out
    assert "| ceag | 90% |" in out
    summary = json.loads((tmp_path / "d" / "demo.json").read_text())
    assert summary["task"] == "synthetic"
    assert set(summary["rows"]) == {"nft", "ceag"}
    # UTKFace asked for explicitly: no silent substitute, a one-line error
    assert main(["demo", "--quick", "--task", "utkface", "--data-dir", missing, "--output-dir", str(tmp_path)]) == 2
    assert "UTKFace not found under" in capsys.readouterr().err


def test_device_is_checked_up_front_and_names_no_run():
    """Issue #17 item 6: --device; a device this machine lacks is a clear error before any work."""
    assert ExperimentConfig(**TINY, device="cpu").run_name() == ExperimentConfig(**TINY).run_name()
    with pytest.raises(ValueError, match="not a torch device name"):
        ExperimentConfig(**TINY, device="gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            ExperimentConfig(**TINY, device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the accelerator lane)")
def test_a_run_on_cuda_matches_the_cpu_run_statistically(tmp_path):
    cpu = run_experiment(ExperimentConfig(**TINY, method="ceag", output_dir=str(tmp_path / "cpu")), progress=False)
    cuda = run_experiment(
        ExperimentConfig(**TINY, method="ceag", device="cuda", output_dir=str(tmp_path / "cuda")), progress=False
    )
    assert (
        abs(
            cuda["reports"]["test"]["overall"]["sparse_accuracy"] - cpu["reports"]["test"]["overall"]["sparse_accuracy"]
        )
        < 0.05
    )


def test_channel_pruning_runs_through_the_cli(tmp_path, capsys):
    """Issue #17 item 6: --pruning channel (torch-pruning's channels, masked while fine-tuning)."""
    flags = ["--task", "synthetic", "--model", "mlp", "--width", "8", "--dense-epochs", "2", "--prune-epochs", "1",
             "--finetune-epochs", "1", "--no-augment", "--method", "ceag", "--sparsity", "0.5"]  # fmt: skip
    assert main(["prune", *flags, "--pruning", "channel", "--output-dir", str(tmp_path)]) == 0
    result = json.loads(next((tmp_path / "results").glob("*.json")).read_text())
    assert result["config"]["pruning"] == "channel"
    assert 0.2 < result["sparsity"] < 0.8  # half the hidden channels: their rows and the next layer's columns
    assert ExperimentConfig(**TINY, pruning="unstructured").run_name() == ExperimentConfig(**TINY).run_name()
    capsys.readouterr()
    assert main(["prune", *flags, "--pruning", "heads", "--output-dir", str(tmp_path)]) == 2
    assert "`pruning` must be one of" in capsys.readouterr().err


def test_the_machine_record_names_the_cpu_and_the_kernels_torch_picked(monkeypatch):
    """Results say which CPU computed them: model name, family/model numbers, torch's CPU capability, usable cores."""
    from pathlib import Path

    import torch

    from ceag_cooper.experiments import provenance

    real_read_text = Path.read_text
    cpuinfo = "processor\t: 0\ncpu family\t: 6\nmodel\t\t: 85\nmodel name\t: Some CPU @ 2.0GHz\nprocessor\t: 1\n"

    def fake_read_text(self, *args, **kwargs):
        if str(self) != "/proc/cpuinfo":
            return real_read_text(self, *args, **kwargs)
        if cpuinfo is None:
            raise FileNotFoundError(self)
        return cpuinfo

    monkeypatch.setattr(Path, "read_text", fake_read_text)
    monkeypatch.setattr(provenance.os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert provenance.machine.__wrapped__() == "Some CPU @ 2.0GHz (family 6, model 85), torch kernels AVX2, 3 cores"
    cpuinfo = None  # no /proc/cpuinfo (not Linux): the platform's name, never an empty one
    monkeypatch.setattr(provenance.platform, "processor", lambda: "")
    monkeypatch.setattr(provenance.platform, "machine", lambda: "arm64")
    assert provenance.machine.__wrapped__() == "arm64, torch kernels AVX2, 3 cores"
