"""Exposure fairness: Gini, the exposure summary, exposure accounting in evaluation, the re-ranker."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import envs
from agents.baselines import ExposureAwareRecommender, make_baseline
from agents.evaluation import evaluate_recommender
from envs.vector_env import RecVectorEnv
from recsim_mm.metrics import exposure_summary, gini
from recsim_mm.pipeline import default_item_space
from recsim_mm.ranker import Ranker
from recsim_mm.scorer import Scorer


@pytest.fixture(scope="module")
def space():
    return default_item_space(num_items=300)


def test_gini_of_equal_one_holder_and_a_worked_example():
    assert gini(np.full(7, 3.0)) == pytest.approx(0.0)
    assert gini([0, 0, 0, 5]) == pytest.approx(3 / 4)
    assert gini([4, 1, 3, 2]) == pytest.approx(0.25)  # sum (2i - n - 1) x_(i) = 10, n sum x = 40
    with pytest.raises(ValueError, match="non-negative"):
        gini([1, -1])
    with pytest.raises(ValueError, match="all-zero"):
        gini([0, 0])


def test_exposure_summary_shares_follow_the_popularity_head():
    exposure = np.zeros(100)
    exposure[:10] = 9.0  # the 10 most popular items get 90 of 100 showings
    exposure[10:20] = 1.0
    popularity = np.arange(100, 0, -1)  # item 0 most popular
    topics = np.zeros((100, 2))
    topics[:50, 0] = topics[50:, 1] = 1.0
    out = exposure_summary(exposure, popularity, topics)
    assert out["top1_exposure_share"] == pytest.approx(0.09)
    assert out["top10_exposure_share"] == pytest.approx(0.90)
    assert out["long_tail_exposure_share"] == pytest.approx(0.0)  # items 20.. never shown
    assert out["topic_exposure_gini"] == pytest.approx(0.5)  # topic 0 holds all: (T-1)/T
    with pytest.raises(ValueError, match="popularity must be"):
        exposure_summary(exposure, popularity[:5])


def test_evaluation_counts_every_shown_slate_position_and_popular_is_less_fair_than_random(space):
    env = RecVectorEnv(128, item_space=space, obs_mode="ids", device="cpu", slate_size=envs.SLATE_SIZE)
    popularity = np.random.default_rng(0).zipf(1.5, space.num_items).astype(float)
    results = {}
    for name in ("random", "popular"):
        policy = make_baseline(name, space.fused, popularity=popularity, slate_size=envs.SLATE_SIZE)
        results[name] = evaluate_recommender(policy, env, seed=11, item_table=space.fused, popularity=popularity)
    random = results["random"]
    assert random.item_exposure.sum() == random.session_length.sum() * envs.SLATE_SIZE
    summary = random.summary()
    for key in ("exposure_gini", "topic_exposure_gini", "top1_exposure_share", "long_tail_exposure_share"):
        assert 0.0 <= summary[key] <= 1.0, key
    assert results["popular"].exposure["exposure_gini"] > random.exposure["exposure_gini"] + 0.1
    assert (results["popular"].exposure["top10_exposure_share"]
            > random.exposure["top10_exposure_share"] + 0.1)


def test_exposure_regulariser_trades_return_for_flatter_exposure(space):
    torch.manual_seed(0)
    ranker = Ranker(Scorer.for_item_space(space, hidden_dim=32), space)
    env = RecVectorEnv(256, item_space=space, obs_mode="ids", device="cpu")
    gini_by_weight = {}
    for fairness in (0.0, 2.0):
        policy = ExposureAwareRecommender(ranker.policy(objective="engagement"), space.fused, fairness)
        result = evaluate_recommender(policy, env, seed=5, item_table=space.fused)
        gini_by_weight[fairness] = result.exposure["exposure_gini"]
        assert policy.exposure.sum() >= result.item_exposure.sum()  # it counted what it showed
    assert gini_by_weight[2.0] < gini_by_weight[0.0] - 0.05, gini_by_weight
    with pytest.raises(ValueError, match="fairness >= 0"):
        ExposureAwareRecommender(ranker.policy(), space.fused, -1.0)
