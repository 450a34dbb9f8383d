"""Cost of the input validation that stays on by default, relative to a CEAG training step.

Every ``compute_cmp_state`` checks the group ids (type, shape, device, range) and that the loss
is finite. This measures those checks alone (median of blocks of 1,000 calls) and one CEAG step
on the overhead benchmark's CNN (batch 128, 100 groups, buffers on), in the same run, and
reports their ratio. Writes ``benchmarks/results/validation.{json,md}``.

    python benchmarks/validation.py
"""

from __future__ import annotations

import datetime
import json
import statistics
import time
from pathlib import Path

import torch

from ceag_cooper import CEAG, GroupMetrics, build_optimizer
from ceag_cooper._validation import check_finite, check_group_ids, check_same_device
from ceag_cooper.models import SmallCNN

RESULTS = Path(__file__).resolve().parent / "results"
GROUPS, BATCH = 100, 128


def timed(fn, repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, GROUPS, (BATCH,), generator=gen)
    loss = torch.rand((), generator=gen)

    def validate() -> None:
        check_same_device(check_group_ids(ids, GROUPS), ids.device, "group_ids")
        check_finite(loss, "the batch loss")

    counts = torch.full((GROUPS,), 10.0)
    reference = GroupMetrics(torch.full((GROUPS,), 0.8), torch.ones(GROUPS), counts, torch.tensor(0.8),
                             torch.tensor(1.0), counts.sum())  # fmt: skip
    model = SmallCNN(num_classes=5)
    problem = CEAG(reference=reference, tolerance=0.01, buffer_size=40)
    optimizer = build_optimizer(problem, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9), dual_lr=0.01)
    x, y = torch.randn(BATCH, 3, 32, 32, generator=gen), torch.randint(0, 5, (BATCH,), generator=gen)

    def step() -> None:
        optimizer.roll(compute_cmp_state_kwargs={"model": model, "inputs": x, "targets": y, "group_ids": ids})

    for _ in range(3):
        step()
        timed(validate, 200)
    checks, steps = [], []
    for _ in range(15):  # interleaved blocks
        checks.append(timed(validate, 1000))
        steps.append(timed(step, 2))
    check_s, step_s = statistics.median(checks), statistics.median(steps)
    share = check_s / step_s
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "validation_us": round(check_s * 1e6, 2),
        "ceag_step_ms": round(step_s * 1e3, 2),
        "share_of_step": share,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "validation.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "validation.md").write_text(
        "# Cost of input validation\n\n"
        f"Measured {result['date']} (torch {result['torch']}, {result['threads']} threads, 2-core CPU) with "
        "`python benchmarks/validation.py`: the checks done on every `compute_cmp_state` call (group ids: "
        f"type, shape, device, range in [0, G); finite loss) take **{result['validation_us']} µs**, against "
        f"**{result['ceag_step_ms']} ms** for one CEAG step (SmallCNN, batch {BATCH}, G = {GROUPS}, buffers on): "
        f"**{100 * share:.3f}%** of the step. They stay on by default.\n"
    )
    print((RESULTS / "validation.md").read_text())


if __name__ == "__main__":
    main()
