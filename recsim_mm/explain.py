"""Why a scorer ranks a candidate where it does: text vs image, and which past items mattered.

`explain` attributes each candidate's score (the ranker's click logit, or a PPO/DQN
policy's logit / Q-value: all are `recsim_mm.scorer.Scorer` outputs) to the content it
read, by **integrated gradients** (Sundararajan et al., 2017) against a documented
baseline:

- the input is every item vector the score depends on: the candidate's fused vector
  ``[text part | image part]`` and the fused vectors of the user's past items;
- the baseline replaces each of them by the catalog's mean item vector (the "average
  item": an attribution says how this item's content, as opposed to an average item's,
  moved the score), keeping the feedback, mask and time left, and, for a scorer with
  item metadata (`recsim_mm.item_features`), every item's own duration and popularity:
  the attributions are to content only;
- attributions of the text coordinates (candidate and history) sum to ``text``, of the
  image coordinates to ``image``, and ``text + image = score - baseline_score`` up to
  the Riemann-sum error of ``steps`` points (``completeness_gap`` reports it).

Per candidate, ``history[..., t]`` is the attribution to past step ``t`` (text + image):
the past items that mattered most are the largest entries.

Candidates are scored independently (the scorer is permutation-equivariant, no
candidate sees another), so each (user, candidate) pair is explained as its own row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from recsim_mm.observation import CANDIDATE_ITEMS, HISTORY_ITEMS, HISTORY_MASK
from recsim_mm.scorer import ROW_KEYS, Scorer


@dataclass
class Explanation:
    """Attributions of ``(B, K)`` scores; all float32 tensors on the CPU.

    Attributes:
        score: ``(B, K)`` the explained output (click logit for a ranker).
        baseline_score: ``(B, K)`` the output with every item vector at the baseline.
        text: ``(B, K)`` attribution to the text coordinates (candidate + history).
        image: ``(B, K)`` attribution to the image coordinates (candidate + history).
        candidate_text, candidate_image: ``(B, K)`` the candidate's own share of those.
        history: ``(B, K, H)`` attribution to each past step (text + image); 0 where
            the history is padded.
    """

    score: torch.Tensor
    baseline_score: torch.Tensor
    text: torch.Tensor
    image: torch.Tensor
    candidate_text: torch.Tensor
    candidate_image: torch.Tensor
    history: torch.Tensor

    def text_share(self) -> torch.Tensor:
        """``(B, K)`` ``|text| / (|text| + |image|)`` in [0, 1] (0.5 where both are 0)."""
        total = self.text.abs() + self.image.abs()
        return torch.where(total > 0, self.text.abs() / total.clamp_min(1e-30), 0.5)

    def history_text_share(self) -> torch.Tensor:
        """``(B, K)`` text share of the history's part alone (what the user's past told the
        scorer, without the candidate's own content); 0.5 where both are 0."""
        text = (self.text - self.candidate_text).abs()
        image = (self.image - self.candidate_image).abs()
        total = text + image
        return torch.where(total > 0, text / total.clamp_min(1e-30), 0.5)

    def completeness_gap(self) -> torch.Tensor:
        """``(B, K)`` ``score - baseline_score - (text + image)``: the integration error."""
        return self.score - self.baseline_score - (self.text + self.image)

    def top_history(self, k: int = 3) -> torch.Tensor:
        """``(B, K, k)`` int64 past steps with the largest absolute attribution, largest first."""
        return self.history.abs().topk(min(k, self.history.shape[-1]), dim=-1).indices


def _as_vectors(scorer: Scorer, obs: dict, key: str) -> torch.Tensor:
    """Float item vectors of ``obs[key]``; ids are looked up in the scorer's table (rows of
    padded history steps become zero vectors, as in ``embeddings`` mode)."""
    value = torch.as_tensor(obs[key])
    if value.is_floating_point():
        return value.float()
    if scorer.item_table is None:
        raise ValueError(f"obs[{key!r}] holds item ids but the scorer has no item table to explain them with")
    vectors = scorer.item_table[value.long()].float()
    if key == HISTORY_ITEMS:
        vectors = vectors * torch.as_tensor(obs[HISTORY_MASK]).to(vectors.device).float().unsqueeze(-1)
    return vectors


def explain(scorer: Scorer, obs: dict, steps: int = 32, baseline: torch.Tensor | None = None,
            head: str = "click", batch_rows: int = 4096) -> Explanation:
    """Integrated-gradients attribution of ``scorer``'s candidate scores (see module doc).

    Args:
        scorer: a `Scorer` (a `Ranker`'s ``.scorer``, a policy's ``.scorer``).
        obs: a batched observation (``ids`` or ``embeddings`` mode; numpy or torch), B users.
        steps: Riemann points of the path integral (more: smaller completeness gap).
        baseline: ``(d,)`` float32 item vector standing for "no particular content";
            default: the mean of the scorer's item table (required without a table).
        head: ``"click"`` (the click logit) or ``"engagement"`` (predicted minutes).
        batch_rows: (user, candidate) rows per forward pass (memory bound).

    Returns:
        An `Explanation` of the ``(B, K)`` scores.

    Raises:
        ValueError: a baseline of the wrong shape, no baseline and no item table, an
            unknown head, steps < 1.
    """
    if steps < 1:
        raise ValueError(f"explain: steps must be >= 1; got {steps}")
    if head not in ("click", "engagement"):
        raise ValueError(f"explain: head must be 'click' or 'engagement'; got {head!r}")
    if scorer.config.modality == "id":
        raise ValueError("explain: an id-only scorer (modality='id') reads no text or image to attribute to")
    d, d_text = scorer.config.dim, scorer.config.d_text
    device = next(scorer.parameters()).device
    if baseline is None:
        if scorer.item_table is None:
            raise ValueError("explain: pass baseline= (a (d,) item vector): the scorer has no item table to average")
        baseline = scorer.item_table.float().mean(0)
    baseline = torch.as_tensor(baseline, dtype=torch.float32)
    if baseline.shape != (d,):
        raise ValueError(f"explain: baseline must be one item vector of shape ({d},); got {tuple(baseline.shape)}")
    baseline = baseline.to(device)
    candidates = _as_vectors(scorer, obs, CANDIDATE_ITEMS).to(device)  # (B, K, d)
    history = _as_vectors(scorer, obs, HISTORY_ITEMS).to(device)  # (B, H, d)
    b, k, _ = candidates.shape
    h = history.shape[1]
    rest = {key: torch.as_tensor(value).to(device).float() for key, value in obs.items()
            if key not in (CANDIDATE_ITEMS, HISTORY_ITEMS)}
    # one row per (user, candidate): (B*K, 1, d) candidate, (B*K, H, d) history
    rows_candidate = candidates.reshape(b * k, 1, d)
    rows_history = history.repeat_interleave(k, dim=0)
    rows_rest = {key: value.repeat_interleave(k, dim=0) for key, value in rest.items()}
    if scorer.item_feature_table is not None:
        # item metadata stays the real items' along the path: only content is interpolated
        tensors = {key: torch.as_tensor(value).to(device) for key, value in obs.items()}
        candidate_rows, history_rows = scorer.item_rows(tensors)
        rows_rest[ROW_KEYS[CANDIDATE_ITEMS]] = candidate_rows.reshape(b * k, 1)
        rows_rest[ROW_KEYS[HISTORY_ITEMS]] = history_rows.repeat_interleave(k, dim=0)

    def output(candidate: torch.Tensor, past: torch.Tensor, rows: slice) -> torch.Tensor:
        batch = {CANDIDATE_ITEMS: candidate, HISTORY_ITEMS: past,
                 **{key: value[rows] for key, value in rows_rest.items()}}
        if head == "click":
            return scorer(batch)[:, 0]
        predicted = scorer.predict(batch)
        if "engagement" not in predicted:
            raise ValueError("explain: head='engagement' but this scorer has no engagement head")
        return predicted["engagement"][:, 0]

    was_training = scorer.training
    scorer.eval()
    grad_candidate = torch.zeros_like(rows_candidate)
    grad_history = torch.zeros_like(rows_history)
    score = torch.empty(b * k, device=device)
    base_score = torch.empty(b * k, device=device)
    try:
        for start in range(0, b * k, batch_rows):
            rows = slice(start, start + batch_rows)
            x_c, x_h = rows_candidate[rows], rows_history[rows]
            with torch.no_grad():
                score[rows] = output(x_c, x_h, rows)
                base_score[rows] = output(baseline.expand_as(x_c), baseline.expand_as(x_h), rows)
            for alpha in (torch.arange(steps, device=device, dtype=torch.float32) + 0.5) / steps:
                c = (baseline + alpha * (x_c - baseline)).requires_grad_(True)
                p = (baseline + alpha * (x_h - baseline)).requires_grad_(True)
                g_c, g_h = torch.autograd.grad(output(c, p, rows).sum(), (c, p))
                grad_candidate[rows] += g_c
                grad_history[rows] += g_h
    finally:
        scorer.train(was_training)
    attr_candidate = (rows_candidate - baseline) * grad_candidate / steps  # (B*K, 1, d)
    attr_history = (rows_history - baseline) * grad_history / steps  # (B*K, H, d)
    cand_text = attr_candidate[..., :d_text].sum((1, 2))
    cand_image = attr_candidate[..., d_text:].sum((1, 2))
    text = cand_text + attr_history[..., :d_text].sum((1, 2))
    image = cand_image + attr_history[..., d_text:].sum((1, 2))

    def shaped(x: torch.Tensor) -> torch.Tensor:
        return x.detach().reshape(b, k, *x.shape[1:]).cpu()

    return Explanation(score=shaped(score), baseline_score=shaped(base_score), text=shaped(text),
                       image=shaped(image), candidate_text=shaped(cand_text), candidate_image=shaped(cand_image),
                       history=shaped(attr_history.sum(-1)).reshape(b, k, h))


def modality_agreement(text_share: np.ndarray, modality_weight: np.ndarray) -> float:
    """Pearson correlation between per-user text shares and hidden text weights.

    Args:
        text_share: ``(B,)`` the attribution's text share of each user's explained score.
        modality_weight: ``(B,)`` the simulator's hidden weight of text for each user.

    Returns:
        The correlation in [-1, 1] (positive: attributions lean to text for text-heavy users).

    Raises:
        ValueError: shapes differ, fewer than 3 users, or a constant input.
    """
    x, y = np.asarray(text_share, dtype=np.float64), np.asarray(modality_weight, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or len(x) < 3:
        raise ValueError(f"modality_agreement needs two (B,) arrays with B >= 3; got {x.shape}, {y.shape}")
    if x.std() == 0 or y.std() == 0:
        raise ValueError("modality_agreement: an input is constant; the correlation is undefined")
    return float(np.corrcoef(x, y)[0, 1])


def modality_check(scorer: Scorer, policy, env, seed: int, warmup_steps: int = 6, min_history: int = 3,
                   steps: int = 16) -> dict:
    """Do attributions lean to text for users whose hidden weight is text-heavy?

    Runs ``policy`` on the ``env.num_envs`` users of ``env`` (a
    `envs.vector_env.RecVectorEnv` whose user model has a ``modality_weight``) for
    ``warmup_steps`` steps, then explains the candidate ``policy`` recommends next to each
    user with at least ``min_history`` past steps, and correlates the history's text share
    (`Explanation.history_text_share`) with the user's hidden text weight.

    Returns:
        ``{"correlation": float, "users": int, "text_share": (U,), "modality_weight": (U,),
        "explanation": Explanation, "rows": (U,) int64 users explained, "recommended": (U,)}``.

    Raises:
        ValueError: the user model has no ``modality_weight``, or fewer than 3 users qualify.
    """
    obs, _ = env.reset(seed=seed)
    for _ in range(warmup_steps):
        actions, _ = policy.predict(obs, deterministic=True)
        obs, *_ = env.step(actions)
    weight = getattr(env.simulator.users, "modality_weight", None)
    if weight is None:
        raise ValueError(f"modality_check: user model {type(env.simulator.users).__name__} has no modality_weight")
    rows = np.flatnonzero(np.asarray(obs[HISTORY_MASK]).sum(1) >= min_history)
    if len(rows) < 3:
        raise ValueError(f"modality_check: only {len(rows)} users have {min_history}+ past steps; "
                         "raise warmup_steps or the number of users")
    actions, _ = policy.predict(obs, deterministic=True)
    recommended = np.asarray(actions).reshape(len(actions), -1)[rows, 0]
    explanation = explain(scorer, {key: torch.as_tensor(np.asarray(value)[rows]) for key, value in obs.items()},
                          steps=steps)
    share = explanation.history_text_share()[torch.arange(len(rows)), torch.as_tensor(recommended)].numpy()
    hidden = weight.detach().cpu().numpy()[rows]
    return {"correlation": modality_agreement(share, hidden), "users": len(rows), "text_share": share,
            "modality_weight": hidden, "explanation": explanation, "rows": rows, "recommended": recommended}
