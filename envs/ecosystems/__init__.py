"""Multi-agent recommender ecosystems as PettingZoo environments over the batched simulator core.

- `envs.ecosystems.platforms`: M recommender platforms compete for one user population
  (users pick a platform by their accumulated satisfaction plus a switching cost).
- `envs.ecosystems.creators`: content creators choose where in the item space to
  publish; a fixed recommender serves the users; creators earn exposure.

Each module has PettingZoo's entry points: ``parallel_env()`` (the `ParallelEnv`),
``raw_env()`` and ``env()`` (the AEC form via ``pettingzoo.utils.parallel_to_aec``).
See docs/ecosystems.md.
"""

from __future__ import annotations

from envs.ecosystems import creators, platforms
from envs.ecosystems.creators import ContentMap, CreatorEcosystemEnv, CreatorOffers
from envs.ecosystems.platforms import PlatformChoiceConfig, PlatformCompetitionEnv

__all__ = [
    "ContentMap",
    "CreatorEcosystemEnv",
    "CreatorOffers",
    "PlatformChoiceConfig",
    "PlatformCompetitionEnv",
    "creators",
    "platforms",
]
