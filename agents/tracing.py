"""Hidden-state traces: how simulated users' internal state moves under a policy.

For analysis and plots only: policies never see any of it. The user model's state is
read through its public `recsim_mm.users.UserModel.hidden_state` and, when the model
documents them (as `recsim_mm.users.MultimodalUser` does), its ``interest`` ``(B, d)``
and ``satiation`` ``(B, d)`` state tensors; a user model without them simply yields no
such trace.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from envs.vector_env import RecVectorEnv
from recsim_mm.item_space import ItemSpace
from recsim_mm.observation import TIME_LEFT


def topic_centres(item_space: ItemSpace) -> torch.Tensor | None:
    """``(topics, d_text)`` unit vectors: each topic's membership-weighted mean item text
    vector, or None when the item space has no topic labels."""
    if item_space.topics is None:
        return None
    weight = item_space.topics / item_space.topics.sum(0).clamp_min(1e-12)
    return torch.nn.functional.normalize(weight.T @ item_space.text, dim=-1)


def trace_hidden_state(policy: Any, env_options: dict[str, Any], item_space: ItemSpace, seed: int,
                       users: int) -> dict[str, np.ndarray]:
    """Step ``users`` held-out users through one episode under ``policy`` and record what
    moves inside them.

    Args:
        policy: anything with SB3's ``predict(obs, deterministic=True)`` (and optionally
            the ``observe(info)`` hook of `agents.baselines`).
        env_options: `envs.rec_env.RecEnvOptions` overrides (without ``item_space``).
        item_space: the environment's item space.
        seed: reset seed of the users.
        users: how many users to trace.

    Returns:
        ``{key: (steps, users) float64}``, NaN after a user's episode ended:
        ``time_left`` (minutes), ``affinity`` (true affinity of the recommended item),
        each changing quantity of the user model's ``hidden_state()`` (as
        ``hidden:<name>``) and, when the user model has them, ``satiation`` (norm of
        the satiation memory) and ``interest_topics`` ``(steps, users, topics)`` (cosine
        of the text interest with each topic's centre). A hidden quantity that never
        changes (e.g. a modality weight) is left out: it is not a trajectory.
    """
    env = RecVectorEnv(users, **{**env_options, "item_space": item_space})
    obs, info = env.reset(seed=seed)
    model = env.simulator.users
    interest = getattr(model, "interest", None)
    satiation = getattr(model, "satiation", None)
    centres = topic_centres(item_space) if interest is not None else None
    if centres is not None:
        centres = centres.to(env.simulator.device)
    rows: dict[str, list[np.ndarray]] = {"time_left": [], "affinity": [], "satiation": [], "interest_topics": []}
    alive = np.ones(users, dtype=bool)
    for _ in range(env.simulator.max_steps + 1):
        if hasattr(policy, "observe"):
            policy.observe(info)
        actions, _ = policy.predict(obs, deterministic=True)
        first = np.asarray(actions).reshape(users, -1)[:, 0]
        nan = np.where(alive, 1.0, np.nan)
        rows["time_left"].append(obs[TIME_LEFT][:, 0] * nan)
        rows["affinity"].append(info["candidate_affinity"][np.arange(users), first] * nan)
        for key, value in model.hidden_state().items():
            rows.setdefault(f"hidden:{key}", []).append(value.cpu().numpy().astype(np.float64) * nan)
        if satiation is not None:
            rows["satiation"].append(model.satiation.norm(dim=1).cpu().numpy() * nan)
        if centres is not None:
            text = torch.nn.functional.normalize(model.interest[:, : item_space.d_text], dim=-1)
            rows["interest_topics"].append((text @ centres.T).cpu().numpy() * nan[:, None])
        obs, _, terminated, truncated, info = env.step(actions)
        alive &= ~(terminated | truncated)
        if not alive.any():
            break
    traces = {k: np.stack(v) for k, v in rows.items() if v}
    return {k: v for k, v in traces.items()
            if not k.startswith("hidden:") or np.nanmax(v, 0).round(6).tolist() != np.nanmin(v, 0).round(6).tolist()}
