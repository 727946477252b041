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
- `file_lock`: an exclusive ``fcntl.flock`` on a lock file, so processes sharing a
  folder (several runs, or Ray workers on several nodes of one shared file system)
  compute a cached result once: take the lock, check whether it is finished, compute
  and publish it only if not. The kernel drops the lock when its holder dies, so a
  killed worker never blocks the next one.

NFS caveat: ``flock`` is coordinated between machines only where the file system
supports it (Linux maps it onto NFS byte-range locks, NFSv4 or NFSv3 with a working
``lockd``; a ``nolock`` mount makes it node-local, and some FUSE/object-store mounts
ignore it). Where it is node-local, two nodes may compute the same result at the same
time; each publishes atomically, so the result is still whole, only computed twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
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


@contextlib.contextmanager
def file_lock(path: str | Path, timeout: float | None = None) -> Iterator[Path]:
    """Hold an exclusive ``fcntl.flock`` on ``path`` (created if missing) for the ``with`` block.

    The holder writes ``"<host> <pid>"`` into the file, so a waiting process (or a person)
    can see who holds it. The lock is released when the block ends or the holding process
    dies (the kernel closes its descriptor); the file itself is left in place, so it is
    never deleted under a process that is about to lock it. See the module docstring for
    the NFS caveat.

    Args:
        path: the lock file, e.g. ``<cache_dir>/.<stage>-<key>.lock``.
        timeout: seconds to wait for the lock; None waits as long as it takes.

    Raises:
        TimeoutError: the lock was not acquired within ``timeout``, naming the file and
            its holder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (fcntl.LOCK_NB if deadline is not None else 0))
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = path.read_text(errors="replace").strip() or "unknown"
                    raise TimeoutError(f"{path}: lock held by {holder} for more than {timeout} s") from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{socket.gethostname()} {os.getpid()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # closing the descriptor releases the flock
