"""The benchmark grid runner in quick mode: runs, aggregates, and resumes without recomputing."""

import importlib.util
import json
from pathlib import Path

RUNNER = Path(__file__).resolve().parents[1] / "benchmarks" / "run_grid.py"


def load_runner():
    spec = importlib.util.spec_from_file_location("run_grid", RUNNER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_grid_runs_aggregates_and_resumes(tmp_path, capsys):
    runner = load_runner()
    args = ["--grid", "quick", "--output", str(tmp_path), "--runs", str(tmp_path / "runs")]
    first = runner.main(args)
    assert len(first) == 4  # 2 methods x 2 seeds
    table = (tmp_path / "quick.md").read_text()
    assert "| 90% | nft | 2 |" in table
    assert "| 90% | ceag | 2 |" in table
    assert "±" in table
    payload = json.loads((tmp_path / "quick.json").read_text())
    assert len(payload["cells"]) == 4
    assert payload["rows"][0]["seeds"] == [0, 1]
    capsys.readouterr()
    second = runner.main(args)
    assert capsys.readouterr().out.count("done before, reused") == 4
    assert [r["reports"] for r in second] == [r["reports"] for r in first]
