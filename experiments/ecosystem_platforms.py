"""Competing platforms: who wins the users? Greedy vs random, and PPO platforms trained briefly.

    .venv/bin/python experiments/ecosystem_platforms.py [--steps 5000] [--out results/ecosystem_platforms]

1. Greedy vs random: platform_0 recommends the candidate of highest true affinity
   (privileged oracle), platform_1 at random. No training.
2. Independent PPO: platform_0 is an SB3 PPO on `PlatformScorerPolicy` (the shared
   scorer per user), trained against the random platform_1
   (`agents.ecosystem_training.train_independent`).
3. Shared PPO: both platforms share one PPO through SuperSuit (self-play,
   `train_shared`); evaluated as platform_0 against the random platform.

Each is evaluated on the same seeds; the script prints platform_0's market share at
the start and end of the episode, its engagement and user welfare, and plots market
share and welfare over the episode to ``<out>/platforms.png`` (+ ``summary.json``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from stable_baselines3 import PPO  # noqa: E402

from agents.baselines import OracleRecommender, RandomRecommender  # noqa: E402
from agents.ecosystem_training import (  # noqa: E402
    PlatformScorerPolicy,
    run_episode,
    train_independent,
    train_shared,
)
from envs.ecosystems import platforms  # noqa: E402
from recsim_mm.device import default_torch_threads  # noqa: E402
from recsim_mm.pipeline import default_item_space  # noqa: E402
from recsim_mm.scorer import ScorerConfig  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see ``--help``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5000, help="PPO env steps per learner")
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--candidates", type=int, default=10)
    parser.add_argument("--episode", type=int, default=50, help="steps per episode")
    parser.add_argument("--items", type=int, default=600, help="catalog size (default_item_space)")
    parser.add_argument("--user-model", default="interest_evolution")
    parser.add_argument("--eval-seeds", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--skip-shared", action="store_true", help="skip the SuperSuit self-play run"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "ecosystem_platforms")
    return parser.parse_args(argv)


def summarise(histories: list) -> dict[str, float]:
    """platform_0's market share (first / last 10 steps), engagement share and welfare, mean over seeds."""
    share = np.stack([h.array("market_share")[:, 0] for h in histories])
    engagement = np.stack([h.array("engagement") for h in histories])  # (seeds, T, M)
    return {
        "share_first10": float(share[:, :10].mean()),
        "share_last10": float(share[:, -10:].mean()),
        "engagement_share": float(engagement[..., 0].sum() / max(engagement.sum(), 1e-9)),
        "welfare": float(np.mean([h.array("welfare").mean() for h in histories])),
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(default_torch_threads())
    space = default_item_space(num_items=args.items)
    options = dict(
        item_space=space,
        num_users=args.users,
        num_candidates=args.candidates,
        max_steps=args.episode,
        user_model=args.user_model,
    )
    env = platforms.parallel_env(**options)
    seeds = [10_000 + i for i in range(args.eval_seeds)]
    scorer = ScorerConfig(d_text=space.d_text, d_image=space.d_image, hidden_dim=32).to_dict()
    ppo = dict(
        n_steps=100,
        batch_size=50,
        n_epochs=4,
        learning_rate=1e-3,
        gamma=0.9,
        ent_coef=0.0,
        verbose=0,
    )

    def evaluate(policy_0) -> list:
        return [
            run_episode(
                env, {"platform_0": policy_0, "platform_1": RandomRecommender(seed=s)}, seed=s
            )
            for s in seeds
        ]

    runs = {"greedy (oracle) vs random": evaluate(OracleRecommender())}
    timings = {}

    start = time.perf_counter()

    def make_model(agent, view):
        return PPO(
            PlatformScorerPolicy,
            view,
            seed=args.seed,
            policy_kwargs=dict(scorer_config=scorer),
            **ppo,
        )

    models = train_independent(
        lambda: platforms.parallel_env(**options),
        make_model,
        fixed={"platform_1": RandomRecommender(seed=args.seed)},
        rounds=1,
        steps_per_round=args.steps,
    )
    timings["independent"] = time.perf_counter() - start
    runs["independent PPO vs random"] = evaluate(models["platform_0"])

    if not args.skip_shared:
        start = time.perf_counter()
        shared = train_shared(
            platforms.parallel_env(**options),
            2 * args.steps,
            policy=PlatformScorerPolicy,
            seed=args.seed,
            policy_kwargs=dict(scorer_config=scorer),
            **ppo,
        )
        timings["shared"] = time.perf_counter() - start
        runs["shared PPO (self-play) vs random"] = evaluate(shared)

    summary = {
        "command": ".venv/bin/python experiments/ecosystem_platforms.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "options": {k: v for k, v in vars(args).items() if k != "out"},
        "train_seconds": {k: round(v, 1) for k, v in timings.items()},
        "results": {name: summarise(histories) for name, histories in runs.items()},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    plot(runs, args.out / "platforms.png")

    print(f"evaluation over {len(seeds)} seeds; training seconds {summary['train_seconds']}")
    print(
        f"{'platform_0 vs random':36s} {'share 1-10':>10s} {'share -10':>10s} {'eng. share':>10s} {'welfare':>8s}"
    )
    for name, r in summary["results"].items():
        print(
            f"{name:36s} {r['share_first10']:10.3f} {r['share_last10']:10.3f} "
            f"{r['engagement_share']:10.3f} {r['welfare']:8.2f}"
        )
    print(f"figure: {args.out / 'platforms.png'}")
    return summary


def plot(runs: dict, path: Path) -> None:
    """platform_0's market share and user welfare over the episode (mean and range over seeds)."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for name, histories in runs.items():
        for ax, series in (
            (axes[0], np.stack([h.array("market_share")[:, 0] for h in histories])),
            (axes[1], np.stack([h.array("welfare") for h in histories])),
        ):
            steps = np.arange(1, series.shape[1] + 1)
            ax.plot(steps, series.mean(0), label=name)
            ax.fill_between(steps, series.min(0), series.max(0), alpha=0.15)
    axes[0].axhline(0.5, color="gray", lw=0.8, ls="--")
    axes[0].set_title("platform_0 market share (vs a random platform_1)")
    axes[1].set_title("user welfare (mean minutes per user per step)")
    for ax in axes:
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
