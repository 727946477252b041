"""Ranking, click-prediction and exposure metrics: AUC, log loss, NDCG@k, Recall@k,
Gini and the exposure summary of a recommender (`exposure_summary`).

All functions take torch tensors or numpy arrays, compute in float64 on the CPU and
return Python floats. Invalid input (mismatched shapes, labels outside {0, 1}, NaN)
raises ``ValueError`` naming the argument.
"""

from __future__ import annotations

import numpy as np
import torch


def _array(name: str, value, dtype=np.float64) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    out = np.asarray(value, dtype=dtype)
    if not np.isfinite(out).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return out


def _binary_labels(labels) -> np.ndarray:
    y = _array("labels", labels)
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError(f"labels must be 0 or 1; got values {np.unique(y)[:5].tolist()}...")
    return y


def auc(scores, labels) -> float:
    """Area under the ROC curve (probability a random positive outranks a random negative).

    Args:
        scores: ``(M,)`` any real scores (logits or probabilities).
        labels: ``(M,)`` 0/1 clicks.

    Returns:
        AUC in [0, 1]; ties count one half (Mann-Whitney U with mid-ranks).

    Raises:
        ValueError: shapes differ, or the labels hold only one class (AUC undefined).
    """
    s = _array("scores", scores).reshape(-1)
    y = _binary_labels(labels).reshape(-1)
    if s.shape != y.shape:
        raise ValueError(f"scores has {s.size} entries but labels has {y.size}")
    positives = int(y.sum())
    negatives = y.size - positives
    if positives == 0 or negatives == 0:
        raise ValueError(
            f"AUC needs both clicks and non-clicks; got {positives} positives, {negatives} negatives"
        )
    from scipy.stats import rankdata

    ranks = rankdata(s)  # mid-ranks for ties
    return float((ranks[y == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def log_loss(logits, labels) -> float:
    """Mean binary cross-entropy in nats of click logits against 0/1 labels.

    Args:
        logits: ``(M,)`` click logits (pre-sigmoid).
        labels: ``(M,)`` 0/1 clicks.
    """
    z = _array("logits", logits).reshape(-1)
    y = _binary_labels(labels).reshape(-1)
    if z.shape != y.shape:
        raise ValueError(f"logits has {z.size} entries but labels has {y.size}")
    if z.size == 0:
        raise ValueError("log_loss of zero examples is undefined")
    # log(1 + exp(-|z|)) form: stable for large |z|.
    return float(np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))))


def _ranked(scores, relevance, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    s = _array("scores", scores)
    r = _array("relevance", relevance)
    if s.ndim != 2 or s.shape != r.shape:
        raise ValueError(
            f"scores and relevance must both be (B, K); got {s.shape} and {r.shape}"
        )
    if not 1 <= k <= s.shape[1]:
        raise ValueError(f"k={k} must be in [1, K={s.shape[1]}]")
    if (r < 0).any():
        raise ValueError("relevance must be non-negative")
    # Stable sort on the negated score: ties keep candidate order, so results are
    # deterministic.
    order = np.argsort(-s, axis=1, kind="stable")
    ideal = np.sort(r, axis=1)[:, ::-1]
    return order, np.take_along_axis(r, order, axis=1), ideal


def ndcg_at_k(scores, relevance, k: int) -> float:
    """Mean NDCG@k over rows.

    Args:
        scores: ``(B, K)`` model scores of each row's candidates.
        relevance: ``(B, K)`` non-negative graded relevance of the same candidates.
        k: cut-off, ``1 <= k <= K``.

    Returns:
        Mean over rows with any relevance (rows whose relevance is all zero have no
        ideal ranking and are skipped; ``ValueError`` if every row is such).
    """
    _, gained, ideal = _ranked(scores, relevance, k)
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = (gained[:, :k] * discount).sum(1)
    idcg = (ideal[:, :k] * discount).sum(1)
    valid = idcg > 0
    if not valid.any():
        raise ValueError("ndcg_at_k: every row has zero relevance; nothing to rank")
    return float((dcg[valid] / idcg[valid]).mean())


def recall_at_k(scores, relevant, k: int) -> float:
    """Mean Recall@k: the share of each row's relevant candidates found in its top k.

    Args:
        scores: ``(B, K)`` model scores.
        relevant: ``(B, K)`` 0/1 marks of relevant candidates.
        k: cut-off, ``1 <= k <= K``.

    Returns:
        Mean over rows with at least one relevant candidate (``ValueError`` if none).
    """
    _binary_labels(relevant)
    _, gained, _ = _ranked(scores, relevant, k)
    total = gained.sum(1)
    valid = total > 0
    if not valid.any():
        raise ValueError("recall_at_k: no row has a relevant candidate")
    return float((gained[valid, :k].sum(1) / total[valid]).mean())


def top_k_relevant(relevance, k: int) -> np.ndarray:
    """0/1 marks ``(B, K)`` of each row's ``k`` most relevant candidates (ties by order).

    Turns graded ground truth (e.g. the simulator's true affinities) into the relevant
    set that `recall_at_k` counts.
    """
    r = _array("relevance", relevance)
    order = np.argsort(-r, axis=1, kind="stable")[:, :k]
    marks = np.zeros_like(r)
    np.put_along_axis(marks, order, 1.0, axis=1)
    return marks


def gini(values) -> float:
    """Gini coefficient of non-negative amounts ``(n,)``: 0 = equal, ``(n-1)/n`` = one holds all.

    ``G = sum_i (2i - n - 1) x_(i) / (n sum x)`` over the values sorted ascending.

    Raises:
        ValueError: a negative value, an empty array, or an all-zero array (undefined).
    """
    x = np.sort(_array("values", values).ravel())
    if x.size == 0 or (x < 0).any():
        raise ValueError(f"gini needs a non-empty array of non-negative amounts; got {x.size} values, "
                         f"min {x.min() if x.size else None}")
    total = x.sum()
    if total == 0:
        raise ValueError("gini of an all-zero array is undefined (nothing was exposed)")
    n = x.size
    return float(((2 * np.arange(1, n + 1) - n - 1) * x).sum() / (n * total))


#: Long tail = every item outside the most popular ``LONG_TAIL_HEAD`` share of the catalog.
LONG_TAIL_HEAD = 0.2


def exposure_summary(exposure, popularity=None, topics=None) -> dict[str, float]:
    """How a recommender spread its exposure over items and topics.

    Args:
        exposure: ``(N,)`` times each catalog item was shown (every slate position
            counts once).
        popularity: optional ``(N,)`` clicks per item in the training logs; it defines
            the head (most popular items, ties by item row) for the shares below.
        topics: optional ``(N, T)`` topic mixtures (rows sum to 1); an item's exposure is
            split over its topics.

    Returns:
        ``exposure_gini`` (items, 0 = equal exposure); with ``topics``:
        ``topic_exposure_gini``; with ``popularity``: ``top1_exposure_share`` and
        ``top10_exposure_share`` (share of exposure going to the 1% / 10% most popular
        items; at least one item each) and ``long_tail_exposure_share`` (share going
        to the items outside the most popular 20%). Shares are in [0, 1].

    Raises:
        ValueError: shapes that do not match the catalog, negative counts, no exposure.
    """
    e = _array("exposure", exposure)
    out = {"exposure_gini": gini(e)}
    if topics is not None:
        t = _array("topics", topics)
        if t.ndim != 2 or len(t) != len(e):
            raise ValueError(f"topics must be (N={len(e)}, T); got {t.shape}")
        out["topic_exposure_gini"] = gini(e @ t)
    if popularity is not None:
        p = _array("popularity", popularity)
        if p.shape != e.shape:
            raise ValueError(f"popularity must be (N={len(e)},); got {p.shape}")
        order = np.argsort(-p, kind="stable")
        total = e.sum()
        for name, share in (("top1_exposure_share", 0.01), ("top10_exposure_share", 0.10)):
            out[name] = float(e[order[: max(1, int(round(share * len(e))))]].sum() / total)
        head = max(1, int(round(LONG_TAIL_HEAD * len(e))))
        out["long_tail_exposure_share"] = float(e[order[head:]].sum() / total)
    return out
