"""Interaction tables from real platforms: the canonical event table, column mappings and readers.

A real log enters as a file (CSV, TSV or Parquet) whose columns a `LogMapping` names.
`read_log_table` reads it into a `LogTable`: one row per *event* (a user saw or
consumed an item at a time), with these canonical columns:

==============  ==========  =====================================================
column          required    meaning
==============  ==========  =====================================================
``user``        yes         user id (string)
``item``        yes         item id (string; joined with the catalog's ``item_id``)
``timestamp``   yes         when (a number, or a date string with ``timestamp_format``);
                            converted to seconds with ``timestamp_scale``
``impression``  no          id of the impression (request) the event was shown in:
                            events with the same user and impression were one slate
``click``       no          0/1 (anything else is an error)
``rating``      no          a number; without ``click``, ``click = rating >= rating_threshold``
``watch_time``  no          time spent; minutes after ``time_scale``
``duration``    no          length of the item; minutes after ``time_scale``
==============  ==========  =====================================================

Impression lists in one cell (MIND's ``"N1-1 N2-0"``) are expanded into one event per
listed item by the ``impression_list`` mapping key. Ready-made mappings for the common
public layouts are in `LAYOUTS` (``movielens``, ``mind``, ``kuairand``, ``kuairec``);
docs/real_data.md describes each and the generic format.

Bad input is an error naming the file, the column (and the mapping that named it) or
the row and value: a missing column, a non-numeric click or rating, a click that is
not 0/1, an empty user or item id, an unparsable timestamp, exact duplicate events
(unless ``duplicates="drop"``, which warns with the count). Rows out of time order are
sorted (file order breaks ties) with a warning that counts them, or are an error with
``unordered="error"``. Nothing is dropped silently.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import numpy as np

#: Canonical columns of a `LogTable`, in order; the first three are required.
LOG_COLUMNS = ("user", "item", "timestamp", "impression", "click", "rating", "watch_time", "duration")
REQUIRED_LOG_COLUMNS = ("user", "item", "timestamp")


class LogFormatError(ValueError):
    """A log or item file that does not fit its mapping (the message names the file,
    column, mapping, row or value and what was expected)."""


@dataclass(frozen=True)
class LogMapping:
    """How one log file's columns map onto the canonical `LogTable` columns.

    Attributes:
        name: the mapping's name, quoted in error messages (e.g. ``"movielens"``).
        columns: canonical column -> the file's column name, e.g.
            ``{"user": "userId", "item": "movieId", ...}``; canonical names not listed
            are absent from the data.
        column_names: the file's column names when it has no header row (MIND);
            None: the first row is the header.
        delimiter: field separator (``","``, ``"\\t"``); ignored for Parquet.
        timestamp_format: `datetime.strptime` format of date strings (read as UTC);
            None: timestamps are numbers.
        timestamp_scale: seconds per timestamp unit (1 for Unix seconds, 0.001 for ms).
        time_scale: minutes per unit of ``watch_time`` and ``duration`` (1/60 for
            seconds, 1/60000 for ms).
        rating_threshold: without a ``click`` column, an event with ``rating >=``
            this is a click and the others are shown-but-not-clicked. None: a rating
            alone does not define clicks (every event is then an engagement).
        impression_list: the file column holding a whole impression as
            space-separated ``item-click`` tokens (MIND ``"N1-1 N2-0"``); each token
            becomes one event with ``item`` and ``click``.
        session_gap: seconds of inactivity that start a new session of a user; None:
            each user's events are one session.
    """

    name: str
    columns: dict[str, str]
    column_names: tuple[str, ...] | None = None
    delimiter: str = ","
    timestamp_format: str | None = None
    timestamp_scale: float = 1.0
    time_scale: float = 1.0
    rating_threshold: float | None = None
    impression_list: str | None = None
    session_gap: float | None = 1800.0

    def __post_init__(self) -> None:
        unknown = sorted(set(self.columns) - set(LOG_COLUMNS))
        if unknown:
            raise LogFormatError(f"mapping {self.name!r}: unknown canonical column(s) {unknown}; "
                                 f"expected names from {list(LOG_COLUMNS)}")
        needed = [c for c in REQUIRED_LOG_COLUMNS if c not in self.columns
                  and not (self.impression_list and c == "item")]
        if needed:
            raise LogFormatError(f"mapping {self.name!r}: no file column given for required column(s) {needed}")
        if self.impression_list and ("item" in self.columns or "click" in self.columns):
            raise LogFormatError(f"mapping {self.name!r}: with impression_list, 'item' and 'click' come "
                                 "from the list's tokens; do not map them to columns")
        for name in ("timestamp_scale", "time_scale"):
            if not getattr(self, name) > 0:
                raise LogFormatError(f"mapping {self.name!r}: {name}={getattr(self, name)!r}; expected > 0")
        if self.session_gap is not None and not self.session_gap > 0:
            raise LogFormatError(f"mapping {self.name!r}: session_gap={self.session_gap!r}; expected > 0 or None")

    def replace(self, **changes) -> LogMapping:
        """A copy with fields changed (``columns`` entries are merged into the existing ones)."""
        if "columns" in changes:
            changes["columns"] = {**self.columns, **changes["columns"]}
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class ItemMapping:
    """How a dataset's item file becomes catalog rows (see `recsim_mm.real_data.items`).

    Attributes:
        name: the mapping's name, quoted in error messages.
        item_id: the file column of the item id.
        title: the column of the title (None: no title).
        description: columns joined (``"; "``) into the description, e.g. genres, abstract.
        topic: the column whose value is the item's topic label (a ``|``-separated
            list takes its first entry), or None.
        duration: the column of the item's length (minutes after ``time_scale``), or None.
        column_names, delimiter: as in `LogMapping`.
        time_scale: minutes per unit of ``duration``.
    """

    name: str
    item_id: str
    title: str | None = None
    description: tuple[str, ...] = ()
    topic: str | None = None
    duration: str | None = None
    column_names: tuple[str, ...] | None = None
    delimiter: str = ","
    time_scale: float = 1.0


_MIND_BEHAVIORS = ("impression_id", "user_id", "time", "history", "impressions")
_MIND_NEWS = ("news_id", "category", "subcategory", "title", "abstract", "url", "title_entities",
              "abstract_entities")

#: Ready-made mappings of the common public layouts: ``name -> (log mapping, item mapping)``.
LAYOUTS: dict[str, tuple[LogMapping, ItemMapping]] = {
    # MovieLens (ml-latest-small, ml-25m): ratings.csv + movies.csv. No impressions:
    # a rating >= 4 is a click, a lower rating an item shown but not clicked.
    "movielens": (
        LogMapping("movielens", {"user": "userId", "item": "movieId", "rating": "rating",
                                 "timestamp": "timestamp"}, rating_threshold=4.0),
        ItemMapping("movielens", item_id="movieId", title="title", description=("genres",), topic="genres"),
    ),
    # MIND (MINDsmall/MINDlarge): behaviors.tsv (impressions) + news.tsv, both without header.
    "mind": (
        LogMapping("mind", {"user": "user_id", "timestamp": "time", "impression": "impression_id"},
                   column_names=_MIND_BEHAVIORS, delimiter="\t", timestamp_format="%m/%d/%Y %I:%M:%S %p",
                   impression_list="impressions"),
        ItemMapping("mind", item_id="news_id", title="title", description=("abstract",), topic="category",
                    column_names=_MIND_NEWS, delimiter="\t"),
    ),
    # KuaiRand (log_standard_*.csv + video_features_basic_*.csv): every row one video shown
    # in the feed, with is_click, play time and duration in milliseconds.
    "kuairand": (
        LogMapping("kuairand", {"user": "user_id", "item": "video_id", "timestamp": "time_ms",
                                "click": "is_click", "watch_time": "play_time_ms", "duration": "duration_ms"},
                   timestamp_scale=0.001, time_scale=1 / 60000),
        ItemMapping("kuairand", item_id="video_id", title=None, description=("video_type", "tag"),
                    topic="tag", duration="video_duration", time_scale=1 / 60000),
    ),
    # KuaiRec (big_matrix.csv / small_matrix.csv + kuairec_caption_category.csv): every row
    # a video the user watched (no clicks: each is an engagement), times in ms / s.
    "kuairec": (
        LogMapping("kuairec", {"user": "user_id", "item": "video_id", "timestamp": "timestamp",
                               "watch_time": "play_duration", "duration": "video_duration"},
                   time_scale=1 / 60000),
        ItemMapping("kuairec", item_id="video_id", title="caption", description=("topic_tag",),
                    topic="first_level_category_name"),
    ),
}


def layout(name: str) -> tuple[LogMapping, ItemMapping]:
    """The ``(LogMapping, ItemMapping)`` of a public layout in `LAYOUTS`.

    Raises:
        LogFormatError: unknown name (the known ones are listed).
    """
    if name not in LAYOUTS:
        raise LogFormatError(f"unknown layout {name!r}; expected one of {sorted(LAYOUTS)}")
    return LAYOUTS[name]


@dataclass(frozen=True)
class LogTable:
    """Events of a real log in canonical columns, in time order per user.

    ``E`` events. Optional columns are None when the data lacks them.

    Attributes:
        user: ``(E,)`` str user ids.
        item: ``(E,)`` str item ids.
        timestamp: ``(E,)`` float64 seconds.
        impression: ``(E,)`` str impression ids, or None.
        click: ``(E,)`` float32 0/1, or None.
        rating: ``(E,)`` float32, or None.
        watch_time: ``(E,)`` float32 minutes, or None.
        duration: ``(E,)`` float32 minutes, or None.
        row: ``(E,)`` int64 line (CSV/TSV, 1 = first line) or row (Parquet) of each
            event in the source file, for messages.
        source: the file, for messages.
        mapping: the mapping it was read with.
    """

    user: np.ndarray
    item: np.ndarray
    timestamp: np.ndarray
    impression: np.ndarray | None = None
    click: np.ndarray | None = None
    rating: np.ndarray | None = None
    watch_time: np.ndarray | None = None
    duration: np.ndarray | None = None
    row: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    source: str = "log"
    mapping: LogMapping | None = None

    def __len__(self) -> int:
        return len(self.user)

    def select(self, keep: np.ndarray) -> LogTable:
        """The events where ``keep`` (``(E,)`` bool or int indices), same columns."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name in (*LOG_COLUMNS, "row"):
            if values[name] is not None:
                values[name] = values[name][keep]
        return LogTable(**values)

    def clicked(self) -> np.ndarray:
        """``(E,)`` float32 click labels: the ``click`` column; else ``rating >=
        rating_threshold`` when the mapping sets one; else 1 (every event an engagement)."""
        if self.click is not None:
            return self.click
        threshold = self.mapping.rating_threshold if self.mapping is not None else None
        if self.rating is not None and threshold is not None:
            return (self.rating >= threshold).astype(np.float32)
        return np.ones(len(self), dtype=np.float32)


# -- reading ---------------------------------------------------------------------------------


def read_table(path: str | Path, column_names: tuple[str, ...] | None = None, delimiter: str = ",",
               columns: list[str] | None = None) -> tuple[dict[str, list], list[str], np.ndarray]:
    """Read a CSV/TSV (pyarrow's CSV reader, all cells as strings) or Parquet file.

    Args:
        path: ``.csv``, ``.tsv``, ``.txt`` or ``.parquet`` file.
        column_names: names of a header-less text file's columns.
        delimiter: text files' separator.
        columns: read only these (all must exist; the caller names them first).

    Returns:
        ``(columns {name: list of values}, all column names, (R,) int64 row numbers)``;
        text-file row numbers are file lines (header = line 1).

    Raises:
        LogFormatError: no such file, unknown type, unreadable, wrong number of fields.
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv

    path = Path(path)
    if not path.is_file():
        raise LogFormatError(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            names = pq.read_schema(path).names
            table = pq.read_table(path, columns=columns)
            first_row = 0
        elif suffix in (".csv", ".tsv", ".txt", ".dat"):
            read = pacsv.ReadOptions(column_names=list(column_names) if column_names else None,
                                     block_size=1 << 24)
            if column_names is None:
                with open(path, encoding="utf-8") as f:
                    header = f.readline().rstrip("\r\n")
                names = [n.strip() for n in header.split(delimiter)]
            else:
                names = list(column_names)
            types = {n: pa.string() for n in names}
            table = pacsv.read_csv(
                path, read_options=read,
                parse_options=pacsv.ParseOptions(delimiter=delimiter, quote_char='"' if delimiter == "," else False),
                convert_options=pacsv.ConvertOptions(column_types=types, include_columns=columns,
                                                     strings_can_be_null=False, quoted_strings_can_be_null=False))
            first_row = 1 if column_names else 2
        else:
            raise LogFormatError(f"{path}: unknown file type {suffix!r}; expected .csv, .tsv or .parquet")
    except LogFormatError:
        raise
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as exc:
        raise LogFormatError(f"{path}: not readable as a {suffix} table ({str(exc).splitlines()[0]})") from exc
    data = {name: table.column(name).to_pylist() for name in table.column_names}
    return data, names, np.arange(first_row, first_row + table.num_rows, dtype=np.int64)


def _where(source: str, rows: np.ndarray, index: int) -> str:
    return f"{source}, row {int(rows[index])}"


def _numbers(values: list, source: str, rows: np.ndarray, column: str, canonical: str,
             mapping: str) -> np.ndarray:
    """``values`` as float64; a non-numeric or empty cell is an error naming row and value."""
    out = np.empty(len(values), dtype=np.float64)
    for i, v in enumerate(values):
        try:
            out[i] = float(v)
        except (TypeError, ValueError):
            out[i] = math.nan
        if not math.isfinite(out[i]):
            raise LogFormatError(
                f"{_where(source, rows, i)}: column {column!r} ({canonical!r} in mapping {mapping!r}) "
                f"has {v!r}; expected a finite number")
    return out


def _ids(values: list, source: str, rows: np.ndarray, column: str, canonical: str, mapping: str) -> np.ndarray:
    out = np.asarray(["" if v is None else str(v).strip() for v in values], dtype=object)
    empty = out == ""
    if empty.any():
        i = int(np.argmax(empty))
        raise LogFormatError(f"{_where(source, rows, i)}: column {column!r} ({canonical!r} in mapping "
                             f"{mapping!r}) is empty; expected a non-empty id")
    return out.astype(str)


def read_log_table(
    path: str | Path,
    mapping: LogMapping | str,
    *,
    unordered: Literal["sort", "error"] = "sort",
    duplicates: Literal["error", "drop"] = "error",
) -> LogTable:
    """Read a log file into a `LogTable` (checked, in time order per user).

    Args:
        path: the log file (CSV, TSV or Parquet).
        mapping: a `LogMapping` or the name of a layout in `LAYOUTS`.
        unordered: a user's events out of time order in the file: ``"sort"`` them
            (stable: file order breaks ties) and warn with the count, or ``"error"``.
        duplicates: events identical in user, item, timestamp and impression:
            ``"error"``, or ``"drop"`` all but the first and warn with the count.

    Returns:
        The events, sorted by (user's first appearance, timestamp, file order).

    Raises:
        LogFormatError: a missing column (named with the mapping), a non-numeric
            timestamp / click / rating / time, a click other than 0/1, an empty id,
            an unparsable date, an empty file, duplicates (with ``duplicates="error"``),
            unordered rows (with ``unordered="error"``).
    """
    if isinstance(mapping, str):
        mapping = layout(mapping)[0]
    source = str(path)
    wanted = list(mapping.columns.values()) + ([mapping.impression_list] if mapping.impression_list else [])
    _, names, _ = _peek(path, mapping)
    missing = [(canon, col) for canon, col in [*mapping.columns.items(), ("impression list", mapping.impression_list)]
               if col is not None and col not in names]
    if missing:
        canon, col = missing[0]
        raise LogFormatError(f"{source}: column {col!r} (the {canon!r} column of mapping {mapping.name!r}) "
                             f"not found; the file's columns are {names}")
    try:
        data, _, rows = read_table(path, mapping.column_names, mapping.delimiter,
                                   columns=list(dict.fromkeys(wanted)))
    except LogFormatError as exc:
        if mapping.column_names is None:
            raise
        raise LogFormatError(f"{exc}; mapping {mapping.name!r} expects a file without header of "
                             f"{len(mapping.column_names)} columns separated by {mapping.delimiter!r}: "
                             f"{list(mapping.column_names)}") from None
    if not rows.size:
        raise LogFormatError(f"{source}: has no rows; expected at least one event")
    if mapping.impression_list:
        data, rows = _expand_impressions(data, rows, mapping, source)
    cols = mapping.columns
    user = _ids(data[cols["user"]], source, rows, cols["user"], "user", mapping.name)
    if mapping.impression_list:
        item, click = data["__item__"], data["__click__"]
    else:
        item = _ids(data[cols["item"]], source, rows, cols["item"], "item", mapping.name)
        click = None
        if "click" in cols:
            click = _numbers(data[cols["click"]], source, rows, cols["click"], "click", mapping.name)
            bad = ~np.isin(click, (0.0, 1.0))
            if bad.any():
                i = int(np.argmax(bad))
                raise LogFormatError(f"{_where(source, rows, i)}: column {cols['click']!r} ('click' in mapping "
                                     f"{mapping.name!r}) has {data[cols['click']][i]!r}; expected 0 or 1")
    timestamp = _timestamps(data[cols["timestamp"]], source, rows, cols["timestamp"], mapping)
    optional = {}
    for canon, scale in (("rating", 1.0), ("watch_time", mapping.time_scale), ("duration", mapping.time_scale)):
        if canon in cols:
            values = _numbers(data[cols[canon]], source, rows, cols[canon], canon, mapping.name)
            if canon != "rating" and (values < 0).any():
                i = int(np.argmax(values < 0))
                raise LogFormatError(f"{_where(source, rows, i)}: column {cols[canon]!r} ({canon!r} in mapping "
                                     f"{mapping.name!r}) has {values[i]!r}; expected a time >= 0")
            optional[canon] = (values * scale).astype(np.float32)
    impression = None
    if "impression" in cols:
        impression = _ids(data[cols["impression"]], source, rows, cols["impression"], "impression", mapping.name)
    table = LogTable(user=user, item=np.asarray(item).astype(str), timestamp=timestamp, impression=impression,
                     click=None if click is None else np.asarray(click, dtype=np.float32), row=rows,
                     source=source, mapping=mapping, **optional)
    return _ordered(_deduplicated(table, duplicates), unordered)


def _peek(path: str | Path, mapping: LogMapping) -> tuple[dict, list[str], np.ndarray]:
    """The file's column names without reading its body."""
    path = Path(path)
    if not path.is_file():
        raise LogFormatError(f"{path}: no such file")
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        return {}, pq.read_schema(path).names, np.zeros(0, np.int64)
    if mapping.column_names is not None:
        return {}, list(mapping.column_names), np.zeros(0, np.int64)
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\r\n")
    if not header:
        raise LogFormatError(f"{path}: is empty; expected a header row")
    return {}, [n.strip().strip('"') for n in header.split(mapping.delimiter)], np.zeros(0, np.int64)


def _expand_impressions(data: dict, rows: np.ndarray, mapping: LogMapping, source: str) -> tuple[dict, np.ndarray]:
    """One event per ``item-click`` token of the impression-list column."""
    column = mapping.impression_list
    counts, items, clicks = [], [], []
    for i, cell in enumerate(data[column]):
        tokens = (cell or "").split()
        if not tokens:
            raise LogFormatError(f"{_where(source, rows, i)}: column {column!r} (impression list of mapping "
                                 f"{mapping.name!r}) is empty; expected tokens like 'N1-1 N2-0'")
        for token in tokens:
            item, sep, label = token.rpartition("-")
            if not sep or not item or label not in ("0", "1"):
                raise LogFormatError(f"{_where(source, rows, i)}: column {column!r} has token {token!r}; "
                                     "expected '<item id>-<0 or 1>'")
            items.append(item)
            clicks.append(float(label))
        counts.append(len(tokens))
    repeat = np.asarray(counts)
    out = {name: np.repeat(np.asarray(values, dtype=object), repeat).tolist()
           for name, values in data.items() if name != column}
    out["__item__"], out["__click__"] = np.asarray(items), np.asarray(clicks, dtype=np.float32)
    return out, np.repeat(rows, repeat)


def _timestamps(values: list, source: str, rows: np.ndarray, column: str, mapping: LogMapping) -> np.ndarray:
    if mapping.timestamp_format is None:
        return _numbers(values, source, rows, column, "timestamp", mapping.name) * mapping.timestamp_scale
    out = np.empty(len(values), dtype=np.float64)
    for i, v in enumerate(values):
        try:
            out[i] = datetime.strptime(str(v).strip(), mapping.timestamp_format).replace(
                tzinfo=timezone.utc).timestamp()
        except ValueError:
            raise LogFormatError(f"{_where(source, rows, i)}: column {column!r} ('timestamp' in mapping "
                                 f"{mapping.name!r}) has {v!r}; expected a date like "
                                 f"{mapping.timestamp_format!r}") from None
    return out


def _deduplicated(table: LogTable, duplicates: str) -> LogTable:
    if duplicates not in ("error", "drop"):
        raise LogFormatError(f"duplicates={duplicates!r}; expected 'error' or 'drop'")
    impression = table.impression if table.impression is not None else np.full(len(table), "")
    keys = np.char.add(np.char.add(np.char.add(table.user.astype(str), "\0"), table.item.astype(str)),
                       np.char.add(np.char.add("\0", impression.astype(str)),
                                   np.char.add("\0", table.timestamp.astype(str))))
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    dup = first[inverse] != np.arange(len(table))
    if not dup.any():
        return table
    i = int(np.argmax(dup))
    if duplicates == "error":
        raise LogFormatError(
            f"{table.source}: row {int(table.row[i])} repeats row {int(table.row[first[inverse[i]]])} (user "
            f"{str(table.user[i])!r}, item {str(table.item[i])!r}, same timestamp{' and impression' if table.impression is not None else ''}); "
            f"{int(dup.sum())} duplicate event(s) in all. Remove them, or pass duplicates='drop' to keep the first of each")
    warnings.warn(f"{table.source}: dropped {int(dup.sum())} duplicate event(s) (same user, item, timestamp"
                  f"{' and impression' if table.impression is not None else ''}; duplicates='drop'); "
                  f"the first is row {int(table.row[i])}", UserWarning, stacklevel=3)
    return table.select(~dup)


def _ordered(table: LogTable, unordered: str) -> LogTable:
    """Events grouped by user (in order of first appearance), by time within a user."""
    if unordered not in ("sort", "error"):
        raise LogFormatError(f"unordered={unordered!r}; expected 'sort' or 'error'")
    _, first, user_index = np.unique(table.user, return_index=True, return_inverse=True)
    rank = np.argsort(np.argsort(first))[user_index]  # users in order of first appearance
    file_order = np.arange(len(table))
    by_user = np.lexsort((file_order, rank))
    ts = table.timestamp[by_user]
    same_user = rank[by_user][1:] == rank[by_user][:-1]
    backwards = same_user & (ts[1:] < ts[:-1])
    if backwards.any():
        i = by_user[1:][backwards][0]
        count = int(backwards.sum())
        if unordered == "error":
            raise LogFormatError(
                f"{table.source}: row {int(table.row[i])} (user {str(table.user[i])!r}) is earlier than the row before "
                f"it of the same user; {count} such row(s). Sort the file by time, or pass unordered='sort'")
        warnings.warn(f"{table.source}: {count} event(s) were out of time order within their user; sorted by "
                      "timestamp (ties keep file order; unordered='sort')", UserWarning, stacklevel=3)
    order = np.lexsort((file_order, table.timestamp, rank))
    return table.select(order)
