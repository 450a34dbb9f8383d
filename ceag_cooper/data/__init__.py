"""Data sets that return ``(inputs, targets, protected_attributes)``, read from their real formats.

Nothing is downloaded: each loader takes the folder that holds the data (``--data-dir`` /
``$CEAG_DATA_DIR``, default ``../shared/data``) and says where the files should be if they are not.
"""

from ceag_cooper.data.adult import ADULT_ATTRIBUTES, load_adult
from ceag_cooper.data.base import DEFAULT_DATA_DIR, GroupDataset, resolve_data_dir
from ceag_cooper.data.cifar100 import load_cifar100
from ceag_cooper.data.fairface import FAIRFACE_ATTRIBUTES, load_fairface
from ceag_cooper.data.omniglot import load_omniglot
from ceag_cooper.data.splits import DATA_SETS, load_splits
from ceag_cooper.data.synthetic import SyntheticGroupTask, load_synthetic, make_group_imbalanced_task
from ceag_cooper.data.utkface import AGE_BUCKET_EDGES, UTKFACE_ATTRIBUTES, load_utkface, utkface_split

__all__ = [
    "ADULT_ATTRIBUTES",
    "AGE_BUCKET_EDGES",
    "DATA_SETS",
    "DEFAULT_DATA_DIR",
    "FAIRFACE_ATTRIBUTES",
    "UTKFACE_ATTRIBUTES",
    "GroupDataset",
    "SyntheticGroupTask",
    "load_adult",
    "load_cifar100",
    "load_fairface",
    "load_omniglot",
    "load_splits",
    "load_synthetic",
    "load_utkface",
    "make_group_imbalanced_task",
    "resolve_data_dir",
    "utkface_split",
]
