"""Item cold start: a catalog that grows on a schedule, and how new items fare in evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

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


# -- user cold start: a short history prefix ---------------------------------------------------------


class HistoryCentroid:
    """Recommends the candidate closest (dot product) to the mean of the observed history
    vectors; with an empty history every score is 0 and the first candidate is taken."""

    def predict(self, obs, deterministic=True):
        mask = obs["history_mask"][..., None]
        centroid = (obs["history_items"] * mask).sum(1) / np.maximum(mask.sum(1), 1)
        return np.einsum("bkd,bd->bk", obs["candidate_items"], centroid).argmax(1), None


def test_a_history_prefix_fills_the_newest_slots_with_liked_items_and_leaves_the_state(space):
    with pytest.raises(ValueError, match=r"history_prefix=11 must be an integer in \[0, history_length=10\]"):
        RecVectorEnv(4, item_space=space, obs_mode="ids", device="cpu", history_prefix=11)
    plain = RecVectorEnv(256, item_space=space, obs_mode="ids", device="cpu")
    env = RecVectorEnv(256, item_space=space, obs_mode="ids", device="cpu", history_prefix=3)
    obs, _ = env.reset(seed=0)
    assert (obs["history_mask"][:, -3:] == 1).all() and (obs["history_mask"][:, :-3] == 0).all()
    prefix = obs["history_items"][:, -3:]
    assert (obs["history_feedback"][:, -3:, 0] == 1).all()
    np.testing.assert_allclose(obs["history_feedback"][:, -3:, 1], space.duration.numpy()[prefix])
    sim = env.simulator
    liked = sim.users.affinity(torch.as_tensor(prefix)).mean().item()
    uniform = sim.users.affinity(torch.randint(space.num_items, (256, 3))).mean().item()
    assert liked > uniform + 0.1, (liked, uniform)  # each is the best of K random items
    # a prefix changes only the history: the same users (same draws before the prefix)
    plain.reset(seed=0)
    for name, value in plain.simulator.users.hidden_state().items():
        np.testing.assert_array_equal(value.numpy(), sim.users.hidden_state()[name].numpy(), err_msg=name)


def test_a_history_prefix_lets_a_history_reading_policy_click_more_in_the_first_steps(space):
    table = space.fused
    results = {}
    for prefix in (0, 3):
        env = RecVectorEnv(512, item_space=space, obs_mode="embeddings", device="cpu", max_steps=10,
                           history_prefix=prefix)
        results[prefix] = evaluate_recommender(HistoryCentroid(), env, seed=7, item_table=table)
    for result in results.values():
        assert result.step_clicks.sum() == result.clicks.sum()
        assert result.step_users[0] == 512
    first = {p: r.ctr_by_step()[0] for p, r in results.items()}
    assert first[3] > first[0] + 0.05, first
    assert results[3].summary()["ctr_first3"] > results[0].summary()["ctr_first3"]


def test_arrival_schedule_holds_back_the_last_rows(space):
    schedule = ArrivalSchedule.parse([{"at": 4, "last": 30}], space)
    assert schedule.rows == (tuple(range(270, 300)),)
    with pytest.raises(ValueError, match=r"new_items\[0\]\['last'\]=300: expected an int in \[1, 300\)"):
        ArrivalSchedule.parse([{"at": 4, "last": 300}], space)


@pytest.mark.slow
def test_item_cold_start_preset_reports_new_items_for_content_and_id_only_rankers(tmp_path):
    import torch

    from experiments.config import ConfigError
    from experiments.run import main

    tiny = ["preset=item_cold_start", "progress=false", "jobs=1", "seeds=[0]", "catalog.num_items=300", "encoders.d_text=16",
            "encoders.d_image=16", "env.max_steps=20", "logging.num_users=200", "logging.test_users=80",
            "scorer.hidden_dim=16", "ranker.max_epochs=2", "agents=[random,greedy,greedy_id]",
            "eval.num_users=64", "eval.tune_users=16", "threads=1", f"results_dir={tmp_path}"]
    previous = torch.get_num_threads()
    try:
        with pytest.raises(ConfigError, match=r"config key 'env.new_items' = 0.6 is invalid"):
            main([*tiny, "env.new_items=0.6"])
        run_dir = main(tiny)
    finally:
        torch.set_num_threads(previous)
    summary = (run_dir / "summary.md").read_text()
    assert "New items (item cold start" in summary and "New-item CTR paired with `greedy_id`" in summary
    import csv

    with open(run_dir / "metrics.csv") as f:
        rows = {(r["strategy"], r["metric"]): float(r["value"]) for r in csv.DictReader(f)}
    assert rows[("greedy", "new_item_exposure_share")] > 0
    # content ranks the unseen items; learned ids of items no log mentions carry nothing
    id_ctr = rows[("greedy_id", "new_item_ctr")]
    assert rows[("greedy", "new_item_ctr")] > (0.0 if id_ctr != id_ctr else id_ctr)
    # metrics by session step: every strategy's first step has all 64 held-out users
    with open(run_dir / "ctr_by_step.csv") as f:
        steps = [r for r in csv.DictReader(f) if r["step"] == "1"]
    assert {r["strategy"] for r in steps} == {"random", "greedy", "greedy_id"}
    assert all(int(r["users"]) == 64 for r in steps)
    assert (run_dir / "plots" / "ctr_by_step.png").stat().st_size > 0
