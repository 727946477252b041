"""Fused CPU kernels for the default user model's step (numba), one pass per user.

A step of the default user (`recsim_mm.users.multimodal.MultimodalUser`) written as
torch operations is a few dozen small tensor ops. Each op costs a fixed 3-7 us of
dispatch on CPU whatever its size, which is the whole cost of a one-user step (the
single `RecEnv`), and each op is one pass over memory, which is most of the cost of a
large batch. The kernels here compute the same formulas user by user in one loop
(numba-compiled, no Python per user), reading the same tensors through zero-copy numpy
views and drawing no random numbers: the uniforms come from the simulator's
`torch.Generator`, drawn by the caller in the same order and sizes as the torch path
draws them, so a seed gives the same trajectory on either path.

They are an implementation of `MultimodalUser`'s step, not a second simulator: the
torch path stays (CUDA, and ``RECSIM_MM_KERNELS=0``), and tests run both on the same
seed and compare (tests/test_kernels.py). Floats agree to a few units in the last
place (a sum over ``d`` items adds in a different order; ``exp``/``log`` come from
another math library); the discrete outcomes (clicks, episode ends) are the same
unless a uniform falls within that rounding of a threshold.

Compiled on first use and cached on disk next to this file (numba ``cache=True``),
so later processes start without compiling.
"""

from __future__ import annotations

import math
import os

import numpy as np

try:  # numba is a dependency; without it (or with RECSIM_MM_KERNELS=0) the torch path runs
    import numba

    _njit = numba.njit(cache=True, nogil=True)
    # Dot products may add in any order (SIMD lanes): the result moves in the last bits
    # only, and a given machine always computes the same value.
    _njit_dot = numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
    AVAILABLE = os.environ.get("RECSIM_MM_KERNELS", "1") != "0"
except ImportError:  # pragma: no cover - numba is installed with the package
    numba = None
    AVAILABLE = False

    def _njit(function):  # type: ignore[no-redef]
        return function

    _njit_dot = _njit


def enabled() -> bool:
    """Whether the fused CPU kernels run (numba importable and ``RECSIM_MM_KERNELS`` is not ``0``)."""
    return AVAILABLE


@_njit
def _sigmoid(x):
    return np.float32(1.0) / (np.float32(1.0) + np.exp(-x))


@_njit
def _item_utility(table, row, probe, b, strength):
    """User ``b``'s ``(utility, satiation)`` of item ``row``: one pass over the table row
    with both probe rows (see `slate_utility`)."""
    score = 0.0
    sat = 0.0
    for j in range(table.shape[1]):
        x = table[row, j]
        score += x * probe[b, 0, j]
        sat += x * probe[b, 1, j]
    sat32 = max(np.float32(sat), np.float32(0.0))
    return np.float32(score) - strength * sat32, sat32


@_njit
def slate_utility(table, slate, probe, satiation_strength, utility, satiation):
    """Utility and satiation of every slate item, from gathered table rows.

    Args:
        table: ``(N, d + 2)`` float32 item rows [fused | quality - 0.5 | duration].
        slate: ``(B, S)`` int64 item rows.
        probe: ``(B, 2, d + 2)`` float32 per-user rows [weighted interest |
            quality_weight | 0] and [satiation memory | 0 | 0].
        satiation_strength: utility lost per unit of satiation.
        utility: ``(B, S)`` float32 output: affinity + quality term - strength * satiation.
        satiation: ``(B, S)`` float32 output: ``max(<memory, x>, 0)``.
    """
    b_count, s_count = slate.shape
    strength = np.float32(satiation_strength)
    for b in range(b_count):
        for s in range(s_count):
            utility[b, s], satiation[b, s] = _item_utility(table, slate[b, s], probe, b, strength)


@_njit
def respond_single(table, slate, probe, budget, u_choice, u_watch, satiation_strength,
                   temperature, no_click_utility, gain, midpoint, noise_scale,
                   clicked, minutes, watched, chosen_satiation):
    """A one-item slate under the multinomial logit: click, watched fraction, minutes.

    Per user: utility ``u`` as in `slate_utility`; click iff ``u_choice <
    sigmoid((u - no_click_utility) / temperature)``; watched fraction
    ``sigmoid(gain * u + noise_scale * logit(u_watch) - gain * midpoint)`` (``logit``
    clamped to ``[1e-6, 1 - 1e-6]``), 0 without a click; minutes ``min(watched *
    duration, budget)``.

    Args:
        table, probe, satiation_strength: as in `slate_utility`.
        slate: ``(B, 1)`` int64 item rows.
        budget: ``(B,)`` float32 minutes left.
        u_choice, u_watch: ``(B,)`` float32 uniforms (drawn in this order).
        temperature, no_click_utility, gain, midpoint, noise_scale: choice and
            watched-fraction parameters (`MultimodalUserConfig`).
        clicked: ``(B,)`` int64 output, 0 or -1.
        minutes: ``(B,)`` float32 output.
        watched: ``(B,)`` float32 output.
        chosen_satiation: ``(B,)`` float32 output, satiation of the shown item.
    """
    b_count = slate.shape[0]
    width = table.shape[1]
    strength = np.float32(satiation_strength)
    inv_t = np.float32(1.0) / np.float32(temperature)
    u0 = np.float32(no_click_utility)
    g = np.float32(gain)
    offset = np.float32(gain * midpoint)
    noise = np.float32(noise_scale)
    eps = np.float32(1e-6)
    for b in range(b_count):
        row = slate[b, 0]
        utility, sat32 = _item_utility(table, row, probe, b, strength)
        chosen_satiation[b] = sat32
        p = _sigmoid((utility - u0) * inv_t)
        click = u_choice[b] < p
        clicked[b] = 0 if click else -1
        w = np.float32(0.0)
        if click:
            u = min(max(u_watch[b], eps), np.float32(1.0) - eps)
            logistic = np.float32(math.log(u / (np.float32(1.0) - u)))
            w = _sigmoid(noise * logistic + g * utility - offset)
        watched[b] = w
        minutes[b] = min(w * table[row, width - 1], budget[b])


@_njit
def transition(table, shown, watched, engagement, clicked, chosen_satiation, u_quit, text_width,
               satiation_decay, satiation_on, drift_rate, refund_rate, step_cost,
               disappointment_threshold, patience, quit_probability, boredom_rate,
               satiation, interest, column_weight, weighted, budget, disappointments, left):
    """Move every user's state after a step (in place); see `MultimodalUser.transition`.

    Args:
        table: ``(N, d + 2)`` float32 item rows.
        shown: ``(B,)`` int64 item row consumed (the clicked one, or the one shown).
        watched: ``(B,)`` float32 watched fraction (0 without a click).
        engagement: ``(B,)`` float32 minutes.
        clicked: ``(B,)`` int64 clicked slate position or -1.
        chosen_satiation: ``(B,)`` float32 satiation of the shown item (boredom).
        u_quit: ``(B,)`` float32 uniforms, read only when ``quit_probability`` or
            ``boredom_rate`` is set.
        text_width: columns of the text part (the rest is the image part).
        satiation_decay, satiation_on, drift_rate, refund_rate, step_cost,
        disappointment_threshold, patience, quit_probability, boredom_rate:
            `MultimodalUserConfig` values (``satiation_on``: strength > 0).
        satiation, interest, column_weight, weighted: ``(B, d)`` float32 state.
        budget, disappointments: ``(B,)`` float32 state.
        left: ``(B,)`` bool state.
    """
    b_count, d = interest.shape
    decay = np.float32(satiation_decay)
    rate = np.float32(drift_rate)
    refund = np.float32(refund_rate)
    cost = np.float32(step_cost)
    threshold = np.float32(disappointment_threshold)
    stay_base = np.float32(1.0 - quit_probability)
    boredom = np.float32(boredom_rate)
    half = np.float32(0.5)
    for b in range(b_count):
        row = shown[b]
        w = watched[b]
        if satiation_on:
            scale = half * w
            for j in range(d):
                satiation[b, j] = satiation[b, j] * decay + table[row, j] * scale
        if drift_rate > 0:
            step = rate * w
            for j in range(d):
                interest[b, j] = interest[b, j] + (table[row, j] - interest[b, j]) * step
            for lo, hi in ((0, text_width), (text_width, d)):
                total = 0.0
                for j in range(lo, hi):
                    total += interest[b, j] * interest[b, j]
                norm = max(np.float32(math.sqrt(total)), np.float32(1e-12))
                for j in range(lo, hi):
                    interest[b, j] = interest[b, j] / norm
            for j in range(d):
                weighted[b, j] = interest[b, j] * column_weight[b, j]
        left_now = budget[b] + engagement[b] * (w * refund - np.float32(1.0))
        budget[b] = max(left_now - cost, np.float32(0.0))
        if w < threshold:
            disappointments[b] = disappointments[b] + np.float32(1.0)
        else:
            disappointments[b] = np.float32(0.0)
        if patience > 0 and disappointments[b] >= patience:
            left[b] = True
        if quit_probability > 0 or boredom_rate > 0:
            stay = stay_base
            if boredom_rate > 0 and satiation_on:
                bored = chosen_satiation[b] if clicked[b] >= 0 else np.float32(0.0)
                stay = stay * np.exp(-boredom * bored)
            if u_quit[b] >= stay:
                left[b] = True


@_njit_dot
def affinity_of(fused, items, weighted, affinity):
    """``affinity[b, k] = <weighted[b], fused[items[b, k], :d]>`` without writing the vectors.

    Args:
        fused: ``(N, d')`` float32 with ``d' >= d`` (the first ``d`` columns are the
        item vectors; the user model's table has two more); items: ``(B, K)`` int64;
        weighted: ``(B, d)`` float32; affinity: ``(B, K)`` float32 output.
    """
    b_count, k_count = items.shape
    d = weighted.shape[1]
    interest = np.empty(d, np.float32)  # the user's row, contiguous: the dot products vectorise
    for b in range(b_count):
        for j in range(d):
            interest[j] = weighted[b, j]
        for k in range(k_count):
            row = items[b, k]
            total = np.float32(0.0)
            for j in range(d):
                total += fused[row, j] * interest[j]
            affinity[b, k] = total


@_njit
def shifted_rows(pool, pick, shift, num_items, out):
    """Uniform candidate sets ``out[r] = (pool[pick[r]] + shift[r]) mod N`` in one pass.

    Args:
        pool: ``(P, K)`` int64 distinct K-tuples over ``range(N)``.
        pick: ``(R,)`` int64 pool rows; shift: ``(R,)`` int64 shifts in ``[0, N)``.
        num_items: ``N``.
        out: ``(R, K)`` int64 output.
    """
    r_count, k_count = out.shape
    for r in range(r_count):
        base = pick[r]
        s = shift[r]
        for k in range(k_count):
            v = pool[base, k] + s
            out[r, k] = v - num_items if v >= num_items else v


@_njit
def gamma_round(x, u, d, c, value):
    """One Marsaglia-Tsang round: ``value = d * (1 + c x)^3`` and whether each is accepted.

    Args:
        x: ``(m,)`` float32 standard normals; u: ``(m,)`` float32 uniforms.
        d, c: ``shape - 1/3`` and ``1 / sqrt(9 d)``.
        value: ``(m,)`` float32 output, the candidate draws.

    Returns:
        ``(m,)`` bool, accepted (``v > 0`` and ``log u < x^2/2 + d - d v + d log v``).
    """
    m = x.shape[0]
    ok = np.empty(m, np.bool_)
    d32 = np.float32(d)
    c32 = np.float32(c)
    half = np.float32(0.5)
    for i in range(m):
        t = np.float32(1.0) + c32 * x[i]
        v = t * t * t
        value[i] = d32 * v
        if v > 0:
            bound = half * x[i] * x[i] + d32 - d32 * v + d32 * np.float32(math.log(max(v, np.float32(1e-30))))
            ok[i] = math.log(u[i]) < bound if u[i] > 0 else True
        else:
            ok[i] = False
    return ok


@_njit
def mix_interest(mix, favourite, centres, noise, noise_scale, out):
    """Interests around a mix of topic centres: ``normalize(sum_j mix_j centre_j + s * noise / sqrt(w))``.

    Args:
        mix: ``(R, k)`` float32 mixing weights (rows sum to 1).
        favourite: ``(R, k)`` int64 topic (centre) rows.
        centres: ``(T, w)`` float32 unit-norm centres.
        noise: ``(R, w)`` float32 standard normals.
        noise_scale: the noise's norm scale (``interest_noise``).
        out: ``(R, w)`` float32 output, unit-norm rows.
    """
    r_count, k_count = mix.shape
    width = centres.shape[1]
    scale = np.float32(noise_scale)
    root = np.float32(math.sqrt(width))
    for r in range(r_count):
        total = 0.0
        for j in range(width):
            v = np.float32(0.0)
            for k in range(k_count):
                v += mix[r, k] * centres[favourite[r, k], j]
            v = v + scale * noise[r, j] / root
            out[r, j] = v
            total += v * v
        norm = max(np.float32(math.sqrt(total)), np.float32(1e-12))
        for j in range(width):
            out[r, j] = out[r, j] / norm


@_njit
def write_users(rows, interest, modality_weight, budget, text_width,
                interest_out, modality_out, column_out, weighted_out, satiation_out, budget_out,
                disappointments_out, left_out):
    """Put fresh users into ``rows`` of the state arrays, one pass per user.

    Args:
        rows: ``(R,)`` int64 user rows.
        interest: ``(R, d)`` float32 unit-norm [text | image] interests.
        modality_weight: ``(R,)`` float32 text weight ``a``.
        budget: ``(R,)`` float32 minutes.
        text_width: text columns (weighted by ``a``; the rest by ``1 - a``).
        interest_out, column_out, weighted_out, satiation_out: ``(B, d)`` float32 state
            (interest, per-column modality weight, their product, satiation zeroed).
        modality_out, budget_out, disappointments_out: ``(B,)`` float32 state.
        left_out: ``(B,)`` bool state (cleared).
    """
    d = interest.shape[1]
    for i in range(rows.shape[0]):
        b = rows[i]
        a = modality_weight[i]
        rest = np.float32(1.0) - a
        modality_out[b] = a
        for j in range(d):
            w = a if j < text_width else rest
            x = interest[i, j]
            interest_out[b, j] = x
            column_out[b, j] = w
            weighted_out[b, j] = x * w
            satiation_out[b, j] = np.float32(0.0)
        budget_out[b] = budget[i]
        disappointments_out[b] = np.float32(0.0)
        left_out[b] = False
