"""Logged interactions: the data the supervised ranker learns from, and its Parquet file format.

An `InteractionLog` holds one record per (user, step) a logging policy served: the
history the user had at that step, the candidates, the shown slate, the click, the
engagement and the logging propensity of the shown slate. In memory all item
references are rows of an `ItemSpace`; on disk they are the catalog's item ids
(strings), so a log written here, or a log a user builds from their own system,
refers to items by id and is checked against the item space it is loaded with.

This module holds the container and its file I/O. The logging policies and `collect`
(how simulated logs are made) are in `recsim_mm.logging_policies`; their names are
also importable from here.

File format (``recsim_mm.InteractionLog/1``): one Parquet file, one row per logged
step, columns

====================  ===================  ==============================================
column                Arrow type           meaning
====================  ===================  ==============================================
user_id               string               the user (held-out splits are by this column)
step                  int64                step of that user's session, from 0
history_item_ids      list<string>         past shown items, oldest first, real steps only
history_clicked       list<float32>        1.0 if that past item was clicked, else 0.0
history_engagement    list<float32>        minutes spent on that past item (0 if no click)
candidate_ids         list<string>         the K candidates offered at this step
shown_positions       list<int64>          the S shown candidates (positions into
                                           candidate_ids, distinct, in slate order)
clicked_slot          int64                slot of the clicked item in the slate, -1: none
engagement            float32              minutes spent on the clicked item (0 if none)
propensity            float64              probability the logging policy gave this slate
time_left             float32 (optional)   user's remaining time budget, minutes
true_affinity         list<float32> (opt.) the simulator's hidden affinity of each
                                           candidate (only simulated logs have it; used
                                           for NDCG/Recall against ground truth)
====================  ===================  ==============================================

Every row must have the same K and S; history lengths may vary up to the file-level
metadata key ``history_length`` (optional; default: the longest history in the file).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch

from recsim_mm.files import atomic_write
from recsim_mm.observation import (
    CANDIDATE_ITEMS,
    HISTORY_FEEDBACK,
    HISTORY_ITEMS,
    HISTORY_MASK,
    TIME_LEFT,
)

LOG_FORMAT = "recsim_mm.InteractionLog/1"
REQUIRED_COLUMNS = (
    "user_id",
    "step",
    "history_item_ids",
    "history_clicked",
    "history_engagement",
    "candidate_ids",
    "shown_positions",
    "clicked_slot",
    "engagement",
    "propensity",
)
OPTIONAL_COLUMNS = ("time_left", "true_affinity")
NESTED_NUMBER_COLUMNS = ("history_clicked", "history_engagement", "shown_positions", "true_affinity")


@dataclass(frozen=True)
class InteractionLog:
    """Logged interactions, item references resolved to rows of one item space.

    ``M`` records, history length ``H`` (left-padded: most recent step last, as in the
    observation), ``K`` candidates, slate size ``S``.

    Attributes:
        item_ids: the item space's ids; row ``r`` means ``item_ids[r]``.
        user_id: ``(M,)`` str array.
        step: ``(M,)`` int64, step within the user's session.
        history_items: ``(M, H)`` int64 item rows, 0 where padded.
        history_feedback: ``(M, H, 2)`` float32 ``[clicked, engagement minutes]``, 0 padded.
        history_mask: ``(M, H)`` float32, 1 for a real past step.
        candidate_items: ``(M, K)`` int64 item rows.
        shown: ``(M, S)`` int64 positions into the candidates, distinct per record.
        clicked_slot: ``(M,)`` int64 slot of ``shown`` that was clicked, -1 for none.
        engagement: ``(M,)`` float32 minutes on the clicked item (0 when no click).
        propensity: ``(M,)`` float64 in (0, 1], logging probability of the shown slate.
        time_left: ``(M,)`` float32 minutes, or None when the log lacks it.
        true_affinity: ``(M, K)`` float32 hidden affinities, or None (non-simulated logs).
        source: where the log came from (its file path), named in error messages.
    """

    item_ids: tuple[str, ...]
    user_id: np.ndarray
    step: np.ndarray
    history_items: np.ndarray
    history_feedback: np.ndarray
    history_mask: np.ndarray
    candidate_items: np.ndarray
    shown: np.ndarray
    clicked_slot: np.ndarray
    engagement: np.ndarray
    propensity: np.ndarray
    time_left: np.ndarray | None = None
    true_affinity: np.ndarray | None = None
    source: str = field(default="InteractionLog", compare=False)

    def __post_init__(self) -> None:
        self.validate()

    # -- shape and value checks --------------------------------------------------------

    def validate(self) -> None:
        """Check shapes, ranges and finiteness; errors name `source` and the record.

        Raises:
            ValueError: empty log, inconsistent shapes, NaN/inf values, item rows out of
                range, invalid slates or clicks, propensities outside (0, 1].
        """
        source = self.source
        m = len(self.user_id)
        if m == 0:
            raise ValueError(f"{source}: the log is empty (0 records); nothing to train or evaluate on")
        n = len(self.item_ids)
        if self.history_items.ndim != 2 or self.history_items.shape[0] != m:
            raise ValueError(f"{source}: history_items must be (M={m}, H); got {self.history_items.shape}")
        h = self.history_items.shape[1]
        if self.candidate_items.ndim != 2 or self.candidate_items.shape[0] != m:
            raise ValueError(
                f"{source}: candidate_items must be (M={m}, K); got {self.candidate_items.shape}"
            )
        k = self.candidate_items.shape[1]
        if self.shown.ndim != 2 or self.shown.shape[0] != m or not 1 <= self.shown.shape[1] <= k:
            raise ValueError(f"{source}: shown must be (M={m}, S) with 1 <= S <= K={k}; got {self.shown.shape}")
        s = self.shown.shape[1]
        expected = {
            "step": (m,),
            HISTORY_FEEDBACK: (m, h, 2),
            HISTORY_MASK: (m, h),
            "clicked_slot": (m,),
            "engagement": (m,),
            "propensity": (m,),
            TIME_LEFT: (m,),
            "true_affinity": (m, k),
        }
        for name, shape in expected.items():
            value = getattr(self, name)
            if value is None:
                continue
            if value.shape != shape:
                raise ValueError(f"{source}: {name} must have shape {shape}; got {value.shape}")
            if value.dtype.kind == "f" and not np.isfinite(value).all():
                record = int(np.nonzero(~np.isfinite(value.reshape(m, -1)).all(1))[0][0])
                raise ValueError(
                    f"{source}: {name} has a NaN or infinite value in record {record} "
                    f"(user {str(self.user_id[record])!r}, step {int(self.step[record])})"
                )
        for name, value in ((HISTORY_ITEMS, self.history_items), (CANDIDATE_ITEMS, self.candidate_items)):
            if value.size and (value.min() < 0 or value.max() >= n):
                raise ValueError(f"{source}: {name} has item rows outside [0, {n - 1}]")
        if (self.shown < 0).any() or (self.shown >= k).any():
            raise ValueError(f"{source}: shown positions must be in [0, K-1={k - 1}]")
        if s > 1:
            ordered = np.sort(self.shown, axis=1)
            dup = (ordered[:, 1:] == ordered[:, :-1]).any(1)
            if dup.any():
                raise ValueError(
                    f"{source}: record {int(np.argmax(dup))} shows the same candidate twice; "
                    "slate entries must be distinct"
                )
        if (self.clicked_slot < -1).any() or (self.clicked_slot >= s).any():
            raise ValueError(f"{source}: clicked_slot must be -1 (no click) or in [0, S-1={s - 1}]")
        bad = (self.propensity <= 0) | (self.propensity > 1)
        if bad.any():
            record = int(np.argmax(bad))
            raise ValueError(
                f"{source}: propensity must be in (0, 1]; record {record} has {self.propensity[record]}"
            )
        if not np.isin(self.history_mask, (0.0, 1.0)).all():
            raise ValueError(f"{source}: history_mask must hold only 0 and 1")

    # -- sizes and selections ------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.user_id)

    @property
    def history_length(self) -> int:
        """``H``."""
        return self.history_items.shape[1]

    @property
    def num_candidates(self) -> int:
        """``K``."""
        return self.candidate_items.shape[1]

    @property
    def slate_size(self) -> int:
        """``S``."""
        return self.shown.shape[1]

    @property
    def clicks(self) -> np.ndarray:
        """``(M, S)`` float32 0/1 click label of every shown slot."""
        labels = np.zeros(self.shown.shape, dtype=np.float32)
        hit = self.clicked_slot >= 0
        labels[np.nonzero(hit)[0], self.clicked_slot[hit]] = 1.0
        return labels

    def select(self, records: np.ndarray) -> InteractionLog:
        """The sub-log of ``records`` (bool mask ``(M,)`` or int indices)."""
        records = np.asarray(records)
        values = {}
        for f in fields(self):
            value = getattr(self, f.name)
            keep = f.name in ("item_ids", "source") or value is None
            values[f.name] = value if keep else value[records]
        return InteractionLog(**values)

    def split_by_user(self, val_fraction: float, seed: int = 0) -> tuple[InteractionLog, InteractionLog]:
        """Split into (train, validation) so that no user appears in both.

        Args:
            val_fraction: share of distinct users held out, in (0, 1).
            seed: which users are held out (deterministic given the seed).

        Raises:
            ValueError: fraction out of range, or fewer than 2 distinct users.
        """
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction={val_fraction}; expected in (0, 1)")
        users = np.unique(self.user_id)
        if len(users) < 2:
            raise ValueError(f"splitting by user needs at least 2 users; the log has {len(users)}")
        rng = np.random.default_rng(seed)
        n_val = min(len(users) - 1, max(1, round(val_fraction * len(users))))
        held = set(rng.permutation(users)[:n_val].tolist())
        is_val = np.fromiter((u in held for u in self.user_id), dtype=bool, count=len(self))
        return self.select(~is_val), self.select(is_val)

    def concat(self, other: InteractionLog) -> InteractionLog:
        """Records of both logs (same item space, K and S; histories padded to the longer H)."""
        if other.item_ids != self.item_ids:
            raise ValueError("cannot concatenate logs over different item spaces")
        h = max(self.history_length, other.history_length)
        a, b = self._padded(h), other._padded(h)
        values = {"item_ids": self.item_ids, "source": self.source}
        for f in fields(self):
            if f.name in values:
                continue
            x, y = getattr(a, f.name), getattr(b, f.name)
            if (x is None) != (y is None):
                raise ValueError(f"cannot concatenate: only one log has {f.name}")
            values[f.name] = None if x is None else np.concatenate([x, y])
        return InteractionLog(**values)

    def _padded(self, h: int) -> InteractionLog:
        pad = h - self.history_length
        if pad == 0:
            return self
        return replace(
            self,
            history_items=np.pad(self.history_items, ((0, 0), (pad, 0))),
            history_feedback=np.pad(self.history_feedback, ((0, 0), (pad, 0), (0, 0))),
            history_mask=np.pad(self.history_mask, ((0, 0), (pad, 0))),
        )

    # -- to the scorer -------------------------------------------------------------------

    def observations(
        self, records: np.ndarray | slice | None = None, device: str | torch.device = "cpu",
        candidates: str = "all",
    ) -> dict[str, torch.Tensor]:
        """The ids-mode observation batch the scorer reads, for ``records``.

        Args:
            records: indices / mask / slice of records (default: all).
            device: where the tensors go.
            candidates: ``"all"``: the K candidates (``(B, K)``); ``"shown"``: only
                the S shown ones, in slate order (``(B, S)``), which is what the click
                labels (`clicks`) refer to.

        Returns:
            ``history_items (B, H) int64``, ``history_feedback (B, H, 2) float32``,
            ``history_mask (B, H) float32``, ``candidate_items (B, K|S) int64`` and,
            when the log has it, ``time_left (B, 1) float32``.
        """
        sel = slice(None) if records is None else records
        cand = self.candidate_items[sel]
        if candidates == "shown":
            cand = np.take_along_axis(cand, self.shown[sel], axis=1)
        elif candidates != "all":
            raise ValueError(f"candidates={candidates!r}; expected 'all' or 'shown'")
        obs = {
            HISTORY_ITEMS: torch.as_tensor(self.history_items[sel], dtype=torch.long),
            HISTORY_FEEDBACK: torch.as_tensor(self.history_feedback[sel], dtype=torch.float32),
            HISTORY_MASK: torch.as_tensor(self.history_mask[sel], dtype=torch.float32),
            CANDIDATE_ITEMS: torch.as_tensor(cand, dtype=torch.long),
        }
        if self.time_left is not None:
            obs[TIME_LEFT] = torch.as_tensor(self.time_left[sel], dtype=torch.float32).reshape(-1, 1)
        return {k: v.to(device) for k, v in obs.items()}

    # -- files ---------------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        """Write the log as Parquet (format ``recsim_mm.InteractionLog/1``), atomically."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = Path(path)
        ids = np.asarray(self.item_ids, dtype=object)
        mask = self.history_mask > 0

        def ragged(values: np.ndarray, dtype) -> pa.Array:
            return pa.array([row[m].tolist() for row, m in zip(values, mask, strict=True)], type=dtype)

        columns = {
            "user_id": pa.array(self.user_id.astype(str).tolist(), type=pa.string()),
            "step": pa.array(self.step, type=pa.int64()),
            "history_item_ids": ragged(ids[self.history_items], pa.list_(pa.string())),
            "history_clicked": ragged(self.history_feedback[..., 0], pa.list_(pa.float32())),
            "history_engagement": ragged(self.history_feedback[..., 1], pa.list_(pa.float32())),
            "candidate_ids": pa.array(ids[self.candidate_items].tolist(), type=pa.list_(pa.string())),
            "shown_positions": pa.array(self.shown.tolist(), type=pa.list_(pa.int64())),
            "clicked_slot": pa.array(self.clicked_slot, type=pa.int64()),
            "engagement": pa.array(self.engagement, type=pa.float32()),
            "propensity": pa.array(self.propensity, type=pa.float64()),
        }
        if self.time_left is not None:
            columns["time_left"] = pa.array(self.time_left, type=pa.float32())
        if self.true_affinity is not None:
            columns["true_affinity"] = pa.array(self.true_affinity.tolist(), type=pa.list_(pa.float32()))
        table = pa.table(columns).replace_schema_metadata(
            {"format": LOG_FORMAT, "history_length": str(self.history_length)}
        )
        atomic_write(path, lambda f: pq.write_table(table, f))

    @classmethod
    def load(cls, path: str | Path, item_space) -> InteractionLog:
        """Read a Parquet log and resolve its item ids against ``item_space``.

        Args:
            path: a file in the format described in this module's docstring.
            item_space: the `ItemSpace` the log's item ids must belong to.

        Raises:
            FileNotFoundError: no such file.
            ValueError: unreadable file, missing column, ragged K or S, unknown item id
                (named with its record), empty log, NaN/inf values, bad slates or clicks.
        """
        import pyarrow.parquet as pq

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such log file")
        try:
            table = pq.read_table(path)
        except Exception as exc:  # pyarrow raises several types for a bad file
            raise ValueError(f"{path}: not a readable Parquet log ({exc})") from exc
        missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
        if missing:
            raise ValueError(
                f"{path}: missing column(s) {missing}; a {LOG_FORMAT} log needs {list(REQUIRED_COLUMNS)}"
            )
        if table.num_rows == 0:
            raise ValueError(f"{path}: the log is empty (0 records); nothing to train or evaluate on")
        meta = table.schema.metadata or {}
        columns = {name: table.column(name).to_pylist() for name in table.column_names
                   if name in REQUIRED_COLUMNS + OPTIONAL_COLUMNS}
        return cls.from_records(columns, item_space, source=str(path),
                                history_length=int(meta[b"history_length"]) if b"history_length" in meta else None)

    @classmethod
    def from_records(
        cls, columns: dict[str, list], item_space, source: str = "log", history_length: int | None = None
    ) -> InteractionLog:
        """Build a log from column lists in the file format (item ids as strings).

        This is the entry point for logs a user assembles in Python (e.g. from their
        own system): ``columns`` maps each column name of the file format to a list with
        one entry per record. Checks are the same as `load`'s.
        """
        m = len(columns.get("user_id", []))
        if m == 0:
            raise ValueError(f"{source}: the log is empty (0 records); nothing to train or evaluate on")
        for name in REQUIRED_COLUMNS + OPTIONAL_COLUMNS:
            if name not in columns:
                if name in OPTIONAL_COLUMNS:
                    continue
                raise ValueError(f"{source}: missing column {name!r}")
            if columns[name] is None and name in OPTIONAL_COLUMNS:
                continue
            if len(columns[name]) != m:
                raise ValueError(f"{source}: column {name!r} has {len(columns[name])} entries, user_id has {m}")
            if any(v is None for v in columns[name]):
                record = next(i for i, v in enumerate(columns[name]) if v is None)
                raise ValueError(f"{source}: column {name!r} is null in record {record}")
            if name in NESTED_NUMBER_COLUMNS and any(x is None for v in columns[name] for x in v):
                record = next(i for i, v in enumerate(columns[name]) if any(x is None for x in v))
                raise ValueError(f"{source}: column {name!r} has a null entry in record {record}")
        lookup = item_space._lookup()

        def fixed_width(column: str) -> int:
            widths = {len(v) for v in columns[column]}
            if len(widths) != 1:
                raise ValueError(
                    f"{source}: every record's {column!r} must have the same length; "
                    f"got lengths {sorted(widths)}"
                )
            return widths.pop()

        def rows(lists: list[list[str]], column: str) -> np.ndarray:
            """Flattened item rows of a list-of-ids column; unknown ids are named."""
            flat = [item_id for ids in lists for item_id in ids]
            out = np.fromiter((lookup.get(i, -1) for i in flat), dtype=np.int64, count=len(flat))
            if (out < 0).any():
                first = int(np.argmax(out < 0))
                record = int(np.searchsorted(np.cumsum([len(v) for v in lists]), first, side="right"))
                raise ValueError(
                    f"{source}: unknown item id {flat[first]!r} in column {column!r}, record "
                    f"{record} (user {columns['user_id'][record]!r}); it is not one of the "
                    f"item space's {item_space.num_items} items"
                )
            return out

        for name in ("history_clicked", "history_engagement", "engagement", "propensity",
                     "time_left", "true_affinity"):
            if columns.get(name) is None:
                continue
            values = columns[name]
            nested = name.startswith("history") or name == "true_affinity"
            finite = [bool(np.isfinite(np.asarray(v if nested else [v], dtype=np.float64)).all())
                      for v in values]
            if not all(finite):
                record = finite.index(False)
                raise ValueError(
                    f"{source}: column {name!r} has a NaN or infinite value in record {record} "
                    f"(user {columns['user_id'][record]!r})"
                )
        k = fixed_width("candidate_ids")
        fixed_width("shown_positions")
        lengths = np.asarray([len(v) for v in columns["history_item_ids"]], dtype=np.int64)
        for name in ("history_clicked", "history_engagement"):
            other = np.asarray([len(v) for v in columns[name]], dtype=np.int64)
            if (other != lengths).any():
                record = int(np.argmax(other != lengths))
                raise ValueError(
                    f"{source}: record {record} has {lengths[record]} history_item_ids but "
                    f"{other[record]} {name}"
                )
        h = int(lengths.max()) if history_length is None else history_length
        if lengths.max() > h:
            raise ValueError(
                f"{source}: a history has {lengths.max()} steps, more than history_length={h}"
            )
        h = max(h, 1)
        # Left padding: most recent step last, as in the observation.
        record_of = np.repeat(np.arange(m), lengths)
        starts = np.cumsum(lengths) - lengths
        column_of = h - lengths[record_of] + (np.arange(lengths.sum()) - starts[record_of])
        history_items = np.zeros((m, h), dtype=np.int64)
        history_feedback = np.zeros((m, h, 2), dtype=np.float32)
        history_mask = np.zeros((m, h), dtype=np.float32)
        history_items[record_of, column_of] = rows(columns["history_item_ids"], "history_item_ids")
        for channel, name in enumerate(("history_clicked", "history_engagement")):
            flat = np.asarray([x for v in columns[name] for x in v], dtype=np.float32)
            history_feedback[record_of, column_of, channel] = flat
        history_mask[record_of, column_of] = 1.0
        candidate_items = rows(columns["candidate_ids"], "candidate_ids").reshape(m, k)
        optional = {}
        if columns.get("time_left") is not None:
            optional["time_left"] = np.asarray(columns["time_left"], dtype=np.float32)
        if columns.get("true_affinity") is not None:
            if {len(v) for v in columns["true_affinity"]} != {k}:
                raise ValueError(f"{source}: true_affinity must have K={k} entries per record")
            optional["true_affinity"] = np.asarray(columns["true_affinity"], dtype=np.float32)
        return cls(
            item_ids=item_space.item_ids,
            user_id=np.asarray([str(u) for u in columns["user_id"]]),
            step=np.asarray(columns["step"], dtype=np.int64),
            history_items=history_items,
            history_feedback=history_feedback,
            history_mask=history_mask,
            candidate_items=candidate_items,
            shown=np.asarray(columns["shown_positions"], dtype=np.int64),
            clicked_slot=np.asarray(columns["clicked_slot"], dtype=np.int64),
            engagement=np.asarray(columns["engagement"], dtype=np.float32),
            propensity=np.asarray(columns["propensity"], dtype=np.float64),
            source=source,
            **optional,
        )


# -- names that moved to recsim_mm.logging_policies -------------------------------------------

#: Public names of `recsim_mm.logging_policies`, still importable from here (docs and user
#: code import them from ``recsim_mm.logs``). Resolved on first access, so that module
#: can import `InteractionLog` from this one without a cycle.
_LOGGING_POLICY_NAMES = (
    "LoggingPolicy", "UniformPolicy", "PopularityPolicy", "ProductionPolicy", "EpsilonMixture", "collect",
)


def __getattr__(name: str):
    if name in _LOGGING_POLICY_NAMES:
        from recsim_mm import logging_policies

        return getattr(logging_policies, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LOGGING_POLICY_NAMES))
