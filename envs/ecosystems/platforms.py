"""Competing platforms: M recommender agents share one user population (PettingZoo ParallelEnv).

Entry points, PettingZoo style: `parallel_env` (the `PlatformCompetitionEnv`),
`raw_env` and `env` (its AEC form through ``pettingzoo.utils.parallel_to_aec``).
The user platform-choice model is `PlatformChoiceConfig`; docs/ecosystems.md
describes it with examples.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector.utils import batch_space
from pettingzoo.utils.conversions import parallel_to_aec

from envs.ecosystems.base import EcosystemEnv, build_population, check_count
from envs.rec_env import check_actions, observation_space
from recsim_mm.ecosystem_metrics import content_diversity, market_share
from recsim_mm.observation import (
    CANDIDATE_ITEMS,
    HISTORY_FEEDBACK,
    HISTORY_ITEMS,
    HISTORY_MASK,
    TIME_LEFT,
    USER_FEATURES,
)
from recsim_mm.sampling import gumbel_max


@dataclass(frozen=True)
class PlatformChoiceConfig:
    """How each user picks the platform to visit (units in brackets).

    Every user ``u`` keeps a satisfaction ``s[u, p]`` with every platform ``p``: an
    exponential moving average of the engagement [minutes] the user got on their
    visits there, starting at ``initial_satisfaction``. Before each step the user
    visits platform ``p`` with probability

        ``softmax_p((s[u, p] + switching_cost * [p == last platform of u]) / temperature)``

    over the platforms still open. After the visit, ``s[u, p] <- (1 - satisfaction_rate)
    * s[u, p] + satisfaction_rate * engagement`` for the visited platform only
    (the others keep the user's memory of them). A disappointing visit lowers the
    visited platform's satisfaction, so the user drifts to another once the gap
    beats the switching cost; a user the user model ends (too many disappointments
    in a row, or time budget spent) leaves and a newcomer, satisfied equally with
    every platform, takes their place.

    Attributes:
        satisfaction_rate: EMA weight of the newest visit, in (0, 1].
        initial_satisfaction: satisfaction a newcomer has with every platform [minutes].
        switching_cost: bonus of the platform visited last [minutes]; 0: no loyalty.
        temperature: softmax temperature [minutes]; small: users pick the best-liked
            platform almost surely.
    """

    satisfaction_rate: float = 0.3
    initial_satisfaction: float = 5.0
    switching_cost: float = 1.0
    temperature: float = 1.0

    def __post_init__(self) -> None:
        checks = {
            "satisfaction_rate": (0 < self.satisfaction_rate <= 1, "in (0, 1]"),
            "initial_satisfaction": (
                math.isfinite(self.initial_satisfaction),
                "a finite number of minutes",
            ),
            "switching_cost": (
                math.isfinite(self.switching_cost) and self.switching_cost >= 0,
                ">= 0 minutes",
            ),
            "temperature": (
                math.isfinite(self.temperature) and self.temperature > 0,
                "> 0 minutes",
            ),
        }
        for name, (ok, expected) in checks.items():
            if not ok:
                raise ValueError(
                    f"platform choice {name}={getattr(self, name)!r} is invalid; expected {expected}"
                )

    @classmethod
    def from_options(
        cls, options: PlatformChoiceConfig | dict[str, Any] | None
    ) -> PlatformChoiceConfig:
        """From a dict of fields; unknown names raise `ValueError` listing the valid ones."""
        if options is None:
            return cls()
        if isinstance(options, cls):
            return options
        if not isinstance(options, dict):
            raise ValueError(
                f"choice must be a dict or a PlatformChoiceConfig; got {type(options).__name__}"
            )
        valid = [f.name for f in dataclasses.fields(cls)]
        for name in options:
            if name not in valid:
                raise ValueError(f"unknown platform choice option {name!r}; valid options: {valid}")
        return cls(**options)


class PlatformCompetitionEnv(EcosystemEnv):
    """M recommender platforms compete for one population of U simulated users.

    Each step every user visits one platform, chosen by the platform-choice model
    (`PlatformChoiceConfig`: softmax over the user's satisfaction with each platform
    plus a switching cost). The visited platform recommends one of the user's ``K``
    candidates (the content pool is shared: every platform sees the same candidates
    for a user; platforms compete on what they pick). The user responds as the user
    model says (click, engagement minutes, satiation, drift, budget), and their
    satisfaction with that platform moves toward the engagement. Users whose session
    ends leave; newcomers take their rows. All U users are one torch batch in one
    `recsim_mm.simulator.Simulator`.

    ## Agents
    ``platform_0`` ... ``platform_{M-1}``, homogeneous (identical spaces), so
    SuperSuit's ``pettingzoo_env_to_vec_env_v1`` can share one policy among them.

    ## Action Space (per platform)
    ``MultiDiscrete([K] * U)``: a candidate position for every user row. Only the
    entries of the users visiting this platform (``observation["visiting"] == 1``)
    are used; the others are ignored but must still be valid positions. An invalid
    action raises `ValueError` naming the platform and the value.

    ## Observation Space (per platform)
    ``Dict``: the recsim-mm observation (docs/environments.md) batched over the U
    users, restricted to what this platform saw, plus who visits now:

    - ``history_items``: ``(U, H, d)`` float32 (``obs_mode="embeddings"``) or
      ``(U, H)`` int64 (``"ids"``): the user's last H steps, zeroed where the user
      was on another platform (a platform sees only its own interactions).
    - ``history_feedback``: ``(U, H, 2)`` float32 ``[clicked, engagement minutes]``,
      zeroed likewise.
    - ``history_mask``: ``(U, H)`` float32, 1 for a past step of the user on this platform.
    - ``candidate_items``: ``(U, K, d)`` float32 or ``(U, K)`` int64.
    - ``time_left``: ``(U, 1)`` float32 minutes left in each user's session.
    - ``user_features``: ``(U, F)`` float32, only for user models with features.
    - ``visiting``: ``(U,)`` float32, 1 where the user visits this platform this step.

    ## Rewards
    Each platform's engagement: the minutes its visitors engaged this step (summed).

    ## Starting State
    U fresh users, all equally satisfied with every platform (their first visit is
    uniform up to the switching cost, which no one has yet).

    ## Episode End
    All platforms are truncated after ``max_steps`` steps. With ``exit_share > 0``
    a platform whose market share stays below ``exit_share`` for ``exit_patience``
    steps in a row exits (terminated); users no longer choose it.

    ## Info (per platform)
    At reset and every step: ``visiting_share`` (float, share of users visiting it
    in the coming step), ``candidate_affinity`` ((U, K) float32 true affinities of
    the candidates in the observation: PRIVILEGED, for oracle baselines only;
    absent with ``track_truth=False``). After a step also ``visitors`` (int),
    ``departures`` (int, its visitors who left after this step) and ``engagement``
    ((U,) float32 minutes of its visitors, 0 for the other users: a per-user reward
    signal).

    ## Metrics
    ``self.history`` (`recsim_mm.ecosystem_metrics.EcosystemHistory`), one record
    per step: ``market_share`` (M,), ``engagement`` (M,) minutes, ``welfare``
    (mean minutes per user), ``departures`` (M,), ``diversity`` (of the items
    recommended over the population), ``open`` (M,) bool.

    ## Arguments
    ``num_platforms`` (M, default 2), ``num_users`` (U, default 64), ``max_steps``
    (default 50), ``choice`` (`PlatformChoiceConfig` or its fields as a dict),
    ``exit_share`` (default 0: platforms never exit), ``exit_patience`` (default 10),
    ``render_mode`` (None, ``"ansi"``, ``"human"``) and the simulation options of
    `envs.rec_env.RecEnvOptions`: ``user_model``, ``user_params``, ``item_space``,
    ``item_space_options``, ``obs_mode``, ``num_candidates``, ``history_length``,
    ``candidates``, ``track_truth``, ``device`` (default ``"cpu"``).

    ## Version History
    - v0: initial version.
    """

    metadata = {**EcosystemEnv.metadata, "name": "recsim_mm_platforms_v0"}

    def __init__(
        self,
        num_platforms: int = 2,
        num_users: int = 64,
        max_steps: int = 50,
        choice: PlatformChoiceConfig | dict[str, Any] | None = None,
        exit_share: float = 0.0,
        exit_patience: int = 10,
        render_mode: str | None = None,
        **options: Any,
    ) -> None:
        super().__init__(render_mode)
        self.num_platforms = m = check_count("num_platforms", num_platforms, 1)
        self.num_users = u = check_count("num_users", num_users, 1)
        self.max_steps = check_count("max_steps", max_steps, 1)
        self.choice = PlatformChoiceConfig.from_options(choice)
        if not (isinstance(exit_share, (int, float)) and 0 <= exit_share < 1 / m):
            raise ValueError(
                f"exit_share={exit_share!r} must be in [0, 1/M) = [0, {1 / m:.3f}) so that a platform always stays open"
            )
        self.exit_share = float(exit_share)
        self.exit_patience = check_count("exit_patience", exit_patience, 1)
        self.simulator = sim = build_population(options, u, self.max_steps)
        self.num_candidates = sim.num_candidates
        self.possible_agents = [f"platform_{p}" for p in range(m)]
        per_user = observation_space(sim)
        for agent in self.possible_agents:
            batched = batch_space(per_user, u)
            keys = {key: batched[key] for key in per_user}
            keys["visiting"] = spaces.Box(0.0, 1.0, (u,), np.float32)
            self._observation_spaces[agent] = spaces.Dict(keys)
            self._action_spaces[agent] = spaces.MultiDiscrete(
                np.full(u, self.num_candidates, dtype=np.int64)
            )
        dev = sim.device
        self.satisfaction = torch.zeros(u, m, device=dev)
        """``(U, M)`` float32 minutes: each user's satisfaction with each platform."""
        self.visiting = torch.zeros(u, dtype=torch.long, device=dev)
        """``(U,)`` int64: the platform each user visits in the coming step."""
        self.last_platform = torch.full((u,), -1, dtype=torch.long, device=dev)
        # Platform of each step in the users' observed history window, aligned with the
        # simulator's window (newest last); -1 before the user's first step.
        self._history_platform = torch.full(
            (u, sim.history_length), -1, dtype=torch.long, device=dev
        )
        self._open = torch.ones(m, dtype=torch.bool, device=dev)
        self._low_share_steps = np.zeros(m, dtype=np.int64)
        self._actions = torch.zeros(m, u, dtype=torch.long, device=dev)
        self._last_record: dict[str, Any] = {}

    # -- episode --------------------------------------------------------------------------------
    def _reset_ecosystem(self):
        sim = self.simulator
        sim.reset()
        self.satisfaction.fill_(self.choice.initial_satisfaction)
        self.last_platform.fill_(-1)
        self._history_platform.fill_(-1)
        self._open.fill_(True)
        self._low_share_steps[:] = 0
        self._last_record = {}
        self._choose_platforms()
        infos = self._infos(step=None)
        return self._observations(), infos

    def _check_agent_action(self, agent: str, action: Any) -> np.ndarray:
        return check_actions(action, self.num_candidates, 1, batch=self.num_users)[:, 0]

    def _step_ecosystem(self, actions: dict[str, np.ndarray]):
        sim, m = self.simulator, self.num_platforms
        live = list(self.agents)
        for agent, action in actions.items():
            self._actions[self.possible_agents.index(agent)] = torch.from_numpy(action)
        visited = self.visiting
        positions = self._actions.gather(0, visited.unsqueeze(0)).squeeze(
            0
        )  # (U,) each user's platform's pick
        recommended = sim.candidates.gather(1, positions.unsqueeze(1)).squeeze(1)
        out = sim.step(positions.unsqueeze(1))
        engagement = out.engagement
        shares = market_share(visited, m)
        per_platform = torch.zeros(m, device=sim.device).index_add_(0, visited, engagement)
        visitors = torch.bincount(visited, minlength=m)
        # Satisfaction EMA of the visited platform only.
        rate = self.choice.satisfaction_rate
        old = self.satisfaction.gather(1, visited.unsqueeze(1)).squeeze(1)
        self.satisfaction.scatter_(
            1, visited.unsqueeze(1), ((1 - rate) * old + rate * engagement).unsqueeze(1)
        )
        self.last_platform.copy_(visited)
        self._history_platform = torch.roll(self._history_platform, -1, dims=1)
        self._history_platform[:, -1] = visited
        departed = out.terminated
        departures = torch.bincount(visited[departed], minlength=m)
        rows = self._replace_departed(departed)
        self.satisfaction[rows] = self.choice.initial_satisfaction
        self.last_platform[rows] = -1
        self._history_platform[rows] = -1
        self.num_steps += 1

        shares_np = shares.cpu().numpy()
        terminations = dict.fromkeys(live, False)
        if self.exit_share > 0:
            low = shares_np < self.exit_share
            self._low_share_steps = np.where(low, self._low_share_steps + 1, 0)
            for agent in live:
                p = self.possible_agents.index(agent)
                if self._low_share_steps[p] >= self.exit_patience:
                    terminations[agent] = True
                    self._open[p] = False
        truncated = self.num_steps >= self.max_steps
        truncations = {agent: truncated and not terminations[agent] for agent in live}

        record = {
            "step": self.num_steps,
            "market_share": shares_np,
            "engagement": per_platform.cpu().numpy(),
            "welfare": float(engagement.mean()),
            "departures": departures.cpu().numpy(),
            "diversity": content_diversity(recommended, sim.item_space.fused),
            "open": self._open.cpu().numpy().copy(),
        }
        self.history.append(**record)
        self._last_record = record

        self._choose_platforms()
        observations = self._observations(live)
        rewards = {agent: float(per_platform[self.possible_agents.index(agent)]) for agent in live}
        engagement_np = engagement.cpu().numpy()
        visited_np = visited.cpu().numpy()
        infos = self._infos(
            step=(engagement_np, visited_np, visitors.cpu().numpy(), departures.cpu().numpy()),
            agents=live,
        )
        self.agents = [agent for agent in live if not (terminations[agent] or truncations[agent])]
        return observations, rewards, terminations, truncations, infos

    # -- the platform-choice model ------------------------------------------------------------------
    def _choose_platforms(self) -> None:
        """Draw every user's next platform: softmax over satisfaction + switching cost (open platforms)."""
        cfg = self.choice
        utility = self.satisfaction.clone()
        returning = self.last_platform >= 0
        if cfg.switching_cost and bool(returning.any()):
            rows = returning.nonzero().squeeze(1)
            utility[rows, self.last_platform[rows]] += cfg.switching_cost
        logits = utility / cfg.temperature
        logits[:, ~self._open] = -math.inf
        # one categorical draw per user from the simulator's generator
        self.visiting = gumbel_max(logits, self.simulator.generator)

    # -- observation and info ----------------------------------------------------------------------
    def _observations(self, agents: list[str] | None = None) -> dict[str, dict[str, np.ndarray]]:
        sim = self.simulator
        base = sim.observation()
        mask = base[HISTORY_MASK]
        # Shared by every platform: fresh arrays each step.
        shared = {
            key: base[key].cpu().numpy().copy()
            for key in (CANDIDATE_ITEMS, TIME_LEFT, USER_FEATURES)
            if key in base
        }
        out = {}
        for agent in agents if agents is not None else self.agents:
            p = self.possible_agents.index(agent)
            mine = mask * (self._history_platform == p)
            history = base[HISTORY_ITEMS]
            own_history = history * (mine.unsqueeze(-1) if history.dim() == 3 else mine.long())
            obs = {
                HISTORY_ITEMS: own_history.cpu().numpy(),
                HISTORY_FEEDBACK: (base[HISTORY_FEEDBACK] * mine.unsqueeze(-1)).cpu().numpy(),
                HISTORY_MASK: mine.cpu().numpy(),
                **shared,
                "visiting": (self.visiting == p).float().cpu().numpy(),
            }
            out[agent] = {key: obs[key] for key in self._observation_spaces[agent]}
        return out

    def _infos(
        self, step: tuple | None, agents: list[str] | None = None
    ) -> dict[str, dict[str, Any]]:
        sim = self.simulator
        shares = market_share(self.visiting, self.num_platforms).cpu().numpy()
        affinity = sim.candidate_affinity.cpu().numpy().copy() if sim.track_truth else None
        infos = {}
        for agent in agents if agents is not None else self.agents:
            p = self.possible_agents.index(agent)
            info: dict[str, Any] = {"visiting_share": float(shares[p])}
            if affinity is not None:
                info["candidate_affinity"] = affinity
            if step is not None:
                engagement, visited, visitors, departures = step
                info["visitors"] = int(visitors[p])
                info["departures"] = int(departures[p])
                info["engagement"] = np.where(visited == p, engagement, 0.0).astype(np.float32)
            infos[agent] = info
        return infos

    def _summary(self) -> str:
        shares = market_share(self.visiting, self.num_platforms).cpu().numpy()
        if not self._last_record:
            coming = ", ".join(
                f"{a} {s:.2f}" for a, s in zip(self.possible_agents, shares, strict=True)
            )
            return f"new market: {self.num_users} users, {self.num_platforms} platforms; first visits: {coming}"
        rec = self._last_record
        played = " | ".join(
            f"{a} {s:.2f}{'' if open_ else ' (exited)'}"
            for a, s, open_ in zip(
                self.possible_agents, rec["market_share"], rec["open"], strict=True
            )
        )
        return (
            f"step {rec['step']}/{self.max_steps}: market share {played}; welfare {rec['welfare']:.2f} min/user; "
            f"{int(rec['departures'].sum())} users left, diversity {rec['diversity']:.2f}"
        )


def parallel_env(**kwargs: Any) -> PlatformCompetitionEnv:
    """The competing-platforms ecosystem as a PettingZoo `ParallelEnv` (arguments: `PlatformCompetitionEnv`)."""
    return PlatformCompetitionEnv(**kwargs)


def raw_env(**kwargs: Any):
    """The AEC form: ``pettingzoo.utils.parallel_to_aec(parallel_env(**kwargs))`` (order enforced)."""
    return parallel_to_aec(parallel_env(**kwargs))


def env(**kwargs: Any):
    """The AEC environment (PettingZoo's default entry point); same as `raw_env`."""
    return raw_env(**kwargs)
