"""The default simulated user: text and image interests, satiation, drift, a time budget.

Each user has a text-interest vector (in the item space's text part), an image-interest
vector (in its image part) and a modality weight ``a`` in [0, 1] drawn from a Beta
distribution: some users react to descriptions, some to visuals. Their affinity for an
item is ``a * cos(text interest, item text) + (1 - a) * cos(image interest, item image)``.

Per step, for the items on the slate:

- utility = affinity + ``quality_weight`` * (quality - 0.5) - ``satiation_strength`` * satiation
- satiation of an item = ``relu(<m, x> )`` where ``x`` is the item's fused vector and the
  satiation memory ``m`` accumulates recently consumed items (``m <- decay * m +
  watched * x / 2``): it is about the number of recent consumptions similar to the item
  (cosine-weighted), so eating the same kind of content builds it and variety lets it decay.
- the choice model (multinomial logit or cascade, with a no-click option) picks at most one item.
- watched fraction of a clicked item = ``sigmoid(gain * (utility - midpoint) + noise)``;
  engagement = fraction * item duration minutes (at most the minutes left).
- the time budget pays engagement plus a browsing cost per step; good content refunds
  ``refund_rate * engagement * fraction`` minutes (a user who enjoys it stays longer).
- interests drift toward consumed items (``drift_rate``), per modality, renormalised.
- a step with no click or a watched fraction below ``disappointment_threshold`` is a
  disappointment; ``patience`` disappointments in a row and the user leaves.

Initial interests come from the item space's topic structure: each user picks
``favourite_topics`` topics, mixes their mean text (resp. image) embeddings with random
weights and adds Gaussian noise, so interests live where the encoded items live. Item
spaces without topics use random favourite items instead of topic means.

Variants (registered names): ``interest_evolution`` (drift, mild satiation),
``satiation`` (strong, slowly decaying satiation, no drift: diversity pays off),
``myopic`` (static interests, no satiation, no drift: greedy is optimal).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from recsim_mm.choice import CHOICE_MODELS, make_choice_model
from recsim_mm.item_space import ItemSpace
from recsim_mm.users.base import UserModel, UserResponse


@dataclass(frozen=True)
class MultimodalUserConfig:
    """Parameters of `MultimodalUser` (units in brackets).

    Attributes:
        favourite_topics: topics whose mean embeddings seed a user's interests.
        interest_noise: norm of the Gaussian noise added to the topic mix before
            normalising (0: interests exactly at the topic mix).
        modality_beta: ``(alpha, beta)`` of the Beta distribution of the modality
            weight ``a`` (weight of the text cosine).
        quality_weight: utility per unit of item quality above 0.5.
        choice_model: ``"mnl"`` (multinomial logit) or ``"cascade"``.
        choice_temperature: logit temperature of the choice model.
        no_click_utility: utility of clicking nothing.
        engagement_gain: slope of the watched fraction in utility.
        engagement_midpoint: utility at which half the item is watched.
        engagement_noise: std of the logit noise on the watched fraction.
        satiation_strength: utility lost per unit of satiation (0: no satiation).
        satiation_decay: per-step decay factor of the satiation memory, in [0, 1).
        drift_rate: fraction of the way interests move toward a fully watched item
            (0: static interests).
        time_budget: mean session time budget [minutes].
        time_budget_spread: budgets are uniform in ``time_budget * (1 +- spread)``.
        step_cost: minutes each step costs (looking at the recommendations).
        refund_rate: minutes refunded per minute watched, times the watched fraction.
        patience: consecutive disappointments after which the user leaves.
        disappointment_threshold: watched fraction below which a click disappoints.
    """

    favourite_topics: int = 2
    interest_noise: float = 0.3
    modality_beta: tuple[float, float] = (2.0, 2.0)
    quality_weight: float = 0.2
    choice_model: str = "mnl"
    choice_temperature: float = 0.1
    no_click_utility: float = 0.2
    engagement_gain: float = 6.0
    engagement_midpoint: float = 0.3
    engagement_noise: float = 0.5
    satiation_strength: float = 0.1
    satiation_decay: float = 0.7
    drift_rate: float = 0.05
    time_budget: float = 60.0
    time_budget_spread: float = 0.25
    step_cost: float = 0.5
    refund_rate: float = 0.5
    patience: int = 3
    disappointment_threshold: float = 0.3

    def __post_init__(self) -> None:
        checks = {
            "favourite_topics": self.favourite_topics >= 1,
            "interest_noise": self.interest_noise >= 0,
            "modality_beta": len(self.modality_beta) == 2 and min(self.modality_beta) > 0,
            "choice_model": self.choice_model in CHOICE_MODELS,
            "choice_temperature": self.choice_temperature > 0,
            "engagement_gain": self.engagement_gain > 0,
            "engagement_noise": self.engagement_noise >= 0,
            "satiation_strength": self.satiation_strength >= 0,
            "satiation_decay": 0 <= self.satiation_decay < 1,
            "drift_rate": 0 <= self.drift_rate <= 1,
            "time_budget": self.time_budget > 0,
            "time_budget_spread": 0 <= self.time_budget_spread < 1,
            "step_cost": self.step_cost >= 0,
            "refund_rate": 0 <= self.refund_rate < 1,
            "patience": isinstance(self.patience, int) and self.patience >= 1,
            "disappointment_threshold": 0 <= self.disappointment_threshold <= 1,
        }
        expected = {
            "favourite_topics": ">= 1",
            "interest_noise": ">= 0",
            "modality_beta": "two positive numbers (alpha, beta)",
            "choice_model": f"one of {sorted(CHOICE_MODELS)}",
            "choice_temperature": "> 0",
            "engagement_gain": "> 0",
            "engagement_noise": ">= 0",
            "satiation_strength": ">= 0",
            "satiation_decay": "in [0, 1)",
            "drift_rate": "in [0, 1]",
            "time_budget": "> 0 minutes",
            "time_budget_spread": "in [0, 1)",
            "step_cost": ">= 0 minutes",
            "refund_rate": "in [0, 1) (a refund of 1 or more would make sessions endless)",
            "patience": "an integer >= 1",
            "disappointment_threshold": "in [0, 1]",
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(
                    f"user parameter {name}={getattr(self, name)!r} is invalid; expected {expected[name]}"
                )

    @classmethod
    def build(cls, base: MultimodalUserConfig, params: dict[str, Any]) -> MultimodalUserConfig:
        """``base`` with ``params`` replaced; unknown names raise `ValueError` listing valid ones."""
        valid = [f.name for f in dataclasses.fields(cls)]
        for name in params:
            if name not in valid:
                raise ValueError(f"unknown user parameter {name!r}; valid parameters: {valid}")
        if "modality_beta" in params:
            params = {**params, "modality_beta": tuple(params["modality_beta"])}
        return dataclasses.replace(base, **params)


def sample_gamma(concentration: float, n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """``(n,)`` float32 Gamma(concentration, 1) draws from ``generator``.

    Marsaglia-Tsang rejection, vectorised (torch's own Gamma sampler takes no generator).
    Boost for concentration < 1: ``Gamma(c) = Gamma(c + 1) * U ** (1 / c)``.
    """
    boost = concentration < 1
    shape = concentration + 1 if boost else concentration
    d = shape - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    out = torch.empty(n, device=device)
    todo = torch.arange(n, device=device)
    while todo.numel() > 0:
        m = todo.numel()
        x = torch.randn(m, generator=generator, device=device)
        u = torch.rand(m, generator=generator, device=device)
        v = (1 + c * x) ** 3
        ok = (v > 0) & (torch.log(u) < 0.5 * x * x + d - d * v + d * torch.log(v.clamp_min(1e-30)))
        out[todo[ok]] = (d * v)[ok]
        todo = todo[~ok]
    if boost:
        out *= torch.rand(n, generator=generator, device=device) ** (1.0 / concentration)
    return out


def sample_beta(alpha: float, beta: float, n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """``(n,)`` float32 Beta(alpha, beta) draws, as ``X / (X + Y)`` of two Gammas."""
    x = sample_gamma(alpha, n, generator, device)
    y = sample_gamma(beta, n, generator, device)
    return x / (x + y)


class MultimodalUser(UserModel):
    """The default user model (see the module docstring for the dynamics).

    Args:
        item_space: items users react to; its ``topics`` (if any) seed interests.
        num_users: ``B``.
        device: where state lives.
        **params: fields of `MultimodalUserConfig` overriding the class's
            ``default_config`` (unknown names raise `ValueError`).

    State (all leading dim ``B``): ``interest`` ``(B, d)`` float32 = [text interest |
    image interest], each part unit-norm; ``modality_weight`` ``(B,)``; ``satiation``
    ``(B, d)`` memory; ``budget`` ``(B,)`` minutes; ``disappointments`` ``(B,)``
    consecutive count; ``left`` ``(B,)`` bool.
    """

    default_config: ClassVar[MultimodalUserConfig] = MultimodalUserConfig()

    def __init__(
        self,
        item_space: ItemSpace,
        num_users: int,
        device: str | torch.device = "cpu",
        **params: Any,
    ) -> None:
        super().__init__(item_space, num_users, device)
        self.config = MultimodalUserConfig.build(self.default_config, params)
        cfg, space, dev = self.config, self.item_space, self.device
        self.choice = make_choice_model(cfg.choice_model, cfg.choice_temperature, cfg.no_click_utility)
        self.d_text, self.dim = space.d_text, space.dim
        self._fused = space.fused
        # quality and duration side by side: one gather per step instead of two.
        self._quality_duration = torch.stack([space.quality, space.duration], dim=1)
        self._centres_text, self._centres_image = self._topic_centres(space)
        b, d = num_users, space.dim
        self.interest = torch.zeros(b, d, device=dev)
        self.modality_weight = torch.zeros(b, device=dev)
        # interest scaled by the modality weights: affinity(x) = <x, self._weighted>.
        self._weighted = torch.zeros(b, d, device=dev)
        self.satiation = torch.zeros(b, d, device=dev)
        self.budget = torch.zeros(b, device=dev)
        self.disappointments = torch.zeros(b, device=dev)
        self.left = torch.zeros(b, dtype=torch.bool, device=dev)
        # Filled by respond() for transition(): the chosen item's vector and watched fraction.
        self._chosen = torch.zeros(b, d, device=dev)
        self._watched = torch.zeros(b, device=dev)
        self._rows = torch.arange(b, device=dev)

    @staticmethod
    def _topic_centres(space: ItemSpace) -> tuple[torch.Tensor, torch.Tensor] | tuple[None, None]:
        """Unit-norm mean text and image embedding of each topic, ``(T, d_text)``, ``(T, d_image)``."""
        if space.topics is None:
            return None, None
        weight = space.topics / space.topics.sum(0).clamp_min(1e-12)
        text = torch.nn.functional.normalize(weight.T @ space.text, dim=-1)
        image = torch.nn.functional.normalize(weight.T @ space.image, dim=-1)
        return text, image

    # ---------------------------------------------------------------- sampling
    def sample(self, rows: torch.Tensor, generator: torch.Generator) -> None:
        cfg, dev = self.config, self.device
        r = rows.numel()
        if r == 0:
            return
        if self._centres_text is not None:
            centres_text, centres_image = self._centres_text, self._centres_image
        else:
            centres_text, centres_image = self.item_space.text, self.item_space.image
        pool = centres_text.shape[0]
        k = min(cfg.favourite_topics, pool)
        favourite = torch.rand(r, pool, generator=generator, device=dev).topk(k, dim=1).indices
        # Dirichlet(1) mixing weights over the favourites.
        mix = -torch.log(torch.rand(r, k, generator=generator, device=dev).clamp_min_(1e-20))
        mix /= mix.sum(1, keepdim=True)

        def part(centres: torch.Tensor) -> torch.Tensor:
            width = centres.shape[1]
            v = (mix.unsqueeze(2) * centres[favourite]).sum(1)
            noise = torch.randn(r, width, generator=generator, device=dev)
            v = v + cfg.interest_noise * noise / math.sqrt(width)
            return torch.nn.functional.normalize(v, dim=-1)

        self.interest[rows, : self.d_text] = part(centres_text)
        self.interest[rows, self.d_text :] = part(centres_image)
        a, b = cfg.modality_beta
        self.modality_weight[rows] = sample_beta(a, b, r, generator, dev)
        self._reweight(rows)
        self.satiation[rows] = 0
        spread = 2 * torch.rand(r, generator=generator, device=dev) - 1
        self.budget[rows] = cfg.time_budget * (1 + cfg.time_budget_spread * spread)
        self.disappointments[rows] = 0
        self.left[rows] = False

    def _reweight(self, rows: torch.Tensor | slice) -> None:
        a = self.modality_weight[rows].unsqueeze(1)
        self._weighted[rows, : self.d_text] = self.interest[rows, : self.d_text] * a
        self._weighted[rows, self.d_text :] = self.interest[rows, self.d_text :] * (1 - a)

    # ---------------------------------------------------------------- step
    def utility(self, items: torch.Tensor, fused: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, K)`` float32 utility of items (affinity + quality - satiation penalty).

        Args:
            items: ``(B, K)`` int64 item rows.
            fused: optional ``(B, K, d)`` fused vectors of ``items`` (saves a gather).
        """
        cfg = self.config
        x = self._fused[items] if fused is None else fused
        u = torch.bmm(x, self._weighted.unsqueeze(2)).squeeze(2)
        if cfg.quality_weight:
            u += cfg.quality_weight * (self._quality_duration[items, 0] - 0.5)
        if cfg.satiation_strength:
            sat = torch.bmm(x, self.satiation.unsqueeze(2)).squeeze(2).clamp_min_(0)
            u -= cfg.satiation_strength * sat
        return u

    def respond(self, slate: torch.Tensor, generator: torch.Generator) -> UserResponse:
        cfg = self.config
        x = self._fused[slate]  # (B, S, d)
        utility = self.utility(slate, fused=x)
        clicked = self.choice.choose(utility, generator)
        pos = clicked.clamp_min(0)
        did = clicked >= 0
        if slate.shape[1] == 1:
            chosen_utility, item = utility[:, 0], slate[:, 0]
            self._chosen.copy_(x[:, 0])
        else:
            chosen_utility = utility.gather(1, pos.unsqueeze(1)).squeeze(1)
            item = slate.gather(1, pos.unsqueeze(1)).squeeze(1)
            self._chosen.copy_(x[self._rows, pos])
        noise = torch.randn(chosen_utility.shape, generator=generator, device=self.device)
        watched = torch.sigmoid(
            cfg.engagement_gain * (chosen_utility - cfg.engagement_midpoint) + cfg.engagement_noise * noise
        )
        self._watched = watched.mul_(did)
        minutes = torch.minimum(watched * self._quality_duration[item, 1], self.budget)
        return UserResponse(clicked=clicked, engagement=minutes)

    def transition(self, slate: torch.Tensor, response: UserResponse, generator: torch.Generator) -> None:
        cfg = self.config
        watched = self._watched  # 0 where nothing was clicked
        if cfg.satiation_strength:
            # x/2: <x, x> = 2 for a fused vector, so each full consumption of an
            # identical item adds exactly 1 to its satiation.
            self.satiation.mul_(cfg.satiation_decay).addcmul_(self._chosen, (0.5 * watched).unsqueeze(1))
        if cfg.drift_rate:
            step = (cfg.drift_rate * watched).unsqueeze(1)
            self.interest.addcmul_(self._chosen - self.interest, step)
            dt = self.d_text
            self.interest[:, :dt] = torch.nn.functional.normalize(self.interest[:, :dt], dim=1)
            self.interest[:, dt:] = torch.nn.functional.normalize(self.interest[:, dt:], dim=1)
            self._reweight(slice(None))
        minutes = response.engagement
        self.budget.sub_(minutes * (1 - cfg.refund_rate * watched) + cfg.step_cost).clamp_min_(0)
        disappointed = (response.clicked < 0) | (watched < cfg.disappointment_threshold)
        self.disappointments.add_(1).mul_(disappointed)
        self.left |= self.disappointments >= cfg.patience

    def done(self) -> torch.Tensor:
        return self.left | (self.budget <= 0)

    def time_left(self) -> torch.Tensor:
        return self.budget

    def affinity(
        self, items: torch.Tensor, rows: torch.Tensor | None = None, fused: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(R, K)`` float32 ``a * cos_text + (1 - a) * cos_image`` (quality and satiation excluded).

        Args:
            items: ``(R, K)`` int64 item rows.
            rows: ``(R,)`` int64 user rows (``None``: all users).
            fused: optional ``(R, K, d)`` fused vectors of ``items`` (saves a gather).
        """
        x = self._fused[items] if fused is None else fused
        weighted = self._weighted if rows is None else self._weighted[rows]
        return torch.bmm(x, weighted.unsqueeze(2)).squeeze(2)

    def hidden_state(self) -> dict[str, torch.Tensor]:
        return {"modality_weight": self.modality_weight}


class InterestEvolutionUser(MultimodalUser):
    """RecSim-like: interests drift toward what the user consumes; mild satiation."""

    default_config = MultimodalUserConfig(drift_rate=0.1, satiation_strength=0.1)


class SatiationUser(MultimodalUser):
    """Strong, slowly decaying satiation and static interests: variety pays off over a session."""

    default_config = MultimodalUserConfig(drift_rate=0.0, satiation_strength=0.5, satiation_decay=0.8)


class MyopicUser(MultimodalUser):
    """Static interests, no satiation, no drift: each step is independent, greedy is optimal."""

    default_config = MultimodalUserConfig(drift_rate=0.0, satiation_strength=0.0)
