"""Creators ecosystem: fixed creators vs creators learning where to publish (shared-parameter PPO).

    .venv/bin/python experiments/ecosystem_creators.py [--steps 40000] [--out results/ecosystem_creators]

1. Fixed creators: every creator stays where it starts (`StayPolicy`).
2. Learning creators: one PPO shared by all creators (SuperSuit parameter sharing,
   `agents.ecosystem_training.train_shared`), rewarded by exposure share.
3. Both are evaluated on the same evaluation seeds (same users, same starting
   positions); the script prints exposure concentration (Gini over creators),
   content diversity of the recommendations, creator spread and user welfare, and
   plots them over the episode to ``<out>/creators.png`` (+ ``summary.json``).

The experiment itself is `experiments.ecosystem.creator_runs` (``make run
ARGS="preset=creators"`` runs it over several seeds, with the results-folder conventions).
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

import torch  # noqa: E402

from envs.ecosystems.creators import CREATOR_REWARDS  # noqa: E402
from experiments.ecosystem import creator_metrics, creator_options, creator_runs, plot_creators  # noqa: E402
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
    parser.add_argument("--reward", choices=CREATOR_REWARDS, default="exposure")
    parser.add_argument("--eval-seeds", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "ecosystem_creators")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Run the comparison, print it, write ``summary.json`` and ``creators.png``; returns the summary."""
    args = parse_args(argv)
    torch.set_num_threads(default_torch_threads())
    space = default_item_space(num_items=args.items)
    options = creator_options(space, args.creators, args.users, args.episode, args.max_move, args.reward)
    eval_seeds = [10_000 + i for i in range(args.eval_seeds)]
    start = time.perf_counter()
    runs = creator_runs(options, args.steps, args.seed, eval_seeds)
    seconds = time.perf_counter() - start
    per_seed = {name: [creator_metrics([h]) for h in histories] for name, histories in runs.items()}
    summary = {
        "command": ".venv/bin/python experiments/ecosystem_creators.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "options": {k: v for k, v in vars(args).items() if k != "out"},
        "seconds": round(seconds, 1),
        **{("learning" if name == "ppo" else name): creator_metrics(histories) for name, histories in runs.items()},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    plot_creators({"fixed creators": runs["fixed"], "learning creators (PPO)": runs["ppo"]},
                  args.out / "creators.png")

    print(f"trained and evaluated in {seconds:.0f} s; evaluation over {len(eval_seeds)} seeds")
    print(f"{'metric':15s} {'fixed':>8s} {'learning':>9s}   last 10 steps: fixed vs learning; "
          "seeds where learning is higher")
    for key in METRICS:
        f, learn = summary["fixed"], summary["learning"]
        higher = sum(b[f"{key}_last10"] > a[f"{key}_last10"] for a, b in zip(per_seed["fixed"], per_seed["ppo"],
                                                                              strict=True))
        print(f"{key:15s} {f[key]:8.3f} {learn[key]:9.3f}   "
              f"{f[key + '_last10']:.3f} vs {learn[key + '_last10']:.3f}; {higher}/{len(eval_seeds)}")
    print(f"figure: {args.out / 'creators.png'}")
    return summary


if __name__ == "__main__":
    main()
