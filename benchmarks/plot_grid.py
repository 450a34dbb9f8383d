"""Plot a grid's results: per-group ψ_g of chosen methods, and max ψ against sparsity.

Reads ``benchmarks/results/<grid>.json`` (written by ``run_grid.py``) and writes two PNGs to
``docs/figures/`` (``--figures``; images live under docs/; needs the ``plot`` extra):

- ``<grid>_psi_by_group.png``: ψ_g per group, one bar per method (default NFT and CEAG), mean
  over seeds with the seeds' range as error bars; train and test side by side, one row per
  sparsity; the dashed line is ε.
- ``<grid>_max_psi_vs_sparsity.png``: max_g ψ_g against sparsity for every method, mean ± std
  over seeds, train and test.

    python benchmarks/plot_grid.py --grid utk_race
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run_grid import RESULTS_DIR, short_name

from ceag_cooper.experiments import METHODS

SPLITS = ("train", "test")
FIGURES_DIR = Path(__file__).resolve().parents[1] / "docs" / "figures"


def _cells(payload: dict[str, Any], sparsity: float, method: str) -> list[dict[str, Any]]:
    return [c for c in payload["cells"] if c["config"]["sparsity"] == sparsity and c["config"]["method"] == method]


def plot_psi_by_group(payload: dict[str, Any], path: Path, *, methods: Sequence[str]) -> Path:
    """ψ_g bars per group for ``methods``, train and test, one row per sparsity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sparsities = sorted({c["config"]["sparsity"] for c in payload["cells"]})
    groups = list(payload["cells"][0]["reports"]["train"]["by_group"])
    tolerance = payload["cells"][0]["config"]["tolerance"]
    size = (max(8.0, 1.4 * len(groups) * len(methods)), 3.6 * len(sparsities))
    fig, axes = plt.subplots(len(sparsities), 2, figsize=size, squeeze=False, sharey=True)
    x = np.arange(len(groups))
    width = 0.8 / len(methods)
    for row, sparsity in enumerate(sparsities):
        for col, split in enumerate(SPLITS):
            ax = axes[row][col]
            for i, method in enumerate(methods):
                cells = _cells(payload, sparsity, method)
                if not cells:
                    continue
                psi = 100 * np.array([[c["reports"][split]["by_group"][g]["psi"] for g in groups] for c in cells])
                mean = psi.mean(0)
                errors = np.stack([mean - psi.min(0), psi.max(0) - mean])
                worst = 100 * np.mean([c["reports"][split]["overall"]["max_psi"] for c in cells])
                label = f"{method} (max ψ {worst:.1f}, {len(cells)} seed(s))"
                ax.bar(x - 0.4 + width * (i + 0.5), mean, width=width, yerr=errors, capsize=2, label=label)
            ax.axhline(100 * tolerance, color="tab:red", linestyle="--", linewidth=1, label=f"ε = {100 * tolerance:g}")
            ax.axhline(0, color="black", linewidth=0.8)
            ax.set_xticks(x)
            ax.set_xticklabels([short_name(g) for g in groups], rotation=45 if len(groups) > 5 else 0)
            ax.set_title(f"{split}, {100 * sparsity:g}% sparsity")
            ax.legend(fontsize=8, loc="upper left")
        axes[row][0].set_ylabel("ψ_g (accuracy points)")
    fig.suptitle(f"{payload['grid']}: excess accuracy gap per group (bars: mean over seeds; whiskers: range)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_max_psi_vs_sparsity(payload: dict[str, Any], path: Path) -> Path:
    """max ψ against sparsity, one line per method, train and test."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in METHODS if any(c["config"]["method"] == m for c in payload["cells"])]
    sparsities = sorted({c["config"]["sparsity"] for c in payload["cells"]})
    tolerance = payload["cells"][0]["config"]["tolerance"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, split in zip(axes, SPLITS, strict=True):
        for method in methods:
            xs, means, stds = [], [], []
            for sparsity in sparsities:
                values = [100 * c["reports"][split]["overall"]["max_psi"] for c in _cells(payload, sparsity, method)]
                if values:
                    xs.append(100 * sparsity)
                    means.append(np.mean(values))
                    stds.append(np.std(values, ddof=1) if len(values) > 1 else 0.0)
            ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=method)
        ax.axhline(100 * tolerance, color="tab:red", linestyle="--", linewidth=1, label=f"ε = {100 * tolerance:g}")
        ax.set_xlabel("sparsity (%)")
        ax.set_xticks([100 * s for s in sparsities])
        ax.set_title(split)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("max_g ψ_g (accuracy points)")
    axes[1].legend(fontsize=8)
    fig.suptitle(f"{payload['grid']}: worst excess accuracy gap vs sparsity (mean ± std over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> list[Path]:
    """Write both plots of ``--grid`` next to its results JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", required=True)
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="folder holding <grid>.json")
    parser.add_argument("--figures", type=Path, default=FIGURES_DIR, help="where the PNGs go")
    parser.add_argument("--methods", nargs="+", default=("nft", "ceag"), help="methods of the per-group plot")
    args = parser.parse_args(argv)
    source = args.results / f"{args.grid}.json"
    if not source.exists():
        raise SystemExit(f"{source} not found: run `python benchmarks/run_grid.py --grid {args.grid}` first.")
    payload = json.loads(source.read_text())
    args.figures.mkdir(parents=True, exist_ok=True)
    unknown = set(args.methods) - {c["config"]["method"] for c in payload["cells"]}
    if unknown:
        raise SystemExit(f"no cells for method(s) {sorted(unknown)} in {source}.")
    paths = [
        plot_psi_by_group(payload, args.figures / f"{args.grid}_psi_by_group.png", methods=args.methods),
        plot_max_psi_vs_sparsity(payload, args.figures / f"{args.grid}_max_psi_vs_sparsity.png"),
    ]
    for path in paths:
        print(f"wrote {path}")
    return paths


if __name__ == "__main__":
    main()
