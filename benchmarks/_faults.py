"""Faults injected into files, shared by ``reliability.py`` and the tests (not a script).

The tests load this file by its path (``importlib``), as they load the benchmark scripts.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

LOCAL_HEADER_SIZE = 30
"""Bytes of a zip local file header before its name and extra field."""


def flip_first_tensor_byte(path: Path) -> None:
    """Flip (xor 0xFF) the first stored byte of the first tensor of a ``torch.save`` file, in place.

    A ``torch.save`` file is a zip whose entries ``.../data/0``, ``.../data/1``, ... hold the
    tensors' bytes, stored uncompressed: the byte flipped is that entry's first, right after its
    local header (fixed part, file name, extra field).
    """
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith("data/0"))
    raw = bytearray(path.read_bytes())
    header = info.header_offset
    name_length = int.from_bytes(raw[header + 26 : header + 28], "little")
    extra_length = int.from_bytes(raw[header + 28 : header + 30], "little")
    raw[header + LOCAL_HEADER_SIZE + name_length + extra_length] ^= 0xFF
    path.write_bytes(bytes(raw))
