"""What every timing script of ``benchmarks/`` shares: paired timing, machine info, CLI and writers.

Not a script. The scripts put their folder on ``sys.path`` and ``import _harness``.

* **Paired timing** (:func:`interleaved`, :func:`paired`). After a warm-up, two variants are
  timed back to back in pairs, alternating which goes first (A B, B A, A B, ...); a ratio is the
  median of the per-pair ratios, with a 95% percentile-bootstrap interval
  (:func:`bootstrap_median_ci`). Each pair shares the state of the machine, so drift and the
  large speed swings of a shared VM cancel out; the ratio of the two medians is kept as a
  cross-check. A measurement stops after ``max_reps`` pairs, or earlier once it has used its time
  budget and has at least ``min_reps`` pairs (:class:`Budget`), so that a slow machine still
  finishes in time.
* **The training-step workload** of the step benchmarks: ``SmallCNN`` on batches of 128 inputs of
  3×32×32, 5 classes, uniformly drawn group ids (:func:`make_batches`), dense-model statistics
  with every group non-empty (:func:`synthetic_reference`), one ``optimizer.roll`` a step
  (:func:`roll_fn`).
* **Machine info** (:func:`machine_info`, :func:`finish_run`): CPU model, versions, threads, load
  average at start and end, git commit and uncommitted ``ceag_cooper`` files, a fingerprint of
  the ``ceag_cooper`` sources at start and end, the command that reproduces the run.
* **CLI and writers** (:func:`timing_parser`, :func:`report_header`, :func:`write_results`): the
  common options (``--quick``, ``--threads``, ``--output``, ``--no-write``), the markdown header
  every results page starts with, and the ``<stem>.json`` + ``<stem>.md`` pair.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import hashlib
import importlib.metadata
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cooper
import numpy as np
import torch

import ceag_cooper
from ceag_cooper import GroupMetrics
from ceag_cooper.experiments import machine

BENCHMARKS_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCHMARKS_DIR.parent
RESULTS_DIR = BENCHMARKS_DIR / "results"

BATCH_SIZE = 128
NUM_CLASSES = 5
IMAGE_SHAPE = (3, 32, 32)
BUFFER_SIZE = 40
NUM_BATCHES = 8  # distinct batches cycled through by the step benchmarks
STEP_MODEL = "ceag_cooper.models.SmallCNN(num_classes=5)"

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""``(inputs, targets, group_ids)`` of one training batch."""


# --------------------------------------------------------------------------- paired timing
@dataclass(frozen=True)
class Budget:
    """Repetitions of one paired measurement: a warm-up, then between ``min_reps`` and ``max_reps`` pairs.

    Timing stops after ``max_reps`` pairs, or earlier once ``budget_s`` seconds have passed and at
    least ``min_reps`` pairs were taken.
    """

    warmup: int
    min_reps: int
    max_reps: int
    budget_s: float


STEP_FULL = Budget(warmup=5, min_reps=30, max_reps=400, budget_s=55.0)
"""A training step, full run (about a minute per comparison)."""
STEP_QUICK = Budget(warmup=2, min_reps=6, max_reps=20, budget_s=3.0)
"""A training step, ``--quick`` (a smoke test; the numbers are noisy)."""


@dataclass
class Comparison:
    """Side-by-side timings of two variants (seconds per call); ratios are ``candidate / baseline``.

    ``ratio`` is the median of the per-repetition paired ratios (each pair was timed back to
    back, so machine drift cancels); ``ratio_of_medians`` is the ratio of the two medians. The
    raw times, pair by pair, are kept for the JSON output.
    """

    baseline: str
    candidate: str
    baseline_median_s: float
    candidate_median_s: float
    ratio: float
    ratio_ci95: tuple[float, float]
    ratio_of_medians: float
    repetitions: int
    baseline_times_s: list[float]
    candidate_times_s: list[float]


def bootstrap_median_ci(values: Sequence[float], seed: int = 0, resamples: int = 2000) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the median of ``values``."""
    data = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    medians = np.median(rng.choice(data, size=(resamples, data.size), replace=True), axis=1)
    low, high = np.percentile(medians, [2.5, 97.5])
    return float(low), float(high)


def compare(names: tuple[str, str], baseline: Sequence[float], candidate: Sequence[float]) -> Comparison:
    """Medians and ratios ``candidate / baseline`` of two paired timing series."""
    paired_ratios = [c / b for b, c in zip(baseline, candidate, strict=True)]
    base_med, cand_med = statistics.median(baseline), statistics.median(candidate)
    return Comparison(
        baseline=names[0],
        candidate=names[1],
        baseline_median_s=base_med,
        candidate_median_s=cand_med,
        ratio=statistics.median(paired_ratios),
        ratio_ci95=bootstrap_median_ci(paired_ratios),
        ratio_of_medians=cand_med / base_med,
        repetitions=len(paired_ratios),
        baseline_times_s=[float(f"{t:.4g}") for t in baseline],
        candidate_times_s=[float(f"{t:.4g}") for t in candidate],
    )


def interleaved(
    baseline: Callable[[int], None], candidate: Callable[[int], None], budget: Budget
) -> tuple[list[float], list[float]]:
    """Time ``baseline(i)`` and ``candidate(i)`` alternately (AB, BA, AB, ...) after a warm-up.

    Both callables receive the same indices ``0, 1, 2, ...`` in the same order, so that they
    consume the same inputs and end in comparable states. The garbage collector is off while
    timing.
    """
    for i in range(budget.warmup):
        baseline(i)
        candidate(i)
    times: dict[str, list[float]] = {"baseline": [], "candidate": []}
    pair = (("baseline", baseline), ("candidate", candidate))
    gc.collect()
    gc.disable()
    began = time.perf_counter()
    try:
        for rep in range(budget.max_reps):
            order = pair if rep % 2 == 0 else pair[::-1]
            for name, fn in order:
                start = time.perf_counter()
                fn(budget.warmup + rep)
                times[name].append(time.perf_counter() - start)
            if rep + 1 >= budget.min_reps and rep % 2 == 1 and time.perf_counter() - began > budget.budget_s:
                break
    finally:
        gc.enable()
    return times["baseline"], times["candidate"]


def paired(
    names: tuple[str, str],
    baseline: Callable[[int], None],
    candidate: Callable[[int], None],
    budget: Budget,
    calls: int = 1,
) -> Comparison:
    """:func:`interleaved` then :func:`compare`; each timed call runs ``calls`` times (times are per run)."""
    base_times, cand_times = interleaved(baseline, candidate, budget)
    return compare(names, [t / calls for t in base_times], [t / calls for t in cand_times])


# --------------------------------------------------------------------------- training-step workload
def make_batches(num_groups: int, count: int, generator: torch.Generator) -> list[Batch]:
    """``count`` random batches ``(inputs, targets, group_ids)`` with uniformly drawn groups."""
    return [
        (
            torch.randn(BATCH_SIZE, *IMAGE_SHAPE, generator=generator),
            torch.randint(0, NUM_CLASSES, (BATCH_SIZE,), generator=generator),
            torch.randint(0, num_groups, (BATCH_SIZE,), generator=generator),
        )
        for _ in range(count)
    ]


def synthetic_reference(num_groups: int, generator: torch.Generator) -> GroupMetrics:
    """Dense-model statistics with every group non-empty (as CEAG requires)."""
    counts = torch.randint(50, 500, (num_groups,), generator=generator).float()
    accuracy = 0.6 + 0.3 * torch.rand(num_groups, generator=generator)
    loss = 0.5 + torch.rand(num_groups, generator=generator)
    total = counts.sum()
    return GroupMetrics(
        group_accuracy=accuracy,
        group_loss=loss,
        group_count=counts,
        accuracy=(accuracy * counts).sum() / total,
        loss=(loss * counts).sum() / total,
        num_samples=total,
    )


def roll_fn(
    optimizer: cooper.optim.CooperOptimizer,
    model: torch.nn.Module,
    batches: list[Batch],
    extra: Callable[[Batch], dict[str, Any]] | None = None,
) -> Callable[[int], None]:
    """One ``optimizer.roll`` on batch ``i mod len(batches)``; ``extra(batch)``: more arguments of the problem."""

    def step(i: int) -> None:
        batch = batches[i % len(batches)]
        x, y, g = batch
        kwargs = {"model": model, "inputs": x, "targets": y, "group_ids": g, **(extra(batch) if extra else {})}
        optimizer.roll(compute_cmp_state_kwargs=kwargs)

    return step


# --------------------------------------------------------------------------- machine info
def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages (``None`` where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def arguments(argv: Sequence[str] | None) -> list[str]:
    """The command-line arguments of this run: ``argv``, or those of the process when ``None``."""
    return sys.argv[1:] if argv is None else list(argv)


def reproduce_command(script: str | Path, args: Sequence[str]) -> str:
    """The command line of this run, the script's path relative to the repository root."""
    path = Path(script).resolve()
    try:
        shown = str(path.relative_to(REPO_ROOT))
    except ValueError:
        shown = str(path)
    return shlex.join(["python", shown, *args])


def source_fingerprint() -> str:
    """SHA-256 of the ``ceag_cooper`` sources, to tell whether they changed during the run."""
    digest = hashlib.sha256()
    package = Path(ceag_cooper.__file__).resolve().parent
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def git_state() -> dict[str, Any]:
    """Commit of the checkout and the ``ceag_cooper`` files that differ from it (if in git)."""

    def git(*cmd: str) -> str:
        return subprocess.run(["git", "-C", str(REPO_ROOT), *cmd], capture_output=True, text=True, check=True).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        dirty = [line[3:] for line in git("status", "--porcelain", "--", "ceag_cooper").splitlines()]
    except (OSError, subprocess.CalledProcessError):
        return {"git_commit": None, "ceag_cooper_uncommitted_files": None}
    return {"git_commit": commit, "ceag_cooper_uncommitted_files": dirty}


def package_version(name: str) -> str:
    """The installed version of a distribution (``"unknown"`` where it has no metadata)."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def machine_info(script: str | Path, args: Sequence[str], **extra: Any) -> dict[str, Any]:
    """Versions, threads, CPU, load, code state, date and command of this run (``extra`` appended)."""
    return {
        **git_state(),
        "ceag_cooper_source_sha256_start": source_fingerprint(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": reproduce_command(script, args),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cooper": getattr(cooper, "__version__", package_version("cooper-optim")),
        "torch_pruning": package_version("torch-pruning"),
        "ceag_cooper": ceag_cooper.__version__,
        "torch_num_threads": torch.get_num_threads(),
        "torch_num_interop_threads": torch.get_num_interop_threads(),
        "os_cpu_count": os.cpu_count(),
        "cpu_model": machine(),  # the experiments' record: CPU family/model and torch's kernels too
        "platform": platform.platform(),
        "load_average_start": load_average(),
        **extra,
    }


def finish_run(info: dict[str, Any], started: float) -> None:
    """Record the wall time, the end load and source fingerprint; warn if the sources changed."""
    info["wall_time_s"] = round(time.perf_counter() - started, 1)
    info["load_average_end"] = load_average()
    info["ceag_cooper_source_sha256_end"] = source_fingerprint()
    if info["ceag_cooper_source_sha256_end"] != info["ceag_cooper_source_sha256_start"]:
        print("warning: ceag_cooper sources changed during the run; the results may mix versions")


# --------------------------------------------------------------------------- CLI
def timing_parser(doc: str, stem: str, quick_help: str) -> argparse.ArgumentParser:
    """A parser with the options every timing script has (its description: the first line of ``doc``)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{quick_help}: a smoke test, numbers are noisy")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument(
        "--output",
        "--out",
        dest="output",
        type=Path,
        default=None,
        help=f"where to write {stem}.{{json,md}} (default: benchmarks/results for a full run; a --quick "
        "run writes nothing unless --output is given, so that it never replaces full results)",
    )
    parser.add_argument("--no-write", action="store_true", help="print only, write no file")
    return parser


@dataclass
class Run:
    """One run of a timing script: its options, settings, machine info and start time."""

    args: argparse.Namespace
    settings: Any
    info: dict[str, Any]
    started: float

    def finish(self) -> None:
        """Record the wall time and the state at the end (:func:`finish_run`)."""
        finish_run(self.info, self.started)

    def write(self, stem: str, payload: dict[str, Any], markdown: str, indent: int = 2) -> None:
        """Write ``<stem>.{json,md}`` where the options say (:func:`output_dir`)."""
        write_results(output_dir(self.args), stem, payload, markdown, indent)


def begin_run(
    script: str | Path, parser: argparse.ArgumentParser, argv: Sequence[str] | None, quick: Any, full: Any, **extra: Any
) -> Run:
    """Parse the options, apply ``--threads``, pick the ``quick`` or ``full`` settings (a dataclass), take the info.

    ``extra`` goes into the machine info, with the mode and the settings.
    """
    given = arguments(argv)
    args = parser.parse_args(given)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    settings = quick if args.quick else full
    mode = "quick" if args.quick else "full"
    info = machine_info(script, given, mode=mode, settings=asdict(settings), **extra)
    print(f"torch {info['torch']}, {info['torch_num_threads']} threads, {info['cpu_model']}, {mode} run")
    return Run(args, settings, info, time.perf_counter())


def output_dir(args: argparse.Namespace) -> Path | None:
    """Where this run writes: ``--output``, else ``results/`` for a full run; ``None``: nowhere."""
    if args.no_write:
        return None
    if args.output is not None:
        return args.output
    return None if args.quick else RESULTS_DIR


# --------------------------------------------------------------------------- markdown and files
PAIRED_NOTE = (
    "Ratios are medians of per-pair ratios: the two variants are timed back to back, alternating which "
    "goes first, so that drift of the machine cancels; the 95% interval is a bootstrap of that median, "
    "and the ratio of the two medians is a cross-check. Targets are checked on the paired median; a "
    "result is flagged when its interval straddles the target. Absolute times vary between runs on a "
    "shared machine (see the load average): compare ratios, and rerun before reading much into a "
    "difference of 1-2%."
)


def format_ci(ci: Sequence[float], digits: int) -> str:
    """A ``[low, high]`` interval."""
    return f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def ratio_cells(c: Comparison, digits: int = 3, suffix: str = "") -> str:
    """The cells ``paired median | 95% CI | ratio of medians`` of a results table."""
    return f"{c.ratio:.{digits}f}{suffix} | {format_ci(c.ratio_ci95, digits)} | {c.ratio_of_medians:.{digits}f}{suffix}"


def straddles(ci: Sequence[float], target: float) -> bool:
    """Whether the 95% interval ``ci`` holds ``target``: the measurement cannot tell which side it is on."""
    return ci[0] <= target <= ci[1]


def verdict(passed: bool | None, ci: Sequence[float], target: float | None) -> str:
    """``PASS`` / ``FAIL`` / ``-``, flagged when the 95% interval straddles the target."""
    if passed is None or target is None:
        return "-"
    word = "PASS" if passed else "FAIL"
    return f"{word} (CI straddles target)" if straddles(ci, target) else word


def budget_text(budget: dict[str, Any], unit: str, per: str) -> str:
    """How a measurement was repeated, from ``asdict`` of its :class:`Budget`, for a results page."""
    return (
        f"{budget['warmup']} warm-up {unit} each, then up to {budget['max_reps']} pairs (at least "
        f"{budget['min_reps']}, about {budget['budget_s']:.0f} s per {per})."
    )


def report_header(title: str, script: str, info: dict[str, Any], *, paired_note: bool = True) -> list[str]:
    """The lines every results page starts with: title, machine, code state, reproduce command."""
    dirty = ", ".join(f"`{f}`" for f in info["ceag_cooper_uncommitted_files"] or []) or "none"
    changed = info.get("ceag_cooper_source_sha256_end", info["ceag_cooper_source_sha256_start"])
    return [
        f"# {title}",
        "",
        f"Generated by `benchmarks/{script}` (its docstring says what is measured).",
        "",
        f"- date: {info['date']}, {info['mode']} run, {info['wall_time_s']} s",
        f"- CPU: {info['cpu_model']} ({info['os_cpu_count']} logical CPUs); torch {info['torch']} with "
        f"{info['torch_num_threads']} intra-op threads; cooper {info['cooper']}; "
        f"torch-pruning {info['torch_pruning']}; ceag_cooper {info['ceag_cooper']}",
        f"- load average (1, 5, 15 min) at start: {info['load_average_start']}, at end: {info['load_average_end']}",
        f"- code: commit {info['git_commit']}; uncommitted `ceag_cooper` files: {dirty}",
        *(
            ["- **warning: the `ceag_cooper` sources changed during the run; the results may mix versions**"]
            if changed != info["ceag_cooper_source_sha256_start"]
            else []
        ),
        "",
        "Reproduce from the repository root:",
        "",
        "```bash",
        info["command"],
        "```",
        "",
        *([PAIRED_NOTE, ""] if paired_note else []),
    ]


def write_results(out_dir: Path | None, stem: str, payload: dict[str, Any], markdown: str, indent: int = 2) -> None:
    """Write ``<stem>.json`` and ``<stem>.md`` under ``out_dir`` (nothing where it is ``None``)."""
    if out_dir is None:
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.json").write_text(json.dumps(payload, indent=indent) + "\n")
    (out_dir / f"{stem}.md").write_text(markdown if markdown.endswith("\n") else markdown + "\n")
    print(f"\nwrote {out_dir / f'{stem}.json'} and {out_dir / f'{stem}.md'}")
