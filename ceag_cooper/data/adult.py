"""UCI Adult (census income) from its original CSV files: tabular, binary target income > 50K."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ceag_cooper.data.base import GroupDataset, resolve_data_dir

__all__ = ["ADULT_ATTRIBUTES", "ADULT_COLUMNS", "AGE_EDGES", "MERGED_OCCUPATIONS", "load_adult"]

ADULT_COLUMNS = (
    "age", "workclass", "fnlwgt", "education", "education-num", "marital-status", "occupation",
    "relationship", "race", "sex", "capital-gain", "capital-loss", "hours-per-week", "native-country", "income",
)  # fmt: skip
_NUMERIC = ("age", "fnlwgt", "education-num", "capital-gain", "capital-loss", "hours-per-week")
ADULT_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "sex": ("Male", "Female"),
    "race": ("White", "Black", "Asian-Pac-Islander", "Amer-Indian-Eskimo", "Other"),
    "age_bucket": ("17-24", "25-34", "35-44", "45-54", "55-64", "65+"),
    "occupation": (
        "Adm-clerical", "Craft-repair", "Exec-managerial", "Farming-fishing", "Handlers-cleaners",
        "Machine-op-inspct", "Other-service", "Prof-specialty", "Protective-serv", "Sales", "Tech-support",
        "Transport-moving", "?",
    ),
}  # fmt: skip
"""Protected attributes of Adult and their values (in id order). ``age_bucket`` buckets the age
column at 25, 35, 45, 55 and 65. ``occupation`` keeps ``?`` (missing) as a value and merges the two
smallest occupations into their nearest (:data:`MERGED_OCCUPATIONS`), whose 9 and 149 people would
otherwise leave groups empty. ``sex`` x ``age_bucket`` x ``occupation`` is a many-groups task whose
groups can be measured (issue #15; sizes in ``docs/concepts.md#many-groups``)."""
MERGED_OCCUPATIONS = {"Armed-Forces": "Protective-serv", "Priv-house-serv": "Other-service"}
"""Occupations counted as another one in the protected attribute (the features keep them apart)."""
AGE_EDGES = (25, 35, 45, 55, 65)
"""Lower bounds of ``age_bucket``'s values after the first."""


def _attribute_value(name: str, raw: str) -> str:
    """The value of protected attribute ``name`` in a CSV field (ages are bucketed)."""
    if name == "age_bucket":
        return ADULT_ATTRIBUTES[name][sum(int(raw) >= edge for edge in AGE_EDGES)]
    if name == "occupation":
        return MERGED_OCCUPATIONS.get(raw, raw)
    return raw


def _read(path: Path) -> list[list[str]]:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: Adult needs adult/adult.data and adult/adult.test (UCI Machine Learning "
            "Repository) under --data-dir / CEAG_DATA_DIR (default ../shared/data)."
        )
    rows = []
    for line_number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = [field.strip() for field in line.split(",")]
        if len(fields) == len(ADULT_COLUMNS):
            rows.append(fields)
        elif line.strip() and not line.startswith("|"):
            raise ValueError(f"{path}:{line_number}: expected {len(ADULT_COLUMNS)} fields, got {len(fields)}.")
    return rows


def load_adult(
    data_dir: str | os.PathLike | None = None, *, protected: Sequence[str] = ("sex",)
) -> tuple[GroupDataset, GroupDataset]:
    """Train and test sets of Adult, preprocessed with statistics of the training set only.

    Categorical columns are one-hot encoded (categories seen in training; ``?`` is a category),
    numeric columns standardized. The target is ``income > 50K`` (the test file's trailing ``.``
    is removed). Protected attributes stay among the features, as in the usual benchmark.

    Args:
        data_dir: folder holding ``adult/`` (default ``$CEAG_DATA_DIR`` or ``../shared/data``).
        protected: any of :data:`ADULT_ATTRIBUTES` (``"sex"``, ``"race"``, ``"age_bucket"``,
            ``"occupation"``); several give intersectional or marginal groups via ``GroupSpec``.

    Returns:
        ``(train, test)`` :class:`GroupDataset` with float features.
    """
    for name in protected:
        if name not in ADULT_ATTRIBUTES:
            raise ValueError(f"unknown Adult attribute {name!r}; choose among {list(ADULT_ATTRIBUTES)}.")
    folder = resolve_data_dir(data_dir) / "adult"
    train_rows, test_rows = _read(folder / "adult.data"), _read(folder / "adult.test")
    index = {name: i for i, name in enumerate(ADULT_COLUMNS)}
    categorical = [c for c in ADULT_COLUMNS[:-1] if c not in _NUMERIC]
    categories = {c: sorted({row[index[c]] for row in train_rows}) for c in categorical}
    numeric_train = np.array([[float(row[index[c]]) for c in _NUMERIC] for row in train_rows])
    mean, std = numeric_train.mean(0), numeric_train.std(0) + 1e-8

    def build(rows: list[list[str]], split: str) -> GroupDataset:
        numeric = (np.array([[float(row[index[c]]) for c in _NUMERIC] for row in rows]) - mean) / std
        blocks = [numeric]
        for column in categorical:
            lookup = {value: i for i, value in enumerate(categories[column])}
            one_hot = np.zeros((len(rows), len(lookup)))
            for r, row in enumerate(rows):
                if row[index[column]] in lookup:  # a category unseen in training is all zeros
                    one_hot[r, lookup[row[index[column]]]] = 1.0
            blocks.append(one_hot)
        targets = [row[index["income"]].rstrip(".") == ">50K" for row in rows]
        attributes = []
        for name in protected:
            values = ADULT_ATTRIBUTES[name]
            column = "age" if name == "age_bucket" else name
            raw = [_attribute_value(name, row[index[column]]) for row in rows]
            unknown = set(raw) - set(values)
            if unknown:
                raise ValueError(f"Adult {split}: unexpected {name} values {sorted(unknown)}.")
            lookup = {value: i for i, value in enumerate(values)}
            attributes.append([lookup[value] for value in raw])
        return GroupDataset(
            inputs=torch.tensor(np.concatenate(blocks, axis=1), dtype=torch.float32),
            targets=torch.tensor(targets, dtype=torch.long),
            attributes=torch.tensor(attributes, dtype=torch.long).T.contiguous(),
            attribute_names=tuple(protected),
            value_names=tuple(ADULT_ATTRIBUTES[name] for name in protected),
            class_names=("<=50K", ">50K"),
            name=f"Adult-{split}",
        )

    return build(train_rows, "train"), build(test_rows, "test")
