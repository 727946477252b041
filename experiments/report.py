"""What an experiment writes for people: statistics over seeds, the summary, CSV files, plots.

Statistics are over experiment seeds (each seed is a full replicate: its own ranker,
agents and held-out users). `mean_ci` gives the mean and the half-width of the
two-sided 95% Student-t interval; `paired_difference` compares two strategies seed by
seed (both were evaluated on the same users of that seed), which removes the
between-seed variance the two share.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import stats

from agents.references import MODEL_PLANNING_NAME, REFERENCE_NAMES

#: Metrics of `agents.evaluation.EvalResult.summary`, in table order, with their units.
METRICS = {
    "episode_return": "true simulator return per session",
    "session_length": "steps per session",
    "ctr": "clicks per step",
    "ctr_first3": "clicks per step over session steps 1-3 (pooled over users: the cold-start phase)",
    "minutes_per_click": "minutes watched per click",
    "recommended_duration": "mean duration of the recommended item (minutes)",
    "engagement_per_step": "minutes per step",
    "session_diversity": "1 - mean cosine between a user's clicked items",
    "intra_list_diversity": "1 - mean cosine within a slate (slate envs only)",
    "novelty": "mean -log2 popularity share of recommended items (bits)",
    "coverage": "share of the catalog ever recommended",
    "exposure_gini": "Gini of per-item exposure (0 = every item shown equally)",
    "topic_exposure_gini": "Gini of per-topic exposure",
    "top1_exposure_share": "share of exposure to the 1% most popular items (logs)",
    "top10_exposure_share": "share of exposure to the 10% most popular items (logs)",
    "long_tail_exposure_share": "share of exposure to items outside the 20% most popular",
    "new_item_ctr": "item cold start: clicks per exposure of the items that arrived during evaluation",
    "new_item_exposure_share": "item cold start: share of all exposure going to the arrived items",
    "new_items_clicked": "item cold start: share of the arrived items clicked at least once",
    "new_item_steps_to_first_click": "item cold start: steps from arrival to an arrived item's first click",
}
#: Privileged references every summary reports fractions of (`agents.references`).
REFERENCES = REFERENCE_NAMES
#: The return broken down: per user, return = session_length x ctr x minutes_per_click.
BREAKDOWN = ("episode_return", "session_length", "ctr", "minutes_per_click", "recommended_duration")
#: Exposure fairness (`recsim_mm.metrics.exposure_summary`), a table of its own in summary.md.
EXPOSURE = ("exposure_gini", "topic_exposure_gini", "top1_exposure_share", "top10_exposure_share",
            "long_tail_exposure_share")
#: Item cold start (`agents.evaluation.new_item_summary`), a table of its own in summary.md.
NEW_ITEMS = ("new_item_ctr", "new_item_exposure_share", "new_items_clicked", "new_item_steps_to_first_click")
#: Strategy names of the exposure-aware re-ranker: ``fair-<weight>``.
FAIR_PREFIX = "fair-"


def fair_name(weight: float) -> str:
    """Strategy name of the exposure-aware re-ranker with regulariser weight ``weight``."""
    return f"{FAIR_PREFIX}{weight:g}"


def fair_weight(name: str) -> float | None:
    """The regulariser weight of a ``fair-<weight>`` strategy name, None for any other name."""
    return float(name.removeprefix(FAIR_PREFIX)) if name.startswith(FAIR_PREFIX) else None


#: Metrics drawn in the bar chart.
BAR_METRICS = ("episode_return", "ctr", "engagement_per_step", "session_length",
               "session_diversity", "coverage")


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of the two-sided Student-t confidence interval.

    Args:
        values: one value per seed (NaNs are dropped).
        level: confidence level.

    Returns:
        ``(mean, half_width)``; the half-width is NaN with fewer than two values.
    """
    x = np.asarray([v for v in values if np.isfinite(v)], dtype=np.float64)
    if x.size == 0:
        return float("nan"), float("nan")
    if x.size == 1:
        return float(x[0]), float("nan")
    half = stats.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
    return float(x.mean()), float(half)


def paired_difference(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> dict[str, float]:
    """Seed-by-seed comparison of strategy ``a`` against ``b`` (same seeds, same order).

    Returns:
        ``{"diff": mean of a - b, "ci_low", "ci_high" (Student-t interval of the mean
        difference; NaN with one seed), "p_value" (two-sided paired t-test; NaN with one
        seed or zero variance), "wins" (seeds where a > b), "n"}``.
    """
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    mean, half = mean_ci(d, level)
    p = float("nan")
    if d.size >= 2 and d.std(ddof=1) > 0:
        p = float(stats.ttest_1samp(d, 0.0).pvalue)
    return {"diff": mean, "ci_low": mean - half, "ci_high": mean + half, "p_value": p,
            "wins": int((d > 0).sum()), "n": int(d.size)}


def _fmt(mean: float, half: float, digits: int = 3) -> str:
    if not np.isfinite(mean):
        return "n/a"
    if not np.isfinite(half):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {half:.{digits}f}"


def write_rows(path: Path, header: Sequence[str], rows: Iterable[Sequence]) -> None:
    """A CSV file with ``header``; floats written with `repr` (exact round trip)."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for row in rows:
            writer.writerow([repr(v) if isinstance(v, float) else v for v in row])


def comparison_table(metrics: dict[str, dict[int, dict[str, float]]], names: Sequence[str]) -> str:
    """Markdown table: one row per strategy, ``mean ± 95% CI half-width`` per metric.

    Args:
        metrics: ``{strategy: {seed: {metric: value}}}``.
        names: metrics (columns) to show.
    """
    lines = ["| strategy | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for strategy, per_seed in metrics.items():
        cells = []
        for name in names:
            mean, half = mean_ci([s.get(name, float("nan")) for s in per_seed.values()])
            cells.append(_fmt(mean, half))
        lines.append(f"| {strategy} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_table(comparisons: dict[str, dict[str, float]], metric: str, baseline: str = "greedy") -> str:
    """Markdown table of `paired_difference` results of each strategy vs ``baseline``."""
    lines = [f"| strategy | Δ {metric} vs {baseline} | 95% CI | p (paired t) | seeds won |",
             "|---|---|---|---|---|"]
    for strategy, c in comparisons.items():
        ci = "n/a" if not np.isfinite(c["ci_low"]) else f"[{c['ci_low']:+.3f}, {c['ci_high']:+.3f}]"
        p = "n/a" if not np.isfinite(c["p_value"]) else f"{c['p_value']:.3f}"
        lines.append(f"| {strategy} | {c['diff']:+.3f} | {ci} | {p} | {c['wins']}/{c['n']} |")
    return "\n".join(lines)


def ranker_table(offline: dict[str, dict[int, dict[str, float]]]) -> str:
    """Markdown table of the ranker's held-out offline metrics per modality (mean ± CI)."""
    names = sorted({k for per_seed in offline.values() for m in per_seed.values() for k in m
                    if k not in ("records", "click_rate")},
                   key=lambda k: (k != "auc", k))
    lines = ["| ranker | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for modality, per_seed in offline.items():
        cells = [_fmt(*mean_ci([m[n] for m in per_seed.values()])) for n in names]
        lines.append(f"| {modality} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def reading(
    metrics: dict[str, dict[int, dict[str, float]]],
    comparisons: dict[str, dict[str, float]],
    offline: dict[str, dict[int, dict[str, float]]],
    env_id: str,
) -> str:
    """A short plain-language reading of the results (what the tables say, no more)."""
    out = []
    means = {s: mean_ci([m["episode_return"] for m in per.values()])[0] for s, per in metrics.items()}
    fair = {s: v for s, v in means.items() if s not in ("oracle", *REFERENCES)}
    if fair:
        best = max(fair, key=fair.get)
        out.append(f"- Highest mean episode return among deployable strategies: **{best}** "
                   f"({fair[best]:.2f}).")
    if "oracle" in means:
        out.append(f"- `oracle` ranks by true affinity alone (privileged, {means['oracle']:.2f}); it ignores "
                   "quality, satiation and duration, so it is a diagnostic, not the best myopic play.")
    if set(REFERENCES) <= set(means):
        headroom = means["planning"] - means["myopic_oracle"]
        out.append(f"- References (privileged): the myopic oracle, greedy on the true expected reward, "
                   f"scores {means['myopic_oracle']:.2f}: no one-step-greedy policy beats it on average. The "
                   f"planning reference (true one-step lookahead) scores {means['planning']:.2f}: planning "
                   f"headroom {headroom:+.2f} per session.")
        if MODEL_PLANNING_NAME in means:
            out.append(f"- The non-privileged planning bar, `{MODEL_PLANNING_NAME}` (the same lookahead on the ranker "
                       "and a session-end model fitted on the training log; deployable, so an ordinary strategy "
                       f"here), scores {means[MODEL_PLANNING_NAME]:.2f}.")
        seeds = sorted(metrics["planning"])
        h = paired_difference([metrics["planning"][s]["episode_return"] for s in seeds],
                              [metrics["myopic_oracle"][s]["episode_return"] for s in seeds])
        if np.isfinite(h["ci_low"]) and h["ci_low"] > 0:
            for strategy, c in comparisons.items():
                if ("-" in strategy or strategy == MODEL_PLANNING_NAME) and strategy not in REFERENCES:
                    out.append(f"- **{strategy}**: gain over greedy {c['diff']:+.2f} = "
                               f"{c['diff'] / headroom:.0%} of the planning headroom.")
        else:
            out.append("- The planning headroom is not distinguishable from 0 here (95% CI "
                       f"[{h['ci_low']:+.2f}, {h['ci_high']:+.2f}]), so no gain is expressed as a share of it.")
    for strategy, c in comparisons.items():
        if strategy in REFERENCES or "-" not in strategy and strategy not in ("mmr", MODEL_PLANNING_NAME):
            continue  # the verdicts are for RL agents, MMR and model_planning; the rest are in the tables
        if c["n"] < 2 or not np.isfinite(c["ci_low"]):
            verdict = f"a single seed gives no interval (difference {c['diff']:+.2f}); run more seeds"
        elif c["ci_low"] > 0:
            verdict = f"beats the greedy ranker: {c['diff']:+.2f} per session, 95% CI excludes 0"
        elif c["ci_high"] < 0:
            verdict = f"is worse than the greedy ranker: {c['diff']:+.2f} per session, 95% CI excludes 0"
        else:
            verdict = (f"is not distinguishable from the greedy ranker ({c['diff']:+.2f} per session, "
                       f"95% CI [{c['ci_low']:+.2f}, {c['ci_high']:+.2f}] includes 0)")
        out.append(f"- **{strategy}** {verdict}; it won {c['wins']} of {c['n']} seeds.")
    if "Myopic" in env_id and comparisons:
        out.append("- This is the Myopic control: greedy is optimal here, so RL should not win.")
    if {"fused", "text", "image"} <= set(offline):
        auc = {m: mean_ci([v["auc"] for v in offline[m].values()])[0] for m in ("fused", "text", "image")}
        better = "above" if auc["fused"] > max(auc["text"], auc["image"]) else "not above"
        out.append(f"- Ranker AUC on held-out logs: fused {auc['fused']:.3f} vs text-only {auc['text']:.3f}, "
                   f"image-only {auc['image']:.3f}: using both modalities is {better} either one alone.")
    out.append("- Intervals are over seeds (each a full replicate); with few seeds they are wide. "
               "Add seeds (`seeds=[0,1,2,3,4]`) before drawing conclusions from small differences.")
    return "\n".join(out)


# -- the results folder -----------------------------------------------------------------------


@dataclass
class EnvResults:
    """What an experiment found on one environment; `write_report` turns it into files.

    Attributes:
        env_id: the environment's Gymnasium id.
        strategies: strategy names in report order.
        seeds: experiment seeds.
        metrics: ``{strategy: {seed: {metric: value}}}`` on held-out users.
        curve_levels: ``{strategy: {seed: episode return}}`` on the learning-curve users
            (the reference level drawn into the curves).
        rl_strategies: the RL strategies (``algo-start``), compared with the greedy ranker.
        offline: the ranker's held-out offline metrics ``{modality: {seed: {metric: value}}}``.
        curves: ``{strategy: {seed: [(step, episode return), ...]}}``.
        critic: ``{strategy: {seed: [(step, explained variance), ...]}}``: the critic's
            explained variance at the curve points (agents with a critic).
        traces: one held-out user's hidden state per strategy (see
            `plot_interest_trajectory`), or None.
        artifacts: ``{name: (checkpoint file, tensorboard folder)}`` copied into the
            results folder as ``checkpoints/<name>.pt`` and ``tensorboard/<name>/``.
        tuned: what was tuned on training users (``planning``: horizon in steps,
            ``mmr-seed<s>``: diversity, ``model_planning-seed<s>``: horizon in steps).
        explanations: the greedy ranker's explanations and their modality check (see
            `experiments.run.ranker_explanations`), or None.
        by_step: ``{strategy: {seed: [[clicks, users], ...]}}`` per session step (1, 2,
            ...) on the held-out users: ``ctr_by_step.csv`` and ``plots/ctr_by_step.png``.
    """

    env_id: str
    strategies: list[str]
    seeds: list[int]
    metrics: dict[str, dict[int, dict[str, float]]] = field(default_factory=dict)
    curve_levels: dict[str, dict[int, float]] = field(default_factory=dict)
    rl_strategies: list[str] = field(default_factory=list)
    offline: dict[str, dict[int, dict[str, float]]] = field(default_factory=dict)
    curves: dict[str, dict[int, list[tuple[int, float]]]] = field(default_factory=dict)
    critic: dict[str, dict[int, list[tuple[int, float]]]] = field(default_factory=dict)
    by_step: dict[str, dict[int, list[list[float]]]] = field(default_factory=dict)
    traces: dict[str, dict[str, np.ndarray]] | None = None
    artifacts: dict[str, tuple[Path, Path]] = field(default_factory=dict)
    tuned: dict[str, float] = field(default_factory=dict)
    explanations: dict | None = None

    @property
    def metric_names(self) -> list[str]:
        """The `METRICS` that some strategy reported, in table order."""
        return [m for m in METRICS if any(m in v for per in self.metrics.values() for v in per.values())]

    def comparisons(self) -> dict[str, dict[str, float]]:
        """`paired_difference` of every other strategy's episode return with the greedy
        ranker's (the expected-reward baseline)."""
        if "greedy" not in self.metrics:
            return {}
        greedy = [self.metrics["greedy"][s]["episode_return"] for s in self.seeds]
        return {name: paired_difference([self.metrics[name][s]["episode_return"] for s in self.seeds], greedy)
                for name in self.strategies if name != "greedy"}


def write_report(run_dir: Path, results: EnvResults, config_yaml: str, topic_names: Sequence[str] | None,
                 item_space_file: Path) -> None:
    """Write the results folder but ``summary.md``: ``config.yaml``, the CSV files, ``plots/``,
    ``checkpoints/``, ``tensorboard/`` and ``item_space.pt`` (the item space every checkpoint
    was trained on, so a copied folder reloads on its own; see `summary_markdown`)."""
    (run_dir / "config.yaml").write_text(config_yaml)
    shutil.copy2(item_space_file, run_dir / "item_space.pt")
    metrics, names = results.metrics, results.metric_names
    write_rows(run_dir / "metrics.csv", ["strategy", "seed", "metric", "value"],
               [(name, seed, m, float(metrics[name][seed][m]))
                for name in results.strategies for seed in results.seeds for m in names])
    write_rows(run_dir / "ranker_metrics.csv", ["ranker", "seed", "metric", "value"],
               [(mod, seed, m, float(v)) for mod, per in results.offline.items()
                for seed, values in per.items() for m, v in values.items()])
    if "greedy" in metrics:
        write_rows(run_dir / "paired_comparison.csv",
                   ["strategy", "baseline", "metric", "diff", "ci_low", "ci_high", "p_value", "wins", "n"],
                   [(n, "greedy", "episode_return", c["diff"], c["ci_low"], c["ci_high"], c["p_value"],
                     c["wins"], c["n"]) for n, c in results.comparisons().items()])
    plots = run_dir / "plots"
    plots.mkdir()
    plot_metric_bars(metrics, plots / "metrics.png")
    if any(fair_weight(name) is not None for name in metrics):
        plot_fairness_tradeoff(metrics, plots / "fairness_tradeoff.png")
    if results.curves:
        level = mean_ci(list(results.curve_levels.get("greedy", {}).values()))[0]
        plot_learning_curves(results.curves, level, plots / "learning_curves.png", results.critic)
        explained = {(n, s, step): ev for n, per in results.critic.items() for s, rows in per.items()
                     for step, ev in rows}
        write_rows(run_dir / "learning_curves.csv", ["strategy", "seed", "step", "episode_return",
                                                     "explained_variance"],
                   [(n, s, step, float(r), explained.get((n, s, step), "")) for n, per in results.curves.items()
                    for s, rows in per.items() for step, r in rows])
    if results.by_step:
        write_rows(run_dir / "ctr_by_step.csv", ["strategy", "seed", "step", "clicks", "users", "ctr"],
                   [(n, seed, t + 1, float(c), int(u), float(c) / max(int(u), 1))
                    for n, per in results.by_step.items() for seed, rows in per.items()
                    for t, (c, u) in enumerate(rows)])
        plot_ctr_by_step(results.by_step, plots / "ctr_by_step.png")
    if results.explanations and "explanation" in results.explanations:
        write_explanations(run_dir / "explanations.json", results.explanations)
        plot_explanation(results.explanations, plots / "explanation.png")
    if results.traces:
        plot_interest_trajectory(results.traces, topic_names, plots / "interest_trajectory.png")
    (run_dir / "checkpoints").mkdir()
    for name, (checkpoint, tensorboard) in results.artifacts.items():
        shutil.copy2(checkpoint, run_dir / "checkpoints" / f"{name}.pt")
        if tensorboard.is_dir():
            shutil.copytree(tensorboard, run_dir / "tensorboard" / name)


def _returns(per_seed: dict[int, dict[str, float]], seeds: Sequence[int], metric: str = "episode_return"):
    return [float(per_seed[s][metric]) for s in seeds]


def suite_table(results: dict[str, EnvResults], baseline: str = "greedy") -> str:
    """The first table of ``summary.md``: strategy x environment.

    Each cell: mean episode return ± 95% CI over seeds; ``Δ`` the paired difference with
    ``baseline`` (the expected-reward greedy ranker) and its 95% CI; then the return as a
    fraction of the myopic oracle / of the planning reference (same users).
    """
    names = list(dict.fromkeys(n for r in results.values() for n in r.strategies))
    lines = ["| strategy | " + " | ".join(f"`{e.split('/')[-1]}`" for e in results) + " |",
             "|---|" + "---|" * len(results)]
    for name in names:
        cells = []
        for r in results.values():
            if name not in r.metrics:
                cells.append("–")
                continue
            mean, half = mean_ci(_returns(r.metrics[name], r.seeds))
            cell = _fmt(mean, half, 1)
            if baseline in r.metrics and name != baseline:
                c = paired_difference(_returns(r.metrics[name], r.seeds), _returns(r.metrics[baseline], r.seeds))
                ci = "" if not np.isfinite(c["ci_low"]) else f" [{c['ci_low']:+.1f}, {c['ci_high']:+.1f}]"
                cell += f"; Δ {c['diff']:+.1f}{ci}"
            fractions = [mean / mean_ci(_returns(r.metrics[ref], r.seeds))[0] for ref in REFERENCES if ref in r.metrics]
            if len(fractions) == len(REFERENCES) and name not in REFERENCES:
                cell += "; " + " / ".join(f"{f:.2f}" for f in fractions)
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def headroom_lines(results: dict[str, EnvResults]) -> str:
    """Per environment: planning reference minus myopic oracle, paired over seeds."""
    out = []
    for env_id, r in results.items():
        if not set(REFERENCES) <= set(r.metrics):
            continue
        c = paired_difference(_returns(r.metrics["planning"], r.seeds), _returns(r.metrics["myopic_oracle"], r.seeds))
        myopic = mean_ci(_returns(r.metrics["myopic_oracle"], r.seeds))[0]
        ci = "" if not np.isfinite(c["ci_low"]) else f", 95% CI [{c['ci_low']:+.2f}, {c['ci_high']:+.2f}]"
        horizon = r.tuned.get("planning")
        tuned = f" (horizon {horizon:g} steps, tuned on training users)" if horizon is not None else ""
        out.append(f"- `{env_id}`: {c['diff']:+.2f} per session{ci}; {c['diff'] / myopic:+.0%} of the myopic "
                   f"oracle{tuned}.")
    return "\n".join(out)


def summary_markdown(title: str, setting: str, results: dict[str, EnvResults],
                     sections: Sequence[tuple[str, str, Path]], ndcg_k: int, run_dir: Path) -> str:
    """The text of ``summary.md``: the strategy x environment table, the planning headroom,
    then per environment the breakdown of every return, the paired comparison with the
    greedy ranker, the ranker's offline metrics and a short reading; then the file list.

    Args:
        sections: ``(env_id, user model description, folder of that environment's files)``.
    """
    out = [f"# {title}: supervised vs RL on {len(results)} environment(s)", "", setting, "",
           "## Strategy x environment (held-out users)", "",
           "Each cell: episode return, mean over seeds ± 95% CI; Δ = paired difference with `greedy` "
           "(the supervised ranker's expected-reward greedy policy, same users) [95% CI]; then the return as "
           "a fraction of the myopic oracle / of the planning reference. `myopic_oracle` and `planning` are "
           "privileged references that read the hidden user state (docs/agents.md, \"References\"), not "
           "strategies." + (" `model_planning` is the same lookahead on learned models only (the ranker and a "
                            "session-end model fitted on the training log): the non-privileged planning bar, a "
                            "strategy like the others." if any(MODEL_PLANNING_NAME in r.metrics
                                                               for r in results.values()) else ""),
           "", suite_table(results), ""]
    headroom = headroom_lines(results)
    if headroom:
        out += ["## Planning headroom (planning reference - myopic oracle, same users)", "", headroom, ""]
    for env_id, user_model, folder in sections:
        r = results[env_id]
        rel = folder.relative_to(run_dir)
        prefix = "" if str(rel) == "." else f"{rel}/"
        out += [f"## `{env_id}`", "", f"User model: {user_model}.", "",
                "Where each return comes from (per user, return = session_length x ctr x minutes_per_click; "
                "mean over seeds ± 95% CI):", "", comparison_table(r.metrics, BREAKDOWN), ""]
        exposure = [m for m in EXPOSURE if m in r.metric_names]
        if exposure:
            out += ["Exposure (how each strategy spreads what it shows over items and topics; every slate "
                    "position counts; popularity = clicks in the training logs):", "",
                    comparison_table(r.metrics, exposure), ""]
        new_items = [m for m in NEW_ITEMS if m in r.metric_names]
        if new_items:
            out += ["New items (item cold start: held back from the logs and training, arriving at step 1 for the "
                    "held-out users; `greedy_id` ranks by learned item ids, no content):", "",
                    comparison_table(r.metrics, new_items), ""]
            if "greedy_id" in r.metrics and "new_item_ctr" in new_items:
                out += ["New-item CTR paired with `greedy_id` (the gain from content, same users per seed):", "",
                        paired_table({n: paired_difference(_returns(r.metrics[n], r.seeds, "new_item_ctr"),
                                                           _returns(r.metrics["greedy_id"], r.seeds, "new_item_ctr"))
                                      for n in r.strategies if n != "greedy_id"}, "new_item_ctr", "greedy_id"), ""]
        comparisons = r.comparisons()
        if comparisons:
            out += ["Paired with the greedy ranker (same held-out users per seed):", "",
                    paired_table(comparisons, "episode_return"), ""]
        if r.offline:
            out += [f"Ranker, offline (held-out logged users; NDCG/Recall@{ndcg_k} against true affinities):",
                    "", ranker_table(r.offline), ""]
        if r.explanations:
            out += [explanation_line(r.explanations), ""]
        if r.tuned:
            out += ["Tuned on training users: " + ", ".join(f"{k} = {v:g}" for k, v in r.tuned.items()), ""]
        out += ["Reading:", "", reading(r.metrics, comparisons, r.offline, env_id), "",
                f"Every metric: `{prefix}metrics.csv`; plots: `{prefix}plots/`.", ""]
    out += ["## Files", "",
            "- per environment (in its folder for a suite): `metrics.csv` (strategy, seed, metric, value), "
            "`ranker_metrics.csv`, `paired_comparison.csv`, `learning_curves.csv`, `ctr_by_step.csv` (strategy, "
            "seed, session step, clicks, users, ctr), `plots/`, `checkpoints/`, "
            "`tensorboard/`, `item_space.pt` (what the checkpoints were trained on: "
            "`Ranker.load(checkpoint, ItemSpace.load('item_space.pt'))`), `config.yaml`",
            f"- TensorBoard: `.venv/bin/tensorboard --logdir {run_dir}`",
            f"- re-run: `.venv/bin/python experiments/run.py preset={run_dir / sections[0][2].relative_to(run_dir) / 'config.yaml'}`;"
            " `stages.json` lists which stages ran or were reused",
            "- compare with another results folder (per environment folder): "
            "`.venv/bin/python experiments/compare.py A B`", ""]
    return "\n".join(out)


def write_summary(run_dir: Path, title: str, setting: str, results: dict[str, EnvResults],
                  sections: Sequence[tuple[str, str, Path]], ndcg_k: int) -> None:
    """Write ``summary.md`` (`summary_markdown`) at the top of the results folder."""
    (run_dir / "summary.md").write_text(summary_markdown(title, setting, results, sections, ndcg_k, run_dir))


# -- plots -----------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    return plt


def _mean_band(per_seed: dict[int, list[tuple[int, float]]]) -> tuple[list[int], np.ndarray] | None:
    """Steps and a ``(seeds, steps)`` grid of values (NaN where a seed has no point), or None."""
    steps = sorted({s for rows in per_seed.values() for s, _ in rows})
    if not steps:
        return None
    grid = np.full((len(per_seed), len(steps)), np.nan)
    for i, rows in enumerate(per_seed.values()):
        lookup = dict(rows)
        grid[i] = [lookup.get(s, np.nan) for s in steps]
    return steps, grid


def plot_learning_curves(
    curves: dict[str, dict[int, list[tuple[int, float]]]],
    greedy_level: float | None,
    path: Path,
    critic: dict[str, dict[int, list[tuple[int, float]]]] | None = None,
) -> None:
    """Episode return on held-out curve users vs environment steps, mean over seeds
    (band: min-max over seeds), with the greedy ranker's level on the same users; with
    ``critic``, a second panel shows the critics' explained variance at the same steps."""
    plt = _pyplot()
    if critic:
        fig, (ax, ax_critic) = plt.subplots(2, 1, figsize=(7, 6.4), sharex=True, height_ratios=(2.2, 1))
    else:
        fig, ax = plt.subplots(figsize=(7, 4.2))
    colors = {}
    for strategy, per_seed in curves.items():
        grid = _mean_band(per_seed)
        if grid is None:
            continue
        steps, grid = grid
        line, = ax.plot(steps, np.nanmean(grid, axis=0), marker="o", ms=3, label=strategy)
        colors[strategy] = line.get_color()
        if len(per_seed) > 1:
            ax.fill_between(steps, np.nanmin(grid, 0), np.nanmax(grid, 0), color=line.get_color(), alpha=0.2)
    if critic:
        for strategy, per_seed in critic.items():
            grid = _mean_band(per_seed)
            if grid is None:
                continue
            steps, grid = grid
            ax_critic.plot(steps, np.nanmean(grid, axis=0), marker="o", ms=3, color=colors.get(strategy),
                           label=strategy)
            if len(per_seed) > 1:
                ax_critic.fill_between(steps, np.nanmin(grid, 0), np.nanmax(grid, 0), color=colors.get(strategy),
                                       alpha=0.2)
        ax_critic.axhline(0.0, color="black", lw=0.8)
        ax_critic.set_ylabel("critic's explained\nvariance")
        ax_critic.set_xlabel("environment steps")
        ax_critic.grid(alpha=0.3)
    if greedy_level is not None and np.isfinite(greedy_level):
        ax.axhline(greedy_level, color="black", ls="--", lw=1.2, label="greedy ranker")
    if not critic:
        ax.set_xlabel("environment steps")
    ax.set_ylabel("episode return (held-out curve users)")
    ax.set_title("Learning curves (mean over seeds; band: min-max)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_ctr_by_step(by_step: dict[str, dict[int, list[list[float]]]], path: Path, min_users: int = 20) -> None:
    """CTR at each session step (clicks over the users still in their session, pooled over
    seeds), per strategy; a strategy's curve stops where fewer than ``min_users`` remain."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, per_seed in by_step.items():
        length = max(len(rows) for rows in per_seed.values())
        clicks, users = np.zeros(length), np.zeros(length)
        for rows in per_seed.values():
            for t, (c, u) in enumerate(rows):
                clicks[t] += c
                users[t] += u
        shown = users >= min_users
        steps = np.flatnonzero(shown) + 1
        ax.plot(steps, clicks[shown] / users[shown], marker=".", label=name)
    ax.set_xlabel("session step")
    ax.set_ylabel("CTR (users still in session)")
    ax.set_title("CTR by session step (held-out users, pooled over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_metric_bars(metrics: dict[str, dict[int, dict[str, float]]], path: Path,
                     names: Sequence[str] = BAR_METRICS) -> None:
    """One panel per metric of ``names`` present in ``metrics``: a bar per strategy at the
    mean, error bar = 95% CI over seeds."""
    plt = _pyplot()
    names = [n for n in names if any(n in m for per in metrics.values() for m in per.values())]
    cols = 3
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    strategies = list(metrics)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, name in zip(axes.flat, names, strict=False):
        values = [mean_ci([m.get(name, np.nan) for m in metrics[s].values()]) for s in strategies]
        means = [v[0] for v in values]
        errs = [0.0 if not np.isfinite(v[1]) else v[1] for v in values]
        ax.bar(range(len(strategies)), means, yerr=errs, capsize=3,
               color=[colors[i % len(colors)] for i in range(len(strategies))])
        ax.set_xticks(range(len(strategies)), strategies, rotation=35, ha="right", fontsize=8)
        ax.set_title(name, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle("Held-out evaluation: mean over seeds, error bars = 95% CI")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def explanation_line(explanations: dict) -> str:
    """summary.md's sentence on the greedy ranker's explanations and their modality check."""
    if "skipped" in explanations:
        return f"Explanations: not checked ({explanations['skipped']})."
    return (f"Explanations (greedy ranker, seed {explanations['seed']}; integrated gradients against the "
            f"catalog-mean item, docs/explanations.md): the text share of what the user's history contributes "
            f"correlates with the users' hidden text weight at r = {explanations['correlation']:.2f} over "
            f"{explanations['users']} held-out users with 3+ past steps (positive: attributions lean to text "
            f"for text-heavy users). Per user: `explanations.json`, `plots/explanation.png`.")


def write_explanations(path: Path, explanations: dict) -> None:
    """``explanations.json``: per explained user, the recommended candidate's score, its
    text/image attribution and the past steps that mattered most, with the hidden weight."""
    e = explanations["explanation"]
    users = []
    for u, position in enumerate(explanations["recommended"].tolist()):
        users.append({"recommended_position": position, "score": float(e.score[u, position]),
                      "text": float(e.text[u, position]), "image": float(e.image[u, position]),
                      "history_text_share": float(explanations["text_share"][u]),
                      "hidden_text_weight": float(explanations["modality_weight"][u]),
                      "top_past_steps": e.top_history(3)[u, position].tolist()})
    path.write_text(json.dumps({"seed": explanations["seed"], "correlation": explanations["correlation"],
                                "users": users}, indent=1))


def plot_explanation(explanations: dict, path: Path) -> None:
    """Two panels: the first explained user's candidates (text and image attribution, the
    recommended one marked), and every user's history text share against the hidden weight."""
    plt = _pyplot()
    e = explanations["explanation"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10.5, 3.8))
    k = e.text.shape[1]
    left.bar(range(k), e.text[0].numpy(), label="text")
    left.bar(range(k), e.image[0].numpy(), bottom=e.text[0].numpy(), label="image")
    left.axvline(int(explanations["recommended"][0]), color="k", lw=0.8, ls="--", label="recommended")
    left.set_xlabel("candidate position")
    left.set_ylabel("attribution (score - baseline)")
    left.set_title("One user: what each candidate's score comes from", fontsize=10)
    left.legend(fontsize=8)
    right.scatter(explanations["modality_weight"], explanations["text_share"], s=10)
    right.set_xlabel("hidden text weight of the user")
    right.set_ylabel("history text share of the attribution")
    right.set_title(f"All explained users: r = {explanations['correlation']:.2f}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def fairness_points(metrics: dict[str, dict[int, dict[str, float]]]) -> list[tuple[float, float, float]]:
    """``(regulariser weight, mean exposure Gini, mean episode return)`` of the greedy ranker
    (weight 0) and every ``fair-<weight>`` strategy, by weight."""
    points = []
    for name, per_seed in metrics.items():
        weight = 0.0 if name == "greedy" else fair_weight(name)
        if weight is not None:
            points.append((weight, mean_ci([m["exposure_gini"] for m in per_seed.values()])[0],
                           mean_ci([m["episode_return"] for m in per_seed.values()])[0]))
    return sorted(points)


def plot_fairness_tradeoff(metrics: dict[str, dict[int, dict[str, float]]], path: Path) -> None:
    """Return against item-exposure Gini for the greedy ranker and the exposure-aware
    re-ranker at each regulariser weight (means over seeds), weights annotated."""
    plt = _pyplot()
    points = fairness_points(metrics)
    fig, ax = plt.subplots(figsize=(5.2, 4.0))
    ax.plot([p[1] for p in points], [p[2] for p in points], "o-")
    for weight, gini_value, ret in points:
        ax.annotate("greedy" if weight == 0 else f"fairness {weight:g}", (gini_value, ret), fontsize=8,
                    xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("item exposure Gini (lower = more even)")
    ax.set_ylabel("episode return (held-out users)")
    ax.set_title("Return-fairness trade-off: exposure-aware re-ranking")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_interest_trajectory(traces: dict[str, dict[str, np.ndarray]], topic_names: Sequence[str] | None,
                             path: Path) -> None:
    """How one held-out user's hidden state moves during an episode, greedy vs RL.

    Args:
        traces: ``{strategy: {"interest_topics": (T_steps, topics) cosine of the user's
            text interest with each topic's centre (optional), "time_left": (T_steps,),
            "satiation": (T_steps,) norm of the satiation memory (optional),
            "affinity": (T_steps,) true affinity of the recommended item,
            "hidden:<name>": (T_steps,) the user model's changing hidden state}}`` for one user.
        topic_names: labels of the topic axis.
        path: PNG file.
    """
    plt = _pyplot()
    strategies = list(traces)
    has_topics = all("interest_topics" in t for t in traces.values())
    top = len(strategies) if has_topics else 0
    fig, axes = plt.subplots(top + 1, 1, figsize=(8, 2.4 * top + 3.2), squeeze=False)
    axes = axes[:, 0]
    longest = max(len(t["time_left"]) for t in traces.values())
    for ax, strategy in zip(axes[:top], strategies, strict=False):
        grid = np.full((traces[strategy]["interest_topics"].shape[1], longest), np.nan)
        grid[:, : len(traces[strategy]["time_left"])] = traces[strategy]["interest_topics"].T
        image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=-0.2, vmax=1.0, interpolation="nearest")
        ax.set_title(f"{strategy}: cosine of the user's text interest with each topic "
                     f"(session of {len(traces[strategy]['time_left'])} steps)", fontsize=9)
        if topic_names is not None:
            ax.set_yticks(range(len(topic_names)), topic_names, fontsize=7)
        ax.set_xlabel("step", fontsize=8)
        fig.colorbar(image, ax=ax, fraction=0.03)
    ax = axes[-1]
    styles = {"affinity": "-", "satiation": ":"}
    for i, strategy in enumerate(strategies):
        color = f"C{i}"
        trace = traces[strategy]
        for key, style in styles.items():
            if key in trace:
                ax.plot(trace[key], style, color=color, label=f"{strategy}: {key}")
        for key in sorted(k for k in trace if k.startswith("hidden:")):
            ax.plot(trace[key], "-.", color=color, label=f"{strategy}: {key[7:]}")
    ax.set_xlabel("step")
    ax.set_xlim(-0.5, longest - 0.5)
    ax.set_ylabel("affinity / satiation / hidden state")
    twin = ax.twinx()
    for i, strategy in enumerate(strategies):
        twin.plot(traces[strategy]["time_left"], "--", color=f"C{i}", alpha=0.6, label=f"{strategy}: time left")
    twin.set_ylabel("time left (minutes, dashed)")
    handles = ax.get_legend_handles_labels()
    handles2 = twin.get_legend_handles_labels()
    ax.legend(handles[0] + handles2[0], handles[1] + handles2[1], fontsize=7, loc="upper right")
    ax.set_title("Affinity of the recommended item, hidden state and time budget (same user, same seed)",
                 fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
