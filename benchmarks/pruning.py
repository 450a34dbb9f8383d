"""Cost of pruning: masked fine-tuning steps, and inference with channels removed.

Every comparison is timed side by side in one run, with the paired timing of ``benchmarks/_harness.py``
(shared with ``overhead.py``): after a warm-up the two variants are timed back to back in pairs,
alternating which goes first (A B, B A, ...); a ratio is the median of the per-pair ratios with a
bootstrap 95% interval, and the ratio of the two medians is a cross-check. Targets are checked on
the paired median.

1. **Masked fine-tuning step.** One training step (forward, backward, ``optimizer.step()``) of
   :class:`ceag_cooper.models.SmallCNN` (``num_classes=5``, batches of 128 inputs of 3×32×32,
   SGD lr 0.01, momentum 0.9, weight decay 5e-4) on the dense model, against the same model
   pruned to 90% by :class:`~ceag_cooper.pruning.MagnitudePruner` (``OneShotSchedule(0.9)``,
   default parameters: every conv and linear weight but the first conv and the classifier) with
   the pruner attached to the optimizer, so its gradient hooks and its post-step re-masking run
   on every step. Target: masked / dense ≤ 1.05. The same comparison is made for one
   ``optimizer.roll`` of :class:`ceag_cooper.CEAG` (replay buffers, k = 40, G = 100 groups,
   built by :func:`ceag_cooper.build_optimizer`), the pruner attached to its primal optimizer.
   Dense kernels do the same work on a 90%-zero weight, so the difference is the masking itself;
   it is also timed on its own (``apply_masks`` and the gradient hooks on gradient-shaped
   tensors). After timing, the pruned weights are asserted to be still exactly zero.

2. **Structured pruning.** :class:`~ceag_cooper.pruning.ChannelPruner` with
   ``OneShotSchedule(0.5)`` (half the channels of every prunable layer, magnitude importance),
   then ``finalize()``, on ``cifar_resnet(20, num_classes=5, width=16)`` and on ``SmallCNN``
   (BatchNorm statistics first recalibrated on random batches so that they are not trivial).
   The finalized model's outputs must equal the masked model's (``atol=1e-4``; asserted, on a
   batch of 128 and a batch of 1). Reported: parameters and MACs per image (from
   ``pruner.report()``) of the finalized vs dense model, and the inference time (``eval()``,
   ``torch.no_grad()``, batch 128 and batch 1) of the finalized vs the dense model.

Each measurement has a repetition cap and a time budget, so that the full run stays within
about 5 minutes on 2 cores. Torch's default number of intra-op threads is used unless
``--threads`` is given; it is recorded with the results, with the load average of the machine
(other processes skew absolute times; the paired ratios are meant to withstand that).

Results are printed and written to ``benchmarks/results/pruning.json`` (raw numbers and machine
information) and ``benchmarks/results/pruning.md`` (tables of ratios, the target, the command).

Run from the repository root::

    python benchmarks/pruning.py                          # full run, 4 to 5 minutes on 2 cores
    python benchmarks/pruning.py --quick --output /tmp/p  # smoke run, ~30 s, noisy numbers
"""

from __future__ import annotations

import copy
import gc
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cooper
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as harness
from _harness import BATCH_SIZE, BUFFER_SIZE, IMAGE_SHAPE, NUM_BATCHES, NUM_CLASSES, Batch, Budget, Comparison

from ceag_cooper import CEAG, build_optimizer
from ceag_cooper.models import SmallCNN, cifar_resnet
from ceag_cooper.pruning import (
    ChannelPruner,
    MagnitudePruner,
    OneShotSchedule,
    recalibrate_batchnorm,
)

CEAG_GROUPS = 100
UNSTRUCTURED_SPARSITY = 0.9
CHANNEL_SPARSITY = 0.5
OUTPUT_ATOL = 1e-4
SGD_KWARGS: dict[str, float] = {"lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4}

STEP_TARGET = 1.05  # from the issue: masked step / dense step
INFERENCE_BATCHES = (128, 1)
STRUCTURED_MODELS: dict[str, tuple[str, Callable[[], nn.Module]]] = {
    "ResNet-20": (
        "ceag_cooper.models.cifar_resnet(20, num_classes=5, width=16)",
        lambda: cifar_resnet(20, num_classes=NUM_CLASSES, width=16),
    ),
    "SmallCNN": (harness.STEP_MODEL, lambda: SmallCNN(num_classes=NUM_CLASSES)),
}


@dataclass(frozen=True)
class Settings:
    """Repetitions and time budgets of each measurement (see :class:`_Budget`).

    Batch-1 inference is timed in blocks of ``infer_block_calls_b1`` calls (a single call is too
    short to time well); the masking work alone in rounds of ``mask_work_calls`` calls.
    """

    step: Budget
    infer: Budget
    infer_block_calls_b1: int
    mask_work_calls: int


FULL = Settings(
    step=harness.STEP_FULL,
    infer=Budget(warmup=3, min_reps=20, max_reps=300, budget_s=22.0),
    infer_block_calls_b1=20,
    mask_work_calls=50,
)
QUICK = Settings(
    step=harness.STEP_QUICK,
    infer=Budget(warmup=1, min_reps=6, max_reps=20, budget_s=1.5),
    infer_block_calls_b1=5,
    mask_work_calls=20,
)


@dataclass
class MaskWork:
    """Time of the pruner's own work in one step, measured alone (seconds per step)."""

    apply_masks_s: float
    gradient_hooks_s: float
    pruned_parameters: list[str]
    pruned_entries: int
    masked_entries: int
    measured_sparsity: float

    @property
    def total_s(self) -> float:
        """Re-masking after the step plus the gradient hooks."""
        return self.apply_masks_s + self.gradient_hooks_s


@dataclass
class StepResult:
    """A dense-vs-masked step comparison and the masking work behind it."""

    label: str
    comparison: Comparison
    mask_work: MaskWork
    pruned_weights_still_zero: bool

    def passes(self) -> bool:
        """Whether the paired median ratio meets the target."""
        return self.comparison.ratio <= STEP_TARGET


@dataclass
class StructuredResult:
    """Sizes, output check and inference timings of one channel-pruned model."""

    model: str
    constructor: str
    report: dict[str, Any]
    dense_params_counted: int
    finalized_params_counted: int
    max_abs_output_diff: dict[str, float]
    prune_s: float
    finalize_s: float
    inference: dict[int, Comparison]

    @property
    def params_ratio(self) -> float:
        """Finalized / dense parameters (from ``pruner.report()``)."""
        return self.report["params"] / self.report["dense_params"]

    @property
    def macs_ratio(self) -> float:
        """Finalized / dense MACs per image (from ``pruner.report()``)."""
        return self.report["macs"] / self.report["dense_macs"]


# --------------------------------------------------------------------------- masked steps
def sgd_step_fn(model: nn.Module, optimizer: torch.optim.Optimizer, batches: list[Batch]) -> Callable[[int], None]:
    """One forward + backward + ``optimizer.step()`` with cross-entropy on batch ``i mod len(batches)``."""

    def step(i: int) -> None:
        x, y, _ = batches[i % len(batches)]
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    return step


def pruned_model(base: nn.Module) -> tuple[nn.Module, MagnitudePruner]:
    """A copy of ``base`` pruned to 90% (one shot, layer-wise magnitude, default parameters)."""
    model = copy.deepcopy(base)
    pruner = MagnitudePruner(model, schedule=OneShotSchedule(UNSTRUCTURED_SPARSITY))
    pruner.step(0)
    return model, pruner


def masks_hold(pruner: MagnitudePruner) -> bool:
    """Whether every masked weight is exactly zero."""
    params = dict(pruner.model.named_parameters())
    return all(bool((params[n].detach()[~m] == 0).all()) for n, m in pruner.masks.items())


def time_per_call(fn: Callable[[], None], calls: int, *, rounds: int = 7, budget_s: float = 3.0) -> float:
    """Fastest over rounds of the mean time of ``calls`` calls of ``fn`` (after one warm-up round).

    The minimum, not the median: this times a few small operations, whose noise (other processes,
    preempted threads) only ever adds time. Stops after ``rounds`` rounds, or once ``budget_s``
    seconds have passed and at least 3 rounds were taken.
    """
    for _ in range(calls):
        fn()
    times = []
    began = time.perf_counter()
    while len(times) < rounds and (len(times) < 3 or time.perf_counter() - began < budget_s):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls)
    return min(times)


def measure_mask_work(pruner: MagnitudePruner, calls: int) -> MaskWork:
    """Time of ``apply_masks()`` and of the gradient hooks (``grad * mask``) of one step, alone."""
    params = dict(pruner.model.named_parameters())
    grads = {n: torch.randn_like(params[n]) for n in pruner.parameter_names}
    hooks = {n: pruner._gradient_hook(n) for n in pruner.parameter_names}

    def run_hooks() -> None:
        for name, hook in hooks.items():
            hook(grads[name])

    return MaskWork(
        apply_masks_s=time_per_call(pruner.apply_masks, calls),
        gradient_hooks_s=time_per_call(run_hooks, calls),
        pruned_parameters=list(pruner.parameter_names),
        pruned_entries=sum(m.numel() for m in pruner.masks.values()),
        masked_entries=sum(int((~m).sum()) for m in pruner.masks.values()),
        measured_sparsity=pruner.measured_sparsity(),
    )


def step_result(
    label: str, dense: Callable[[int], None], masked: Callable[[int], None], pruner: MagnitudePruner, settings: Settings
) -> StepResult:
    """Time ``dense`` against ``masked`` steps, then the masking work alone, and check the masks held."""
    return StepResult(
        label=label,
        comparison=harness.paired(("dense", "masked"), dense, masked, settings.step),
        mask_work=measure_mask_work(pruner, settings.mask_work_calls),
        pruned_weights_still_zero=masks_hold(pruner),
    )


def bench_sgd_step(settings: Settings) -> StepResult:
    """Dense SGD step vs masked SGD step (pruner attached), same initial weights and batches."""
    torch.manual_seed(0)
    base = SmallCNN(num_classes=NUM_CLASSES)
    batches = harness.make_batches(CEAG_GROUPS, NUM_BATCHES, torch.Generator().manual_seed(1))
    dense = copy.deepcopy(base)
    dense_opt = torch.optim.SGD(dense.parameters(), **SGD_KWARGS)
    masked, pruner = pruned_model(base)
    masked_opt = torch.optim.SGD(masked.parameters(), **SGD_KWARGS)
    pruner.attach(masked_opt)
    return step_result(
        "SGD step (forward + backward + step)",
        sgd_step_fn(dense, dense_opt, batches),
        sgd_step_fn(masked, masked_opt, batches),
        pruner,
        settings,
    )


def bench_ceag_step(settings: Settings) -> StepResult:
    """CEAG roll on the dense model vs on the masked model (pruner attached to the primal optimizer)."""
    torch.manual_seed(0)
    base = SmallCNN(num_classes=NUM_CLASSES)
    generator = torch.Generator().manual_seed(2)
    batches = harness.make_batches(CEAG_GROUPS, NUM_BATCHES, generator)
    reference = harness.synthetic_reference(CEAG_GROUPS, generator)

    def ceag_optimizer(model: nn.Module) -> tuple[cooper.optim.CooperOptimizer, torch.optim.Optimizer]:
        primal = torch.optim.SGD(model.parameters(), **SGD_KWARGS)
        problem = CEAG(reference=reference, tolerance=0.01, buffer_size=BUFFER_SIZE)
        return build_optimizer(problem, primal, dual_lr=1e-2), primal

    dense = copy.deepcopy(base)
    dense_opt, _ = ceag_optimizer(dense)
    masked, pruner = pruned_model(base)
    masked_opt, masked_primal = ceag_optimizer(masked)
    pruner.attach(masked_primal)
    return step_result(
        f"CEAG roll (G = {CEAG_GROUPS}, k = {BUFFER_SIZE})",
        harness.roll_fn(dense_opt, dense, batches),
        harness.roll_fn(masked_opt, masked, batches),
        pruner,
        settings,
    )


# --------------------------------------------------------------------------- structured pruning
def forward_fn(model: nn.Module, inputs: torch.Tensor, calls: int) -> Callable[[int], None]:
    """``calls`` forward passes of ``model`` on ``inputs`` without gradients."""

    def run(_: int) -> None:
        with torch.no_grad():
            for _ in range(calls):
                model(inputs)

    return run


def bench_structured(name: str, settings: Settings) -> StructuredResult:
    """Prune half the channels, check the finalized outputs, time inference against the dense model."""
    constructor, make = STRUCTURED_MODELS[name]
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(3)
    model = make()
    calibration = [(torch.randn(BATCH_SIZE, *IMAGE_SHAPE, generator=generator),) for _ in range(4)]
    recalibrate_batchnorm(model, calibration)
    model.eval()
    dense = copy.deepcopy(model)
    inputs = {b: torch.randn(b, *IMAGE_SHAPE, generator=generator) for b in INFERENCE_BATCHES}
    example = torch.randn(1, *IMAGE_SHAPE, generator=generator)

    start = time.perf_counter()
    pruner = ChannelPruner(model, example, schedule=OneShotSchedule(CHANNEL_SPARSITY))
    pruner.step(0)
    prune_s = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        masked_out = {b: model(x) for b, x in inputs.items()}
    start = time.perf_counter()
    finalized = pruner.finalize().eval()
    finalize_s = time.perf_counter() - start
    with torch.no_grad():
        final_out = {b: finalized(x) for b, x in inputs.items()}
    for b in INFERENCE_BATCHES:
        torch.testing.assert_close(
            final_out[b],
            masked_out[b],
            rtol=0.0,
            atol=OUTPUT_ATOL,
            msg=lambda m, b=b: f"{name}: finalized outputs differ from the masked model's (batch {b}): {m}",
        )
    report = pruner.report()

    timings: dict[int, Comparison] = {}
    for b in INFERENCE_BATCHES:
        calls = settings.infer_block_calls_b1 if b == 1 else 1
        dense_fn, final_fn = forward_fn(dense, inputs[b], calls), forward_fn(finalized, inputs[b], calls)
        timings[b] = harness.paired(("dense", "finalized"), dense_fn, final_fn, settings.infer, calls=calls)
    return StructuredResult(
        model=name,
        constructor=constructor,
        report=report,
        dense_params_counted=sum(p.numel() for p in dense.parameters()),
        finalized_params_counted=sum(p.numel() for p in finalized.parameters()),
        max_abs_output_diff={str(b): float((final_out[b] - masked_out[b]).abs().max()) for b in INFERENCE_BATCHES},
        prune_s=round(prune_s, 3),
        finalize_s=round(finalize_s, 3),
        inference=timings,
    )


# --------------------------------------------------------------------------- reporting
def step_table(steps: list[StepResult]) -> list[str]:
    """Markdown rows of the dense-vs-masked step comparisons."""
    rows = [
        "| step | dense (ms) | masked (ms) | masked/dense (paired median) | 95% CI | ratio of medians | pairs "
        "| target | result |",
        "|---|---:|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for s in steps:
        c = s.comparison
        rows.append(
            f"| {s.label} | {c.baseline_median_s * 1e3:.1f} | {c.candidate_median_s * 1e3:.1f} "
            f"| {harness.ratio_cells(c)} | {c.repetitions} | ≤ {STEP_TARGET:.2f} "
            f"| {harness.verdict(s.passes(), c.ratio_ci95, STEP_TARGET)} |"
        )
    return rows


def mask_work_table(steps: list[StepResult]) -> list[str]:
    """Markdown rows of the masking work per step, measured alone."""
    rows = [
        "| step | `apply_masks` (µs) | gradient hooks (µs) | total (µs) | share of the dense step "
        "| pruned weights still 0 after timing |",
        "|---|---:|---:|---:|---:|:---:|",
    ]
    for s in steps:
        w = s.mask_work
        share = w.total_s / s.comparison.baseline_median_s
        rows.append(
            f"| {s.label} | {w.apply_masks_s * 1e6:.0f} | {w.gradient_hooks_s * 1e6:.0f} | {w.total_s * 1e6:.0f} "
            f"| {100 * share:.2f}% | {'yes' if s.pruned_weights_still_zero else '**no**'} |"
        )
    return rows


def size_table(results: list[StructuredResult]) -> list[str]:
    """Markdown rows of parameters, MACs and the output check of the channel-pruned models."""
    rows = [
        "| model | params dense | params finalized | ratio | MACs/image dense | MACs/image finalized | ratio "
        "| max \\|finalized − masked\\| | outputs equal (atol 1e-4) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for r in results:
        rep = r.report
        diff = max(r.max_abs_output_diff.values())
        rows.append(
            f"| {r.model} | {rep['dense_params']:,} | {rep['params']:,} | {r.params_ratio:.3f} "
            f"| {rep['dense_macs']:,} | {rep['macs']:,} | {r.macs_ratio:.3f} | {diff:.1e} | yes |"
        )
    return rows


def inference_table(results: list[StructuredResult]) -> list[str]:
    """Markdown rows of the dense-vs-finalized inference timings."""
    rows = [
        "| model | batch | dense (ms) | finalized (ms) | finalized/dense (paired median) | 95% CI "
        "| ratio of medians | speedup | pairs |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        for b, c in r.inference.items():
            rows.append(
                f"| {r.model} | {b} | {c.baseline_median_s * 1e3:.2f} | {c.candidate_median_s * 1e3:.2f} "
                f"| {harness.ratio_cells(c)} | {1 / c.ratio:.2f}× "
                f"| {c.repetitions} |"
            )
    return rows


def markdown_report(info: dict[str, Any], steps: list[StepResult], structured: list[StructuredResult]) -> str:
    """The whole ``pruning.md``."""
    settings = info["settings"]
    work = steps[0].mask_work
    lines = [
        *harness.report_header("Cost of pruning", "pruning.py", info),
        "## Masked fine-tuning step vs dense step",
        "",
        f"`{info['step_model']}` ({info['step_model_parameters']:,} parameters), batch {BATCH_SIZE} of "
        f"3×32×32, {NUM_CLASSES} classes, SGD lr 0.01 momentum 0.9 weight decay 5e-4. *Masked*: the same "
        f"initial model pruned to {UNSTRUCTURED_SPARSITY:.0%} by `MagnitudePruner(OneShotSchedule(0.9))` "
        f"({work.masked_entries:,} of {work.pruned_entries:,} entries of {len(work.pruned_parameters)} "
        "weights masked; the first conv and the classifier stay dense by default), the pruner attached "
        "to the (primal) optimizer: gradient hooks and re-masking after every step. The CEAG row "
        f"compares `optimizer.roll` of `CEAG` (G = {CEAG_GROUPS}, replay buffers k = {BUFFER_SIZE}, "
        "`build_optimizer`) on the dense vs the masked model; the issue's target is for the masked "
        f"step, and is applied to both. {harness.budget_text(settings['step'], 'steps', 'row')}",
        "",
        *step_table(steps),
        "",
        "The masking work on its own (fastest of up to 7 rounds of the mean over "
        f"{settings['mask_work_calls']} calls): `apply_masks()` (the post-step hook) and the gradient "
        "hooks (`grad * mask` for every pruned weight) on gradient-shaped tensors; its share is of "
        "the dense step's median above.",
        "",
        *mask_work_table(steps),
        "",
        "## Structured pruning: 50% of channels removed",
        "",
        f"`ChannelPruner(model, example, schedule=OneShotSchedule({CHANNEL_SPARSITY}))` (example: one "
        "3×32×32 input; magnitude importance; the classifier's outputs kept), `step(0)`, then "
        "`finalize()`. BatchNorm statistics were recalibrated on random batches beforehand. Parameters "
        "and MACs per image are from `pruner.report()`. The finalized outputs were asserted equal to "
        f"the masked model's (atol {OUTPUT_ATOL:g}, batches of 128 and 1).",
        "",
        *size_table(structured),
        "",
        f"Inference: `eval()`, `torch.no_grad()`, dense vs finalized model, time per forward pass "
        f"(batch 1 timed in blocks of {settings['infer_block_calls_b1']} calls). "
        f"{harness.budget_text(settings['infer'], 'blocks', 'row')}",
        "",
        *inference_table(structured),
        "",
    ]
    return "\n".join(lines)


def print_summary(steps: list[StepResult], structured: list[StructuredResult]) -> None:
    """All tables on stdout."""
    print("\nMasked vs dense fine-tuning step")
    print("\n".join(step_table(steps)))
    print("\nMasking work alone")
    print("\n".join(mask_work_table(steps)))
    print("\nStructured pruning (50% of channels): sizes")
    print("\n".join(size_table(structured)))
    print("\nStructured pruning: inference, finalized vs dense")
    print("\n".join(inference_table(structured)))


def step_json(s: StepResult) -> dict[str, Any]:
    """JSON form of one step comparison."""
    return {
        "label": s.label,
        **asdict(s.comparison),
        "passes": s.passes(),
        "mask_work": {**asdict(s.mask_work), "total_s": s.mask_work.total_s},
        "pruned_weights_still_zero": s.pruned_weights_still_zero,
    }


def structured_json(r: StructuredResult) -> dict[str, Any]:
    """JSON form of one structured-pruning result."""
    return {
        "constructor": r.constructor,
        "report": r.report,
        "params_ratio": r.params_ratio,
        "macs_ratio": r.macs_ratio,
        "dense_params_counted": r.dense_params_counted,
        "finalized_params_counted": r.finalized_params_counted,
        "max_abs_output_diff": r.max_abs_output_diff,
        "outputs_equal_atol": OUTPUT_ATOL,
        "prune_s": r.prune_s,
        "finalize_s": r.finalize_s,
        "inference": {str(b): asdict(c) for b, c in r.inference.items()},
    }


def payload(info: dict[str, Any], steps: list[StepResult], structured: list[StructuredResult]) -> dict[str, Any]:
    """The whole ``pruning.json``."""
    return {
        "machine": info,
        "targets": {"masked_over_dense_step_max": STEP_TARGET},
        "step": {"sgd": step_json(steps[0]), "ceag": step_json(steps[1])},
        "structured": {r.model: structured_json(r) for r in structured},
    }


# --------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run both benchmarks, print the tables, write the results."""
    parser = harness.timing_parser(__doc__, "pruning", "few repetitions (~30 s)")
    model_parameters = sum(p.numel() for p in SmallCNN(num_classes=NUM_CLASSES).parameters())
    run = harness.begin_run(
        __file__, parser, argv, QUICK, FULL, step_model=harness.STEP_MODEL, step_model_parameters=model_parameters
    )
    settings, info = run.settings, run.info
    steps = [bench_sgd_step(settings), bench_ceag_step(settings)]
    for s in steps:
        print(f"{s.label}: masked/dense = {s.comparison.ratio:.3f} ({s.comparison.repetitions} pairs)", flush=True)
        if not s.pruned_weights_still_zero:
            raise AssertionError(f"{s.label}: pruned weights became non-zero while training")
    structured = []
    for name in STRUCTURED_MODELS:
        gc.collect()
        result = bench_structured(name, settings)
        structured.append(result)
        ratios = ", ".join(f"batch {b}: {c.ratio:.3f}" for b, c in result.inference.items())
        print(f"{name}: finalized/dense params {result.params_ratio:.3f}, MACs {result.macs_ratio:.3f}; time {ratios}")
    run.finish()

    print_summary(steps, structured)
    result = payload(info, steps, structured)
    run.write("pruning", result, markdown_report(info, steps, structured))
    return result


if __name__ == "__main__":
    main()
