"""Choice models: which slate position a user clicks, given per-item utilities, batched.

Both models include a no-click option with utility ``no_click_utility``; the user
clicks nothing when it wins. Utilities are in the user model's units (for the default
multimodal user, affinity plus quality minus satiation, roughly in [-1, 1]);
``temperature`` sets how deterministic the choice is (small: near-argmax).
"""

from __future__ import annotations

import abc

import torch

from recsim_mm.sampling import gumbel_max


class ChoiceModel(abc.ABC):
    """Picks at most one slate position per user.

    Args:
        temperature: > 0; utilities are divided by it (logit scale).
        no_click_utility: utility of clicking nothing.
    """

    def __init__(self, temperature: float = 0.1, no_click_utility: float = 0.0) -> None:
        if not temperature > 0:
            raise ValueError(f"choice temperature must be > 0; got {temperature}")
        self.temperature = float(temperature)
        self.no_click_utility = float(no_click_utility)

    @abc.abstractmethod
    def choose(self, utility: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Sample each user's choice.

        Args:
            utility: ``(B, S)`` float32 utility of each slate position.
            generator: source of randomness (same device as ``utility``).

        Returns:
            ``(B,)`` int64 clicked position in ``[0, S)``, or ``-1`` for no click.
        """

    def click_probability(self, utility: torch.Tensor) -> torch.Tensor:
        """``(B, S)`` float32 probability that each position is the one clicked."""
        raise NotImplementedError


class MultinomialLogit(ChoiceModel):
    """Multinomial logit over the slate plus a no-click option.

    ``P(position j) = exp(u_j / T) / (exp(u_0 / T) + sum_k exp(u_k / T))`` with ``u_0``
    the no-click utility. Sampled by the Gumbel-max trick; for a one-item slate this
    reduces to a single Bernoulli with ``sigmoid((u - u_0) / T)``.
    """

    def choose(self, utility: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        batch, slate_size = utility.shape
        if slate_size == 1:
            # One item: a Bernoulli draw is the whole logit model, and far cheaper.
            p = torch.sigmoid((utility[:, 0] - self.no_click_utility) / self.temperature)
            u = torch.rand(batch, generator=generator, device=utility.device)
            return torch.where(u < p, 0, -1)
        logits = torch.cat(
            [utility.new_full((batch, 1), self.no_click_utility), utility], dim=1
        ) / self.temperature
        return gumbel_max(logits, generator) - 1

    def click_probability(self, utility: torch.Tensor) -> torch.Tensor:
        logits = torch.cat(
            [utility.new_full((utility.shape[0], 1), self.no_click_utility), utility], dim=1
        )
        return torch.softmax(logits / self.temperature, dim=1)[:, 1:]


class Cascade(ChoiceModel):
    """Cascade model: the user examines positions in order and stops at the first click.

    At position ``j`` (reached only if nothing before it was clicked) the user clicks
    with probability ``sigmoid((u_j - u_0) / T)``.
    """

    def choose(self, utility: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        p = torch.sigmoid((utility - self.no_click_utility) / self.temperature)
        u = torch.rand(p.shape, generator=generator, device=utility.device)
        hit = u < p
        first = hit.to(torch.int8).argmax(dim=1)  # first True (0 when none: fixed below)
        return torch.where(hit.any(dim=1), first, -1)

    def click_probability(self, utility: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid((utility - self.no_click_utility) / self.temperature)
        survive = torch.cumprod(1 - p, dim=1)
        reach = torch.cat([torch.ones_like(p[:, :1]), survive[:, :-1]], dim=1)
        return reach * p


#: Choice models by name, as the user model config refers to them.
CHOICE_MODELS: dict[str, type[ChoiceModel]] = {"mnl": MultinomialLogit, "cascade": Cascade}


def make_choice_model(name: str, temperature: float, no_click_utility: float) -> ChoiceModel:
    """Build a choice model by name (``"mnl"`` or ``"cascade"``).

    Raises:
        ValueError: unknown name (the valid names are listed).
    """
    if name not in CHOICE_MODELS:
        raise ValueError(f"unknown choice model {name!r}; expected one of {sorted(CHOICE_MODELS)}")
    return CHOICE_MODELS[name](temperature=temperature, no_click_utility=no_click_utility)
