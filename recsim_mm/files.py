"""Files written safely: atomic publish, checkpoint save/verify and source-code hashing.

One helper per job, used by every module that writes results or caches:

- `atomic_write`: write through a temporary file in the same folder, flush, fsync,
  then rename over the target; readers (and a later run) see the old file or the
  new one, never half of one, and an interrupted write leaves only a ``*.tmp`` file
  that nothing reads.
- `atomic_torch_save` / `write_json`: `atomic_write` for ``torch.save`` payloads and
  JSON documents.
- `load_checkpoint`: ``torch.load(..., weights_only=True)`` plus a check of the
  payload's ``format`` tag, with errors that name the file.
- `source_hash`: a short SHA-256 of Python sources, so a cache key covers the code
  that produced the cached result.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

import torch


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Create or replace ``path`` atomically: ``write(f)`` fills a temporary binary file
    in the same folder, which is flushed, fsync'ed and renamed over ``path``.

    The temporary name is unique (``<name>.<random>.tmp``), so concurrent writers never
    share one, and it is removed when ``write`` raises.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_torch_save(payload: Any, path: str | Path) -> None:
    """``torch.save(payload)`` to ``path`` through `atomic_write`."""
    atomic_write(path, lambda f: torch.save(payload, f))


def write_json(path: str | Path, data: Any) -> None:
    """``data`` as indented, key-sorted JSON (``str`` for other types), written atomically."""
    text = json.dumps(data, indent=1, sort_keys=True, default=str)
    atomic_write(path, lambda f: f.write(text.encode()))


def load_checkpoint(path: str | Path, expected_format: str, what: str = "checkpoint",
                    map_location: str | torch.device = "cpu") -> dict:
    """Read a ``.pt`` payload with ``weights_only=True`` and check its ``format`` tag.

    Args:
        path: the file.
        expected_format: the value its ``"format"`` entry must have.
        what: how errors name the file's kind (e.g. ``"agent checkpoint"``).
        map_location: where tensors are loaded.

    Raises:
        ValueError: the file cannot be read, is not a mapping, or has another format;
            the message names the file and what was expected.
    """
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for a missing or damaged file
        raise ValueError(f"{path}: not a readable {what} ({type(exc).__name__}: {exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != expected_format:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"{path}: not a {what} (format {found!r}; expected {expected_format!r})")
    return payload


def source_hash(files: Iterable[str | Path], root: str | Path | None = None, length: int = 12) -> str:
    """Short SHA-256 over source files: their paths (relative to ``root`` when given) and bytes.

    Args:
        files: files, or folders whose ``*.py`` files (recursively, sorted) are hashed.
        root: paths are hashed relative to it, so the hash does not depend on where the
            repository is checked out.
        length: hex digits kept.
    """
    h = hashlib.sha256()
    for entry in files:
        entry = Path(entry)
        for file in sorted(entry.rglob("*.py")) if entry.is_dir() else [entry]:
            name = file.relative_to(root) if root is not None else Path(file.name)
            h.update(str(name).encode() + b"\0" + file.read_bytes())
    return h.hexdigest()[:length]
