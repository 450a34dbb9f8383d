"""Run every bad-input and fault case of issue #16 and tabulate what a user sees.

Each case builds its own small inputs in a temporary folder (no shared data, no network) and
says what must happen: a clear error (an exception of the expected type whose message contains
the expected words, which name the fix) or a correct result. The verdict of a run is

* ``clear error`` / ``correct``: as required;
* ``unclear error``: the expected type without the expected words;
* ``traceback``: another exception;
* ``silently wrong``: no exception where one was required, or a wrong result.

Writes ``results/reliability.{json,md}``; a test runs the quick version and requires every verdict
to be as required. The two-rank distributed cases live in ``tests/test_distributed.py`` (they need
spawned processes) and are listed with a pointer.

    python benchmarks/reliability.py
"""

from __future__ import annotations

import argparse
import io
import pickle
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _faults import flip_first_tensor_byte
from _harness import RESULTS_DIR, arguments, machine_info, write_results

import ceag_cooper as cc
from ceag_cooper.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ceag_cooper.data import load_cifar100, load_omniglot, load_utkface
from ceag_cooper.experiments.cli import main as cli


@dataclass
class Case:
    """One case: what it is, what must happen (``error`` and words, or ``None`` for a result check)."""

    area: str
    name: str
    run: Callable[[Path], Any]
    error: type[BaseException] | None = None
    words: str = ""
    setup: Callable[[Path], Any] | None = None


def _jpeg(seed: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def _utkface(folder: Path, count: int = 40) -> Path:
    path = folder / "utkface" / "UTKFace.tar.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as archive:
        for i in range(count):
            data = _jpeg(i)
            info = tarfile.TarInfo(f"UTKFace/{20 + i}_{i % 2}_{i % 5}_2017010100000{i:04d}.jpg.chip.jpg")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def _damaged_utkface(tmp: Path) -> Any:
    path = _utkface(tmp)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 2048] = bytes(2048)
    path.write_bytes(bytes(raw))
    return load_utkface(tmp, split="all", cache_dir=tmp / "cache", workers=1, progress=False, expected_files=None)


def _partial_utkface(tmp: Path) -> Any:
    _utkface(tmp)
    return load_utkface(tmp, split="all", cache_dir=tmp / "cache", workers=1, progress=False)


def _omniglot_one_zip(tmp: Path) -> Any:
    folder = tmp / "omniglot"
    folder.mkdir()
    with zipfile.ZipFile(folder / "images_background_small1.zip", "w") as archive:
        archive.writestr("images_background_small1/a/c/x_01.png", _jpeg(0))
    return load_omniglot(tmp, expected_images=None)


def _cifar_exploit(tmp: Path) -> Any:
    folder = tmp / "cifar-100-python"
    folder.mkdir()
    marker = tmp / "pwned"

    class Exploit:
        def __reduce__(self):
            return (Path.write_text, (marker, "code ran"))

    for name in ("meta", "train", "test"):
        (folder / name).write_bytes(pickle.dumps({b"fine_label_names": Exploit()}))
    try:
        return load_cifar100(tmp)
    finally:
        if marker.exists():
            raise AssertionError("the crafted file ran code")


def _small_run() -> dict[str, Any]:
    model = torch.nn.Linear(3, 2)
    ref = cc.GroupMetrics(torch.full((2,), 0.5), torch.ones(2), torch.ones(2), torch.tensor(0.5), torch.tensor(1.0),
                          torch.tensor(2.0))  # fmt: skip
    problem = cc.CEAG(reference=ref, buffer_size=None)
    return {"model": model, "problem": problem, "optimizer": cc.build_optimizer(problem, torch.optim.SGD(
        model.parameters(), lr=0.1))}  # fmt: skip


def _flipped_checkpoint(tmp: Path) -> Any:
    path = save_checkpoint(tmp / "c.pt", **_small_run())
    flip_first_tensor_byte(path)
    return load_checkpoint(path, **_small_run())


def _masks_dropped(tmp: Path) -> Any:
    from ceag_cooper.pruning import GradualSchedule, MagnitudePruner

    run = _small_run()
    pruner = MagnitudePruner(run["model"], schedule=GradualSchedule(0.5, num_updates=1), prune_last_linear=True)
    return load_checkpoint(save_checkpoint(tmp / "c.pt", **run, pruner=pruner), **_small_run())


def _concurrent_writers(tmp: Path) -> bool:
    import threading

    path = tmp / "c.pt"
    save_checkpoint(path, **_small_run())
    threads = [threading.Thread(target=lambda: [save_checkpoint(path, **_small_run()) for _ in range(10)])
               for _ in range(3)]  # fmt: skip
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        load_checkpoint(path, **_small_run())
    for thread in threads:
        thread.join()
    return sorted(p.name for p in tmp.iterdir()) == ["c.pt"]


def _cli(*args: str) -> Callable[[Path], Any]:
    def run(tmp: Path) -> Any:
        import contextlib

        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            status = cli([a.replace("{tmp}", str(tmp)) for a in args])
        if status != 2 or err.getvalue().count("\n") != 1:
            raise AssertionError(f"exit {status}, stderr {err.getvalue()!r}")
        raise ValueError(err.getvalue().strip())  # the one line the user saw

    return run


def _reference(**changes: Any) -> Callable[[Path], Any]:
    def run(tmp: Path) -> Any:
        t = torch.tensor
        fields = {"group_accuracy": t([0.9, 0.8]), "group_loss": t([0.3, 0.5]), "group_count": t([6.0, 4.0]),
                  "accuracy": t(0.86), "loss": t(0.38), "num_samples": t(10.0), **changes}  # fmt: skip
        return cc.GroupMetrics(**fields)

    return run


def _swapped_spec(tmp: Path) -> Any:
    """A dense reference over (sex, race) compared with sparse statistics over (race, sex)."""
    x, y = torch.randn(6, 2), torch.arange(6) % 2
    attributes = torch.stack([torch.arange(6) % 2, torch.arange(6) % 3], dim=1)
    model = torch.nn.Linear(2, 2)
    dense = cc.evaluate_groups(model, [(x, y, attributes)], groups=cc.GroupSpec([2, 3]))
    sparse = cc.evaluate_groups(model, [(x, y, attributes.flip(1))], groups=cc.GroupSpec([3, 2]))
    return cc.DisparityReport.from_metrics(dense, sparse)


def _problem_call(**kwargs: Any) -> Callable[[Path], Any]:
    def run(tmp: Path) -> Any:
        ref = _reference()(tmp)
        return cc.CEAG(reference=ref, buffer_size=None).compute_cmp_state(logits=torch.randn(3, 4), **kwargs)

    return run


CASES = [
    Case("data", "UTKFace archive with bytes overwritten in the middle", _damaged_utkface, ValueError,
         "download it again"),
    Case("data", "UTKFace copy with 40 of the 23,708 files", _partial_utkface, ValueError, "expected_files=None"),
    Case("data", "Omniglot with one of its two zips", _omniglot_one_zip, FileNotFoundError, "missing"),
    Case("data", "CIFAR-100 pickle that would run code", _cifar_exploit, ValueError, "refusing to load"),
    Case("checkpoint", "a byte flipped inside a tensor", _flipped_checkpoint, CheckpointError, "checksum"),
    Case("checkpoint", "masks saved, loaded without pruner=", _masks_dropped, CheckpointError, "pass the run's pruner"),
    Case("checkpoint", "three concurrent writers, one reader", _concurrent_writers),
    Case("checkpoint", "resume into a model of another width", lambda tmp: load_checkpoint(
         save_checkpoint(tmp / "c.pt", **_small_run()), **{**_small_run(), "model": torch.nn.Linear(5, 2)}),
         CheckpointError, "another model"),
    Case("cli", "--batch-size 0", _cli("prune", "--task", "synthetic", "--output-dir", "{tmp}", "--batch-size", "0"),
         ValueError, "`batch_size` must be an integer >= 1"),
    Case("cli", "--width 0", _cli("prune", "--task", "synthetic", "--output-dir", "{tmp}", "--width", "0"),
         ValueError, "`width` must be an integer >= 1"),
    Case("cli", "--subset -5", _cli("prune", "--task", "synthetic", "--output-dir", "{tmp}", "--subset", "-5"),
         ValueError, "`subset` must be an integer >= 4"),
    Case("cli", "--buffer-size 0 (before any training)",
         _cli("prune", "--task", "synthetic", "--output-dir", "{tmp}", "--buffer-size", "0"), ValueError,
         "`buffer_size` must be an integer >= 1"),
    Case("cli", "--output-dir below a file", _cli("prune", "--task", "synthetic", "--output-dir", "{tmp}/x/y"),
         ValueError, "not a writable folder", setup=lambda tmp: (tmp / "x").write_text("a file")),
    Case("cli", "report on {}", _cli("report", "{tmp}/empty.json"), ValueError, "not a results JSON",
         setup=lambda tmp: (tmp / "empty.json").write_text("{}")),
    Case("numeric", "dual_lr = inf", lambda tmp: cc.build_optimizer(cc.CEAG(reference=_reference()(tmp)),
         torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=0.1), dual_lr=float("inf")), ValueError,
         "finite float > 0"),
    Case("numeric", "reference with a NaN", _reference(group_accuracy=torch.tensor([0.9, float("nan")])), ValueError,
         "NaN or inf"),
    Case("numeric", "reference fields of different lengths", _reference(group_loss=torch.tensor([0.3, 0.5, 0.1])),
         ValueError, "one length"),
    Case("numeric", "reference of another GroupSpec (attributes swapped)", _swapped_spec, ValueError,
         "different GroupSpecs"),
    Case("numeric", "target -100 (ignore_index)", _problem_call(targets=torch.tensor([0, -100, 1]),
         group_ids=torch.tensor([0, 1, 0])), ValueError, "class indices"),
    Case("numeric", "a group named twice in an (N, M) id row", _problem_call(targets=torch.tensor([0, 1, 1]),
         group_ids=torch.tensor([[0, 1], [1, 1], [0, 1]])), ValueError, "same group twice"),
]  # fmt: skip
DISTRIBUTED = [
    "NaN loss on one rank: every rank raises at the same step, no hang",
    "empty batch on one rank: every rank raises at the same step, no hang",
    "ranks with different detach_overall / reference: ValueError on every rank naming the key",
]


def verdict(case: Case, tmp: Path) -> tuple[str, str]:
    """``(verdict, detail)`` of one case run in ``tmp``."""
    if case.setup is not None:
        case.setup(tmp)
    try:
        result = case.run(tmp)
    except BaseException as error:  # the point is to classify whatever comes out
        if case.error is not None and isinstance(error, case.error):
            words = case.words in str(error)
            return ("clear error" if words else "unclear error"), str(error).splitlines()[0].replace(str(tmp), "<tmp>")
        return "traceback", f"{type(error).__name__}: {str(error)[:200]}".replace(str(tmp), "<tmp>")
    if case.error is not None:
        return "silently wrong", f"no error; returned {type(result).__name__}"
    return ("correct" if result is True else "silently wrong"), ""


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run every case and write ``results/reliability.{json,md}``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=RESULTS_DIR)
    given = arguments(argv)
    args = parser.parse_args(given)
    rows = []
    for case in CASES:
        with tempfile.TemporaryDirectory() as folder:
            outcome, detail = verdict(case, Path(folder))
        required = "clear error" if case.error is not None else "correct"
        rows.append({"area": case.area, "case": case.name, "required": required, "verdict": outcome,
                     "detail": detail, "ok": outcome == required})  # fmt: skip
    counts = {v: sum(r["verdict"] == v for r in rows) for v in
              ("clear error", "correct", "unclear error", "traceback", "silently wrong")}  # fmt: skip
    info = machine_info(__file__, given)
    payload = {"machine": {k: info[k] for k in ("git_commit", "date", "command", "torch")}, "rows": rows,
               "counts": counts, "distributed_cases_in_tests": DISTRIBUTED}  # fmt: skip
    lines = [
        "# Reliability: what a user sees for bad inputs and faults (issue #16)",
        "",
        f"`{info['command']}`, commit {info['git_commit']}. {len(rows)} cases: "
        + ", ".join(f"{n} {v}" for v, n in counts.items())
        + ". The target: nothing silently wrong, no tracebacks for user errors.",
        "",
        "| area | case | required | verdict | what the user sees |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        detail = row["detail"].replace("|", "\\|")
        lines.append(f"| {row['area']} | {row['case']} | {row['required']} | {row['verdict']} | {detail} |")
    lines += ["", "Two-rank gloo cases (`tests/test_distributed.py`, run by `make test`):", ""]
    lines += [f"- {case}" for case in DISTRIBUTED]
    print("\n".join(lines))
    write_results(args.output, "reliability", payload, "\n".join(lines), indent=1)
    return payload


if __name__ == "__main__":
    main()
