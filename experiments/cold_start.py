"""Item cold start: does content let a recommender serve items no log mentions?

The scenario (docs/cold_start.md): the last ``--new-share`` of the catalog is held back
while logs are collected and agents are trained (`envs` option ``new_items`` with an
arrival step no run reaches), so no log, no training episode and no history mentions
those items. On held-out users the items arrive at step 1 and compete with the rest.
Each strategy is scored on how it serves them (CTR of the new items it shows, their
share of exposure, how many get clicked, steps to the first click) and on return:

- ``ranker``: the multimodal ranker (content: fused text + image vectors), greedy on
  expected minutes;
- ``ranker_id``: the same scorer with item vectors replaced by learned id embeddings
  (`ScorerConfig(modality="id")`), trained on the same logs: new items keep their
  random initial embeddings, which is what "no content" means;
- ``ppo`` / ``ppo_id``: PPO warm-started from each ranker (``--ppo-steps``, 0 = skip);
- ``random``.

    .venv/bin/python experiments/cold_start.py [--seeds 3] [--new-share 0.1] [--ppo-steps 20000]

Prints a table (mean over seeds ± 95% CI) and the paired difference of new-item CTR
between each content strategy and its id-only twin.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from agents.baselines import make_baseline  # noqa: E402
from agents.evaluation import evaluate_recommender  # noqa: E402
from agents.train import AgentConfig, train_agent  # noqa: E402
from envs.rec_env import RecEnvOptions, build_simulator  # noqa: E402
from envs.vector_env import RecVectorEnv  # noqa: E402
from experiments.report import mean_ci, paired_difference  # noqa: E402
from recsim_mm.logging_policies import ProductionPolicy, collect  # noqa: E402
from recsim_mm.pipeline import default_item_space  # noqa: E402
from recsim_mm.ranker import TrainConfig, train_ranker  # noqa: E402
from recsim_mm.scorer import ScorerConfig  # noqa: E402

ENV_ID = "recsim_mm/InterestEvolution-v0"
METRICS = ("new_item_ctr", "new_item_exposure_share", "new_items_clicked", "new_item_steps_to_first_click",
           "episode_return", "ctr")
#: An arrival step no logging or training run reaches: the items stay held back.
NEVER = 10**9


def run(seeds: int, new_share: float, users: int, log_users: int, ppo_steps: int) -> dict:
    """``{strategy: [summary per seed]}`` of the scenario (see the module docstring)."""
    space = default_item_space()
    count = int(round(new_share * space.num_items))
    if not 1 <= count < space.num_items - 20:
        raise ValueError(f"--new-share {new_share} holds back {count} of {space.num_items} items; "
                         "expected at least one and enough left for the candidates")
    new = list(range(space.num_items - count, space.num_items))
    held_back, arriving = [{"at": NEVER, "items": new}], [{"at": 1, "items": new}]
    results: dict[str, list[dict]] = {}
    for seed in range(seeds):
        sim = build_simulator(RecEnvOptions(item_space=space, obs_mode="ids", new_items=held_back),
                              num_users=500, default_device="cpu")
        log = collect(sim, ProductionPolicy(), num_users=log_users, steps=100, seed=seed)
        strategies = {"random": make_baseline("random", space.fused, seed=seed)}
        for name, modality in (("ranker", "fused"), ("ranker_id", "id")):
            torch.manual_seed(seed)
            config = ScorerConfig(space.d_text, space.d_image, hidden_dim=32, num_heads=2, modality=modality)
            ranker = train_ranker(log, space, config, TrainConfig(lr=2e-3, batch_size=256, max_epochs=3,
                                                                  patience=2, device="cpu", seed=seed)).ranker
            strategies[name] = ranker.policy(objective="engagement")
            if ppo_steps:
                agent = AgentConfig(algo="ppo", total_steps=ppo_steps, num_envs=64, device="cpu", seed=seed)
                with tempfile.TemporaryDirectory() as folder:
                    outcome = train_agent(agent, ENV_ID, {"obs_mode": "ids", "new_items": held_back}, space,
                                          folder, ranker=ranker)
                strategies[name.replace("ranker", "ppo")] = outcome.model
        for name, policy in strategies.items():
            env = RecVectorEnv(users, item_space=space, obs_mode="ids", device="cpu", new_items=arriving)
            summary = evaluate_recommender(policy, env, seed=100_000 + seed, item_table=space.fused).summary()
            results.setdefault(name, []).append(summary)
            print(f"seed {seed} {name}: " + ", ".join(f"{m} {summary[m]:.3f}" for m in METRICS), flush=True)
    return results


def table(results: dict) -> str:
    """Markdown: strategies x `METRICS` (mean ± 95% CI half-width over seeds), then the
    paired new-item CTR differences content - id-only."""
    lines = ["| strategy | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
    for name, per_seed in results.items():
        cells = []
        for metric in METRICS:
            mean, half = mean_ci([s[metric] for s in per_seed])
            cells.append(f"{mean:.3f} ± {half:.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    for content, ids in (("ranker", "ranker_id"), ("ppo", "ppo_id")):
        if content in results and ids in results:
            d = paired_difference([s["new_item_ctr"] for s in results[content]],
                                  [s["new_item_ctr"] for s in results[ids]])
            lines.append(f"new-item CTR, {content} - {ids}: {d['diff']:+.3f} [{d['ci_low']:+.3f}, "
                         f"{d['ci_high']:+.3f}] (95% CI, {d['wins']} of {d['n']} seeds won)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--new-share", type=float, default=0.1, help="share of the catalog held back, then new")
    parser.add_argument("--users", type=int, default=500, help="held-out users per seed")
    parser.add_argument("--log-users", type=int, default=1500, help="logged users per seed")
    parser.add_argument("--ppo-steps", type=int, default=20_000, help="PPO steps per run (0: no PPO)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = table(run(args.seeds, args.new_share, args.users, args.log_users, args.ppo_steps))
    print(out)
    return out


if __name__ == "__main__":
    main()
