"""Every example runs end to end with tiny settings."""

import importlib.util
import sys
from pathlib import Path

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
