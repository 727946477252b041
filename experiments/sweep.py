"""A grid sweep of any config keys on Ray Tune: one full `experiments/run.py` pipeline per trial.

    .venv/bin/python experiments/sweep.py base=quick grid.user_params.patience=[3,6] seeds=[0,1]
    .venv/bin/python experiments/sweep.py base=my.yaml grid.ppo.learning_rate=[1e-4,3e-4] grid.env.id=[a,b]

Arguments:

- ``base=NAME|FILE.yaml``: the preset (or config file) every trial starts from (default
  ``default``);
- ``grid.<key>=[v1,v2,...]``: a config key and its values; the trials are the product
  of the grids (every combination once);
- ``sweep.metric=NAME`` (default ``episode_return``): the metric of the table and plots;
  ``sweep.name=NAME`` (default: the base config's ``name``): the sweep folder
  ``<results_dir>/sweep-<name>/``;
- any other ``key=value``: a config override of every trial (``seeds=[0,1]``,
  ``ray.address=...``, ``results_dir=...``).

Every trial is a Ray Tune trial running `experiments.run.main` (``executor=local jobs=1``
inside the trial, ``ray.cpus_per_task`` CPUs per trial) with results in
``<sweep>/trials/<trial>/`` and the one stage cache ``cache_dir`` (default
``<results_dir>/.cache``) shared by all trials and by ordinary runs, so stages that do
not depend on the swept keys (the item space, often the logs and rankers) are computed
once (under the cache's locks, even by trials running at the same time).

Resuming: a trial is complete when its results folder holds ``summary.md`` (written
last). Re-running the same command skips complete trials and runs the others; an
interrupted trial resumes from the stage cache (finished stages reused, agents from
their checkpoints). Tune's own experiment restore is not used: the results folders are
the record of what finished.

Output in the sweep folder: ``sweep.csv`` (swept values, environment, strategy, mean
and 95% CI of the metric over seeds, paired difference with the greedy ranker and its
95% CI), ``sweep.md`` (the same as a table), ``plots/<key>.png`` (the metric against
each swept key, one line per strategy), ``trials.csv`` (trial -> swept values -> folder).
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import yaml  # noqa: E402

from experiments import report  # noqa: E402
from experiments.config import ConfigError, load_config, parse_override  # noqa: E402

#: Keys of the sweep itself (the rest are config overrides of every trial).
SWEEP_KEYS = ("sweep.metric", "sweep.name")


class SweepIncomplete(RuntimeError):
    """Some trials failed; the table and plots cover the complete ones."""


class Sweep:
    """A parsed sweep command line.

    Attributes:
        base: the ``preset=`` of every trial (a name or an absolute YAML path).
        grid: ``{config key: [values]}`` in command-line order.
        fixed: ``key=value`` overrides of every trial (absolute paths).
        metric: the metric of the table and plots.
        folder: the sweep folder; ``cache_dir``: the stage cache every trial shares.
        config: the first trial's resolved config (for its ``ray`` section and ``name``).
    """

    def __init__(self, argv: list[str]):
        base, grid, fixed, options = "default", {}, [], {"sweep.metric": "episode_return", "sweep.name": None}
        for text in argv:
            key, value = parse_override(text)
            if key == "base":
                base = str(value)
            elif key == "preset":
                raise ConfigError("sweep: the starting config is 'base=' (a preset name or a .yaml file), not 'preset='")
            elif key.startswith("grid."):
                name = key[len("grid."):]
                if not isinstance(value, list) or not value:
                    raise ConfigError(f"sweep key {key!r} = {value!r}: expected a non-empty list of values "
                                      "like [v1,v2]")
                if len({json.dumps(v, sort_keys=True) for v in value}) != len(value):
                    raise ConfigError(f"sweep key {key!r} = {value!r}: each value once")
                grid[name] = value
            elif key.startswith("sweep."):
                if key not in SWEEP_KEYS:
                    raise ConfigError(f"unknown sweep key {key!r}; expected one of {list(SWEEP_KEYS)}, "
                                      "grid.<config key>=[...], base=... or config overrides")
                options[key] = value
            else:
                fixed.append((key, value))
        if not grid:
            raise ConfigError("sweep: no grid; give at least one grid.<config key>=[v1,v2,...]")
        if base.endswith((".yaml", ".yml")):
            base = str(Path(base).resolve())
        self.base, self.grid, self.metric = base, grid, str(options["sweep.metric"])
        absolute = {"results_dir", "cache_dir", "catalog.path"}
        self.fixed = [f"{k}={yaml.safe_dump(str(Path(v).resolve()) if k in absolute and v is not None else v, default_flow_style=True).strip().removesuffix('...').strip()}"
                      for k, v in fixed]
        for key in grid:
            if key in ("results_dir", "cache_dir", "name", "executor", "jobs", "seeds") or key.startswith("ray."):
                raise ConfigError(f"sweep key 'grid.{key}': {key!r} is set by the sweep itself or spans "
                                  "seeds; sweep a key of the experiment (e.g. grid.user_params.patience)")
        # Every trial's config is checked here, before anything runs: an unknown key gets the
        # nearest valid one (config.py's check), a value its type and range checks.
        configs = [self.config_of(combo) for combo in self.combinations()]
        self.config = configs[0]
        results_dir = Path(self.config.results_dir).resolve()
        self.cache_dir = Path(self.config.cache_dir).resolve() if self.config.cache_dir else results_dir / ".cache"
        self.folder = results_dir / f"sweep-{options['sweep.name'] or self.config.name}"

    def combinations(self) -> list[dict[str, Any]]:
        """Every combination of the grid values, ``{key: value}``, in grid order."""
        return [dict(zip(self.grid, values, strict=True)) for values in itertools.product(*self.grid.values())]

    def overrides(self, combo: dict[str, Any]) -> list[str]:
        """The ``run.py`` arguments of one trial (without its folders)."""
        swept = [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
                 for k, v in combo.items()]
        return [f"preset={self.base}", *self.fixed, *swept]

    def config_of(self, combo: dict[str, Any]):
        """The validated config of one trial (a ConfigError names the bad key)."""
        try:
            return load_config(self.overrides(combo))
        except ConfigError as exc:
            swept = ", ".join(f"grid.{k}={v!r}" for k, v in combo.items())
            raise ConfigError(f"sweep trial {swept}: {exc}") from None

    @staticmethod
    def trial_id(combo: dict[str, Any]) -> str:
        """A stable folder name for a combination (the same on every re-run)."""
        return "trial-" + hashlib.sha256(json.dumps(combo, sort_keys=True).encode()).hexdigest()[:10]


def complete_run(trial_dir: Path) -> Path | None:
    """The finished results folder of a trial (it holds ``summary.md``), or None."""
    done = sorted(p.parent for p in trial_dir.glob("*/summary.md"))
    return done[-1] if done else None


def run_trial(config: dict) -> None:
    """One Tune trial (``config["trial"]``: its overrides and folders): `experiments.run.main`,
    then a report to Tune."""
    from ray import tune

    from experiments.run import main

    params = config["trial"]
    os.chdir(params["cwd"])  # Tune starts trials in their own folder; run where the sweep was started
    run_dir = main([*params["overrides"], f"results_dir={params['results_dir']}", f"cache_dir={params['cache_dir']}",
                    "executor=local", "jobs=1", "progress=false", f"threads={params['threads']}"])
    tune.report({"complete": 1, "run_dir": str(run_dir)})


def read_metrics(run_dir: Path, metric: str) -> dict[tuple[str, str], dict[int, float]]:
    """``{(environment, strategy): {seed: value}}`` of ``metric`` from a results folder
    (a suite has one ``metrics.csv`` per environment folder)."""
    out: dict[tuple[str, str], dict[int, float]] = {}
    files = [run_dir / "metrics.csv"] if (run_dir / "metrics.csv").is_file() else sorted(run_dir.glob("*/metrics.csv"))
    config = yaml.safe_load((run_dir / "config.yaml").read_text()) if (run_dir / "config.yaml").is_file() else None
    for path in files:
        env = path.parent.name if path.parent != run_dir else str(config["env"]["id"]).split("/")[-1]
        with open(path) as f:
            for row in csv.DictReader(f):
                if row["metric"] == metric:
                    out.setdefault((env, row["strategy"]), {})[int(row["seed"])] = float(row["value"])
    return out


def aggregate(sweep: Sweep, runs: dict[str, Path]) -> list[dict[str, Any]]:
    """One row per (trial, environment, strategy): the metric's mean and 95% CI over seeds
    and the paired difference with the greedy ranker (`experiments.report` helpers)."""
    rows = []
    for combo in sweep.combinations():
        trial = sweep.trial_id(combo)
        if trial not in runs:
            continue
        values = read_metrics(runs[trial], sweep.metric)
        for (env, strategy), per_seed in values.items():
            seeds = sorted(per_seed)
            mean, half = report.mean_ci([per_seed[s] for s in seeds])
            row = {**combo, "env": env, "strategy": strategy, "metric": sweep.metric, "mean": mean,
                   "ci_low": mean - half, "ci_high": mean + half, "n": len(seeds),
                   "diff_vs_greedy": float("nan"), "diff_ci_low": float("nan"), "diff_ci_high": float("nan")}
            greedy = values.get((env, "greedy"))
            if greedy is not None and strategy != "greedy" and set(greedy) == set(per_seed):
                d = report.paired_difference([per_seed[s] for s in seeds], [greedy[s] for s in seeds])
                row.update(diff_vs_greedy=d["diff"], diff_ci_low=d["ci_low"], diff_ci_high=d["ci_high"])
            rows.append(row)
    return rows


def write_outputs(sweep: Sweep, rows: list[dict[str, Any]], runs: dict[str, Path]) -> None:
    """``sweep.csv``, ``sweep.md``, ``plots/<key>.png`` and ``trials.csv`` in the sweep folder."""
    keys = list(sweep.grid)
    header = [*keys, "env", "strategy", "metric", "mean", "ci_low", "ci_high", "n",
              "diff_vs_greedy", "diff_ci_low", "diff_ci_high"]
    show = lambda v: yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()  # noqa: E731
    report.write_rows(sweep.folder / "sweep.csv", header,
                      [[show(r[k]) for k in keys] + [r[h] for h in header[len(keys):]] for r in rows])
    lines = [f"# Sweep `{sweep.folder.name}`: {sweep.metric}", "",
             f"Base `{sweep.base}`, overrides `{' '.join(sweep.fixed) or 'none'}`; mean ± 95% CI over seeds; "
             "Δ greedy: paired difference with the greedy ranker over the same seeds [95% CI].", "",
             "| " + " | ".join([*keys, "env", "strategy", sweep.metric, "Δ greedy", "seeds"]) + " |",
             "|" + "---|" * (len(keys) + 5)]
    for r in rows:
        mean = report._fmt(r["mean"], (r["ci_high"] - r["ci_low"]) / 2)
        diff = ("" if not np.isfinite(r["diff_vs_greedy"]) else
                f"{r['diff_vs_greedy']:+.3f} [{r['diff_ci_low']:+.3f}, {r['diff_ci_high']:+.3f}]")
        lines.append("| " + " | ".join([*(f"`{show(r[k])}`" for k in keys), r["env"], r["strategy"], mean, diff,
                                         str(r["n"])]) + " |")
    (sweep.folder / "sweep.md").write_text("\n".join(lines) + "\n")
    report.write_rows(sweep.folder / "trials.csv", ["trial", *keys, "run_dir"],
                      [[sweep.trial_id(c), *(show(c[k]) for k in keys), str(runs.get(sweep.trial_id(c), ""))]
                       for c in sweep.combinations()])
    plt = report._pyplot()
    (sweep.folder / "plots").mkdir(exist_ok=True)
    for key in keys:
        others = [k for k in keys if k != key]
        fig, ax = plt.subplots(figsize=(7, 4.5))
        lines_of: dict[tuple, list[tuple[Any, float, float]]] = {}
        for r in rows:
            label = (r["env"], r["strategy"], *(show(r[k]) for k in others))
            lines_of.setdefault(label, []).append((r[key], r["mean"], (r["ci_high"] - r["ci_low"]) / 2))
        values = sweep.grid[key]
        numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
        for label, points in lines_of.items():
            points.sort(key=lambda p: values.index(p[0]))
            x = [p[0] if numeric else values.index(p[0]) for p in points]
            ax.errorbar(x, [p[1] for p in points], yerr=[np.nan_to_num(p[2]) for p in points], marker="o",
                        capsize=3, label=" / ".join(str(part) for part in label))
        if not numeric:
            ax.set_xticks(range(len(values)), [show(v) for v in values])
        ax.set_xlabel(key)
        ax.set_ylabel(f"{sweep.metric} (mean ± 95% CI over seeds)")
        if lines_of:
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(sweep.folder / "plots" / f"{key}.png", dpi=110)
        plt.close(fig)


def main(argv: list[str] | None = None) -> Path:
    """Run (or resume) the sweep the arguments describe; returns the sweep folder.

    Raises:
        ConfigError: bad input (no or an empty grid, a sweep key that is not a config key,
            a bad value, Ray missing or unreachable, a folder a worker cannot write), raised
            before any trial starts.
    """
    sweep = Sweep(argv or [])
    from experiments.executor import RayExecutor
    from experiments.run import check_writable

    check_writable(sweep.folder, "results_dir")
    check_writable(sweep.cache_dir, "cache_dir")
    executor = RayExecutor(sweep.config.ray)  # connects (or starts a local instance); ConfigError if it cannot
    try:
        executor.check_writable({"results_dir": sweep.folder, "cache_dir": sweep.cache_dir})
        from ray import tune

        combos = {sweep.trial_id(c): c for c in sweep.combinations()}
        runs = {t: r for t in combos if (r := complete_run(sweep.folder / "trials" / t)) is not None}
        todo = [t for t in combos if t not in runs]
        print(f"sweep {sweep.folder}: {len(combos)} trials ({', '.join(f'{k} x {len(v)}' for k, v in sweep.grid.items())})"
              f", {len(runs)} complete, {len(todo)} to run", flush=True)
        if todo:
            threads = max(1, int(sweep.config.ray.cpus_per_task))
            params = [{"trial": t, "overrides": sweep.overrides(combos[t]), "threads": threads,
                       "results_dir": str(sweep.folder / "trials" / t), "cache_dir": str(sweep.cache_dir),
                       "cwd": os.getcwd()}
                      for t in todo]
            trainable = tune.with_resources(run_trial, {"cpu": sweep.config.ray.cpus_per_task})
            tuner = tune.Tuner(trainable, param_space={"trial": tune.grid_search(params)},
                               run_config=tune.RunConfig(name="tune", storage_path=str(sweep.folder),
                                                         failure_config=tune.FailureConfig(max_failures=1),
                                                         verbose=0))
            results = tuner.fit()
            errors = [r.error for r in results if r.error is not None]
            runs.update({t: r for t in todo if (r := complete_run(sweep.folder / "trials" / t)) is not None})
            if errors:
                print(f"{len(errors)} trial(s) failed; re-run the same command to retry them "
                      f"(first error: {errors[0]})", file=sys.stderr, flush=True)
    finally:
        executor.close()
    rows = aggregate(sweep, runs)
    write_outputs(sweep, rows, runs)
    print(f"sweep done: {len(runs)}/{len(sweep.combinations())} trials complete; table {sweep.folder / 'sweep.md'}, "
          f"plots {sweep.folder / 'plots'}", flush=True)
    if len(runs) < len(sweep.combinations()):
        raise SweepIncomplete(f"{len(sweep.combinations()) - len(runs)} trial(s) did not finish; re-run the same "
                              "command to resume (complete trials are skipped, the stage cache is reused)")
    return sweep.folder


def cli() -> int:
    """Command-line entry: bad input is one error line and exit code 2."""
    if any(arg in ("-h", "--help") for arg in sys.argv[1:]):
        print(__doc__)
        return 0
    try:
        main(sys.argv[1:])
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except SweepIncomplete as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    from experiments.sweep import cli as package_cli  # units travel by name, not as `__main__`

    sys.exit(package_cli())
