"""The non-privileged planning reference: the session-end model fitted on logs, and
`agents.references.ModelPlanning` on it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agents.baselines import make_baseline
from agents.references import PLANNING_HORIZONS, ModelPlanning, tune_model_planning_horizon
from envs.rec_env import RecEnvOptions, build_simulator
from envs.vector_env import RecVectorEnv
from recsim_mm import ItemSpace
from recsim_mm.logging_policies import ProductionPolicy, collect
from recsim_mm.observation import (
    CANDIDATE_ITEMS,
    HISTORY_FEEDBACK,
    HISTORY_ITEMS,
    HISTORY_MASK,
    TIME_LEFT,
)
from recsim_mm.ranker import Ranker
from recsim_mm.scorer import Scorer
from recsim_mm.session_end import SessionEndModel

USERS, STEPS = 200, 50


@pytest.fixture(scope="module")
def space() -> ItemSpace:
    return ItemSpace.random(600, seed=0)  # the default catalog size; no encoding needed here


def simulated_log(space: ItemSpace, user_model: str, seed: int = 0):
    sim = build_simulator(RecEnvOptions(item_space=space, obs_mode="ids", user_model=user_model, max_steps=STEPS),
                          num_users=USERS, default_device="cpu")
    return collect(sim, ProductionPolicy(), num_users=USERS, steps=STEPS, seed=seed)


@pytest.fixture(scope="module")
def satiation_log(space):
    return simulated_log(space, "satiation")


@pytest.fixture(scope="module")
def myopic_log(space):
    return simulated_log(space, "myopic")


@pytest.fixture(scope="module")
def ranker(space) -> Ranker:
    """An untrained ranker with both heads: the ranking identities below hold for any weights."""
    torch.manual_seed(0)
    return Ranker(Scorer.for_item_space(space, hidden_dim=16, num_heads=2), space)


def observations(space: ItemSpace, user_model: str, steps: int = 6, users: int = 64, seed: int = 123):
    """Observations of ``users`` users after ``steps`` random recommendations (histories filled)."""
    env = RecVectorEnv(users, item_space=space, user_model=user_model, obs_mode="ids", device="cpu",
                       max_steps=STEPS)
    obs, _ = env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        obs, *_ = env.step(rng.integers(0, obs[CANDIDATE_ITEMS].shape[1], size=users))
    return obs


def test_fit_is_deterministic_and_finds_satiation_on_satiation_logs(space, satiation_log):
    model = SessionEndModel.fit(satiation_log, space)
    again = SessionEndModel.fit(satiation_log, space)
    np.testing.assert_array_equal(model.coef, again.coef)
    assert model.stats["ends"] > 50 and model.stats["cv_log_loss"] < model.stats["base_log_loss"]
    kept = model.nonzero_coefficients()
    assert any(name.startswith("sat_") and value > 0 for name, value in kept.items()), kept


def test_click_branch_ends_more_after_a_candidate_like_what_was_just_watched(space, satiation_log):
    model = SessionEndModel.fit(satiation_log, space)
    table = space.fused
    watched = 0
    dissimilar = int((table @ table[watched]).argmin())
    h, k = satiation_log.history_length, satiation_log.num_candidates
    others = [i for i in range(space.num_items) if i not in (watched, dissimilar)][: k - 2]
    minutes = float(space.duration[watched])
    obs = {  # one user who watched item 0 in full for the last three steps
        HISTORY_ITEMS: np.zeros((1, h), np.int64),
        HISTORY_FEEDBACK: np.zeros((1, h, 2), np.float32),
        HISTORY_MASK: np.zeros((1, h), np.float32),
        CANDIDATE_ITEMS: np.array([[watched, dissimilar, *others]], np.int64),
        TIME_LEFT: np.full((1, 1), 9_000.0, np.float32),
    }
    obs[HISTORY_ITEMS][0, -3:] = watched
    obs[HISTORY_FEEDBACK][0, -3:] = (1.0, minutes)
    obs[HISTORY_MASK][0, -3:] = 1.0
    click, no_click = model.branch_probabilities(obs)
    assert click[0, 0] > click[0, 1] + 0.05, (click[0, :2], no_click)
    # shown with certainty of a click, the end probability is the click branch's
    end = model.end_probability(obs, np.ones((1, k), np.float32))
    torch.testing.assert_close(end, click)


def test_on_myopic_logs_the_end_probability_ignores_the_candidate_and_planning_ranks_as_greedy(
        space, myopic_log, ranker):
    model = SessionEndModel.fit(myopic_log, space)
    obs = observations(space, "myopic")
    click = torch.rand(obs[CANDIDATE_ITEMS].shape, generator=torch.Generator().manual_seed(0))
    end = model.end_probability(obs, click)
    spread = (end.amax(1) - end.amin(1)).max().item()
    assert model.nonzero_coefficients() == {} and spread < 1e-9, (spread, model.nonzero_coefficients())
    greedy = make_baseline("greedy", space.fused, ranker=ranker, objective="engagement")
    expected, _ = greedy.predict(obs)
    for horizon in PLANNING_HORIZONS:
        actions, _ = ModelPlanning(ranker, model, horizon).predict(obs)
        np.testing.assert_array_equal(actions, expected, err_msg=f"horizon {horizon}")


@pytest.mark.parametrize("reward", ["engagement", "click"])
def test_horizon_zero_ranks_exactly_as_greedy(space, satiation_log, ranker, reward):
    model = SessionEndModel.fit(satiation_log, space)
    obs = observations(space, "satiation")
    planner = ModelPlanning(ranker, model, 0.0, reward=reward)
    greedy = ranker.policy(objective=reward)
    np.testing.assert_array_equal(planner.predict(obs)[0], greedy.predict(obs)[0])
    order = np.argsort(-planner.scores(obs), axis=1, kind="stable")
    truth = greedy.expected_reward(obs).double().numpy()
    np.testing.assert_array_equal(order, np.argsort(-truth, axis=1, kind="stable"))
    # and a positive horizon does change the ranking on Satiation, where the end model bites
    moved = ModelPlanning(ranker, model, 30.0, reward=reward).predict(obs)[0]
    assert (moved != greedy.predict(obs)[0]).any()


def test_embeddings_observations_give_the_same_probabilities_as_ids(space, satiation_log):
    model = SessionEndModel.fit(satiation_log, space)
    obs = observations(space, "satiation")
    table = space.fused.numpy()
    vectors = dict(obs)
    vectors[HISTORY_ITEMS] = table[obs[HISTORY_ITEMS]] * obs[HISTORY_MASK][..., None]  # padded: zeros
    vectors[CANDIDATE_ITEMS] = table[obs[CANDIDATE_ITEMS]]
    click = np.full(obs[CANDIDATE_ITEMS].shape, 0.5, np.float32)
    torch.testing.assert_close(model.end_probability(vectors, click), model.end_probability(obs, click))


def test_model_planning_recommends_slates_on_a_slate_id(space, satiation_log, ranker):
    from agents.evaluation import evaluate_recommender

    model = SessionEndModel.fit(satiation_log, space)
    env = RecVectorEnv(16, item_space=space, user_model="satiation", slate_size=3, obs_mode="ids", device="cpu",
                       max_steps=10)
    result = evaluate_recommender(ModelPlanning(ranker, model, 10.0, slate_size=3), env, seed=3,
                                  item_table=space.fused)
    assert np.isfinite(result.summary()["episode_return"])


def test_tuning_picks_the_best_horizon_on_the_given_users(space, satiation_log, ranker):
    model = SessionEndModel.fit(satiation_log, space)
    returns = {0.0: 1.0, 3.0: 5.0, 10.0: 5.0}
    best, tried = tune_model_planning_horizon(lambda policy: returns[policy.horizon], ranker, model,
                                              horizons=tuple(returns))
    assert best == 3.0 and tried == returns  # ties keep the smaller horizon


def test_bad_inputs_are_errors_naming_the_problem(space, satiation_log, ranker):
    smaller = ItemSpace.random(500, seed=0)  # another catalog: a log of ours refers to rows it lacks
    with pytest.raises(ValueError, match="different item space"):
        SessionEndModel.fit(satiation_log, smaller)
    last = satiation_log.step.max()
    reached = sorted({u for u in np.unique(satiation_log.user_id)
                      if satiation_log.step[satiation_log.user_id == u].max() == last})
    assert reached  # users truncated at the step limit: censored, none of them ended
    censored_only = satiation_log.select(np.isin(satiation_log.user_id, reached))
    with pytest.raises(ValueError, match="no session end"):
        SessionEndModel.fit(censored_only, space)
    model = SessionEndModel.fit(satiation_log, space)
    obs = observations(space, "satiation")
    obs[CANDIDATE_ITEMS] = obs[CANDIDATE_ITEMS] + space.num_items  # rows of a larger catalog
    with pytest.raises(ValueError, match="another item space"):
        model.branch_probabilities(obs)
    with pytest.raises(ValueError, match="time_left"):
        model.branch_probabilities({k: v for k, v in observations(space, "satiation").items() if k != TIME_LEFT})
    smaller_ranker = Ranker(Scorer.for_item_space(smaller, hidden_dim=16, num_heads=2), smaller)
    with pytest.raises(ValueError, match="another item space"):
        ModelPlanning(smaller_ranker, model, 3.0)
    with pytest.raises(ValueError, match="horizon"):
        ModelPlanning(ranker, model, -1.0)


@pytest.mark.slow
def test_run_py_tunes_evaluates_and_reports_model_planning_as_an_ordinary_strategy(tmp_path):
    import csv

    from experiments.run import main

    tiny = ["progress=false", "jobs=1", "seeds=[0,1]", "catalog.num_items=300", "encoders.d_text=16",
            "encoders.d_image=16", "env.max_steps=20", "logging.num_users=200", "logging.test_users=60",
            "scorer.hidden_dim=16", "scorer.num_heads=2", "ranker.max_epochs=2", "ranker.ablations=false",
            "eval.num_users=48", "eval.curve_users=0", "eval.trace_users=2", "eval.tune_users=16"]
    suite = "env.id=[recsim_mm/Satiation-v0,recsim_mm/Myopic-v0]"
    run_dir = main([*tiny, suite, "agents=[model_planning,myopic_oracle,planning]", f"results_dir={tmp_path}"])
    summary = (run_dir / "summary.md").read_text()
    table = summary.split("## Strategy x environment")[1].split("\n## ")[0]
    rows = [line.split(" | ")[0][2:] for line in table.splitlines() if line.startswith("| ") and "strategy" not in line]
    assert rows == ["greedy", "model_planning", "myopic_oracle", "planning"]  # greedy comes with it, as with mmr
    model_row = next(line for line in table.splitlines() if line.startswith("| model_planning"))
    assert model_row.count("Δ") == 2 and model_row.count(" / ") == 2  # paired with greedy, fractions of both
    assert "model_planning-seed0 = " in summary and "non-privileged planning bar" in summary

    def returns(env: str, strategy: str) -> dict[str, str]:
        with open(run_dir / env / "metrics.csv", newline="") as f:
            return {r["seed"]: r["value"] for r in csv.DictReader(f)
                    if r["strategy"] == strategy and r["metric"] == "episode_return"}

    # the control: nothing ends sessions differently, so model_planning is the greedy ranker
    assert returns("Myopic-v0", "model_planning") == returns("Myopic-v0", "greedy")
