"""Overhead of CEAG's bookkeeping: a full training step, and the bookkeeping on its own.

Two measurements, each taken side by side in one run: after a warm-up, the two methods are
timed back to back in pairs, alternating which goes first (A B, B A, A B, ...), and a ratio is
the median of the per-pair ratios, with a bootstrap 95% interval. Each pair shares the state of
the machine, so drift and the large speed swings of a shared VM cancel out; the ratio of the
two medians is reported as a cross-check. Targets are checked on the paired median.

1. **Training step.** One ``optimizer.roll`` of :class:`ceag_cooper.CEAG` (replay buffers on,
   ``k = 40``, dual-primal Cooper optimizer) against naive fine-tuning
   (:class:`ceag_cooper.Unconstrained`, Cooper's unconstrained optimizer) on the same small CNN
   (:class:`ceag_cooper.models.SmallCNN`, ~0.24M parameters, same initial weights), the same
   batches (128 inputs of 3×32×32, 5 classes) and the same primal optimizer (SGD, lr 0.01,
   momentum 0.9), for ``G ∈ {2, 10, 100, 1000}`` groups. Reported: the median time of one
   step of each method and the ratio CEAG / NFT (targets: ≤ 1.03 at G = 100, ≤ 1.05 at
   G = 1000).

2. **Bookkeeping alone.** On precomputed per-sample tensors of a batch of 128 (0/1 correctness,
   loss, group ids): the batch's per-group statistics (mean correctness, mean loss, counts), a
   replay-buffer update with the correctness values and the query of the buffers (per-group
   means and "full" flags). *Ours* uses :func:`ceag_cooper.group_loss_accuracy` and
   :class:`ceag_cooper.ReplayBufferStore`, as the library's problems do, with each backend:
   ``"torch"`` (vectorized operators, the default) and ``"native"`` (fused C++ kernels, CPU
   only; skipped, and said so, where they cannot be built); the *naive* reference, written here, is what a
   straightforward implementation does: ``.tolist()`` the batch, one
   ``collections.deque(maxlen=k)`` per group, Python loops over samples and over all ``G``
   groups, and tensors built from the resulting lists. Both are checked equal batch by batch
   before timing, and are fed the same batches in the same order while timed, their final
   outputs and buffer contents being asserted equal again afterwards. Reported: the time per
   batch of each and the speedup naive / ours (targets: ≥ 25× at G = 100, ≥ 100× at G = 1000,
   checked on the native backend where it is available, else on the torch one).

Each measurement has a repetition cap and a time budget, so that the full run stays within a
few minutes on 2 cores even when the machine is slow. Torch's default number of intra-op
threads is used unless ``--threads`` is given; it is recorded with the results.

Results are printed and written to ``benchmarks/results/overhead.json`` (raw numbers and
machine information) and ``benchmarks/results/overhead.md`` (ratios against the targets).

Run from the repository root::

    python benchmarks/overhead.py            # full run, 3 to 5 minutes on 2 cores
    python benchmarks/overhead.py --quick    # smoke run, ~20 s, noisy numbers, writes no file
"""

from __future__ import annotations

import argparse
import collections
import copy
import datetime
import gc
import hashlib
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
from torch import nn

import ceag_cooper
from ceag_cooper import CEAG, GroupMetrics, Unconstrained, build_optimizer
from ceag_cooper.metrics import group_means
from ceag_cooper.models import SmallCNN
from ceag_cooper.problems import ReplayBufferStore

try:  # versions before the native backend have no such module; the benchmark still runs on them
    from ceag_cooper import native
except ImportError:  # pragma: no cover - older checkouts only
    native = None

RESULTS_DIR = Path(__file__).resolve().parent / "results"
GROUP_COUNTS = (2, 10, 100, 1000)
BATCH_SIZE = 128
NUM_CLASSES = 5
IMAGE_SHAPE = (3, 32, 32)
BUFFER_SIZE = 40
NUM_BATCHES = 8  # distinct batches cycled through by the step benchmark

# Targets from the issue: maximal step-time ratio CEAG / NFT, minimal bookkeeping speedup.
STEP_TARGETS = {100: 1.03, 1000: 1.05}
BOOKKEEPING_TARGETS = {100: 25.0, 1000: 100.0}

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Settings:
    """How many repetitions each measurement gets, and a time budget per measurement.

    A measurement stops after ``max_reps`` interleaved pairs, or earlier once it has used its
    budget and has at least ``min_reps`` pairs (so that a slow machine still finishes in time).
    """

    step_warmup: int
    step_min_reps: int
    step_max_reps: int
    step_budget_s: float
    book_warmup_blocks: int
    book_min_blocks: int
    book_max_blocks: int
    book_budget_s: float
    book_block_calls: int


FULL = Settings(
    step_warmup=5,
    step_min_reps=30,
    step_max_reps=400,
    step_budget_s=55.0,
    book_warmup_blocks=5,
    book_min_blocks=30,
    book_max_blocks=100,
    book_budget_s=8.0,
    book_block_calls=20,
)
QUICK = Settings(
    step_warmup=2,
    step_min_reps=6,
    step_max_reps=20,
    step_budget_s=3.0,
    book_warmup_blocks=2,
    book_min_blocks=10,
    book_max_blocks=20,
    book_budget_s=1.0,
    book_block_calls=10,
)


@dataclass
class Comparison:
    """Side-by-side timings of two methods (seconds per call); ratios are ``candidate / baseline``.

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


# --------------------------------------------------------------------------- model and data
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


# --------------------------------------------------------------------------- timing helpers
def bootstrap_median_ci(values: Sequence[float], seed: int = 0, resamples: int = 2000) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the median of ``values``."""
    data = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    medians = np.median(rng.choice(data, size=(resamples, data.size), replace=True), axis=1)
    low, high = np.percentile(medians, [2.5, 97.5])
    return float(low), float(high)


def compare(names: tuple[str, str], baseline: Sequence[float], candidate: Sequence[float]) -> Comparison:
    """Medians and ratios ``candidate / baseline`` of two paired timing series."""
    paired = [c / b for b, c in zip(baseline, candidate, strict=True)]
    base_med, cand_med = statistics.median(baseline), statistics.median(candidate)
    return Comparison(
        baseline=names[0],
        candidate=names[1],
        baseline_median_s=base_med,
        candidate_median_s=cand_med,
        ratio=statistics.median(paired),
        ratio_ci95=bootstrap_median_ci(paired),
        ratio_of_medians=cand_med / base_med,
        repetitions=len(paired),
        baseline_times_s=[float(f"{t:.4g}") for t in baseline],
        candidate_times_s=[float(f"{t:.4g}") for t in candidate],
    )


def interleaved(
    baseline: Callable[[int], None],
    candidate: Callable[[int], None],
    *,
    warmup: int,
    min_reps: int,
    max_reps: int,
    budget_s: float,
) -> tuple[list[float], list[float]]:
    """Time ``baseline(i)`` and ``candidate(i)`` alternately (AB, BA, AB, ...) after a warm-up.

    Both callables receive the same indices ``0, 1, 2, ...`` in the same order, so that they
    consume the same inputs and end in comparable states. Stops after ``max_reps`` pairs, or
    once ``budget_s`` seconds of timing have passed and at least ``min_reps`` pairs were taken.
    The garbage collector is off while timing.
    """
    for i in range(warmup):
        baseline(i)
        candidate(i)
    times: dict[str, list[float]] = {"baseline": [], "candidate": []}
    pair = (("baseline", baseline), ("candidate", candidate))
    gc.collect()
    gc.disable()
    began = time.perf_counter()
    try:
        for rep in range(max_reps):
            order = pair if rep % 2 == 0 else pair[::-1]
            for name, fn in order:
                start = time.perf_counter()
                fn(warmup + rep)
                times[name].append(time.perf_counter() - start)
            if rep + 1 >= min_reps and rep % 2 == 1 and time.perf_counter() - began > budget_s:
                break
    finally:
        gc.enable()
    return times["baseline"], times["candidate"]


# --------------------------------------------------------------------------- training step
def roll_fn(optimizer: cooper.optim.CooperOptimizer, model: nn.Module, batches: list[Batch]) -> Callable[[int], None]:
    """One ``optimizer.roll`` on batch ``i mod len(batches)``."""

    def step(i: int) -> None:
        x, y, g = batches[i % len(batches)]
        optimizer.roll(compute_cmp_state_kwargs={"model": model, "inputs": x, "targets": y, "group_ids": g})

    return step


def bench_step(num_groups: int, settings: Settings) -> Comparison:
    """Per-step time of CEAG (buffers on) against NFT, same weights and batches."""
    generator = torch.Generator().manual_seed(num_groups)
    torch.manual_seed(0)
    base_model = SmallCNN(num_classes=NUM_CLASSES)
    batches = make_batches(num_groups, NUM_BATCHES, generator)

    nft_model = copy.deepcopy(base_model)
    nft_problem = Unconstrained(num_groups=num_groups)
    nft_opt = build_optimizer(nft_problem, torch.optim.SGD(nft_model.parameters(), lr=0.01, momentum=0.9))

    ceag_model = copy.deepcopy(base_model)
    reference = synthetic_reference(num_groups, generator)
    ceag_problem = CEAG(reference=reference, tolerance=0.01, buffer_size=BUFFER_SIZE)
    ceag_opt = build_optimizer(
        ceag_problem, torch.optim.SGD(ceag_model.parameters(), lr=0.01, momentum=0.9), dual_lr=1e-2
    )

    nft_times, ceag_times = interleaved(
        roll_fn(nft_opt, nft_model, batches),
        roll_fn(ceag_opt, ceag_model, batches),
        warmup=settings.step_warmup,
        min_reps=settings.step_min_reps,
        max_reps=settings.step_max_reps,
        budget_s=settings.step_budget_s,
    )
    return compare(("NFT", "CEAG"), nft_times, ceag_times)


# --------------------------------------------------------------------------- bookkeeping
BookkeepingOutput = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
"""``(batch group accuracy, batch group loss, batch group counts, buffer means, buffer full)``."""

PerSampleBatch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""``(group_ids, correct, loss)`` of one batch, per sample."""


def group_means_takes_columns() -> bool:
    """Whether this version of :func:`group_means` accepts ``(N, C)`` values (several at once)."""
    try:
        group_means(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), 1)
    except ValueError:
        return False
    return True


class VectorizedBookkeeping:
    """The library's bookkeeping: batch statistics and a :class:`ReplayBufferStore`.

    The batch statistics are computed as the library's problems compute them:
    ``group_loss_accuracy`` with the chosen backend; in versions without it, one
    ``group_means`` call on the stacked ``(N, 2)`` values where that accepts columns, else one
    call per statistic.
    """

    def __init__(self, num_groups: int, capacity: int, backend: str = "torch") -> None:
        self.num_groups = num_groups
        self.backend = backend
        self.fused = hasattr(ceag_cooper, "group_loss_accuracy")
        self.store = (
            ReplayBufferStore(num_groups, capacity, backend=backend)
            if self.fused
            else ReplayBufferStore(num_groups, capacity)
        )
        self.stacked = group_means_takes_columns()

    def __call__(self, group_ids: torch.Tensor, correct: torch.Tensor, loss: torch.Tensor) -> BookkeepingOutput:
        """Batch statistics, buffer update and buffer query of one batch."""
        if self.fused:
            group_loss, group_acc, counts = ceag_cooper.group_loss_accuracy(
                loss, correct, group_ids, self.num_groups, backend=self.backend
            )
            self.store.update(group_ids, correct)
            return group_acc, group_loss, counts, *self.store.query()
        if self.stacked:
            means, counts = group_means(torch.stack([correct, loss], dim=1), group_ids, self.num_groups)
            group_acc, group_loss = means[:, 0], means[:, 1]
        else:
            group_acc, counts = group_means(correct, group_ids, self.num_groups)
            group_loss, _ = group_means(loss, group_ids, self.num_groups)
        self.store.update(group_ids, correct)
        return group_acc, group_loss, counts, self.store.means(), self.store.is_full()


class PurePythonBookkeeping:
    """A lower bound, not a usable implementation: ``.tolist()``, deques, Python loops only.

    Its group losses are Python floats, so they carry no gradient: CEAG's model step needs
    ``d L_g / d theta`` and could not use them. It shows how fast plain Python is on a batch.
    """

    def __init__(self, num_groups: int, capacity: int) -> None:
        self.num_groups = num_groups
        self.capacity = capacity
        self.buffers: list[collections.deque[float]] = [collections.deque(maxlen=capacity) for _ in range(num_groups)]

    def tally(self, group_ids: torch.Tensor, correct: torch.Tensor, loss: torch.Tensor) -> tuple[list, ...]:
        """One pass over the samples: sums, counts, sample indices per group; feeds the deques."""
        ids, correct_list, loss_list = group_ids.tolist(), correct.tolist(), loss.tolist()
        acc_sums = [0.0] * self.num_groups
        loss_sums = [0.0] * self.num_groups
        counts = [0] * self.num_groups
        members: dict[int, list[int]] = collections.defaultdict(list)
        for i, (g, c, val) in enumerate(zip(ids, correct_list, loss_list, strict=True)):
            acc_sums[g] += c
            loss_sums[g] += val
            counts[g] += 1
            members[g].append(i)
            self.buffers[g].append(c)
        return acc_sums, loss_sums, counts, members

    def query(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-group buffer means and full flags, with Python loops over all groups."""
        means = [sum(buf) / len(buf) if buf else 0.0 for buf in self.buffers]
        full = [len(buf) == self.capacity for buf in self.buffers]
        return torch.tensor(means, dtype=torch.float32), torch.tensor(full, dtype=torch.bool)

    def __call__(self, group_ids: torch.Tensor, correct: torch.Tensor, loss: torch.Tensor) -> BookkeepingOutput:
        """Batch statistics, buffer update and buffer query of one batch."""
        acc_sums, loss_sums, counts, _ = self.tally(group_ids, correct, loss)
        group_acc = [s / n if n else 0.0 for s, n in zip(acc_sums, counts, strict=True)]
        group_loss = [s / n if n else 0.0 for s, n in zip(loss_sums, counts, strict=True)]
        return (
            torch.tensor(group_acc, dtype=torch.float32),
            torch.tensor(group_loss, dtype=torch.float32),
            torch.tensor(counts, dtype=torch.float32),
            *self.query(),
        )


class NaiveBookkeeping(PurePythonBookkeeping):
    """The straightforward reference that CEAG can actually train with.

    Same ``.tolist()`` pass, deques and Python query as :class:`PurePythonBookkeeping`, but the
    group losses must stay differentiable, so they are tensor ops per group present in the
    batch (``loss[members].mean()``), placed into a ``(G,)`` tensor: a per-group Python loop.
    """

    def __call__(self, group_ids: torch.Tensor, correct: torch.Tensor, loss: torch.Tensor) -> BookkeepingOutput:
        """Batch statistics (differentiable group losses), buffer update and buffer query."""
        acc_sums, _, counts, members = self.tally(group_ids, correct, loss)
        present = sorted(members)
        group_loss = loss.new_zeros(self.num_groups)
        group_loss[present] = torch.stack([loss[members[g]].mean() for g in present])
        group_acc = [s / n if n else 0.0 for s, n in zip(acc_sums, counts, strict=True)]
        return (
            torch.tensor(group_acc, dtype=torch.float32),
            group_loss,
            torch.tensor(counts, dtype=torch.float32),
            *self.query(),
        )


def make_per_sample_batches(num_groups: int, count: int, generator: torch.Generator) -> list[PerSampleBatch]:
    """Precomputed per-sample group ids, 0/1 correctness and losses of batch size 128."""
    return [
        (
            torch.randint(0, num_groups, (BATCH_SIZE,), generator=generator),
            (torch.rand(BATCH_SIZE, generator=generator) < 0.7).float(),
            (torch.rand(BATCH_SIZE, generator=generator) * 2.0).requires_grad_(),  # a loss carries a gradient
        )
        for _ in range(count)
    ]


def block_fn(
    impl: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], BookkeepingOutput],
    batches: list[PerSampleBatch],
    calls: int,
    last: list[BookkeepingOutput],
) -> Callable[[int], None]:
    """``calls`` consecutive bookkeeping calls on batches ``i*calls ...``; keeps the last output."""

    def run(i: int) -> None:
        out = None
        for j in range(i * calls, (i + 1) * calls):
            out = impl(*batches[j % len(batches)])
        last[:] = [out]

    return run


def check_same_answer(
    ours: VectorizedBookkeeping,
    naive: PurePythonBookkeeping,
    ours_out: BookkeepingOutput,
    naive_out: BookkeepingOutput,
) -> None:
    """Assert that both implementations return the same outputs and hold the same buffers."""
    names = ("group accuracy", "group loss", "group counts", "buffer means", "buffer full flags")
    for name, a, b in zip(names, ours_out, naive_out, strict=True):
        torch.testing.assert_close(a, b, msg=lambda m, name=name: f"{name} differ: {m}")
    for g in range(ours.num_groups):
        if ours.store.contents(g) != list(naive.buffers[g]):
            raise AssertionError(f"replay buffer of group {g} differs between ours and the naive reference")


def verify_equivalence(
    num_groups: int,
    batches: list[PerSampleBatch],
    reference: type[PurePythonBookkeeping],
    backend: str,
    steps: int = 100,
) -> None:
    """Feed fresh copies of both implementations ``steps`` batches, comparing every output."""
    ours, naive = VectorizedBookkeeping(num_groups, BUFFER_SIZE, backend), reference(num_groups, BUFFER_SIZE)
    for j in range(steps):
        batch = batches[j % len(batches)]
        ours_out, naive_out = ours(*batch), naive(*batch)
        names = ("group accuracy", "group loss", "group counts", "buffer means", "buffer full flags")
        for name, a, b in zip(names, ours_out, naive_out, strict=True):
            torch.testing.assert_close(a, b, msg=lambda m, name=name, j=j: f"{name} differ at batch {j}: {m}")
    check_same_answer(ours, naive, ours_out, naive_out)


def bench_bookkeeping(
    num_groups: int,
    settings: Settings,
    reference: type[PurePythonBookkeeping] = NaiveBookkeeping,
    backend: str = "torch",
) -> Comparison:
    """Time of the bookkeeping of one batch; the ratio ``reference / ours`` is our speedup."""
    generator = torch.Generator().manual_seed(1000 + num_groups)
    batches = make_per_sample_batches(num_groups, 64, generator)
    verify_equivalence(num_groups, batches, reference, backend)
    ours = VectorizedBookkeeping(num_groups, BUFFER_SIZE, backend)
    naive = reference(num_groups, BUFFER_SIZE)
    ours_last: list[BookkeepingOutput] = []
    naive_last: list[BookkeepingOutput] = []
    calls = settings.book_block_calls
    ours_times, naive_times = interleaved(
        block_fn(ours, batches, calls, ours_last),
        block_fn(naive, batches, calls, naive_last),
        warmup=settings.book_warmup_blocks,
        min_reps=settings.book_min_blocks,
        max_reps=settings.book_max_blocks,
        budget_s=settings.book_budget_s,
    )
    # Both saw the same batches in the same order: their final states must agree.
    check_same_answer(ours, naive, ours_last[0], naive_last[0])
    return compare(("ours", "naive"), [t / calls for t in ours_times], [t / calls for t in naive_times])


# --------------------------------------------------------------------------- reporting
def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (or ``platform.processor()``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def reproduce_command(argv: Sequence[str]) -> str:
    """The command line of this run, relative to the repository root."""
    script = Path(argv[0]).resolve()
    try:
        script_str = str(script.relative_to(Path.cwd()))
    except ValueError:
        script_str = str(script)
    return shlex.join(["python", script_str, *argv[1:]])


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
    root = Path(__file__).resolve().parent.parent

    def git(*cmd: str) -> str:
        return subprocess.run(["git", "-C", str(root), *cmd], capture_output=True, text=True, check=True).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        dirty = [line[3:] for line in git("status", "--porcelain", "--", "ceag_cooper").splitlines()]
    except (OSError, subprocess.CalledProcessError):
        return {"git_commit": None, "ceag_cooper_uncommitted_files": None}
    return {"git_commit": commit, "ceag_cooper_uncommitted_files": dirty}


def batch_statistics_path() -> str:
    """How this version computes a batch's group statistics (the versions differ)."""
    if hasattr(ceag_cooper, "group_loss_accuracy"):
        return "group_loss_accuracy (one group_means call on (N, 2) values with torch, one kernel call native)"
    if group_means_takes_columns():
        return "one group_means call on (N, 2) values"
    return "two group_means calls on (N,) values"


def machine_info(argv: Sequence[str]) -> dict[str, Any]:
    """Versions, threads, CPU, code state and date of this run."""
    return {
        **git_state(),
        "ceag_cooper_source_sha256_start": source_fingerprint(),
        "group_stats": batch_statistics_path(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": reproduce_command(argv),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cooper": getattr(cooper, "__version__", "unknown"),
        "ceag_cooper": ceag_cooper.__version__,
        "torch_num_threads": torch.get_num_threads(),
        "torch_num_interop_threads": torch.get_num_interop_threads(),
        "os_cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "platform": platform.platform(),
        "model": "ceag_cooper.models.SmallCNN(num_classes=5)",
        "model_parameters": sum(p.numel() for p in SmallCNN(num_classes=NUM_CLASSES).parameters()),
    }


def step_passes(num_groups: int, comp: Comparison) -> bool | None:
    """Whether the CEAG/NFT step ratio meets its target (``None`` where there is none)."""
    target = STEP_TARGETS.get(num_groups)
    return None if target is None else comp.ratio <= target


def book_passes(num_groups: int, comp: Comparison) -> bool | None:
    """Whether the naive/ours bookkeeping speedup meets its target (``None`` where there is none)."""
    target = BOOKKEEPING_TARGETS.get(num_groups)
    return None if target is None else comp.ratio >= target


def verdict(passed: bool | None, ci: tuple[float, float], target: float | None) -> str:
    """``PASS`` / ``FAIL`` / ``-``, flagged when the 95% interval straddles the target."""
    if passed is None or target is None:
        return "-"
    word = "PASS" if passed else "FAIL"
    return f"{word} (CI straddles target)" if ci[0] <= target <= ci[1] else word


def format_ci(ci: tuple[float, float], digits: int) -> str:
    """A ``[low, high]`` interval."""
    return f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def step_table(steps: dict[int, Comparison]) -> list[str]:
    """Markdown rows of the step comparison."""
    rows = [
        "| G | NFT step (ms) | CEAG step (ms) | CEAG/NFT (paired median) | 95% CI | ratio of medians "
        "| pairs | target | result |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for g, c in steps.items():
        target = f"≤ {STEP_TARGETS[g]:.2f}" if g in STEP_TARGETS else "-"
        rows.append(
            f"| {g} | {c.baseline_median_s * 1e3:.1f} | {c.candidate_median_s * 1e3:.1f} | {c.ratio:.3f} "
            f"| {format_ci(c.ratio_ci95, 3)} | {c.ratio_of_medians:.3f} | {c.repetitions} | {target} "
            f"| {verdict(step_passes(g, c), c.ratio_ci95, STEP_TARGETS.get(g))} |"
        )
    return rows


def target_backend(books: dict[str, dict[int, Comparison]]) -> str:
    """The backend the bookkeeping targets are checked on: native where it ran, else torch."""
    return "native" if "native" in books else "torch"


def book_table(books: dict[str, dict[int, Comparison]], floors: dict[int, Comparison]) -> list[str]:
    """Markdown rows of the bookkeeping comparison, per backend (and the pure-Python bound)."""
    checked = target_backend(books)
    header = "| G | naive (µs) |"
    rule = "|---:|---:|"
    for backend in books:
        header += f" ours, {backend} (µs) | speedup, {backend} (paired median) | 95% CI | ratio of medians |"
        rule += "---:|---:|---:|---:|"
    header += f" target ({checked}) | result | pure-Python bound (µs) | its speedup over it ({checked}) |"
    rule += "---:|:---:|---:|---:|"
    rows = [header, rule]
    for g in books[checked]:
        naive_us = books[checked][g].candidate_median_s * 1e6
        row = f"| {g} | {naive_us:.1f} |"
        for comparisons in books.values():
            c = comparisons[g]
            row += (
                f" {c.baseline_median_s * 1e6:.1f} | {c.ratio:.2f}× | {format_ci(c.ratio_ci95, 2)} "
                f"| {c.ratio_of_medians:.2f}× |"
            )
        c = books[checked][g]
        target = f"≥ {BOOKKEEPING_TARGETS[g]:.0f}×" if g in BOOKKEEPING_TARGETS else "-"
        floor = floors[g]
        row += (
            f" {target} | {verdict(book_passes(g, c), c.ratio_ci95, BOOKKEEPING_TARGETS.get(g))} "
            f"| {floor.candidate_median_s * 1e6:.1f} | {floor.ratio:.2f}× |"
        )
        rows.append(row)
    return rows


def markdown_report(
    info: dict[str, Any],
    steps: dict[int, Comparison],
    books: dict[str, dict[int, Comparison]],
    floors: dict[int, Comparison],
) -> str:
    """The whole ``overhead.md``."""
    settings = info["settings"]
    dirty = ", ".join(f"`{f}`" for f in info["ceag_cooper_uncommitted_files"] or []) or "none"
    lines = [
        "# CEAG overhead",
        "",
        "Generated by `benchmarks/overhead.py` (its docstring says what is measured).",
        "",
        f"- date: {info['date']}, {info['mode']} run, {info['wall_time_s']} s",
        f"- CPU: {info['cpu_model']} ({info['os_cpu_count']} logical CPUs); torch {info['torch']} with "
        f"{info['torch_num_threads']} intra-op threads; cooper {info['cooper']}",
        f"- code: commit {info['git_commit']}; uncommitted `ceag_cooper` files: {dirty}; "
        f"batch statistics as {info['group_stats']}",
        *(
            ["- **warning: the `ceag_cooper` sources changed during the run; the results may mix versions**"]
            if info["ceag_cooper_source_sha256_end"] != info["ceag_cooper_source_sha256_start"]
            else []
        ),
        "",
        "Reproduce from the repository root:",
        "",
        "```bash",
        info["command"],
        "```",
        "",
        "Ratios are medians of per-pair ratios: the two methods are timed back to back, alternating "
        "which goes first, so that drift of the machine cancels; the 95% interval is a bootstrap of "
        "that median. The ratio of the two medians is shown as a cross-check. Targets are checked on "
        "the paired median; a result is flagged when its interval straddles the target. Absolute times "
        "vary between runs on a shared machine: compare ratios, and rerun before reading much into a "
        "difference of 1-2%.",
        "",
        f"## Training step: CEAG (replay buffers, k = {BUFFER_SIZE}) vs NFT",
        "",
        f"`{info['model']}` ({info['model_parameters']:,} parameters), batch {BATCH_SIZE} of 3×32×32, "
        f"{NUM_CLASSES} classes, SGD lr 0.01 momentum 0.9; one `optimizer.roll` per step. "
        f"{settings['step_warmup']} warm-up steps each, then up to {settings['step_max_reps']} pairs "
        f"(at least {settings['step_min_reps']}, about {settings['step_budget_s']:.0f} s per G).",
        "",
        *step_table(steps),
        "",
        "## Bookkeeping alone: group statistics + buffer update + query",
        "",
        f"Per-sample tensors of a batch of {BATCH_SIZE} (the loss requires grad, as in training): "
        "per-group mean correctness, mean loss (differentiable) and counts, a replay-buffer update "
        "with the correctness values, and the buffers' means and full flags. *Ours*: "
        "`group_loss_accuracy` and `ReplayBufferStore`, as the problems run them, with the `torch` "
        "backend (vectorized operators, the default, any device) and the `native` one (fused C++ "
        f"kernels, CPU only; {info['native_backend']}). *Naive*: `.tolist()` of the batch, one "
        "`deque(maxlen=k)` per group, Python loops over samples and groups, and the group losses as "
        "one `loss[members].mean()` per group present (they must stay differentiable: CEAG's model "
        "step needs their gradient). *Pure-Python bound*: the same without the per-group tensor ops, "
        "so its group losses carry no gradient; it cannot drive training and is shown only as the "
        "floor of what plain Python costs. Time per batch, from blocks of "
        f"{settings['book_block_calls']} calls. Outputs and buffer contents were asserted equal.",
        "",
        *book_table(books, floors),
        "",
        "Why two backends: on this CPU a PyTorch operator call costs about 2 µs whatever its size, "
        "and the vectorized bookkeeping is ~20 of them, whatever G is; the native backend does the "
        "same work in three C++ calls (batch statistics with their gradient, buffer update, buffer "
        "query), so its cost is a few µs plus a loop over the batch. On an accelerator the torch "
        "backend's calls are queued asynchronously (and the naive `.tolist()` forces a device sync "
        "per step, which this CPU measurement does not show); the native backend is CPU only. For "
        "training, what matters is the step ratio above, which uses the default torch backend.",
        "",
    ]
    return "\n".join(lines)


def print_summary(
    steps: dict[int, Comparison], books: dict[str, dict[int, Comparison]], floors: dict[int, Comparison]
) -> None:
    """Both tables on stdout."""
    print("\nTraining step, CEAG vs NFT")
    print("\n".join(step_table(steps)))
    print("\nBookkeeping alone, ours vs naive")
    print("\n".join(book_table(books, floors)))


def write_results(
    out_dir: Path,
    info: dict[str, Any],
    steps: dict[int, Comparison],
    books: dict[str, dict[int, Comparison]],
    floors: dict[int, Comparison],
) -> None:
    """Write ``overhead.json`` and ``overhead.md`` under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "machine": info,
        "targets": {
            "step_ratio_max": {str(g): t for g, t in STEP_TARGETS.items()},
            "bookkeeping_speedup_min": {str(g): t for g, t in BOOKKEEPING_TARGETS.items()},
        },
        "step": {str(g): {**asdict(c), "passes": step_passes(g, c)} for g, c in steps.items()},
        "bookkeeping_targets_checked_on": target_backend(books),
        "bookkeeping": {
            backend: {str(g): {**asdict(c), "passes": book_passes(g, c)} for g, c in comparisons.items()}
            for backend, comparisons in books.items()
        },
        "bookkeeping_vs_pure_python_bound": {str(g): asdict(c) for g, c in floors.items()},
    }
    (out_dir / "overhead.json").write_text(json.dumps(payload, indent=2) + "\n")
    (out_dir / "overhead.md").write_text(markdown_report(info, steps, books, floors))


# --------------------------------------------------------------------------- main
def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repetitions (~20 s): a smoke test, numbers are noisy")
    parser.add_argument(
        "--groups", type=int, nargs="+", default=list(GROUP_COUNTS), help="numbers of groups G to measure"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where to write overhead.{json,md} (default: benchmarks/results for a full run; "
        "a --quick run writes nothing unless --out is given, so it never replaces full results)",
    )
    parser.add_argument("--no-write", action="store_true", help="print only, write no file")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Run both benchmarks for every ``G``, print the tables, write the results."""
    argv = list(sys.argv if argv is None else argv)
    args = parse_args(argv[1:])
    settings = QUICK if args.quick else FULL
    torch.set_num_threads(args.threads if args.threads is not None else torch.get_num_threads())
    info = {**machine_info(argv), "mode": "quick" if args.quick else "full", "settings": asdict(settings)}
    backends = ["torch"]
    if native is None or not hasattr(ceag_cooper, "group_loss_accuracy"):
        info["native_backend"] = "not in this version of ceag_cooper"
    elif native.is_available():
        backends.append("native")
        info["native_backend"] = "built and measured"
    else:
        info["native_backend"] = "could not be built on this machine, not measured"
    print(f"native backend: {info['native_backend']}")
    print(f"torch {info['torch']}, {info['torch_num_threads']} threads, {info['cpu_model']}")

    start = time.perf_counter()
    steps: dict[int, Comparison] = {}
    books: dict[str, dict[int, Comparison]] = {backend: {} for backend in backends}
    floors: dict[int, Comparison] = {}
    for g in args.groups:
        for backend in backends:
            books[backend][g] = bench_bookkeeping(g, settings, backend=backend)
            print(f"G={g:>5} bookkeeping ({backend}): naive/ours = {books[backend][g].ratio:.2f}×", flush=True)
        floors[g] = bench_bookkeeping(g, settings, PurePythonBookkeeping, backend=backends[-1])
        steps[g] = bench_step(g, settings)
        print(f"G={g:>5} step: CEAG/NFT = {steps[g].ratio:.3f} ({steps[g].repetitions} pairs)", flush=True)
    info["wall_time_s"] = round(time.perf_counter() - start, 1)
    info["ceag_cooper_source_sha256_end"] = source_fingerprint()
    if info["ceag_cooper_source_sha256_end"] != info["ceag_cooper_source_sha256_start"]:
        print("warning: ceag_cooper sources changed during the run; the results may mix versions")

    print_summary(steps, books, floors)
    out_dir = args.out if args.out is not None else (None if args.quick else RESULTS_DIR)
    if out_dir is not None and not args.no_write:
        write_results(out_dir, info, steps, books, floors)
        print(f"\nwrote {out_dir / 'overhead.json'} and {out_dir / 'overhead.md'}")


if __name__ == "__main__":
    main()
