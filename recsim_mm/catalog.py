"""The item catalog: items with text, an image and metadata, and the CSV/JSONL loader.

A `Catalog` is what the encoders read. Items come from the synthetic generator
(`recsim_mm.synthetic`) or from a user's own file (`load_catalog`). Every field is
checked where it enters; a bad one raises `CatalogError` naming the item, file or
column and what was expected.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

#: Default quality of an item whose catalog has no ``quality`` column.
DEFAULT_QUALITY = 0.5
#: Default duration (minutes) of an item whose catalog has no ``duration`` column.
DEFAULT_DURATION = 5.0
#: Side (pixels) of the blank image that ``missing_image="blank"`` substitutes.
BLANK_IMAGE_SIZE = 128

_KNOWN_COLUMNS = (
    "item_id", "text", "title", "description", "image_path",
    "quality", "duration", "topic", "topics",
)  # fmt: skip


class CatalogError(ValueError):
    """A catalog file, row or item that does not fit the catalog format (the message
    names the file, item id or column and what was expected)."""


@dataclass(frozen=True, eq=False)
class Item:
    """One recommendable item.

    Attributes:
        item_id: unique id (non-empty string).
        title: short title (may be empty when the description says it all).
        description: description text; ``title`` + ``description`` must not be blank.
        image: in-memory pixels, ``(H, W, 3)`` uint8 RGB, or ``None`` when the image
            lives in ``image_path`` (read lazily, only when an encoder needs pixels).
        image_path: absolute path of the image file, or ``None`` for in-memory images.
        topics: ``(T,)`` float32 latent topic mixture summing to 1, where known.
        quality: intrinsic quality in [0, 1].
        duration: minutes a full consumption takes (> 0).
        metadata: free extra fields (strings, numbers) carried along untouched.
    """

    item_id: str
    title: str
    description: str
    image: np.ndarray | None = None
    image_path: Path | None = None
    topics: np.ndarray | None = None
    quality: float = DEFAULT_QUALITY
    duration: float = DEFAULT_DURATION
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.item_id, str) or not self.item_id.strip():
            raise CatalogError(f"item id must be a non-empty string; got {self.item_id!r}")
        if not self.text.strip():
            raise CatalogError(
                f"item {self.item_id!r}: empty text; expected a non-blank title or description"
            )
        if (self.image is None) == (self.image_path is None):
            raise CatalogError(
                f"item {self.item_id!r}: expected exactly one of an in-memory image or an image_path"
            )
        if self.image is not None:
            img = self.image
            if not (isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3):
                got = f"{img.dtype} {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
                raise CatalogError(
                    f"item {self.item_id!r}: image must be an (H, W, 3) uint8 RGB array; got {got}"
                )
        if not (isinstance(self.quality, (int, float)) and 0.0 <= self.quality <= 1.0):
            raise CatalogError(f"item {self.item_id!r}: quality {self.quality!r} is not a number in [0, 1]")
        if not (isinstance(self.duration, (int, float)) and math.isfinite(self.duration) and self.duration > 0):
            raise CatalogError(f"item {self.item_id!r}: duration {self.duration!r} is not a positive number of minutes")
        if self.topics is not None:
            t = np.asarray(self.topics, dtype=np.float32)
            if t.ndim != 1 or t.size == 0 or (t < 0).any() or not np.isfinite(t).all() or abs(float(t.sum()) - 1.0) > 1e-3:
                raise CatalogError(
                    f"item {self.item_id!r}: topics {self.topics!r} is not a mixture "
                    "(expected non-negative numbers summing to 1)"
                )
            object.__setattr__(self, "topics", t)

    @property
    def text(self) -> str:
        """The text the text encoder reads: ``"title. description"`` (or whichever is set)."""
        title, desc = self.title.strip(), self.description.strip()
        if title and desc:
            return f"{title}. {desc}"
        return title or desc

    def load_image(self) -> Image.Image:
        """The item's image as an RGB `PIL.Image.Image` (decoded from disk if file-backed).

        Raises:
            CatalogError: the file vanished or cannot be decoded (names item and path).
        """
        if self.image is not None:
            return Image.fromarray(self.image, mode="RGB")
        try:
            with Image.open(self.image_path) as im:
                return im.convert("RGB")
        except (OSError, UnidentifiedImageError) as exc:
            raise CatalogError(
                f"item {self.item_id!r}: cannot read image {str(self.image_path)!r} ({exc}); "
                "expected a readable image file (PNG, JPEG, ...)"
            ) from exc

    def text_hash(self) -> str:
        """SHA-256 of the text the encoder reads (the text embedding's cache key)."""
        return _memo(self, "_text_hash", lambda: hashlib.sha256(b"text\0" + self.text.encode()).hexdigest())

    def image_hash(self) -> str:
        """SHA-256 of the image content: the pixels for in-memory images, the file's
        bytes for file-backed ones (the image embedding's cache key)."""

        def compute() -> str:
            h = hashlib.sha256()
            if self.image is not None:
                h.update(f"pixels{self.image.shape}\0".encode())
                h.update(np.ascontiguousarray(self.image).tobytes())
            else:
                h.update(b"file\0")
                h.update(file_sha256(self.image_path).encode())
            return h.hexdigest()

        return _memo(self, "_image_hash", compute)


def file_sha256(path: str | Path) -> str:
    """SHA-256 hex digest of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _memo(item: Item, name: str, compute) -> str:
    # Items are frozen and immutable in practice, so a hash computed once stays valid.
    value = item.__dict__.get(name)
    if value is None:
        value = compute()
        object.__setattr__(item, name, value)
    return value


@dataclass(frozen=True, eq=False)
class Catalog:
    """An ordered, validated collection of items.

    Attributes:
        items: the items, in row order (row ``i`` of every embedding is ``items[i]``).
        topic_names: names of the ``T`` topic-mixture entries, where known.
        source: where the catalog came from (a path, or the synthetic generator's
            arguments), for messages and summaries.
    """

    items: tuple[Item, ...]
    topic_names: tuple[str, ...] | None = None
    source: str = "in-memory"

    def __post_init__(self) -> None:
        object.__setattr__(self, "items", tuple(self.items))
        if not self.items:
            raise CatalogError(f"catalog {self.source}: has no items; expected at least one")
        seen: dict[str, int] = {}
        for row, item in enumerate(self.items):
            if not isinstance(item, Item):
                raise CatalogError(f"catalog {self.source}: row {row} is a {type(item).__name__}, not an Item")
            if item.item_id in seen:
                raise CatalogError(
                    f"catalog {self.source}: duplicate item id {item.item_id!r} "
                    f"(rows {seen[item.item_id]} and {row}); expected unique ids"
                )
            seen[item.item_id] = row
        with_topics = [item.topics is not None for item in self.items]
        if any(with_topics):
            if not all(with_topics):
                missing = self.items[with_topics.index(False)].item_id
                raise CatalogError(
                    f"catalog {self.source}: item {missing!r} has no topics while others do; "
                    "expected topics on every item or on none"
                )
            sizes = {item.topics.shape[0] for item in self.items}
            if len(sizes) != 1:
                raise CatalogError(f"catalog {self.source}: topic mixtures have different lengths {sorted(sizes)}")
            if self.topic_names is not None and len(self.topic_names) != sizes.pop():
                raise CatalogError(
                    f"catalog {self.source}: {len(self.topic_names)} topic names for "
                    f"{self.items[0].topics.shape[0]}-topic mixtures"
                )

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Item]:
        return iter(self.items)

    def __getitem__(self, row: int) -> Item:
        return self.items[row]

    @property
    def item_ids(self) -> tuple[str, ...]:
        """``N`` item ids in row order."""
        return tuple(item.item_id for item in self.items)

    @property
    def texts(self) -> list[str]:
        """``N`` encoder input texts in row order."""
        return [item.text for item in self.items]

    @property
    def quality(self) -> np.ndarray:
        """``(N,)`` float32 quality in [0, 1]."""
        return np.array([item.quality for item in self.items], dtype=np.float32)

    @property
    def duration(self) -> np.ndarray:
        """``(N,)`` float32 duration in minutes."""
        return np.array([item.duration for item in self.items], dtype=np.float32)

    @property
    def topics(self) -> np.ndarray | None:
        """``(N, T)`` float32 topic mixtures, or ``None`` when the catalog has none."""
        if self.items[0].topics is None:
            return None
        return np.stack([item.topics for item in self.items]).astype(np.float32)

    def content_hash(self) -> str:
        """SHA-256 over every item's id, text, image content and attributes: two
        catalogs with the same hash give the same item space."""
        h = hashlib.sha256(b"recsim_mm.Catalog/1\0")
        for item in self.items:
            h.update(f"{item.item_id}\0{item.text_hash()}\0{item.image_hash()}\0".encode())
            h.update(f"{item.quality!r}\0{item.duration!r}\0".encode())
            if item.topics is not None:
                h.update(item.topics.tobytes())
        return h.hexdigest()


def load_catalog(
    path: str | Path,
    missing_image: Literal["error", "blank"] = "error",
) -> Catalog:
    """Read a user's catalog from a CSV or JSONL file; images are read with Pillow.

    Columns (CSV header or JSON keys): ``item_id`` and ``image_path`` (relative to the
    catalog file's folder, or absolute) are required, plus ``text`` or one or both of
    ``title`` / ``description``. Optional: ``quality`` (in [0, 1], default 0.5),
    ``duration`` (minutes > 0, default 5), ``topic`` (one label per item, turned into
    a one-hot mixture) or ``topics`` (a mixture: a JSON list, or in CSV numbers
    separated by ``;``). When a column is present every row must fill it. Any other
    column is kept in `Item.metadata`.

    Args:
        path: a ``.csv`` or ``.jsonl`` file.
        missing_image: ``"error"`` (default) raises for a missing image file;
            ``"blank"`` substitutes a blank grey image and warns with the count.

    Returns:
        The validated `Catalog`, items in file order.

    Raises:
        CatalogError: unknown file type, missing column, bad value, duplicate id,
            empty text, missing or unreadable image (the message names which).
    """
    path = Path(path)
    if missing_image not in ("error", "blank"):
        raise CatalogError(f"missing_image={missing_image!r}; expected 'error' or 'blank'")
    if not path.is_file():
        raise CatalogError(f"catalog file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        rows = _read_csv(path)
    elif suffix in (".jsonl", ".ndjson"):
        rows = _read_jsonl(path)
    else:
        raise CatalogError(f"catalog file {str(path)!r}: unknown type {suffix!r}; expected .csv or .jsonl")
    if not rows:
        raise CatalogError(f"catalog file {str(path)!r} has no rows; expected at least one item")

    columns = set().union(*(r.keys() for _, r in rows))
    for required in ("item_id", "image_path"):
        if required not in columns:
            raise CatalogError(
                f"catalog file {str(path)!r}: missing required column {required!r} "
                f"(found columns: {', '.join(sorted(columns))})"
            )
    if not ({"text", "title", "description"} & columns):
        raise CatalogError(
            f"catalog file {str(path)!r}: missing required column 'text' (or 'title' / "
            f"'description') (found columns: {', '.join(sorted(columns))})"
        )
    if "topic" in columns and "topics" in columns:
        raise CatalogError(f"catalog file {str(path)!r}: has both 'topic' and 'topics'; expected one")

    topic_names = None
    if "topic" in columns:
        topic_names = tuple(sorted({str(r.get("topic", "")) for _, r in rows} - {""}))
    items, blanks, seen = [], [], {}
    for where, row in rows:
        item = _row_to_item(path, where, row, columns, topic_names, missing_image, blanks)
        if item.item_id in seen:
            raise CatalogError(
                f"{where}: duplicate item id {item.item_id!r} (first at {seen[item.item_id]}); "
                "expected unique ids"
            )
        seen[item.item_id] = where
        items.append(item)
    if blanks:
        shown = ", ".join(repr(b) for b in blanks[:5]) + (", ..." if len(blanks) > 5 else "")
        warnings.warn(
            f"catalog file {str(path)!r}: {len(blanks)} item(s) have a missing image file and "
            f"got a blank image instead (missing_image='blank'): {shown}",
            UserWarning,
            stacklevel=2,
        )
    return Catalog(items=tuple(items), topic_names=topic_names, source=str(path))


def _read_csv(path: Path) -> list[tuple[str, dict[str, Any]]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None:
            raise CatalogError(f"catalog file {str(path)!r} is empty; expected a header row")
        rows = []
        for row in reader:
            if None in row:
                raise CatalogError(f"{path}:{reader.line_num}: more cells than header columns")
            rows.append((f"{path}:{reader.line_num}", {k.strip(): v for k, v in row.items()}))
        # A header with a column nobody fills still counts as present.
        if not rows:
            return []
        for _, row in rows:
            for name in reader.fieldnames:
                row.setdefault(name.strip(), "")
        return rows


def _read_jsonl(path: Path) -> list[tuple[str, dict[str, Any]]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CatalogError(f"{path}:{number}: not valid JSON ({exc.msg})") from exc
            if not isinstance(row, dict):
                raise CatalogError(f"{path}:{number}: expected a JSON object per line; got {type(row).__name__}")
            rows.append((f"{path}:{number}", row))
    return rows


def _row_to_item(
    path: Path,
    where: str,
    row: Mapping[str, Any],
    columns: set[str],
    topic_names: tuple[str, ...] | None,
    missing_image: str,
    blanks: list[str],
) -> Item:
    item_id = str(row.get("item_id") or "").strip()
    if not item_id:
        raise CatalogError(f"{where}: empty 'item_id'; expected a non-empty id")
    label = f"{where}: item {item_id!r}"

    def cell(name: str) -> Any:
        value = row.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            raise CatalogError(f"{label}: column {name!r} is empty; a present column must be filled on every row")
        return value

    def number(name: str, lo: float, hi: float, lo_open: bool) -> float:
        raw = cell(name)
        try:
            value = float(raw)
        except (TypeError, ValueError):
            value = math.nan
        ok = math.isfinite(value) and (value > lo if lo_open else value >= lo) and value <= hi
        if not ok:
            expected = "a positive number of minutes" if lo_open else f"a number in [{lo:g}, {hi:g}]"
            raise CatalogError(f"{label}: {name} {raw!r} is not {expected}")
        return value

    if "text" in columns and ("title" in columns or "description" in columns):
        raise CatalogError(f"{label}: has both 'text' and 'title'/'description'; expected one form")
    if "text" in columns:
        title, description = "", str(row.get("text") or "")
    else:
        title, description = str(row.get("title") or ""), str(row.get("description") or "")
    if not (title.strip() or description.strip()):
        raise CatalogError(f"{label}: empty text; expected a non-blank text (or title / description)")

    raw_path = str(cell("image_path")).strip()
    image_path = Path(raw_path).expanduser()
    if not image_path.is_absolute():
        image_path = path.parent / image_path
    image_path = image_path.resolve()
    image = None
    if not image_path.is_file():
        if missing_image == "blank":
            blanks.append(item_id)
            image = np.full((BLANK_IMAGE_SIZE, BLANK_IMAGE_SIZE, 3), 128, dtype=np.uint8)
            image_path = None
        else:
            raise CatalogError(
                f"{label}: image file {str(image_path)!r} does not exist (image_path {raw_path!r} "
                f"is resolved relative to {str(path.parent)!r}); expected an existing image file, "
                "or load_catalog(..., missing_image='blank')"
            )
    else:
        _check_image_file(label, image_path)

    quality = number("quality", 0.0, 1.0, lo_open=False) if "quality" in columns else DEFAULT_QUALITY
    duration = number("duration", 0.0, math.inf, lo_open=True) if "duration" in columns else DEFAULT_DURATION
    topics = None
    if topic_names is not None:
        topics = np.zeros(len(topic_names), dtype=np.float32)
        topics[topic_names.index(str(cell("topic")))] = 1.0
    elif "topics" in columns:
        topics = _parse_mixture(label, cell("topics"))
    metadata = {k: v for k, v in row.items() if k not in _KNOWN_COLUMNS}
    return Item(
        item_id=item_id,
        title=title,
        description=description,
        image=image,
        image_path=image_path if image is None else None,
        topics=topics,
        quality=quality,
        duration=duration,
        metadata=metadata,
    )


def _check_image_file(label: str, image_path: Path) -> None:
    # verify() checks the file's structure without decoding all pixels: cheap enough to
    # run on every item at load time, so a bad file is reported here and not mid-encode.
    try:
        with Image.open(image_path) as im:
            im.verify()
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise CatalogError(
            f"{label}: image file {str(image_path)!r} is not a readable image ({exc}); "
            "expected an image Pillow can open (PNG, JPEG, ...)"
        ) from exc


def _parse_mixture(label: str, raw: Any) -> np.ndarray:
    try:
        if isinstance(raw, str):
            values = [float(v) for v in raw.replace(",", ";").split(";") if v.strip()]
        elif isinstance(raw, Sequence):
            values = [float(v) for v in raw]
        else:
            raise TypeError
        mixture = np.asarray(values, dtype=np.float32)
    except (TypeError, ValueError):
        mixture = np.zeros(0, dtype=np.float32)
    if mixture.size == 0 or (mixture < 0).any() or not np.isfinite(mixture).all() or abs(float(mixture.sum()) - 1.0) > 1e-3:
        raise CatalogError(
            f"{label}: topics {raw!r} is not a mixture; expected non-negative numbers summing "
            "to 1 (a JSON list, or in CSV numbers separated by ';')"
        )
    return mixture
