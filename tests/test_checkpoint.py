"""Checkpoint and resume: bit-identical continuation in a fresh process, atomic writes, clear errors."""

import subprocess
import sys
import textwrap

import pytest
import torch

from ceag_cooper.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

# One script, run as separate processes: "full" trains 2N steps; "first" trains N and saves;
# "second" restores into fresh objects and trains N more. GMP is active across the save point
# (pruning steps at 2, 4 and 6; the save is after step 4), buffers are on, and numpy / Python
# RNGs are drawn from in the loop so that their states matter too.
SCRIPT = textwrap.dedent(
    """
    import random, sys
    import numpy as np
    import torch
    import ceag_cooper as cc
    from ceag_cooper.checkpoint import load_checkpoint, save_checkpoint
    from ceag_cooper.pruning import GradualSchedule, MagnitudePruner

    mode, path, out = sys.argv[1], sys.argv[2], sys.argv[3]
    torch.manual_seed(0); np.random.seed(0); random.seed(0)
    task = cc.data.make_group_imbalanced_task(512, seed=0) if hasattr(cc, "data") else None
    from ceag_cooper.data import make_group_imbalanced_task
    task = make_group_imbalanced_task(512, seed=0)
    model = torch.nn.Sequential(torch.nn.Linear(19, 32), torch.nn.ReLU(), torch.nn.Dropout(0.1), torch.nn.Linear(32, 2))
    reference = cc.evaluate_groups(model, task.batches(256, seed=None), groups=3)
    pruner = MagnitudePruner(model, schedule=GradualSchedule(0.8, num_updates=3, frequency=2), prune_last_linear=True)
    problem = cc.CEAG(reference=reference, tolerance=0.0, buffer_size=5)
    primal = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(primal, step_size=3, gamma=0.5)
    pruner.attach(primal)
    optimizer = cc.build_optimizer(problem, primal, dual_lr=0.2)
    generator = torch.Generator().manual_seed(7)
    start, stop = {"full": (0, 8), "first": (0, 4), "second": (4, 8)}[mode]
    if mode == "second":
        start = load_checkpoint(path, model=model, problem=problem, optimizer=optimizer, pruner=pruner,
                                scheduler=scheduler, generator=generator)["step"]
    for step in range(start, stop):
        pruner.step(step)
        index = torch.randperm(512, generator=generator)[:64]
        noise = float(np.random.rand() + random.random()) * 1e-3
        x = task.inputs[index] + noise
        optimizer.roll(compute_cmp_state_kwargs={"model": model, "inputs": x, "targets": task.targets[index],
                                                 "group_ids": task.attributes[index, 0]})
        scheduler.step()
    if mode == "first":
        save_checkpoint(path, model=model, problem=problem, optimizer=optimizer, pruner=pruner,
                        scheduler=scheduler, generator=generator, counters={"step": stop})
    torch.save({"params": [p.detach() for p in model.parameters()], "multipliers": problem.multiplier_values,
                "buffers": list(problem.buffers.buffers())}, out)
    """
)


def run(tmp_path, mode):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    out = tmp_path / f"{mode}.pt"
    done = subprocess.run([sys.executable, str(script), mode, str(tmp_path / "ckpt.pt"), str(out)],
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(out, weights_only=True)


def test_resume_in_a_fresh_process_is_bit_identical(tmp_path):
    full = run(tmp_path, "full")
    run(tmp_path, "first")
    resumed = run(tmp_path, "second")
    for a, b in zip(full["params"], resumed["params"], strict=True):
        assert torch.equal(a, b)
    assert torch.equal(full["multipliers"], resumed["multipliers"])
    assert (full["multipliers"] >= 0).all()
    for a, b in zip(full["buffers"], resumed["buffers"], strict=True):
        assert torch.equal(a, b)
    payload = torch.load(tmp_path / "ckpt.pt", weights_only=True)  # our files never need weights_only=False
    assert payload["counters"] == {"step": 4}


def small_run():
    import ceag_cooper as cc

    model = torch.nn.Linear(3, 2)
    ref = cc.GroupMetrics(
        torch.full((2,), 0.5), torch.ones(2), torch.ones(2), torch.tensor(0.5), torch.tensor(1.0), torch.tensor(2.0)
    )
    problem = cc.CEAG(reference=ref, buffer_size=None)
    optimizer = cc.build_optimizer(problem, torch.optim.SGD(model.parameters(), lr=0.1))
    return {"model": model, "problem": problem, "optimizer": optimizer}


def test_a_crash_while_saving_leaves_the_previous_checkpoint_loadable(tmp_path, monkeypatch):
    objects = small_run()
    path = save_checkpoint(tmp_path / "c.pt", **objects, counters={"step": 1})
    original = torch.save

    def crash(obj, target, *args, **kwargs):
        target.write(b"PK\x03\x04 half a checkpoint")  # the write was cut short
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, **objects, counters={"step": 2})
    monkeypatch.setattr(torch, "save", original)
    assert load_checkpoint(path, **small_run()) == {"step": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]  # the failed write's temporary file is gone


def test_concurrent_writers_never_leave_a_corrupt_checkpoint(tmp_path):
    """Regression (issue #16 item 4): a fixed temporary name made 442 of 789 reads fail."""
    import threading

    path = tmp_path / "c.pt"
    save_checkpoint(path, **small_run(), counters={"step": 0})
    errors = []

    def writer(offset):
        objects = small_run()
        try:
            for step in range(15):
                save_checkpoint(path, **objects, counters={"step": offset + step})
        except Exception as error:  # pragma: no cover - the failure is the point
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(k * 100,)) for k in range(3)]
    for thread in threads:
        thread.start()
    reads = 0
    while any(t.is_alive() for t in threads) or reads < 5:
        assert load_checkpoint(path, **small_run())["step"] >= 0
        reads += 1
    for thread in threads:
        thread.join()
    assert not errors
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


def test_stale_temporary_files_are_removed_and_fresh_ones_kept(tmp_path):
    import os
    import time

    stale, fresh = tmp_path / ".c.pt.old.tmp", tmp_path / ".c.pt.busy.tmp"
    stale.write_bytes(b"left by a crash")
    fresh.write_bytes(b"another writer, now")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    save_checkpoint(tmp_path / "c.pt", **small_run())
    assert not stale.exists()
    assert fresh.exists()


def load_faults():
    """``benchmarks/_faults.py``, the fault injection shared with ``benchmarks/reliability.py``."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "_faults.py"
    spec = importlib.util.spec_from_file_location("_faults", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_flipped_bytes_and_missing_pruner_are_refused(tmp_path):
    """Regression (issue #16 item 9): a flipped byte loaded silently; masks were dropped without pruner=."""
    from ceag_cooper.pruning import GradualSchedule, MagnitudePruner

    objects = small_run()
    pruner = MagnitudePruner(objects["model"], schedule=GradualSchedule(0.5, num_updates=1), prune_last_linear=True)
    path = save_checkpoint(tmp_path / "c.pt", **objects, pruner=pruner)
    with pytest.raises(CheckpointError, match="holds pruning masks: pass the run's pruner"):
        load_checkpoint(path, **small_run())
    plain = save_checkpoint(tmp_path / "plain.pt", **small_run())
    fresh = small_run()
    other = MagnitudePruner(fresh["model"], schedule=GradualSchedule(0.5, num_updates=1), prune_last_linear=True)
    with pytest.raises(CheckpointError, match="saved without a pruner"):
        load_checkpoint(plain, **fresh, pruner=other)
    load_faults().flip_first_tensor_byte(path)
    with pytest.raises(CheckpointError, match="fails its checksum"):
        load_checkpoint(path, **small_run(), pruner=pruner)


def test_truncated_missing_and_foreign_files_give_clear_errors(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", **small_run())
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(CheckpointError, match="may be truncated"):
        load_checkpoint(path, **small_run())
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "nothing.pt", **small_run())
    torch.save({"weights": torch.ones(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not written by"):
        load_checkpoint(tmp_path / "other.pt", **small_run())


def test_a_checkpoint_of_another_model_is_a_clear_error(tmp_path):
    """Regression (issue #16 item 7): --resume with another width ended in a state_dict traceback."""
    path = save_checkpoint(tmp_path / "c.pt", **small_run())
    other = small_run()
    other["model"] = torch.nn.Linear(5, 2)
    with pytest.raises(CheckpointError, match="saved by a run with another model, problem or optimizer"):
        load_checkpoint(path, **other)
