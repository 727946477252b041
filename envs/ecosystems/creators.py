"""Content creators choose where in the item space to publish; a fixed recommender serves the users.

Entry points, PettingZoo style: `parallel_env` (the `CreatorEcosystemEnv`), `raw_env`
and `env` (its AEC form through ``pettingzoo.utils.parallel_to_aec``). Also here:
`ContentMap`, the low-dimensional map of the item space creators move in, and
`CreatorOffers`, the candidate source that offers users the creators' content.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from pettingzoo.utils.conversions import parallel_to_aec

from envs.ecosystems.base import (
    SIMULATION_OPTIONS,
    EcosystemEnv,
    build_population,
    check_count,
    short_repr,
)
from envs.rec_env import check_actions
from recsim_mm.candidates import CandidateGenerator
from recsim_mm.ecosystem_metrics import content_diversity, gini, position_spread
from recsim_mm.item_space import ItemSpace
from recsim_mm.pca import principal_components

RECOMMENDERS = ("affinity", "random")
CREATOR_REWARDS = ("exposure", "engagement")

#: Recommender callable: batched observation dict (torch, leading U) -> (U,) candidate positions.
RecommenderFn = Callable[[dict[str, torch.Tensor]], Any]


class ContentMap:
    """A ``q``-dimensional map of the item space: where creators stand and publish.

    Coordinates are the first ``q`` principal components of the items' fused
    vectors (centred), each scaled so that the items span ``[-1, 1]`` on it; each
    component's sign is fixed so its largest loading is positive (deterministic).

    Args:
        item_space: the catalog.
        dim: ``q``, at most ``min(N, d)``.

    Attributes:
        coords: ``(N, q)`` float32 map coordinates of every item, in ``[-1, 1]``.
    """

    def __init__(self, item_space: ItemSpace, dim: int) -> None:
        fused = item_space.fused
        limit = min(fused.shape)
        if not 1 <= dim <= limit:
            raise ValueError(
                f"map_dim={dim} must be in [1, {limit}] (min of items and vector width)"
            )
        self.dim = dim
        self.mean, self.components, _ = principal_components(fused, dim)
        raw = (fused - self.mean) @ self.components.T
        self.scale = raw.abs().amax(0).clamp_min(1e-12)
        self.coords = raw / self.scale

    def project(self, vectors: torch.Tensor) -> torch.Tensor:
        """``(n, d)`` fused vectors -> ``(n, q)`` map coordinates (items span ``[-1, 1]``)."""
        return (vectors - self.mean) @ self.components.T / self.scale

    def nearest(self, positions: torch.Tensor, count: int) -> torch.Tensor:
        """``(C, count)`` int64: the ``count`` items nearest each of the ``(C, q)`` positions, nearest first."""
        distances = torch.cdist(positions, self.coords)
        return distances.topk(count, dim=1, largest=False).indices


class CreatorOffers(CandidateGenerator):
    """Candidate source of the creators ecosystem (the simulator core's candidate generator).

    A creator's portfolio is the ``portfolio_size`` catalog items nearest its map
    position: the kind of content it currently produces. Each step every user is
    offered ``per_creator`` distinct items of every creator's portfolio (uniform), in
    a random order, so ``K = C * per_creator`` candidates; ``owner`` says whose each
    one is. Two creators at the same place may offer the same item (each copy counts
    for the creator whose offer it is).

    A `recsim_mm.candidates.CandidateGenerator` subclass, so the simulator uses it
    like its own: ``sample`` draws the offers; nothing depends on users' history.

    Args:
        item_space: the catalog (on the simulator's device).
        num_users: ``U``.
        num_creators: ``C``.
        per_creator: offers per creator per user and step.
        device: where the tensors live.

    Attributes:
        portfolios: ``(C, portfolio_size)`` int64 item rows.
        owner: ``(U, K)`` int64 creator of each current candidate.
    """

    def __init__(
        self, item_space: ItemSpace, num_users: int, num_creators: int, per_creator: int
    ) -> None:
        super().__init__(item_space, num_creators * per_creator, num_users)
        self.num_creators, self.per_creator = num_creators, per_creator
        device = item_space.device
        self.portfolios = torch.zeros(num_creators, 1, dtype=torch.long, device=device)
        self.owner = torch.zeros(
            num_users, num_creators * per_creator, dtype=torch.long, device=device
        )
        self._owner_of_slot = torch.arange(num_creators, device=device).repeat_interleave(
            per_creator
        )

    @property
    def reads_state(self) -> bool:
        """Offers do not depend on users' history."""
        return False

    def sample(
        self,
        rows: torch.Tensor | None,
        num_rows: int,
        history_items: torch.Tensor | None,
        history_clicked: torch.Tensor | None,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """``(R, K)`` int64 offers for ``rows`` (``None``: all rows); history is not used."""
        c, m = self.portfolios.shape
        dev = self.portfolios.device
        keys = torch.rand(num_rows, c, m, generator=generator, device=dev)
        pick = keys.topk(self.per_creator, dim=2).indices  # distinct portfolio slots per creator
        items = (
            self.portfolios.unsqueeze(0)
            .expand(num_rows, c, m)
            .gather(2, pick)
            .reshape(num_rows, -1)
        )
        order = torch.rand(items.shape, generator=generator, device=dev).argsort(dim=1)
        owner = self._owner_of_slot.expand(num_rows, -1).gather(1, order)
        if rows is None:
            self.owner.copy_(owner)
        else:
            self.owner[rows] = owner
        return items.gather(1, order)

    def record(self, items: torch.Tensor, consumed: torch.Tensor) -> None:
        """Offers do not depend on what users consumed: nothing to record."""

    def clear(self) -> None:
        """No pre-drawn state to forget."""

    def clear_rows(self, rows: torch.Tensor) -> None:
        """No per-user state to forget."""


class CreatorEcosystemEnv(EcosystemEnv):
    """C content creators choose where in the item space to publish; a fixed recommender serves U users.

    Creators stand at positions in a ``q``-dimensional `ContentMap` of the item space
    (principal components of the fused text+image vectors, items spanning
    ``[-1, 1]^q``). A creator publishes the catalog items nearest its position (its
    portfolio of ``portfolio_size`` items). Each step every user is offered
    ``offers_per_creator`` items from every creator's portfolio (``K = C *
    offers_per_creator`` candidates); the platform's fixed recommender picks one per
    user; the user responds as the user model says. Creators are rewarded by the
    exposure (or engagement) their items get, and move to publish elsewhere, at most
    ``max_move`` per map axis per step. All U users are one torch batch in one
    `recsim_mm.simulator.Simulator`; users whose session ends are replaced by newcomers.

    ## Agents
    ``creator_0`` ... ``creator_{C-1}``, homogeneous (identical spaces and an
    agent-relative observation), so SuperSuit can share one policy among them.

    ## Action Space (per creator)
    ``Box(-1, 1, (q,), float32)``: the move, as a fraction of ``max_move`` per map
    axis. The new position is ``clip(position + max_move * action, -1, 1)`` (the
    map's edge is a wall). A move published at step t reaches users from step t + 1
    (this step's candidates were drawn from where the creators stood). A wrongly
    shaped, NaN or out-of-``[-1, 1]`` action raises `ValueError` naming the creator
    and the value; nothing is clipped silently.

    ## Observation Space (per creator)
    ``Box(float32, (q * C + 2 + q,))``, the concatenation of:

    - ``[0, q)``: own position;
    - ``[q, q * C)``: the other creators' positions, in agent order (self skipped);
    - ``q * C``: own exposure share last step (fraction of users recommended its item);
    - ``q * C + 1``: own engagement last step, minutes per user of the population;
    - ``[q * C + 2, q * C + 2 + q)``: demand, the mean map position of the items users
      clicked last step (0 when nobody clicked).

    ## Rewards
    ``creator_reward="exposure"`` (default): the creator's exposure share of the step
    (users recommended one of its items / U); ``"engagement"``: minutes users spent
    with its items, per user of the population.

    ## Recommender
    ``"affinity"`` (default): true-affinity greedy, the candidate with the highest
    true affinity for each user (a privileged platform: an upper bound of a greedy
    ranker); ``"random"``; or a callable ``f(observation) -> (U,)`` candidate positions
    on the batched observation dict of the simulator (torch tensors, see
    docs/environments.md), e.g. ``recsim_mm.ranker.Ranker.policy()``, the greedy ranker.

    ## Starting State
    Creators at the map positions of ``C`` distinct random catalog items (or
    ``initial_positions``), U fresh users.

    ## Episode End
    Every creator is truncated after ``max_steps`` steps.

    ## Info (per creator)
    ``position`` ((q,) float32); after a step also ``exposure`` (int, users recommended
    its item) and ``engagement`` (float, minutes spent with its items).

    ## Metrics
    ``self.history`` one record per step: ``exposure`` (C,) counts, ``exposure_gini``,
    ``engagement`` (C,) minutes, ``welfare`` (mean minutes per user), ``diversity``
    (of the recommended items), ``spread`` (mean distance between creators),
    ``positions`` (C, q).

    ## Arguments
    ``num_creators`` (C, default 4), ``num_users`` (U, default 64), ``max_steps``
    (default 50), ``map_dim`` (q, default 4), ``portfolio_size`` (default 10),
    ``offers_per_creator`` (default 2), ``max_move`` (default 0.1 map units),
    ``recommender``, ``creator_reward``, ``initial_positions`` ((C, q) array in
    ``[-1, 1]``), ``render_mode`` and the simulation options ``user_model``,
    ``user_params``, ``item_space``, ``item_space_options``, ``obs_mode``,
    ``history_length``, ``track_truth``, ``device`` (default ``"cpu"``).

    ## Version History
    - v0: initial version.
    """

    metadata = {**EcosystemEnv.metadata, "name": "recsim_mm_creators_v0"}

    def __init__(
        self,
        num_creators: int = 4,
        num_users: int = 64,
        max_steps: int = 50,
        map_dim: int = 4,
        portfolio_size: int = 10,
        offers_per_creator: int = 2,
        max_move: float = 0.1,
        recommender: str | RecommenderFn = "affinity",
        creator_reward: str = "exposure",
        initial_positions: Any = None,
        render_mode: str | None = None,
        **options: Any,
    ) -> None:
        super().__init__(render_mode)
        self.num_creators = c = check_count("num_creators", num_creators, 1)
        self.num_users = u = check_count("num_users", num_users, 1)
        self.max_steps = check_count("max_steps", max_steps, 1)
        self.portfolio_size = check_count("portfolio_size", portfolio_size, 1)
        self.offers_per_creator = k = check_count("offers_per_creator", offers_per_creator, 1)
        if k > self.portfolio_size:
            raise ValueError(f"offers_per_creator={k} exceeds portfolio_size={self.portfolio_size}")
        if not (
            isinstance(max_move, (int, float))
            and not isinstance(max_move, bool)
            and 0 < max_move <= 2
        ):
            raise ValueError(f"max_move={max_move!r} must be a number in (0, 2] map units")
        self.max_move = float(max_move)
        if not (callable(recommender) or recommender in RECOMMENDERS):
            raise ValueError(
                f"recommender={recommender!r} is invalid; expected one of {RECOMMENDERS} or a callable"
            )
        if creator_reward not in CREATOR_REWARDS:
            raise ValueError(
                f"creator_reward={creator_reward!r} is invalid; expected one of {CREATOR_REWARDS}"
            )
        self.recommender, self.creator_reward = recommender, creator_reward
        allowed = tuple(
            name for name in SIMULATION_OPTIONS if name not in ("num_candidates", "candidates")
        )
        self.simulator = sim = build_population(
            options, u, self.max_steps, allowed, fixed={"num_candidates": c * k}
        )
        if recommender == "affinity" and not sim.track_truth:
            raise ValueError(
                "recommender='affinity' reads true affinities; it needs track_truth=True"
            )
        space = sim.item_space
        if self.portfolio_size > space.num_items:
            raise ValueError(
                f"portfolio_size={self.portfolio_size} exceeds the {space.num_items} items of the catalog"
            )
        if c > space.num_items:
            raise ValueError(
                f"num_creators={c} exceeds the {space.num_items} items (creators start on distinct items)"
            )
        self.content_map = ContentMap(space, check_count("map_dim", map_dim, 1))
        self.map_dim = q = self.content_map.dim
        self._initial_positions = self._check_positions(initial_positions)
        self.offers = CreatorOffers(space, u, c, k)
        # The simulator draws its candidates from the creators' offers (a CandidateSource).
        sim.set_candidate_source(self.offers)
        self.positions = torch.zeros(c, q, device=sim.device)
        """``(C, q)`` float32 creator positions in the content map."""
        self.possible_agents = [f"creator_{i}" for i in range(c)]
        max_engagement = float(sim.users.max_engagement())
        low = np.concatenate([-np.ones(q * c), [0.0, 0.0], -np.ones(q)]).astype(np.float32)
        high = np.concatenate([np.ones(q * c), [1.0, max_engagement], np.ones(q)]).astype(
            np.float32
        )
        for agent in self.possible_agents:
            self._observation_spaces[agent] = spaces.Box(low, high, dtype=np.float32)
            self._action_spaces[agent] = spaces.Box(-1.0, 1.0, (q,), np.float32)
        self._exposure_share = torch.zeros(c, device=sim.device)
        self._engagement_per_user = torch.zeros(c, device=sim.device)
        self._demand = torch.zeros(q, device=sim.device)
        self._last_record: dict[str, Any] = {}

    def _check_positions(self, positions: Any) -> torch.Tensor | None:
        if positions is None:
            return None
        arr = np.asarray(positions, dtype=np.float64)
        expected = (self.num_creators, self.map_dim)
        if arr.shape != expected:
            raise ValueError(
                f"initial_positions has shape {arr.shape}; expected {expected} (creators x map_dim)"
            )
        if not np.isfinite(arr).all() or np.abs(arr).max() > 1:
            raise ValueError(
                f"initial_positions must be finite and within [-1, 1]; got {short_repr(arr)}"
            )
        return torch.as_tensor(arr, dtype=torch.float32, device=self.simulator.device)

    # -- episode --------------------------------------------------------------------------------
    def _reset_ecosystem(self):
        sim = self.simulator
        if self._initial_positions is not None:
            self.positions = self._initial_positions.clone()
        else:
            n = sim.item_space.num_items
            start = torch.randperm(n, generator=sim.generator, device=sim.device)[
                : self.num_creators
            ]
            self.positions = self.content_map.coords[start].clone()
        self._publish()
        sim.reset()
        self._exposure_share.zero_()
        self._engagement_per_user.zero_()
        self._demand.zero_()
        self._last_record = {}
        infos = {
            agent: {"position": self.positions[i].cpu().numpy().copy()}
            for i, agent in enumerate(self.agents)
        }
        return self._observations(self.agents), infos

    def _publish(self) -> None:
        self.offers.portfolios = self.content_map.nearest(self.positions, self.portfolio_size)

    def _check_agent_action(self, agent: str, action: Any) -> np.ndarray:
        q = self.map_dim
        arr = np.asarray(action)
        if arr.shape != (q,):
            raise ValueError(
                f"move has shape {arr.shape}; expected ({q},), one entry per map axis (action={short_repr(arr)})"
            )
        if arr.dtype.kind not in "fiu":
            raise ValueError(
                f"move has dtype {arr.dtype}; expected numbers (action={short_repr(arr)})"
            )
        if not np.isfinite(arr).all():
            raise ValueError(f"move contains NaN or infinity (action={short_repr(arr)})")
        outside = np.abs(arr) > 1
        if outside.any():
            raise ValueError(
                f"move component {float(arr[outside][0])} is outside [-1, 1] (a move is a fraction of "
                f"max_move={self.max_move} per map axis) (action={short_repr(arr)})"
            )
        return arr.astype(np.float32)

    def _recommend(self) -> torch.Tensor:
        """``(U,)`` int64 candidate position the platform's recommender picks for each user."""
        sim = self.simulator
        if self.recommender == "affinity":
            return sim.candidate_affinity.argmax(dim=1)
        if self.recommender == "random":
            return torch.randint(
                sim.num_candidates, (self.num_users,), generator=sim.generator, device=sim.device
            )
        picked = self.recommender(sim.observation())
        if isinstance(picked, torch.Tensor):
            picked = picked.detach().cpu().numpy()
        try:
            positions = check_actions(picked, sim.num_candidates, 1, batch=self.num_users)[:, 0]
        except ValueError as error:
            raise ValueError(f"the recommender returned an invalid choice: {error}") from None
        return torch.from_numpy(positions).to(sim.device)

    def _step_ecosystem(self, actions: dict[str, np.ndarray]):
        sim, c = self.simulator, self.num_creators
        live = list(self.agents)
        moves = torch.zeros(c, self.map_dim, device=sim.device)
        for agent, move in actions.items():
            moves[self.possible_agents.index(agent)] = torch.from_numpy(move)
        self.positions = (self.positions + self.max_move * moves).clamp_(-1.0, 1.0)
        self._publish()  # the next candidates (drawn at the end of the core's step) come from here

        chosen = self._recommend()
        owner = self.offers.owner.gather(1, chosen.unsqueeze(1)).squeeze(1)
        recommended = sim.candidates.gather(1, chosen.unsqueeze(1)).squeeze(1)
        out = sim.step(chosen.unsqueeze(1))
        exposure = torch.bincount(owner, minlength=c)
        engagement = torch.zeros(c, device=sim.device).index_add_(0, owner, out.engagement)
        self._exposure_share = exposure.float() / self.num_users
        self._engagement_per_user = engagement / self.num_users
        clicked = recommended[out.click]
        if clicked.numel():
            self._demand = self.content_map.coords[clicked].mean(0)
        else:
            self._demand = torch.zeros(self.map_dim, device=sim.device)
        self._replace_departed(out.terminated)
        self.num_steps += 1

        exposure_np = exposure.cpu().numpy()
        record = {
            "step": self.num_steps,
            "exposure": exposure_np,
            "exposure_gini": gini(exposure_np),
            "engagement": engagement.cpu().numpy(),
            "welfare": float(out.engagement.mean()),
            "diversity": content_diversity(recommended, sim.item_space.fused),
            "spread": position_spread(self.positions),
            "positions": self.positions.cpu().numpy().copy(),
        }
        self.history.append(**record)
        self._last_record = record

        reward_source = (
            self._exposure_share if self.creator_reward == "exposure" else self._engagement_per_user
        )
        rewards = {agent: float(reward_source[self.possible_agents.index(agent)]) for agent in live}
        truncated = self.num_steps >= self.max_steps
        terminations = dict.fromkeys(live, False)
        truncations = dict.fromkeys(live, truncated)
        infos = {}
        for agent in live:
            i = self.possible_agents.index(agent)
            infos[agent] = {
                "position": record["positions"][i].copy(),
                "exposure": int(exposure_np[i]),
                "engagement": float(record["engagement"][i]),
            }
        observations = self._observations(live)
        if truncated:
            self.agents = []
        return observations, rewards, terminations, truncations, infos

    def _observations(self, agents: list[str]) -> dict[str, np.ndarray]:
        c = self.num_creators
        positions = self.positions.cpu().numpy()
        share = self._exposure_share.cpu().numpy()
        engagement = self._engagement_per_user.cpu().numpy()
        demand = self._demand.cpu().numpy()
        out = {}
        for agent in agents:
            i = self.possible_agents.index(agent)
            others = positions[[j for j in range(c) if j != i]].reshape(-1)
            out[agent] = np.concatenate(
                [positions[i], others, [share[i], engagement[i]], demand]
            ).astype(np.float32)
        return out

    def _summary(self) -> str:
        if not self._last_record:
            return f"new ecosystem: {self.num_creators} creators, {self.num_users} users, recommender {self._recommender_name()}"
        rec = self._last_record
        shares = " | ".join(
            f"{a} {e / self.num_users:.2f}"
            for a, e in zip(self.possible_agents, rec["exposure"], strict=True)
        )
        return (
            f"step {rec['step']}/{self.max_steps}: exposure {shares}; Gini {rec['exposure_gini']:.2f}; "
            f"diversity {rec['diversity']:.2f}; spread {rec['spread']:.2f}; welfare {rec['welfare']:.2f} min/user"
        )

    def _recommender_name(self) -> str:
        return (
            self.recommender
            if isinstance(self.recommender, str)
            else type(self.recommender).__name__
        )


def parallel_env(**kwargs: Any) -> CreatorEcosystemEnv:
    """The creators ecosystem as a PettingZoo `ParallelEnv` (arguments: `CreatorEcosystemEnv`)."""
    return CreatorEcosystemEnv(**kwargs)


def raw_env(**kwargs: Any):
    """The AEC form: ``pettingzoo.utils.parallel_to_aec(parallel_env(**kwargs))`` (order enforced)."""
    return parallel_to_aec(parallel_env(**kwargs))


def env(**kwargs: Any):
    """The AEC environment (PettingZoo's default entry point); same as `raw_env`."""
    return raw_env(**kwargs)
