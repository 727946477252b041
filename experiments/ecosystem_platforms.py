"""Competing platforms: who wins the users? Greedy vs random, and PPO platforms trained briefly.

    .venv/bin/python experiments/ecosystem_platforms.py [--steps 5000] [--out results/ecosystem_platforms]

1. Greedy vs random: platform_0 recommends the candidate of highest true affinity
   (privileged oracle), platform_1 at random. No training.
2. Independent PPO: platform_0 is an SB3 PPO on `PlatformScorerPolicy` (the shared
   scorer per user), trained against the random platform_1
   (`agents.ecosystem_training.train_independent`).
3. Shared PPO: both platforms share one PPO through SuperSuit (self-play,
   `train_shared`); evaluated as platform_0 against the random platform.

The experiments themselves are `experiments.ecosystem.platform_runs` (``make run
ARGS="preset=platforms"`` runs them over several seeds, with the results-folder
conventions). Each is evaluated on the same seeds; the script prints platform_0's market share at
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

import torch  # noqa: E402

from experiments.ecosystem import (  # noqa: E402
    PLATFORM_STRATEGIES,
    platform_metrics,
    platform_options,
    platform_runs,
    plot_platforms,
)
from recsim_mm.device import default_torch_threads  # noqa: E402
from recsim_mm.pipeline import default_item_space  # noqa: E402


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


def main(argv: list[str] | None = None) -> dict:
    """Run the comparison, print it, write ``summary.json`` and ``platforms.png``; returns the summary."""
    args = parse_args(argv)
    torch.set_num_threads(default_torch_threads())
    space = default_item_space(num_items=args.items)
    options = platform_options(space, args.users, args.candidates, args.episode, args.user_model)
    seeds = [10_000 + i for i in range(args.eval_seeds)]
    strategies = tuple(s for s in PLATFORM_STRATEGIES if s != "random" and not (args.skip_shared and s == "ppo_shared"))
    start = time.perf_counter()
    runs = platform_runs(options, args.steps, args.seed, seeds, strategies=strategies)
    labels = {"oracle": "greedy (oracle) vs random", "ppo": "independent PPO vs random",
              "ppo_shared": "shared PPO (self-play) vs random"}
    runs = {labels[name]: histories for name, histories in runs.items()}
    summary = {
        "command": ".venv/bin/python experiments/ecosystem_platforms.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "options": {k: v for k, v in vars(args).items() if k != "out"},
        "seconds": round(time.perf_counter() - start, 1),
        "results": {name: platform_metrics(histories) for name, histories in runs.items()},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    plot_platforms(runs, args.out / "platforms.png")

    print(f"evaluation over {len(seeds)} seeds; {summary['seconds']} s")
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


if __name__ == "__main__":
    main()
