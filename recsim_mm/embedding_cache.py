"""On-disk embedding cache: one file per encoder identity, one row per content hash.

A row is keyed by the hash of the content the encoder reads (an item's text, or its
image pixels/bytes), so a second run over the same catalog reads every vector from
disk and never loads the encoder, and a changed item is re-encoded alone. Files are
written atomically (temporary file + ``os.replace``) and carry a checksum; a file
that is corrupt, truncated or belongs to another encoder is reported with a
`CacheWarning`, ignored and rebuilt, never used. An `embed` call that may write holds
a lock on ``<file>.lock`` (`recsim_mm.files.file_lock`) from its read to its write, so
processes sharing the cache folder (on one machine or a shared file system) neither
encode the same rows twice at the same time nor drop each other's rows.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from recsim_mm.files import atomic_torch_save, file_lock

FORMAT = "recsim_mm.EmbeddingCache/1"


class CacheWarning(UserWarning):
    """A cache file was unusable (corrupt, truncated, other encoder) and is rebuilt."""


class Encoder(Protocol):
    """What the cache needs from an encoder: a stable identity and a batched encode."""

    @property
    def identity(self) -> str: ...

    def encode(self, inputs: Sequence[Any]) -> torch.Tensor: ...


def default_cache_dir() -> Path:
    """``$RECSIM_MM_CACHE`` when set, else ``~/.cache/recsim_mm``."""
    env = os.environ.get("RECSIM_MM_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "recsim_mm"


@dataclass
class CacheStats:
    """What one `EmbeddingCache.embed` call did: ``hits`` rows read from disk,
    ``misses`` rows encoded, ``rebuilt`` whether an unusable file was replaced."""

    hits: int = 0
    misses: int = 0
    rebuilt: bool = False


class EmbeddingCache:
    """Embedding store under ``<cache_dir>/embeddings/``.

    Args:
        cache_dir: root folder; ``None`` = `default_cache_dir()`.

    Example:
        >>> import tempfile
        >>> from recsim_mm.encoders import TextEncoder
        >>> cache = EmbeddingCache(tempfile.mkdtemp())
        >>> enc = TextEncoder()
        >>> vecs = cache.embed(enc, ["jazz night"], ["key-1"])
        >>> vecs.shape, cache.last_stats.misses
        (torch.Size([1, 384]), 1)
    """

    def __init__(self, cache_dir: str | Path | None = None) -> None:
        self.root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        self.last_stats = CacheStats()

    def path_for(self, identity: str) -> Path:
        """The file holding ``identity``'s embeddings."""
        digest = hashlib.sha256(identity.encode()).hexdigest()[:24]
        return self.root / "embeddings" / f"{digest}.pt"

    def embed(self, encoder: Encoder, inputs: Sequence[Any], keys: Sequence[str]) -> torch.Tensor:
        """Vectors for ``inputs``, encoding only those whose key is not on disk.

        Args:
            encoder: has ``identity`` and ``encode(inputs) -> (M, D) float32``; it is
                asked to encode only the missing rows (and so loads its model only
                then).
            inputs: ``N`` encoder inputs (texts, images, or a lazy sequence of them).
            keys: ``N`` content hashes, ``keys[i]`` identifying ``inputs[i]``.

        Returns:
            ``(N, D)`` float32 CPU tensor, row ``i`` for ``inputs[i]``.
        """
        if len(inputs) != len(keys):
            raise ValueError(f"{len(inputs)} inputs but {len(keys)} keys; expected one key per input")
        identity = encoder.identity
        path = self.path_for(identity)
        stored, _ = self._read(path, identity, quiet=True)
        if stored is not None and set(keys) <= set(stored[0]):  # all on disk: a read needs no lock
            self.last_stats = CacheStats(hits=len(keys))
            row_of = {k: i for i, k in enumerate(stored[0])}
            return stored[1][torch.tensor([row_of[k] for k in keys], dtype=torch.long)]
        with file_lock(path.with_name(path.name + ".lock")):
            return self._embed_locked(encoder, inputs, keys, identity, path)

    def _embed_locked(self, encoder: Encoder, inputs: Sequence[Any], keys: Sequence[str], identity: str,
                      path: Path) -> torch.Tensor:
        """`embed` under the file's lock: re-read (another process may have written rows
        meanwhile), encode the missing rows, write the merged file."""
        stored, rebuilt = self._read(path, identity)
        stored_keys, stored_vectors = stored if stored is not None else ([], None)
        row_of = {k: i for i, k in enumerate(stored_keys)}
        missing = [i for i, k in enumerate(keys) if k not in row_of]
        # Identical content appears once in the miss list: encode each distinct key once.
        first_of: dict[str, int] = {}
        for i in missing:
            first_of.setdefault(keys[i], i)
        to_encode = list(first_of.values())
        self.last_stats = CacheStats(hits=len(keys) - len(missing), misses=len(to_encode), rebuilt=rebuilt)
        if to_encode:
            new = encoder.encode(_Rows(inputs, to_encode)).float().cpu()
            if stored_vectors is not None and new.shape[1] != stored_vectors.shape[1]:
                warnings.warn(
                    f"embedding cache {path}: stored width {stored_vectors.shape[1]} differs from "
                    f"encoder output width {new.shape[1]} for the same identity; rebuilding",
                    CacheWarning,
                    stacklevel=2,
                )
                self.last_stats.rebuilt = True
                return self._rebuild_all(encoder, inputs, keys, path)
            new_keys = [keys[i] for i in to_encode]
            all_keys = list(stored_keys) + new_keys
            all_vectors = new if stored_vectors is None else torch.cat([stored_vectors, new])
            self._write(path, identity, all_keys, all_vectors)
            row_of.update({k: len(stored_keys) + j for j, k in enumerate(new_keys)})
        else:
            all_vectors = stored_vectors
        index = torch.tensor([row_of[k] for k in keys], dtype=torch.long)
        return all_vectors[index]

    def _rebuild_all(self, encoder: Encoder, inputs, keys, path: Path) -> torch.Tensor:
        self.last_stats.misses = len(keys)
        vectors = encoder.encode(inputs).float().cpu()
        self._write(path, encoder.identity, list(keys), vectors)
        return vectors

    @staticmethod
    def _checksum(identity: str, keys: Sequence[str], vectors: torch.Tensor) -> str:
        h = hashlib.sha256(identity.encode() + b"\0")
        h.update("\n".join(keys).encode() + b"\0")
        h.update(vectors.contiguous().numpy().tobytes())
        return h.hexdigest()

    def _write(self, path: Path, identity: str, keys: list[str], vectors: torch.Tensor) -> None:
        payload = {
            "format": FORMAT,
            "identity": identity,
            "keys": keys,
            "vectors": vectors.contiguous(),
            "checksum": self._checksum(identity, keys, vectors),
        }
        atomic_torch_save(payload, path)

    def _read(self, path: Path, identity: str,
              quiet: bool = False) -> tuple[tuple[list[str], torch.Tensor] | None, bool]:
        """``((keys, vectors), False)`` for a valid file, ``(None, False)`` for no file,
        ``(None, True)`` after warning about an unusable one (no warning with ``quiet``:
        the lock-free first look, which the locked re-read repeats)."""
        if not path.exists():
            return None, False
        problem = None
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types for a damaged file
            first_line = (str(exc).strip().splitlines() or [""])[0][:200]
            payload, problem = None, f"unreadable ({type(exc).__name__}: {first_line})"
        if problem is None:
            problem = self._validate(payload, identity)
        if problem is not None:
            if quiet:
                return None, True
            warnings.warn(
                f"embedding cache {path} is {problem}; ignoring it and re-encoding", CacheWarning, stacklevel=3
            )
            return None, True
        return (payload["keys"], payload["vectors"]), False

    def _validate(self, payload: Any, identity: str) -> str | None:
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            return f"not an embedding cache file (expected format {FORMAT!r})"
        if payload.get("identity") != identity:
            return f"for another encoder ({payload.get('identity')!r}, expected {identity!r})"
        keys, vectors = payload.get("keys"), payload.get("vectors")
        if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
            return "corrupt (keys are not a list of strings)"
        if not (isinstance(vectors, torch.Tensor) and vectors.ndim == 2 and vectors.dtype == torch.float32):
            return "corrupt (vectors are not a 2-D float32 tensor)"
        if vectors.shape[0] != len(keys) or len(set(keys)) != len(keys):
            return f"corrupt ({len(keys)} keys for {vectors.shape[0]} vectors)"
        if payload.get("checksum") != self._checksum(identity, keys, vectors):
            return "corrupt (checksum mismatch)"
        return None


class _Rows(Sequence):
    """A lazy view of selected rows of a sequence (images stay undecoded until read)."""

    def __init__(self, base: Sequence[Any], rows: list[int]) -> None:
        self.base, self.rows = base, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self.base[self.rows[j]] for j in range(*i.indices(len(self.rows)))]
        return self.base[self.rows[i]]
