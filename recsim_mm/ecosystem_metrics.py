"""Ecosystem metrics: market share, user welfare, exposure concentration (Gini), content diversity.

Pure functions over torch tensors (CPU or CUDA) plus `EcosystemHistory`, the per-step
record the PettingZoo ecosystem environments (``envs/ecosystems``) keep for plots.
Nothing here imports an RL library.

- `market_share`: fraction of the user population visiting each platform in a step.
- `welfare`: user welfare, the mean engagement (minutes) per user per step.
- `gini`: concentration of exposure over creators (0: everyone equally exposed,
  ``1 - 1/n``: one creator gets everything).
- `content_diversity`: how different the recommended items are from each other
  (mean pairwise cosine distance over the population's recommendations).
- `position_spread`: how far apart creators publish (mean pairwise distance).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch


def market_share(visited: torch.Tensor, num_platforms: int) -> torch.Tensor:
    """Share of users visiting each platform.

    Args:
        visited: ``(U,)`` int64 platform index per user, in ``[0, num_platforms)``.
        num_platforms: ``M``.

    Returns:
        ``(M,)`` float32 shares summing to 1 (zeros when ``U = 0``).
    """
    counts = torch.bincount(visited, minlength=num_platforms).float()
    return counts / max(visited.numel(), 1)


def welfare(engagement: torch.Tensor) -> float:
    """User welfare: mean engagement over users, minutes per user.

    Args:
        engagement: ``(U,)`` float32 minutes each user engaged this step.
    """
    return float(engagement.float().mean()) if engagement.numel() else 0.0


def gini(values: torch.Tensor | np.ndarray | Iterable[float]) -> float:
    """Gini coefficient of non-negative values (e.g. exposure per creator).

    ``G = sum_i sum_j |x_i - x_j| / (2 n^2 mean(x))``: 0 when all values are equal,
    ``1 - 1/n`` when one holds everything; 0 for an all-zero vector.

    Args:
        values: ``(n,)`` non-negative numbers.

    Raises:
        ValueError: empty input, a negative or non-finite value.
    """
    x = torch.as_tensor(
        np.asarray(values, dtype=np.float64) if not isinstance(values, torch.Tensor) else values
    )
    x = x.double().reshape(-1)
    if x.numel() == 0:
        raise ValueError("gini needs at least one value; got an empty vector")
    if not bool(torch.isfinite(x).all()) or bool((x < 0).any()):
        raise ValueError(f"gini needs finite non-negative values; got {x.tolist()[:8]}")
    total = float(x.sum())
    if total == 0:
        return 0.0
    n = x.numel()
    ordered = torch.sort(x).values
    # Sorted form of the mean absolute difference: sum_i (2i - n - 1) x_(i) / (n * sum x).
    ranks = torch.arange(1, n + 1, dtype=torch.float64, device=x.device)
    return float(((2 * ranks - n - 1) * ordered).sum() / (n * total))


def content_diversity(items: torch.Tensor, item_vectors: torch.Tensor) -> float:
    """Mean pairwise cosine distance between the items recommended to different users.

    ``1 - mean_{u != u'} cos(x_u, x_u')`` over the ``U`` recommendations of one step
    (an item recommended to many users counts that many times), computed in
    ``O(U d)`` from the sum of the unit vectors. 0: everyone got the same item;
    about 1: unrelated items; at most ``1 + 1 / (U - 1)``.

    Args:
        items: ``(U,)`` int64 item rows recommended (one per user).
        item_vectors: ``(N, d)`` float32 item vectors (the item space's ``fused``).

    Returns:
        The diversity (0.0 when fewer than two items).
    """
    n = items.numel()
    if n < 2:
        return 0.0
    unit = torch.nn.functional.normalize(item_vectors[items].double(), dim=-1)
    total = unit.sum(0)
    # sum over ordered pairs u != u' of cos = |sum|^2 - n (the n self-pairs have cos 1).
    mean_cos = (float(total @ total) - n) / (n * (n - 1))
    return 1.0 - mean_cos


def position_spread(positions: torch.Tensor) -> float:
    """Mean pairwise Euclidean distance between creator positions.

    Args:
        positions: ``(C, q)`` float32 positions in the content map.

    Returns:
        The mean over the ``C (C - 1) / 2`` pairs (0.0 for one creator).
    """
    c = positions.shape[0]
    if c < 2:
        return 0.0
    distances = torch.cdist(positions.double(), positions.double())
    return float(distances.sum() / (c * (c - 1)))


class EcosystemHistory:
    """Per-step metric records of one episode, for plots and summaries.

    Each record is a dict of scalars (``float``/``int``) and small arrays (e.g.
    ``market_share`` ``(M,)``); `array` stacks one key over the episode.

    Example:
        >>> history = EcosystemHistory()
        >>> history.append(step=1, market_share=np.array([0.5, 0.5]), welfare=3.0)
        >>> history.append(step=2, market_share=np.array([0.6, 0.4]), welfare=3.5)
        >>> history.array("market_share").shape
        (2, 2)
    """

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def append(self, **record: Any) -> None:
        """Add one step's record (keyword arguments: metric name -> value)."""
        self.records.append(record)

    def clear(self) -> None:
        """Forget all records (a new episode starts)."""
        self.records.clear()

    def __len__(self) -> int:
        return len(self.records)

    def keys(self) -> list[str]:
        """Metric names of the records (those of the first record)."""
        return list(self.records[0]) if self.records else []

    def array(self, key: str) -> np.ndarray:
        """``(T, ...)`` the metric ``key`` over the T recorded steps.

        Raises:
            KeyError: no record has ``key`` (the recorded keys are listed).
        """
        if not self.records or key not in self.records[0]:
            raise KeyError(f"no metric {key!r} in the history; recorded metrics: {self.keys()}")
        return np.stack([np.asarray(record[key]) for record in self.records])
