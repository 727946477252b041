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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from recsim_mm import kernels
from recsim_mm.item_space import ItemSpace

#: Rounds of redrawing duplicates before the exact (slower) fallback takes over.
_MAX_REDRAW_ROUNDS = 32
#: Rows drawn per block when candidates do not depend on user state (amortises call overhead).
_STREAM_BLOCK_ROWS = 4096
#: Entries (rows x K) of the pool of distinct tuples behind uniform candidate sets.
_POOL_ENTRIES = 2**18
#: Redraw rounds in which a repeated entry is redrawn from its own source (then uniform).
_SOURCE_ROUNDS = 8
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


@runtime_checkable
class CandidateSource(Protocol):
    """What the simulator draws candidates from (`CandidateGenerator`, or an ecosystem's
    creators' offers); pass one as ``Simulator(candidate_source=...)`` or
    `recsim_mm.simulator.Simulator.set_candidate_source`.

    Attributes:
        reads_state: whether `sample` needs the users' observed history.
    """

    @property
    def reads_state(self) -> bool: ...

    def clear(self) -> None:
        """Forget everything drawn from the generator so far (it is being re-seeded)."""

    def clear_rows(self, rows: torch.Tensor) -> None:
        """Forget per-user state of ``rows`` ``(R,)`` int64 (fresh users there)."""

    def record(self, items: torch.Tensor, consumed: torch.Tensor) -> None:
        """Note the ``(B,)`` items shown, ``consumed`` ``(B,)`` bool where clicked."""

    def sample(
        self,
        rows: torch.Tensor | None,
        num_rows: int,
        history_items: torch.Tensor | None,
        history_clicked: torch.Tensor | None,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """``(R, K)`` int64 candidate item rows (see `CandidateGenerator.sample`)."""


def check_candidate_source(source: object) -> None:
    """Raise `TypeError` naming what ``source`` lacks of the `CandidateSource` interface."""
    missing = [name for name in ("reads_state", "clear", "clear_rows", "record", "sample") if not hasattr(source, name)]
    if missing:
        raise TypeError(
            f"candidate source {type(source).__name__} lacks {missing} of the CandidateSource interface "
            "(reads_state, clear, clear_rows, record, sample)"
        )


_POOLS: dict[tuple[int, int, str], torch.Tensor] = {}
#: ``(history_items (R, H) int64, history_clicked (R, H) bool)`` or None (no history).
_History = tuple[torch.Tensor, torch.Tensor] | None


def _uniform_pool(num_items: int, num_candidates: int, device: torch.device) -> torch.Tensor:
    """``(P, K)`` int64 distinct uniform K-tuples over ``range(N)``: a fixed function of
    ``(N, K)`` (own seed, exact rejection sampling), built once per process and device."""
    key = (num_items, num_candidates, str(device))
    if key not in _POOLS:
        g = torch.Generator(device=device)
        g.manual_seed(_POOL_SEED)
        size = max(1024, _POOL_ENTRIES // num_candidates)
        pool = torch.randint(num_items, (size, num_candidates), generator=g, device=device)

        def uniform(sub: torch.Tensor, bad: torch.Tensor, rows: torch.Tensor, round_: int) -> None:
            sub[bad] = torch.randint(num_items, (int(bad.sum()),), generator=g, device=device)

        _POOLS[key] = _redraw_rows(pool, None, g, uniform, num_items)
    return _POOLS[key]


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
        self._block_np: Any = None  # numpy view of the block on CPU
        self._block_used = 0

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

    @property
    def records(self) -> bool:
        """Whether `record` keeps anything (``exclude_consumed``); False lets the simulator skip the call."""
        return self._consumed is not None

    def record(self, items: torch.Tensor, consumed: torch.Tensor) -> None:
        """Note that each user consumed ``items`` ``(B,)`` int64 where ``consumed`` ``(B,)`` bool."""
        if self._consumed is not None:
            rows = consumed.nonzero().squeeze(1)
            self._consumed[rows, items[rows]] = True

    def sample(
        self,
        rows: torch.Tensor | None,
        num_rows: int,
        history_items: torch.Tensor | None,
        history_clicked: torch.Tensor | None,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """Candidates for ``num_rows`` users.

        Args:
            rows: ``(R,)`` int64 user rows (``None``: all rows ``0..R-1``); used by
                ``exclude_consumed``.
            num_rows: ``R``.
            history_items: ``(R, H)`` int64 item rows of the users' observed history
                (needed only when `reads_state`).
            history_clicked: ``(R, H)`` bool, True where that history item was clicked.
            generator: the simulator's generator.

        Returns:
            ``(R, K)`` int64 distinct item rows per user.
        """
        if not self.reads_state:
            return self._from_block(num_rows, generator)
        history = (history_items, history_clicked)
        cand = self._draw(num_rows, generator, history)
        return self._make_valid(cand, rows, generator, history)

    def _from_block(self, num_rows: int, generator: torch.Generator) -> torch.Tensor:
        start = self._next_block_rows(num_rows, generator)
        return self._block[start : start + num_rows]

    @property
    def streams_blocks(self) -> bool:
        """Whether `sample` is this class's own and hands out rows of pre-drawn blocks
        (then `block_rows` gives the same rows); False for a subclass with its own `sample`."""
        return type(self).sample is CandidateGenerator.sample and not self.reads_state

    def block_rows(self, num_rows: int, generator: torch.Generator) -> Any:
        """`sample` for a generator that does not read state, on CPU: the next
        ``(num_rows, K)`` int64 rows of the pre-drawn block as a numpy view (the same
        rows `sample` returns, without a tensor per call)."""
        start = self._next_block_rows(num_rows, generator)
        return self._block_np[start : start + num_rows]

    def _next_block_rows(self, num_rows: int, generator: torch.Generator) -> int:
        """Reserve ``num_rows`` rows of the block (drawing a new block when it runs out); their start."""
        if self._block is None or self._block_used + num_rows > self._block.shape[0]:
            size = max(num_rows, _STREAM_BLOCK_ROWS)
            self._block = self._make_valid(self._draw(size, generator, None), None, generator, None)
            self._block_np = self._block.numpy() if self._block.device.type == "cpu" else None
            self._block_used = 0
        start = self._block_used
        self._block_used += num_rows
        return start

    def _draw(self, r: int, generator: torch.Generator, history: _History) -> torch.Tensor:
        """``(r, K)`` int64 candidates from the configured sources (duplicates possible
        with mixed sources; the uniform path is distinct by construction)."""
        n, dev = self.num_items, self.device
        if self.uniform:
            pool = _uniform_pool(n, self.num_candidates, dev)
            pick = torch.randint(pool.shape[0], (r,), generator=generator, device=dev)
            shift = torch.randint(n, (r, 1), generator=generator, device=dev)
            if dev.type == "cpu" and kernels.enabled():  # the same rows in one pass
                cand = torch.empty(r, self.num_candidates, dtype=torch.long)
                kernels.shifted_rows(pool.numpy(), pick.numpy(), shift.numpy()[:, 0], n, cand.numpy())
                return cand
            cand = pool.index_select(0, pick).add_(shift)
            return cand.sub_(n * (cand >= n))  # mod N: both terms are below N
        cand = torch.empty(r, self.num_candidates, dtype=torch.long, device=dev)
        self._fill(cand, torch.ones(cand.shape, dtype=torch.bool, device=dev), generator, history, True)
        return cand

    def _fill(
        self,
        cand: torch.Tensor,
        where: torch.Tensor,
        generator: torch.Generator,
        history: _History,
        from_sources: bool,
    ) -> None:
        """Draw the entries of ``cand`` ``(R, K)`` marked in ``where`` ``(R, K)`` bool, in place.

        Positions ``[0, popular)`` come from the popular pool, the next ``similar``
        ones from neighbours of clicked history items, the rest (and everything when
        ``from_sources`` is False) uniformly.
        """
        n, dev = self.num_items, self.device
        fresh = torch.randint(n, cand.shape, generator=generator, device=dev)
        if from_sources and self.num_popular:
            p = self.num_popular
            pick = torch.randint(self._popular_pool.numel(), (cand.shape[0], p), generator=generator, device=dev)
            fresh[:, :p] = self._popular_pool[pick]
        if from_sources and self.num_similar and history is not None:
            start, s = self.num_popular, self.num_similar
            history_items, history_clicked = history
            slot = torch.randint(history_items.shape[1], (cand.shape[0], s), generator=generator, device=dev)
            anchor = history_items.gather(1, slot)
            valid = history_clicked.gather(1, slot)
            neighbour = torch.randint(self._neighbours.shape[1], anchor.shape, generator=generator, device=dev)
            similar = self._neighbours[anchor, neighbour]
            fresh[:, start : start + s] = torch.where(valid, similar, fresh[:, start : start + s])
        cand[where] = fresh[where]

    def _make_valid(
        self, cand: torch.Tensor, rows: torch.Tensor | None, generator: torch.Generator, history: _History
    ) -> torch.Tensor:
        """Redraw repeated (and, if asked, consumed) entries until every row is valid.

        A repeated entry is redrawn from its own source for the first rounds (so a
        popular slot stays popular), then uniformly, which always terminates.
        """
        consumed = None
        if self._consumed is not None:
            consumed = self._consumed if rows is None else self._consumed[rows]
        if self.uniform and consumed is None:
            return cand  # distinct by construction

        def refill(sub: torch.Tensor, bad: torch.Tensor, sub_rows: torch.Tensor, round_: int) -> None:
            sub_history = None if history is None else (history[0][sub_rows], history[1][sub_rows])
            self._fill(sub, bad, generator, sub_history, from_sources=round_ < _SOURCE_ROUNDS)

        return _redraw_rows(cand, consumed, generator, refill, self.num_items)


def _invalid_entries(cand: torch.Tensor, consumed: torch.Tensor | None) -> torch.Tensor:
    """``(R, K)`` bool: an item already offered at an earlier position, or consumed."""
    # K - 1 comparisons of a position with the positions before it (on the transposed,
    # contiguous layout): cheaper than a sort for small K, and which copy gets redrawn
    # (the later one) does not depend on item labels, which keeps redrawn sets uniform.
    by_position = cand.T.contiguous()
    bad = torch.zeros(by_position.shape, dtype=torch.bool, device=cand.device)
    for j in range(1, by_position.shape[0]):
        torch.any(by_position[:j] == by_position[j], dim=0, out=bad[j])
    bad = bad.T
    if consumed is not None:
        bad = bad | consumed.gather(1, cand)
    return bad


def _redraw_rows(
    cand: torch.Tensor,
    consumed: torch.Tensor | None,
    generator: torch.Generator,
    refill: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], None],
    num_items: int,
) -> torch.Tensor:
    """Redraw the invalid entries of ``cand`` ``(R, K)`` in place until none is left.

    ``refill(sub, bad, rows, round)`` redraws the entries ``bad`` of the rows ``rows``
    (``sub = cand[rows]``); each round re-checks only the rows just redrawn. After
    ``_MAX_REDRAW_ROUNDS`` (a nearly exhausted catalog) the rest is sampled exactly.
    """
    rows = torch.arange(cand.shape[0], device=cand.device)
    sub = cand
    for round_ in range(_MAX_REDRAW_ROUNDS):
        bad = _invalid_entries(sub, None if consumed is None else consumed[rows])
        row_bad = bad.any(1)
        if not bool(row_bad.any()):
            return cand
        rows, sub, bad = rows[row_bad], sub[row_bad], bad[row_bad]
        refill(sub, bad, rows, round_)
        cand[rows] = sub
    allowed = torch.ones(rows.numel(), num_items, device=cand.device)
    if consumed is not None:
        allowed[consumed[rows]] = 0
    cand[rows] = torch.multinomial(allowed, cand.shape[1], replacement=False, generator=generator)
    return cand


@dataclass(frozen=True)
class ArrivalSchedule:
    """When held-back catalog items enter the candidate pool (item cold start).

    Every item of the item space is encoded up front like the rest; the items a
    schedule names are simply not offered before their step. Steps count simulator
    steps since the simulator was last seeded (``env.reset(seed=...)``), across the
    episodes of all users in between.

    Attributes:
        steps: ``(A,)`` strictly increasing arrival steps, each >= 1.
        rows: ``(A,)`` tuples of the item rows arriving at each step.
    """

    steps: tuple[int, ...]
    rows: tuple[tuple[int, ...], ...]

    @classmethod
    def parse(cls, spec: Any, item_space: ItemSpace) -> ArrivalSchedule:
        """Read ``[{"at": step, "items": [item id or row, ...]}, ...]``.

        Items are item ids (str, `ItemSpace.item_ids`) or rows (int). A batch may
        instead be ``{"at": step, "last": n}``: the last ``n`` rows of the item space
        (a catalog in publication order: its newest items).

        Raises:
            ValueError: not such a list, a step that is not an int >= 1 or not larger
                than the one before, an unknown item id or row out of range (named), an
                item scheduled twice, an empty batch.
        """
        if not isinstance(spec, list | tuple) or not spec:
            raise ValueError(f"new_items must be a non-empty list of {{'at': step, 'items': [...]}}; got {spec!r}")
        steps, rows, seen = [], [], set()
        for i, batch in enumerate(spec):
            if not isinstance(batch, dict) or set(batch) not in ({"at", "items"}, {"at", "last"}):
                raise ValueError(f"new_items[{i}] must be a dict with keys 'at' and 'items' (or 'at' and "
                                 f"'last'); got {batch!r}")
            if "last" in batch:
                last = batch["last"]
                if isinstance(last, bool) or not isinstance(last, int) or not 1 <= last < item_space.num_items:
                    raise ValueError(f"new_items[{i}]['last']={last!r}: expected an int in [1, "
                                     f"{item_space.num_items}) (the item space has {item_space.num_items} items)")
                batch = {"at": batch["at"], "items": list(range(item_space.num_items - last, item_space.num_items))}
            at, items = batch["at"], batch["items"]
            if isinstance(at, bool) or not isinstance(at, int) or at < 1:
                raise ValueError(f"new_items[{i}]['at']={at!r}: expected an int step >= 1")
            if steps and at <= steps[-1]:
                raise ValueError(f"new_items[{i}]['at']={at} does not come after the previous arrival "
                                 f"(step {steps[-1]}): arrival steps must increase")
            if not isinstance(items, list | tuple) or not items:
                raise ValueError(f"new_items[{i}]['items'] must be a non-empty list of item ids or rows")
            batch_rows = []
            for item in items:
                if isinstance(item, str):
                    try:
                        row = int(item_space.index_of([item])[0])
                    except KeyError as exc:
                        raise ValueError(f"new_items[{i}]: {exc.args[0]}") from None
                elif isinstance(item, int) and not isinstance(item, bool) and 0 <= item < item_space.num_items:
                    row = item
                else:
                    raise ValueError(f"new_items[{i}]: item {item!r} is neither an item id nor a row in "
                                     f"[0, {item_space.num_items})")
                if row in seen:
                    raise ValueError(f"new_items[{i}]: item {item!r} is scheduled twice")
                seen.add(row)
                batch_rows.append(row)
            steps.append(at)
            rows.append(tuple(batch_rows))
        return cls(tuple(steps), tuple(rows))

    def arrival_steps(self, num_items: int) -> torch.Tensor:
        """``(N,)`` int64 step from which each item is offered (0 for the initial catalog)."""
        out = torch.zeros(num_items, dtype=torch.long)
        for step, rows in zip(self.steps, self.rows, strict=True):
            out[list(rows)] = step
        return out

    @property
    def new_rows(self) -> torch.Tensor:
        """``(M,)`` int64 rows of every scheduled item."""
        return torch.tensor([row for rows in self.rows for row in rows], dtype=torch.long)


class ArrivingCatalog:
    """A `CandidateSource` over a growing catalog: K distinct items, uniform over the
    items available at the current step (`ArrivalSchedule`).

    The clock advances once per simulator step (`record`) and restarts when the
    simulator is re-seeded (`clear`). Draws are ``rand(R, N)`` keys with the items not
    yet arrived masked out, top K: exact and uniform, ``O(R N)`` per step.

    Args:
        item_space: the catalog (all items, new ones included).
        num_candidates: ``K``; at most the size of the initial catalog.
        schedule: the arrivals.

    Attributes:
        step: simulator steps since the last `clear`.
        arrival: ``(N,)`` int64 arrival step of every item (0 = from the start).
    """

    reads_state = False

    def __init__(self, item_space: ItemSpace, num_candidates: int, schedule: ArrivalSchedule):
        self.schedule = schedule
        self.num_candidates = num_candidates
        self.arrival = schedule.arrival_steps(item_space.num_items).to(item_space.device)
        initial = int((self.arrival == 0).sum())
        if initial < num_candidates:
            raise ValueError(f"new_items holds back {item_space.num_items - initial} of {item_space.num_items} items; "
                             f"the {initial} left cannot fill K={num_candidates} candidates")
        self.step = 0

    def clear(self) -> None:
        self.step = 0

    def clear_rows(self, rows: torch.Tensor) -> None:
        """Nothing per user."""

    def record(self, items: torch.Tensor, consumed: torch.Tensor) -> None:
        self.step += 1

    def available(self) -> torch.Tensor:
        """``(N,)`` bool: items offered at the current step."""
        return self.arrival <= self.step

    def sample(self, rows, num_rows, history_items, history_clicked, generator) -> torch.Tensor:
        keys = torch.rand(num_rows, len(self.arrival), generator=generator, device=self.arrival.device)
        keys.masked_fill_(~self.available(), -1.0)
        return keys.topk(self.num_candidates, dim=1).indices
