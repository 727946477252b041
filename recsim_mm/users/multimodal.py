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
  disappointment; ``patience`` disappointments in a row and the user leaves (0: never).
- boredom: after a click the user leaves with probability
  ``1 - exp(-boredom_rate * satiation of the clicked item)`` (more of the same ends sessions).
- every step the user quits with probability ``quit_probability``, whatever was shown
  (a session length no recommendation can change).

Initial interests come from the item space's topic structure: each user picks
``favourite_topics`` topics, mixes their mean text (resp. image) embeddings with random
weights and adds Gaussian noise, so interests live where the encoded items live. Item
spaces without topics use random favourite items instead of topic means.

Variants (registered names; docs/user_models.md explains each parameter choice):

- ``interest_evolution``: RecSim-like; drift, mild satiation, a time budget with
  refunds, patience. Long-term effects: budget refunds and leaving.
- ``satiation``: static interests; satiation lowers utility mildly (taste stays visible
  in clicks) but bores: each click on a satiated item may end the session. No budget, no
  patience; a 3% per-step quit. Spacing out similar items pays off over a session.
- ``myopic``: the control. Static interests, no satiation, no budget, no patience: the
  session length (3% per-step quit) does not depend on what is recommended, so every
  step is independent and the myopic oracle is optimal.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from recsim_mm import kernels
from recsim_mm.choice import CHOICE_MODELS, MultinomialLogit, make_choice_model
from recsim_mm.item_space import ItemSpace
from recsim_mm.users.base import ExpectedOutcomes, UserModel, UserResponse

#: Users per chunk when gathering candidate vectors for true affinities (cache-sized).
_AFFINITY_CHUNK = 256
#: Quantile nodes of the watched fraction's logistic noise in `MultimodalUser.expected_outcomes`.
_NOISE_NODES = 16
#: Below this many multiply-adds a batched matmul runs as multiply + sum (see `batched_matmul`).
_SMALL_MATMUL = 2**15


def batched_matmul(x: torch.Tensor, y: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``(B, M, D) @ (B, D, P) -> (B, M, P)``, float32.

    torch's CPU ``bmm`` splits the batch across threads even for a few thousand
    multiply-adds, and a thread hand-off costs more than the arithmetic (far more on a
    busy machine); small problems therefore run as an elementwise product and a sum,
    which stay on one thread.
    """
    if x.is_cuda or x.shape[0] * x.shape[1] * x.shape[2] * y.shape[2] >= _SMALL_MATMUL:
        return torch.bmm(x, y, out=out)
    result = (x.unsqueeze(3) * y.unsqueeze(1)).sum(2)
    if out is not None:
        out.copy_(result)
        return out
    return result


@dataclass(frozen=True)
class MultimodalUserConfig:
    """Parameters of `MultimodalUser` (units in brackets).

    Attributes:
        favourite_topics: topics whose mean embeddings seed a user's interests.
        topic_concentration: Dirichlet concentration of the mixing weights over the
            favourite topics (large: balanced interests; small: one dominant topic).
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
        engagement_noise: scale of the logistic noise on the watched-fraction logit.
        satiation_strength: utility lost per unit of satiation (0: no satiation).
        satiation_decay: per-step decay factor of the satiation memory, in [0, 1).
        drift_rate: fraction of the way interests move toward a fully watched item
            (0: static interests).
        time_budget: mean session time budget [minutes].
        time_budget_spread: budgets are uniform in ``time_budget * (1 +- spread)``.
        step_cost: minutes each step costs (looking at the recommendations).
        refund_rate: minutes refunded per minute watched, times the watched fraction.
        patience: consecutive disappointments after which the user leaves (0: never).
        disappointment_threshold: watched fraction below which a click disappoints.
        boredom_rate: after a click, the user leaves with probability
            ``1 - exp(-boredom_rate * s)``, ``s`` the clicked item's satiation (0: never).
        quit_probability: per-step probability of leaving whatever was shown, in [0, 1).
    """

    favourite_topics: int = 3
    topic_concentration: float = 3.0
    interest_noise: float = 0.3
    modality_beta: tuple[float, float] = (2.0, 2.0)
    quality_weight: float = 0.2
    choice_model: str = "mnl"
    choice_temperature: float = 0.1
    no_click_utility: float = 0.2
    engagement_gain: float = 6.0
    engagement_midpoint: float = 0.3
    engagement_noise: float = 0.5
    satiation_strength: float = 0.3
    satiation_decay: float = 0.7
    drift_rate: float = 0.05
    time_budget: float = 120.0
    time_budget_spread: float = 0.25
    step_cost: float = 0.5
    refund_rate: float = 0.5
    patience: int = 3
    disappointment_threshold: float = 0.3
    boredom_rate: float = 0.0
    quit_probability: float = 0.0

    def __post_init__(self) -> None:
        checks = {
            "favourite_topics": self.favourite_topics >= 1,
            "topic_concentration": self.topic_concentration > 0,
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
            "patience": isinstance(self.patience, int) and not isinstance(self.patience, bool) and self.patience >= 0,
            "disappointment_threshold": 0 < self.disappointment_threshold <= 1,
            "boredom_rate": self.boredom_rate >= 0,
            "quit_probability": 0 <= self.quit_probability < 1,
        }
        expected = {
            "favourite_topics": ">= 1",
            "topic_concentration": "> 0",
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
            "patience": "an integer >= 0 (0: users never leave from disappointment)",
            "disappointment_threshold": "in (0, 1] (a no-click step always disappoints)",
            "boredom_rate": ">= 0",
            "quit_probability": "in [0, 1) (1 would end every session after one step)",
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


#: Reused CPU buffers of small draws, ``(kind, shape) -> (tensor, numpy view)`` (see `_draws`).
_DRAW_BUFFERS: dict[tuple[str, tuple[int, ...]], tuple[torch.Tensor, np.ndarray]] = {}
#: Draws of at most this many values reuse a buffer (a one-user step or reset).
_SMALL_DRAW = 256


def _draws(kind: str, shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> Any:
    """``torch.rand`` (``kind="rand"``) or ``torch.randn`` draws from ``generator``; on CPU as a
    numpy view of them (the arithmetic on a few values then costs numpy's dispatch, not
    torch's: what the reset of one user is made of), elsewhere the tensor itself.

    On CPU a small draw fills a reused buffer in place (``uniform_`` / ``normal_``: the
    same values as ``torch.rand`` / ``torch.randn``, a third of the cost): the array is
    valid until the next draw of the same kind and shape, so callers use it at once.
    """
    if device.type != "cpu":
        return (torch.rand if kind == "rand" else torch.randn)(shape, generator=generator, device=device)
    if math.prod(shape) > _SMALL_DRAW:
        return (torch.rand if kind == "rand" else torch.randn)(shape, generator=generator).numpy()
    key = (kind, shape)
    if key not in _DRAW_BUFFERS:
        tensor = torch.empty(shape)
        _DRAW_BUFFERS[key] = (tensor, tensor.numpy())
    tensor, array = _DRAW_BUFFERS[key]
    if kind == "rand":
        tensor.uniform_(generator=generator)
    else:
        tensor.normal_(generator=generator)
    return array


def _module(x: Any) -> Any:
    """numpy for a numpy array, torch for a tensor: the few functions the samplers need
    beyond operators (``log``, ``sqrt``)."""
    return np if isinstance(x, np.ndarray) else torch


def sample_gamma(concentration: float, n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """``(n,)`` float32 Gamma(concentration, 1) draws from ``generator``.

    Marsaglia-Tsang rejection, vectorised (torch's own Gamma sampler takes no generator).
    Boost for concentration < 1: ``Gamma(c) = Gamma(c + 1) * U ** (1 / c)``. On CPU the
    arithmetic runs on numpy views of the draws (`_draws`); the draws are the same.
    """
    out = _gamma(concentration, n, generator, torch.device(device))
    return torch.from_numpy(out) if isinstance(out, np.ndarray) else out


def _gamma(concentration: float, n: int, generator: torch.Generator, device: torch.device) -> Any:
    """`sample_gamma` as a numpy array on CPU (a tensor elsewhere)."""
    boost = concentration < 1
    shape = concentration + 1 if boost else concentration
    d = shape - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    out: Any = None
    todo: Any = None  # rows still to draw; None: all n, nothing accepted yet
    m = n
    while m > 0:
        x = _draws("randn", (m,), generator, device)
        u = _draws("rand", (m,), generator, device)
        if isinstance(x, np.ndarray) and kernels.enabled():
            value = np.empty(m, np.float32)
            ok = kernels.gamma_round(x, u, d, c, value)
        else:
            xp = _module(x)
            t = 1 + c * x
            v = t * t * t
            with np.errstate(divide="ignore", invalid="ignore"):  # log(0) = -inf, as torch gives
                ok = (v > 0) & (xp.log(u) < 0.5 * x * x + d - d * v + d * xp.log(v.clip(1e-30)))
            value = d * v
        if todo is None and bool(ok.all()):
            out = value  # the common case (acceptance is ~95%+): no scatter of accepted rows
            break
        if out is None or todo is None:
            on_cpu = isinstance(x, np.ndarray)
            out = np.empty(n, np.float32) if on_cpu else torch.empty(n, device=device)
            todo = np.arange(n) if on_cpu else torch.arange(n, device=device)
        out[todo[ok]] = value[ok]
        todo = todo[~ok]
        m = len(todo)
    if out is None:  # n == 0
        out = np.empty(0, np.float32) if device.type == "cpu" else torch.empty(0, device=device)
    if boost:
        out *= _draws("rand", (n,), generator, device) ** (1.0 / concentration)
    return out


def sample_beta(alpha: float, beta: float, n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """``(n,)`` float32 Beta(alpha, beta) draws, as ``X / (X + Y)`` of two Gammas."""
    out = _beta(alpha, beta, n, generator, torch.device(device))
    return torch.from_numpy(out) if isinstance(out, np.ndarray) else out


def _beta(alpha: float, beta: float, n: int, generator: torch.Generator, device: torch.device) -> Any:
    """`sample_beta` as a numpy array on CPU (a tensor elsewhere)."""
    x = _gamma(alpha, n, generator, device)
    y = _gamma(beta, n, generator, device)
    return x / (x + y)


class MultimodalUser(UserModel):
    """The default user model (see the module docstring for the dynamics).

    Args:
        item_space: items users react to; its ``topics`` (if any) seed interests.
        num_users: ``B``.
        device: where state lives.
        **params: fields of `MultimodalUserConfig` overriding the class's
            ``default_config`` (unknown names raise `ValueError`), and
            ``population``: a fitted `recsim_mm.real_data.calibration.UserPopulation`
            or its file; users are then drawn from it instead of the topic mixtures,
            and its fitted parameters override ``default_config`` (parameters given
            here still win). docs/real_data.md.

    State (leading dim ``B``): ``interest`` ``(B, d)`` float32 = [text interest |
    image interest], each part unit-norm; ``modality_weight`` ``(B,)``;
    ``satiation`` ``(B, d)`` memory; ``budget`` ``(B,)`` minutes;
    ``disappointments`` ``(B,)`` consecutive count; ``left`` ``(B,)`` bool.

    Hot-path layout: items are one table ``(N, d + 2)`` = [fused | quality - 0.5 |
    duration] and each user one "probe" ``(2, d + 2)`` whose rows are
    [modality-weighted interest | quality_weight | 0] and [satiation memory | 0 | 0];
    one batched matmul of the gathered slate rows with the probes yields affinity +
    quality term and satiation for every slate item at once.
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
        population = params.pop("population", None)
        self.population = None
        if population is not None:
            # A fitted population (recsim_mm.real_data.calibration) draws the users and
            # brings its fitted parameters; parameters given here still win.
            from recsim_mm.real_data.calibration import UserPopulation

            self.population = UserPopulation.resolve(population, self.item_space)
            params = {**self.population.params, **params}
        self.config = MultimodalUserConfig.build(self.default_config, params)
        cfg, space, dev = self.config, self.item_space, self.device
        self.choice = make_choice_model(cfg.choice_model, cfg.choice_temperature, cfg.no_click_utility)
        self.d_text, self.dim = space.d_text, space.dim
        b, d = num_users, space.dim
        self._table = torch.cat([space.fused, (space.quality - 0.5)[:, None], space.duration[:, None]], dim=1)
        # (d, 2) one-hot map from a column to its modality: per-part norms and weights by
        # matmul when the parts differ in width (equal widths use a cheaper reshape).
        self._segments = torch.zeros(d, 2, device=dev)
        self._segments[: self.d_text, 0] = 1
        self._segments[self.d_text :, 1] = 1
        self._equal_parts = space.d_text == space.d_image
        self._centres_text, self._centres_image = self._topic_centres(space)
        self.interest = torch.zeros(b, d, device=dev)
        self.modality_weight = torch.zeros(b, device=dev)
        # (B, d): a on text columns, 1 - a on image columns; fixed for a user's session,
        # so drawn once in sample() rather than rebuilt by every drift step.
        self._column_weight = torch.zeros(b, d, device=dev)
        self._probe = torch.zeros(b, 2, d + 2, device=dev)
        self._probe[:, 0, d] = cfg.quality_weight
        self._weighted = self._probe[:, 0, :d]  # view: interest scaled by modality weights
        self.satiation = self._probe[:, 1, :d]  # view
        self.budget = torch.zeros(b, device=dev)
        self.disappointments = torch.zeros(b, device=dev)
        self.left = torch.zeros(b, dtype=torch.bool, device=dev)
        # Filled by respond() for transition(): the chosen item's vector and watched fraction.
        self._chosen = torch.zeros(b, d, device=dev)
        self._watched = torch.zeros(b, device=dev)
        self._chosen_satiation: torch.Tensor | None = None
        self._rows = torch.arange(b, device=dev)
        self._noise_nodes = torch.logit((torch.arange(_NOISE_NODES) + 0.5) / _NOISE_NODES)
        # CPU: the step runs as fused kernels (recsim_mm.kernels) on numpy views of these
        # same tensors; `_shown` is the item row respond() leaves for transition().
        self._fused_step = dev.type == "cpu" and kernels.enabled() and self._own_dynamics()
        self._shown: np.ndarray | None = None
        self._step_arrays: tuple = ()
        if self._fused_step:
            self._np = {name: getattr(self, name).numpy() for name in (
                "_table", "_probe", "_weighted", "satiation", "interest", "_column_weight", "budget",
                "disappointments", "left", "modality_weight")}

    #: The methods whose formulas the CPU kernels compute; a subclass that overrides
    #: any of them keeps the torch step, which calls them.
    _KERNEL_FORMULAS = ("respond", "transition", "watched_fraction", "_utility_and_satiation", "_utility",
                        "utility", "affinity", "done", "sample", "_draw_from_topics", "_column_weights",
                        "_normalise_parts")

    def _own_dynamics(self) -> bool:
        """Whether this class computes the step with `MultimodalUser`'s own formulas."""
        return all(getattr(type(self), name) is getattr(MultimodalUser, name) for name in self._KERNEL_FORMULAS)

    def _fused(self) -> bool:
        """Whether this step runs the CPU kernels (no formula replaced on the instance either)."""
        return self._fused_step and vars(self).keys().isdisjoint(self._KERNEL_FORMULAS)

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
        if self.population is not None:
            interest, modality_weight = self.population.draw(r, generator, dev)
        else:
            interest, modality_weight = self._draw_from_topics(r, generator)
        spread = _draws("rand", (r,), generator, dev)
        spread = 2 * spread - 1
        budget = cfg.time_budget * (1 + cfg.time_budget_spread * spread)
        if self._fused_step:
            # The same writes on numpy views (an indexed numpy write costs a fraction of
            # a torch one for a few rows).
            arrays = self._np
            kernels.write_users(
                rows.numpy(), np.asarray(interest, np.float32), np.asarray(modality_weight, np.float32),
                np.asarray(budget, np.float32), self.d_text, arrays["interest"], arrays["modality_weight"],
                arrays["_column_weight"], arrays["_weighted"], arrays["satiation"], arrays["budget"],
                arrays["disappointments"], arrays["left"])
            return
        # index_copy_ / index_fill_: one kernel each (indexed assignment dispatches far more).
        interest, modality_weight, budget = (torch.as_tensor(x, device=dev) for x in (interest, modality_weight, budget))
        self.interest.index_copy_(0, rows, interest)
        self.modality_weight.index_copy_(0, rows, modality_weight)
        column_weight = self._column_weights(rows)
        self._column_weight.index_copy_(0, rows, column_weight)
        self._weighted.index_copy_(0, rows, interest * column_weight)
        self.satiation.index_fill_(0, rows, 0)
        self.budget.index_copy_(0, rows, budget)
        self.disappointments.index_fill_(0, rows, 0)
        self.left.index_fill_(0, rows, False)

    def _draw_from_topics(self, r: int, generator: torch.Generator) -> tuple[Any, Any]:
        """``r`` users from the hand-set topic mixtures: ``(interest (r, d), modality weight (r,))``.

        numpy arrays on CPU (the draws' numpy views, `_draws`), tensors elsewhere.
        """
        cfg, dev = self.config, self.device
        if self._centres_text is not None:
            centres_text, centres_image = self._centres_text, self._centres_image
        else:
            centres_text, centres_image = self.item_space.text, self.item_space.image
        pool = centres_text.shape[0]
        k = min(cfg.favourite_topics, pool)
        scores = _draws("rand", (r, pool), generator, dev)
        on_cpu = isinstance(scores, np.ndarray)
        if on_cpu:  # the k largest, largest first (as topk)
            favourite = np.argsort(-scores, axis=1, kind="stable")[:, :k]
            centres_text, centres_image = centres_text.numpy(), centres_image.numpy()
        else:
            favourite = scores.topk(k, dim=1).indices
        # Dirichlet(topic_concentration) mixing weights over the favourites.
        mix = _gamma(cfg.topic_concentration, r * k, generator, dev).reshape(r, k)
        mix /= mix.sum(1, keepdims=True) if on_cpu else mix.sum(1, keepdim=True)

        def part(centres: Any) -> Any:
            width = centres.shape[1]
            noise = _draws("randn", (r, width), generator, dev)
            if on_cpu and kernels.enabled():
                out = np.empty((r, width), np.float32)
                kernels.mix_interest(mix, favourite, centres, noise, cfg.interest_noise, out)
                return out
            v = (mix[:, :, None] * centres[favourite]).sum(1)
            v = v + cfg.interest_noise * noise / math.sqrt(width)
            if not on_cpu:
                return torch.nn.functional.normalize(v, dim=-1)
            return v / np.maximum(np.sqrt((v * v).sum(-1, keepdims=True)), 1e-12)

        parts = [part(centres_text), part(centres_image)]
        interest = np.concatenate(parts, axis=1) if on_cpu else torch.cat(parts, dim=1)
        a, b = cfg.modality_beta
        return interest, _beta(a, b, r, generator, dev)

    def _column_weights(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """``(R, d)``: ``a`` on the text columns, ``1 - a`` on the image columns."""
        a = self.modality_weight if rows is None else self.modality_weight[rows]
        if self._equal_parts:
            half = self.d_text
            return torch.stack([a, 1 - a], dim=1).repeat_interleave(half, dim=1)
        return torch.stack([a, 1 - a], dim=1) @ self._segments.T

    def _normalise_parts(self) -> None:
        """Rescale the text and the image part of every interest to unit norm, in place."""
        if self._equal_parts:
            parts = self.interest.view(self.num_users, 2, self.d_text)
            parts.div_(torch.linalg.vector_norm(parts, dim=2, keepdim=True).clamp_min_(1e-12))
            return
        norms = (self.interest * self.interest) @ self._segments
        self.interest.mul_(norms.clamp_min_(1e-24).rsqrt_() @ self._segments.T)

    # ---------------------------------------------------------------- step
    def _gather(self, items: torch.Tensor) -> torch.Tensor:
        """``(B, S, d + 2)`` table rows of ``(B, S)`` items (index_select: the fast gather)."""
        return self._table.index_select(0, items.reshape(-1)).view(*items.shape, self.dim + 2)

    def utility(self, items: torch.Tensor) -> torch.Tensor:
        """``(B, S)`` float32 utility of items: affinity + quality term - satiation penalty.

        Args:
            items: ``(B, S)`` int64 item rows.
        """
        return self._utility(self._gather(items))

    def _utility(self, rows: torch.Tensor) -> torch.Tensor:
        return self._utility_and_satiation(rows)[0]

    def _utility_and_satiation(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(B, S)`` utility and ``(B, S)`` satiation (None without satiation) of gathered rows."""
        scores = batched_matmul(rows, self._probe.mT)  # (B, S, 2): [affinity + quality, satiation]
        utility = scores[..., 0]
        if not self.config.satiation_strength:
            return utility, None
        satiation = scores[..., 1].clamp_min(0)
        return utility - self.config.satiation_strength * satiation, satiation

    def respond(self, slate: torch.Tensor, generator: torch.Generator) -> UserResponse:
        if self._fused():
            return self._respond_fused(slate, generator)
        d = self.dim
        rows = self._gather(slate)  # (B, S, d + 2)
        utility, satiation = self._utility_and_satiation(rows)
        clicked = self.choice.choose(utility, generator)
        if slate.shape[1] == 1:
            chosen, chosen_utility = rows[:, 0], utility[:, 0]
            chosen_satiation = None if satiation is None else satiation[:, 0]
        else:
            pos = clicked.clamp_min(0)
            chosen = rows[self._rows, pos]
            chosen_utility = utility.gather(1, pos.unsqueeze(1)).squeeze(1)
            chosen_satiation = None if satiation is None else satiation.gather(1, pos.unsqueeze(1)).squeeze(1)
        self._chosen.copy_(chosen[:, :d])
        self._chosen_satiation = chosen_satiation
        # Watched fraction: logistic in utility, with logistic noise (logit of a uniform).
        u = torch.rand(chosen_utility.shape, generator=generator, device=self.device)
        watched = self.watched_fraction(chosen_utility, torch.logit(u, eps=1e-6))
        watched.mul_(clicked >= 0)
        self._watched = watched
        minutes = torch.minimum(watched * chosen[:, d + 1], self.budget)
        return UserResponse(clicked=clicked, engagement=minutes)

    def _respond_fused(self, slate: torch.Tensor, generator: torch.Generator) -> UserResponse:
        """`respond` through the CPU kernels: same draws, same formulas (recsim_mm.kernels)."""
        cfg, arrays = self.config, self._np
        b, s = slate.shape
        slate_np = slate.numpy()
        watched = np.empty(b, np.float32)
        minutes = np.empty(b, np.float32)
        chosen_satiation = np.empty(b, np.float32)
        if s == 1 and type(self.choice) is MultinomialLogit:
            # Draws as the torch path: the choice's uniforms, then the watched noise's.
            uniforms = _draws("rand", (2, b), generator, self.device)
            clicked = np.empty(b, np.int64)
            kernels.respond_single(
                arrays["_table"], slate_np, arrays["_probe"], arrays["budget"], uniforms[0], uniforms[1],
                cfg.satiation_strength, self.choice.temperature, self.choice.no_click_utility,
                cfg.engagement_gain, cfg.engagement_midpoint, cfg.engagement_noise,
                clicked, minutes, watched, chosen_satiation)
            self._shown = slate_np[:, 0]
            clicked_t = torch.from_numpy(clicked)
            clicked_np = clicked
        else:
            utility = np.empty((b, s), np.float32)
            satiation = np.empty((b, s), np.float32)
            kernels.slate_utility(arrays["_table"], slate_np, arrays["_probe"], cfg.satiation_strength,
                                  utility, satiation)
            clicked_t = self.choice.choose(torch.from_numpy(utility), generator)
            clicked_np = clicked_t.numpy()
            pos = clicked_np.clip(0, None)
            index = np.arange(b)
            shown = slate_np[index, pos]
            chosen_utility = torch.from_numpy(utility[index, pos])
            u = torch.rand(b, generator=generator)
            watched_t = self.watched_fraction(chosen_utility, torch.logit(u, eps=1e-6))
            watched_t.mul_(clicked_t >= 0)
            watched = watched_t.numpy()
            chosen_satiation = satiation[index, pos]
            np.minimum(watched * arrays["_table"][shown, -1], arrays["budget"], out=minutes)
            self._shown = shown
        self._watched = torch.from_numpy(watched)
        self._chosen_satiation = torch.from_numpy(chosen_satiation) if cfg.satiation_strength else None
        response = UserResponse(clicked=clicked_t, engagement=torch.from_numpy(minutes))
        # What transition() reads, as numpy arrays (used if it is handed this response).
        self._step_arrays = (response, watched, minutes, clicked_np, chosen_satiation)
        return response

    def watched_fraction(self, utility: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Fraction of an item watched if clicked: ``sigmoid(gain * (utility - midpoint) + engagement_noise * noise)``.

        The one formula behind `respond` (which draws ``noise`` as the logit of a
        uniform, a standard logistic) and `expected_outcomes` (which integrates over
        fixed quantiles of it), so the two cannot drift apart.

        Args:
            utility: float32 utilities, broadcastable against ``noise``.
            noise: float32 standard-logistic noise values (e.g. ``(B,)``, or ``(Q,)``
                quantile nodes against ``(B, K, 1)`` utilities).

        Returns:
            A new float32 tensor of the broadcast shape, in [0, 1].
        """
        cfg = self.config
        watched = torch.add(noise * cfg.engagement_noise, utility, alpha=cfg.engagement_gain)
        return watched.sub_(cfg.engagement_gain * cfg.engagement_midpoint).sigmoid_()

    def transition(self, slate: torch.Tensor, response: UserResponse, generator: torch.Generator) -> None:
        cfg = self.config
        if self._fused_step and self._shown is not None:
            arrays, b = self._np, self.num_users
            kept, watched, minutes, clicked, chosen_satiation = self._step_arrays
            if kept is not response:  # a caller passed another response: read it
                minutes, clicked = response.engagement.numpy(), response.clicked.numpy()
            # The torch path's one draw, if it makes it: a uniform per user to quit.
            if cfg.quit_probability or cfg.boredom_rate:
                u_quit = _draws("rand", (b,), generator, self.device)
            else:
                u_quit = watched  # not read
            kernels.transition(
                arrays["_table"], self._shown, watched, minutes, clicked, chosen_satiation, u_quit, self.d_text,
                cfg.satiation_decay, bool(cfg.satiation_strength), cfg.drift_rate, cfg.refund_rate, cfg.step_cost,
                cfg.disappointment_threshold, cfg.patience, cfg.quit_probability, cfg.boredom_rate,
                arrays["satiation"], arrays["interest"], arrays["_column_weight"], arrays["_weighted"],
                arrays["budget"], arrays["disappointments"], arrays["left"])
            self._shown = None
            return
        watched = self._watched  # 0 where nothing was clicked
        if cfg.satiation_strength:
            # x/2: <x, x> = 2 for a fused vector, so each full consumption of an
            # identical item adds exactly 1 to its satiation.
            self.satiation.mul_(cfg.satiation_decay).addcmul_(self._chosen, (0.5 * watched).unsqueeze(1))
        if cfg.drift_rate:
            step = (cfg.drift_rate * watched).unsqueeze(1)
            self.interest.addcmul_(self._chosen - self.interest, step)
            self._normalise_parts()
            torch.mul(self.interest, self._column_weight, out=self._weighted)
        # Budget: pay the minutes and the browsing cost, get refund_rate * watched back per minute.
        self.budget.addcmul_(response.engagement, watched * cfg.refund_rate - 1).sub_(cfg.step_cost).clamp_min_(0)
        disappointed = watched < cfg.disappointment_threshold  # no click: watched = 0
        self.disappointments.add_(1).mul_(disappointed)
        if cfg.patience:
            self.left |= self.disappointments >= cfg.patience
        if cfg.quit_probability or cfg.boredom_rate:
            # One uniform per user against the probability of staying: the product of not
            # quitting and (after a click) not being bored by the clicked item's satiation.
            stay = torch.full_like(watched, 1.0 - cfg.quit_probability)
            if cfg.boredom_rate and self._chosen_satiation is not None:
                bored = (response.clicked >= 0) * self._chosen_satiation
                stay.mul_(torch.exp(-cfg.boredom_rate * bored))
            self.left |= torch.rand(stay.shape, generator=generator, device=self.device) >= stay

    def done(self) -> torch.Tensor:
        if self._fused_step:  # the same test on numpy views (cheaper for a few users)
            arrays = self._np
            return torch.from_numpy(arrays["left"] | (arrays["budget"] <= 0))
        return self.left | (self.budget <= 0)

    def time_left(self) -> torch.Tensor:
        return self.budget

    def expected_outcomes(self, items: torch.Tensor) -> ExpectedOutcomes:
        """PRIVILEGED one-step model: what recommending each item alone would do, in expectation.

        Computed from the hidden state with the true dynamics (the watched fraction's
        logistic noise integrated by a fixed ``_NOISE_NODES``-point quantile rule), for
        the privileged references in `agents.references`. Each item is treated as a
        one-item slate.

        Args:
            items: ``(B, K)`` int64 item rows.

        Returns:
            `ExpectedOutcomes` of ``(B, K)`` float32 tensors.
        """
        cfg = self.config
        rows = self._gather(items)  # (B, K, d + 2)
        utility, satiation = self._utility_and_satiation(rows)
        click = self.choice.click_probability(utility.reshape(-1, 1)).view_as(utility)
        watched = self.watched_fraction(utility.unsqueeze(-1), self._noise_nodes.to(utility.device))  # (B, K, Q)
        budget = self.budget[:, None, None]
        minutes = torch.minimum(watched * rows[..., -1:], budget)
        engagement = minutes.mean(-1)
        # The session ends if any of: patience runs out, the budget is spent, boredom, a quit.
        stay_clicked = torch.ones_like(watched)
        stay_skipped = torch.ones_like(utility[..., 0])
        if cfg.patience:
            last_chance = (self.disappointments + 1 >= cfg.patience)[:, None, None]
            stay_clicked = stay_clicked * ~(last_chance & (watched < cfg.disappointment_threshold))
            stay_skipped = stay_skipped * ~last_chance[:, 0, 0]
        after = budget - minutes * (1 - cfg.refund_rate * watched) - cfg.step_cost
        stay_clicked = stay_clicked * (after > 0)
        stay_skipped = stay_skipped * (self.budget - cfg.step_cost > 0)
        stay_clicked = stay_clicked.mean(-1)
        if cfg.boredom_rate and satiation is not None:
            stay_clicked = stay_clicked * torch.exp(-cfg.boredom_rate * satiation)
        stay = click * stay_clicked + (1 - click) * stay_skipped[:, None]
        return ExpectedOutcomes(
            click_probability=click,
            engagement_if_clicked=engagement,
            end_probability=1 - (1 - cfg.quit_probability) * stay,
        )

    def affinity(
        self, items: torch.Tensor, rows: torch.Tensor | None = None, fused: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(R, K)`` float32 ``a * cos_text + (1 - a) * cos_image`` (quality and satiation excluded).

        Args:
            items: ``(R, K)`` int64 item rows.
            rows: ``(R,)`` int64 user rows (``None``: all users).
            fused: optional ``(R, K, d)`` fused vectors of ``items`` (saves a gather).
        """
        r, k = items.shape
        if self._fused_step:  # one kernel from the cache-resident table (``fused`` not needed)
            out = np.empty((r, k), np.float32)
            weighted_np = self._np["_weighted"] if rows is None else self._np["_weighted"][rows.numpy()]
            kernels.affinity_of(self._np["_table"], items.numpy(), weighted_np, out)
            return torch.from_numpy(out)
        weighted = self._weighted if rows is None else self._weighted[rows]
        if r <= _AFFINITY_CHUNK:  # one chunk: the same product and sum, without the slicing
            if fused is None:
                fused = self._table.index_select(0, items.reshape(-1))[:, : self.dim].view(r, k, self.dim)
            return torch.sum(fused * weighted.unsqueeze(1), dim=2)
        out = torch.empty(r, k, device=self.device)
        # Chunks of users keep the (chunk, K, d) product in cache; torch's batched
        # matrix-vector kernels are several times slower than this on CPU.
        for start in range(0, r, _AFFINITY_CHUNK):
            stop = min(start + _AFFINITY_CHUNK, r)
            if fused is not None:
                part = fused[start:stop]
            else:
                part = self._table.index_select(0, items[start:stop].reshape(-1))[:, : self.dim]
                part = part.view(stop - start, k, self.dim)
            torch.sum(part * weighted[start:stop].unsqueeze(1), dim=2, out=out[start:stop])
        return out

    def max_time_left(self) -> float:
        # Refunds are below what consumption costs (refund_rate < 1, watched <= 1), so
        # the budget never grows past its initial draw.
        cfg = self.config
        return cfg.time_budget * (1 + cfg.time_budget_spread)

    def max_engagement(self) -> float:
        return float(self.item_space.duration.max())

    def hidden_state(self) -> dict[str, torch.Tensor]:
        return {"modality_weight": self.modality_weight}


class InterestEvolutionUser(MultimodalUser):
    """RecSim-like: interests drift toward what the user consumes; mild satiation; a time
    budget that good content refunds; users leave after 3 disappointments in a row."""

    default_config = MultimodalUserConfig(drift_rate=0.1, satiation_strength=0.3, satiation_decay=0.7)


#: Session settings of the Satiation and Myopic variants: no time budget within any
#: realistic session, no leaving from disappointment, a 3% per-step quit (mean 33 steps).
_OPEN_SESSION = {"time_budget": 10_000.0, "time_budget_spread": 0.0, "patience": 0, "quit_probability": 0.03}


class SatiationUser(MultimodalUser):
    """Satiation that bores: similar consumption lowers utility mildly (taste stays visible
    in the clicks) and every click on a satiated item may end the session
    (``boredom_rate``); static interests. Spacing out similar items pays off over a session."""

    default_config = MultimodalUserConfig(
        drift_rate=0.0, satiation_strength=0.3, satiation_decay=0.8, boredom_rate=0.3, **_OPEN_SESSION
    )


class MyopicUser(MultimodalUser):
    """The control: static interests, no satiation, no drift, and a session length no
    recommendation changes (no budget, no patience, a fixed per-step quit): every step is
    independent, so the myopic oracle is optimal."""

    default_config = MultimodalUserConfig(drift_rate=0.0, satiation_strength=0.0, **_OPEN_SESSION)
