"""Calibration: fit the default multimodal user model to the users of a log, and the fitted population.

`fit_population(log, item_space)` estimates, from an `InteractionLog` (real, or
simulated for the recovery check):

1. **Interests**, per user: the text interest is the normalised mean text embedding of
   the items the user clicked, the image interest the same in the image part (the
   model's interests are unit vectors; a click is the model's evidence of affinity).
   Users without a click have no interest estimate: they are left out of the
   population with a warning that counts them (their records still count for the
   click rate and session lengths).
2. **Modality weights and choice parameters**, by maximum likelihood under the model's
   own choice rule. Each record is a multinomial-logit choice among its ``S`` shown
   items and the no-click option, utility ``a * cos(text interest, item text) +
   (1 - a) * cos(image interest, item image) + quality_weight * (quality - 0.5)``
   (the default model without satiation), no-click utility ``u0``, temperature ``T``.
   A user's modality weight ``a`` is unknown and integrated over a grid of ``G``
   cells of [0, 1] with population weights ``pi`` (a nonparametric maximum-likelihood
   estimate of the population's distribution, which separates the spread of the
   true weights from each user's estimation noise). ``T``, ``u0`` and ``pi``
   maximise the marginal likelihood ``sum_u log sum_g pi_g L_u(a_g; T, u0)``
   (L-BFGS for ``T``, ``u0``; EM steps for ``pi``, alternated). Each user keeps the
   posterior over the grid. With ``u0`` free, the fitted model reproduces the log's
   click rate (the likelihood equation of a choice constant is that moment).
3. **Session parameters**: ``patience`` ``P`` and ``quit_probability`` ``q`` by maximum
   likelihood of where sessions end. A step is a disappointment if nothing was
   clicked or the watched fraction (engagement / item duration) was below
   ``disappointment_threshold``; with patience ``P`` the user leaves right after the
   ``P``-th disappointment in a row, else quits with probability ``q`` after any step.
   ``P`` in ``0..max_patience`` (0: never) is infeasible if a session goes on past
   ``P`` disappointments in a row; the feasible ``P`` with the highest likelihood wins,
   ``q`` has its closed form. Sessions that reach ``max_session_steps`` are censored.
   The time budget is switched off (``time_budget`` 10000 min): these two explain the
   session ends.

A `UserPopulation` holds the result and is what simulated users are drawn from: a
new user is a fitted user drawn uniformly (their interest vectors), with a modality
weight drawn from that user's posterior (uniform within the grid cell), so the drawn
weights follow the fitted population distribution ``pi``. Pass it (or its file) as the
``population`` parameter of the default user models
(``user_params={"population": "population.pt"}``; config key ``user_population``).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from recsim_mm.files import atomic_torch_save, load_checkpoint
from recsim_mm.item_space import ItemSpace
from recsim_mm.logs import InteractionLog

POPULATION_FORMAT = "recsim_mm.UserPopulation/1"
#: Session time budget [minutes] of a fitted population: large enough to never end a session.
OPEN_BUDGET = 10_000.0


@dataclass(frozen=True)
class UserPopulation:
    """Users fitted to a log: what new simulated users are drawn from.

    ``U`` fitted users, ``G`` grid cells of the modality weight.

    Attributes:
        user_ids: ``U`` ids of the fitted users (the log's).
        text_interest: ``(U, d_text)`` float32 unit rows.
        image_interest: ``(U, d_image)`` float32 unit rows.
        grid: ``(G,)`` float32 cell midpoints of [0, 1] (cell width ``1 / G``).
        prior: ``(G,)`` float32, the population distribution of the modality weight.
        posterior: ``(U, G)`` float32, each user's posterior over the grid (rows sum to 1).
        params: fitted `recsim_mm.users.multimodal.MultimodalUserConfig` fields
            (``choice_temperature``, ``no_click_utility``, ``patience``,
            ``quit_probability``, ``time_budget``, ``time_budget_spread``).
        fingerprint: `ItemSpace.fingerprint` of the item space it was fitted in.
        summary: what the fit saw and found (records, click rate, excluded users, ...).
    """

    user_ids: tuple[str, ...]
    text_interest: torch.Tensor
    image_interest: torch.Tensor
    grid: torch.Tensor
    prior: torch.Tensor
    posterior: torch.Tensor
    params: dict
    fingerprint: str
    summary: dict = field(default_factory=dict)

    @property
    def num_users(self) -> int:
        """``U``."""
        return len(self.user_ids)

    @property
    def modality_weight(self) -> torch.Tensor:
        """``(U,)`` float32 posterior-mean modality weight of each fitted user."""
        return self.posterior @ self.grid

    def prior_moments(self) -> tuple[float, float]:
        """Mean and standard deviation of the fitted modality-weight distribution ``prior``
        (the grid cells taken as uniform within their width)."""
        g = self.grid.double()
        p = self.prior.double()
        mean = float(p @ g)
        var = float(p @ (g - mean) ** 2) + 1.0 / (12 * len(g) ** 2)
        return mean, math.sqrt(var)

    def check_item_space(self, item_space: ItemSpace, where: str = "population") -> None:
        """Raise `ValueError` unless ``item_space`` is the one the population was fitted in."""
        if item_space.d_text != self.text_interest.shape[1] or item_space.d_image != self.image_interest.shape[1]:
            raise ValueError(
                f"{where}: fitted in an item space of widths ({self.text_interest.shape[1]}, "
                f"{self.image_interest.shape[1]}); this one has ({item_space.d_text}, {item_space.d_image})")
        if item_space.fingerprint() != self.fingerprint:
            raise ValueError(
                f"{where}: fitted in item space {self.fingerprint}, but this item space is "
                f"{item_space.fingerprint()}; fit it again on the same catalog and encoders")

    def draw(self, n: int, generator: torch.Generator, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` new users: ``(interest (n, d_text + d_image) float32, modality weight (n,) float32)``.

        A fitted user is drawn uniformly for each; the weight is drawn from their
        posterior, uniform within the cell. All randomness from ``generator``.
        """
        device = torch.device(device)
        tensors = self._on(device)
        pick = torch.randint(self.num_users, (n,), generator=generator, device=device)
        cell = torch.multinomial(tensors["posterior"][pick], 1, generator=generator).squeeze(1)
        jitter = torch.rand(n, generator=generator, device=device)
        a = (cell.float() + jitter) / len(self.grid)
        interest = torch.cat([tensors["text_interest"][pick], tensors["image_interest"][pick]], dim=1)
        return interest, a

    def _on(self, device: torch.device) -> dict[str, torch.Tensor]:
        cache = self.__dict__.setdefault("_device_cache", {})
        if device not in cache:
            cache[device] = {name: getattr(self, name).to(device) for name in
                             ("text_interest", "image_interest", "posterior")}
        return cache[device]

    def save(self, path: str | Path) -> None:
        """Write as a ``.pt`` file (``weights_only``-readable), atomically."""
        atomic_torch_save({
            "format": POPULATION_FORMAT, "user_ids": list(self.user_ids),
            "text_interest": self.text_interest.cpu(), "image_interest": self.image_interest.cpu(),
            "grid": self.grid.cpu(), "prior": self.prior.cpu(), "posterior": self.posterior.cpu(),
            "params": dict(self.params), "fingerprint": self.fingerprint, "summary": dict(self.summary),
        }, path)

    @classmethod
    def load(cls, path: str | Path, item_space: ItemSpace | None = None) -> UserPopulation:
        """Read a population file; with ``item_space``, check it was fitted there.

        Raises:
            ValueError: not a population file, or fitted in another item space (the
                message names the file).
        """
        payload = load_checkpoint(path, POPULATION_FORMAT, "user population file")
        population = cls(user_ids=tuple(payload["user_ids"]), **{
            name: payload[name] for name in ("text_interest", "image_interest", "grid", "prior", "posterior",
                                             "params", "fingerprint", "summary")})
        if item_space is not None:
            population.check_item_space(item_space, where=f"user population {str(path)!r}")
        return population

    @classmethod
    def resolve(cls, spec: str | Path | UserPopulation, item_space: ItemSpace) -> UserPopulation:
        """A population given as itself or as a file path, checked against ``item_space``."""
        if isinstance(spec, UserPopulation):
            spec.check_item_space(item_space)
            return spec
        if not isinstance(spec, (str, Path)):
            raise ValueError(f"population={spec!r}: expected a population file path or a UserPopulation")
        if not Path(spec).is_file():
            raise ValueError(f"population file {str(spec)!r} does not exist")
        return cls.load(spec, item_space)


# -- the fit ---------------------------------------------------------------------------------


def clicked_items(log: InteractionLog) -> np.ndarray:
    """``(M,)`` int64 item row of each record's clicked item, -1 where nothing was clicked."""
    hit = log.clicked_slot >= 0
    out = np.full(len(log), -1, np.int64)
    slot = log.shown[np.nonzero(hit)[0], log.clicked_slot[hit]]
    out[hit] = log.candidate_items[np.nonzero(hit)[0], slot]
    return out


def session_index(log: InteractionLog) -> np.ndarray:
    """``(M,)`` int64 session number of each record: a new session starts where the user
    changes or ``step`` does not increase (records in user, then time order)."""
    new = np.ones(len(log), bool)
    new[1:] = (log.user_id[1:] != log.user_id[:-1]) | (log.step[1:] <= log.step[:-1])
    return np.cumsum(new) - 1


def interest_vectors(log: InteractionLog, item_space: ItemSpace) -> tuple[list[str], torch.Tensor, torch.Tensor, int]:
    """Per-user normalised mean text / image embedding of clicked items.

    Returns:
        ``(user ids with a click, text (U, d_text), image (U, d_image), users without a click)``.
    """
    items = clicked_items(log)
    hit = items >= 0
    users, inverse = np.unique(log.user_id, return_inverse=True)
    with_click = np.zeros(len(users), bool)
    with_click[inverse[hit]] = True
    index = torch.as_tensor(inverse[hit])
    rows = torch.as_tensor(items[hit])

    def mean(part: torch.Tensor) -> torch.Tensor:
        total = torch.zeros(len(users), part.shape[1], dtype=torch.float64)
        total.index_add_(0, index, part.cpu().double()[rows])
        return torch.nn.functional.normalize(total[torch.as_tensor(with_click)], dim=1).float()

    return (users[with_click].tolist(), mean(item_space.text), mean(item_space.image),
            int((~with_click).sum()))


def _choice_terms(log: InteractionLog, item_space: ItemSpace, user_row: np.ndarray,
                  quality_weight: float) -> tuple[torch.Tensor, ...]:
    """``(cos_text (M, S), cos_image (M, S), quality term (M, S), choice (M,) in [0, S])`` float64.

    The interests in the cosines are leave-one-out: a record's own click is taken out of
    its user's mean (a user's estimate would otherwise be pulled toward the very items
    whose choice it explains, inflating in-sample affinities and so the fitted
    temperature and no-click utility)."""
    shown = torch.as_tensor(np.take_along_axis(log.candidate_items, log.shown, axis=1))
    users = torch.as_tensor(user_row)
    items = clicked_items(log)
    hit = torch.as_tensor(items >= 0)
    clicked = torch.as_tensor(np.maximum(items, 0))
    terms = []
    for part in (item_space.text.cpu().double(), item_space.image.cpu().double()):
        total = torch.zeros(int(user_row.max()) + 1, part.shape[1], dtype=torch.float64)
        total.index_add_(0, users[hit], part[clicked[hit]])
        own = torch.where(hit[:, None], part[clicked], torch.zeros(()))
        interest = torch.nn.functional.normalize(total[users] - own, dim=1)
        terms.append(torch.einsum("msd,md->ms", part[shown], interest))
    q = quality_weight * (item_space.quality.cpu().double()[shown] - 0.5)
    choice = torch.as_tensor(log.clicked_slot + 1)
    return terms[0], terms[1], q, choice


def _grid_loglik(ct, ci, q, choice, grid, log_t, u0) -> torch.Tensor:
    """``(M, G)`` log-probability of each record's choice at each grid weight."""
    a = grid.view(1, -1, 1)
    utility = a * ct.unsqueeze(1) + (1 - a) * ci.unsqueeze(1) + q.unsqueeze(1)  # (M, G, S)
    logits = torch.cat([u0.expand(*utility.shape[:2], 1), utility], dim=2) / log_t.exp()
    logp = torch.log_softmax(logits, dim=2)
    return logp.gather(2, choice.view(-1, 1, 1).expand(-1, logp.shape[1], 1)).squeeze(2)


def fit_choice(ct, ci, q, choice, user_index, num_users: int, grid_size: int = 20, rounds: int = 6,
               temperature: float = 0.1, no_click_utility: float = 0.2) -> dict:
    """Marginal maximum likelihood of ``(T, u0, pi)`` and each user's posterior over the grid.

    Args:
        ct, ci, q: ``(M, S)`` float64 cosines and quality term of the shown items.
        choice: ``(M,)`` int64 choice, 0 = no click, ``j + 1`` = slot ``j``.
        user_index: ``(M,)`` int64 user of each record in ``[0, U)``.
        num_users: ``U``.
        grid_size: ``G``.
        rounds: alternations of L-BFGS on ``(T, u0)`` and EM on ``pi``.
        temperature, no_click_utility: starting values.

    Returns:
        ``{"temperature", "no_click_utility", "grid" (G,), "prior" (G,), "posterior" (U, G),
        "loglik"}``.
    """
    grid = (torch.arange(grid_size, dtype=torch.float64) + 0.5) / grid_size
    log_t = torch.tensor(math.log(temperature), dtype=torch.float64, requires_grad=True)
    u0 = torch.tensor(float(no_click_utility), dtype=torch.float64, requires_grad=True)
    log_prior = torch.full((grid_size,), -math.log(grid_size), dtype=torch.float64)
    index = torch.as_tensor(user_index)

    def per_user(ll: torch.Tensor) -> torch.Tensor:
        return torch.zeros(num_users, grid_size, dtype=ll.dtype).index_add(0, index, ll)

    def objective() -> torch.Tensor:
        lu = per_user(_grid_loglik(ct, ci, q, choice, grid, log_t, u0))
        return -torch.logsumexp(lu + log_prior, dim=1).sum()

    for _ in range(rounds):
        opt = torch.optim.LBFGS([log_t, u0], lr=1.0, max_iter=30, line_search_fn="strong_wolfe")

        def closure(opt: torch.optim.Optimizer = opt) -> torch.Tensor:
            opt.zero_grad()
            loss = objective()
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            lu = per_user(_grid_loglik(ct, ci, q, choice, grid, log_t, u0))
            for _ in range(100):  # EM on the mixing weights (NPMLE)
                post = torch.softmax(lu + log_prior, dim=1)
                log_prior = post.mean(0).clamp_min(1e-300).log()
    with torch.no_grad():
        lu = per_user(_grid_loglik(ct, ci, q, choice, grid, log_t, u0))
        joint = lu + log_prior
        posterior = torch.softmax(joint, dim=1)
        loglik = float(torch.logsumexp(joint, dim=1).sum())
    return {"temperature": float(log_t.detach().exp()), "no_click_utility": float(u0.detach()), "grid": grid.float(),
            "prior": log_prior.exp().float(), "posterior": posterior.float(), "loglik": loglik}


def fit_sessions(log: InteractionLog, item_space: ItemSpace, disappointment_threshold: float = 0.3,
                 max_patience: int = 10, max_session_steps: int | None = None) -> dict:
    """Maximum likelihood of ``patience`` and ``quit_probability`` from where sessions end.

    Args:
        log: records in user, then time order.
        item_space: item durations (minutes) for the watched fraction.
        disappointment_threshold: watched fraction below which a click disappoints.
        max_patience: largest ``P`` tried.
        max_session_steps: sessions this long were cut by the log, not ended by the
            user (censored); None: every session ended by the user.

    Returns:
        ``{"patience", "quit_probability", "loglik", "sessions", "mean_length",
        "infeasible": {P: sessions that went on past P disappointments in a row}}``.
    """
    items = clicked_items(log)
    duration = item_space.duration.cpu().numpy().astype(np.float64)
    watched = np.where(items >= 0, log.engagement / duration[np.maximum(items, 0)], 0.0)
    disappointed = (items < 0) | (watched < disappointment_threshold)
    session = session_index(log)
    run = np.zeros(len(log), np.int64)  # disappointments in a row, ending at each record
    for i in range(len(log)):
        streak = run[i - 1] if i > 0 and session[i] == session[i - 1] else 0
        run[i] = streak + 1 if disappointed[i] else 0
    last = np.ones(len(log), bool)
    last[:-1] = session[1:] != session[:-1]
    lengths = np.bincount(session)
    censored_session = (lengths >= max_session_steps) if max_session_steps is not None else np.zeros(len(lengths), bool)
    censored = censored_session[session] & last
    best, infeasible = None, {}
    for p in range(max_patience + 1):
        forced = (run >= p) if p > 0 else np.zeros(len(log), bool)
        bad_sessions = np.unique(session[forced & ~last])
        if len(bad_sessions):
            infeasible[p] = int(len(bad_sessions))
            continue
        at_risk = ~forced & ~censored  # steps after which the user could have quit
        quits = int((at_risk & last).sum())
        n = int(at_risk.sum())
        q = quits / n if n else 0.0
        loglik = (quits * math.log(q) if quits else 0.0) + ((n - quits) * math.log1p(-q) if n > quits else 0.0)
        if best is None or loglik > best["loglik"] + 1e-9:
            best = {"patience": p, "quit_probability": q, "loglik": loglik}
    assert best is not None  # P = 0 is always feasible
    return {**best, "sessions": int(len(lengths)), "mean_length": float(lengths.mean()),
            "infeasible": infeasible}


def fit_population(
    log: InteractionLog,
    item_space: ItemSpace,
    *,
    grid_size: int = 20,
    quality_weight: float = 0.2,
    disappointment_threshold: float = 0.3,
    max_patience: int = 10,
    max_session_steps: int | None = None,
) -> UserPopulation:
    """Fit the default multimodal user model to the users of ``log`` (see the module docstring).

    Args:
        log: the log (its item ids must be the item space's).
        item_space: the item space the users live in.
        grid_size: ``G`` cells of the modality weight.
        quality_weight: the model's utility per unit of quality above 0.5 (fixed).
        disappointment_threshold, max_patience, max_session_steps: see `fit_sessions`.

    Returns:
        The `UserPopulation` (users with at least one click).

    Raises:
        ValueError: the log is over another item space, has no click, or no non-click.
    """
    if tuple(log.item_ids) != tuple(item_space.item_ids):
        raise ValueError(f"{log.source}: the log's item ids are not this item space's; load it against the "
                         "item space the population is fitted in")
    labels = log.clicked_slot >= 0
    if labels.all() or not labels.any():
        raise ValueError(f"{log.source}: every record is {'a click' if labels.all() else 'a non-click'}; the "
                         "choice parameters need both (add non-clicked impressions or sampled negatives)")
    users, text, image, without = interest_vectors(log, item_space)
    if without:
        warnings.warn(f"{log.source}: {without} user(s) never clicked, so their interests cannot be estimated; "
                      "they are left out of the population (their records still count for the click rate "
                      "and session lengths)", UserWarning, stacklevel=2)
    position = {u: i for i, u in enumerate(users)}
    user_row = np.fromiter((position.get(u, -1) for u in log.user_id), np.int64, len(log))
    kept = user_row >= 0
    sub = log.select(kept)
    ct, ci, q, choice = _choice_terms(sub, item_space, user_row[kept], quality_weight)
    choice_fit = fit_choice(ct, ci, q, choice, user_row[kept], len(users), grid_size)
    sessions = fit_sessions(log, item_space, disappointment_threshold, max_patience, max_session_steps)
    quit = sessions["quit_probability"]
    if quit >= 0.99:
        warnings.warn(f"{log.source}: fitted quit_probability {quit:.3f} (sessions of about one step); set to "
                      "0.99, the model's largest allowed value", UserWarning, stacklevel=2)
        quit = 0.99
    params = {"choice_temperature": choice_fit["temperature"], "no_click_utility": choice_fit["no_click_utility"],
              "patience": sessions["patience"], "quit_probability": quit,
              "time_budget": OPEN_BUDGET, "time_budget_spread": 0.0, "quality_weight": quality_weight,
              "disappointment_threshold": disappointment_threshold}
    summary = {"source": log.source, "records": len(log), "users": int(len(np.unique(log.user_id))),
               "fitted_users": len(users), "users_without_click": without,
               "click_rate": float(labels.mean()), "sessions": sessions["sessions"],
               "mean_session_length": sessions["mean_length"], "choice_loglik": choice_fit["loglik"],
               "session_loglik": sessions["loglik"],
               "infeasible_patience": {str(k): v for k, v in sessions["infeasible"].items()}}
    return UserPopulation(user_ids=tuple(users), text_interest=text, image_interest=image,
                          grid=choice_fit["grid"], prior=choice_fit["prior"], posterior=choice_fit["posterior"],
                          params=params, fingerprint=item_space.fingerprint(), summary=summary)
