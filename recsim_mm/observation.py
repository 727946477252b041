"""The observation keys, defined once.

Every environment, policy and tool refers to an observation's entries through these
constants rather than string literals, so a renamed or added key is one edit here.
Shapes (leading ``B`` in batched form, none for one user; see
`recsim_mm.simulator` and docs/environments.md):

- `HISTORY_ITEMS` ``"history_items"``: ``(H, d)`` float32 fused vectors
  (``embeddings`` mode) or ``(H,)`` int64 item rows (``ids`` mode), most recent last,
  zero where padded.
- `HISTORY_FEEDBACK` ``"history_feedback"``: ``(H, 2)`` float32 ``[clicked 0/1,
  engagement minutes]``.
- `HISTORY_MASK` ``"history_mask"``: ``(H,)`` float32, 1 for a real past step.
- `CANDIDATE_ITEMS` ``"candidate_items"``: ``(K, d)`` float32 or ``(K,)`` int64.
- `TIME_LEFT` ``"time_left"``: ``(1,)`` float32 minutes of the session budget.
- `USER_FEATURES` ``"user_features"``: ``(F,)`` float32, only for user models that
  expose features.
"""

from __future__ import annotations

HISTORY_ITEMS = "history_items"
HISTORY_FEEDBACK = "history_feedback"
HISTORY_MASK = "history_mask"
CANDIDATE_ITEMS = "candidate_items"
TIME_LEFT = "time_left"
USER_FEATURES = "user_features"

#: Keys present in every observation, in the order the environments build them.
REQUIRED_KEYS: tuple[str, ...] = (HISTORY_ITEMS, HISTORY_FEEDBACK, HISTORY_MASK, CANDIDATE_ITEMS, TIME_LEFT)
#: Every key an observation may hold (`USER_FEATURES` only with a user model that has features).
OBSERVATION_KEYS: tuple[str, ...] = (*REQUIRED_KEYS, USER_FEATURES)
#: Keys whose entries are item vectors (``embeddings`` mode) or item rows (``ids`` mode).
ITEM_KEYS: tuple[str, ...] = (HISTORY_ITEMS, CANDIDATE_ITEMS)

__all__ = [
    "CANDIDATE_ITEMS",
    "HISTORY_FEEDBACK",
    "HISTORY_ITEMS",
    "HISTORY_MASK",
    "ITEM_KEYS",
    "OBSERVATION_KEYS",
    "REQUIRED_KEYS",
    "TIME_LEFT",
    "USER_FEATURES",
]
