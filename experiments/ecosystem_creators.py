"""Creators ecosystem: fixed creators vs creators learning where to publish (shared-parameter PPO).

    .venv/bin/python experiments/ecosystem_creators.py [--steps 40000] [--out results/ecosystem_creators]

1. Fixed creators: every creator stays where it starts (`StayPolicy`).
2. Learning creators: one PPO shared by all creators (SuperSuit parameter sharing,
   `agents.ecosystem_training.train_shared`), rewarded by exposure share.
3. Both are evaluated on the same evaluation seeds (same users, same starting
   positions); the script prints exposure concentration (Gini over creators),
   content diversity of the recommendations, creator spread and user welfare, and
   plots them over the episode to ``<out>/creators.png`` (+ ``summary.json``).
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

from agents.ecosystem_training import StayPolicy, run_episode, train_shared  # noqa: E402
from envs.ecosystems import creators  # noqa: E402
from recsim_mm.device import default_torch_threads  # noqa: E402
from recsim_mm.pipeline import default_item_space  # noqa: E402

METRICS = ("exposure_gini", "diversity", "spread", "welfare")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see ``--help``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--steps", type=int, default=40_000, help="PPO agent-steps (all creators together)"
    )
    parser.add_argument("--creators", type=int, default=6)
    parser.add_argument("--users", type=int, default=128)
    parser.add_argument("--episode", type=int, default=50, help="steps per episode")
    parser.add_argument("--items", type=int, default=600, help="catalog size (default_item_space)")
    parser.add_argument("--max-move", type=float, default=0.1)
    parser.add_argument("--reward", choices=creators.CREATOR_REWARDS, default="exposure")
    parser.add_argument("--eval-seeds", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "ecosystem_creators")
    return parser.parse_args(argv)


def summarise(histories: list) -> dict[str, dict]:
    """Episode mean, last-10-step mean (over evaluation seeds) and each seed's last-10 mean of each metric."""
    out = {}
    for key in METRICS:
        series = np.stack([h.array(key) for h in histories])  # (seeds, T)
        out[key] = {
            "episode_mean": float(series.mean()),
            "last10_mean": float(series[:, -10:].mean()),
            "last10_per_seed": [round(float(v), 4) for v in series[:, -10:].mean(1)],
        }
    return out


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(default_torch_threads())
    space = default_item_space(num_items=args.items)
    options = dict(
        item_space=space,
        num_creators=args.creators,
        num_users=args.users,
        max_steps=args.episode,
        max_move=args.max_move,
        creator_reward=args.reward,
    )
    env = creators.parallel_env(**options)
    eval_seeds = [10_000 + i for i in range(args.eval_seeds)]

    fixed = {agent: StayPolicy(env.map_dim) for agent in env.possible_agents}
    fixed_runs = [run_episode(env, fixed, seed=s) for s in eval_seeds]

    start = time.perf_counter()
    model = train_shared(
        creators.parallel_env(**options),
        args.steps,
        num_copies=2,
        seed=args.seed,
        n_steps=128,
        batch_size=256,
        n_epochs=5,
        learning_rate=3e-4,
        gamma=0.95,
        ent_coef=0.0,
        verbose=0,
    )
    train_s = time.perf_counter() - start
    learned = dict.fromkeys(env.possible_agents, model)
    learned_runs = [run_episode(env, learned, seed=s) for s in eval_seeds]

    summary = {
        "command": ".venv/bin/python experiments/ecosystem_creators.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "options": {k: v for k, v in vars(args).items() if k != "out"},
        "train_seconds": round(train_s, 1),
        "fixed": summarise(fixed_runs),
        "learning": summarise(learned_runs),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    plot(fixed_runs, learned_runs, args.out / "creators.png")

    print(
        f"trained {args.steps} agent-steps in {train_s:.0f} s; evaluation over {len(eval_seeds)} seeds"
    )
    print(
        f"{'metric':15s} {'fixed':>8s} {'learning':>9s}   last 10 steps: fixed vs learning; seeds where learning is higher"
    )
    for key in METRICS:
        f, learn = summary["fixed"][key], summary["learning"][key]
        higher = sum(
            b > a for a, b in zip(f["last10_per_seed"], learn["last10_per_seed"], strict=True)
        )
        print(
            f"{key:15s} {f['episode_mean']:8.3f} {learn['episode_mean']:9.3f}   "
            f"{f['last10_mean']:.3f} vs {learn['last10_mean']:.3f}; {higher}/{len(f['last10_per_seed'])}"
        )
    print(f"figure: {args.out / 'creators.png'}")
    return summary


def plot(fixed_runs: list, learned_runs: list, path: Path) -> None:
    """Gini, diversity and spread over the episode (mean over seeds), and one seed's trajectories."""
    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    for ax, key, title in zip(
        axes[:3],
        ("exposure_gini", "diversity", "spread"),
        (
            "exposure concentration (Gini)",
            "content diversity of recommendations",
            "creator spread (map units)",
        ),
        strict=True,
    ):
        for runs, label in (
            (fixed_runs, "fixed creators"),
            (learned_runs, "learning creators (PPO)"),
        ):
            series = np.stack([h.array(key) for h in runs])
            steps = np.arange(1, series.shape[1] + 1)
            ax.plot(steps, series.mean(0), label=label)
            ax.fill_between(steps, series.min(0), series.max(0), alpha=0.15)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.legend()
    ax = axes[3]
    for runs, style, label in ((fixed_runs, "o", "fixed"), (learned_runs, "-", "learning")):
        positions = runs[0].array("positions")  # (T, C, q)
        for c in range(positions.shape[1]):
            ax.plot(positions[:, c, 0], positions[:, c, 1], style, color=f"C{c}", ms=3, alpha=0.8)
        ax.plot([], [], style, color="gray", label=label)
    ax.set_title("creator positions (map axes 0, 1), seed 0")
    ax.set_xlim(-1, 1)
    ax.set_ylim(-1, 1)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
