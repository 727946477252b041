"""The ecosystem experiments as `experiments/run.py` runs: competing platforms and learning creators.

    .venv/bin/python experiments/run.py preset=platforms     # who wins the users?
    .venv/bin/python experiments/run.py preset=creators      # where do creators publish?

``experiment=platforms`` or ``experiment=creators`` (config key ``experiment``) makes
run.py build the item space as usual (stage 1, cached), then train and evaluate, per
seed of ``seeds``, the strategies of one ecosystem (`PLATFORM_STRATEGIES`,
`CREATOR_STRATEGIES`), and write the usual results folder: ``summary.md`` (every
metric per strategy, mean over seeds ± 95% CI, and the paired difference of each
strategy with the reference on the same evaluation episodes), ``metrics.csv``
(strategy, seed, metric, value), ``plots/``, ``tensorboard/``, ``checkpoints/`` (SB3
``.zip`` models), ``config.yaml``, ``item_space.pt`` and ``stages.json``.

One seed is one stage unit (`ecosystem_unit`): cached like run.py's other stages, run
in parallel under ``executor=ray``. Its evaluation episodes are env seeds
``eval.seed_offset + 1000 * seed + i`` (``i < ecosystem.eval_episodes``), never a
training seed, and the same for every strategy of that seed, so strategies are
compared on the same users.

`platform_runs` and `creator_runs` are the experiments themselves (the example scripts
``experiments/ecosystem_platforms.py`` and ``ecosystem_creators.py`` call them too).
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3 import PPO

from agents.baselines import OracleRecommender, RandomRecommender
from agents.ecosystem_training import (
    PlatformScorerPolicy,
    StayPolicy,
    run_episode,
    train_independent,
    train_shared,
)
from envs.ecosystems import creators, platforms
from experiments import report
from experiments.config import ECOSYSTEM_STRATEGIES
from recsim_mm.ecosystem_metrics import EcosystemHistory
from recsim_mm.files import write_json
from recsim_mm.item_space import ItemSpace
from recsim_mm.scorer import ScorerConfig

#: platform_0's strategies (platform_1 always recommends at random); the first is the reference.
PLATFORM_STRATEGIES = ECOSYSTEM_STRATEGIES["platforms"]
#: the creators' strategies (all creators act alike); the first is the reference.
CREATOR_STRATEGIES = ECOSYSTEM_STRATEGIES["creators"]
PLATFORM_METRICS = ("share_first10", "share_last10", "engagement_share", "welfare")
CREATOR_METRICS = ("exposure_gini", "exposure_gini_last10", "diversity", "diversity_last10",
                   "spread", "spread_last10", "welfare", "welfare_last10")
#: The platforms' PPO hyper-parameters (platform agents see U users per step; short rollouts).
PLATFORM_PPO = dict(n_steps=100, batch_size=50, n_epochs=4, learning_rate=1e-3, gamma=0.9, ent_coef=0.0,
                    verbose=0)
#: The creators' shared PPO (an MLP over each creator's observation; SuperSuit parameter sharing).
CREATOR_PPO = dict(n_steps=128, batch_size=256, n_epochs=5, learning_rate=3e-4, gamma=0.95, ent_coef=0.0,
                   verbose=0)


# -- the experiments ------------------------------------------------------------------------------


def platform_options(item_space: ItemSpace, users: int, candidates: int, episode: int,
                     user_model: str, user_params: dict | None = None) -> dict[str, Any]:
    """Keyword arguments of `envs.ecosystems.platforms.parallel_env` (two platforms)."""
    return dict(item_space=item_space, num_users=users, num_candidates=candidates, max_steps=episode,
                user_model=user_model, **({"user_params": user_params} if user_params else {}))


def creator_options(item_space: ItemSpace, creators_: int, users: int, episode: int, max_move: float,
                    reward: str) -> dict[str, Any]:
    """Keyword arguments of `envs.ecosystems.creators.parallel_env`."""
    return dict(item_space=item_space, num_creators=creators_, num_users=users, max_steps=episode,
                max_move=max_move, creator_reward=reward)


def _tensorboard(folder: Path | None, name: str) -> dict[str, Any]:
    """SB3's ``tensorboard_log`` argument for strategy ``name`` (none without a folder)."""
    return {"tensorboard_log": str(folder / name)} if folder is not None else {}


def _platform_ppo(agent: str, view: Any, seed: int, scorer: dict, **logs: Any) -> PPO:
    return PPO(PlatformScorerPolicy, view, seed=seed, policy_kwargs=dict(scorer_config=scorer), **PLATFORM_PPO,
               **logs)


def platform_runs(options: dict[str, Any], steps: int, seed: int, eval_seeds: list[int],
                  strategies: tuple[str, ...] = PLATFORM_STRATEGIES, tensorboard_dir: Path | None = None,
                  models_dir: Path | None = None) -> dict[str, list[EcosystemHistory]]:
    """platform_0 by each strategy against a random platform_1, one episode per evaluation seed.

    Strategies: ``random`` (the reference: two random platforms), ``oracle`` (platform_0
    recommends the candidate of highest true affinity: privileged, reads hidden state),
    ``ppo`` (an SB3 PPO on `PlatformScorerPolicy` trained for ``steps`` platform-steps
    against the random platform, `train_independent`), ``ppo_shared`` (one PPO shared by
    both platforms through SuperSuit, self-play for ``2 * steps`` agent-steps, evaluated as
    platform_0 against the random platform).

    Args:
        options: `platform_options`.
        steps: PPO environment steps per learner.
        seed: seeds PPO and the random platform_1 of training.
        eval_seeds: env seeds of the evaluation episodes (platform_1 uses the same seed).
        strategies: a subset of `PLATFORM_STRATEGIES`.
        tensorboard_dir: SB3 TensorBoard logs go to ``<dir>/<strategy>/`` (None: none).
        models_dir: trained models are saved as ``<dir>/<strategy>.zip`` (None: not saved).

    Returns:
        ``{strategy: [EcosystemHistory per evaluation seed]}``.
    """
    env = platforms.parallel_env(**options)
    space = options["item_space"]
    # no item metadata: the platforms act on embeddings observations without an item table
    scorer = ScorerConfig(d_text=space.d_text, d_image=space.d_image, hidden_dim=32, item_features=()).to_dict()

    def evaluate(policy_0: Any) -> list[EcosystemHistory]:
        return [run_episode(env, {"platform_0": policy_0, "platform_1": RandomRecommender(seed=s)}, seed=s)
                for s in eval_seeds]

    runs: dict[str, list[EcosystemHistory]] = {}
    for name in strategies:
        if name == "random":
            runs[name] = evaluate(RandomRecommender(seed=seed + 1))
        elif name == "oracle":
            runs[name] = evaluate(OracleRecommender())
        elif name == "ppo":
            models = train_independent(
                lambda: platforms.parallel_env(**options),
                partial(_platform_ppo, seed=seed, scorer=scorer, **_tensorboard(tensorboard_dir, name)),
                fixed={"platform_1": RandomRecommender(seed=seed)}, rounds=1, steps_per_round=steps)
            model = models["platform_0"]
            runs[name] = evaluate(model)
        elif name == "ppo_shared":
            model = train_shared(platforms.parallel_env(**options), 2 * steps, policy=PlatformScorerPolicy,
                                 seed=seed, policy_kwargs=dict(scorer_config=scorer), **PLATFORM_PPO,
                                 **_tensorboard(tensorboard_dir, name))
            runs[name] = evaluate(model)
        else:
            raise ValueError(f"unknown platform strategy {name!r}; expected one of {PLATFORM_STRATEGIES}")
        if name.startswith("ppo") and models_dir is not None:
            model.save(models_dir / f"{name}.zip")
    return runs


def creator_runs(options: dict[str, Any], steps: int, seed: int, eval_seeds: list[int],
                 strategies: tuple[str, ...] = CREATOR_STRATEGIES, tensorboard_dir: Path | None = None,
                 models_dir: Path | None = None) -> dict[str, list[EcosystemHistory]]:
    """The creators ecosystem with fixed creators and with creators that learn where to publish.

    Strategies: ``fixed`` (the reference: every creator stays where it starts,
    `StayPolicy`), ``ppo`` (one PPO shared by all creators, SuperSuit parameter sharing
    over 2 environment copies, trained for ``steps`` agent-steps, rewarded as the env's
    ``creator_reward`` says).

    Args: as `platform_runs` (``options``: `creator_options`).

    Returns:
        ``{strategy: [EcosystemHistory per evaluation seed]}``.
    """
    env = creators.parallel_env(**options)
    runs: dict[str, list[EcosystemHistory]] = {}
    for name in strategies:
        if name == "fixed":
            policies = {agent: StayPolicy(env.map_dim) for agent in env.possible_agents}
        elif name == "ppo":
            model = train_shared(creators.parallel_env(**options), steps, num_copies=2, seed=seed, **CREATOR_PPO,
                                 **_tensorboard(tensorboard_dir, name))
            if models_dir is not None:
                model.save(models_dir / f"{name}.zip")
            policies = dict.fromkeys(env.possible_agents, model)
        else:
            raise ValueError(f"unknown creator strategy {name!r}; expected one of {CREATOR_STRATEGIES}")
        runs[name] = [run_episode(env, policies, seed=s) for s in eval_seeds]
    return runs


# -- metrics --------------------------------------------------------------------------------------


def platform_metrics(histories: list[EcosystemHistory]) -> dict[str, float]:
    """platform_0's market share over the first / last 10 steps, its share of all engagement
    (minutes) and user welfare (mean minutes per user per step); means over the episodes."""
    share = np.stack([h.array("market_share")[:, 0] for h in histories])  # (episodes, T)
    engagement = np.stack([h.array("engagement") for h in histories])  # (episodes, T, M)
    return {
        "share_first10": float(share[:, :10].mean()),
        "share_last10": float(share[:, -10:].mean()),
        "engagement_share": float(engagement[..., 0].sum() / max(engagement.sum(), 1e-9)),
        "welfare": float(np.mean([h.array("welfare").mean() for h in histories])),
    }


def creator_metrics(histories: list[EcosystemHistory]) -> dict[str, float]:
    """Exposure Gini over creators, content diversity of the recommendations, creator spread
    (map units) and user welfare (mean minutes per user per step): episode means (``<name>``)
    and last-10-step means (``<name>_last10``)."""
    out = {}
    for key in ("exposure_gini", "diversity", "spread", "welfare"):
        series = np.stack([h.array(key) for h in histories])  # (episodes, T)
        out[key] = float(series.mean())
        out[f"{key}_last10"] = float(series[:, -10:].mean())
    return out


@dataclasses.dataclass(frozen=True)
class Ecosystem:
    """What differs between the two ecosystem experiments."""

    strategies: tuple[str, ...]
    metrics: tuple[str, ...]
    runs: Callable[..., dict[str, list[EcosystemHistory]]]
    summarise: Callable[[list[EcosystemHistory]], dict[str, float]]
    plot: Callable[[dict[str, list[EcosystemHistory]], Path], None]
    question: str


# -- plots ----------------------------------------------------------------------------------------


def _band(ax, series: np.ndarray, label: str) -> None:
    steps = np.arange(1, series.shape[1] + 1)
    ax.plot(steps, series.mean(0), label=label)
    ax.fill_between(steps, series.min(0), series.max(0), alpha=0.15)


def plot_platforms(runs: dict[str, list[EcosystemHistory]], path: Path) -> None:
    """platform_0's market share and user welfare over the episode (mean and range over episodes)."""
    plt = report._pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for name, histories in runs.items():
        _band(axes[0], np.stack([h.array("market_share")[:, 0] for h in histories]), name)
        _band(axes[1], np.stack([h.array("welfare") for h in histories]), name)
    axes[0].axhline(0.5, color="gray", lw=0.8, ls="--")
    axes[0].set_title("platform_0 market share (vs a random platform_1)")
    axes[1].set_title("user welfare (mean minutes per user per step)")
    for ax in axes:
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_creators(runs: dict[str, list[EcosystemHistory]], path: Path) -> None:
    """Exposure Gini, content diversity and creator spread over the episode (mean and range over
    episodes), and the creators' positions in the first episode (map axes 0 and 1)."""
    plt = report._pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    titles = {"exposure_gini": "exposure concentration (Gini)", "diversity": "content diversity of recommendations",
              "spread": "creator spread (map units)"}
    for ax, (key, title) in zip(axes[:3], titles.items(), strict=True):
        for name, histories in runs.items():
            _band(ax, np.stack([h.array(key) for h in histories]), name)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.legend()
    ax = axes[3]
    for (name, histories), style in zip(runs.items(), ("o", "-", "--", ":"), strict=False):
        positions = histories[0].array("positions")  # (T, C, q)
        for c in range(positions.shape[1]):
            ax.plot(positions[:, c, 0], positions[:, c, 1], style, color=f"C{c}", ms=3, alpha=0.8)
        ax.plot([], [], style, color="gray", label=name)
    ax.set_title("creator positions (map axes 0, 1), first episode")
    ax.set_xlim(-1, 1)
    ax.set_ylim(-1, 1)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


ECOSYSTEMS = {
    "platforms": Ecosystem(PLATFORM_STRATEGIES, PLATFORM_METRICS, platform_runs, platform_metrics, plot_platforms,
                           "platform_0 by each strategy against a platform_1 that recommends at random: who "
                           "wins the users (market share), and what it does to their welfare"),
    "creators": Ecosystem(CREATOR_STRATEGIES, CREATOR_METRICS, creator_runs, creator_metrics, plot_creators,
                          "creators that stay where they start vs creators that learn where to publish (one "
                          "shared PPO): exposure concentration, content diversity, creator spread, welfare"),
}


# -- run.py's stage unit and report ---------------------------------------------------------------


def eval_seeds(seed_offset: int, seed: int, episodes: int) -> list[int]:
    """Env seeds of experiment seed ``seed``'s evaluation episodes: ``seed_offset + 1000 * seed + i``."""
    return [seed_offset + 1000 * seed + i for i in range(episodes)]


def env_options(kind: str, item_space: ItemSpace, settings: dict[str, Any]) -> dict[str, Any]:
    """The ecosystem env's options from the config's ``ecosystem`` section (``settings``)."""
    if kind == "platforms":
        return platform_options(item_space, settings["users"], settings["candidates"], settings["episode"],
                                settings["user_model"], settings.get("user_params"))
    return creator_options(item_space, settings["creators"], settings["users"], settings["episode"],
                           settings["max_move"], settings["creator_reward"])


def ecosystem_unit(folder: Path, kind: str, item_space_file: Path, settings: dict[str, Any], seed: int,
                   seed_offset: int, threads: int = 0) -> dict:
    """One seed of an ecosystem experiment (a run.py stage unit): train, evaluate, save.

    Writes ``histories.npz`` (every recorded series per strategy, shaped
    ``(episodes, T, ...)``), ``checkpoints/<strategy>.zip`` and ``tensorboard/<strategy>/``
    into ``folder``.

    Returns:
        ``{"metrics": {strategy: {metric: value}}, "eval_seeds": [...], "train_seconds": s}``.
    """
    if threads > 0:
        torch.set_num_threads(threads)
    ecosystem = ECOSYSTEMS[kind]
    item_space = ItemSpace.load(item_space_file)
    (folder / "checkpoints").mkdir(exist_ok=True)
    seeds = eval_seeds(seed_offset, seed, settings["eval_episodes"])
    start = time.perf_counter()
    runs = ecosystem.runs(env_options(kind, item_space, settings), settings["steps"], seed, seeds,
                          strategies=tuple(settings["strategies"]), tensorboard_dir=folder / "tensorboard",
                          models_dir=folder / "checkpoints")
    seconds = time.perf_counter() - start
    np.savez_compressed(folder / "histories.npz", **{
        f"{name}/{key}": np.stack([h.array(key) for h in histories])
        for name, histories in runs.items() for key in histories[0].keys()})
    return {"metrics": {name: ecosystem.summarise(histories) for name, histories in runs.items()},
            "eval_seeds": seeds, "train_seconds": round(seconds, 1)}


def load_histories(path: Path) -> dict[str, list[EcosystemHistory]]:
    """``histories.npz`` of `ecosystem_unit` back as ``{strategy: [EcosystemHistory per episode]}``."""
    with np.load(path) as data:
        series: dict[str, dict[str, np.ndarray]] = {}
        for name in data.files:
            strategy, key = name.split("/", 1)
            series.setdefault(strategy, {})[key] = data[name]
    runs = {}
    for strategy, keys in series.items():
        episodes, steps = next(iter(keys.values())).shape[:2]
        runs[strategy] = []
        for e in range(episodes):
            history = EcosystemHistory()
            history.records = [{k: v[e, t] for k, v in keys.items()} for t in range(steps)]
            runs[strategy].append(history)
    return runs


def summary_markdown(kind: str, setting: str, metrics: dict[str, dict[int, dict[str, float]]],
                     seeds: list[int]) -> str:
    """``summary.md`` of an ecosystem run: every metric per strategy (mean over seeds ± 95%
    CI) and each strategy's paired difference with the reference per metric."""
    ecosystem = ECOSYSTEMS[kind]
    names = [n for n in ecosystem.strategies if n in metrics]
    reference = names[0]
    out = [f"# {kind}: {ecosystem.question}", "", setting, "",
           f"## Every strategy (mean over {len(seeds)} seed(s) ± 95% CI)", "",
           report.comparison_table(metrics, ecosystem.metrics), "",
           f"## Paired with `{reference}` (same evaluation episodes per seed)", "",
           "| strategy | metric | Δ vs " + reference + " | 95% CI | seeds higher |", "|---|---|---|---|---|"]
    for name in names[1:]:
        for metric in ecosystem.metrics:
            c = report.paired_difference([metrics[name][s][metric] for s in seeds],
                                         [metrics[reference][s][metric] for s in seeds])
            ci = "n/a" if not np.isfinite(c["ci_low"]) else f"[{c['ci_low']:+.3f}, {c['ci_high']:+.3f}]"
            out.append(f"| {name} | {metric} | {c['diff']:+.3f} | {ci} | {c['wins']}/{c['n']} |")
    out += ["", "## Files", "",
            "- `metrics.csv` (strategy, seed, metric, value), `plots/` (the series over the episode), "
            "`checkpoints/<strategy>-seed<s>.zip` (SB3 models: `PPO.load(path)`), `tensorboard/`, "
            "`item_space.pt`, `config.yaml`, `stages.json`",
            "- metrics: docs/ecosystems.md (\"Experiments\")", ""]
    return "\n".join(out)


def run_ecosystem(runner: Any, config: Any, items: Any, run_dir_factory: Callable[[], Path], config_yaml: str,
                  threads: int, t0: float) -> Path:
    """run.py's stages 4-6 for ``experiment=platforms|creators`` (stage 1, the item space, is done).

    Args:
        runner: run.py's `StageRunner`.
        config: the `ExperimentConfig`.
        items: the item space `Stage` (``item_space.pt`` in its folder).
        run_dir_factory: creates the results folder.
        config_yaml: the resolved config, saved as ``config.yaml``.
        threads: torch threads of each unit (0: leave as is).
        t0: when the run started (``time.perf_counter``), for the wall time.
    """
    kind = config.experiment
    settings = ecosystem_settings(config)
    item_space_file = items.dir / "item_space.pt"
    runner.progress.stage(4, f"{kind} ecosystem", f"{len(config.seeds)} seed(s) x {settings['strategies']}, "
                          f"{settings['steps']} PPO steps each")
    pending = [runner.submit(runner.stage(f"ecosystem-{kind}", ("recsim_mm", "envs", "agents", "experiments"),
                                          items=items.key, settings=settings, seed=seed,
                                          seed_offset=config.eval.seed_offset),
                             partial(ecosystem_unit, kind=kind, item_space_file=item_space_file, settings=settings,
                                     seed=seed, seed_offset=config.eval.seed_offset, threads=threads),
                             keep=("train_seconds",), strategy=kind, seed=seed)
               for seed in config.seeds]
    infos = runner.gather(pending)
    metrics = {name: {seed: info["metrics"][name] for seed, info in zip(config.seeds, infos, strict=True)}
               for name in settings["strategies"]}
    run_dir = run_dir_factory()
    runner.progress.stage(6, "report", str(run_dir))
    (run_dir / "config.yaml").write_text(config_yaml)
    shutil.copy2(item_space_file, run_dir / "item_space.pt")
    report.write_rows(run_dir / "metrics.csv", ["strategy", "seed", "metric", "value"],
                      [(name, seed, m, float(v)) for name, per in metrics.items() for seed in config.seeds
                       for m, v in per[seed].items()])
    plots, checkpoints = run_dir / "plots", run_dir / "checkpoints"
    plots.mkdir()
    checkpoints.mkdir()
    for seed, p in zip(config.seeds, pending, strict=True):
        for model in sorted((p.stage.dir / "checkpoints").glob("*.zip")):
            shutil.copy2(model, checkpoints / f"{model.stem}-seed{seed}.zip")
        for logs in sorted((p.stage.dir / "tensorboard").glob("*")):
            shutil.copytree(logs, run_dir / "tensorboard" / f"{logs.name}-seed{seed}")
    first = pending[0].stage.dir / "histories.npz"
    ECOSYSTEMS[kind].plot(load_histories(first), plots / f"{kind}.png")
    report.plot_metric_bars(metrics, plots / "metrics.png", ECOSYSTEMS[kind].metrics)
    wall = time.perf_counter() - t0
    write_json(run_dir / "stages.json", runner.progress.records)
    setting = (f"Seeds {config.seeds} (one training run per strategy and seed); {settings['eval_episodes']} "
               f"evaluation episodes per seed (env seeds `eval.seed_offset + 1000 * seed + i`, never used in "
               f"training), {settings['episode']} steps each; {settings['steps']} PPO steps per learner; "
               f"settings {settings}; wall time {wall / 60:.1f} min. The `{kind}.png` plot shows seed "
               f"{config.seeds[0]}'s episodes.")
    (run_dir / "summary.md").write_text(summary_markdown(kind, setting, metrics, list(config.seeds)))
    print(f"done in {wall / 60:.1f} min; results: {run_dir}", flush=True)
    print(report.comparison_table(metrics, ECOSYSTEMS[kind].metrics), flush=True)
    return run_dir


def check_ecosystem(config: Any) -> None:
    """The ecosystem's settings, checked by building its env on a small random item space
    (before anything is encoded or trained).

    Raises:
        ConfigError: naming the ``ecosystem`` (or ``user_model``) key and the env's complaint.
    """
    from experiments.config import ConfigError

    settings = ecosystem_settings(config)
    space = ItemSpace.random(max(64, settings.get("candidates", 0) + 1), 4, 4)
    try:
        options = env_options(config.experiment, space, settings)
        (platforms if config.experiment == "platforms" else creators).parallel_env(**options)
    except (ValueError, TypeError) as exc:
        key = "user_model/user_params" if config.experiment == "platforms" else "ecosystem"
        raise ConfigError(f"config key '{key}' (experiment={config.experiment}): {exc}") from None


def ecosystem_settings(config: Any) -> dict[str, Any]:
    """The config's ``ecosystem`` section resolved for ``config.experiment`` (defaults filled in)."""
    section = config.ecosystem
    kind = config.experiment
    settings = {
        "strategies": list(section.strategies or ECOSYSTEMS[kind].strategies),
        "users": section.users if section.users is not None else (8 if kind == "platforms" else 128),
        "episode": section.episode,
        "steps": section.steps if section.steps is not None else (5000 if kind == "platforms" else 40_000),
        "eval_episodes": section.eval_episodes,
    }
    if kind == "platforms":
        settings.update(candidates=section.candidates, user_model=config.user_model or "interest_evolution",
                        user_params=dict(config.user_params))
    else:
        settings.update(creators=section.creators, max_move=section.max_move,
                        creator_reward=section.creator_reward)
    return settings
