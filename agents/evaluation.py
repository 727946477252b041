"""Evaluation of any recommender on held-out users: one episode per user, batched.

Every strategy is scored the same way: B fresh users (seeded, disjoint from training
users through the seed) each play one episode in the native vector env against the
TRUE simulator reward, whatever reward the strategy was trained on.

The evaluator is `evaluate_recommender`. It was called ``evaluate_policy``, which
shadowed SB3's ``stable_baselines3.common.evaluation.evaluate_policy`` (another
signature and result); that name still works here, with a ``DeprecationWarning``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from agents.baselines import candidate_rows
from recsim_mm.candidates import ArrivingCatalog
from recsim_mm.metrics import exposure_summary


@dataclass
class EvalResult:
    """Per-user episode metrics of one strategy (arrays of shape ``(B,)``) and totals.

    Attributes:
        episode_return: true simulator return per user.
        clicks: clicks per user.
        engagement: total engagement per user, minutes.
        session_length: steps until the episode ended (terminated or truncated).
        session_diversity: ``1 - mean pairwise cosine`` of the items a user clicked
            (NaN with fewer than two clicks).
        novelty: mean ``-log2`` popularity share of the recommended items (NaN without
            a popularity table).
        coverage: distinct recommended items / catalog size, over all users.
        trajectories: per-step hidden state for the first ``trace_users`` users (for
            plots of how interests move); keys from the user model's hidden state.
        intra_list_diversity: slate environments only: per user, the mean over steps
            of ``1 - mean pairwise cosine`` of the slate's items; None for single items.
        recommended_duration: per user, the mean duration (minutes) of the recommended
            item (the first of a slate) over the session's steps.
        item_exposure: ``(N,)`` times each catalog item was shown to the B users (every
            slate position counts once).
        exposure: `recsim_mm.metrics.exposure_summary` of ``item_exposure`` (with the
            popularity and the item space's topics where known).
        new_items: item cold start only (an environment with ``new_items``, see
            `new_item_summary`): how the items that arrived during the evaluation fared.
        step_clicks: ``(T,)`` clicks at session step ``t + 1``, summed over the users
            still in their session then; step_users: ``(T,)`` how many users that is.
            `ctr_by_step` divides them (user cold start: how fast a strategy learns a
            user it has no or little history of; docs/cold_start.md).
    """

    episode_return: np.ndarray
    clicks: np.ndarray
    engagement: np.ndarray
    session_length: np.ndarray
    session_diversity: np.ndarray
    novelty: np.ndarray
    coverage: float
    trajectories: dict[str, np.ndarray] = field(default_factory=dict)
    intra_list_diversity: np.ndarray | None = None
    recommended_duration: np.ndarray | None = None
    item_exposure: np.ndarray | None = None
    exposure: dict[str, float] = field(default_factory=dict)
    new_items: dict[str, float] = field(default_factory=dict)
    step_clicks: np.ndarray | None = None
    step_users: np.ndarray | None = None

    def ctr_by_step(self) -> np.ndarray:
        """``(T,)`` click-through rate at each session step (1, 2, ...): clicks over the
        users whose session reached that step; empty without per-step counts."""
        if self.step_clicks is None or self.step_users is None:
            return np.zeros(0)
        return self.step_clicks / np.maximum(self.step_users, 1)

    def summary(self) -> dict[str, float]:
        """Scalar metrics averaged over users (NaNs ignored where a user has none);
        ``intra_list_diversity`` only for slate environments.

        The return decomposes as ``session_length x ctr x minutes_per_click`` (per user),
        so a gain can be traced to more steps, more clicks or longer watching;
        ``recommended_duration`` shows whether longer minutes come from longer items.
        ``ctr_first3`` is the CTR over session steps 1-3 only (pooled over users: the
        cold-start phase of a session). The exposure metrics (``exposure_gini``, ...)
        follow."""
        steps = np.maximum(self.session_length, 1)
        extra = {}
        if self.intra_list_diversity is not None:
            extra["intra_list_diversity"] = _nanmean(self.intra_list_diversity)
        if self.recommended_duration is not None:
            extra["recommended_duration"] = float(self.recommended_duration.mean())
        if self.step_clicks is not None and self.step_users is not None:
            extra["ctr_first3"] = float(self.step_clicks[:3].sum() / max(self.step_users[:3].sum(), 1))
        per_click = np.where(self.clicks > 0, self.engagement / np.maximum(self.clicks, 1), np.nan)
        return {
            "episode_return": float(self.episode_return.mean()),
            "ctr": float((self.clicks / steps).mean()),
            "minutes_per_click": _nanmean(per_click),
            "engagement_per_step": float((self.engagement / steps).mean()),
            "session_length": float(self.session_length.mean()),
            "session_diversity": _nanmean(self.session_diversity),
            "novelty": _nanmean(self.novelty),
            "coverage": float(self.coverage),
            **extra,
            **self.exposure,
            **self.new_items,
        }


def _nanmean(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else float("nan")


def _pairwise_diversity(vectors: list[np.ndarray]) -> float:
    if len(vectors) < 2:
        return float("nan")
    v = np.stack(vectors)
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    sim = v @ v.T
    n = len(v)
    return float(1.0 - (sim.sum() - n) / (n * (n - 1)))


def evaluate_recommender(
    policy: Any,
    env: Any,
    seed: int,
    item_table: torch.Tensor,
    popularity: np.ndarray | None = None,
    max_steps: int | None = None,
    trace_users: int = 0,
) -> EvalResult:
    """Run one episode for each of the ``env.num_envs`` users under ``policy``.

    Args:
        policy: anything with SB3's ``predict(obs, deterministic=True)``; optional
            ``observe(info)`` / ``update(obs, actions, reward, info)`` hooks
            (see `agents.baselines`) and ``attach(env)``, called once before the
            episode (the privileged references of `agents.references` read the
            simulator through it).
        env: an `envs.vector_env.RecVectorEnv` (``NEXT_STEP`` autoreset).
        seed: reset seed; held-out users come from seeds never used in training.
        item_table: ``(N, d)`` fused item vectors (``item_space.fused``).
        popularity: optional ``(N,)`` click counts, for novelty.
        max_steps: safety bound on steps (default: the env's ``max_steps`` + 1).
        trace_users: record the hidden state of this many users per step.

    Returns:
        An `EvalResult` over the B users.
    """
    if hasattr(policy, "attach"):
        policy.attach(env)
    obs, info = env.reset(seed=seed)
    num_users = env.num_envs
    durations = env.simulator.item_space.duration.detach().cpu().numpy().astype(np.float64)
    duration_sum = np.zeros(num_users)
    alive = np.ones(num_users, dtype=bool)
    ret = np.zeros(num_users)
    clicks = np.zeros(num_users)
    engagement = np.zeros(num_users)
    length = np.zeros(num_users, dtype=np.int64)
    clicked_vectors: list[list[np.ndarray]] = [[] for _ in range(num_users)]
    recommended: list[np.ndarray] = []
    exposure = np.zeros(len(item_table), dtype=np.int64)
    item_clicks = np.zeros(len(item_table), dtype=np.int64)
    arrivals = env.simulator.candidate_generator if isinstance(
        env.simulator.candidate_generator, ArrivingCatalog) else None
    first_click = np.full(len(item_table), np.iinfo(np.int64).max, dtype=np.int64)
    table = item_table.detach().cpu().numpy()
    share = None
    if popularity is not None:
        share = (np.asarray(popularity, dtype=np.float64) + 1.0) / (np.sum(popularity) + len(popularity))
    novelty_sum = np.zeros(num_users)
    slate_diversity_sum = np.zeros(num_users)
    unit_table = table / np.maximum(np.linalg.norm(table, axis=1, keepdims=True), 1e-12)
    traces: dict[str, list[np.ndarray]] = {}
    step_clicks: list[float] = []
    step_users: list[int] = []
    limit = max_steps if max_steps is not None else env.simulator.max_steps + 1
    for _ in range(limit):
        if hasattr(policy, "observe"):
            policy.observe(info)
        actions, _ = policy.predict(obs, deterministic=True)
        actions = np.asarray(actions)
        rows = candidate_rows(obs, item_table)
        first = actions if actions.ndim == 1 else actions[:, 0]
        shown = rows[np.arange(num_users), first]
        recommended.append(shown[alive])
        slate_rows = np.take_along_axis(rows, actions.reshape(num_users, -1), axis=1)  # (B, S)
        np.add.at(exposure, slate_rows[alive].ravel(), 1)
        duration_sum[alive] += durations[shown[alive]]
        if share is not None:
            novelty_sum[alive] += -np.log2(share[shown[alive]])
        if actions.ndim == 2 and actions.shape[1] > 1:
            slate = unit_table[np.take_along_axis(rows, actions, axis=1)]  # (B, S, d)
            s = slate.shape[1]
            sim = np.einsum("bsd,btd->b", slate, slate)
            slate_diversity_sum[alive] += (1.0 - (sim - s) / (s * (s - 1)))[alive]
        clock = arrivals.step if arrivals is not None else 0
        next_obs, reward, terminated, truncated, info = env.step(actions)
        clicked = info["clicked_item"][alive & info["click"].astype(bool)]
        np.add.at(item_clicks, clicked, 1)
        np.minimum.at(first_click, clicked, clock)
        if hasattr(policy, "update"):
            policy.update(obs, actions, reward, info)
        ret[alive] += reward[alive]
        clicks[alive] += info["click"][alive]
        step_clicks.append(float(info["click"][alive].sum()))
        step_users.append(int(alive.sum()))
        engagement[alive] += info["engagement"][alive]
        length[alive] += 1
        for row in np.flatnonzero(alive & info["click"].astype(bool)):
            clicked_vectors[row].append(table[info["clicked_item"][row]])
        for key in ("modality_weight", "time_left", "satiation"):
            if trace_users and key in info:
                traces.setdefault(key, []).append(np.asarray(info[key][:trace_users], dtype=np.float64))
        alive &= ~(terminated | truncated)
        obs = next_obs
        if not alive.any():
            break
    else:
        raise RuntimeError(f"evaluation did not finish within {limit} steps; some users never ended")
    novelty = novelty_sum / np.maximum(length, 1) if share is not None else np.full(num_users, np.nan)
    coverage = len(np.unique(np.concatenate(recommended))) / len(table)
    slate_env = actions.ndim == 2 and actions.shape[1] > 1
    topics = env.simulator.item_space.topics
    return EvalResult(
        episode_return=ret,
        clicks=clicks,
        engagement=engagement,
        session_length=length,
        session_diversity=np.array([_pairwise_diversity(v) for v in clicked_vectors]),
        novelty=novelty,
        coverage=coverage,
        trajectories={k: np.stack(v) for k, v in traces.items()},
        intra_list_diversity=slate_diversity_sum / np.maximum(length, 1) if slate_env else None,
        recommended_duration=duration_sum / np.maximum(length, 1),
        item_exposure=exposure,
        exposure=exposure_summary(exposure, popularity, None if topics is None else topics.cpu().numpy()),
        new_items={} if arrivals is None else new_item_summary(
            exposure, item_clicks, first_click, arrivals.arrival.cpu().numpy(), arrivals.step),
        step_clicks=np.asarray(step_clicks),
        step_users=np.asarray(step_users),
    )


def new_item_summary(exposure: np.ndarray, clicks: np.ndarray, first_click: np.ndarray, arrival: np.ndarray,
                     end_step: int) -> dict[str, float]:
    """How the items that arrived during an evaluation fared (item cold start).

    Args:
        exposure: ``(N,)`` times each item was shown; clicks: ``(N,)`` times clicked.
        first_click: ``(N,)`` simulator step of each item's first click (int64 max: never).
        arrival: ``(N,)`` arrival step (0 = in the catalog from the start).
        end_step: the simulator step the evaluation ended at.

    Returns:
        ``new_item_exposure_share`` (share of all exposure going to arrived items),
        ``new_item_ctr`` (their clicks per exposure; NaN if never shown),
        ``new_items_clicked`` (share of the arrived items clicked at least once) and
        ``new_item_steps_to_first_click`` (mean steps from arrival to the first click
        over the arrived items that were clicked; NaN if none). Items whose arrival step
        the evaluation never reached are left out.
    """
    new = (arrival > 0) & (arrival <= end_step)
    if not new.any():
        return {}
    shown = exposure[new].sum()
    clicked = first_click[new] < np.iinfo(np.int64).max
    delay = (first_click[new] - arrival[new])[clicked]
    return {
        "new_item_exposure_share": float(shown / max(exposure.sum(), 1)),
        "new_item_ctr": float(clicks[new].sum() / shown) if shown else float("nan"),
        "new_items_clicked": float(clicked.mean()),
        "new_item_steps_to_first_click": float(delay.mean()) if delay.size else float("nan"),
    }


def evaluate_policy(*args: Any, **kwargs: Any) -> EvalResult:
    """Deprecated name of `evaluate_recommender` (same arguments and result).

    Renamed because SB3 has a function of this name with another signature
    (``stable_baselines3.common.evaluation.evaluate_policy``).
    """
    warnings.warn(
        "agents.evaluation.evaluate_policy is renamed evaluate_recommender (the old name "
        "shadows SB3's evaluate_policy, which has another signature); it will be removed",
        DeprecationWarning,
        stacklevel=2,
    )
    return evaluate_recommender(*args, **kwargs)
