"""A learned session-end model: P(the session ends | what is shown), from logged data only.

`SessionEndModel` estimates, for every candidate ``i`` of an observation,

    P(end | show i) = p_i * P(end | click on i) + (1 - p_i) * P(end | no click)

where ``p_i`` is a click model's probability (the ranker's) and the two branch
probabilities are logistic regressions fitted on an `recsim_mm.logs.InteractionLog`.
It reads only what a real system observes: the history in the observation (items,
clicks, minutes), the time left, and public catalog metadata (the fused item vectors
and the item durations of the `ItemSpace`); never the simulated users' hidden state.
`agents.references.ModelPlanning` uses it for a non-privileged one-step lookahead.

Labels. A record is a session end when it is the last record of its user and its
step is below the log's largest step; a user's last record AT the largest step is
truncation (censored: the session might have gone on), so it is left out of the fit
(the user's earlier records stay, as sessions that went on).

Features (per record; the click branch's item is the clicked item when fitting and
each candidate when predicting). History steps ``t`` are the observation's real
history steps, ``back_t`` steps ago (the newest is 0), ``w_t`` the watched fraction
``minutes_t / duration[item_t]`` (0 for a step without a click, clipped to [0, 1]),
``x`` the fused item vectors (`ItemSpace.fused`):

=========================  ========  =====================================================
feature                    branch    meaning
=========================  ========  =====================================================
``log1p_time_left``        both      ``log1p(time_left)`` (only when the log has it)
``nonclicks>=1/2/3``       both      1 if the history ends with at least 1 / 2 / 3
                                     consecutive steps without a click (patience)
``weak>=1/2/3``            both      the same for "weak" steps: no click, or a click
                                     watched below 30% (disappointments)
``history_fill``           both      real history steps / ``H`` (early in a session < 1)
``mean_watched``           both      mean ``w_t`` over the real history steps
``clicked``                click     1 (the click branch's offset from the no-click one)
``clicked*<each above>``   click     the both-branch features again, click branch only
``sat_r`` (r = 0.5, 0.7,   click     ``relu(sum_t r**back_t * w_t * <x_t, x_i>)``: how
0.8, 0.9)                            similar item ``i`` is to what was recently watched,
                                     at four memory decays (satiation, boredom)
``duration/time_left``     click     ``min(duration[i] / max(time_left, 1e-3), 4)`` (only
                                     with time left): whether watching ``i`` may spend
                                     the budget
=========================  ========  =====================================================

Fit. The two branches are ONE logistic regression on these columns (standardised):
the no-click branch uses the both-branch columns, the click branch adds ``clicked``
and the click-only columns, so ``P(end | click on i)`` is the no-click model plus
differences. The penalty is L1 on every coefficient but the intercept (it selects the
columns), then the kept columns are refitted without penalty (the relaxed lasso: the
kept effects are not shrunk toward 0). The penalty's weight is chosen by 5-fold
cross-validation of that two-step fit, grouped by user (held-out log loss), with the
one-standard-error rule (the sparsest model whose excess loss over the best, paired by
fold, is within one standard error), and a model with any column must beat the constant
model by two standard errors of its paired cross-validated gain.
A difference the log does not support is then exactly zero: in an environment where
the recommendation does not change when users leave (the Myopic control) the model
is a constant and a planner on it ranks exactly as the greedy ranker. The solver is a
proximal Newton method with coordinate descent (glmnet's) in float64: the weighted Gram
matrices in torch, the coordinate loop compiled by numba (a package dependency). The same
log gives the same model; 1-3 s for a log of 1,500 users on 2 cores. scikit-learn is not
used: it is only a development extra of the package, and its L1 solvers penalise the
intercept (liblinear) or converge slowly (saga).

Why one model with differences rather than two separate fits: the planner's ranking
moves with ``P(end | click on i) - P(end | no click)`` (times ``p_i``), so a spurious
difference between two separately fitted intercepts would alone make it deviate from
the greedy ranker where nothing should; the penalty on ``clicked`` removes exactly that.

Observations: the batched dicts of the environments (``(B, ...)``, numpy or torch),
``ids`` mode (item rows) or ``embeddings`` mode (item vectors, matched exactly to rows
of the item table; a vector that matches no item is an error).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from recsim_mm.item_space import ItemSpace, match_rows
from recsim_mm.logs import InteractionLog
from recsim_mm.observation import (
    CANDIDATE_ITEMS,
    HISTORY_FEEDBACK,
    HISTORY_ITEMS,
    HISTORY_MASK,
    TIME_LEFT,
)

#: Memory decays of the ``sat_r`` features (the Satiation users' true decay is 0.8).
SATIATION_DECAYS: tuple[float, ...] = (0.5, 0.7, 0.8, 0.9)
#: Watched fraction below which a click counts as a "weak" step.
WEAK_WATCH = 0.3
#: Thresholds of the trailing-run indicators (``nonclicks>=k``, ``weak>=k``).
RUN_THRESHOLDS: tuple[int, ...] = (1, 2, 3)
#: Cross-validation folds (grouped by user) and L1 penalties tried (a path from the
#: smallest weight that zeros every coefficient down to 1e-3 of it).
CV_FOLDS = 5
NUM_PENALTIES = 12
#: A model with columns must beat the constant model by this many standard errors of the
#: paired cross-validated gain, or the constant model is kept.
GAIN_STANDARD_ERRORS = 2.0


def _tensor(value, device: torch.device | None = None) -> torch.Tensor:
    tensor = value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
    return tensor if device is None else tensor.to(device)


def _trailing_run(flags: torch.Tensor) -> torch.Tensor:
    """``(B,)`` length of the run of 1s at the end of ``(B, H)`` 0/1 flags (newest last)."""
    return torch.cumprod(flags.flip(-1), dim=-1).sum(-1)


@dataclass
class _History:
    """The history-level quantities of a batch, shared by both branches."""

    common: torch.Tensor  # (B, F0) float32
    vectors: torch.Tensor  # (B, H, d) fused vectors of the history items
    weights: torch.Tensor  # (B, H, R) r**back_t * w_t, 0 where padded
    time_left: torch.Tensor | None  # (B,) float32 minutes, or None


@dataclass(eq=False)
class SessionEndModel:
    """Learned ``P(session end | show i)`` (see the module docstring). Build it with `fit`.

    Attributes:
        item_ids: the item space's ids (the model reads its item rows).
        item_table: ``(N, d)`` float32 fused item vectors (`ItemSpace.fused`), CPU.
        duration: ``(N,)`` float32 item durations, minutes, CPU.
        history_length: ``H`` of the log it was fitted on.
        uses_time_left: whether the time-left features are in (the log had ``time_left``).
        feature_names: ``F`` column names: the both-branch ones, ``clicked``, the
            ``clicked*`` copies, then the click-only ones.
        mean, scale: ``(F,)`` float64 standardisation of the columns.
        coef: ``(F,)`` float64 coefficients on the standardised columns (many exactly 0).
        intercept: float, log-odds of an end where every standardised column is 0 (its
            mean); with no column kept, the log's end rate.
        penalty: the chosen L1 weight (mean log loss units; ``inf``: the constant model).
        stats: ``{"records", "ends", "censored", "click_records", "click_ends",
            "cv_log_loss", "base_log_loss"}`` of the fit (log loss in nats per record;
            base: the constant model's, same folds).
    """

    item_ids: tuple[str, ...]
    item_table: torch.Tensor
    duration: torch.Tensor
    history_length: int
    uses_time_left: bool
    feature_names: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    penalty: float
    stats: dict[str, float] = field(default_factory=dict)
    _on_device: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    # -- the features ---------------------------------------------------------------------------

    @staticmethod
    def _both_names(uses_time_left: bool) -> list[str]:
        names = ["log1p_time_left"] if uses_time_left else []
        names += [f"nonclicks>={k}" for k in RUN_THRESHOLDS] + [f"weak>={k}" for k in RUN_THRESHOLDS]
        return names + ["history_fill", "mean_watched"]

    @staticmethod
    def _item_names(uses_time_left: bool) -> list[str]:
        names = [f"sat_{r:g}" for r in SATIATION_DECAYS]
        return names + (["duration/time_left"] if uses_time_left else [])

    @classmethod
    def _names(cls, uses_time_left: bool) -> tuple[str, ...]:
        both = cls._both_names(uses_time_left)
        return (*both, "clicked", *(f"clicked*{n}" for n in both), *cls._item_names(uses_time_left))

    @staticmethod
    def _history(items: torch.Tensor, feedback: torch.Tensor, mask: torch.Tensor, time_left: torch.Tensor | None,
                 table: torch.Tensor, duration: torch.Tensor) -> _History:
        """History features of ``(B, H)`` item rows, ``(B, H, 2)`` feedback, ``(B, H)`` mask and
        ``(B,)`` time left (or None), on ``table``'s device."""
        mask = mask.float()
        h = items.shape[1]
        clicked = (feedback[..., 0] > 0).float() * mask
        watched = torch.where(clicked > 0, feedback[..., 1] / duration[items].clamp_min(1e-6),
                              torch.zeros_like(mask)).clamp(0.0, 1.0)
        columns = [] if time_left is None else [torch.log1p(time_left.clamp_min(0.0))]
        nonclick = _trailing_run(mask * (1.0 - clicked))
        weak = _trailing_run(mask * (watched < WEAK_WATCH).float())
        columns += [(nonclick >= k).float() for k in RUN_THRESHOLDS] + [(weak >= k).float() for k in RUN_THRESHOLDS]
        steps = mask.sum(-1)
        columns += [steps / h, (watched * mask).sum(-1) / steps.clamp_min(1.0)]
        back = torch.arange(h - 1, -1, -1, device=items.device, dtype=torch.float32)  # newest last: back 0
        decays = torch.tensor(SATIATION_DECAYS, device=items.device, dtype=torch.float32)
        weights = (watched * mask).unsqueeze(-1) * decays ** back.unsqueeze(-1)  # (B, H, R)
        return _History(torch.stack(columns, -1).float(), table[items], weights, time_left)

    @staticmethod
    def _item_features(history: _History, items: torch.Tensor, table: torch.Tensor,
                       duration: torch.Tensor) -> torch.Tensor:
        """``(B, K, F1)`` click-only features of ``(B, K)`` item rows."""
        dots = torch.einsum("bkd,bhd->bkh", table[items], history.vectors)  # <x_i, x_t>
        columns = [torch.einsum("bkh,bhr->bkr", dots, history.weights).clamp_min(0.0)]
        if history.time_left is not None:
            ratio = duration[items] / history.time_left.clamp_min(1e-3).unsqueeze(-1)
            columns.append(ratio.clamp(max=4.0).unsqueeze(-1))
        return torch.cat(columns, -1)

    # -- fitting --------------------------------------------------------------------------------

    @classmethod
    def fit(cls, log: InteractionLog, item_space: ItemSpace, folds: int = CV_FOLDS) -> SessionEndModel:
        """Fit both branches on a training log (see the module docstring).

        Args:
            log: the TRAINING log (never held-out users), over ``item_space``.
            item_space: its item space: the fused vectors and durations are read.
            folds: cross-validation folds (grouped by user) for the penalty.

        Returns:
            The fitted model (deterministic: the same log gives the same model).

        Raises:
            ValueError: the log is over another item space; it has no session end
                (every session reaches the log's largest step, or no user has more
                than one record); or every uncensored record is an end.
        """
        if log.item_ids != item_space.item_ids:
            raise ValueError(
                f"{log.source}: the log's item rows refer to a different item space than the one given "
                f"({len(log.item_ids)} vs {item_space.num_items} items, or other ids); load the log with "
                "InteractionLog.load(path, item_space) over the item space the model will score"
            )
        users, user_index = np.unique(log.user_id, return_inverse=True)
        last = np.full(len(users), -1, dtype=np.int64)
        np.maximum.at(last, user_index, log.step)
        is_last = log.step == last[user_index]
        largest = int(log.step.max())
        censored = is_last & (log.step >= largest)
        label = (is_last & ~censored).astype(np.float64)
        keep = ~censored
        if label.sum() == 0:
            raise ValueError(
                f"{log.source}: the log has no session end: every user's last record is at the log's largest "
                f"step {largest} (truncation, censored), so nothing says when sessions end; log sessions that "
                "can end before the step limit (or more users)"
            )
        if label[keep].min() == 1:
            raise ValueError(
                f"{log.source}: every uncensored record is a session end (no session lasts two steps), so "
                "nothing contrasts an end with a continuation; log longer sessions"
            )
        table, duration = item_space.fused.detach().float().cpu(), item_space.duration.detach().float().cpu()
        uses_time_left = log.time_left is not None
        rows = np.nonzero(keep)[0]
        obs = log.observations(rows)
        time_left = obs[TIME_LEFT][:, 0] if uses_time_left else None
        history = cls._history(obs[HISTORY_ITEMS], obs[HISTORY_FEEDBACK], obs[HISTORY_MASK], time_left,
                               table, duration)
        slot = log.clicked_slot[rows]
        hit = slot >= 0
        shown = np.take_along_axis(log.shown[rows], np.clip(slot, 0, None)[:, None], axis=1)[:, 0]
        item = torch.as_tensor(np.take_along_axis(log.candidate_items[rows], shown[:, None], axis=1))
        clicked = torch.as_tensor(hit, dtype=torch.float32).unsqueeze(-1)
        item_part = cls._item_features(history, item, table, duration)[:, 0]
        x = torch.cat([history.common, clicked, clicked * history.common, clicked * item_part], -1)
        x = x.double().numpy()
        y = label[rows]
        mean = x.mean(0)
        scale = x.std(0)
        scale[scale < 1e-9] = 1.0  # a constant column: its coefficient stays 0
        z, target = torch.from_numpy((x - mean) / scale), torch.from_numpy(y)
        path, chosen, cv, base = _choose_penalty(z, target, user_index[rows], folds)
        if chosen is None:  # the constant model: the end rate of the log
            rate = float(y.mean())
            intercept, coef, penalty = float(np.log(rate / (1 - rate))), np.zeros(z.shape[1]), float("inf")
        else:
            fitted = None
            for penalty in path[: chosen + 1]:  # down the path with warm starts, as in cross-validation
                fitted = _fit_l1_logistic(z, target, penalty, fitted)
            intercept, coef = _relaxed(z, target, fitted)
            penalty = float(path[chosen])
        stats = {"records": int(len(y)), "ends": int(y.sum()), "censored": int(censored.sum()),
                 "click_records": int(hit.sum()), "click_ends": int(y[hit].sum()),
                 "cv_log_loss": float(cv), "base_log_loss": float(base)}
        return cls(item_space.item_ids, table, duration, log.history_length, uses_time_left,
                   cls._names(uses_time_left), mean, scale, coef, float(intercept), float(penalty), stats)

    # -- prediction -----------------------------------------------------------------------------

    def _tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Item table, durations, coefficients over raw columns and their offset, on ``device``."""
        key = str(device)
        if key not in self._on_device:
            weight = torch.as_tensor(self.coef / self.scale, dtype=torch.float64, device=device)
            offset = float(self.intercept - np.sum(self.coef * self.mean / self.scale))
            self._on_device[key] = (self.item_table.to(device), self.duration.to(device), weight,
                                    torch.tensor(offset, dtype=torch.float64, device=device))
        return self._on_device[key]

    def _rows(self, value, table: torch.Tensor, mask: torch.Tensor | None, key: str) -> torch.Tensor:
        """Item rows of an observation entry: as given (``ids``), or matched vectors (``embeddings``)."""
        tensor = _tensor(value, table.device)
        if not tensor.is_floating_point():
            rows = tensor.long()
            if rows.numel() and (rows.min() < 0 or rows.max() >= table.shape[0]):
                raise ValueError(f"{key} has item rows outside [0, {table.shape[0] - 1}]: the observation is "
                                 f"over another item space than the model's ({table.shape[0]} items)")
            return rows
        if tensor.shape[-1] != table.shape[1]:
            raise ValueError(f"{key} holds {tensor.shape[-1]}-dim vectors; the model's item table has "
                             f"{table.shape[1]} dims (another item space)")
        rows, exact = match_rows(table, tensor)
        real = torch.ones(rows.shape, dtype=torch.bool, device=rows.device) if mask is None else mask > 0
        if not bool(exact[real].all()):
            raise ValueError(f"{key} holds vectors that match no row of the model's item table: the "
                             "observation is over another item space")
        return torch.where(real, rows, torch.zeros_like(rows))

    def branch_probabilities(self, obs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The two branches on a batched observation.

        Args:
            obs: batched observation dict (``(B, ...)``, numpy or torch; ``ids`` or
                ``embeddings`` mode); ``time_left`` ``(B, 1)`` is needed when the model
                uses it.

        Returns:
            ``(P(end | click on candidate i) (B, K), P(end | no click) (B, 1))``, float64,
            on the observation's device.

        Raises:
            ValueError: the observation lacks ``time_left`` the model needs, or refers to
                another item space.
        """
        candidates = _tensor(obs[CANDIDATE_ITEMS])
        device = candidates.device
        table, duration, weight, offset = self._tables(device)
        mask = _tensor(obs[HISTORY_MASK], device).float()
        items = self._rows(obs[HISTORY_ITEMS], table, mask, HISTORY_ITEMS)
        candidate_rows = self._rows(candidates, table, None, CANDIDATE_ITEMS)
        time_left = None
        if self.uses_time_left:
            if TIME_LEFT not in obs:
                raise ValueError("the session-end model was fitted with time_left; the observation has no "
                                 f"{TIME_LEFT!r} entry")
            time_left = _tensor(obs[TIME_LEFT], device).float().reshape(-1)
        history = self._history(items, _tensor(obs[HISTORY_FEEDBACK], device).float(), mask, time_left,
                                table, duration)
        item_part = self._item_features(history, candidate_rows, table, duration).double()  # (B, K, F1)
        both = history.common.double()
        f0 = both.shape[1]
        no_click = both @ weight[:f0] + offset  # (B,)
        click = (no_click + weight[f0] + both @ weight[f0 + 1: 2 * f0 + 1]).unsqueeze(-1)
        click = click + item_part @ weight[2 * f0 + 1:]
        return torch.sigmoid(click), torch.sigmoid(no_click).unsqueeze(-1)

    def end_probability(self, obs: dict, click_probability) -> torch.Tensor:
        """``P(end | show i) = p_i * P(end | click on i) + (1 - p_i) * P(end | no click)``.

        Args:
            obs: batched observation (see `branch_probabilities`).
            click_probability: ``(B, K)`` click probability ``p_i`` of each candidate shown
                alone (e.g. the ranker's ``sigmoid(click_logit)``), numpy or torch.

        Returns:
            ``(B, K)`` float64 probabilities in [0, 1], on the observation's device. Where the
            two branches are equal it does not depend on ``p`` (nor on the candidate).
        """
        click, no_click = self.branch_probabilities(obs)
        p = _tensor(click_probability, click.device).double()
        if p.shape != click.shape:
            raise ValueError(f"click_probability must have the candidates' shape {tuple(click.shape)}; "
                             f"got {tuple(p.shape)}")
        return no_click + p * (click - no_click)

    def nonzero_coefficients(self) -> dict[str, float]:
        """``{feature: coefficient}`` of the columns the fit kept (standardised units:
        log-odds per standard deviation of the column)."""
        return {n: float(c) for n, c in zip(self.feature_names, self.coef, strict=True) if c != 0.0}


# -- L1-penalised logistic regression (glmnet's proximal Newton + coordinate descent) ----------


def _coordinate_descent(gram, target, lam, theta, max_sweeps, tol):  # pragma: no cover - compiled
    """Coordinate descent on ``0.5 theta' gram theta - target' theta + sum_j lam_j |theta_j|``,
    in place from ``theta``; stops when a sweep moves no coordinate more than ``tol``."""
    n = theta.shape[0]
    for _ in range(max_sweeps):
        largest = 0.0
        for j in range(n):
            diagonal = gram[j, j]
            if diagonal <= 0.0:
                continue
            rho = target[j] + diagonal * theta[j]
            for k in range(n):
                rho -= gram[j, k] * theta[k]
            shrunk = abs(rho) - lam[j]
            value = 0.0
            if shrunk > 0.0:
                value = (shrunk if rho > 0.0 else -shrunk) / diagonal
            largest = max(largest, abs(value - theta[j]))
            theta[j] = value
        if largest < tol:
            break
    return theta


try:  # numba is a dependency of the package (recsim_mm.kernels); the loop compiles to ~100x faster
    import numba

    _lasso_coordinate_descent = numba.njit(cache=True, nogil=True)(_coordinate_descent)
except ImportError:  # pragma: no cover
    _lasso_coordinate_descent = _coordinate_descent


def _log_loss(y: torch.Tensor, eta: torch.Tensor) -> float:
    """Mean log loss (nats) of log-odds ``eta`` against 0/1 ``y``."""
    return float((torch.nn.functional.softplus(eta) - y * eta).mean())


def _fit_l1_logistic(z: torch.Tensor, y: torch.Tensor, penalty: float,
                     start: tuple[float, np.ndarray] | None = None, max_newton: int = 50,
                     tol: float = 1e-10) -> tuple[float, np.ndarray]:
    """``argmin_{b, w} mean log loss(y, b + z w) + penalty * |w|_1`` (intercept unpenalised).

    Args:
        z: ``(n, F)`` float64 standardised columns (CPU tensor); y: ``(n,)`` float64 0/1.
        start: warm start ``(b, w)``.

    Returns:
        ``(b, w)``; ``w`` ``(F,)`` float64 numpy with exact zeros.
    """
    n, f = z.shape
    rate = float(np.clip(float(y.mean()), 1e-6, 1 - 1e-6))
    b, w = (np.log(rate / (1 - rate)), np.zeros(f)) if start is None else (start[0], start[1])
    za = torch.cat([torch.ones(n, 1, dtype=z.dtype), z], dim=1)
    theta = np.concatenate([[b], w])
    lam = np.full(f + 1, penalty)
    lam[0] = 0.0

    def objective(theta: np.ndarray) -> float:
        return _log_loss(y, za @ torch.from_numpy(theta)) + penalty * float(np.abs(theta[1:]).sum())

    current = objective(theta)
    for _ in range(max_newton):
        eta = za @ torch.from_numpy(theta)
        p = torch.sigmoid(eta)
        weights = (p * (1 - p)).clamp_min(1e-5)
        working = eta + (y - p) / weights
        gram = ((za * weights[:, None]).T @ za / n).numpy()
        target = (za.T @ (weights * working) / n).numpy()
        new = _lasso_coordinate_descent(gram, target, lam, theta.copy(), 1000, 1e-10)
        step, candidate = 1.0, new
        for _halving in range(30):  # keep the penalised objective from rising
            value = objective(candidate)
            if value <= current + 1e-15:
                break
            step /= 2
            candidate = theta + step * (new - theta)
            candidate[1:][np.abs(candidate[1:]) < 1e-14] = 0.0
        else:
            break
        change = float(np.max(np.abs(candidate - theta)))
        theta, previous, current = candidate, current, value
        if change < 1e-9 or previous - current < tol:
            break
    return float(theta[0]), theta[1:]


def _relaxed(z: torch.Tensor, y: torch.Tensor, fitted: tuple[float, np.ndarray]) -> tuple[float, np.ndarray]:
    """The relaxed lasso: the columns an L1 fit kept, refitted without penalty (so the kept
    effects are not shrunk); the other coefficients stay exactly 0."""
    b, w = fitted
    support = np.nonzero(np.abs(w) > 1e-10)[0]  # at the path's first weight a column may sit at 1e-17
    if len(support) == 0:
        return b, w
    b, kept = _fit_l1_logistic(z[:, torch.from_numpy(support)], y, 0.0, (b, w[support]))
    relaxed = np.zeros_like(w)
    relaxed[support] = kept
    return b, relaxed


def _penalty_path(z: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Decreasing L1 weights: from the smallest that zeros every coefficient to 1e-3 of it."""
    top = float((z.T @ (y - y.mean())).abs().max()) / len(y)
    return max(top, 1e-8) * np.logspace(0, -3, NUM_PENALTIES)


def _choose_penalty(z: torch.Tensor, y: torch.Tensor, groups: np.ndarray,
                    folds: int) -> tuple[np.ndarray, int | None, float, float]:
    """The L1 weight by grouped cross-validation of the relaxed fit (`_relaxed`), the
    one-standard-error rule and the gate against the constant model (see the module docstring).

    Args:
        z, y: as `_fit_l1_logistic`; groups: ``(n,)`` int user index of each record.

    Returns:
        ``(the penalty path, index of the chosen weight or None for the constant model, the
        chosen model's mean held-out log loss, the constant model's)``; with fewer than two
        usable folds, None and NaN losses.
    """
    path = _penalty_path(z, y)
    unique = np.unique(groups)
    folds = int(min(folds, len(unique)))
    if folds < 2:
        return path, None, float("nan"), float("nan")
    order = np.random.default_rng(0).permutation(len(unique))
    fold_of_group = np.empty(len(unique), dtype=np.int64)
    fold_of_group[order] = np.arange(len(unique)) % folds
    fold = torch.from_numpy(fold_of_group[np.searchsorted(unique, groups)])
    losses = np.full((folds, 1 + len(path)), np.nan)  # column 0: the constant model
    for k in range(folds):
        train, test = fold != k, fold == k
        if y[train].min() == y[train].max() or not bool(test.any()):
            continue  # one class in this fold's training part: nothing to fit
        start, z_train, y_train, z_test, y_test = None, z[train], y[train], z[test], y[test]
        rate = float(np.clip(float(y_train.mean()), 1e-6, 1 - 1e-6))
        losses[k, 0] = _log_loss(y_test, torch.full((len(y_test),), np.log(rate / (1 - rate)), dtype=torch.float64))
        relaxed: dict[tuple[int, ...], tuple[float, np.ndarray]] = {}  # by support: it repeats along the path
        for j, penalty in enumerate(path):
            start = _fit_l1_logistic(z_train, y_train, penalty, start)
            support = tuple(np.nonzero(start[1])[0])
            if support not in relaxed:
                relaxed[support] = _relaxed(z_train, y_train, start)
            b, w = relaxed[support]
            losses[k, 1 + j] = _log_loss(y_test, b + z_test @ torch.from_numpy(w))
    done = ~np.isnan(losses[:, 0])
    if done.sum() < 2:
        return path, None, float("nan"), float("nan")
    losses = losses[done]
    mean = losses.mean(0)
    best = int(np.argmin(mean))
    # One standard error of the paired (same fold) difference with the best: folds differ
    # in their loss level far more than models differ within a fold.
    excess = losses - losses[:, best:best + 1]
    se = excess.std(0, ddof=1) / np.sqrt(len(losses))
    chosen = int(np.nonzero(excess.mean(0) <= se)[0][0])  # the largest weight within 1 SE of the best
    # ... and only if it beats the constant model clearly
    gain = losses[:, 0] - losses[:, chosen]
    if chosen and gain.mean() < GAIN_STANDARD_ERRORS * gain.std(ddof=1) / np.sqrt(len(losses)):
        chosen = 0
    return path, (chosen - 1 if chosen else None), float(mean[chosen]), float(mean[0])
