"""The shared scorer network: one score per candidate from the user's history and the candidates.

One module serves three roles (the one-scorer design, docs/agents.md): the supervised
ranker's click model, the PPO actor (its scores are the logits over candidates) and
the DQN Q-network (one value per candidate). Warm start is loading the ranker's
`state_dict` into the agent's scorer.

Architecture, for a batch of ``B`` users, history length ``H``, ``K`` candidates:

* **Item tower** (`ItemTower`): splits each fused item vector (``d = d_text + d_image``)
  into its text part (the first ``d_text`` columns) and its image part, projects
  each to ``hidden_dim`` and fuses them with an element-wise gate (``fusion="gated"``)
  or with attention between the two modality tokens (``fusion="cross_attention"``).
  The ablation switch ``modality="text"`` / ``"image"`` builds a tower that reads only
  that part of the vector, everywhere (candidates and history alike).
* **User encoder** (`UserEncoder`): each past step becomes a token from its item's
  tower vector, its feedback ``[clicked, engagement]`` and a recency embedding; learned
  queries attend over the tokens (``user_encoder="attention"``) or a GRU reads them
  oldest to newest (``user_encoder="gru"``). Time left and optional observable user
  features join the summary. Output: the user state ``(B, hidden_dim)``.
* **History match** (`HistoryMatch`, optional): each candidate's per-modality cosine
  to the user's clicked, skipped and engaged past items, and recency-decayed sums of
  it weighted by clicks and by watch time (``history_decays``).
* **Heads**: an MLP over ``[user, item, user * item, history match]`` per candidate
  gives the click logit, and optionally a second one the engagement (minutes) given a
  click. Every candidate is scored independently of the others, so the scores are
  permutation-equivariant over candidates.

Cost: the heads' first layer and the history tokens are linear in their inputs, so
the scorer evaluates them term by term: per user, per item (once per catalog item in
``ids`` mode, cached while the weights do not change) and, only where it must, per
(user, candidate) pair (see `Scorer._heads`; `Scorer.pair_features` is the unsplit
reference form). The attention user encoder never builds keys or per-step values
(`UserEncoder.encode`), and in ``ids`` mode the history-match cosines are looked up in
a per-catalog table. The parameters are those of the plain layers, so checkpoints and
warm starts are unaffected.

Observations are the environments' (see `recsim_mm.simulator` and docs/environments.md):
``embeddings`` mode passes item vectors, ``ids`` mode passes item rows and the scorer
gathers the vectors from a frozen item table it holds as a (non-persistent) buffer, so
a checkpoint trained in one mode loads in the other.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn
from torch.nn import functional as F

from recsim_mm.item_features import ITEM_FEATURES, check_item_features, item_feature_table
from recsim_mm.item_space import match_rows
from recsim_mm.observation import (
    CANDIDATE_ITEMS,
    HISTORY_FEEDBACK,
    HISTORY_ITEMS,
    HISTORY_MASK,
    TIME_LEFT,
    USER_FEATURES,
)

USER_ENCODERS = ("attention", "gru")
FUSIONS = ("gated", "cross_attention")
MODALITIES = ("fused", "text", "image", "id")
REQUIRED_KEYS = (HISTORY_ITEMS, HISTORY_FEEDBACK, HISTORY_MASK, CANDIDATE_ITEMS)
#: Optional observation keys with the item rows of ``embeddings``-mode items, ``(B, K)`` /
#: ``(B, H)`` int64: where a scorer with item features looks the features up (found by
#: matching vectors to the item table when absent). `recsim_mm.explain` passes them, as
#: its interpolated vectors are no catalog rows.
ROW_KEYS = {CANDIDATE_ITEMS: "candidate_rows", HISTORY_ITEMS: "history_rows"}
#: Most entries (``N * N * parts``, 8 MiB of float32) of the catalog cosine table a
#: `Scorer` keeps for `HistoryMatch` in ``ids`` mode (`Scorer._cosine_table`).
COSINE_TABLE_MAX = 2**21


@dataclass(frozen=True)
class ScorerConfig:
    """Architecture of a `Scorer`; stored in checkpoints so a mismatch is caught on load.

    Attributes:
        d_text: width of the text part of the fused item vector (its first columns).
        d_image: width of the image part (the remaining columns).
        hidden_dim: width ``h`` of item vectors, history tokens and the user state.
        user_encoder: ``"attention"`` (learned queries over the history) or ``"gru"``.
        fusion: ``"gated"`` (element-wise gate between text and image projections) or
            ``"cross_attention"`` (the two modality tokens attend to each other).
        modality: ``"fused"`` (both parts), ``"text"`` or ``"image"`` (ablations that
            read only that part of every item vector), or ``"id"``: no content at all,
            each catalog item is a learned ``(d,)`` embedding in place of its fused
            vector (the id-only baseline that measures what content buys, e.g. for
            items no log mentions; needs the item table, for N, and ``ids``-mode
            observations).
        num_heads: attention heads (must divide ``hidden_dim``).
        num_queries: learned queries of the attention user encoder.
        max_history: longest history ``H`` the recency embedding covers.
        history_match: add each candidate's per-modality similarity to the user's
            clicked / skipped / engaged past items (`HistoryMatch`) to the heads.
        history_decays: recency decay rates per step, each in ``(0, 1)``, of
            `HistoryMatch`'s decayed statistics: for each rate and modality part, the
            decayed sum over past steps of the candidate's cosine to the past item,
            weighted by ``clicked``, by ``log1p(engagement minutes)`` and, when the
            scorer knows item durations, by the watched fraction (minutes / duration:
            the weight of the simulated users' satiation memory, whose decay is 0.7 in
            InterestEvolution and 0.8 in Satiation; the default rates cover both).
            ``()`` turns them off; ignored without ``history_match``.
        item_features: item metadata the scorer reads beside the content vectors,
            names from `recsim_mm.item_features.ITEM_FEATURES` (duration from the
            catalog; popularity and click rate from the training log); ``()`` for
            none. They need the item table (item rows), and the scorer is built with
            their ``(N, F)`` table (`recsim_mm.item_features.item_feature_table`). With
            ``"duration"`` the engagement head predicts the watched fraction and
            multiplies it by the item's duration, and `HistoryMatch` weighs the history
            by watched fraction.
        engagement_head: build the engagement regression head.
        use_time_left: feed ``log1p(time_left)`` into the user state.
        user_features_dim: width ``F`` of ``obs["user_features"]`` to read; 0 ignores
            that key (documented: features are used only when configured).
        dropout: dropout rate in the heads and the user encoder.
    """

    d_text: int
    d_image: int
    hidden_dim: int = 64
    user_encoder: str = "attention"
    fusion: str = "gated"
    modality: str = "fused"
    num_heads: int = 4
    num_queries: int = 2
    max_history: int = 128
    history_match: bool = True
    history_decays: tuple[float, ...] = (0.5, 0.7, 0.8, 0.9)
    item_features: tuple[str, ...] = ITEM_FEATURES
    engagement_head: bool = True
    use_time_left: bool = True
    user_features_dim: int = 0
    dropout: float = 0.0

    def __post_init__(self) -> None:
        choices = {
            "user_encoder": USER_ENCODERS,
            "fusion": FUSIONS,
            "modality": MODALITIES,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"ScorerConfig.{name}={getattr(self, name)!r}; expected one of {allowed}"
                )
        positive = ("d_text", "d_image", "hidden_dim", "num_heads", "num_queries", "max_history")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ScorerConfig.{name}={value!r}; expected a positive int")
        if self.hidden_dim % self.num_heads:
            raise ValueError(
                f"ScorerConfig.hidden_dim={self.hidden_dim} must be divisible by "
                f"num_heads={self.num_heads}"
            )
        if self.user_features_dim < 0:
            raise ValueError(
                f"ScorerConfig.user_features_dim={self.user_features_dim}; expected >= 0"
            )
        decays = self.history_decays
        if isinstance(decays, list):  # JSON / YAML round trips give lists
            decays = tuple(decays)
            object.__setattr__(self, "history_decays", decays)
        if not isinstance(decays, tuple) or any(
            isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 < r < 1.0 for r in decays
        ):
            raise ValueError(
                f"ScorerConfig.history_decays={self.history_decays!r}; expected a tuple of "
                "decay rates per step, each in (0, 1)"
            )
        if len(set(decays)) != len(decays):
            raise ValueError(f"ScorerConfig.history_decays={decays!r} repeats a rate")
        features = self.item_features
        if isinstance(features, list | str):
            features = (features,) if isinstance(features, str) else tuple(features)
            object.__setattr__(self, "item_features", features)
        try:
            check_item_features(features)
        except ValueError as exc:
            raise ValueError(f"ScorerConfig.item_features={self.item_features!r}: {exc}") from None
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ScorerConfig.dropout={self.dropout}; expected in [0, 1)")

    @property
    def knows_duration(self) -> bool:
        """True when ``"duration"`` is among the item features."""
        return "duration" in self.item_features

    @property
    def dim(self) -> int:
        """Width ``d`` of the fused item vector the scorer reads."""
        return self.d_text + self.d_image

    def to_dict(self) -> dict:
        """Plain dict (str/int/float/bool values and a tuple of floats), safe for
        ``weights_only`` checkpoints."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> ScorerConfig:
        """Inverse of `to_dict`; unknown keys raise ``ValueError`` naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"ScorerConfig has no field(s) {unknown}; valid: {sorted(known)}")
        return cls(**values)


def _mlp(d_in: int, d_hidden: int, d_out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(d_in, d_hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(d_hidden, d_out)
    )


class ItemTower(nn.Module):
    """Fused item vector ``(..., d)`` -> item representation ``(..., hidden_dim)``.

    The text part is ``x[..., :d_text]``, the image part ``x[..., d_text:]``. Only the
    projections the configured ``modality`` needs are built.
    """

    def __init__(self, config: ScorerConfig):
        super().__init__()
        self.config = config
        h = config.hidden_dim
        self.text_proj = nn.Linear(config.d_text, h) if config.modality != "image" else None
        self.image_proj = nn.Linear(config.d_image, h) if config.modality != "text" else None
        self.gate = None
        self.cross = None
        if config.modality in ("fused", "id"):
            if config.fusion == "gated":
                self.gate = nn.Linear(2 * h, h)
            else:
                self.modality_embedding = nn.Parameter(torch.zeros(2, h))
                self.cross = nn.MultiheadAttention(h, config.num_heads, batch_first=True)
        self.feature_proj = nn.Linear(len(config.item_features), h) if config.item_features else None
        self.norm = nn.LayerNorm(h)
        self.out = _mlp(h, h, h, 0.0)

    def forward(self, items: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """``items``: ``(..., d)`` float32 fused vectors, ``features``: ``(..., F)`` float32
        item metadata (required when the config lists item features) -> ``(..., hidden_dim)`` float32."""
        c = self.config
        if self.text_proj is not None and self.image_proj is not None:
            text = self.text_proj(items[..., : c.d_text])
            image = self.image_proj(items[..., c.d_text :])
            if self.gate is not None:
                # Per-dimension gate: the tower can keep text and image in separate
                # dimensions or blend them, whichever predicts clicks better.
                g = torch.sigmoid(self.gate(torch.cat([text, image], dim=-1)))
                z = g * text + (1.0 - g) * image
            else:
                lead = text.shape[:-1]
                tokens = torch.stack([text, image], dim=-2).reshape(-1, 2, c.hidden_dim)
                tokens = tokens + self.modality_embedding
                attended, _ = self.cross(tokens, tokens, tokens, need_weights=False)
                z = (tokens + attended).mean(dim=-2).reshape(*lead, c.hidden_dim)
        elif self.text_proj is not None:
            z = self.text_proj(items[..., : c.d_text])
        else:
            z = self.image_proj(items[..., c.d_text :])
        if self.feature_proj is not None:
            if features is None:
                raise ValueError(f"the item tower reads item features {c.item_features}; none were given")
            z = z + self.feature_proj(features)
        z = self.norm(z)
        return z + self.out(z)


class UserEncoder(nn.Module):
    """History tokens (+ time left, user features) -> user state ``(B, hidden_dim)``.

    Each past step's token is ``token([item, clicked, log1p(minutes)]) + recency``.
    The token layer is linear, so its item part is a per-item term: `item_part` maps
    item-tower vectors to it (``W_item z``), and `encode` adds the per-step feedback and
    recency terms. In ``ids`` mode the scorer computes `item_part` once per catalog
    item instead of once per (user, past step); `forward` is the two steps in one.
    """

    def __init__(self, config: ScorerConfig):
        super().__init__()
        self.config = config
        h = config.hidden_dim
        # Feedback enters as [clicked, log1p(engagement minutes)]: minutes span orders
        # of magnitude less after the log, so one scale fits every catalog.
        self.token = nn.Linear(h + 2, h)
        self.recency = nn.Embedding(config.max_history, h)
        if config.user_encoder == "attention":
            # A learned always-present token lets an empty history (the first step of
            # an episode) attend to something instead of producing NaN.
            self.empty_token = nn.Parameter(torch.zeros(1, 1, h))
            self.queries = nn.Parameter(torch.randn(config.num_queries, h) / math.sqrt(h))
            # Holds the projections; `encode` runs the attention itself on keys and
            # values folded through the token layer (see `item_part`).
            self.attention = nn.MultiheadAttention(
                h, config.num_heads, dropout=config.dropout, batch_first=True
            )
            pooled = config.num_queries * h
        else:
            self.gru = nn.GRUCell(h, h)
            pooled = h
        extra = int(config.use_time_left) + config.user_features_dim
        self.summary = _mlp(pooled + extra, h, h, config.dropout)
        self.norm = nn.LayerNorm(h)

    @property
    def item_part_dim(self) -> int:
        """Width of `item_part`: ``h``."""
        return self.config.hidden_dim

    def _logit_map(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The attention logits as a linear map of a token: ``(h, heads * Q)`` and ``(heads * Q,)``.

        The logit of query ``j`` in head ``n`` for token ``x`` is
        ``(W_k x + b_k)[n] . q[j, n] / sqrt(hd) = x . (W_k[n]^T q[j, n]) / sqrt(hd) + b_k[n] . q[j, n] / sqrt(hd)``,
        so the keys never need to be built. Columns in (head, query) order.
        """
        c = self.config
        h, heads = c.hidden_dim, c.num_heads
        head_dim = h // heads
        weight, bias = self.attention.in_proj_weight, self.attention.in_proj_bias
        queries = F.linear(self.queries, weight[:h], bias[:h]).reshape(-1, heads, head_dim) / math.sqrt(head_dim)
        w_key = weight[h : 2 * h].reshape(heads, head_dim, h)
        logit_map = torch.einsum("qnd,ndh->hnq", queries, w_key).reshape(h, -1)
        logit_bias = torch.einsum("qnd,nd->nq", queries, bias[h : 2 * h].reshape(heads, head_dim)).reshape(-1)
        return logit_map, logit_bias

    def _item_weight(self) -> torch.Tensor:
        """``(item_part_dim, h)``: the map from an item-tower vector to its item part."""
        return self.token.weight[:, : self.config.hidden_dim]

    def item_part(self, items: torch.Tensor) -> torch.Tensor:
        """Per-item term of the history tokens: ``(..., h)`` tower vectors -> ``(..., item_part_dim)``."""
        return items @ self._item_weight().T

    def forward(
        self,
        history: torch.Tensor,
        feedback: torch.Tensor,
        mask: torch.Tensor,
        time_left: torch.Tensor | None,
        user_features: torch.Tensor | None,
    ) -> torch.Tensor:
        """Encode the history.

        Args:
            history: ``(B, H, h)`` float32 item-tower vectors of past steps.
            feedback: ``(B, H, 2)`` float32 ``[clicked, engagement minutes]``.
            mask: ``(B, H)`` float32, 1 for a real past step, 0 for padding (the
                attention encoder reads it as 0/1: a step with mask <= 0 is left out).
            time_left: ``(B, 1)`` float32 minutes, or None when not configured.
            user_features: ``(B, F)`` float32, or None when not configured.

        Returns:
            ``(B, hidden_dim)`` float32 user state.
        """
        return self.encode(self.item_part(history), feedback, mask, time_left, user_features)

    def encode(
        self,
        item_part: torch.Tensor,
        feedback: torch.Tensor,
        mask: torch.Tensor,
        time_left: torch.Tensor | None,
        user_features: torch.Tensor | None,
    ) -> torch.Tensor:
        """`forward` from the past items' precomputed `item_part` ``(B, H, item_part_dim)``.

        Other arguments and the result as in `forward`.
        """
        c = self.config
        h = c.hidden_dim
        batch, length, _ = item_part.shape
        w_feedback = self.token.weight[:, h:].T  # (2, h): clicked, log1p(minutes)
        feedback = torch.stack([feedback[..., 0], torch.log1p(feedback[..., 1].clamp_min(0.0))], dim=-1)
        # Recency counts from the newest step (most recent is last), so a model trained
        # with one history length reads another.
        steps_back = torch.arange(length - 1, -1, -1, device=item_part.device)
        position = self.recency(steps_back) + self.token.bias  # (H, h)
        if c.user_encoder == "attention":
            # Attention over [empty token, past tokens] with the keys and values folded
            # away: a token's logits are a linear map of it (`_logit_map`), and since a
            # softmax's weights sum to one, the attention output of query j in head n is
            # W_v[n] (sum_t w_t x_t) + b_v[n]: the weighted sum of tokens ``x`` (width h)
            # goes through the value projection once per user, not once per past step.
            # A padded step's weight is 0, so its token needs no masking.
            heads, head_dim = c.num_heads, h // c.num_heads
            logit_map, logit_bias = self._logit_map()
            x = torch.addmm((item_part + position).reshape(-1, h), feedback.reshape(-1, 2), w_feedback)
            logits = (x @ logit_map).reshape(batch, length, -1)  # (B, H, heads * Q)
            x = x.reshape(batch, length, h)  # the tokens
            empty = self.empty_token.reshape(1, h)
            empty_logits = (empty @ logit_map).expand(batch, 1, -1)
            logits = torch.cat([empty_logits, logits], dim=1) + logit_bias  # (B, 1 + H, heads * Q)
            ignore = torch.cat([mask.new_ones(batch, 1), mask], dim=1) <= 0  # the empty token always counts
            weights = torch.softmax(logits.masked_fill(ignore.unsqueeze(-1), float("-inf")), dim=1)
            if self.training and self.attention.dropout > 0:
                weights = F.dropout(weights, self.attention.dropout, True)
            weights = weights.transpose(1, 2)  # (B, heads * Q, 1 + H)
            mixed = torch.baddbmm(weights[..., :1] * empty, weights[..., 1:], x)  # (B, heads * Q, h)
            w_value = self.attention.in_proj_weight[2 * h :].reshape(heads, head_dim, h)
            pooled = torch.einsum("bnqh,ndh->bqnd", mixed.reshape(batch, heads, -1, h), w_value)
            pooled = pooled.reshape(batch, -1, h) + self.attention.in_proj_bias[2 * h :]
            pooled = self.attention.out_proj(pooled).reshape(batch, -1)
        else:
            tokens = (item_part + feedback @ w_feedback + position) * mask.unsqueeze(-1)
            state = tokens.new_zeros(batch, h)
            for t in range(length):
                # Padded steps leave the state unchanged, so left or right padding both work.
                mt = mask[:, t : t + 1]
                state = mt * self.gru(tokens[:, t], state) + (1.0 - mt) * state
            pooled = state
        parts = [pooled]
        if c.use_time_left:
            parts.append(torch.log1p(time_left.clamp_min(0.0)))
        if c.user_features_dim:
            parts.append(user_features)
        return self.norm(self.summary(torch.cat(parts, dim=-1)))


class HistoryMatch(nn.Module):
    """How much each candidate resembles the user's past items, per modality: ``(B, K, h)``.

    For each modality part the scorer reads (text, image or both) and each candidate,
    the cosine to every past item (the parts are L2-normalised, so a dot product) is
    pooled four ways: mean over clicked past items, mean over shown-but-skipped ones,
    engagement-weighted mean, and max over clicked ones. For each rate ``r`` in
    ``config.history_decays`` recency-decayed sums follow,
    ``sum_t r**(steps back) * w_t * cos(candidate, item_t)`` with ``w_t = clicked``,
    ``w_t = log1p(engagement minutes)`` and, when the scorer knows item durations,
    ``w_t = watched fraction`` (minutes / the past item's duration; the newest step is 0
    steps back). The last is exactly the simulated users' satiation memory
    (``m <- decay * m + watched * x / 2``, satiation ``relu(<m, candidate>)``) when a
    rate equals the user model's decay and the history is long enough. Each is one dot
    product with a per-user decayed profile vector, so it costs
    ``O(B*K*d)``, not ``O(B*K*H*d)``. With the click and skip counts these statistics
    go through an MLP. Keeping the modalities apart lets the heads weigh text against
    image similarity per user, which is what the simulated users' modality weight does
    (affinity = a * cos_text + (1 - a) * cos_image).
    """

    def __init__(self, config: ScorerConfig):
        super().__init__()
        parts = {"text": [(0, config.d_text)], "image": [(config.d_text, config.dim)]}
        self.parts = parts.get(config.modality, parts["text"] + parts["image"])
        self.register_buffer(
            "decays", torch.tensor(config.history_decays, dtype=torch.float32), persistent=False
        )
        self.watched = config.knows_duration
        per_rate = 3 if self.watched else 2  # clicked, log1p(minutes)(, watched fraction)
        self.num_statistics = (4 + per_rate * len(config.history_decays)) * len(self.parts) + 2
        self.stats = nn.Sequential(
            nn.Linear(self.num_statistics, config.hidden_dim), nn.GELU(),
            nn.Linear(config.hidden_dim, config.hidden_dim),
        )
        # `pooled` builds the statistics in another column order than `statistics`
        # (all linear poolings of a part in one product, then the maxima, then the
        # counts); column i of `pooled` is column reference[i] of `statistics`.
        parts, linear = len(self.parts), 3 + per_rate * len(config.history_decays)
        reference = [p * (linear + 1) + k + (k >= 3) for p in range(parts) for k in range(linear)]
        reference += [p * (linear + 1) + 3 for p in range(parts)] + [parts * (linear + 1), parts * (linear + 1) + 1]
        self.register_buffer("pooled_columns", torch.tensor(reference), persistent=False)
        self.register_buffer("reference_columns", torch.argsort(self.pooled_columns), persistent=False)

    def cosines(self, candidates: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """Cosine of each past item to each candidate, per part: ``(B, H, K, P)`` float32
        (``P`` modality parts; arguments as in `forward`)."""
        return torch.stack(
            [torch.einsum("bkd,bhd->bhk", candidates[..., a:b], history[..., a:b]) for a, b in self.parts], dim=-1
        )

    def pooled(self, cosines: torch.Tensor, feedback: torch.Tensor, mask: torch.Tensor,
               watched: torch.Tensor | None = None) -> torch.Tensor:
        """`statistics` from the `cosines` ``(B, H, K, P)``, columns in `pooled_columns` order.

        ``watched``: ``(B, H)`` float32 watched fraction of each past step (0 where not
        clicked), required when the scorer knows durations.

        Every statistic but the maxima and the counts is a weighted sum over past steps of
        the cosines, so all of them, for every part, are one batched product.
        """
        if self.watched and watched is None:
            raise ValueError("HistoryMatch reads the watched fraction of past steps (item durations); none was given")
        batch, length, num_candidates, parts = cosines.shape
        clicked = feedback[..., 0] * mask
        skipped = (1.0 - feedback[..., 0]) * mask
        engaged = torch.log1p(feedback[..., 1].clamp_min(0.0)) * mask
        weights = torch.stack([clicked, skipped, engaged], dim=1)  # (B, 3, H)
        weights = weights / weights.sum(-1, keepdim=True).clamp_min(1e-6)
        if self.decays.numel():
            steps_back = torch.arange(length - 1, -1, -1, device=cosines.device, dtype=cosines.dtype)
            recency = self.decays.to(cosines.dtype).unsqueeze(-1) ** steps_back  # (D, H)
            # (B, 2D or 3D, H): for each rate, clicked, log1p(minutes)(, watched), decayed by steps back
            per_step = [clicked, engaged] + ([watched * mask] if self.watched else [])
            decayed = (torch.stack(per_step, dim=1).unsqueeze(1) * recency[None, :, None, :]).flatten(1, 2)
            weights = torch.cat([weights, decayed], dim=1)  # (B, 3 + 2D, H)
        linear = torch.bmm(cosines.reshape(batch, length, -1).transpose(1, 2), weights.transpose(1, 2))  # (B, K * P, 3 + 2D)
        best = cosines.masked_fill((clicked <= 0)[:, :, None, None], float("-inf")).amax(1)  # (B, K, P)
        best = torch.where((clicked.sum(-1) > 0)[:, None, None], best, torch.zeros_like(best))
        counts = torch.log1p(torch.stack([clicked.sum(-1), skipped.sum(-1)], dim=-1))
        return torch.cat(
            [linear.reshape(batch, num_candidates, -1), best, counts.unsqueeze(1).expand(-1, num_candidates, -1)],
            dim=-1,
        )

    def statistics(
        self, candidates: torch.Tensor, history: torch.Tensor, feedback: torch.Tensor, mask: torch.Tensor,
        watched: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The raw statistics before the MLP: ``(B, K, num_statistics)`` float32.

        Per part, in order: clicked mean, skipped mean, engagement-weighted mean, clicked
        max (cosines), then per decay rate the clicked, the ``log1p(minutes)`` (and the
        watched-fraction) weighted decayed sums; last ``log1p`` of the click and skip
        counts. Arguments as in `forward`.
        """
        return self.pooled(self.cosines(candidates, history), feedback, mask, watched)[..., self.reference_columns]

    def hidden_from_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        """`hidden` from `pooled` statistics (the first layer's columns reordered to match)."""
        first = self.stats[0]
        return self.stats[1](F.linear(pooled, first.weight[:, self.pooled_columns], first.bias))

    def hidden(self, statistics: torch.Tensor) -> torch.Tensor:
        """The MLP's hidden layer ``(B, K, h)`` from `statistics` (before its last linear map)."""
        return self.stats[1](self.stats[0](statistics))

    def forward(
        self, candidates: torch.Tensor, history: torch.Tensor, feedback: torch.Tensor, mask: torch.Tensor,
        watched: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Match features.

        Args:
            candidates: ``(B, K, d)`` float32 fused candidate vectors.
            history: ``(B, H, d)`` float32 fused past item vectors.
            feedback: ``(B, H, 2)`` float32 ``[clicked, engagement minutes]``.
            mask: ``(B, H)`` float32, 1 for a real past step.
            watched: ``(B, H)`` float32 watched fraction of each past step (when the
                scorer knows durations).

        Returns:
            ``(B, K, hidden_dim)`` float32.
        """
        return self.stats[2](self.hidden(self.statistics(candidates, history, feedback, mask, watched)))


class Scorer(nn.Module):
    """Permutation-equivariant scorer: observation dict -> one score per candidate.

    Args:
        config: the architecture (`ScorerConfig`).
        item_table: optional ``(N, d)`` float32 fused item vectors
            (``item_space.fused``). With it the scorer also accepts ``ids``-mode
            observations (int64 item rows) and gathers vectors itself. Held as a
            non-persistent buffer: it is not in `state_dict`, so weights move freely
            between the two observation modes.
        item_features: ``(N, F)`` float32 item metadata, required when
            ``config.item_features`` lists any (``F`` of them, in that order; build it
            with `recsim_mm.item_features.item_feature_table`). Held as a persistent
            buffer: the values a ranker learned with travel with its weights. In
            ``embeddings`` mode the scorer finds each vector's row in ``item_table``
            (exact match) to look its features up.

    Observation dict (batched, leading ``B``):
        ``history_items`` ``(B, H, d)`` float32 or ``(B, H)`` int64 rows;
        ``history_feedback`` ``(B, H, 2)`` float32 ``[clicked, engagement minutes]``;
        ``history_mask`` ``(B, H)`` float32; ``candidate_items`` ``(B, K, d)`` float32 or
        ``(B, K)`` int64 rows; ``time_left`` ``(B, 1)`` float32 minutes (when
        ``use_time_left``); ``user_features`` ``(B, F)`` float32 (when configured).

    Example:
        >>> from recsim_mm import ItemSpace
        >>> space = ItemSpace.random(50, d_text=8, d_image=8)
        >>> scorer = Scorer(ScorerConfig(d_text=8, d_image=8, hidden_dim=16))
        >>> obs = {"history_items": space.fused[:6].reshape(2, 3, 16),
        ...        "history_feedback": torch.zeros(2, 3, 2), "history_mask": torch.ones(2, 3),
        ...        "candidate_items": space.fused[10:20].reshape(2, 5, 16),
        ...        "time_left": torch.full((2, 1), 60.0)}
        >>> scorer(obs).shape
        torch.Size([2, 5])
    """

    def __init__(self, config: ScorerConfig, item_table: torch.Tensor | None = None,
                 item_features: torch.Tensor | None = None):
        super().__init__()
        self.config = config
        if item_table is not None:
            if item_table.ndim != 2 or item_table.shape[1] != config.dim:
                raise ValueError(
                    f"item_table must be (N, {config.dim}) = (N, d_text + d_image); "
                    f"got {tuple(item_table.shape)}"
                )
            self.register_buffer("item_table", item_table.detach().float().clone(), persistent=False)
        else:
            self.item_table = None
        if config.item_features:
            names = list(config.item_features)
            if item_table is None or item_features is None:
                raise ValueError(
                    f"ScorerConfig.item_features={names} are looked up by item row: build the scorer with "
                    "item_table=item_space.fused and item_features=item_feature_table(item_space, "
                    f"{tuple(names)}, log) (recsim_mm.item_features), or set item_features=()")
            expected = (item_table.shape[0], len(names))
            if tuple(item_features.shape) != expected:
                raise ValueError(f"item_features must be (N, F) = {expected} for features {names}; "
                                 f"got {tuple(item_features.shape)}")
            self.register_buffer("item_feature_table", item_features.detach().float().clone())
        else:
            if item_features is not None and item_features.numel():
                raise ValueError("item_features were given but ScorerConfig.item_features is empty")
            self.item_feature_table = None
        if config.modality == "id":
            if item_table is None:
                raise ValueError("ScorerConfig.modality='id' learns one embedding per catalog item: "
                                 "pass item_table= (item_space.fused) for the number of items")
            scale = float(self.item_table.std())
            self.item_embedding = nn.Parameter(torch.randn(*self.item_table.shape) * scale)
        self.item_tower = ItemTower(config)
        self.user_encoder = UserEncoder(config)
        self.history_match = HistoryMatch(config) if config.history_match else None
        h = config.hidden_dim
        width = (4 if config.history_match else 3) * h
        self.click_head = _mlp(width, h, 1, config.dropout)
        self.engagement_head = _mlp(width, h, 1, config.dropout) if config.engagement_head else None

    @classmethod
    def for_item_space(cls, item_space, ids: bool = True, log=None, **config_overrides) -> Scorer:
        """A scorer sized for ``item_space`` (an `ItemSpace`).

        Args:
            item_space: gives ``d_text`` / ``d_image``, the table and the durations.
            ids: hold ``item_space.fused`` so ``ids``-mode observations work (needed
                for item features; ``ids=False`` builds a scorer without them).
            log: the training `InteractionLog`, for the log-based item features
                (None: those are 0).
            **config_overrides: any other `ScorerConfig` field.
        """
        if not ids:
            config_overrides.setdefault("item_features", ())
        config = ScorerConfig(d_text=item_space.d_text, d_image=item_space.d_image, **config_overrides)
        features = item_feature_table(item_space, config.item_features, log) if config.item_features else None
        return cls(config, item_table=item_space.fused if ids else None, item_features=features)

    def item_durations(self, rows: torch.Tensor) -> torch.Tensor:
        """Durations (minutes, float32, shape of ``rows``) of items by row; needs ``"duration"`` among the features."""
        return self._log_durations(rows).exp()

    def _log_durations(self, rows: torch.Tensor) -> torch.Tensor:
        """``log`` of `item_durations`: the feature table's duration column, gathered."""
        column = self.config.item_features.index("duration")
        return self.item_feature_table[:, column].index_select(0, rows.reshape(-1).long()).reshape(rows.shape)

    @property
    def item_vectors(self) -> torch.Tensor | None:
        """``(N, d)`` what the scorer reads for catalog item n: its fused vector, or for
        ``modality="id"`` its learned embedding."""
        return self.item_embedding if self.config.modality == "id" else self.item_table

    # -- input handling ---------------------------------------------------------------

    def _vectors(self, obs: dict[str, torch.Tensor], key: str, ndim_ids: int) -> torch.Tensor:
        """Item vectors ``(..., d)`` for ``obs[key]``, gathering rows in ids mode."""
        value = obs[key]
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"obs[{key!r}] must be a torch.Tensor; got {type(value).__name__}")
        if not value.is_floating_point():
            if value.ndim != ndim_ids:
                raise ValueError(
                    f"obs[{key!r}] in ids mode must have {ndim_ids} dims (batched item rows); "
                    f"got shape {tuple(value.shape)}"
                )
            if self.item_table is None:
                raise ValueError(
                    f"obs[{key!r}] holds item ids ({value.dtype}) but this Scorer has no item "
                    "table; build it with Scorer(config, item_table=item_space.fused)"
                )
            return self.item_vectors.index_select(0, value.reshape(-1).long()).reshape(*value.shape, -1)
        if self.config.modality == "id":
            raise ValueError(f"obs[{key!r}] holds item vectors, but an id-only scorer (modality='id') "
                             "reads item ids: use obs_mode='ids'")
        if value.ndim != ndim_ids + 1 or value.shape[-1] != self.config.dim:
            raise ValueError(
                f"obs[{key!r}] in embeddings mode must be (..., {self.config.dim}) with "
                f"{ndim_ids + 1} dims; got shape {tuple(value.shape)}"
            )
        return value.float()

    def _prepare(self, obs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Checked ``obs``; with item features and ``embeddings``-mode items, their rows
        added under `ROW_KEYS` (given, or found by matching each vector to the item table).

        Raises:
            ValueError: an item vector that is no row of the item table, or given rows of
                the wrong shape.
        """
        self._check(obs)
        if self.item_feature_table is None or not obs[CANDIDATE_ITEMS].is_floating_point():
            return obs
        obs = dict(obs)
        for key, ndim in ((CANDIDATE_ITEMS, 2), (HISTORY_ITEMS, 2)):
            given = obs.get(ROW_KEYS[key])
            if given is not None:
                if tuple(given.shape) != tuple(obs[key].shape[:-1]):
                    raise ValueError(f"obs[{ROW_KEYS[key]!r}] must be the rows of obs[{key!r}], shape "
                                     f"{tuple(obs[key].shape[:-1])}; got {tuple(given.shape)}")
                obs[ROW_KEYS[key]] = given.long()
                continue
            rows, exact = match_rows(self.item_table, self._vectors(obs, key, ndim))
            if key == HISTORY_ITEMS:  # padded steps hold zero vectors
                exact = exact | (obs[HISTORY_MASK] <= 0)
            if not bool(exact.all()):
                raise ValueError(f"obs[{key!r}] holds a vector that is no row of the scorer's item table; the item "
                                 "features are looked up by row, so the observation must come from this item space")
            obs[ROW_KEYS[key]] = rows
        return obs

    def item_rows(self, obs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Item rows of the candidates ``(B, K)`` and past items ``(B, H)``, int64, in either
        mode, for a scorer with item features (vectors are matched to the item table, as
        the features are looked up; padded history steps may give any row).

        Raises:
            ValueError: the scorer has no item features, or a vector is no row of its table.
        """
        if self.item_feature_table is None:
            raise ValueError("item_rows: this scorer reads no item features, so it keeps no rows")
        prepared = self._prepare(obs)
        return self._rows(prepared, CANDIDATE_ITEMS).long(), self._rows(prepared, HISTORY_ITEMS).long()

    @staticmethod
    def _rows(obs: dict[str, torch.Tensor], key: str) -> torch.Tensor:
        """Item rows of ``obs[key]`` (the ids, or the rows `_prepare` added for vectors)."""
        value = obs[key]
        return value if not value.is_floating_point() else obs[ROW_KEYS[key]]

    def _features(self, rows: torch.Tensor) -> torch.Tensor | None:
        """``(*rows.shape, F)`` item features of item rows, or None without features."""
        if self.item_feature_table is None:
            return None
        return self.item_feature_table.index_select(0, rows.reshape(-1).long()).reshape(*rows.shape, -1)

    def _watched(self, obs: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """``(B, H)`` float32 watched fraction of each past step (minutes / duration; 0
        without a click), or None when the scorer does not know durations."""
        if not self.config.knows_duration:
            return None
        feedback = obs[HISTORY_FEEDBACK].float()
        return feedback[..., 1] * feedback[..., 0] / self.item_durations(self._rows(obs, HISTORY_ITEMS))

    def _check(self, obs: dict[str, torch.Tensor]) -> None:
        missing = [k for k in REQUIRED_KEYS if k not in obs]
        if self.config.use_time_left and "time_left" not in obs:
            missing.append("time_left")
        if self.config.user_features_dim and USER_FEATURES not in obs:
            missing.append(USER_FEATURES)
        if missing:
            raise KeyError(f"observation is missing key(s) {missing}; got {sorted(obs)}")

    # -- the network ------------------------------------------------------------------
    #
    # The heads' first layer reads [user, item, user * item, match] per candidate. It is
    # linear, so it splits exactly: W [u; i; u*i; m] = W_u u + W_i i + W_ui (u*i) + W_m m.
    # W_u u is computed once per user, W_i i once per item (per catalog item in ids
    # mode, with the item tower and the history tokens' item part, see
    # `_item_terms`), and W_m m folds into the match MLP's last linear layer
    # (W_m (A g + a) = (W_m A) g + W_m a). Only W_ui (u*i) and the folded match term are
    # per (user, candidate) pair.

    def _heads(self) -> list[nn.Sequential]:
        """The click head, then the engagement head when built."""
        return [self.click_head] + ([self.engagement_head] if self.engagement_head is not None else [])

    def _item_terms(self, items: torch.Tensor, heads: int, history_part: bool = True,
                    features: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """Per-item terms of item vectors ``(..., d)``, each ``(..., width)`` float32.

        In order: the item-tower vector ``z`` (h), the first ``heads`` heads' ``W_i z``
        (h each; click head, then the engagement head) and, with ``history_part``, the
        user encoder's `UserEncoder.item_part` of ``z``. One matrix product after the tower.
        """
        h = self.config.hidden_dim
        z = self.item_tower(items, features)
        weights = [head[0].weight[:, h : 2 * h] for head in self._heads()[:heads]]
        widths = [h] * len(weights)
        if history_part:
            weights.append(self.user_encoder._item_weight())
            widths.append(self.user_encoder.item_part_dim)
        if not weights:  # the user state alone (`encode_user` from item vectors): no per-item term
            return (z,)
        projected = z @ torch.cat(weights).T
        return (z, *projected.split(widths, dim=-1))

    def _catalog_terms(self, heads: int) -> tuple[torch.Tensor, ...]:
        """`_item_terms` of every catalog item, ``(N, width)`` each; reused while no weight changes.

        With autograd only the first ``heads`` heads' terms are built (so a head that
        does not take part gets no gradient); the cache holds every head's.

        Outside autograd (rollouts, target networks, evaluation) the tables are cached
        and recomputed only when a parameter or the item table was modified in place
        (an optimiser step, ``load_state_dict``) or moved: the key holds every tensor's
        storage address and version counter.
        """
        if torch.is_grad_enabled():
            self._catalog_cache = None
            return self._item_terms(self.item_vectors, heads, features=self.item_feature_table)
        key = self._weights_key()
        cache = getattr(self, "_catalog_cache", None)
        if cache is None or cache[0] != key:
            terms = tuple(t.contiguous() for t in self._item_terms(self.item_vectors, len(self._heads()),
                                                                   features=self.item_feature_table))
            cache = self._catalog_cache = (key, terms)
        return cache[1][: 1 + heads] + cache[1][-1:]

    def _weights_key(self) -> tuple:
        """Storage address and version counter of the item table and of every parameter.

        Equal keys mean no weight was modified in place or moved since. The parameter
        slots are listed once (the module's structure does not change after `__init__`;
        `Module.parameters()` walks every submodule, ~0.5 ms a call), but read on every
        call, so a parameter replaced in its slot changes the key too.
        """
        slots = self.__dict__.get("_parameter_slots")
        if slots is None:
            slots = self._parameter_slots = [
                (module._parameters, name) for module in self.modules() for name in module._parameters
            ]
        tensors = [self.item_table, self.item_feature_table, *(params[name] for params, name in slots)]
        return tuple((t.data_ptr(), t._version) for t in tensors if t is not None)

    def _cosine_table(self) -> torch.Tensor | None:
        """``(N, N, P)`` float32: the cosine between every two catalog items per modality
        part of `HistoryMatch`, or None where it does not apply or would be large.

        In ``ids`` mode `HistoryMatch`'s cosines are then one lookup per (past item,
        candidate) instead of two vector gathers and a batched dot product per part (the
        same values up to float rounding; 0.6 vs 0.9 ms for a PPO minibatch of 512 users).
        Built once per item table, which is fixed (an id-only scorer's learned embeddings
        are not, so it has none), and only up to `COSINE_TABLE_MAX` entries (the 600-item
        default catalog: 720,000).
        """
        table = self.item_table
        if table is None or self.history_match is None or self.config.modality == "id":
            return None
        parts = self.history_match.parts
        if table.shape[0] ** 2 * len(parts) > COSINE_TABLE_MAX:
            return None
        key = (table.data_ptr(), table._version, table.device)
        cache = self.__dict__.get("_cosine_cache")
        if cache is None or cache[0] != key:
            with torch.no_grad():
                cosines = torch.stack([table[:, a:b] @ table[:, a:b].T for a, b in parts], dim=-1)
            cache = self._cosine_cache = (key, cosines)
        return cache[1]

    def _match_cosines(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """`HistoryMatch.cosines` of the observation, ``(B, H, K, P)``: looked up in
        `_cosine_table` in ``ids`` mode where there is one, computed otherwise."""
        history, candidates = obs[HISTORY_ITEMS], obs[CANDIDATE_ITEMS]
        table = None
        if not history.is_floating_point() and not candidates.is_floating_point():
            table = self._cosine_table()
        if table is None:
            return self.history_match.cosines(self._vectors(obs, CANDIDATE_ITEMS, 2), self._vectors(obs, HISTORY_ITEMS, 2))
        n, parts = table.shape[0], table.shape[2]
        (batch, num_candidates), length = candidates.shape, history.shape[1]
        # row of (past item, candidate) in the table as (N * N, P): both parts of a pair are adjacent
        rows = (history.long() * n).unsqueeze(-1) + candidates.long().unsqueeze(1)  # (B, H, K)
        return table.reshape(-1, parts).index_select(0, rows.reshape(-1)).reshape(batch, length, num_candidates, parts)

    def _gathered_terms(
        self, obs: dict[str, torch.Tensor], heads: int = 0
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Candidates' item terms (``z`` then the first ``heads`` heads' ``W_i z``,
        ``(B, K, h)`` each) and the history's item part ``(B, H, item_part_dim)``.

        In ``ids`` mode the terms come from the catalog tables (`_catalog_terms`) when
        they are cached or the batch looks up more rows than the catalog has (the tower
        is a per-item function: same values, a fraction of the work: a PPO minibatch of
        512 users x 30 items vs a 600-item catalog is 25x less); otherwise per row.
        """
        history, candidates = obs[HISTORY_ITEMS], obs[CANDIDATE_ITEMS]
        ids_mode = not history.is_floating_point() and not candidates.is_floating_point()
        if ids_mode and self.item_table is not None and (
            not torch.is_grad_enabled() or history.numel() + candidates.numel() > self.item_table.shape[0]
        ):
            for key, value in ((HISTORY_ITEMS, history), (CANDIDATE_ITEMS, candidates)):
                if value.ndim != 2:
                    raise ValueError(
                        f"obs[{key!r}] in ids mode must have 2 dims (batched item rows); "
                        f"got shape {tuple(value.shape)}"
                    )
            *item_tables, history_table = self._catalog_terms(heads)
            # index_select, not F.embedding: the same rows, and its backward (index_add)
            # is about twice as fast as embedding's on these shapes
            rows = candidates.reshape(-1).long()
            return (
                [t.index_select(0, rows).reshape(*candidates.shape, -1) for t in item_tables],
                history_table.index_select(0, history.reshape(-1).long()).reshape(*history.shape, -1),
            )
        features = self.item_feature_table is not None
        return (
            list(self._item_terms(self._vectors(obs, CANDIDATE_ITEMS, 2), heads, history_part=False,
                                  features=self._features(self._rows(obs, CANDIDATE_ITEMS)) if features else None)),
            self.user_encoder.item_part(self.item_tower(
                self._vectors(obs, HISTORY_ITEMS, 2),
                self._features(self._rows(obs, HISTORY_ITEMS)) if features else None)),
        )

    def _user_inputs(self, obs: dict[str, torch.Tensor], length: int) -> tuple:
        """Checked ``feedback (B, H, 2)``, ``mask (B, H)``, ``time_left``, ``user_features``."""
        feedback = obs[HISTORY_FEEDBACK].float()
        mask = obs[HISTORY_MASK].float()
        batch = obs[HISTORY_ITEMS].shape[0]
        if feedback.shape != (batch, length, 2) or mask.shape != (batch, length):
            raise ValueError(
                f"history shapes disagree: history_items gives (B, H)={(batch, length)}, "
                f"history_feedback is {tuple(feedback.shape)} (expected (B, H, 2)), "
                f"history_mask is {tuple(mask.shape)} (expected (B, H))"
            )
        if length > self.config.max_history:
            raise ValueError(
                f"history length H={length} exceeds ScorerConfig.max_history={self.config.max_history}"
            )
        time_left = obs[TIME_LEFT].float().reshape(-1, 1) if self.config.use_time_left else None
        features = None
        if self.config.user_features_dim:
            features = obs[USER_FEATURES].float()
            if features.shape[-1] != self.config.user_features_dim:
                raise ValueError(
                    f"obs['user_features'] has width {features.shape[-1]}; the scorer was "
                    f"configured with user_features_dim={self.config.user_features_dim}"
                )
        return feedback, mask, time_left, features

    def encode_user(self, obs: dict[str, torch.Tensor], history: torch.Tensor | None = None) -> torch.Tensor:
        """User state from the history: ``(B, hidden_dim)`` float32 (for critics).

        ``history``: precomputed item-tower outputs of the history ``(B, H, h)``.
        """
        obs = self._prepare(obs)
        if history is None:
            item_part = self._gathered_terms(obs)[1]
        else:
            item_part = self.user_encoder.item_part(history)
        return self.user_encoder.encode(item_part, *self._user_inputs(obs, item_part.shape[1]))

    def _scores(self, obs: dict[str, torch.Tensor], all_heads: bool) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The click head's output ``(B, K)`` (``all_heads``: then the engagement head's)
        and the user state ``(B, h)``; ``obs`` must have passed `_prepare`."""
        h = self.config.hidden_dim
        heads = self._heads() if all_heads else self._heads()[:1]
        (items, *item_terms), history_part = self._gathered_terms(obs, len(heads))
        user = self.user_encoder.encode(history_part, *self._user_inputs(obs, history_part.shape[1]))
        user_x_items = (user.unsqueeze(1) * items).reshape(-1, h)  # (B * K, h)
        match_hidden = None
        if self.history_match is not None:
            match = self.history_match
            pooled = match.pooled(self._match_cosines(obs), obs[HISTORY_FEEDBACK].float(), obs[HISTORY_MASK].float(),
                                  self._watched(obs))
            match_hidden = match.hidden_from_pooled(pooled).reshape(-1, h)  # (B * K, h)
            last = match.stats[2]
        outputs = []
        for i, head in enumerate(heads):
            weight, bias = head[0].weight, head[0].bias
            per_user = user @ weight[:, :h].T + bias  # (B, h)
            if match_hidden is not None:
                match_weight = weight[:, 3 * h :]
                per_user = per_user + match_weight @ last.bias
            base = (item_terms[i] + per_user.unsqueeze(1)).reshape(-1, h)
            pre = torch.addmm(base, user_x_items, weight[:, 2 * h : 3 * h].T)
            if match_hidden is not None:
                pre = torch.addmm(pre, match_hidden, (match_weight @ last.weight).T)
            outputs.append(head[3](head[2](head[1](pre))).reshape(items.shape[:2]))
        return outputs, user

    def pair_features(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The heads' input per candidate, ``(B, K, 3h or 4h)``: [user, item, user * item
        (, history match)].

        The reference form of what the scorer computes: ``click_head(pair_features(obs))``
        equals `forward` to float tolerance, but `forward` never builds this tensor (it
        applies the heads' first layer term by term, see the comment above `_heads`).
        """
        obs = self._prepare(obs)
        items = self.item_tower(self._vectors(obs, CANDIDATE_ITEMS, 2),
                                self._features(self._rows(obs, CANDIDATE_ITEMS)) if self.item_feature_table is not None
                                else None)
        user = self.user_encoder(
            self.item_tower(self._vectors(obs, HISTORY_ITEMS, 2),
                            self._features(self._rows(obs, HISTORY_ITEMS)) if self.item_feature_table is not None
                            else None),
            *self._user_inputs(obs, obs[HISTORY_MASK].shape[1]),
        )
        expanded = user.unsqueeze(1).expand_as(items)
        parts = [expanded, items, expanded * items]
        if self.history_match is not None:
            parts.append(self.history_match(
                self._vectors(obs, CANDIDATE_ITEMS, 2),
                self._vectors(obs, HISTORY_ITEMS, 2),
                obs[HISTORY_FEEDBACK].float(),
                obs[HISTORY_MASK].float(),
                self._watched(obs),
            ))
        return torch.cat(parts, dim=-1)

    def score_with_state(self, obs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Click logits ``(B, K)`` and the user state ``(B, hidden_dim)`` from one pass.

        Actor-critic policies need both; this encodes the history once.
        """
        outputs, user = self._scores(self._prepare(obs), all_heads=False)
        return outputs[0], user

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Click logits ``(B, K)`` float32, one per candidate."""
        return self._scores(self._prepare(obs), all_heads=False)[0][0]

    def _log_engagement(self, raw: torch.Tensor, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """``log E[minutes | click]`` ``(B, K)`` from the engagement head's raw output."""
        if self.config.knows_duration:  # minutes = watched fraction x duration
            return F.logsigmoid(raw) + self._log_durations(self._rows(obs, CANDIDATE_ITEMS))
        return torch.log(F.softplus(raw).clamp_min(1e-6))

    def log_expected_reward(self, obs: dict[str, torch.Tensor], objective: str = "engagement"
                            ) -> tuple[torch.Tensor, torch.Tensor]:
        """``log`` of each candidate's expected reward and the user state, from one pass.

        Args:
            obs: a batched observation (either mode).
            objective: ``"engagement"``: ``log(P(click) x E[minutes | click])`` (the
                expected reward of an engagement environment, what the greedy ranker
                ranks by); ``"click"``: ``log P(click)``.

        Returns:
            ``(B, K)`` float32 log expected reward (log minutes, or log probability),
            ``(B, hidden_dim)`` float32 user state.

        Raises:
            ValueError: ``"engagement"`` without the engagement head, or an unknown objective.
        """
        if objective not in ("engagement", "click"):
            raise ValueError(f"objective={objective!r}; expected 'engagement' or 'click'")
        if objective == "engagement" and self.engagement_head is None:
            raise ValueError("objective='engagement' needs the engagement head (ScorerConfig.engagement_head=True)")
        obs = self._prepare(obs)
        outputs, user = self._scores(obs, all_heads=objective == "engagement")
        log_reward = F.logsigmoid(outputs[0])
        if objective == "engagement":
            log_reward = log_reward + self._log_engagement(outputs[1], obs)
        return log_reward, user

    def predict(self, obs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Both heads at once.

        Returns:
            ``{"click_logit": (B, K) float32}`` plus, with the engagement head,
            ``"engagement": (B, K)`` float32 minutes predicted given a click
            (with item durations: duration x sigmoid(head), the watched fraction times
            the item's length; without: softplus(head); never negative).
        """
        obs = self._prepare(obs)
        outputs, _ = self._scores(obs, all_heads=True)
        out = {"click_logit": outputs[0]}
        if self.engagement_head is not None:
            raw = outputs[1]
            out["engagement"] = (torch.sigmoid(raw) * self.item_durations(self._rows(obs, CANDIDATE_ITEMS))
                                 if self.config.knows_duration else F.softplus(raw))
        return out
