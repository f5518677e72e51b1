"""The ANN index saved at a clean stop, with the model version whose vectors it holds, so that the next
start reads it back instead of rebuilding it (minutes at a million items)."""

from __future__ import annotations

import struct
from pathlib import Path

from foryou.datadir import write_private
from foryou.retrieval.ann import VectorIndex, restore_index

INDEX_FILE = "ann-index.bin"  # in the data directory


def save(path: Path, version: int, index: VectorIndex) -> None:
    tmp = path.with_suffix(".tmp")
    write_private(tmp, struct.pack("<q", version) + index.to_bytes())
    tmp.replace(path)


def load(path: Path, like: VectorIndex) -> tuple[int, VectorIndex] | None:
    """(model version, index) as saved, if there is one of `like`'s kind and width (the settings may
    have changed since); None otherwise."""
    try:
        data = path.read_bytes()
        version = struct.unpack("<q", data[:8])[0]
        index = restore_index(data[8:])
    except (OSError, ValueError, struct.error):
        return None
    if index.dim != like.dim or type(index) is not type(like):
        return None
    return int(version), index
