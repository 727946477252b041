"""Supervised ranker on logs of the default environment: fused vs text-only vs image-only.

Collects logged interactions from the default ``InterestEvolution`` simulator (the
default catalog and user model, ``ids`` mode) under a logging policy, trains one ranker
per modality switch on the same logs, and prints held-out metrics on users never seen
in training (AUC, log loss, NDCG@5, Recall@5), AUC per band of the users' hidden
modality weight (evidence of why both modalities matter), and the true episode
return of greedy ranker policies against popularity and random in
``recsim_mm/InterestEvolution-v0`` on held-out users.

    .venv/bin/python experiments/ranker_ablation.py                # full scale
    .venv/bin/python experiments/ranker_ablation.py --train-users 1500 --test-users 500 \\
        --eval-users 300 --epochs 3 --hidden-dim 32             # the test's scale
"""

from __future__ import annotations

import argparse
import json
import time

import gymnasium
import numpy as np
import torch

import envs  # noqa: F401  (registers the recsim_mm/ ids)
from agents.baselines import OracleRecommender, PopularRecommender, RandomRecommender
from agents.evaluation import evaluate_recommender
from envs.rec_env import RecEnvOptions, build_simulator
from recsim_mm.logging_policies import EpsilonMixture, ProductionPolicy, UniformPolicy, collect
from recsim_mm.metrics import auc
from recsim_mm.pipeline import default_item_space
from recsim_mm.ranker import TrainConfig, evaluate_ranker, train_ranker
from recsim_mm.scorer import ScorerConfig

LOGGING_POLICIES = {
    "production": lambda: ProductionPolicy(),
    "epsilon": lambda: EpsilonMixture(ProductionPolicy(), 0.2),
    "uniform": lambda: UniformPolicy(),
}
MODALITIES = ("fused", "text", "image")
#: Session-step bands for AUC: how much history the ranker had (cold start first).
STEP_BANDS = ((0, 1), (1, 3), (3, 10), (10, 101))


def collect_with_modality_weights(space, policy, num_users: int, seed: int, parallel: int = 500):
    """A log of the default simulator plus each logged user's hidden modality weight.

    The weights are read from the user model after every wave's reset (analysis only;
    the ranker never sees them). Returns ``(log, weight per record (M,))``.
    """
    sim = build_simulator(RecEnvOptions(item_space=space, obs_mode="ids"), num_users=parallel,
                          default_device="cpu")
    waves: list[np.ndarray] = []
    reset = sim.reset

    def reset_and_record(seed=None):
        obs = reset(seed=seed)
        waves.append(sim.users.modality_weight.cpu().numpy().copy())
        return obs

    sim.reset = reset_and_record
    log = collect(sim, policy, num_users=num_users, steps=100, seed=seed)
    user_index = np.asarray([int(u.rsplit("-u", 1)[1]) for u in log.user_id])
    weights = np.asarray([waves[i // parallel][i % parallel] for i in user_index])
    return log, weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-users", type=int, default=10000)
    parser.add_argument("--test-users", type=int, default=2000)
    parser.add_argument("--eval-users", type=int, default=1000, help="env episodes per policy")
    parser.add_argument("--logging-policy", choices=sorted(LOGGING_POLICIES), default="production")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--hidden-dim", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()

    start = time.perf_counter()
    space = default_item_space()
    policy = LOGGING_POLICIES[args.logging_policy]()
    train_log, _ = collect_with_modality_weights(space, policy, args.train_users, seed=args.seed)
    test_log, test_weight = collect_with_modality_weights(space, policy, args.test_users, seed=args.seed + 1000)
    print(f"logs ({args.logging_policy} logging, default InterestEvolution simulator): "
          f"train {len(train_log)} records / {args.train_users} users, "
          f"held-out {len(test_log)} records / {args.test_users} users, "
          f"click rate {train_log.clicks.mean():.3f}  [{time.perf_counter() - start:.0f} s]")

    heads = 2 if args.hidden_dim < 64 else 4
    config = TrainConfig(lr=2e-3, max_epochs=args.epochs, patience=2, device=args.device, seed=args.seed)
    results, rankers = {}, {}
    for modality in MODALITIES:
        t0 = time.perf_counter()
        scorer_config = ScorerConfig(space.d_text, space.d_image, hidden_dim=args.hidden_dim,
                                     num_heads=heads, modality=modality)
        fit = train_ranker(train_log, space, scorer_config, config)
        rankers[modality] = fit.ranker
        metrics = evaluate_ranker(fit.ranker, test_log, k=5)
        logits = fit.ranker.score_log(test_log).numpy()[:, 0]
        labels = test_log.clicks[:, 0]
        for lo, hi in STEP_BANDS:
            band = (test_log.step >= lo) & (test_log.step < hi)
            metrics[f"auc steps {lo}-{hi - 1}"] = auc(logits[band], labels[band])
        for name, band in (("a<1/3 (image-leaning)", test_weight < 1 / 3),
                           ("1/3<=a<=2/3", (test_weight >= 1 / 3) & (test_weight <= 2 / 3)),
                           ("a>2/3 (text-leaning)", test_weight > 2 / 3)):
            metrics[f"auc {name}"] = auc(logits[band], labels[band])
        metrics.update(best_epoch=fit.best_epoch, seconds=time.perf_counter() - t0,
                       train_samples_per_s=fit.samples_per_second)
        results[modality] = metrics

    keys = ["auc", "log_loss", "ndcg@5", "recall@5", "auc a<1/3 (image-leaning)", "auc 1/3<=a<=2/3",
            "auc a>2/3 (text-leaning)"]
    print(f"\nheld-out users ({len(test_log)} records), a = hidden modality weight of text:")
    print("| ranker | " + " | ".join(keys) + " | best epoch | train s |")
    print("|---" * (len(keys) + 3) + "|")
    for modality, m in results.items():
        print(f"| {modality} | " + " | ".join(f"{m[k]:.4f}" for k in keys)
              + f" | {m['best_epoch']} | {m['seconds']:.0f} |")
    step_keys = [f"auc steps {lo}-{hi - 1}" for lo, hi in STEP_BANDS]
    truth = np.take_along_axis(test_log.true_affinity, test_log.shown, axis=1)[:, 0]
    oracle = {}
    for (lo, hi), key in zip(STEP_BANDS, step_keys, strict=True):
        band = (test_log.step >= lo) & (test_log.step < hi)
        oracle[key] = auc(truth[band], test_log.clicks[band, 0])
    print("\nAUC by session step (history available); 'true affinity' ranks by the hidden truth:")
    print("| ranker | " + " | ".join(step_keys) + " |")
    print("|---" * (len(step_keys) + 1) + "|")
    for modality, m in results.items():
        print(f"| {modality} | " + " | ".join(f"{m[k]:.4f}" for k in step_keys) + " |")
    print("| true affinity (privileged) | " + " | ".join(f"{oracle[k]:.4f}" for k in step_keys) + " |")
    band_sizes = [int(b.sum()) for b in (test_weight < 1 / 3, (test_weight >= 1 / 3) & (test_weight <= 2 / 3),
                                          test_weight > 2 / 3)]
    print(f"records per modality band: {band_sizes}; per step band: "
          f"{[int(((test_log.step >= lo) & (test_log.step < hi)).sum()) for lo, hi in STEP_BANDS]}")

    env = gymnasium.make_vec("recsim_mm/InterestEvolution-v0", num_envs=args.eval_users,
                             vectorization_mode="vector_entry_point", item_space=space, device="cpu")
    strategies = {
        "ranker (fused, greedy)": rankers["fused"].policy(),
        "ranker (text-only, greedy)": rankers["text"].policy(),
        "ranker (image-only, greedy)": rankers["image"].policy(),
        "popular (log clicks)": PopularRecommender.from_log(train_log, space.fused),
        "random": RandomRecommender(seed=args.seed),
        "oracle (privileged, true affinity)": OracleRecommender(),
    }
    eval_seed = 10_000 + args.seed  # users of this seed were never logged
    print(f"\nInterestEvolution-v0, {args.eval_users} held-out users (reset seed {eval_seed}), "
          "true simulator return (engagement minutes):")
    print("| policy | mean return | 95% CI | CTR | session length |")
    print("|---|---|---|---|---|")
    returns = {}
    for name, strategy in strategies.items():
        res = evaluate_recommender(strategy, env, seed=eval_seed, item_table=space.fused)
        r = res.episode_return
        half = 1.96 * r.std(ddof=1) / np.sqrt(len(r))
        summary = res.summary()
        returns[name] = {"mean": float(r.mean()), "ci95": float(half), **summary}
        print(f"| {name} | {r.mean():.2f} | ±{half:.2f} | {summary['ctr']:.3f} | "
              f"{summary['session_length']:.1f} |")
    print(f"\ntotal {time.perf_counter() - start:.0f} s, torch {torch.__version__}, device {args.device}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "ranker": results, "episode_return": returns}, f, indent=2)


if __name__ == "__main__":
    main()
