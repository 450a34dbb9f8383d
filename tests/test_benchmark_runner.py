"""The benchmark grid runner in quick mode: runs, aggregates, and resumes without recomputing."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

import ceag_cooper as cc
from ceag_cooper import NonFiniteError

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
    rows = {line.split(" | ")[1]: line for line in table.splitlines() if line.startswith("| 90% |")}
    assert rows["nft"].endswith("| – |")  # no constraints, nothing tracked
    assert not rows["ceag"].endswith("| – |")  # "none" or group names with seed counts
    payload = json.loads((tmp_path / "quick.json").read_text())
    assert len(payload["cells"]) == 4
    assert payload["rows"][0]["seeds"] == [0, 1]
    capsys.readouterr()
    second = runner.main(args)
    assert capsys.readouterr().out.count("done before, reused") == 4
    assert [r["reports"] for r in second] == [r["reports"] for r in first]
    # The plots of the grid, from its JSON.
    plotter = load_module("plot_grid")
    paths = plotter.main(["--grid", "quick", "--results", str(tmp_path), "--figures", str(tmp_path / "fig")])
    assert [p.name for p in paths] == ["quick_psi_by_group.png", "quick_max_psi_vs_sparsity.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in paths)
    # The README's issue-#13 section, fed this payload as if it were the 12-epoch grid's.
    readme_results = load_module("readme_results")
    (tmp_path / "utk_race_12ep.json").write_text(json.dumps(payload))
    lines = readme_results.bound_section(tmp_path)
    assert any("in progress: 4 of 50 cells" in line for line in lines)
    last = [line for line in lines if "CEAG, last iterate" in line]
    assert len(last) == 1
    cells = [c for c in payload["cells"] if c["config"]["method"] == "ceag"]
    expected = runner.mean_std([c["log"][-1]["train_max_psi"] for c in cells])
    assert last[0].split(" | ")[4] == expected  # the last epoch's eval-mode train max psi, from the logs
    assert any(line.startswith("- 90%: train max ψ ≤ ε on ") for line in lines)
    assert not any("race × gender" in line for line in lines)  # no 10-group file yet: no block
    # The 10-group grid's block: its target line counts feasible seeds from the cells' own reports.
    (tmp_path / "utk_race_by_race_gender_12ep.json").write_text(json.dumps(payload))
    lines = readme_results.bound_section(tmp_path)
    assert any("race × gender (10 groups)" in line and "in progress: 4 of 15 cells" in line for line in lines)
    tolerance = cells[0]["config"]["tolerance"]
    feasible = sum(c["reports"]["train"]["overall"]["max_psi"] <= tolerance for c in cells)
    # 2 feasible seeds of the grid's 3 are asked for; with 2 of them run, 0 feasible can no longer meet it
    verdict = {2: "met", 1: "open", 0: "missed"}[feasible]
    target = [line for line in lines if line.startswith("Issue #13's target for this grid")]
    assert len(target) == 1
    assert f"on {feasible} of 2 seeds at 90%" in target[0]
    assert target[0].endswith(f": {verdict}.")
    with pytest.raises(SystemExit, match="no cells for method"):
        plotter.main(["--grid", "quick", "--results", str(tmp_path), "--figures", str(tmp_path), "--methods", "el"])


def load_module(name):
    """A script of benchmarks/ as a module (they import run_grid as a sibling)."""
    if str(RUNNER.parent) not in sys.path:
        sys.path.insert(0, str(RUNNER.parent))
    spec = importlib.util.spec_from_file_location(name, RUNNER.with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def load_protocols():
    """benchmarks/_protocols.py, the very module select_protocol.py took its candidates and rules from."""
    load_module("select_protocol")
    return sys.modules["_protocols"]


def load_selector():
    return load_module("select_hparams")


def test_committed_cells_keep_their_names():
    """Adding a config field must not rename finished cells (the grid would rerun them all).

    A cell saved before a field existed ran with that field's legacy value (``LEGACY_PROTOCOL``);
    a cell saved after has the field in its config.
    """
    from ceag_cooper.experiments import LEGACY_PROTOCOL, ExperimentConfig

    paths = sorted((RUNNER.parent / "runs").glob("*/results/*.json"))
    assert paths, "no committed cells found"
    for path in paths:
        config = ExperimentConfig.from_dict({**LEGACY_PROTOCOL, **json.loads(path.read_text())["config"]})
        assert config.run_name() == path.stem


def test_every_committed_grid_cell_is_a_cell_of_a_grid_definition():
    """Changing a default must not silently rename a grid's cells (its next run would redo them all).

    A grid's cells from before its selection (the fixed dual lr, superseded by ``selected``) and from
    its earlier selections' choices (``earlier_selected``) count too.
    """
    runner = load_runner()
    grids = [*runner.GRIDS.values(), *({**g, "selected": {}} for g in runner.GRIDS.values())]
    grids += [{**g, "selected": e} for g in runner.GRIDS.values() for e in g.get("earlier_selected", ())]
    defined = {c.run_name() for grid in grids for c in runner.cells(grid, Path("runs"), None)}
    paths = [p for p in sorted((RUNNER.parent / "runs").glob("*/results/*.json")) if "select_" not in p.parts[-3]]
    assert paths, "no committed grid cells found"
    orphans = [p.stem for p in paths if p.stem not in defined]
    assert orphans == [], f"{len(orphans)} committed cells no grid defines any more, e.g. {orphans[:3]}"


def test_new_protocol_fields_change_the_run_name():
    """Negative control: a field away from its legacy value must give a new name (a new cell)."""
    from ceag_cooper.experiments import LEGACY_PROTOCOL, ExperimentConfig

    legacy = ExperimentConfig.from_dict(dict(LEGACY_PROTOCOL))
    for key, value in {"margin": 0.005, "constraint_estimate": "eval", "final_iterate": "feasible_best",
                       "lr_milestones": (0.5,), "dual_optimizer": "nupi", "el_form": "paper"}.items():  # fmt: skip
        assert ExperimentConfig.from_dict({**LEGACY_PROTOCOL, key: value}).run_name() != legacy.run_name(), key


def test_selection_rule_on_hand_made_candidates():
    select = load_selector()
    rows = [
        {"dual_lr": 0.003, "validation_accuracy": 0.80, "validation_max_psi": 0.05},
        {"dual_lr": 0.01, "validation_accuracy": 0.795, "validation_max_psi": 0.02},
        {"dual_lr": 0.03, "validation_accuracy": 0.70, "validation_max_psi": 0.00},  # too inaccurate
    ]
    assert select.choose(rows, nft_accuracy=0.80, slack=0.01)["dual_lr"] == 0.01
    assert select.choose(rows, nft_accuracy=0.90, slack=0.01)["dual_lr"] == 0.003  # none close: most accurate


def test_quick_selection_never_reads_the_test_split(tmp_path, monkeypatch):
    import ceag_cooper.experiments as pipeline

    select = load_selector()
    loaded = []
    real_load = pipeline.load_task

    def spy(config):
        task = real_load(config)
        loaded.append(task)
        return task

    monkeypatch.setattr(select, "load_task", spy)
    payload = select.main(["--grid", "quick", "--output", str(tmp_path), "--dual-lrs", "0.01", "0.1"])
    assert payload["chosen_dual_lr"] in (0.01, 0.1)
    assert len(payload["candidates"]) == 2
    assert "(chosen)" in (tmp_path / "select_quick.md").read_text()
    # The scored split is the held-out 20% of the training split, disjoint from what was fitted.
    full = real_load(pipeline.ExperimentConfig.from_dict({**select.GRIDS["quick"]["base"], "seed": 0}))
    task = loaded[0]
    assert len(task.train) + len(task.test) == len(full.train)
    assert abs(len(task.test) - 0.2 * len(full.train)) <= task.spec.num_groups
    fitted = {tuple(row.tolist()) for row in task.train.inputs}
    assert not any(tuple(row.tolist()) in fitted for row in task.test.inputs)


def test_readme_results_section_matches_the_committed_files(tmp_path):
    readme_results = load_module("readme_results")
    assert readme_results.main(["--check"]) == 0, "run: python benchmarks/readme_results.py"
    # A hand-edited number in either page is caught.
    root = RUNNER.parents[1]
    sections = [(name, begin) for name, parts in readme_results.PAGES.items() for begin, _, _ in parts]
    end_of = {(name, begin): end for name, parts in readme_results.PAGES.items() for begin, end, _ in parts}
    for name, begin in sections:
        for other in readme_results.PAGES:
            (tmp_path / other).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / other).write_text((root / other).read_text())
        text = (root / name).read_text()
        start = text.index(begin)
        digit = next(i for i in range(start, len(text)) if text[i].isdigit())  # a number inside the section
        assert digit < text.index(end_of[name, begin], start), (name, begin)
        tampered = text[:digit] + str((int(text[digit]) + 1) % 10) + text[digit + 1 :]
        (tmp_path / name).write_text(tampered)
        assert readme_results.main(["--check", "--root", str(tmp_path)]) == 1, (name, begin)


def test_other_errors_of_a_cell_stop_the_grid(tmp_path, monkeypatch):
    runner = load_runner()

    def bad_input(config, **kwargs):
        raise ValueError("`group_ids` must be integers")  # a bug or bad input, not a divergence

    monkeypatch.setattr(runner, "run_experiment", bad_input)
    args = ["--grid", "quick", "--output", str(tmp_path), "--runs", str(tmp_path / "runs"), "--seeds", "0"]
    with pytest.raises(ValueError, match="must be integers"):
        runner.main(args)
    assert not (tmp_path / "runs" / "results").exists()  # nothing recorded as a result


def test_a_diverging_cell_is_recorded_and_the_grid_goes_on(tmp_path, monkeypatch, capsys):
    runner = load_runner()
    real = runner.run_experiment

    def diverge_for_ceag(config, **kwargs):
        if config.method == "ceag":
            raise NonFiniteError("the batch loss at step 3 is not finite (NaN or inf).")
        return real(config, **kwargs)

    monkeypatch.setattr(runner, "run_experiment", diverge_for_ceag)
    args = ["--grid", "quick", "--output", str(tmp_path), "--runs", str(tmp_path / "runs"), "--seeds", "0"]
    assert len(runner.main(args)) == 1  # NFT ran; CEAG diverged
    payload = json.loads((tmp_path / "quick.json").read_text())
    assert [f["config"]["method"] for f in payload["failed"]] == ["ceag"]
    assert [r["method"] for r in payload["rows"]] == ["nft"]
    assert "diverged" in (tmp_path / "quick.md").read_text()
    assert "step 3 is not finite" in (tmp_path / "quick.md").read_text()
    # Recorded: a rerun reuses the failure instead of training again.
    monkeypatch.setattr(runner, "run_experiment", lambda *a, **k: pytest.fail("should not rerun"))
    capsys.readouterr()
    runner.main(args)
    assert capsys.readouterr().out.count("done before, reused") == 2

    def crash(config, **kwargs):
        raise ValueError("some other bug")

    monkeypatch.setattr(runner, "run_experiment", crash)
    with pytest.raises(ValueError, match="some other bug"):  # other errors still stop the grid
        runner.main(["--grid", "quick", "--output", str(tmp_path), "--runs", str(tmp_path / "other")])


def test_settings_selected_for_a_method_override_the_base_and_are_stated(tmp_path):
    runner = load_runner()
    grid = {**runner.GRIDS["quick"], "selected": {"ceag": {"dual_lr": 0.003}}}
    configs = runner.cells(grid, tmp_path, seeds=[0])
    assert {c.method: c.dual_lr for c in configs} == {
        "nft": runner.GRIDS["quick"]["base"].get("dual_lr", 0.01),
        "ceag": 0.003,
    }
    header = runner.markdown("quick", grid, [], "python benchmarks/run_grid.py --grid quick", 0)
    assert "ceag: dual lr 0.003" in header
    assert "select_quick.md" in header
    assert "fixed (not tuned" not in header
    assert "fixed (not tuned" in runner.markdown("quick", runner.GRIDS["quick"], [], "cmd", 0)
    pending = runner.markdown("quick", {**runner.GRIDS["quick"], "selection": "race_gender_12ep"}, [], "cmd", 0)
    assert "fixed (not tuned" not in pending  # its own selection is pending: defaults, and it says so
    assert "select_protocol_quick.md) is not committed" in pending


def test_each_grid_runs_with_the_dual_lr_chosen_for_its_task_on_held_out_data():
    runner = load_runner()
    for name, grid in runner.GRIDS.items():
        if name.endswith("_12ep") or "selection" in grid:  # their options come from select_protocol (below)
            continue
        path = RUNNER.parent / "results" / f"select_{name}.json"
        if not path.exists():
            assert "selected" not in grid, f"{name} claims a selection that is not committed"
            continue
        selection = json.loads(path.read_text())
        method = selection.get("method", "ceag")  # the first selection file predates the field
        assert grid.get("selected") == {method: {"dual_lr": selection["chosen_dual_lr"]}}, name


def test_protocol_selection_rule_on_hand_made_candidates():
    select = load_module("select_protocol")

    def row(name, acc, feasible, psi):
        return {"name": name, "validation_accuracy": acc, "fit_feasible_seeds": feasible, "validation_max_psi": psi}

    rows = [row("a", 0.80, 2, 0.03), row("b", 0.795, 1, 0.01), row("c", 0.70, 2, 0.001), row("d", 0.80, 2, 0.02)]
    assert select.choose(rows, nft_accuracy=0.805, slack=0.01)["name"] == "d"  # most feasible, then smaller psi
    assert select.choose(rows[1:3], nft_accuracy=0.805, slack=0.01)["name"] == "b"  # accurate enough first
    assert select.choose(rows[2:3], nft_accuracy=0.805, slack=0.01)["name"] == "c"  # none close: still one
    # SLACK_RULE: the same order, ties broken by the fitted max ψ instead (a, not d, has more slack there)
    for r, fit in zip(rows, (0.002, 0.009, 0.001, 0.008), strict=True):
        r["fit_max_psi"] = fit
    assert select.choose(rows, nft_accuracy=0.805, slack=0.01, tie_break="fit_max_psi")["name"] == "a"
    assert select.choose(rows, nft_accuracy=0.805, slack=0.01)["name"] == "d"  # the default is unchanged
    with pytest.raises(ValueError, match=r"'fit_max_psi' \(SLACK_RULE\)"):  # not a silent sort on another score
        select.choose(rows, nft_accuracy=0.805, slack=0.01, tie_break="validation_accuracy")


def test_quick_protocol_selection_never_reads_the_test_split(tmp_path, monkeypatch):
    import ceag_cooper.experiments as pipeline

    select = load_module("select_protocol")
    loaded = []
    real_load = pipeline.load_task

    def spy(config):
        assert config.validation, "a candidate was loaded outside validation mode"
        task = real_load(config)
        loaded.append(task)
        return task

    monkeypatch.setattr(select, "load_task", spy)
    args = ["--grid", "quick", "--output", str(tmp_path), "--seeds", "0", "--candidates", "eval estimates"]
    payload = select.main(args)
    assert payload["chosen"] == "eval estimates"
    assert [c["name"] for c in payload["candidates"]] == ["eval estimates"]
    assert "(chosen)" in (tmp_path / "select_protocol_quick.md").read_text()
    full = real_load(pipeline.ExperimentConfig.from_dict({**select.GRIDS["quick"]["base"], "seed": 0}))
    assert len(loaded[0].train) + len(loaded[0].test) == len(full.train)
    # A selection's own seeds, rounds numbering, tie-break, page and notes; the same overrides under a
    # second name reuse the first run's cell (nothing trains again).
    same = select.CANDIDATES["eval estimates"]
    rounds = [{"eval estimates": same}, {"again": same}]
    notes = {"first_round": 4, "round_reason": "R", "page": "p_{grid}", "after": "A", "rule_fixed": "F"}
    selection = {**select.PLAIN_SELECTION, "candidates": {"eval estimates": same, "again": same}, "rounds": rounds,
                 "tie_break": "fit_max_psi", "seeds": (0,), **notes}  # fmt: skip
    monkeypatch.setitem(select.SELECTIONS, "test_only", selection)
    payload = select.main(["--grid", "quick", "--output", str(tmp_path), "--selection", "test_only"])
    assert len(loaded) == 1
    assert (payload["seeds"], payload["tie_break"]) == ([0], "fit_max_psi")
    text = (tmp_path / "p_quick.md").read_text()
    assert "Rule, fixed F: " in text
    assert " Round 5 (again) was added after R; the rule did not change. It follows A." in text
    assert "With RULE's tie-break (the smallest mean validation max ψ) the choice would be eval estimates." in text
    monkeypatch.setitem(select.SELECTIONS, "test_only", {**selection, "tie_break": "validation_acc"})
    with pytest.raises(ValueError, match="use 'validation_max_psi'"):
        select.main(["--grid", "quick", "--output", str(tmp_path), "--selection", "test_only"])
    # One reason per later round: a tuple names each round's own; a missing one is refused before any run.
    three = [*rounds, {"third": same}]
    candidates = {**selection["candidates"], "third": same}
    tupled = {**selection, "rounds": three, "candidates": candidates, "round_reason": ("R5", "R6")}
    monkeypatch.setitem(select.SELECTIONS, "test_only", tupled)
    select.main(["--grid", "quick", "--output", str(tmp_path), "--selection", "test_only"])
    text = (tmp_path / "p_quick.md").read_text()
    assert " Round 5 (again) was added after R5;" in text
    assert " Round 6 (third) was added after R6;" in text
    assert len(loaded) == 1  # still nothing trained again
    monkeypatch.setitem(select.SELECTIONS, "test_only", {**tupled, "round_reason": ("R5",)})
    with pytest.raises(ValueError, match="2 later round"):
        select.main(["--grid", "quick", "--output", str(tmp_path), "--selection", "test_only"])
    for name, committed in select.SELECTIONS.items():  # every committed selection explains each later round
        if name != "test_only":
            assert len(select.round_reasons(committed)) == len(committed.get("rounds", [])[1:]), name


def test_reliability_table_holds_and_matches_the_committed_one(tmp_path):
    """Every case of issue #16 gives what it must (a clear error or a correct result), as committed."""
    reliability = load_module("reliability")
    payload = reliability.main(["--output", str(tmp_path)])
    assert [r["case"] for r in payload["rows"] if not r["ok"]] == []
    committed = json.loads((RUNNER.parent / "results" / "reliability.json").read_text())
    assert committed["counts"] == payload["counts"], "run: python benchmarks/reliability.py"
    assert [r["case"] for r in committed["rows"]] == [r["case"] for r in payload["rows"]]


def test_the_12_epoch_grids_run_ceag_with_the_options_chosen_on_held_out_data():
    """The options in a `_12ep` grid's CEAG rows are the committed selection's choice, nothing else."""
    runner = load_runner()
    select = load_module("select_protocol")
    path = RUNNER.parent / "results" / "select_protocol_utk_race_12ep.json"
    names = [name for name, grid in runner.GRIDS.items() if name.endswith("_12ep") and "selection" not in grid]
    assert "utk_race_12ep" in names
    for name in names:
        grid = runner.GRIDS[name]
        if not path.exists():
            assert "selected" not in grid, f"{name} claims a selection that is not committed"
            continue
        chosen = json.loads(path.read_text())["chosen"]
        assert grid["selected"] == {"ceag": select.CANDIDATES[chosen]}, name


def test_grids_with_a_selection_of_their_own_run_the_options_chosen_on_held_out_data():
    """A grid's ``selected`` is its own committed selection's choice; a group-size threshold chosen
    on the fitted 80% (``iterate_min_count``) is scaled to the whole training split; no file, no claim."""
    from ceag_cooper.experiments import HELDOUT_FRACTION

    runner = load_runner()
    select = load_module("select_protocol")
    checked = 0
    for name, grid in runner.GRIDS.items():
        if "selection" not in grid:
            continue
        path = RUNNER.parent / "results" / f"{select.page_stem(name, select.selection_of(grid))}.json"
        if not path.exists():
            assert "selected" not in grid, f"{name} claims a selection that is not committed"
            continue
        chosen = dict(select.selection_of(grid)["candidates"][json.loads(path.read_text())["chosen"]])
        method = chosen.pop("method", "ceag")
        if "iterate_min_count" in chosen:
            chosen["iterate_min_count"] = round(chosen["iterate_min_count"] / (1 - HELDOUT_FRACTION))
        assert grid["selected"] == {method: chosen}, name
        checked += 1
    assert checked >= 3  # both Adult grids and utk_many_groups_12ep have committed selections


def test_only_filters_order_a_grid_and_the_rest_reuses_their_cells(tmp_path, capsys):
    runner = load_runner()
    args = ["--grid", "quick", "--output", str(tmp_path), "--runs", str(tmp_path / "runs")]
    first = runner.main([*args, "--only-methods", "nft", "--only-sparsities", "0.9"])
    assert sorted(r["config"]["method"] for r in first) == ["nft", "nft"]
    payload = json.loads((tmp_path / "quick.json").read_text())
    assert "--only" not in payload["command"]  # the recorded command reproduces the whole grid
    capsys.readouterr()
    everything = runner.main(args)
    assert capsys.readouterr().out.count("done before, reused") == 2
    assert sorted(r["config"]["method"] for r in everything) == ["ceag", "ceag", "nft", "nft"]
    again = runner.main([*args, "--only-methods", "el"])  # nothing new to run: all reused
    assert [r["reports"] for r in again] == [r["reports"] for r in everything]


def test_overhead_quick_writes_one_backend_and_its_step_rows(tmp_path):
    """The timing scripts share `_harness`; a quick overhead run writes its tables where --output says."""
    overhead = load_module("overhead")
    args = ["--quick", "--groups", "2", "--bookkeeping-groups", "2", "--output", str(tmp_path)]
    payload = overhead.main(args)
    assert list(payload["step"]) == ["2"]
    assert list(payload["bookkeeping"]) == ["2"]
    assert payload["machine"]["command"] == "python benchmarks/overhead.py " + " ".join(args)
    page = (tmp_path / "overhead.md").read_text()
    assert "ours, native" not in page  # the retired C++ backend has no column any more
    assert "Bookkeeping: vectorized torch operators" in page
    assert {10_000, 100_000} <= set(overhead.GROUP_COUNTS)
    assert overhead.STEP_TARGETS[10_000] == overhead.STEP_TARGETS[100_000] == 1.05


def test_the_ten_group_grid_selects_among_its_own_candidates_by_the_plain_rule():
    """10 groups of >= 600 samples: every group is judged (no size threshold) with the 1-point slack, and
    utk_race's choice is one of the candidates (the grid ran it before its own selection)."""
    select = load_module("select_protocol")
    runner = load_runner()
    selection = select.SELECTIONS["race_gender_12ep"]
    assert {k: selection[k] for k in select.PLAIN_SELECTION} == {
        **select.PLAIN_SELECTION,
        "candidates": load_protocols().RACE_GENDER_CANDIDATES,
    }
    # A round, once run, never changes: the committed selection ran exactly the rounds before the last one or all.
    committed = json.loads(
        (RUNNER.parent / "results" / "select_protocol_utk_race_by_race_gender_12ep.json").read_text()
    )
    rounds = selection["rounds"]
    ran = [{n: c for r in rounds[:k] for n, c in r.items()} for k in (len(rounds) - 1, len(rounds))]
    assert committed["candidates_overrides"] in ran
    judged = (selection["rule"], selection["accuracy_slack"], selection["fit_min_count"])
    assert judged == (load_protocols().RULE, 0.01, None)
    assert selection["validation_min_count"] is None
    assert runner.GRIDS["utk_race_12ep"]["selected"]["ceag"] in load_protocols().RACE_GENDER_CANDIDATES.values()
    assert select.selection_of(runner.GRIDS["utk_race_12ep"]) is select.PLAIN_SELECTION


def test_the_ten_group_third_round_keeps_the_candidates_with_the_most_fitted_slack():
    """Round 3 (two validation seeds, SLACK_RULE) keeps, unchanged (so their seed-0 cells are reused), the
    three accurate-enough candidates of rounds 1-2 with the smallest fitted max ψ on seed 0, recomputed here
    from the committed rounds 1-2 page; the grid now follows round 3 and names its page."""
    select = load_module("select_protocol")
    runner = load_runner()
    grid = runner.GRIDS["utk_race_by_race_gender_12ep"]
    third = select.selection_of(grid)
    assert third is select.SELECTIONS["race_gender_12ep_two_seeds"]
    assert (third["rule"], third["tie_break"], tuple(third["seeds"])) == (
        load_protocols().SLACK_RULE,
        "fit_max_psi",
        (0, 1),
    )
    assert {k: third[k] for k in ("accuracy_slack", "fit_min_count", "validation_min_count")} == {
        "accuracy_slack": 0.01,
        "fit_min_count": None,
        "validation_min_count": None,
    }
    earlier = json.loads((RUNNER.parent / "results" / "select_protocol_utk_race_by_race_gender_12ep.json").read_text())
    assert earlier["seeds"] == [0]
    accurate = [
        r for r in earlier["candidates"] if r["validation_accuracy"] >= earlier["nft"]["validation_accuracy"] - 0.01
    ]
    slackest = sorted(accurate, key=lambda r: r["fit_max_psi"])[:3]
    assert set(third["rounds"][0]) == {r["name"] for r in slackest}
    for name, overrides in third["rounds"][0].items():
        assert overrides == earlier["candidates_overrides"][name]
    assert third["candidates"] == {n: c for r in third["rounds"] for n, c in r.items()}
    assert third["first_round"] == len(select.SELECTIONS["race_gender_12ep"]["rounds"]) + 1
    # Round 4 adds the detached overall term with a fast dual, with and without eval-mode estimates.
    assert [c.get("method") for c in third["rounds"][1].values()] == ["ceag_detach_overall"] * 2
    page = RUNNER.parent / "results" / f"{select.page_stem('utk_race_by_race_gender_12ep', third)}.json"
    ran = [{n: c for r in third["rounds"][:k] for n, c in r.items()} for k in (1, 2)]  # a run round never changes
    assert json.loads(page.read_text())["candidates_overrides"] in ran
    assert page.name == "select_protocol_utk_race_by_race_gender_12ep_two_seeds.json"
    config = runner.cells(grid, RUNNER.parent / "runs", [0])[-1]  # the table's header names the page
    assert f"results/{page.stem}.md" in runner._tuning_text("utk_race_by_race_gender_12ep", grid, config)
    committed = json.loads(page.read_text())  # the committed choice is the rule's on the committed rows
    again = select.choose(
        committed["candidates"], committed["nft"]["validation_accuracy"], 0.01, tie_break="fit_max_psi"
    )
    assert again["name"] == committed["chosen"] == "buffers of 160, margin 0.5, nuPI"
    # ... and RULE's tie-break would have chosen another (its page says which)
    plain = select.choose(committed["candidates"], committed["nft"]["validation_accuracy"], 0.01)
    assert plain["name"] != committed["chosen"]
    assert f"the choice would be {plain['name']}." in page.with_suffix(".md").read_text()


def test_the_many_groups_rule_judges_only_groups_the_data_can_resolve(capsys):
    """A tiny group's psi never decides a many-groups selection; an unknown candidate is refused by name."""
    select = load_module("select_protocol")
    selection = select.selection_of(load_runner().GRIDS["adult_many_groups"])
    assert selection["candidates"] is load_protocols().MANY_GROUP_CANDIDATES
    assert selection["accuracy_slack"] == 0.02

    def cell(tiny_psi, seed=0):  # a big group at psi 1 point, a 5-sample group at `tiny_psi`, on both parts
        report = cc.DisparityReport(["big", "tiny"], [0.9, 0.9], [0.88 - 0.01, 0.88 - tiny_psi], [500, 5], 0.9, 0.88)
        reports = {"train": report.to_dict(), "test": report.to_dict()}
        return {"config": {"seed": seed}, "reports": reports, "final_iterate": "last"}

    row = select.summarize("x", [cell(0.30), cell(0.0, seed=1)], tolerance=0.02, selection=selection)
    assert row["fit_max_psi"] == pytest.approx(0.01, abs=1e-9)  # the 30-point tiny group is not counted
    assert row["fit_feasible_seeds"] == 2
    plain = select.summarize("x", [cell(0.30)], tolerance=0.02)  # the bound grids count every group
    assert plain["fit_max_psi"] == pytest.approx(0.30)
    nan_row = {**row, "name": "none counted", "validation_max_psi": float("nan")}
    assert select.choose([nan_row, row], nft_accuracy=0.8, slack=0.02)["name"] == "x"  # nan never wins a tie
    with pytest.raises(SystemExit):
        select.main(["--grid", "adult_many_groups", "--candidates", "eval estimates", "--output", "/nonexistent"])
    assert "has no candidate(s) ['eval estimates']" in capsys.readouterr().err


def test_never_feasible_groups_are_ordered_by_seed_count_then_as_the_logs_name_them():
    """Ties keep the logs' order, so a regenerated page is byte-identical (a set's order changes per process)."""
    runner = load_runner()
    tracked = [["z", "b", "a"], ["a", "c"], ["c", "a", "y"]]  # a: 3 seeds, c: 2, then z, b, y once each
    assert list(runner.never_feasible_counts(tracked).items()) == [("a", 3), ("c", 2), ("z", 1), ("b", 1), ("y", 1)]
    assert runner.never_feasible_counts([[], []]) == {}


def test_a_many_groups_table_judges_the_large_groups_per_split():
    """``judged_min_count``: the n ≥ 100 columns take the max over groups with enough samples *in that split*."""
    runner = load_runner()

    def cell(method, seed, big_psi, tiny_psi):  # groups of 500 and 5 training samples; sizes swapped on test
        names, dense = ["big", "tiny"], [0.9, 0.9]
        train = cc.DisparityReport(names, dense, [0.88 - big_psi, 0.88 - tiny_psi], [500, 5], 0.9, 0.88)
        test = cc.DisparityReport(names, dense, [0.88 - tiny_psi, 0.88 - 2 * big_psi], [5, 500], 0.9, 0.88)
        config = {"sparsity": 0.9, "method": method, "seed": seed, "tolerance": 0.02}
        log = [{"seconds": 1.0, "mitigation": True}]
        return {"config": config, "reports": {"train": train.to_dict(), "test": test.to_dict()}, "log": log}

    cells = [cell("nft", 0, 0.03, 0.2), cell("ceag", 0, 0.01, 0.3), cell("ceag", 1, 0.03, 0.0)]
    rows = {r["method"]: r for r in runner.aggregate(cells, judged_min_count=100)}
    assert rows["ceag"]["train max ψ, n ≥ 100"] == pytest.approx([0.01, 0.03], abs=1e-6)  # the tiny group left out
    assert rows["ceag"]["test max ψ, n ≥ 100"] == pytest.approx([0.02, 0.06], abs=1e-6)  # test's own large group
    assert rows["ceag"]["feasible_judged"] == 0.5  # seed 0 only
    assert rows["ceag"]["feasible"] == 0.0  # over every group, neither seed
    grid = {**runner.GRIDS["adult_many_groups"], "selected": {}}
    table = runner.markdown("adult_many_groups", grid, list(rows.values()), "cmd", 3)
    assert "| feasible | feasible, n ≥ 100 |" in table
    assert "| 90% | ceag | 2 |" in table
    assert "| 0% | 50% |" in table
    assert "n ≥ 100" not in runner.markdown("quick", runner.GRIDS["quick"], [], "cmd", 0)


def test_a_failure_record_holds_no_machine_path(tmp_path):
    """Committed records of diverged cells (grids and selections) name their folder relative to the repository."""
    runner = load_runner()
    inside = RUNNER.parent / "runs" / "some_grid"
    config = runner.ExperimentConfig(task="synthetic", model="mlp", output_dir=str(inside))
    record = runner.record_failure(config, NonFiniteError("the batch loss is not finite"), tmp_path / "r.json")
    assert record["config"]["output_dir"] == "benchmarks/runs/some_grid"
    assert json.loads((tmp_path / "r.json").read_text())["config"]["output_dir"] == "benchmarks/runs/some_grid"


def test_committed_benchmark_results_stay_small():
    """Generated tables and aggregates stay below 2 MB each (the per-cell JSON in runs/ has every digit)."""
    large = [p.name for p in (RUNNER.parent / "results").glob("*") if p.is_file() and p.stat().st_size > 2_000_000]
    assert large == []


@pytest.mark.parametrize(("train_max_psi", "verdict"), [
    ((0.005, 0.02), "open"),  # 1 of 2 run: the third seed can still make it 2 of 3
    ((0.02, 0.03), "missed"),  # 0 of 2 run: no third seed can
    ((0.005, 0.008), "met"),
    ((0.005, 0.02, 0.03), "missed"),
])  # fmt: skip
def test_ten_group_target_line_says_open_only_while_the_remaining_seeds_can_meet_it(tmp_path, train_max_psi, verdict):
    readme_results = load_module("readme_results")
    seeds = list(range(len(train_max_psi)))
    row = {c: [0.5] * len(seeds) for c in readme_results.HEADLINE}
    row.update(sparsity=0.9, method="ceag", seeds=seeds, feasible=sum(v <= 0.01 for v in train_max_psi) / len(seeds))
    row["train max ψ"] = list(train_max_psi)
    payload = {"cells": [{"config": {"method": "ceag"}, "log": []}] * len(seeds), "rows": [row]}
    (tmp_path / "utk_race_by_race_gender_12ep.json").write_text(json.dumps(payload))
    target = [line for line in readme_results._ten_group_lines(tmp_path) if line.startswith("Issue #13's target")]
    assert target[0].endswith(f"target ≥ 2 of 3): {verdict}.")


def test_the_ten_group_block_says_what_the_multipliers_saw_from_the_cells_logs():
    """Span, each group's standard deviation over epoch ends and the largest multiplier, by hand from two
    cells of two logged epoch ends; epochs before mitigation and other methods' cells do not count; fewer
    than two logged epoch ends: no line."""
    readme_results = load_module("readme_results")

    def end(violations, multipliers, mitigation=True):
        return {"mitigation": mitigation, "violations": dict(zip("ab", violations, strict=True)),
                "multipliers": dict(zip("ab", multipliers, strict=True))}  # fmt: skip

    config = {"method": "ceag", "buffer_size": 40, "tolerance": 0.01}
    off = end((-0.5, 0.5), (9.0, 9.0), mitigation=False)
    cells = [
        {"config": config, "log": [off, end((-0.10, 0.04), (0.0, 0.02)), end((0.00, 0.08), (0.01, 0.0))]},
        {"config": config, "log": [end((0.02, 0.06), (0.05, 0.0)), end((0.02, 0.00), (0.0, 0.0))]},
        {"config": {**config, "method": "nft"}, "log": [end((-0.9, 0.9), (7.0, 7.0))] * 2},
    ]
    [blank, line] = readme_results._buffer_noise({"cells": cells})
    assert blank == ""
    assert "2 cells, buffers of 40 samples" in line
    assert "each of 4 epoch ends" in line
    assert "from -10.0 to +8.0 points" in line
    # sd over the two ends: a 7.07 and b 2.83 (first cell), a 0 and b 4.24 (second): median (2.83 + 4.24) / 2
    assert "standard deviation of 3.5 points (median over groups and cells; 0.0–7.1)" in line
    assert line.endswith("the largest multiplier is 0.050.")
    one_end = {"config": config, "log": [end((0.0, 0.1), (0.0, 0.0))]}
    assert readme_results._buffer_noise({"cells": [one_end]}) == []


def test_the_ten_group_block_reports_the_cells_its_selection_replaced(tmp_path, monkeypatch):
    """The CEAG cells of the grid's base settings (the grid with ``selected`` cleared) and of each earlier
    selection's choice, and only those: not the current choice's cells, not NFT's; a grid that selected
    nothing, or no such cell: no lines."""
    from dataclasses import asdict

    readme_results = load_module("readme_results")
    runner = load_runner()
    name = "utk_race_by_race_gender_12ep"
    grid = {
        **runner.GRIDS[name],
        "selected": {"ceag": {"buffer_size": 80, "dual_optimizer": "nupi", "nupi_kp": 50.0}},
        "earlier_selected": [{"ceag": {"buffer_size": 160}}],
    }
    monkeypatch.setitem(readme_results.GRIDS, name, grid)
    results = tmp_path / "runs" / name / "results"
    results.mkdir(parents=True)

    def write(config, train_psi, test_psi, test_acc):
        overall = {"train": {"max_psi": train_psi}, "test": {"max_psi": test_psi, "sparse_accuracy": test_acc}}
        record = {"config": asdict(config), "log": [], "reports": {k: {"overall": v} for k, v in overall.items()}}
        (results / f"{config.run_name()}.json").write_text(json.dumps(record))

    assert readme_results._before_selection(name, tmp_path / "runs") == []  # no earlier cell there yet
    base = {c.seed: c for c in runner.cells({**grid, "selected": {}}, tmp_path, None) if c.method == "ceag"}
    write(base[0], 0.005, 0.03, 0.80)
    write(base[1], 0.02, 0.01, 0.70)
    for c in runner.cells(grid, tmp_path, [0]):  # the current choice's CEAG cell and NFT's: not counted
        write(c, 0.5, 0.5, 0.1)
    [blank, line] = readme_results._before_selection(name, tmp_path / "runs")
    assert blank == ""
    # the cells' own settings for the chosen keys, less nuPI's gains where they ran with SGD
    chose = "the current selection chose buffer size 80, dual optimizer nupi, nupi kp 50.0)"
    assert f"ran with the base settings (buffer size 40, dual optimizer sgd; {chose}" in line
    assert "train max ψ 0.50, 2.00 points (≤ ε on 1 of 2 seeds), mean test max ψ 2.00" in line
    assert line.endswith("mean test accuracy 75.00.")
    earlier = runner.cells({**grid, "selected": grid["earlier_selected"][0]}, tmp_path, [2])
    write(next(c for c in earlier if c.method == "ceag"), 0.009, 0.02, 0.79)
    [_, first, blank, second] = readme_results._before_selection(name, tmp_path / "runs")
    assert first == line
    assert blank == ""
    assert f"with earlier choice 1 of its own selection (buffer size 160, dual optimizer sgd; {chose}" in second
    assert "train max ψ 0.90 points (≤ ε on 1 of 1 seeds), mean test max ψ 2.00, mean test accuracy 79.00." in second
    assert readme_results._before_selection("quick", tmp_path / "runs") == []  # selected nothing
    monkeypatch.setitem(readme_results.GRIDS, name, {**grid, "earlier_selected": [grid["selected"]]})
    assert readme_results._before_selection(name, tmp_path / "runs") == [blank, line]  # the current one: no line
    # utk_race_12ep's selection kept the base setting: its cells are the current ones, never "before" cells
    results = tmp_path / "runs" / "utk_race_12ep" / "results"
    results.mkdir(parents=True)
    for c in runner.cells(runner.GRIDS["utk_race_12ep"], tmp_path, [0]):
        write(c, 0.5, 0.5, 0.1)
    assert readme_results._before_selection("utk_race_12ep", tmp_path / "runs") == []


def test_cells_of_one_seed_on_different_dense_models_are_named_and_not_timed_against_each_other():
    """A seed's dense model retrained on another machine differs: the page says which cells started from which
    model, and a method's epoch time is compared only with NFT cells of the same seed and dense model."""
    runner = load_runner()

    def cell(method, seed, train_dense, test_dense, seconds, key, machine=None, weights=None):
        def report(dense):
            return cc.DisparityReport(
                ["a", "b"], [dense] * 2, [dense - 0.01, dense - 0.02], [50, 50], dense, dense - 0.015
            )

        config = {"sparsity": 0.9, "method": method, "seed": seed, "tolerance": 0.01}
        return {
            "config": config,
            "reports": {"train": report(train_dense).to_dict(), "test": report(test_dense).to_dict()},
            "log": [{"seconds": seconds, "mitigation": True}],
            "dense_checkpoint": f"benchmarks/runs/g/dense/mlp-seed{seed}-{key}.pt",
            "versions": {"code": "abc"} | ({"machine": machine} if machine else {}),
        } | ({"dense_weights": weights} if weights else {})

    same = [
        cell("nft", 0, 0.9, 0.8, 10.0, "k0"),
        cell("ceag", 0, 0.9, 0.8, 12.0, "k0"),
        cell("nft", 1, 0.85, 0.7, 20.0, "k1"),
        cell("ceag", 1, 0.85, 0.7, 24.0, "k1"),
    ]
    assert runner.dense_models_per_seed(same) == {}
    assert runner._dense_models_text({}) == ""
    rows = {r["method"]: r for r in runner.aggregate(same)}
    assert rows["ceag"]["epoch_time_vs_nft"] == pytest.approx(36 / 30)  # (12 + 24) / (10 + 20)
    assert rows["ceag"]["epoch_time_seeds"] == [0, 1]
    # Seed 1's CEAG cell ran on another machine: another dense model (same test accuracy, another train
    # accuracy), a faster CPU. Its time is left out, and the page names both models.
    mixed = [*same[:3], cell("ceag", 1, 0.86, 0.7, 6.0, "k1", machine="CPU B")]
    per_seed = runner.dense_models_per_seed(mixed)
    assert list(per_seed) == [1]
    assert [(m["train_dense_accuracy"], m["cells"], m["machines"]) for m in per_seed[1]] == [
        (0.85, [(0.9, "nft")], []),
        (0.86, [(0.9, "ceag")], ["CPU B"]),
    ]
    assert per_seed[1][1]["dense_checkpoints"] == ["mlp-seed1-k1"]
    rows = {r["method"]: r for r in runner.aggregate(mixed)}
    assert rows["ceag"]["epoch_time_vs_nft"] == pytest.approx(12 / 10)
    assert rows["ceag"]["epoch_time_seeds"] == [0]
    text = runner._dense_models_text(per_seed)
    assert (
        "- seed 1: nft 90% from a dense model of test accuracy 70.00 (mlp-seed1-k1); "
        "ceag 90% from a dense model of test accuracy 70.00 (mlp-seed1-k1)" in text
    )
    # Recorded weights digests tell apart dense models whose accuracies are equal.
    d1 = cell("nft", 0, 0.9, 0.8, 10.0, "k0", weights="d1")
    d2 = cell("nft_es", 0, 0.9, 0.8, 3.0, "k0", machine="CPU B", weights="d2")
    undigested = cell("ceag", 0, 0.9, 0.8, 12.0, "k0")  # a cell from before the digest was recorded
    [first, second] = runner.dense_models_per_seed([d1, d2])[0]
    assert (first["cells"], first["dense_weights"]) == ([(0.9, "nft")], ["d1"])
    assert (second["cells"], second["dense_weights"], second["machines"]) == ([(0.9, "nft_es")], ["d2"], ["CPU B"])
    assert "(mlp-seed0-k0, weights d2)" in runner._dense_models_text(runner.dense_models_per_seed([d1, d2]))
    # A cell without a digest joins the one digest recorded with its seed and accuracies: one model, timed.
    assert runner.dense_model_keys([d1, undigested]) == [(0, "d1"), (0, "d1")]
    assert runner.dense_models_per_seed([d1, undigested]) == {}
    assert {r["method"]: r for r in runner.aggregate([d1, undigested])}["ceag"]["epoch_time_seeds"] == [0]
    # With two digests at its accuracies it cannot be placed: a model of its own, named by the accuracies.
    assert runner.dense_model_keys([d1, d2, undigested])[2] == (0, "dense train/test accuracy 0.9/0.8")
    assert len(runner.dense_models_per_seed([d1, d2, undigested])[0]) == 3
    # No NFT cell on the same dense model at all: no ratio rather than one across machines.
    alone = runner.aggregate([same[0], cell("ceag", 0, 0.91, 0.8, 6.0, "k0")])
    assert "epoch_time_vs_nft" not in {r["method"]: r for r in alone}["ceag"]


def test_the_readme_says_which_cells_of_a_seed_started_from_another_dense_model():
    readme_results = load_module("readme_results")
    assert readme_results._dense_models_lines({"rows": []}) == []  # a page aggregated before the record
    assert readme_results._dense_models_lines({"dense_models": {}}) == []
    models = [
        {"train_dense_accuracy": 0.9, "test_dense_accuracy": 0.8192, "cells": [[0.9, "nft"], [0.95, "ceag"]]},
        {"train_dense_accuracy": 0.89, "test_dense_accuracy": 0.8154, "cells": [[0.9, "nft_es"]]},
    ]
    [blank, line] = readme_results._dense_models_lines({"dense_models": {"0": models}})  # JSON keys are strings
    assert blank == ""
    assert line.endswith(
        "Seed 0: NFT 90%, CEAG 95% from a dense model of test accuracy 81.92; "
        "NFT+ES 90% from a dense model of test accuracy 81.54."
    )


def test_the_accuracy_target_compares_ceag_with_nft_only_on_seeds_of_one_dense_model():
    readme_results = load_module("readme_results")
    one = [{"test_dense_accuracy": 0.8, "cells": [[0.9, "nft"], [0.9, "ceag"]]}, {"cells": [[0.9, "nft_es"]]}]
    split = [{"test_dense_accuracy": 0.8, "cells": [[0.9, "nft"]]}, {"cells": [[0.9, "ceag"], [0.95, "nft"]]}]
    payload = {"dense_models": {"0": one, "1": split}}
    assert readme_results._one_dense(payload, 0, 0.9)  # the baselines' other model does not matter
    assert not readme_results._one_dense(payload, 1, 0.9)
    assert readme_results._one_dense(payload, 1, 0.95)  # only NFT at 95%
    assert readme_results._one_dense({"rows": []}, 0, 0.9)  # pages aggregated before the record
    rows = [
        {"sparsity": 0.9, "method": m, "seeds": [0, 1], "test acc": acc, "test max ψ": [0.01, 0.01], "feasible": 1.0}
        for m, acc in (("nft", [0.80, 0.90]), ("ceag", [0.79, 0.70]))
    ]
    [line] = readme_results._bound_targets({**payload, "rows": rows})
    assert "test accuracy 1.00 points below NFT's on the 1 seed(s) NFT has run from the same dense model" in line


def test_issue_15_targets_judge_large_groups_and_pair_seeds_with_nft():
    """The many-groups targets line: a small group's ψ is left out of the bound, the accuracy drop is NFT's minus
    CEAG's mean test accuracy on the seeds both ran, and a row short of the grid's seeds is 'so far'."""
    readme_results = load_module("readme_results")
    runner = load_runner()

    def cell(method, seed, small_psi, large_psi, test_acc):
        # Two groups: "small" (20 samples) and "large" (200); dense accuracy 0.9 on both, overall gap 0.05.
        sparse = [0.9 - 0.05 - small_psi, 0.9 - 0.05 - large_psi]
        report = cc.DisparityReport(["small", "large"], [0.9, 0.9], sparse, [20, 200], 0.9, 0.85, tolerance=0.02)
        train, test = report.to_dict(), report.to_dict()
        test["overall"]["sparse_accuracy"] = test_acc
        return {
            "config": {"sparsity": 0.9, "method": method, "seed": seed, "tolerance": 0.02},
            "reports": {"train": train, "test": test},
            "log": [{"seconds": 1.0, "mitigation": True}],
        }

    cells = [
        cell("nft", 0, 0.30, 0.10, 0.80),
        cell("nft", 1, 0.30, 0.10, 0.82),
        cell("ceag_detach_overall", 0, 0.30, 0.01, 0.79),  # large group within eps: met, the small one ignored
        cell("ceag_detach_overall", 1, 0.00, 0.03, 0.80),  # large group above eps: missed
    ]
    payload = {"settings": {"tolerance": 0.02}, "cells": cells, "rows": runner.aggregate(cells)}
    [blank, title, blank2, line] = readme_results._many_groups_targets(payload, 100, seeds=2)
    assert (blank, title, blank2) == ("", "Issue #15's targets:", "")
    assert line == (
        "- 90% CEAG, overall term detached: train max ψ ≤ ε over those groups on 1 of 2 seeds (target ≥ 2 of 2): "
        "missed; test accuracy 1.50 points below NFT's on 2 seed(s) (target ≤ 2): met"  # (80 + 82 - 79 - 80) / 2
    )
    # Over every group (min_count 0) seed 0's small group breaks the bound too: 0 of 2.
    assert "on 0 of 2 seeds" in readme_results._many_groups_targets(payload, 0, seeds=2)[3]
    # A grid of 3 seeds with 2 run: no verdict on the bound yet.
    assert "on 1 of 2 seeds so far (target ≥ 2 of 3);" in readme_results._many_groups_targets(payload, 100)[3]
    # Without NFT's cells the accuracy target waits for them; the bound is still reported.
    alone = {**payload, "cells": cells[2:], "rows": runner.aggregate(cells[2:])}
    assert readme_results._many_groups_targets(alone, 100, seeds=2)[3].endswith(
        "the accuracy target waits for NFT's cells from the same dense models"
    )

    # The chance line: every cell's training gap is 0.05, so the null model loses each sample with probability
    # 0.05; the 200-sample group meets eps with at most floor(200 * 0.07) = 14 losses, the 20-sample group with
    # at most floor(20 * 0.07) = 1.
    def at_most(k, n, p=0.05):
        return sum(math.comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(k + 1))

    large, small = at_most(14, 200), at_most(1, 20)
    assert f"with probability {100 * large:.1f}% " in readme_results._chance_line(payload, 100)
    assert f"with probability {100 * large * small:.1f}% " in readme_results._chance_line(payload, 0)
    assert (f"{100 * large:.1f}", f"{100 * large * small:.1f}") == ("92.2", "67.8")
