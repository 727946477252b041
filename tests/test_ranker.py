"""The supervised multimodal ranker on logs of the default environment: quality, ablations,
determinism, checkpoints, and its three uses (greedy policy, reward model, warm start)."""

from __future__ import annotations

import dataclasses

import gymnasium
import numpy as np
import pytest
import torch

import envs  # noqa: F401  (registers the recsim_mm/ ids)
from agents.baselines import PopularRecommender, RandomRecommender
from agents.evaluation import evaluate_recommender
from envs.rec_env import RecEnvOptions, build_simulator
from recsim_mm import ItemSpace
from recsim_mm.logging_policies import ProductionPolicy, collect
from recsim_mm.pipeline import default_item_space
from recsim_mm.ranker import Ranker, TrainConfig, evaluate_ranker, train_ranker
from recsim_mm.scorer import Scorer, ScorerConfig

ENV_ID = "recsim_mm/InterestEvolution-v0"
SCORER = {"hidden_dim": 32, "num_heads": 2}
TRAIN = TrainConfig(lr=2e-3, batch_size=256, max_epochs=3, patience=2, device="cpu", seed=0)


def default_logs(space: ItemSpace, num_users: int, seed: int):
    """Logs of the default InterestEvolution environment (its simulator, in ids mode)
    under the noisy production logging policy."""
    sim = build_simulator(RecEnvOptions(item_space=space, obs_mode="ids"), num_users=500, default_device="cpu")
    return collect(sim, ProductionPolicy(), num_users=num_users, steps=100, seed=seed)


@pytest.fixture(scope="module")
def space() -> ItemSpace:
    return default_item_space()


@pytest.fixture(scope="module")
def logs(space):
    return {"train": default_logs(space, 1500, seed=0), "test": default_logs(space, 500, seed=1)}


@pytest.fixture(scope="module")
def trained(space, logs):
    """One ranker per modality switch, same data, same seed."""
    return {
        modality: train_ranker(logs["train"], space, ScorerConfig(32, 32, modality=modality, **SCORER), TRAIN)
        for modality in ("fused", "text", "image")
    }


@pytest.mark.slow
def test_fused_ranker_beats_text_only_and_image_only(trained, logs):
    metrics = {m: evaluate_ranker(r.ranker, logs["test"], k=5) for m, r in trained.items()}
    fused, text, image = (metrics[m]["auc"] for m in ("fused", "text", "image"))
    assert fused > text + 0.01 and fused > image + 0.01, metrics
    assert fused > 0.72, metrics  # small-scale run; the full-scale figure is >= 0.75
    assert metrics["fused"]["ndcg@5"] > metrics["text"]["ndcg@5"]
    assert 0 < metrics["fused"]["recall@5"] <= 1


def test_training_loss_decreases(trained):
    history = trained["fused"].history
    assert history[-1]["train_click_loss"] < history[0]["train_click_loss"] - 0.02
    assert min(h["val_log_loss"] for h in history) < np.log(2) - 0.1  # far better than chance


def test_training_is_deterministic_on_cpu(space, logs):
    small = logs["train"].select(np.arange(1500))
    config = dataclasses.replace(TRAIN, max_epochs=2)
    runs = [train_ranker(small, space, ScorerConfig(32, 32, **SCORER), config) for _ in range(2)]
    other = train_ranker(small, space, ScorerConfig(32, 32, **SCORER), dataclasses.replace(config, seed=1))
    a, b, c = (r.ranker.warm_start_state_dict() for r in (*runs, other))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert runs[0].history == [dict(h, seconds=runs[0].history[i]["seconds"]) for i, h in enumerate(runs[1].history)]
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_checkpoint_round_trip_gives_identical_scores(trained, logs, space, tmp_path):
    ranker = trained["fused"].ranker
    ranker.save(tmp_path / "ranker.pt")
    loaded = Ranker.load(tmp_path / "ranker.pt", space, device="cpu", expected_config=ranker.config)
    for candidates in ("shown", "all"):
        assert torch.equal(loaded.score_log(logs["test"], candidates), ranker.score_log(logs["test"], candidates))
    payload = torch.load(tmp_path / "ranker.pt", weights_only=True)
    assert payload["item_space_fingerprint"] == space.fingerprint()
    assert payload["scorer_config"] == ranker.config.to_dict()


def test_best_checkpoint_is_written_and_tensorboard_gets_scalars(space, logs, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = dataclasses.replace(
        TRAIN, max_epochs=2, checkpoint_path=str(tmp_path / "best.pt"), tensorboard_dir=str(tmp_path / "tb")
    )
    result = train_ranker(logs["train"].select(np.arange(1500)), space, ScorerConfig(32, 32, **SCORER), config)
    assert not list(tmp_path.glob("*.tmp"))
    loaded = Ranker.load(tmp_path / "best.pt", space, device="cpu")
    assert torch.equal(loaded.score_log(logs["test"]), result.ranker.score_log(logs["test"]))
    assert torch.load(tmp_path / "best.pt", weights_only=True)["epoch"] == result.best_epoch
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/click_loss", "val/log_loss", "val/auc"} <= tags
    assert len(events.Scalars("val/auc")) == len(result.history)


def test_checkpoint_from_another_item_space_is_refused(trained, tmp_path):
    trained["fused"].ranker.save(tmp_path / "ranker.pt")
    other = ItemSpace.random(600, d_text=32, d_image=32, seed=5)
    with pytest.raises(ValueError, match=r"ranker\.pt: checkpoint was trained on item space \w+ \(600 items\), but the given item space is"):
        Ranker.load(tmp_path / "ranker.pt", other)


def test_checkpoint_with_another_architecture_is_refused(trained, space, tmp_path):
    ranker = trained["fused"].ranker
    ranker.save(tmp_path / "ranker.pt")
    expected = dataclasses.replace(ranker.config, user_encoder="gru")
    with pytest.raises(ValueError, match="architecture mismatch.*user_encoder: 'attention' vs 'gru'"):
        Ranker.load(tmp_path / "ranker.pt", space, expected_config=expected)
    # A file whose weights belong to another architecture than the config it claims.
    payload = torch.load(tmp_path / "ranker.pt", weights_only=True)
    payload["scorer_config"]["hidden_dim"] = 64
    torch.save(payload, tmp_path / "tampered.pt")
    with pytest.raises(ValueError, match="tampered.pt: weights do not fit the stored architecture"):
        Ranker.load(tmp_path / "tampered.pt", space)
    with pytest.raises(ValueError, match="architecture mismatch.*modality: 'fused' vs 'text'"):
        ranker.warm_start(Scorer(dataclasses.replace(ranker.config, modality="text"), item_table=space.fused,
                                 item_features=ranker.scorer.item_feature_table))


def test_checkpoint_from_before_history_decays_is_refused_naming_the_field(trained, space, tmp_path):
    trained["fused"].ranker.save(tmp_path / "ranker.pt")
    payload = torch.load(tmp_path / "ranker.pt", weights_only=True)
    del payload["scorer_config"]["history_decays"]  # as written before the field existed
    torch.save(payload, tmp_path / "old.pt")
    with pytest.raises(ValueError, match=r"old.pt: checkpoint written by an older version.*\['history_decays'\]"):
        Ranker.load(tmp_path / "old.pt", space)


def test_training_on_a_log_of_another_item_space_is_refused(logs):
    other = ItemSpace.random(600, d_text=32, d_image=32, seed=5)
    with pytest.raises(ValueError, match="different item space"):
        train_ranker(logs["train"], other)


def test_warm_start_gives_the_agent_scorer_identical_scores(trained, space):
    ranker = trained["fused"].ranker
    # the item metadata (the log's popularity included) comes with the weights: start from zeros
    blank = torch.zeros_like(ranker.scorer.item_feature_table)
    agent_scorer = ranker.warm_start(Scorer(ranker.config, item_table=space.fused, item_features=blank)).eval()
    assert torch.equal(agent_scorer.item_feature_table, ranker.scorer.item_feature_table)
    env = gymnasium.make(ENV_ID, item_space=space)  # embeddings mode: the scorer finds the rows
    obs, _ = env.reset(seed=7)
    batch = {k: torch.as_tensor(v).unsqueeze(0) for k, v in obs.items()}
    with torch.no_grad():
        torch.testing.assert_close(agent_scorer(batch), ranker.scorer(batch), rtol=0, atol=0)


@pytest.mark.slow
def test_greedy_ranker_beats_popularity_and_random_on_held_out_users(trained, logs, space):
    env = gymnasium.make_vec(ENV_ID, num_envs=300, vectorization_mode="vector_entry_point",
                             item_space=space, device="cpu")
    policies = {
        "ranker": trained["fused"].ranker.policy(),
        "popular": PopularRecommender.from_log(logs["train"], space.fused),
        "random": RandomRecommender(seed=0),
    }
    # Seed 123: users never seen in training (the logs used seeds 0 and 1).
    returns = {name: evaluate_recommender(p, env, seed=123, item_table=space.fused).episode_return
               for name, p in policies.items()}
    means = {name: float(r.mean()) for name, r in returns.items()}
    stderr = float(returns["ranker"].std() / np.sqrt(len(returns["ranker"])))
    assert means["ranker"] > means["popular"] + 2 * stderr, means
    assert means["ranker"] > means["random"] + 2 * stderr, means


def test_greedy_policy_acts_on_single_batched_and_slate_observations(trained, space):
    policy = trained["fused"].ranker.policy()
    env = gymnasium.make(ENV_ID, item_space=space, obs_mode="ids")
    obs, _ = env.reset(seed=3)
    action = policy(obs)
    assert isinstance(action, int) and env.action_space.contains(action)
    slate_env = gymnasium.make("recsim_mm/InterestEvolutionSlate-v0", item_space=space)
    obs, _ = slate_env.reset(seed=3)
    slate = trained["fused"].ranker.policy(slate_size=3)(obs)
    assert slate.shape == (3,) and slate_env.action_space.contains(slate)
    scores = trained["fused"].ranker.scorer({k: torch.as_tensor(v)[None] for k, v in obs.items()})[0]
    assert slate.tolist() == scores.argsort(descending=True)[:3].tolist()


def test_reward_model_replaces_the_simulator_reward(trained, space):
    reward_model = trained["fused"].ranker.reward_model()
    env = gymnasium.make_vec(ENV_ID, num_envs=8, vectorization_mode="vector_entry_point",
                             item_space=space, device="cpu", reward_fn=reward_model)
    obs, _ = env.reset(seed=11)
    actions = np.arange(8) % 20
    expected = reward_model.expected_engagement(obs)[torch.arange(8), torch.as_tensor(actions)].numpy()
    _, reward, _, _, info = env.step(actions)
    np.testing.assert_allclose(reward, expected, rtol=1e-5)
    assert (reward > 0).all()
    # The learned reward is not the simulator's: engagement of non-clicks is 0 there.
    assert not np.allclose(reward, info["engagement"])


def test_metrics_agree_with_scikit_learn():
    from sklearn.metrics import log_loss as sk_log_loss
    from sklearn.metrics import ndcg_score, roc_auc_score

    from recsim_mm.metrics import auc, log_loss, ndcg_at_k, recall_at_k

    rng = np.random.default_rng(0)
    scores = np.round(rng.normal(size=500), 1)  # rounded: ties must count one half
    labels = (rng.random(500) < 1 / (1 + np.exp(-scores))).astype(float)
    assert auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert log_loss(scores, labels) == pytest.approx(sk_log_loss(labels, 1 / (1 + np.exp(-scores))), abs=1e-9)
    relevance = rng.random((40, 10))
    ranking = rng.normal(size=(40, 10))
    assert ndcg_at_k(ranking, relevance, 5) == pytest.approx(ndcg_score(relevance, ranking, k=5), abs=1e-9)
    relevant = np.zeros((1, 4))
    relevant[0, [0, 3]] = 1.0
    assert recall_at_k(np.array([[0.9, 0.8, 0.1, 0.2]]), relevant, 2) == 0.5
    with pytest.raises(ValueError, match="both clicks and non-clicks"):
        auc([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        log_loss([0.1, 0.2], [1, 2])
