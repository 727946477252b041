"""Real data in, calibrated users out: interaction logs from real platforms, user
populations fitted to them, and a fidelity report (docs/real_data.md).

- `tables`: the canonical event table, column mappings, ready-made public layouts
  (MovieLens, MIND, KuaiRand, KuaiRec) and the readers (CSV/TSV/Parquet).
- `items`: a dataset's item file + an image folder -> a catalog file -> `Catalog`.
- `records`: events joined with the catalog -> `InteractionLog` (impressions or
  sampled negatives), and the per-user time split.
- `calibration`: fit the default user model's interests, modality weights and choice
  and session parameters -> `UserPopulation`.
- `fidelity`: real vs simulated behaviour side by side, and held-out click AUC.

Command line: ``python -m recsim_mm.real_data --help``.
"""

from recsim_mm.real_data.calibration import UserPopulation, fit_population
from recsim_mm.real_data.items import write_catalog
from recsim_mm.real_data.records import ImportReport, build_interaction_log, split_by_time
from recsim_mm.real_data.tables import (
    LAYOUTS,
    ItemMapping,
    LogFormatError,
    LogMapping,
    LogTable,
    layout,
    read_log_table,
)

__all__ = [
    "LAYOUTS", "ImportReport", "ItemMapping", "LogFormatError", "LogMapping", "LogTable", "UserPopulation",
    "build_interaction_log", "fit_population", "layout", "read_log_table", "split_by_time", "write_catalog",
]
