"""The smallest experiment the pipeline runs end to end (synthetic data, an 8-unit MLP): tests share it."""

TINY = {
    "task": "synthetic",
    "model": "mlp",
    "width": 8,
    "dense_epochs": 2,
    "prune_epochs": 1,
    "finetune_epochs": 1,
    "lr_milestones": (),
}
"""Settings of a run of a few seconds; the LR is constant (``lr_milestones=()``): a run this short
would decay it before fine-tuning starts under the default schedule."""
