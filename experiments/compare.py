"""Put two or more results folders side by side, with paired differences where users match.

    .venv/bin/python experiments/compare.py results/A results/B [results/C ...] [--metric NAME]

For each strategy: the mean ± 95% CI half-width over seeds of ``NAME`` (default
``episode_return``) in every folder, then the difference of each later folder from the
first (the reference). The difference is *paired* (seed by seed, `report.paired_difference`)
when both folders evaluated that seed on the same held-out users: the same environment,
user model, catalog, item vectors and ``eval`` users (read from each folder's
``config.yaml``). Otherwise the folders are compared as independent samples (difference
of means, no interval) and the table says so. Reads ``metrics.csv`` (strategy, seed,
metric, value), which every `experiments/run.py` results folder holds.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from experiments import report  # noqa: E402

#: Config sections and keys that decide who the held-out users are and what they see.
SAME_USERS_KEYS = ("env", "user_model", "user_params", "catalog", "encoders", "eval.num_users", "eval.seed_offset")
#: Keys of those sections that change what the users see but not who they are: the history
#: prefix is drawn after the users (docs/cold_start.md), so prefix 0 vs 3 pairs seed by seed.
SAME_USERS_EXCEPT = ("env.history_prefix",)

Metrics = dict[str, dict[int, dict[str, float]]]


class CompareError(ValueError):
    """A results folder that cannot be compared; the message names the folder or file."""


def read_metrics(folder: Path) -> Metrics:
    """``{strategy: {seed: {metric: value}}}`` from ``folder/metrics.csv``.

    Raises:
        CompareError: no such file, or a row that is not ``strategy,seed,metric,value``.
    """
    path = Path(folder) / "metrics.csv"
    if not path.is_file():
        raise CompareError(f"{path}: no such file; expected a results folder written by experiments/run.py")
    out: Metrics = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != ["strategy", "seed", "metric", "value"]:
            raise CompareError(f"{path}: header {reader.fieldnames}; expected strategy,seed,metric,value")
        for line, row in enumerate(reader, start=2):
            try:
                out.setdefault(row["strategy"], {}).setdefault(int(row["seed"]), {})[row["metric"]] = float(row["value"])
            except (TypeError, ValueError) as exc:
                raise CompareError(f"{path}, line {line}: {row} is not a (strategy, int seed, metric, "
                                   f"number) row ({exc})") from None
    return out


def held_out_users(folder: Path) -> dict | None:
    """What decides a folder's held-out users (`SAME_USERS_KEYS` of its ``config.yaml``), or
    None when the folder has no config."""
    path = Path(folder) / "config.yaml"
    if not path.is_file():
        return None
    config = yaml.safe_load(path.read_text()) or {}
    out = {}
    for key in SAME_USERS_KEYS:
        value = config
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if f"{key}.{k}" not in SAME_USERS_EXCEPT}
        out[key] = value
    return out


def compare(folders: list[Path], metric: str = "episode_return") -> str:
    """The side-by-side markdown table of ``metric`` for ``folders`` (the first is the reference)."""
    runs = [read_metrics(f) for f in folders]
    users = [held_out_users(f) for f in folders]
    strategies = list(dict.fromkeys(s for run in runs for s in run))
    available = sorted({m for run in runs for per in run.values() for v in per.values() for m in v})
    if metric not in available:
        raise CompareError(f"metric {metric!r} is in none of the folders; expected one of {available}")
    names = [Path(f).name for f in folders]
    head = ["strategy", *names] + [f"{n} - {names[0]}" for n in names[1:]]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    notes = []
    for i, u in enumerate(users[1:], start=1):
        if u is None or users[0] is None:
            notes.append(f"- {names[i]}: no config.yaml on one side; seeds are paired as if the held-out users matched.")
        elif u != users[0]:
            differing = [k for k in SAME_USERS_KEYS if u[k] != users[0][k]]
            notes.append(f"- {names[i]}: held-out users differ from {names[0]} ({', '.join(differing)}): "
                         "independent difference of means, not paired.")
    for strategy in strategies:
        values = [{s: m[metric] for s, m in run.get(strategy, {}).items() if metric in m} for run in runs]
        cells = [_mean_cell(v) for v in values]
        for i in range(1, len(runs)):
            cells.append(_difference_cell(values[0], values[i], paired=users[i] == users[0] or None in (users[0], users[i])))
        lines.append(f"| {strategy} | " + " | ".join(cells) + " |")
    title = f"{metric}: mean ± 95% CI over seeds; differences paired by seed where the held-out users match"
    return "\n".join([title, "", *lines, "", *notes]).rstrip() + "\n"


def _mean_cell(values: dict[int, float]) -> str:
    if not values:
        return "-"
    mean, half = report.mean_ci(list(values.values()))
    return f"{mean:.3f}" + (f" ± {half:.3f}" if np.isfinite(half) else "") + f" (n={len(values)})"


def _difference_cell(reference: dict[int, float], other: dict[int, float], paired: bool) -> str:
    if not reference or not other:
        return "-"
    common = sorted(set(reference) & set(other))
    if paired and common:
        c = report.paired_difference([other[s] for s in common], [reference[s] for s in common])
        ci = f" [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}]" if np.isfinite(c["ci_low"]) else ""
        return f"{c['diff']:+.3f}{ci} paired, {c['wins']}/{c['n']} seeds higher"
    diff = np.mean(list(other.values())) - np.mean(list(reference.values()))
    return f"{diff:+.3f} unpaired"


def cli(argv: list[str] | None = None) -> int:
    """Command-line entry: prints the table; a bad folder is one error line and exit code 2."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path, help="results folders; the first is the reference")
    parser.add_argument("--metric", default="episode_return", help="a metric of metrics.csv (default: %(default)s)")
    args = parser.parse_args(argv)
    if len(args.folders) < 2:
        parser.error("give at least two results folders")
    try:
        print(compare(args.folders, args.metric), end="")
    except CompareError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
