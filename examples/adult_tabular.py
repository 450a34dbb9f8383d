"""Tabular data: UCI Adult (income > 50K), groups sex x race (10, intersectional), an MLP.

python examples/adult_tabular.py [--sparsity 0.9]
"""

from __future__ import annotations

import argparse

from ceag_cooper.experiments import ExperimentConfig, load_task, run_experiment
from ceag_cooper.experiments.results import results_table


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None, help="folder holding adult/")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--dense-epochs", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--output-dir", default="outputs/adult")
    args = parser.parse_args(argv)

    config = ExperimentConfig(
        task="adult", target="income", protected=("sex", "race"), model="mlp", width=32, batch_size=256,
        dense_epochs=args.dense_epochs, dense_lr=0.05, augment=False, sparsity=args.sparsity,
        prune_epochs=max(1, args.epochs // 2), finetune_epochs=args.epochs - args.epochs // 2, lr=0.01,
        lr_milestones=(),  # a constant LR: a few epochs are too few for the default schedule (0.6, 0.8, 0.9)
        tolerance=0.01, buffer_size=40, dual_lr=0.01, data_dir=args.data_dir, output_dir=args.output_dir,
    )  # fmt: skip
    task = load_task(config)
    print(f"{len(task.train)} rows, {task.train.inputs.shape[1]} features, groups: {task.spec.group_names}")
    results = [
        run_experiment(ExperimentConfig.from_dict({**vars(config), "method": method}), task=task)
        for method in ("nft", "ceag")
    ]
    print(results_table(results))
    return results


if __name__ == "__main__":
    main()
