"""UTKFace (aligned and cropped faces) from the official ``UTKFace.tar.gz`` or its extracted folder.

Labels come from the file names, ``[age]_[gender]_[race]_[datetime].jpg.chip.jpg``; gender 0 is
male and 1 female; race 0 White, 1 Black, 2 Asian, 3 Indian, 4 Others. Decoded, resized images
are cached on disk (keyed by a hash of the archive, the size and the cache format), so only the
first run decodes the 23,708 JPEGs. The data set is for non-commercial research only.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import os
import re
import tarfile
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ceag_cooper.data.base import GroupDataset, resolve_data_dir
from ceag_cooper.progress import progress_bar

__all__ = ["AGE_BUCKET_EDGES", "UTKFACE_ATTRIBUTES", "load_utkface", "utkface_split"]

AGE_BUCKET_EDGES = (10, 15, 20, 25, 30, 40, 50, 60)
"""Age bucket boundaries of the paper's code: 9 buckets, ``[0, 10), [10, 15), ..., [60, inf)``."""

UTKFACE_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "race": ("White", "Black", "Asian", "Indian", "Others"),
    "gender": ("male", "female"),
    "age_bucket": ("<10", "10-14", "15-19", "20-24", "25-29", "30-39", "40-49", "50-59", "60+"),
}
"""The attributes of UTKFace, usable as target or protected attribute, with their value names."""

_NAME = re.compile(r"^(\d+)_([01])_([0-4])_")
OFFICIAL_FILES = 23_708
"""Image files in the official release (3 of them lack a race label and are skipped)."""
CACHE_FORMAT = 1
_MEAN, _STD = 0.5, 0.25


def _source(data_dir: Path) -> Path:
    for candidate in (data_dir / "utkface" / "UTKFace.tar.gz", data_dir / "UTKFace.tar.gz"):
        if candidate.is_file():
            return candidate
    for candidate in (data_dir / "utkface" / "UTKFace", data_dir / "UTKFace"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"UTKFace not found under {data_dir.resolve()}: expected utkface/UTKFace.tar.gz (the official archive, "
        "https://susanqq.github.io/UTKFace/) or an extracted utkface/UTKFace/ folder. Point --data-dir or "
        "CEAG_DATA_DIR at the folder that holds utkface/ (default ../shared/data; see its README.md)."
    )


def parse_name(name: str) -> tuple[int, int, int] | None:
    """``(age, gender, race)`` from a UTKFace file name, or ``None`` if a label is missing."""
    match = _NAME.match(os.path.basename(name))
    return None if match is None else (int(match[1]), int(match[2]), int(match[3]))


def _read_files(source: Path) -> list[tuple[str, bytes]]:
    """``(name, JPEG bytes)`` of every image file, in archive or directory order."""
    files = []
    if source.is_dir():
        for path in source.iterdir():
            if path.is_file() and "jpg" in path.name:
                files.append((path.name, path.read_bytes()))
        return files
    try:
        with tarfile.open(source, "r:gz") as archive:
            for member in archive:
                if member.isfile() and "jpg" in member.name:
                    handle = archive.extractfile(member)
                    files.append((os.path.basename(member.name), handle.read() if handle else b""))
            # The tar reader stops quietly at a corrupt header, and gzip checks its CRC only at the
            # end of the stream: read the rest, so that a damaged archive fails here, not silently.
            while archive.fileobj.read(1 << 22):
                pass
    except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
        raise ValueError(
            f"{source} is not a complete, readable .tar.gz archive ({type(error).__name__}: {error}); download it "
            "again."
        ) from error
    return files


def _decode(chunk: list[bytes], size: int) -> list[np.ndarray | None]:
    from PIL import Image, UnidentifiedImageError

    out: list[np.ndarray | None] = []
    for data in chunk:
        try:
            with Image.open(io.BytesIO(data)) as image:
                image.draft("RGB", (2 * size, 2 * size))  # JPEG DCT scaling: decode at low resolution
                image = image.convert("RGB").resize((size, size), Image.BILINEAR, reducing_gap=None)
                out.append(np.asarray(image, dtype=np.uint8))
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError):
            out.append(None)  # a corrupt header can also claim an absurd size (DecompressionBombError)
    return out


def _decode_all(blobs: list[bytes], size: int, workers: int, progress: bool) -> list[np.ndarray | None]:
    chunks = [blobs[i : i + 500] for i in range(0, len(blobs), 500)]
    bar = progress_bar if progress else (lambda it, **_: it)
    if workers <= 1:
        decoded = [_decode(chunk, size) for chunk in bar(chunks, description=f"decoding UTKFace at {size}px")]
    else:
        with concurrent.futures.ProcessPoolExecutor(workers) as pool:
            futures = [pool.submit(_decode, chunk, size) for chunk in chunks]
            decoded = [f.result() for f in bar(futures, description=f"decoding UTKFace at {size}px")]
    return [image for chunk in decoded for image in chunk]


def _file_hash(source: Path) -> str:
    digest = hashlib.sha256()
    if source.is_dir():
        for path in sorted(source.iterdir()):
            digest.update(path.name.encode())
            digest.update(str(path.stat().st_size).encode())
        return digest.hexdigest()[:16]
    with source.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _build(source: Path, size: int, workers: int, progress: bool) -> dict:
    files = sorted(_read_files(source))
    if not files:
        raise ValueError(f"{source} holds no UTKFace images (*.jpg); check the download.")
    labelled = [(name, data, parse_name(name)) for name, data in files]
    valid = [(name, data, labels) for name, data, labels in labelled if labels is not None]
    bad_names = [name for name, _, labels in labelled if labels is None]
    images = _decode_all([data for _, data, _ in valid], size, workers, progress)
    unreadable = [name for (name, _, _), image in zip(valid, images, strict=True) if image is None]
    blank = np.zeros((size, size, 3), dtype=np.uint8)
    return {
        "format": CACHE_FORMAT,
        "names": [name for name, _, _ in valid],
        "images": torch.from_numpy(np.stack([blank if image is None else image for image in images])),
        "labels": torch.tensor([labels for _, _, labels in valid], dtype=torch.long),
        "readable": torch.tensor([image is not None for image in images]),
        "skipped_names": bad_names,
        "unreadable": unreadable,
    }


def _load_cached(data_dir: Path, size: int, cache_dir: Path | None, workers: int, progress: bool) -> dict:
    source = _source(data_dir)
    cache_dir = Path(cache_dir) if cache_dir is not None else Path.home() / ".cache" / "ceag_cooper"
    path = cache_dir / f"utkface-{_file_hash(source)}-{size}px.pt"
    if path.exists():
        try:
            cached = torch.load(path, weights_only=True)
            if cached.get("format") == CACHE_FORMAT:
                return cached
            warnings.warn(f"{path} was written by another version of ceag-cooper; rebuilding it.", stacklevel=3)
        except Exception as error:  # any unreadable cache (truncated, foreign pickle) is rebuilt
            warnings.warn(f"{path} is unreadable ({type(error).__name__}: {error}); rebuilding it.", stacklevel=3)
    cached = _build(source, size, workers, progress)
    cache_dir.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    torch.save(cached, temporary)
    os.replace(temporary, path)
    return cached


def _check_complete(cached: dict, expected: int, source: Path) -> None:
    """Refuse to train on a fraction of the data set: every file present, every image decoded."""
    found = len(cached["names"]) + len(cached["skipped_names"])
    if found != expected:
        raise ValueError(
            f"{source} holds {found:,} image files, the official UTKFace release {expected:,}: the copy is incomplete "
            "or damaged. Download it again (https://susanqq.github.io/UTKFace/), or pass expected_files=None to load "
            "a partial copy on purpose."
        )
    if cached["unreadable"]:
        shown = ", ".join(cached["unreadable"][:3])
        raise ValueError(
            f"{source}: {len(cached['unreadable'])} image(s) do not decode ({shown}...): the copy is damaged. Download "
            "it again, or pass expected_files=None to skip them on purpose."
        )


def utkface_split(
    names: Sequence[str], *, test_fraction: float = 0.2, seed: int = 1357
) -> tuple[np.ndarray, np.ndarray]:
    """The paper's split of the sorted, labelled file names: ``(train_indices, test_indices)``.

    ``numpy.random.RandomState(seed).permutation(N)``; the first ``int(test_fraction * N)``
    indices are the test set.
    """
    permutation = np.random.RandomState(seed).permutation(len(names))
    cut = int(test_fraction * len(names))
    return permutation[cut:], permutation[:cut]


def load_utkface(
    data_dir: str | os.PathLike | None = None,
    *,
    split: str = "train",
    target: str = "race",
    protected: Sequence[str] = ("race",),
    size: int = 32,
    cache_dir: str | os.PathLike | None = None,
    workers: int | None = None,
    progress: bool = True,
    expected_files: int | None = OFFICIAL_FILES,
) -> GroupDataset:
    """Load UTKFace as a :class:`GroupDataset` of normalized ``(3, size, size)`` images.

    Args:
        data_dir: the folder holding ``utkface/`` (default ``$CEAG_DATA_DIR`` or ``../shared/data``).
        split: ``"train"`` (18,964 images), ``"test"`` (4,741) or ``"all"`` (the paper's split).
        target: ``"race"``, ``"gender"`` or ``"age_bucket"``.
        protected: the protected attributes, any of the same three (the target too: allowed,
            and then the groups are the classes).
        size: image side in pixels after resizing.
        cache_dir: where decoded images are cached (default ``~/.cache/ceag_cooper``).
        workers: decoding processes on the first run (default: up to 2).
        progress: show a progress bar while decoding.
        expected_files: the number of image files the source must hold, and then every image must
            decode (default: the official release's 23,708). ``None`` loads whatever is there, on
            purpose (a subset, a modified copy), skipping undecodable images with a warning.

    Raises:
        FileNotFoundError: no archive or folder under ``data_dir`` (the message says where to put it).
        ValueError: an unknown split or attribute, an unreadable or damaged archive, or a source
            that is incomplete (fewer files than ``expected_files``, or images that do not decode).
    """
    for name in (target, *protected):
        if name not in UTKFACE_ATTRIBUTES:
            raise ValueError(f"unknown UTKFace attribute {name!r}; choose among {list(UTKFACE_ATTRIBUTES)}.")
    if split not in ("train", "test", "all"):
        raise ValueError(f"`split` must be 'train', 'test' or 'all', got {split!r}.")
    if not protected:
        raise ValueError("`protected` is empty: name at least one protected attribute (e.g. 'race').")
    if target in protected:
        warnings.warn(
            f"the target {target!r} is also a protected attribute: the groups are then the classes "
            "(per-class accuracy gaps), which is allowed.",
            stacklevel=2,
        )
    data_dir = resolve_data_dir(data_dir)
    cached = _load_cached(data_dir, size, cache_dir, workers or min(2, os.cpu_count() or 1), progress)
    if expected_files is not None:
        _check_complete(cached, expected_files, _source(data_dir))
    if cached["skipped_names"] or cached["unreadable"]:
        warnings.warn(
            f"UTKFace: skipped {len(cached['skipped_names'])} file(s) whose names lack labels "
            f"({', '.join(cached['skipped_names'][:3])}{'...' if len(cached['skipped_names']) > 3 else ''}) "
            f"and {len(cached['unreadable'])} unreadable image(s).",
            stacklevel=2,
        )
    train, test = utkface_split(cached["names"])
    indices = {"train": train, "test": test, "all": np.arange(len(cached["names"]))}[split]
    indices = torch.from_numpy(np.sort(indices))
    indices = indices[cached["readable"][indices]]
    age, gender, race = cached["labels"][indices].T.contiguous()
    columns = {
        "race": race,
        "gender": gender,
        "age_bucket": torch.bucketize(age, torch.tensor(AGE_BUCKET_EDGES), right=True),
    }
    images = cached["images"][indices].permute(0, 3, 1, 2).float().div_(255.0).sub_(_MEAN).div_(_STD)
    return GroupDataset(
        inputs=images,
        targets=columns[target],
        attributes=torch.stack([columns[name] for name in protected], dim=1),
        attribute_names=tuple(protected),
        value_names=tuple(UTKFACE_ATTRIBUTES[name] for name in protected),
        class_names=UTKFACE_ATTRIBUTES[target],
        name=f"UTKFace-{split}-{size}px",
    )
