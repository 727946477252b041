"""What a platform knows about an item besides its content: the scorer's item metadata.

The simulated users react to an item's duration (a clicked item is watched for a
fraction of it) and its quality (hidden); a real platform publishes the first and
observes a proxy of the second in its logs (how often the item is clicked when
shown). `item_feature_table` builds those per-item columns from observable data only:

- ``"duration"``: ``log(duration minutes)`` from the catalog (`ItemSpace.duration`).
- ``"popularity"``: ``log1p(clicks)`` of the item in the training log.
- ``"click_rate"``: the item's click rate when shown in the training log, shrunk
  toward the log's overall click rate by `CLICK_RATE_PRIOR` pseudo-impressions (an item
  shown twice and clicked once is not a 50% item).

The log-based columns are standardised over the catalog (zero mean, unit variance; a
constant column stays 0), so one learning rate fits every catalog; the duration column
stays ``log(minutes)`` (already of unit scale), so the scorer reads the duration back
from it (``exp``) to turn a predicted watched fraction into minutes. Without a log (a cold-start
agent), popularity and click rate are 0 for every item: no information, stated.

The `recsim_mm.scorer.Scorer` holds the table as a persistent buffer, so the values a
ranker was trained with travel with its weights (checkpoints, warm starts). Nothing of
a user's hidden state enters.
"""

from __future__ import annotations

import numpy as np
import torch

#: Feature names `item_feature_table` knows, in the order a `ScorerConfig` may list them.
ITEM_FEATURES: tuple[str, ...] = ("duration", "popularity", "click_rate")
#: Pseudo-impressions at the log's overall click rate added to every item's counts.
CLICK_RATE_PRIOR = 20.0


def check_item_features(names: tuple[str, ...]) -> None:
    """Raise ``ValueError`` naming an unknown or repeated feature name."""
    unknown = [n for n in names if n not in ITEM_FEATURES]
    if unknown:
        raise ValueError(f"item feature(s) {unknown} are unknown; expected names from {list(ITEM_FEATURES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"item features {list(names)} repeat a name")


def item_log_counts(log, num_items: int) -> tuple[np.ndarray, np.ndarray]:
    """``(impressions, clicks)`` per item row of an `recsim_mm.logs.InteractionLog`, ``(N,)`` float64 each.

    An impression is one shown slot; a click is the clicked slot's item.
    """
    shown_rows = np.take_along_axis(log.candidate_items, log.shown, axis=1)  # (M, S)
    impressions = np.bincount(shown_rows.reshape(-1), minlength=num_items).astype(np.float64)
    hit = log.clicked_slot >= 0
    clicked_rows = shown_rows[hit, log.clicked_slot[hit]]
    clicks = np.bincount(clicked_rows, minlength=num_items).astype(np.float64)
    return impressions[:num_items], clicks[:num_items]


def item_feature_table(item_space, names: tuple[str, ...] = ITEM_FEATURES, log=None) -> torch.Tensor:
    """Item metadata, ``(N, len(names))`` float32 on CPU (see the module docstring for each column).

    Args:
        item_space: the `recsim_mm.item_space.ItemSpace` (durations come from it).
        names: features, each in `ITEM_FEATURES`.
        log: the training `InteractionLog` over ``item_space``, for the log-based
            features; None: those columns are 0 (no information).

    Raises:
        ValueError: an unknown name, a log over another number of items, or a
            non-positive duration (naming the item).
    """
    names = tuple(names)
    check_item_features(names)
    n = item_space.num_items
    if log is not None and len(log.item_ids) != n:
        raise ValueError(f"{log.source}: the log refers to {len(log.item_ids)} items; the item space has {n}")
    columns = []
    impressions = clicks = None
    if log is not None and any(name != "duration" for name in names):
        impressions, clicks = item_log_counts(log, n)
    for name in names:
        if name == "duration":
            duration = item_space.duration.detach().cpu().double().numpy()
            bad = np.flatnonzero(~(duration > 0))
            if bad.size:
                raise ValueError(f"item {item_space.item_ids[bad[0]]!r} has duration {duration[bad[0]]}; expected > 0 minutes")
            columns.append(np.log(duration))
            continue
        if log is None:
            column = np.zeros(n)
        elif name == "popularity":
            column = np.log1p(clicks)
        else:  # click_rate
            overall = clicks.sum() / max(impressions.sum(), 1.0)
            column = (clicks + CLICK_RATE_PRIOR * overall) / (impressions + CLICK_RATE_PRIOR)
        spread = column.std()
        columns.append((column - column.mean()) / spread if spread > 0 else np.zeros(n))
    return torch.tensor(np.stack(columns, axis=1) if columns else np.zeros((n, 0)), dtype=torch.float32)
