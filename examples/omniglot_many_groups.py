"""Many groups: Omniglot, 242 characters as classes *and* as groups (one constraint per class).

Uses the experiment pipeline (the same one as ``ceag-cooper prune``): NFT and CEAG share one
dense model, and CEAG's 242 constraints share one indexed multiplier and one (242, k) buffer.

    python examples/omniglot_many_groups.py [--sparsity 0.9] [--dense-epochs 30]
"""

from __future__ import annotations

import argparse

from ceag_cooper.experiments import ExperimentConfig, load_task, run_experiment
from ceag_cooper.experiments.results import results_table


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None, help="folder holding omniglot/")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--dense-epochs", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=10, help="pruning + fine-tuning epochs")
    parser.add_argument("--output-dir", default="outputs/omniglot")
    parser.add_argument("--subset", type=int, default=None)
    args = parser.parse_args(argv)

    config = ExperimentConfig(
        task="omniglot", target="character", protected=("character",), image_size=28, model="small_cnn",
        width=16, batch_size=64, dense_epochs=args.dense_epochs, dense_lr=0.05, augment=False,
        sparsity=args.sparsity, prune_epochs=max(1, args.epochs // 2), finetune_epochs=args.epochs - args.epochs // 2,
        lr=0.01, tolerance=0.02, buffer_size=10, dual_lr=0.05, data_dir=args.data_dir, output_dir=args.output_dir,
        lr_milestones=(),  # a constant LR: a few epochs are too few for the default schedule (0.6, 0.8, 0.9)
        subset=args.subset,
    )  # fmt: skip
    task = load_task(config)
    print(f"{len(task.train)} training images, {task.spec.num_groups} groups")
    results = [
        run_experiment(ExperimentConfig.from_dict({**vars(config), "method": method}), task=task)
        for method in ("nft", "el_rb", "ceag")
    ]
    print(results_table(results))
    return results


if __name__ == "__main__":
    main()
