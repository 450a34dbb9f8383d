"""FairFace from its label CSVs and image folder (``fairface_label_{train,val}.csv``)."""

from __future__ import annotations

import csv
import os
import warnings
from collections.abc import Sequence

import numpy as np
import torch

from ceag_cooper.data.base import GroupDataset, resolve_data_dir

__all__ = ["FAIRFACE_ATTRIBUTES", "load_fairface"]

FAIRFACE_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "race": ("White", "Black", "Latino_Hispanic", "East Asian", "Southeast Asian", "Indian", "Middle Eastern"),
    "gender": ("Male", "Female"),
    "age": ("0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "more than 70"),
}
"""FairFace's label columns and their values, in id order."""


def load_fairface(
    data_dir: str | os.PathLike | None = None,
    *,
    split: str = "train",
    target: str = "race",
    protected: Sequence[str] = ("race",),
    size: int = 32,
) -> GroupDataset:
    """FairFace images listed in ``fairface/fairface_label_{train,val}.csv``.

    The CSV columns are ``file,age,gender,race,service_test``; ``file`` is relative to the CSV's
    folder (e.g. ``train/1.jpg``) or to ``fairface-img-margin025-trainval/`` beside it. Rows with
    an unknown label or an unreadable image are skipped and counted in a warning.

    Args:
        data_dir: folder holding ``fairface/`` (default ``$CEAG_DATA_DIR`` or ``../shared/data``).
        split: ``"train"`` or ``"val"``.
        target: ``"race"``, ``"gender"`` or ``"age"``.
        protected: protected attributes among the same three.
        size: image side after resizing.
    """
    from PIL import Image, UnidentifiedImageError

    for name in (target, *protected):
        if name not in FAIRFACE_ATTRIBUTES:
            raise ValueError(f"unknown FairFace attribute {name!r}; choose among {list(FAIRFACE_ATTRIBUTES)}.")
    if split not in ("train", "val"):
        raise ValueError(f"`split` must be 'train' or 'val', got {split!r}.")
    folder = resolve_data_dir(data_dir) / "fairface"
    labels = folder / f"fairface_label_{split}.csv"
    if not labels.is_file():
        raise FileNotFoundError(
            f"{labels} not found: FairFace needs its label CSVs and image folder under fairface/ "
            "(--data-dir / CEAG_DATA_DIR)."
        )
    roots = [folder, folder / "fairface-img-margin025-trainval"]
    images, rows, skipped = [], [], 0
    with labels.open(newline="") as handle:
        for record in csv.DictReader(handle):
            values = {k: record.get(k, "").strip() for k in FAIRFACE_ATTRIBUTES}
            if any(values[k] not in FAIRFACE_ATTRIBUTES[k] for k in FAIRFACE_ATTRIBUTES):
                skipped += 1
                continue
            path = next((root / record["file"] for root in roots if (root / record["file"]).is_file()), None)
            try:
                if path is None:
                    raise FileNotFoundError(record["file"])
                with Image.open(path) as image:
                    images.append(np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR)))
            except (OSError, UnidentifiedImageError):
                skipped += 1
                continue
            rows.append([FAIRFACE_ATTRIBUTES[k].index(values[k]) for k in FAIRFACE_ATTRIBUTES])
    if skipped:
        warnings.warn(
            f"FairFace {split}: skipped {skipped} row(s) with unknown labels or unreadable images.", stacklevel=2
        )
    if not rows:
        raise ValueError(f"{labels} lists no usable image.")
    table = torch.tensor(rows, dtype=torch.long)
    column = {k: table[:, i] for i, k in enumerate(FAIRFACE_ATTRIBUTES)}
    inputs = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div(255.0).sub(0.5).div(0.25)
    return GroupDataset(
        inputs=inputs,
        targets=column[target],
        attributes=torch.stack([column[k] for k in protected], dim=1),
        attribute_names=tuple(protected),
        value_names=tuple(FAIRFACE_ATTRIBUTES[k] for k in protected),
        class_names=FAIRFACE_ATTRIBUTES[target],
        name=f"FairFace-{split}-{size}px",
    )
