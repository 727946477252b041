"""The user model contract: a batch of B simulated users held as tensors, one row per user.

A user model is the part of the simulation a researcher most often swaps. It owns the
hidden state of B users (struct-of-arrays: every state tensor has leading dimension
B) and answers five questions for the simulator core, all batched, never per user:

1. `sample`: put fresh users into the given rows (episode start, autoreset).
2. `respond`: given each user's slate of item rows, which position is clicked (or
   none) and how many minutes the user engages.
3. `transition`: update the state after that response (satiation, drift, budget, ...).
4. `done`: which users have ended their session (left, or time budget spent).
5. `time_left`, `affinity`, optionally `features`: what the observation and the
   analysis info report.

All randomness comes from the `torch.Generator` passed in, so a seeded simulator is
reproducible. A custom model subclasses `UserModel`, implements the abstract methods,
and is used by dotted path (``"my_pkg.my_users:MyUser"``) or registered by name in
`recsim_mm.users.registry`. docs/user_models.md shows a complete one.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar, NamedTuple

import torch

from recsim_mm.item_space import ItemSpace


class UserResponse(NamedTuple):
    """What a batch of users did with their slates in one step.

    Attributes:
        clicked: ``(B,)`` int64, the clicked slate position in ``[0, S)``, or ``-1``
            when the user clicked nothing.
        engagement: ``(B,)`` float32, minutes spent with the clicked item (``0`` where
            nothing was clicked).
    """

    clicked: torch.Tensor
    engagement: torch.Tensor


class ExpectedOutcomes(NamedTuple):
    """PRIVILEGED expectations of recommending each candidate alone, from the hidden state.

    What a user model's `UserModel.expected_outcomes` returns for ``(B, K)`` candidates;
    the privileged references (myopic oracle, planning reference) rank by it. No
    policy that a real system could run sees these.

    Attributes:
        click_probability: ``(B, K)`` float32 probability of a click.
        engagement_if_clicked: ``(B, K)`` float32 expected minutes given a click.
        end_probability: ``(B, K)`` float32 probability that the session ends after
            this step (the user leaves, is bored, quits or runs out of time).
    """

    click_probability: torch.Tensor
    engagement_if_clicked: torch.Tensor
    end_probability: torch.Tensor


class UserModel(abc.ABC):
    """Base class of every user model: B users' hidden state and their behaviour.

    Subclasses keep their state in tensors with leading dimension ``B = num_users``
    on ``device`` and implement the abstract methods without a Python loop over
    users. The simulator calls, per step, ``respond`` then ``transition`` with the
    same slate, then ``done``; and ``sample`` for rows that start a new episode.

    Args:
        item_space: the items users react to; rows of its tensors are item rows.
        num_users: ``B``, the number of user rows this instance holds.
        device: where the state tensors live (the item space is moved there).
        **params: model parameters; a subclass validates them and raises
            `ValueError` naming an unknown parameter and listing the valid ones.

    Class attributes:
        num_features: ``F``, the width of `features` (``0``: the model exposes no
            observable user features and the observation has no ``user_features``).
    """

    num_features: ClassVar[int] = 0

    def __init__(
        self,
        item_space: ItemSpace,
        num_users: int,
        device: str | torch.device = "cpu",
        **params: Any,
    ) -> None:
        if num_users < 1:
            raise ValueError(f"num_users must be >= 1; got {num_users}")
        self.device = torch.device(device)
        self.item_space = item_space if item_space.device == self.device else item_space.to(self.device)
        self.num_users = int(num_users)

    @abc.abstractmethod
    def sample(self, rows: torch.Tensor, generator: torch.Generator) -> None:
        """Draw fresh users into ``rows``, overwriting whatever state those rows held.

        Args:
            rows: ``(R,)`` int64 row indices in ``[0, B)``, distinct.
            generator: the simulator's generator (on ``device``); the only source
                of randomness.
        """

    @abc.abstractmethod
    def respond(self, slate: torch.Tensor, generator: torch.Generator) -> UserResponse:
        """Each user's reaction to their slate.

        Args:
            slate: ``(B, S)`` int64 item rows shown to each user, position 0 first.
            generator: the simulator's generator.

        Returns:
            `UserResponse` with ``clicked`` ``(B,)`` int64 in ``[-1, S)`` and
            ``engagement`` ``(B,)`` float32 minutes, ``>= 0``.
        """

    @abc.abstractmethod
    def transition(
        self, slate: torch.Tensor, response: UserResponse, generator: torch.Generator
    ) -> None:
        """Advance every user's state after `respond` (called right after it, same slate).

        Args:
            slate: ``(B, S)`` int64, the slate passed to `respond`.
            response: what `respond` returned.
            generator: the simulator's generator.
        """

    @abc.abstractmethod
    def done(self) -> torch.Tensor:
        """``(B,)`` bool: the user has ended the session (left, or budget spent)."""

    @abc.abstractmethod
    def time_left(self) -> torch.Tensor:
        """``(B,)`` float32 minutes of session time each user has left, ``>= 0``."""

    @abc.abstractmethod
    def affinity(self, items: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """True (hidden) affinity of users for the given items.

        Args:
            items: ``(R, K)`` int64 item rows, row ``r`` for user ``rows[r]``.
            rows: ``(R,)`` int64 user rows; ``None`` means all B users (``R = B``).

        Returns:
            ``(R, K)`` float32. Shown to analysis code only (env ``info``), never in
            the observation.
        """

    def features(self) -> torch.Tensor:
        """``(B, F)`` float32 observable user features; only called when ``num_features > 0``."""
        raise NotImplementedError(
            f"{type(self).__name__} sets num_features={self.num_features} but does not "
            "override features()"
        )

    def max_time_left(self) -> float:
        """Upper bound of `time_left` in minutes (observation space bound); default ``inf``."""
        return float("inf")

    def max_engagement(self) -> float:
        """Upper bound of one step's engagement in minutes (observation space bound); default ``inf``."""
        return float("inf")

    def expected_outcomes(self, items: torch.Tensor) -> ExpectedOutcomes:
        """PRIVILEGED: expected click, engagement and session end of each item shown alone.

        Optional: only the privileged references (`agents.references`) call it; a user
        model without it can still be simulated and trained on.

        Args:
            items: ``(B, K)`` int64 item rows.
        """
        raise NotImplementedError(
            f"{type(self).__name__} does not implement expected_outcomes(items), which the "
            "privileged references (myopic oracle, planning reference) need"
        )

    def hidden_state(self) -> dict[str, torch.Tensor]:
        """Per-user hidden quantities for analysis ``info`` (each ``(B,)`` float32); default none."""
        return {}


#: The methods a user model must implement, in the order the simulator uses them.
CONTRACT_METHODS: tuple[str, ...] = (
    "sample",
    "respond",
    "transition",
    "done",
    "time_left",
    "affinity",
)
