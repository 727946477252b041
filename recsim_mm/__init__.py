"""recsim-mm: the simulation library.

Catalog, encoders, fusion into the item space, simulated users, the batched simulator
core, the shared scorer network, the ranker, logged data and metrics. This package
imports no RL library; `envs` builds Gymnasium/PettingZoo environments on top of it.
"""

from recsim_mm.device import resolve_device
from recsim_mm.item_space import ItemSpace

__all__ = ["ItemSpace", "resolve_device"]
__version__ = "0.1.0"
