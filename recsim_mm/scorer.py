"""The shared scorer network: one score per candidate from the user's history and the candidates.

One module serves three roles (DESIGN.md, structural decision 2): the supervised
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
  to the user's clicked, skipped and engaged past items.
* **Heads**: an MLP over ``[user, item, user * item, history match]`` per candidate
  gives the click logit, and optionally a second one the engagement (minutes) given a
  click. Every candidate is scored independently of the others, so the scores are
  permutation-equivariant over candidates.

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

USER_ENCODERS = ("attention", "gru")
FUSIONS = ("gated", "cross_attention")
MODALITIES = ("fused", "text", "image")
REQUIRED_KEYS = ("history_items", "history_feedback", "history_mask", "candidate_items")


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
            read only that part of every item vector).
        num_heads: attention heads (must divide ``hidden_dim``).
        num_queries: learned queries of the attention user encoder.
        max_history: longest history ``H`` the recency embedding covers.
        history_match: add each candidate's per-modality similarity to the user's
            clicked / skipped / engaged past items (`HistoryMatch`) to the heads.
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
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ScorerConfig.dropout={self.dropout}; expected in [0, 1)")

    @property
    def dim(self) -> int:
        """Width ``d`` of the fused item vector the scorer reads."""
        return self.d_text + self.d_image

    def to_dict(self) -> dict:
        """Plain dict (str/int/float/bool values), safe for ``weights_only`` checkpoints."""
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
        if config.modality == "fused":
            if config.fusion == "gated":
                self.gate = nn.Linear(2 * h, h)
            else:
                self.modality_embedding = nn.Parameter(torch.zeros(2, h))
                self.cross = nn.MultiheadAttention(h, config.num_heads, batch_first=True)
        self.norm = nn.LayerNorm(h)
        self.out = _mlp(h, h, h, 0.0)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        """``items``: ``(..., d)`` float32 fused vectors -> ``(..., hidden_dim)`` float32."""
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
        z = self.norm(z)
        return z + self.out(z)


class UserEncoder(nn.Module):
    """History tokens (+ time left, user features) -> user state ``(B, hidden_dim)``."""

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
            mask: ``(B, H)`` float32, 1 for a real past step.
            time_left: ``(B, 1)`` float32 minutes, or None when not configured.
            user_features: ``(B, F)`` float32, or None when not configured.

        Returns:
            ``(B, hidden_dim)`` float32 user state.
        """
        c = self.config
        batch, length, _ = history.shape
        clicked = feedback[..., :1]
        engagement = torch.log1p(feedback[..., 1:].clamp_min(0.0))
        tokens = self.token(torch.cat([history, clicked, engagement], dim=-1))
        # Recency counts from the newest step (most recent is last), so a model trained
        # with one history length reads another.
        steps_back = torch.arange(length - 1, -1, -1, device=history.device)
        tokens = tokens + self.recency(steps_back)
        tokens = tokens * mask.unsqueeze(-1)
        if c.user_encoder == "attention":
            keys = torch.cat([self.empty_token.expand(batch, 1, -1), tokens], dim=1)
            ignore = torch.cat(
                [torch.zeros(batch, 1, dtype=torch.bool, device=mask.device), mask <= 0], dim=1
            )
            queries = self.queries.unsqueeze(0).expand(batch, -1, -1)
            pooled, _ = self.attention(queries, keys, keys, key_padding_mask=ignore, need_weights=False)
            pooled = pooled.reshape(batch, -1)
        else:
            state = tokens.new_zeros(batch, c.hidden_dim)
            for t in range(length):
                # Padded steps leave the state unchanged, so left or right padding both work.
                m = mask[:, t : t + 1]
                state = m * self.gru(tokens[:, t], state) + (1.0 - m) * state
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
    engagement-weighted mean, and max over clicked ones. With the click and skip counts
    these statistics go through an MLP. Keeping the modalities apart lets the heads
    weigh text against image similarity per user, which is what the simulated users'
    modality weight does (affinity = a * cos_text + (1 - a) * cos_image).
    """

    def __init__(self, config: ScorerConfig):
        super().__init__()
        parts = {"text": [(0, config.d_text)], "image": [(config.d_text, config.dim)]}
        self.parts = parts.get(config.modality, parts["text"] + parts["image"])
        self.stats = nn.Sequential(
            nn.Linear(4 * len(self.parts) + 2, config.hidden_dim), nn.GELU(),
            nn.Linear(config.hidden_dim, config.hidden_dim),
        )

    def forward(
        self, candidates: torch.Tensor, history: torch.Tensor, feedback: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Match features.

        Args:
            candidates: ``(B, K, d)`` float32 fused candidate vectors.
            history: ``(B, H, d)`` float32 fused past item vectors.
            feedback: ``(B, H, 2)`` float32 ``[clicked, engagement minutes]``.
            mask: ``(B, H)`` float32, 1 for a real past step.

        Returns:
            ``(B, K, hidden_dim)`` float32.
        """
        clicked = feedback[..., 0] * mask
        skipped = (1.0 - feedback[..., 0]) * mask
        engaged = torch.log1p(feedback[..., 1].clamp_min(0.0)) * mask
        weights = torch.stack([clicked, skipped, engaged], dim=1)  # (B, 3, H)
        weights = weights / weights.sum(-1, keepdim=True).clamp_min(1e-6)
        any_click = clicked.sum(-1) > 0  # (B,)
        stats = []
        for start, end in self.parts:
            cosine = torch.einsum("bkd,bhd->bkh", candidates[..., start:end], history[..., start:end])
            stats.append(torch.einsum("bkh,bwh->bkw", cosine, weights))  # (B, K, 3)
            best = cosine.masked_fill((clicked <= 0).unsqueeze(1), float("-inf")).amax(-1)
            stats.append(torch.where(any_click.unsqueeze(1), best, torch.zeros_like(best)).unsqueeze(-1))
        counts = torch.log1p(torch.stack([clicked.sum(-1), skipped.sum(-1)], dim=-1))
        stats.append(counts.unsqueeze(1).expand(-1, candidates.shape[1], -1))
        return self.stats(torch.cat(stats, dim=-1))


class Scorer(nn.Module):
    """Permutation-equivariant scorer: observation dict -> one score per candidate.

    Args:
        config: the architecture (`ScorerConfig`).
        item_table: optional ``(N, d)`` float32 fused item vectors
            (``item_space.fused``). With it the scorer also accepts ``ids``-mode
            observations (int64 item rows) and gathers vectors itself. Held as a
            non-persistent buffer: it is not in `state_dict`, so weights move freely
            between the two observation modes.

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

    def __init__(self, config: ScorerConfig, item_table: torch.Tensor | None = None):
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
        self.item_tower = ItemTower(config)
        self.user_encoder = UserEncoder(config)
        self.history_match = HistoryMatch(config) if config.history_match else None
        h = config.hidden_dim
        width = (4 if config.history_match else 3) * h
        self.click_head = _mlp(width, h, 1, config.dropout)
        self.engagement_head = _mlp(width, h, 1, config.dropout) if config.engagement_head else None

    @classmethod
    def for_item_space(cls, item_space, ids: bool = True, **config_overrides) -> Scorer:
        """A scorer sized for ``item_space`` (an `ItemSpace`).

        Args:
            item_space: gives ``d_text`` / ``d_image`` and, with ``ids=True``, the table.
            ids: hold ``item_space.fused`` so ``ids``-mode observations work.
            **config_overrides: any other `ScorerConfig` field.
        """
        config = ScorerConfig(d_text=item_space.d_text, d_image=item_space.d_image, **config_overrides)
        return cls(config, item_table=item_space.fused if ids else None)

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
            return self.item_table[value.long()]
        if value.ndim != ndim_ids + 1 or value.shape[-1] != self.config.dim:
            raise ValueError(
                f"obs[{key!r}] in embeddings mode must be (..., {self.config.dim}) with "
                f"{ndim_ids + 1} dims; got shape {tuple(value.shape)}"
            )
        return value.float()

    def _check(self, obs: dict[str, torch.Tensor]) -> None:
        missing = [k for k in REQUIRED_KEYS if k not in obs]
        if self.config.use_time_left and "time_left" not in obs:
            missing.append("time_left")
        if self.config.user_features_dim and "user_features" not in obs:
            missing.append("user_features")
        if missing:
            raise KeyError(f"observation is missing key(s) {missing}; got {sorted(obs)}")

    # -- the network ------------------------------------------------------------------

    def _item_representations(self, obs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Item-tower outputs for the history ``(B, H, h)`` and the candidates ``(B, K, h)``.

        In ``ids`` mode, when the batch looks up more rows than the catalog has, the
        tower runs once per catalog item and the rows are gathered: the tower is a
        per-item function, so this is the same result for a fraction of the work
        (a PPO minibatch of 512 users x 30 items vs a 600-item catalog: 25x less).
        """
        history, candidates = obs["history_items"], obs["candidate_items"]
        ids_mode = not history.is_floating_point() and not candidates.is_floating_point()
        if ids_mode and self.item_table is not None and (
            history.numel() + candidates.numel() > self.item_table.shape[0]
        ):
            for key, value in (("history_items", history), ("candidate_items", candidates)):
                if value.ndim != 2:
                    raise ValueError(
                        f"obs[{key!r}] in ids mode must have 2 dims (batched item rows); "
                        f"got shape {tuple(value.shape)}"
                    )
            table = self.item_tower(self.item_table)
            return table[history.long()], table[candidates.long()]
        return (
            self.item_tower(self._vectors(obs, "history_items", 2)),
            self.item_tower(self._vectors(obs, "candidate_items", 2)),
        )

    def encode_user(self, obs: dict[str, torch.Tensor], history: torch.Tensor | None = None) -> torch.Tensor:
        """User state from the history: ``(B, hidden_dim)`` float32 (for critics).

        ``history``: precomputed item-tower outputs of the history ``(B, H, h)``.
        """
        self._check(obs)
        if history is None:
            history = self.item_tower(self._vectors(obs, "history_items", 2))
        feedback = obs["history_feedback"].float()
        mask = obs["history_mask"].float()
        if feedback.shape != (*history.shape[:2], 2) or mask.shape != history.shape[:2]:
            raise ValueError(
                f"history shapes disagree: history_items gives (B, H)={tuple(history.shape[:2])}, "
                f"history_feedback is {tuple(feedback.shape)} (expected (B, H, 2)), "
                f"history_mask is {tuple(mask.shape)} (expected (B, H))"
            )
        if history.shape[1] > self.config.max_history:
            raise ValueError(
                f"history length H={history.shape[1]} exceeds ScorerConfig.max_history="
                f"{self.config.max_history}"
            )
        time_left = obs["time_left"].float().reshape(-1, 1) if self.config.use_time_left else None
        features = None
        if self.config.user_features_dim:
            features = obs["user_features"].float()
            if features.shape[-1] != self.config.user_features_dim:
                raise ValueError(
                    f"obs['user_features'] has width {features.shape[-1]}; the scorer was "
                    f"configured with user_features_dim={self.config.user_features_dim}"
                )
        return self.user_encoder(history, feedback, mask, time_left, features)

    def _pair_features(self, obs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-candidate features ``(B, K, 3h or 4h)``: [user, item, user * item
        (, history match)], and the user state ``(B, h)``."""
        self._check(obs)
        history_repr, items = self._item_representations(obs)
        user = self.encode_user(obs, history_repr)
        expanded = user.unsqueeze(1).expand_as(items)
        parts = [expanded, items, expanded * items]
        if self.history_match is not None:
            parts.append(self.history_match(
                self._vectors(obs, "candidate_items", 2),
                self._vectors(obs, "history_items", 2),
                obs["history_feedback"].float(),
                obs["history_mask"].float(),
            ))
        return torch.cat(parts, dim=-1), user

    def score_with_state(self, obs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Click logits ``(B, K)`` and the user state ``(B, hidden_dim)`` from one pass.

        Actor-critic policies need both; this encodes the history once.
        """
        pair, user = self._pair_features(obs)
        return self.click_head(pair).squeeze(-1), user

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Click logits ``(B, K)`` float32, one per candidate (PPO logits / DQN values)."""
        return self.click_head(self._pair_features(obs)[0]).squeeze(-1)

    def predict(self, obs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Both heads at once.

        Returns:
            ``{"click_logit": (B, K) float32}`` plus, with the engagement head,
            ``"engagement": (B, K)`` float32 minutes predicted given a click
            (softplus, so never negative).
        """
        pair, _ = self._pair_features(obs)
        out = {"click_logit": self.click_head(pair).squeeze(-1)}
        if self.engagement_head is not None:
            out["engagement"] = F.softplus(self.engagement_head(pair).squeeze(-1))
        return out
