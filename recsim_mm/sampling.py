"""Sampling from softmax and Plackett-Luce distributions: Gumbel noise and slate log-probabilities.

One helper per job, used by every module that draws a choice or a slate:

- `gumbel_noise`: standard Gumbel draws ``-log(-log U)``.
- `gumbel_max`: one categorical draw per row from ``softmax(logits)`` (Gumbel-max trick;
  the user's click in `recsim_mm.choice`).
- `gumbel_top_k`: an ordered slate of ``k`` distinct entries per row, drawn from the
  Plackett-Luce model over ``softmax(logits)`` (Gumbel top-k trick, exact; the logging
  policies in `recsim_mm.logging_policies` and PPO's slate distribution in
  `agents.policies`).
- `plackett_luce_log_prob` / `plackett_luce_log_prob_and_entropy`: the exact
  log-probability of given ordered slates, and the chain-rule entropy along them.

Every draw consumes exactly one ``torch.rand`` of the logits' shape from the given
generator (or torch's global one), so the same seed gives the same draws.
"""

from __future__ import annotations

import torch

#: Smallest uniform draw used: ``torch.rand`` can return exactly 0, whose Gumbel value
#: would be ``-inf``. Any other float32 or float64 draw (a multiple of ``2**-24`` or
#: ``2**-53``) is larger, so the clamp changes nothing else.
_MIN_UNIFORM = 1e-20


def gumbel_noise(
    shape: torch.Size | tuple[int, ...],
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard Gumbel draws ``-log(-log U)``, ``U ~ Uniform[0, 1)``, of the given shape.

    Args:
        shape: output shape.
        generator: source of randomness (None: torch's global generator); must live on
            ``device``.
        device, dtype: of the output.

    Returns:
        ``shape`` tensor of ``dtype``; finite (a draw ``U = 0`` is clamped to ``1e-20``,
        which gives the smallest value, about -3.83).
    """
    u = torch.rand(shape, generator=generator, device=device, dtype=dtype)
    return -torch.log(-torch.log(u.clamp_min_(_MIN_UNIFORM)))


def gumbel_max(logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw per row from ``softmax(logits)`` over the last dimension (Gumbel-max trick).

    Args:
        logits: ``(..., K)`` float; ``-inf`` entries are never drawn.
        generator: as in `gumbel_noise`.

    Returns:
        ``(...)`` int64 index in ``[0, K)``.
    """
    noise = gumbel_noise(logits.shape, generator, logits.device, logits.dtype)
    return (logits + noise).argmax(dim=-1)


def gumbel_top_k(logits: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """An ordered slate of ``k`` distinct entries per row from the Plackett-Luce model.

    Position 0 is drawn from ``softmax(logits)``, position 1 from the softmax over the
    entries not yet drawn, and so on; adding Gumbel noise and taking the top ``k`` is an
    exact draw from that model.

    Args:
        logits: ``(B, K)`` float.
        k: slate size, ``1 <= k <= K``.
        generator: as in `gumbel_noise`.

    Returns:
        ``(B, k)`` int64 positions in ``[0, K)``, distinct per row, in slate order.
    """
    noise = gumbel_noise(logits.shape, generator, logits.device, logits.dtype)
    return (logits + noise).topk(k, dim=-1).indices


def plackett_luce_log_prob_and_entropy(
    logits: torch.Tensor, slates: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of ordered slates under Plackett-Luce, and the chain-rule entropy along them.

    ``log P(slate) = sum_s log softmax(logits over the entries not in slate[:s])[slate[s]]``.
    The exact entropy sums over all ``K!/(K-S)!`` slates; the returned one is
    ``sum_s H(softmax over the entries not in slate[:s])``, an unbiased estimate of it
    when the slates are drawn from the model (what PPO's entropy bonus needs).

    Args:
        logits: ``(B, K)`` float (finite).
        slates: ``(B, S)`` int64 positions in ``[0, K)``, distinct per row, ``S <= K``.

    Returns:
        ``(log_prob (B,), entropy (B,))`` in nats, the dtype of ``logits``; both are
        differentiable in ``logits``.
    """
    taken = torch.zeros_like(logits, dtype=torch.bool)
    log_prob = logits.new_zeros(logits.shape[0])
    entropy = logits.new_zeros(logits.shape[0])
    for position in range(slates.shape[1]):
        chosen = slates[:, position : position + 1]
        log_soft = torch.log_softmax(logits.masked_fill(taken, float("-inf")), dim=-1)
        log_soft = log_soft.masked_fill(taken, 0.0)
        log_prob = log_prob + log_soft.gather(1, chosen).squeeze(1)
        entropy = entropy - (log_soft.exp() * log_soft).masked_fill(taken, 0.0).sum(-1)
        taken = taken.scatter(1, chosen, True)
    return log_prob, entropy


def plackett_luce_log_prob(logits: torch.Tensor, slates: torch.Tensor) -> torch.Tensor:
    """``(B,)`` log-probability (nats) of the ordered ``slates (B, S)`` under ``logits (B, K)``;
    see `plackett_luce_log_prob_and_entropy`."""
    return plackett_luce_log_prob_and_entropy(logits, slates)[0]
