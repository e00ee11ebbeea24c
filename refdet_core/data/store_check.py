"""What a frame store folder holds, and whether its files are whole: the checks behind reusing, opening and
replacing a store (``data/store.py``)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from refdet_core.destination import foreign_entries

INDEX = "index.json"
_STORE_ENTRY = re.compile(r"^(index\.json|\d+\.npy|\d+)$")  # what a store folder holds


class StoreError(RuntimeError):
    """A frame store that is missing, incomplete or asked for a frame it does not keep."""


def layout_inputs(layout: Any) -> list[Path]:
    """What a store is built from, never to be replaced by it: the layout's samples and annotations folders."""
    root = Path(layout.root)
    return [root / "samples", root / "annotations"]


def store_foreign(folder: Path) -> list[str]:
    """Entries of ``folder`` that are no frame store's (every entry when it has no store index)."""
    if not (folder / INDEX).is_file():
        return sorted(p.name for p in folder.iterdir())
    return foreign_entries(folder, lambda n: bool(_STORE_ENTRY.match(n)))


def is_store(folder: Path) -> bool:
    """A folder holding a store index and nothing a store does not write."""
    return (folder / INDEX).is_file() and not store_foreign(folder)


def read_index(folder: Path) -> dict:
    """The store's ``index.json``; ``StoreError`` naming it when it is not a readable index."""
    path = Path(folder) / INDEX
    try:
        index = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise StoreError(f"{path}: corrupt frame store index ({err})") from None
    if not isinstance(index, dict) or not isinstance(index.get("videos"), dict) or "img_size" not in index:
        raise StoreError(f"{path}: not a frame store index")
    return index


def _npy_bytes(path: Path) -> tuple[tuple[int, ...], int]:
    """(shape, expected file size) from a ``.npy`` header."""
    with open(path, "rb") as f:
        major, _ = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(f)
        return tuple(shape), f.tell() + int(np.prod(shape)) * np.dtype(dtype).itemsize


def damaged_file(root: Path, index: dict) -> str | None:
    """The first file of the store that is missing or not the size its index says (None: all present)."""
    size = int(index["img_size"])
    for vid, entry in index["videos"].items():
        path = root / entry["file"]
        if index.get("fmt") == "npy":
            if not path.is_file():
                return f"{path}: missing"
            try:
                shape, expected = _npy_bytes(path)
            except (OSError, ValueError) as err:
                return f"{path}: unreadable ({err})"
            if shape != (len(entry["frames"]), size, size, 3) or path.stat().st_size != expected:
                return f"{path}: {path.stat().st_size} bytes, expected {expected} for {len(entry['frames'])} frames"
        elif not path.is_dir() or len(list(path.glob("*.jpg"))) != len(entry["frames"]):
            return f"{path}: frames of {vid} missing"
    return None
