"""Omniglot "small" background sets: hand-drawn characters, for problems with many groups."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from ceag_cooper.data.base import GroupDataset, resolve_data_dir

__all__ = ["load_omniglot"]

_ZIPS = ("images_background_small1.zip", "images_background_small2.zip")
OFFICIAL_CHARACTERS, OFFICIAL_IMAGES = 242, 4_840
"""What the two "small" background sets hold together, once deduplicated (20 drawings each)."""


def _images(folder: Path) -> dict[tuple[str, str, str], bytes]:
    """``(alphabet, character, file) -> PNG bytes``, deduplicated across the two zips."""
    found: dict[tuple[str, str, str], bytes] = {}
    missing = [name for name in _ZIPS if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"Omniglot incomplete or not found: {' and '.join(missing)} missing in {folder.resolve()}; both "
            f"{' and '.join(_ZIPS)} are needed (--data-dir / CEAG_DATA_DIR should hold omniglot/)."
        )
    for path in (folder / name for name in _ZIPS):
        try:
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()  # CRC of every member: a damaged zip fails here, not silently
                if bad is not None:
                    raise zipfile.BadZipFile(f"member {bad} fails its CRC check")
                for info in archive.infolist():
                    parts = info.filename.split("/")
                    if len(parts) == 4 and parts[3].endswith(".png"):
                        found.setdefault((parts[1], parts[2], parts[3]), archive.read(info))
        except (zipfile.BadZipFile, OSError, EOFError) as error:
            raise ValueError(f"{path} is not a complete, readable zip ({error}); download it again.") from error
    return found


def load_omniglot(
    data_dir: str | os.PathLike | None = None,
    *,
    size: int = 28,
    test_drawers: int = 5,
    groups: str = "character",
    expected_images: int | None = OFFICIAL_IMAGES,
) -> tuple[GroupDataset, GroupDataset]:
    """Omniglot as a 242-way character classification, split by drawer.

    Each character was drawn by 20 people; the last ``test_drawers`` drawers (by drawer number)
    form the test set. The target is the character; the protected attribute is the character
    itself (``groups="character"``: 242 groups, one per class) or its alphabet (8 groups).

    Args:
        data_dir: the folder holding ``omniglot/`` (default ``$CEAG_DATA_DIR`` or ``../shared/data``).
        size: image side after resizing.
        test_drawers: how many drawers (the last by number) form the test split.
        groups: ``"character"`` or ``"alphabet"``.
        expected_images: distinct drawings the two zips must hold together (default: the official
            4,840 of 242 characters); ``None`` loads whatever is there, on purpose.

    Returns:
        ``(train, test)`` :class:`GroupDataset` of ``(1, size, size)`` images (ink = 1).

    Raises:
        FileNotFoundError: a zip is missing (both are needed).
        ValueError: a damaged zip, or fewer drawings than ``expected_images``.
    """
    from PIL import Image

    if groups not in ("character", "alphabet"):
        raise ValueError(f"`groups` must be 'character' or 'alphabet', got {groups!r}.")
    images = _images(resolve_data_dir(data_dir) / "omniglot")
    keys = sorted(images)
    characters = sorted({(a, c) for a, c, _ in keys})
    if expected_images is not None and len(keys) != expected_images:
        raise ValueError(
            f"Omniglot: the zips hold {len(keys):,} distinct drawings of {len(characters)} characters, the official "
            f"small background sets {OFFICIAL_IMAGES:,} of {OFFICIAL_CHARACTERS}: a copy is incomplete or damaged. "
            "Download it again, or pass expected_images=None to load a partial copy on purpose."
        )
    alphabets = sorted({a for a, _ in characters})
    drawers = sorted({int(f.split("_")[1].split(".")[0]) for _, _, f in keys})
    if not 0 < test_drawers < len(drawers):
        raise ValueError(f"`test_drawers` must be in [1, {len(drawers) - 1}], got {test_drawers}.")
    test_set = set(drawers[-test_drawers:])
    pixels, labels, alphabet_ids, is_test = [], [], [], []
    for alphabet, character, file in keys:
        with Image.open(io.BytesIO(images[(alphabet, character, file)])) as image:
            gray = image.convert("L").resize((size, size), Image.BILINEAR)
        pixels.append(1.0 - np.asarray(gray, dtype=np.float32) / 255.0)
        labels.append(characters.index((alphabet, character)))
        alphabet_ids.append(alphabets.index(alphabet))
        is_test.append(int(file.split("_")[1].split(".")[0]) in test_set)
    inputs = torch.from_numpy(np.stack(pixels)).unsqueeze(1)
    targets = torch.tensor(labels)
    mask = torch.tensor(is_test)
    class_names = tuple(f"{a}/{c}" for a, c in characters)
    attribute = targets if groups == "character" else torch.tensor(alphabet_ids)
    values = class_names if groups == "character" else tuple(alphabets)

    def build(rows: torch.Tensor, split: str) -> GroupDataset:
        return GroupDataset(
            inputs=inputs[rows],
            targets=targets[rows],
            attributes=attribute[rows].unsqueeze(1),
            attribute_names=(groups,),
            value_names=(values,),
            class_names=class_names,
            name=f"Omniglot-{split}",
        )

    return build(~mask, "train"), build(mask, "test")
