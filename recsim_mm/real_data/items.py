"""A real dataset's item file -> a catalog file in recsim-mm's format -> `Catalog`.

Public datasets describe items in their own files (MovieLens ``movies.csv``, MIND
``news.tsv``, KuaiRand video features) and most ship no images. `write_catalog` turns
such a file, read with an `ItemMapping`, into a catalog CSV (``item_id, title,
description, image_path, topic[, duration]``) that the existing loader
(`recsim_mm.catalog.load_catalog`) reads, with every check it makes. Images come from
a folder keyed by item id (``<image_dir>/<item_id>.jpg``, ``.jpeg``, ``.png`` or
``.webp``, e.g. MovieLens posters); an item without one is an error, or, with
``missing_image="blank"``, gets a grey image and the loader warns with the count.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Literal

import numpy as np

from recsim_mm.catalog import Catalog, load_catalog
from recsim_mm.files import atomic_write
from recsim_mm.real_data.tables import ItemMapping, LogFormatError, LogTable, layout, read_table

#: Image file suffixes looked for in the image folder, in this order.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
#: Topic label of an item whose topic cell is empty (written, never silent: docs/real_data.md).
NO_TOPIC = "(none)"


def write_catalog(
    item_file: str | Path,
    mapping: ItemMapping | str,
    out_path: str | Path,
    image_dir: str | Path | None = None,
    *,
    log: LogTable | None = None,
    only_logged: bool = False,
    missing_image: Literal["error", "blank"] = "error",
) -> Catalog:
    """Write a recsim-mm catalog CSV for a dataset's item file, and load it.

    Args:
        item_file: the dataset's item table (CSV/TSV/Parquet).
        mapping: an `ItemMapping` or a layout name in `recsim_mm.real_data.tables.LAYOUTS`.
        out_path: the catalog CSV to write (image paths in it are absolute).
        image_dir: folder of ``<item_id>.<jpg|jpeg|png|webp>`` images; None: no images.
        log: the log table; with ``only_logged`` only its items are written, and its
            ``duration`` column (per-item median, minutes) fills durations the item
            file lacks.
        only_logged: keep only items that appear in ``log``.
        missing_image: ``"error"`` or ``"blank"`` (grey image, warned with the count
            by `load_catalog`).

    Returns:
        The `Catalog` `load_catalog` reads from ``out_path``.

    Raises:
        LogFormatError: a column of the mapping is missing (named), empty item id,
            duplicate item id, a non-numeric duration.
        recsim_mm.catalog.CatalogError: what the catalog loader refuses (blank text,
            missing image with ``missing_image="error"``, ...).
    """
    if isinstance(mapping, str):
        mapping = layout(mapping)[1]
    source = str(item_file)
    data, names, rows = read_table(item_file, mapping.column_names, mapping.delimiter)
    wanted = [("item_id", mapping.item_id), ("title", mapping.title), ("topic", mapping.topic),
              ("duration", mapping.duration), *(("description", c) for c in mapping.description)]
    for canon, column in wanted:
        if column is not None and column not in names:
            raise LogFormatError(f"{source}: column {column!r} (the {canon!r} column of item mapping "
                                 f"{mapping.name!r}) not found; the file's columns are {names}")
    if only_logged and log is None:
        raise ValueError("only_logged=True needs the log table (log=...)")
    keep = set(log.item.tolist()) if only_logged else None
    log_duration = _median_durations(log) if log is not None and log.duration is not None else {}
    image_dir = Path(image_dir).resolve() if image_dir is not None else None
    if image_dir is not None and not image_dir.is_dir():
        raise LogFormatError(f"image folder {str(image_dir)!r} does not exist")
    header = ["item_id", "title", "description", "image_path", "topic"]
    with_duration = mapping.duration is not None or bool(log_duration)
    if with_duration:
        header.append("duration")
    lines, seen = [], {}
    for i, raw_id in enumerate(data[mapping.item_id]):
        item_id = str(raw_id or "").strip()
        if not item_id:
            raise LogFormatError(f"{source}, row {int(rows[i])}: empty item id in column {mapping.item_id!r}")
        if item_id in seen:
            raise LogFormatError(f"{source}, row {int(rows[i])}: item id {item_id!r} repeats row {seen[item_id]}")
        seen[item_id] = int(rows[i])
        if keep is not None and item_id not in keep:
            continue
        title = _text(data[mapping.title][i]) if mapping.title else ""
        description = "; ".join(t for c in mapping.description if (t := _text(data[c][i])))
        topic = _text(data[mapping.topic][i]).split("|")[0].split(",")[0].strip() if mapping.topic else ""
        row = [item_id, title, description, str(_image_path(image_dir, item_id)), topic or NO_TOPIC]
        if with_duration:
            row.append(_duration(data, mapping, i, item_id, log_duration, source, rows))
        lines.append(row)
    if not lines:
        raise LogFormatError(f"{source}: no items to write"
                             + (" (none of the file's items appears in the log)" if only_logged else ""))
    if mapping.topic is None:
        header.remove("topic")
        lines = [r[:4] + r[5:] for r in lines]

    def write(f) -> None:
        text = _csv_text(header, lines)
        f.write(text.encode("utf-8"))

    atomic_write(Path(out_path), write)
    return load_catalog(out_path, missing_image=missing_image)


def _csv_text(header: list[str], lines: list[list[str]]) -> str:
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(lines)
    return buffer.getvalue()


def _text(value) -> str:
    text = "" if value is None else str(value).strip()
    return text.replace("|", ", ")


def _image_path(image_dir: Path | None, item_id: str) -> Path:
    """The first existing ``<image_dir>/<item_id><suffix>``, else the ``.jpg`` path (which
    the loader then reports as missing, or blanks with ``missing_image="blank"``)."""
    if image_dir is None:
        return Path(f"no-image/{item_id}.jpg").resolve()
    for suffix in IMAGE_SUFFIXES:
        candidate = image_dir / f"{item_id}{suffix}"
        if candidate.is_file():
            return candidate
    return image_dir / f"{item_id}.jpg"


def _median_durations(log: LogTable) -> dict[str, float]:
    order = np.argsort(log.item, kind="stable")
    items, starts = np.unique(log.item[order], return_index=True)
    groups = np.split(log.duration[order], starts[1:])
    return {item: float(np.median(g)) for item, g in zip(items.tolist(), groups, strict=True)}


def _duration(data: dict, mapping: ItemMapping, i: int, item_id: str, log_duration: dict[str, float],
              source: str, rows: np.ndarray) -> str:
    if mapping.duration is not None:
        raw = data[mapping.duration][i]
        try:
            minutes = float(raw) * mapping.time_scale
        except (TypeError, ValueError):
            raise LogFormatError(f"{source}, row {int(rows[i])}: column {mapping.duration!r} (duration of item "
                                 f"mapping {mapping.name!r}) has {raw!r}; expected a number") from None
        return repr(minutes)
    if item_id not in log_duration:
        raise LogFormatError(f"item {item_id!r} has no duration: the item file has no duration column and "
                             "the log never shows the item; pass only_logged=True or add durations")
    return repr(log_duration[item_id])
