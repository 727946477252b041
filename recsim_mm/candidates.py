"""Candidate generation: the K distinct item rows each user is offered per step, batched.

Sources (fractions of K, the rest uniform at random over the catalog):

- ``popular``: uniform over the popular pool, the top ``popular_pool`` fraction of
  items by quality (the item space carries no popularity counts; quality stands in).
- ``similar``: a nearest neighbour (fused cosine) of a random item the user clicked
  within the observed history; uniform when the user has clicked nothing yet.
- the rest: uniform over all items.

Candidates within a row are always distinct.

Default (all uniform, nothing excluded): each set is a random cyclic shift
``(T + s) mod N`` of a tuple ``T`` drawn from a fixed pool of ``P`` distinct K-tuples
(built once per generator by exact rejection sampling, ``P`` about a million
entries / K). Because shifting a uniform distinct tuple gives a uniform distinct
tuple, every item is equally likely at every position and a set never repeats an
item; the sets are drawn from a finite family of ``P * N`` tuples rather than all of
them, which is what makes a step cost two random numbers per user instead of K plus
a duplicate check. Mixed sources and ``exclude_consumed`` draw per position and
redraw duplicates (and consumed items) uniformly until none is left, which is exact
but slower. Generators whose sources do not read user state draw many steps' worth
of candidates at once (one batch of torch calls per block, not per step), which is
what makes the single-user environment fast; the result is the same stream of draws.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from recsim_mm.item_space import ItemSpace

#: Rounds of redrawing duplicates before the exact (slower) fallback takes over.
_MAX_REDRAW_ROUNDS = 32
#: Rows drawn per block when candidates do not depend on user state (amortises call overhead).
_STREAM_BLOCK_ROWS = 4096
#: Entries (rows x K) of the pool of distinct tuples behind uniform candidate sets.
_POOL_ENTRIES = 2**20
#: Seed of the pool (a fixed function of N and K; the simulation seed picks from it).
_POOL_SEED = 20240601


@dataclass(frozen=True)
class CandidateConfig:
    """How candidates are drawn.

    Attributes:
        popular: fraction of the K candidates from the popular pool, in [0, 1].
        similar: fraction of the K candidates similar to the user's clicked history.
        exclude_consumed: never offer an item the user clicked earlier in the episode.
        popular_pool: fraction of the catalog (top by quality) forming the popular pool.
        similar_neighbours: nearest neighbours per item the ``similar`` source picks from.
    """

    popular: float = 0.0
    similar: float = 0.0
    exclude_consumed: bool = False
    popular_pool: float = 0.1
    similar_neighbours: int = 10

    def __post_init__(self) -> None:
        for name in ("popular", "similar"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"candidates option {name}={value!r} must be a fraction in [0, 1]")
        if self.popular + self.similar > 1:
            raise ValueError(
                f"candidates options popular={self.popular} + similar={self.similar} exceed 1; "
                "the fractions of K must sum to at most 1 (the rest is uniform)"
            )
        if not 0 < self.popular_pool <= 1:
            raise ValueError(f"candidates option popular_pool={self.popular_pool!r} must be in (0, 1]")
        if not (isinstance(self.similar_neighbours, int) and self.similar_neighbours >= 1):
            raise ValueError(
                f"candidates option similar_neighbours={self.similar_neighbours!r} must be an integer >= 1"
            )

    @classmethod
    def from_options(cls, options: CandidateConfig | dict[str, Any] | None) -> CandidateConfig:
        """Build from a dict of options; unknown keys raise `ValueError` listing valid ones."""
        if options is None:
            return cls()
        if isinstance(options, cls):
            return options
        if not isinstance(options, dict):
            raise TypeError(f"candidates must be a dict of options or a CandidateConfig; got {type(options).__name__}")
        valid = [f.name for f in dataclasses.fields(cls)]
        for key in options:
            if key not in valid:
                raise ValueError(f"unknown candidates option {key!r}; valid options: {valid}")
        return cls(**options)


class CandidateGenerator:
    """Draws ``(R, K)`` int64 candidate item rows for R users at a time.

    Args:
        item_space: the catalog (on the simulator's device).
        num_candidates: ``K``; at most the number of items.
        num_users: ``B``, rows of the consumed-items bookkeeping.
        config: the sources and options.
        max_consumed: the most items a user can consume in an episode (the
            simulator's max steps); with ``exclude_consumed`` the catalog must hold
            at least ``K + max_consumed`` items.
    """

    def __init__(
        self,
        item_space: ItemSpace,
        num_candidates: int,
        num_users: int,
        config: CandidateConfig | None = None,
        max_consumed: int = 0,
    ) -> None:
        self.config = config or CandidateConfig()
        self.num_items = n = item_space.num_items
        self.num_candidates = k = int(num_candidates)
        self.device = item_space.device
        if k < 1 or k > n:
            raise ValueError(f"num_candidates={num_candidates} must be in [1, {n}] (the number of items)")
        if self.config.exclude_consumed and n < k + max_consumed:
            raise ValueError(
                f"exclude_consumed needs at least num_candidates + max_steps = {k + max_consumed} "
                f"items; the item space has {n}"
            )
        self.num_popular = round(self.config.popular * k)
        self.num_similar = round(self.config.similar * k)
        if self.num_popular:
            pool = max(1, round(self.config.popular_pool * n))
            self._popular_pool = item_space.quality.argsort(descending=True)[:pool]
        if self.num_similar:
            self._neighbours = self._nearest_neighbours(item_space, min(self.config.similar_neighbours, n - 1))
        self._consumed = (
            torch.zeros(num_users, n, dtype=torch.bool, device=self.device)
            if self.config.exclude_consumed
            else None
        )
        self._block: torch.Tensor | None = None
        self._block_used = 0
        self._pool: torch.Tensor | None = None

    @property
    def uniform(self) -> bool:
        """Whether every candidate is uniform over the catalog (the shifted-pool path)."""
        return self.num_popular == 0 and self.num_similar == 0

    @property
    def reads_state(self) -> bool:
        """Whether candidates depend on the user's history (then no block drawing)."""
        return self.num_similar > 0 or self.config.exclude_consumed

    @staticmethod
    def _nearest_neighbours(item_space: ItemSpace, m: int) -> torch.Tensor:
        """``(N, m)`` int64: each item's ``m`` most similar other items (fused cosine)."""
        fused = torch.nn.functional.normalize(item_space.fused, dim=-1)
        out = []
        for start in range(0, fused.shape[0], 2048):  # chunks bound the (chunk, N) matrix
            sim = fused[start : start + 2048] @ fused.T
            rows = torch.arange(start, start + sim.shape[0], device=sim.device)
            sim[torch.arange(sim.shape[0], device=sim.device), rows] = -float("inf")
            out.append(sim.topk(m, dim=1).indices)
        return torch.cat(out)

    def clear(self) -> None:
        """Forget pre-drawn blocks and all consumed items (a fresh seed follows)."""
        self._block, self._block_used = None, 0
        if self._consumed is not None:
            self._consumed.zero_()

    def clear_rows(self, rows: torch.Tensor) -> None:
        """Forget the consumed items of ``rows`` ``(R,)`` int64 (new users there)."""
        if self._consumed is not None:
            self._consumed[rows] = False

    def record(self, items: torch.Tensor, consumed: torch.Tensor) -> None:
        """Note that each user consumed ``items`` ``(B,)`` int64 where ``consumed`` ``(B,)`` bool."""
        if self._consumed is not None:
            rows = consumed.nonzero().squeeze(1)
            self._consumed[rows, items[rows]] = True

    def sample(
        self,
        rows: torch.Tensor | None,
        num_rows: int,
        history_items: torch.Tensor,
        history_clicked: torch.Tensor,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """Candidates for ``num_rows`` users.

        Args:
            rows: ``(R,)`` int64 user rows (``None``: all rows ``0..R-1``); used by
                ``exclude_consumed``.
            num_rows: ``R``.
            history_items: ``(R, H)`` int64 item rows of the users' observed history.
            history_clicked: ``(R, H)`` bool, True where that history item was clicked.
            generator: the simulator's generator.

        Returns:
            ``(R, K)`` int64 distinct item rows per user.
        """
        if not self.reads_state:
            return self._from_block(num_rows, generator)
        cand = self._draw(num_rows, generator, history_items, history_clicked)
        return self._make_distinct(cand, rows, generator)

    def _from_block(self, num_rows: int, generator: torch.Generator) -> torch.Tensor:
        if self._block is None or self._block_used + num_rows > self._block.shape[0]:
            size = max(num_rows, _STREAM_BLOCK_ROWS)
            self._block = self._make_distinct(self._draw(size, generator, None, None), None, generator)
            self._block_used = 0
        out = self._block[self._block_used : self._block_used + num_rows]
        self._block_used += num_rows
        return out

    def _draw(
        self,
        r: int,
        generator: torch.Generator,
        history_items: torch.Tensor | None,
        history_clicked: torch.Tensor | None,
    ) -> torch.Tensor:
        """``(r, K)`` int64 candidates from the configured sources (duplicates possible
        with mixed sources; the uniform path is distinct by construction)."""
        n, k, dev = self.num_items, self.num_candidates, self.device
        if self.uniform:
            pool = self._uniform_pool()
            pick = torch.randint(pool.shape[0], (r,), generator=generator, device=dev)
            shift = torch.randint(n, (r, 1), generator=generator, device=dev)
            return pool[pick].add_(shift).remainder_(n)
        cand = torch.randint(n, (r, k), generator=generator, device=dev)
        start = 0
        if self.num_popular:
            pool = self._popular_pool
            pick = torch.randint(pool.numel(), (r, self.num_popular), generator=generator, device=dev)
            cand[:, : self.num_popular] = pool[pick]
            start = self.num_popular
        if self.num_similar:
            h = history_items.shape[1]
            s = self.num_similar
            slot = torch.randint(h, (r, s), generator=generator, device=dev)
            anchor = history_items.gather(1, slot)
            valid = history_clicked.gather(1, slot)
            neighbour = torch.randint(self._neighbours.shape[1], (r, s), generator=generator, device=dev)
            similar = self._neighbours[anchor, neighbour]
            block = cand[:, start : start + s]
            cand[:, start : start + s] = torch.where(valid, similar, block)
        return cand

    def _uniform_pool(self) -> torch.Tensor:
        """``(P, K)`` int64 distinct uniform K-tuples, built on first use (exact rejection)."""
        if self._pool is None:
            n, k = self.num_items, self.num_candidates
            g = torch.Generator(device=self.device)
            g.manual_seed(_POOL_SEED)
            size = max(1024, _POOL_ENTRIES // k)
            pool = torch.randint(n, (size, k), generator=g, device=self.device)
            self._pool = self._redraw_duplicates(pool, None, g)
        return self._pool

    def _make_distinct(
        self, cand: torch.Tensor, rows: torch.Tensor | None, generator: torch.Generator
    ) -> torch.Tensor:
        """Valid candidates: distinct (uniform path: already) and, if asked, not consumed."""
        consumed = None
        if self._consumed is not None:
            consumed = self._consumed if rows is None else self._consumed[rows]
        if self.uniform and consumed is None:
            return cand
        return self._redraw_duplicates(cand, consumed, generator)

    def _redraw_duplicates(
        self, cand: torch.Tensor, consumed: torch.Tensor | None, generator: torch.Generator
    ) -> torch.Tensor:
        """Redraw repeated (and consumed) entries uniformly until every row is valid."""
        n = self.num_items
        for _ in range(_MAX_REDRAW_ROUNDS):
            bad = self._invalid(cand, consumed)
            count = int(bad.sum())
            if count == 0:
                return cand
            cand[bad] = torch.randint(n, (count,), generator=generator, device=self.device)
        return self._exact_fallback(cand, consumed, generator)

    @staticmethod
    def _invalid(cand: torch.Tensor, consumed: torch.Tensor | None) -> torch.Tensor:
        """``(R, K)`` bool: an item already offered at an earlier position, or consumed."""
        # K - 1 comparisons of a position with the positions before it (on the
        # transposed, contiguous layout): cheaper than a sort for small K, and which
        # copy gets redrawn (the later one) does not depend on item labels, which keeps
        # the redrawn sets uniform.
        by_position = cand.T.contiguous()
        bad = torch.zeros(by_position.shape, dtype=torch.bool, device=cand.device)
        for j in range(1, by_position.shape[0]):
            torch.any(by_position[:j] == by_position[j], dim=0, out=bad[j])
        bad = bad.T
        if consumed is not None:
            bad = bad | consumed.gather(1, cand)
        return bad

    def _exact_fallback(
        self, cand: torch.Tensor, consumed: torch.Tensor | None, generator: torch.Generator
    ) -> torch.Tensor:
        """Rows still invalid after the redraw rounds: sample without replacement exactly."""
        bad_rows = self._invalid(cand, consumed).any(1).nonzero().squeeze(1)
        allowed = torch.ones(bad_rows.numel(), self.num_items, device=self.device)
        if consumed is not None:
            allowed[consumed[bad_rows]] = 0
        cand[bad_rows] = torch.multinomial(allowed, self.num_candidates, replacement=False, generator=generator)
        return cand
