"""The fidelity report: real users vs simulated users on the same slates, side by side.

`fidelity_report(log, population, item_space, held_out=...)` compares three sets of
users on one log's slates:

- **real**: the log as recorded;
- **calibrated**: users drawn from the fitted `UserPopulation`, with its parameters and
  the dynamics the calibration assumes (no satiation, no drift: `FITTED_DYNAMICS`);
- **default**: the default `MultimodalUser` (hand-set topic mixtures and parameters).

Simulated users are **replayed** on real slates: each real session gets one simulated
user, who is shown that session's slates in order (and, once they run out, slates of
records drawn at random from the log) until the user leaves or ``max_steps``
(default: the longest real session) is reached. The side-by-side metrics:

- click rate: share of steps with a click;
- session length in steps: mean, median, 90th percentile;
- popularity concentration of clicks: Gini of click counts over the catalog's items,
  and the share of clicks on the top 10% of items;
- topic mix of clicks (when the item space has topics): total variation distance to
  the real mix;
- modality coherence of consumption: mean cosine of a clicked item's text (image)
  vector with the mean text (image) vector of the same session's earlier clicks.

With ``held_out`` (later records of the fitted users, `split_by_time`), the AUC of the
held-out clicks among the shown items when ranked by each user's affinity: calibrated
(the user's fitted interests and posterior-mean modality weight), fitted interests
with the default modality weight 0.5, and the uncalibrated default (a default user
drawn for each real user).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from recsim_mm.item_space import ItemSpace
from recsim_mm.logs import InteractionLog
from recsim_mm.metrics import auc, gini
from recsim_mm.real_data.calibration import UserPopulation, clicked_items, session_index

#: The dynamics the calibration assumes (it fits no satiation and no drift), under which the
#: calibrated users are replayed.
FITTED_DYNAMICS = {"satiation_strength": 0.0, "drift_rate": 0.0}


@dataclass
class Behaviour:
    """What a set of users did on the slates: one entry per step.

    Attributes:
        session: ``(T,)`` int64 session of each step.
        clicked: ``(T,)`` int64 item row clicked at that step, -1 for none.
    """

    session: np.ndarray
    clicked: np.ndarray


@dataclass
class FidelityReport:
    """Real vs calibrated vs default, metric by metric.

    Attributes:
        metrics: ``{metric: {"real": x, "calibrated": y, "default": z}}``.
        auc: ``{"calibrated": ..., "interests only (a = 0.5)": ..., "default": ...}``
            held-out click AUCs (empty without ``held_out``).
        notes: how the numbers were made (sessions replayed, steps, seeds).
    """

    metrics: dict[str, dict[str, float]]
    auc: dict[str, float] = field(default_factory=dict)
    notes: dict = field(default_factory=dict)

    def to_markdown(self) -> str:
        """The report as two markdown tables."""
        lines = ["| metric | real | calibrated | default |", "|---|---:|---:|---:|"]
        for name, row in self.metrics.items():
            lines.append(f"| {name} | " + " | ".join(_fmt(row.get(k)) for k in ("real", "calibrated", "default"))
                         + " |")
        if self.auc:
            lines += ["", "| held-out click AUC, ranked by | AUC |", "|---|---:|"]
            lines += [f"| {name} | {value:.3f} |" for name, value in self.auc.items()]
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict:
        """Plain data (JSON)."""
        return {"metrics": self.metrics, "auc": self.auc, "notes": self.notes}


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def real_behaviour(log: InteractionLog) -> Behaviour:
    """The log's own steps (a record is a step; split multi-click impressions count once each)."""
    return Behaviour(session=session_index(log), clicked=clicked_items(log))


def replay(log: InteractionLog, item_space: ItemSpace, user_params: dict, seed: int = 0,
           max_steps: int | None = None, max_sessions: int = 2000) -> Behaviour:
    """Simulated users (`MultimodalUser` with ``user_params``) on the log's slates.

    Args:
        log: the real log (its sessions and slates).
        item_space: its item space.
        user_params: parameters of the simulated users (e.g. ``{"population": pop}``).
        seed: seeds the users, their choices and the extra slates.
        max_steps: longest simulated session (default: the longest real session).
        max_sessions: at most this many sessions are replayed (the first ones).

    Returns:
        The simulated `Behaviour`.
    """
    from recsim_mm.users.multimodal import MultimodalUser

    session = session_index(log)
    starts = np.flatnonzero(np.r_[True, session[1:] != session[:-1]])
    lengths = np.diff(np.r_[starts, len(log)])
    starts, lengths = starts[:max_sessions], lengths[:max_sessions]
    b = len(starts)
    horizon = int(lengths.max()) if max_steps is None else max_steps
    slates = torch.as_tensor(np.take_along_axis(log.candidate_items, log.shown, axis=1))
    generator = torch.Generator().manual_seed(seed)
    users = MultimodalUser(item_space, b, "cpu", **user_params)
    users.sample(torch.arange(b), generator)
    rng = np.random.default_rng(seed)
    active = torch.ones(b, dtype=torch.bool)
    out_session, out_clicked = [], []
    for t in range(horizon):
        record = np.where(t < lengths, starts + np.minimum(t, lengths - 1), rng.integers(len(log), size=b))
        slate = slates[torch.as_tensor(record)]
        response = users.respond(slate, generator)
        users.transition(slate, response, generator)
        rows = active.nonzero().squeeze(1)
        clicked = torch.where(response.clicked >= 0, slate.gather(1, response.clicked.clamp_min(0)[:, None])[:, 0],
                              -1)
        out_session.append(rows.numpy())
        out_clicked.append(clicked[rows].numpy())
        active &= ~users.done()
        if not bool(active.any()):
            break
    return Behaviour(session=np.concatenate(out_session), clicked=np.concatenate(out_clicked))


def behaviour_metrics(behaviour: Behaviour, item_space: ItemSpace,
                      reference_topics: np.ndarray | None = None) -> dict[str, float]:
    """The side-by-side metrics of one `Behaviour` (see the module docstring)."""
    clicked = behaviour.clicked
    hit = clicked >= 0
    _, lengths = np.unique(behaviour.session, return_counts=True)
    counts = np.bincount(clicked[hit], minlength=item_space.num_items).astype(np.float64)
    top = np.sort(counts)[::-1][: max(1, item_space.num_items // 10)]
    out = {
        "click rate": float(hit.mean()),
        "session length, mean": float(lengths.mean()),
        "session length, median": float(np.median(lengths)),
        "session length, 90th percentile": float(np.percentile(lengths, 90)),
        "clicks per item, Gini": gini(counts) if counts.sum() else 0.0,
        "clicks on the top 10% items": float(top.sum() / max(counts.sum(), 1.0)),
    }
    if item_space.topics is not None and reference_topics is not None and hit.any():
        mix = item_space.topics.cpu().numpy()[clicked[hit]].mean(0)
        out["topic mix of clicks, TV distance to real"] = float(0.5 * np.abs(mix - reference_topics).sum())
    for name, part in (("text", item_space.text), ("image", item_space.image)):
        out[f"{name} coherence of clicks"] = _coherence(behaviour, part.cpu().numpy())
    return out


def _coherence(behaviour: Behaviour, vectors: np.ndarray) -> float:
    """Mean cosine of each click with the mean of the same session's earlier clicks."""
    order = np.lexsort((np.arange(len(behaviour.session)), behaviour.session))
    session, clicked = behaviour.session[order], behaviour.clicked[order]
    total, values, current = None, [], None
    for s, item in zip(session.tolist(), clicked.tolist(), strict=True):
        if s != current:
            current, total = s, None
        if item < 0:
            continue
        v = vectors[item]
        if total is not None:
            values.append(float(v @ total / max(np.linalg.norm(total), 1e-12)))
            total = total + v
        else:
            total = v.copy()
    return float(np.mean(values)) if values else float("nan")


def held_out_auc(held_out: InteractionLog, population: UserPopulation, item_space: ItemSpace,
                 seed: int = 0) -> dict[str, float]:
    """AUC of held-out clicks among shown items, ranked by affinity (see the module docstring).

    Only records of users in ``population`` count.

    Raises:
        ValueError: no held-out record of a fitted user, or only one class of labels.
    """
    from recsim_mm.users.multimodal import MultimodalUser

    position = {u: i for i, u in enumerate(population.user_ids)}
    user_row = np.fromiter((position.get(u, -1) for u in held_out.user_id), np.int64, len(held_out))
    keep = user_row >= 0
    if not keep.any():
        raise ValueError(f"{held_out.source}: no held-out record belongs to a fitted user")
    log, user_row = held_out.select(keep), user_row[keep]
    shown = torch.as_tensor(np.take_along_axis(log.candidate_items, log.shown, axis=1))
    labels = log.clicks.reshape(-1)
    text, image = item_space.text.cpu()[shown], item_space.image.cpu()[shown]
    rows = torch.as_tensor(user_row)
    ct = (text * population.text_interest[rows][:, None]).sum(-1)
    ci = (image * population.image_interest[rows][:, None]).sum(-1)
    a = population.modality_weight[rows][:, None]
    default = MultimodalUser(item_space, len(population.user_ids), "cpu")
    default.sample(torch.arange(len(population.user_ids)), torch.Generator().manual_seed(seed))
    return {
        "calibrated (fitted interests and modality weight)": auc((a * ct + (1 - a) * ci).reshape(-1), labels),
        "fitted interests, modality weight 0.5": auc((0.5 * ct + 0.5 * ci).reshape(-1), labels),
        "uncalibrated default user": auc(default.affinity(shown, rows).reshape(-1), labels),
    }


def fidelity_report(log: InteractionLog, population: UserPopulation, item_space: ItemSpace,
                    held_out: InteractionLog | None = None, seed: int = 0, max_steps: int | None = None,
                    max_sessions: int = 2000) -> FidelityReport:
    """Real vs calibrated vs default users on ``log``'s slates, and the held-out click AUCs.

    Args:
        log: the real log whose slates are replayed (usually the one the population
            was fitted on).
        population: the fitted population (checked against ``item_space``).
        item_space: the item space of both.
        held_out: later records of the fitted users for the AUCs (None: no AUCs).
        seed: seeds the simulated users.
        max_steps, max_sessions: see `replay`.

    Returns:
        The `FidelityReport`.
    """
    population.check_item_space(item_space)
    real = real_behaviour(log)
    hit = real.clicked >= 0
    topics = None
    if item_space.topics is not None and hit.any():
        topics = item_space.topics.cpu().numpy()[real.clicked[hit]].mean(0)
    rows = {"real": behaviour_metrics(real, item_space, topics),
            "calibrated": behaviour_metrics(replay(log, item_space, {"population": population, **FITTED_DYNAMICS},
                                                   seed, max_steps, max_sessions), item_space, topics),
            "default": behaviour_metrics(replay(log, item_space, {}, seed, max_steps, max_sessions),
                                         item_space, topics)}
    metrics = {name: {who: rows[who][name] for who in rows if name in rows[who]} for name in rows["real"]}
    report = FidelityReport(metrics, notes={"sessions replayed": int(min(max_sessions, real.session.max() + 1)),
                                            "seed": seed, "population": population.summary.get("source")})
    if held_out is not None:
        report.auc = held_out_auc(held_out, population, item_space, seed)
    return report
