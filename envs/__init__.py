"""Gymnasium and PettingZoo environments over the recsim_mm simulator core.

Importing this package registers the Gymnasium ids below (one table), so both
``import envs; gymnasium.make("recsim_mm/Satiation-v0")`` and
``gymnasium.make("envs:recsim_mm/Satiation-v0")`` work, as does
``gymnasium.make_vec(id, num_envs=B, vectorization_mode="vector_entry_point")`` for
the native batched `RecVectorEnv`.
"""

from __future__ import annotations

from gymnasium.envs.registration import register, registry

from envs.rec_env import RecEnv, RecEnvOptions
from envs.vector_env import RecVectorEnv

#: Slate size of the ``...Slate-v0`` ids.
SLATE_SIZE = 3

#: The registration table: id stem -> user model (see recsim_mm.users).
VARIANTS: dict[str, str] = {
    "InterestEvolution": "interest_evolution",
    "Satiation": "satiation",
    "Myopic": "myopic",
}


def _env_ids() -> dict[str, dict[str, object]]:
    table = {}
    for stem, user_model in VARIANTS.items():
        table[f"recsim_mm/{stem}-v0"] = {"user_model": user_model}
        table[f"recsim_mm/{stem}Slate-v0"] = {"user_model": user_model, "slate_size": SLATE_SIZE}
    return table


#: Every registered id and its environment options.
ENV_IDS: dict[str, dict[str, object]] = _env_ids()

for _env_id, _kwargs in ENV_IDS.items():
    if _env_id not in registry:  # re-importing (e.g. importlib.reload) must not warn
        register(
            id=_env_id,
            entry_point="envs.rec_env:RecEnv",
            vector_entry_point="envs.vector_env:RecVectorEnv",
            kwargs=dict(_kwargs),
        )

__all__ = ["ENV_IDS", "SLATE_SIZE", "VARIANTS", "RecEnv", "RecEnvOptions", "RecVectorEnv"]
