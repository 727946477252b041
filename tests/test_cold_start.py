"""Item cold start: a catalog that grows on a schedule, and how new items fare in evaluation."""

from __future__ import annotations

import numpy as np
import pytest

from agents.baselines import make_baseline
from agents.evaluation import evaluate_recommender
from envs.vector_env import RecVectorEnv
from recsim_mm.candidates import ArrivalSchedule
from recsim_mm.pipeline import default_item_space


@pytest.fixture(scope="module")
def space():
    return default_item_space(num_items=300)


def test_schedule_errors_name_the_item_or_step(space):
    first = space.item_ids[0]
    with pytest.raises(ValueError, match=r"item id 'no-such-item' is not in this item space"):
        ArrivalSchedule.parse([{"at": 5, "items": ["no-such-item"]}], space)
    with pytest.raises(ValueError, match=r"new_items\[1\]\['at'\]=5 does not come after the previous arrival"):
        ArrivalSchedule.parse([{"at": 5, "items": [1]}, {"at": 5, "items": [2]}], space)
    with pytest.raises(ValueError, match=r"item 300 is neither an item id nor a row in \[0, 300\)"):
        ArrivalSchedule.parse([{"at": 5, "items": [300]}], space)
    with pytest.raises(ValueError, match="scheduled twice"):
        ArrivalSchedule.parse([{"at": 2, "items": [first]}, {"at": 3, "items": [0]}], space)
    with pytest.raises(ValueError, match=r"'at'\]=0: expected an int step >= 1"):
        ArrivalSchedule.parse([{"at": 0, "items": [1]}], space)
    schedule = ArrivalSchedule.parse([{"at": 2, "items": [first, 7]}, {"at": 9, "items": [8]}], space)
    assert schedule.steps == (2, 9) and schedule.rows == ((0, 7), (8,))


def test_held_back_items_are_offered_only_from_their_step(space):
    new = list(range(250, 300))
    env = RecVectorEnv(64, item_space=space, obs_mode="ids", device="cpu",
                       new_items=[{"at": 3, "items": new}])
    obs, _ = env.reset(seed=0)
    seen = []
    for _ in range(6):
        seen.append(np.isin(obs["candidate_items"], new).any())
        obs, *_ = env.step(np.zeros(64, dtype=np.int64))
    assert seen[:3] == [False, False, False]  # steps 0-2: not yet arrived
    assert all(seen[3:])  # 50 of 300 items, 64 users x 20 candidates: they show up at once
    with pytest.raises(ValueError, match="not combined with candidates"):
        RecVectorEnv(4, item_space=space, obs_mode="ids", device="cpu", new_items=[{"at": 1, "items": [0]}],
                     candidates={"popular": 0.5})


def test_evaluation_reports_how_new_items_fared(space):
    new = list(range(270, 300))  # 10% of the catalog, arriving at step 2
    env = RecVectorEnv(256, item_space=space, obs_mode="ids", device="cpu", new_items=[{"at": 2, "items": new}])
    result = evaluate_recommender(make_baseline("random", space.fused), env, seed=3, item_table=space.fused)
    summary = result.summary()
    # a random policy shows new items about as often as they are in the pool after step 2
    assert 0.05 < summary["new_item_exposure_share"] < 0.1
    assert 0.0 < summary["new_item_ctr"] < 1.0 and 0.0 < summary["new_items_clicked"] <= 1.0
    assert summary["new_item_steps_to_first_click"] >= 0.0
    assert result.item_exposure[new].sum() > 0
    plain = evaluate_recommender(make_baseline("random", space.fused),
                                 RecVectorEnv(32, item_space=space, obs_mode="ids", device="cpu"), seed=3,
                                 item_table=space.fused)
    assert "new_item_ctr" not in plain.summary()


@pytest.mark.slow
def test_cold_start_experiment_script_prints_the_table_and_paired_difference():
    from experiments.cold_start import main

    out = main(["--seeds", "2", "--log-users", "100", "--users", "32", "--ppo-steps", "0"])
    for name in ("| random |", "| ranker |", "| ranker_id |", "new-item CTR, ranker - ranker_id:"):
        assert name in out, name
