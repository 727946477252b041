"""A real `LogTable` joined with a catalog -> the `InteractionLog` the ranker trains on.

A *step* is what the platform showed a user at once: the events of one impression
(when the data has impressions), else a single event. Each step becomes one record
of an `recsim_mm.logs.InteractionLog` with ``S`` shown items (``slate_size``) and
``K >= S`` candidates (``num_candidates``):

- shown items: the step's items. A step with more than ``S`` items keeps its clicked
  item and ``S - 1`` of its non-clicked ones drawn at random (counted as
  ``impressions_truncated``); a step with fewer (every step of a log without
  impressions: MovieLens, KuaiRand) is filled with **sampled negatives**: catalog items
  drawn uniformly among those the user never interacted with, recorded as shown and
  not clicked (counted as ``sampled_negatives``). Slot order is shuffled.
- an impression with several clicks becomes one record per click, each with that
  click and the impression's non-clicked items (counted as ``multi_click_impressions``).
- candidates: the shown items plus ``K - S`` sampled items that were not shown.
- click: the event's click (see `LogTable.clicked`); engagement: its watch time
  (minutes) where the data has it, else the item's duration (a full consumption).
- history: the user's earlier steps of the same session (``H`` most recent): the
  clicked item, or the first shown item when nothing was clicked, as the simulator
  records it. A session ends after ``session_gap`` seconds without events.
- propensity: 1.0 (a real log's logging probabilities are unknown).

Items the catalog lacks are counted; they are an error unless ``unknown_items="drop"``,
which drops their events and warns with the counts (events, items, users left with
no events). The `ImportReport` keeps every count.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

from recsim_mm.logs import InteractionLog
from recsim_mm.real_data.tables import LogFormatError, LogTable


@dataclass(frozen=True)
class ImportReport:
    """Counts of one `build_interaction_log` call (also written as ``import.json``).

    Attributes:
        events: events read; users, sessions, records, clicks: in the log built.
        unknown_item_events, unknown_items: events / distinct items absent from the
            catalog (dropped with ``unknown_items="drop"``).
        users_without_events: users all of whose events referred to unknown items.
        multi_click_impressions: impressions with more than one click (split).
        impressions_truncated: steps with more than ``S`` items (subsampled).
        sampled_negatives: shown slots filled with sampled catalog items.
        click_source: where clicks came from (click column, rating threshold, implicit).
        engagement_source: where engagement minutes came from.
    """

    events: int
    users: int
    sessions: int
    records: int
    clicks: int
    unknown_item_events: int
    unknown_items: int
    users_without_events: int
    multi_click_impressions: int
    impressions_truncated: int
    sampled_negatives: int
    click_source: str
    engagement_source: str

    def to_dict(self) -> dict:
        """The counts as a plain dict (JSON)."""
        return asdict(self)


def build_interaction_log(
    table: LogTable,
    item_ids: tuple[str, ...] | list[str],
    *,
    slate_size: int = 5,
    num_candidates: int | None = None,
    history_length: int = 10,
    durations: np.ndarray | None = None,
    unknown_items: Literal["error", "drop"] = "error",
    seed: int = 0,
) -> tuple[InteractionLog, ImportReport]:
    """Turn a real log table into an `InteractionLog` over the catalog's items.

    Args:
        table: the events (`read_log_table`).
        item_ids: the catalog's / item space's ``N`` ids; row ``r`` is ``item_ids[r]``.
        slate_size: ``S`` shown items per record.
        num_candidates: ``K >= S`` (default ``S``).
        history_length: ``H``.
        durations: ``(N,)`` minutes per item, the engagement of a click when the data
            has no watch time (default: 5 minutes, the catalog default).
        unknown_items: ``"error"`` or ``"drop"`` (warned with the counts).
        seed: seeds the negative sampling and the subsampling.

    Returns:
        ``(log, report)``: records ordered by user, then time; ``source`` is the file.

    Raises:
        LogFormatError: items absent from the catalog (count and first ids named),
            a catalog too small for ``K`` distinct items, bad sizes, nothing left.
    """
    k = slate_size if num_candidates is None else num_candidates
    if not (isinstance(slate_size, int) and slate_size >= 1 and isinstance(k, int) and k >= slate_size):
        raise LogFormatError(f"slate_size={slate_size!r} and num_candidates={num_candidates!r}: expected "
                             "integers with 1 <= slate_size <= num_candidates")
    if unknown_items not in ("error", "drop"):
        raise LogFormatError(f"unknown_items={unknown_items!r}; expected 'error' or 'drop'")
    item_ids = tuple(item_ids)
    n = len(item_ids)
    lookup = {item: row for row, item in enumerate(item_ids)}
    rows = np.fromiter((lookup.get(i, -1) for i in table.item), dtype=np.int64, count=len(table))
    unknown = rows < 0
    users_before = set(table.user.tolist())
    n_unknown_events, n_unknown_items, users_gone = int(unknown.sum()), 0, 0
    if unknown.any():
        missing = np.unique(table.item[unknown]).tolist()
        n_unknown_items = len(missing)
        users_gone = len(users_before - set(table.user[~unknown].tolist()))
        shown = ", ".join(repr(m) for m in missing[:5]) + (", ..." if len(missing) > 5 else "")
        if unknown_items == "error":
            raise LogFormatError(
                f"{table.source}: {n_unknown_events} event(s) refer to {n_unknown_items} item(s) absent from the "
                f"catalog ({n} items), e.g. {shown} (first at row {int(table.row[np.argmax(unknown)])}); add them "
                "to the catalog, or pass unknown_items='drop' to drop those events")
        warnings.warn(
            f"{table.source}: dropped {n_unknown_events} event(s) of {n_unknown_items} item(s) absent from the "
            f"catalog (unknown_items='drop'), e.g. {shown}; {users_gone} user(s) had no other event and are gone",
            UserWarning, stacklevel=2)
        table = table.select(~unknown)
        rows = rows[~unknown]
        if not len(table):
            raise LogFormatError(f"{table.source}: no event is left after dropping unknown items")
    if n < k + 1:
        raise LogFormatError(f"the catalog has {n} items; {k} candidates per record need at least {k + 1}")
    clicks = table.clicked()
    duration = np.full(n, 5.0, np.float32) if durations is None else np.asarray(durations, np.float32)
    if table.watch_time is not None:
        engagement, engagement_source = table.watch_time, "watch_time column (minutes)"
    else:
        engagement, engagement_source = duration[rows], "item duration (full consumption assumed)"
    if table.click is not None:
        click_source = "click column"
    elif table.rating is not None and table.mapping is not None and table.mapping.rating_threshold is not None:
        click_source = f"rating >= {table.mapping.rating_threshold:g}"
    else:
        click_source = "every event is an engagement (implicit feedback)"
    gap = table.mapping.session_gap if table.mapping is not None else None
    rng = np.random.default_rng(seed)
    builder = _Builder(k, slate_size, history_length, n, rng)
    counts = {"multi": 0, "truncated": 0, "sessions": 0}
    # Steps: runs of events of one user (and one impression, where there are impressions).
    user = table.user
    key = user if table.impression is None else np.char.add(np.char.add(user, "\0"), table.impression)
    if table.impression is None:
        boundaries = np.arange(1, len(table))
    else:
        boundaries = np.nonzero(key[1:] != key[:-1])[0] + 1
        # events of one impression are contiguous after the time sort unless interleaved: regroup them
        order = np.lexsort((np.arange(len(table)), _first_index(key)))
        if (order != np.arange(len(table))).any():
            table, rows, clicks, engagement, key = (table.select(order), rows[order], clicks[order],
                                                    engagement[order], key[order])
            user = table.user
            boundaries = np.nonzero(key[1:] != key[:-1])[0] + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(table)]])
    positives: dict[str, set[int]] = {}
    for u, r in zip(user.tolist(), rows.tolist(), strict=True):
        positives.setdefault(u, set()).add(r)
    previous_user, previous_time = None, -math.inf
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        u, t = user[start], float(table.timestamp[start])
        if u != previous_user or (gap is not None and t - previous_time > gap):
            builder.new_session(u)
            counts["sessions"] += 1
        previous_user, previous_time = u, float(table.timestamp[end - 1])
        items, labels = rows[start:end], clicks[start:end]
        minutes = engagement[start:end]
        clicked = np.nonzero(labels > 0)[0]
        others = items[labels == 0]
        if len(clicked) > 1:
            counts["multi"] += 1
        if len(items) - max(0, len(clicked) - 1) > slate_size:
            counts["truncated"] += 1
        choices = [(int(items[c]), float(minutes[c])) for c in clicked] or [(None, 0.0)]
        for item, minutes_spent in choices:
            builder.record(u, item, minutes_spent, others, positives[u])
        builder.advance(choices, others)
    log = builder.log(item_ids, table.source)
    report = ImportReport(
        events=len(table) + n_unknown_events, users=len(np.unique(log.user_id)), sessions=counts["sessions"],
        records=len(log), clicks=int((log.clicked_slot >= 0).sum()), unknown_item_events=n_unknown_events,
        unknown_items=n_unknown_items, users_without_events=users_gone, multi_click_impressions=counts["multi"],
        impressions_truncated=counts["truncated"], sampled_negatives=builder.sampled,
        click_source=click_source, engagement_source=engagement_source)
    return log, report


def _first_index(key: np.ndarray) -> np.ndarray:
    """``(E,)`` index of each key's first occurrence (groups keep their first-seen order)."""
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    return first[inverse]


class _Builder:
    """Accumulates records and per-session histories (the one place records are assembled)."""

    def __init__(self, k: int, s: int, h: int, n: int, rng: np.random.Generator) -> None:
        self.k, self.s, self.h, self.n, self.rng = k, s, h, n, rng
        self.columns: dict[str, list] = {name: [] for name in (
            "user", "step", "history", "candidates", "shown", "clicked_slot", "engagement")}
        self.sampled = 0
        self.history: list[tuple[int, float, float]] = []
        self.step = 0

    def new_session(self, user: str) -> None:
        self.history, self.step = [], 0

    def _sample(self, count: int, exclude: set[int]) -> list[int]:
        out: list[int] = []
        while len(out) < count:
            for r in self.rng.integers(self.n, size=2 * (count - len(out)) + 4).tolist():
                if r not in exclude:
                    out.append(r)
                    exclude.add(r)
                    if len(out) == count:
                        break
            if len(exclude) >= self.n and len(out) < count:
                raise LogFormatError(f"cannot sample {count} more distinct items: the catalog has only {self.n}")
        return out

    def record(self, user: str, item: int | None, minutes: float, others: np.ndarray, positives: set[int]) -> None:
        s = self.s
        others = others.tolist()
        if len(others) > s - (item is not None):
            others = self.rng.choice(others, size=s - (item is not None), replace=False).tolist()
        shown = ([item] if item is not None else []) + others
        if len(shown) < s:  # sampled negatives (the user's own items excluded while the catalog allows)
            exclude = set(shown) | positives
            extra = self._sample(s - len(shown), exclude if len(exclude) < self.n - s else set(shown))
            self.sampled += len(extra)
            shown += extra
        order = self.rng.permutation(s)
        shown = [shown[i] for i in order]
        rest = self._sample(self.k - s, set(shown)) if self.k > s else []
        c = self.columns
        c["user"].append(user)
        c["step"].append(self.step)
        c["history"].append(list(self.history[-self.h:]))
        c["candidates"].append(shown + rest)
        c["shown"].append(list(range(s)))
        c["clicked_slot"].append(shown.index(item) if item is not None else -1)
        c["engagement"].append(minutes if item is not None else 0.0)

    def advance(self, choices: list[tuple[int | None, float]], others: np.ndarray) -> None:
        for item, minutes in choices:
            if item is not None:
                self.history.append((item, 1.0, minutes))
            elif len(others):
                self.history.append((int(others[0]), 0.0, 0.0))
        self.step += 1

    def log(self, item_ids: tuple[str, ...], source: str) -> InteractionLog:
        c = self.columns
        m, h = len(c["user"]), self.h
        history_items = np.zeros((m, h), np.int64)
        history_feedback = np.zeros((m, h, 2), np.float32)
        history_mask = np.zeros((m, h), np.float32)
        for i, past in enumerate(c["history"]):
            if past:  # left padding: most recent step last
                arr = np.asarray(past, dtype=np.float64)
                history_items[i, h - len(past):] = arr[:, 0].astype(np.int64)
                history_feedback[i, h - len(past):] = arr[:, 1:]
                history_mask[i, h - len(past):] = 1.0
        return InteractionLog(
            item_ids=item_ids, user_id=np.asarray(c["user"]), step=np.asarray(c["step"], np.int64),
            history_items=history_items, history_feedback=history_feedback, history_mask=history_mask,
            candidate_items=np.asarray(c["candidates"], np.int64).reshape(m, self.k),
            shown=np.asarray(c["shown"], np.int64).reshape(m, self.s),
            clicked_slot=np.asarray(c["clicked_slot"], np.int64),
            engagement=np.asarray(c["engagement"], np.float32),
            propensity=np.ones(m), source=source)


def split_by_time(log: InteractionLog, test_fraction: float = 0.2) -> tuple[InteractionLog, InteractionLog]:
    """Each user's earlier records vs their last ``test_fraction`` (held-out clicks of known users).

    Records are taken in log order (time order per user, as `build_interaction_log`
    writes them). A user with one record stays entirely in the first part.

    Args:
        log: the log.
        test_fraction: share of each user's records held out, in (0, 1).

    Returns:
        ``(early, late)`` logs.

    Raises:
        ValueError: fraction out of range, or no user has two records.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction={test_fraction}; expected in (0, 1)")
    users, inverse, counts = np.unique(log.user_id, return_inverse=True, return_counts=True)
    position = np.zeros(len(log), np.int64)
    seen = np.zeros(len(users), np.int64)
    for i, u in enumerate(inverse.tolist()):
        position[i] = seen[u]
        seen[u] += 1
    held = np.where(counts >= 2, np.maximum(1, np.floor(test_fraction * counts + 0.5)).astype(np.int64), 0)
    late = position >= (counts - held)[inverse]
    if not late.any():
        raise ValueError(f"{log.source}: no user has two records; nothing to hold out")
    return log.select(~late), log.select(late)
