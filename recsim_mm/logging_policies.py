"""Logging policies and `collect`: how simulated logs are made.

A logging policy chooses what the logged users were shown; `collect` runs one on a
`recsim_mm.simulator.Simulator` and returns an `recsim_mm.logs.InteractionLog` with the
exact propensity of every shown slate. Every policy is a mixture of Plackett-Luce
distributions, sampled and scored by `recsim_mm.sampling`.

The names are also importable from `recsim_mm.logs`, where they lived first.
"""

from __future__ import annotations

import abc

import numpy as np
import torch

from recsim_mm.logs import InteractionLog
from recsim_mm.observation import (
    CANDIDATE_ITEMS,
    HISTORY_FEEDBACK,
    HISTORY_ITEMS,
    HISTORY_MASK,
    TIME_LEFT,
)
from recsim_mm.sampling import gumbel_top_k, plackett_luce_log_prob

# -- logging policies ------------------------------------------------------------------------


class LoggingPolicy(abc.ABC):
    """A stochastic policy that chooses what the logged users were shown.

    Every logging policy is a mixture of Plackett-Luce distributions over ordered
    slates: component ``c`` has weight ``w_c`` and per-candidate logits ``l_c``; a
    slate of size S is drawn by picking a component, then S candidates without
    replacement with probabilities proportional to ``exp(l_c)``. That makes the
    propensity of the shown slate exact for single items, slates and epsilon mixtures.

    Subclasses implement `components`.
    """

    #: Whether `components` reads the simulator's hidden affinities.
    uses_true_affinity: bool = False

    @abc.abstractmethod
    def components(
        self, candidates: torch.Tensor, true_affinity: torch.Tensor | None, generator: torch.Generator
    ) -> list[tuple[float, torch.Tensor]]:
        """The mixture for each user's candidates.

        Args:
            candidates: ``(B, K)`` int64 item rows.
            true_affinity: ``(B, K)`` float32 hidden affinities (None unless
                `uses_true_affinity`).
            generator: randomness for noisy policies (same device as ``candidates``).

        Returns:
            ``[(weight, logits (B, K) float32), ...]`` with weights summing to 1.
        """

    def sample(
        self,
        candidates: torch.Tensor,
        true_affinity: torch.Tensor | None,
        slate_size: int,
        generator: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw each user's slate.

        Returns:
            ``(shown (B, S) int64 positions into the candidates, propensity (B,)
            float64 probability of that ordered slate)``.
        """
        parts = self.components(candidates, true_affinity, generator)
        batch, k = candidates.shape
        if not 1 <= slate_size <= k:
            raise ValueError(f"slate_size={slate_size} must be in [1, K={k}]")
        weights = torch.tensor([w for w, _ in parts], dtype=torch.float64, device=candidates.device)
        pick = torch.multinomial(weights.expand(batch, -1), 1, generator=generator).squeeze(1)
        logits = torch.stack([lg.float() for _, lg in parts])  # (C, B, K)
        chosen = logits[pick, torch.arange(batch, device=candidates.device)]
        shown = gumbel_top_k(chosen, slate_size, generator)
        log_p = torch.stack([plackett_luce_log_prob(lg.double(), shown) for lg in logits])
        propensity = (torch.log(weights).unsqueeze(1) + log_p).logsumexp(0).exp()
        return shown, propensity


class UniformPolicy(LoggingPolicy):
    """Every candidate (every ordered slate) equally likely: unbiased, low-quality logs."""

    def components(self, candidates, true_affinity, generator):
        return [(1.0, torch.zeros(candidates.shape, device=candidates.device))]


class PopularityPolicy(LoggingPolicy):
    """Candidates drawn in proportion to ``popularity ** (1 / temperature)``.

    Args:
        popularity: ``(N,)`` float32 > 0 per-item popularity, e.g. click counts of an
            earlier log (`PopularityPolicy.from_log`) or item quality.
        temperature: > 0; small values approach always showing the most popular.
    """

    def __init__(self, popularity: torch.Tensor, temperature: float = 1.0):
        popularity = torch.as_tensor(popularity, dtype=torch.float32)
        if popularity.ndim != 1 or not torch.isfinite(popularity).all() or (popularity <= 0).any():
            raise ValueError("popularity must be a (N,) tensor of finite values > 0")
        if not temperature > 0:
            raise ValueError(f"temperature={temperature}; expected > 0")
        self.log_popularity = popularity.log()
        self.temperature = float(temperature)

    @classmethod
    def from_log(cls, log: InteractionLog, temperature: float = 1.0, prior: float = 1.0) -> PopularityPolicy:
        """Popularity = clicks per item in ``log`` plus ``prior`` (so unseen items stay possible)."""
        counts = np.full(len(log.item_ids), float(prior))
        hit = log.clicked_slot >= 0
        rows = log.candidate_items[hit, log.shown[hit, log.clicked_slot[hit]]]
        np.add.at(counts, rows, 1.0)
        return cls(torch.as_tensor(counts, dtype=torch.float32), temperature)

    def components(self, candidates, true_affinity, generator):
        table = self.log_popularity.to(candidates.device)
        return [(1.0, table[candidates] / self.temperature)]


class ProductionPolicy(LoggingPolicy):
    """A decent but imperfect production recommender: softmax over noisy true affinity.

    Logits are ``(affinity + noise) / temperature`` with fresh Gaussian noise of
    standard deviation ``noise_std`` per user, candidate and step (what the production
    model gets wrong). The propensity is that of the noisy softmax actually used.

    Args:
        noise_std: >= 0, affinity units.
        temperature: > 0, affinity units.
    """

    uses_true_affinity = True

    def __init__(self, noise_std: float = 0.3, temperature: float = 0.2):
        if noise_std < 0 or not temperature > 0:
            raise ValueError(f"need noise_std >= 0 and temperature > 0; got {noise_std}, {temperature}")
        self.noise_std = float(noise_std)
        self.temperature = float(temperature)

    def components(self, candidates, true_affinity, generator):
        if true_affinity is None:
            raise ValueError("ProductionPolicy needs the simulator's true affinities")
        noise = torch.randn(true_affinity.shape, generator=generator, device=true_affinity.device)
        return [(1.0, (true_affinity + self.noise_std * noise) / self.temperature)]


class EpsilonMixture(LoggingPolicy):
    """With probability ``epsilon`` a uniform slate, otherwise ``base``'s.

    Args:
        base: any `LoggingPolicy`.
        epsilon: in [0, 1].
    """

    def __init__(self, base: LoggingPolicy, epsilon: float = 0.1):
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon={epsilon}; expected in [0, 1]")
        self.base = base
        self.epsilon = float(epsilon)
        self.uses_true_affinity = base.uses_true_affinity

    def components(self, candidates, true_affinity, generator):
        uniform = torch.zeros(candidates.shape, device=candidates.device)
        return [(self.epsilon, uniform)] + [
            ((1.0 - self.epsilon) * w, lg) for w, lg in self.base.components(candidates, true_affinity, generator)
        ]


# -- collection ------------------------------------------------------------------------------


def collect(
    simulator,
    policy: LoggingPolicy,
    num_users: int,
    steps: int,
    seed: int = 0,
) -> InteractionLog:
    """Run ``policy`` on simulated users and log every step.

    Users are served in waves of ``B = simulator.num_users`` parallel sessions: each wave
    starts B fresh users and steps them until each session ends (the user leaves, the
    time budget is spent, the simulator's ``max_steps``) or ``steps`` steps have passed;
    records stop for a user once their session has ended. Same simulator settings and
    seed -> the same log.

    Args:
        simulator: a `recsim_mm.simulator.Simulator` in ``ids`` observation mode (the
            log stores item rows; ``embeddings`` mode would make them unrecoverable).
        policy: the logging policy (`UniformPolicy`, `PopularityPolicy`,
            `ProductionPolicy`, `EpsilonMixture`, ...).
        num_users: number of user sessions to log.
        steps: at most this many steps per session.
        seed: seeds the simulator (``reset(seed=...)``) and the policy's randomness;
            user ids are ``f"s{seed}-u{i}"`` so logs of different seeds can be concatenated.

    Returns:
        An `InteractionLog` with ``true_affinity`` when the simulator tracks truth.

    Raises:
        ValueError: the simulator is in ``embeddings`` mode, or a count is < 1.
    """
    if simulator.obs_mode != "ids":
        raise ValueError(
            f"collect needs a Simulator with obs_mode='ids' (the log stores item rows); "
            f"got obs_mode={simulator.obs_mode!r}"
        )
    if num_users < 1 or steps < 1:
        raise ValueError(f"num_users={num_users} and steps={steps} must both be >= 1")
    device = simulator.device
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    b, s = simulator.num_users, simulator.slate_size
    chunks: list[dict[str, np.ndarray]] = []
    first_user = 0
    while first_user < num_users:
        obs = simulator.reset(seed=seed) if first_user == 0 else simulator.reset()
        active = torch.arange(b, device=device) < (num_users - first_user)
        for _ in range(steps):
            if not bool(active.any()):
                break
            candidates = obs[CANDIDATE_ITEMS].clone()
            truth = simulator.candidate_affinity.clone() if simulator.track_truth else None
            shown, propensity = policy.sample(
                candidates, truth if policy.uses_true_affinity else None, s, generator
            )
            rows = active.nonzero().squeeze(1)
            record = {
                "user": (rows + first_user).cpu().numpy(),
                "step": simulator.steps[rows].cpu().numpy().astype(np.int64),
                HISTORY_ITEMS: obs[HISTORY_ITEMS][rows].cpu().numpy(),
                HISTORY_FEEDBACK: obs[HISTORY_FEEDBACK][rows].cpu().numpy(),
                HISTORY_MASK: obs[HISTORY_MASK][rows].cpu().numpy(),
                TIME_LEFT: obs[TIME_LEFT][rows, 0].cpu().numpy(),
                CANDIDATE_ITEMS: candidates[rows].cpu().numpy(),
                "shown": shown[rows].cpu().numpy(),
                "propensity": propensity[rows].cpu().numpy(),
            }
            if truth is not None:
                record["true_affinity"] = truth[rows].cpu().numpy()
            outcome = simulator.step(shown)
            record["clicked_slot"] = outcome.clicked_position[rows].cpu().numpy()
            record["engagement"] = outcome.engagement[rows].cpu().numpy()
            chunks.append(record)
            active &= ~(outcome.terminated | outcome.truncated)
            obs = simulator.observation()
        first_user += b
    joined = {key: np.concatenate([c[key] for c in chunks]) for key in chunks[0]}
    # Records in user order, then step order: readable files, and split_by_user
    # selections stay contiguous.
    order = np.lexsort((joined["step"], joined["user"]))
    joined = {key: value[order] for key, value in joined.items()}
    return InteractionLog(
        item_ids=simulator.item_space.item_ids,
        user_id=np.asarray([f"s{seed}-u{u}" for u in joined.pop("user")]),
        source=f"collect({type(policy).__name__}, seed={seed})",
        **joined,
    )
