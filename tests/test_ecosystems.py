"""Ecosystem environments: PettingZoo API and seed tests, market dynamics, creators, bad input, metrics, training."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from pettingzoo.test import api_test, parallel_api_test, parallel_seed_test, seed_test

from agents.baselines import OracleRecommender, RandomRecommender
from agents.ecosystem_training import (
    AgentView,
    StayPolicy,
    run_episode,
    train_independent,
    train_shared,
)
from envs.ecosystems import creators, platforms
from recsim_mm.ecosystem_metrics import content_diversity, gini, market_share, position_spread
from recsim_mm.pipeline import default_item_space


@pytest.fixture(scope="module")
def space():
    # num_items=300: the size tests/test_agents.py builds, so a full run encodes it once.
    return default_item_space(num_items=300)


def platform_options(space, **overrides):
    # One K for every platform test: the core builds its candidate pool once per (N, K).
    return {"item_space": space, "num_users": 8, "num_candidates": 10, "max_steps": 12, **overrides}


def creator_options(space, **overrides):
    return {"item_space": space, "num_users": 8, "num_creators": 3, "max_steps": 12, **overrides}


@pytest.fixture(autouse=True)
def one_thread_quiet_checkers():
    # One torch thread: tiny tensors gain nothing from threads (see conftest.py). PettingZoo's checkers warn about Dict observations and
    # the reset options they pass; those warnings are expected here.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield
    torch.set_num_threads(previous)


# -- PettingZoo API and seeding ----------------------------------------------------------------------


@pytest.mark.parametrize("extra", [{}, {"obs_mode": "ids", "exit_share": 0.45, "exit_patience": 1}])
def test_platforms_pass_parallel_and_aec_api_tests(space, extra):
    parallel_api_test(platforms.parallel_env(**platform_options(space, **extra)), num_cycles=30)
    api_test(platforms.env(**platform_options(space, **extra)), num_cycles=30)


def test_platforms_pass_seed_tests(space):
    parallel_seed_test(lambda: platforms.parallel_env(**platform_options(space)))
    seed_test(lambda: platforms.env(**platform_options(space)))


def test_creators_pass_parallel_and_aec_api_tests(space):
    parallel_api_test(creators.parallel_env(**creator_options(space)), num_cycles=30)
    api_test(creators.env(**creator_options(space)), num_cycles=30)


def test_creators_pass_seed_tests(space):
    parallel_seed_test(lambda: creators.parallel_env(**creator_options(space)))
    seed_test(lambda: creators.env(**creator_options(space, recommender="random")))


def test_same_seed_same_market_different_seed_different_market(space):
    def shares(seed):
        env = platforms.parallel_env(**platform_options(space, num_users=30))
        policies = {a: RandomRecommender(seed=1) for a in env.possible_agents}
        return run_episode(env, policies, seed=seed).array("market_share")

    assert np.array_equal(shares(3), shares(3))
    assert not np.array_equal(shares(3), shares(4))


# -- the platform market -------------------------------------------------------------------------------


def market_share_trajectory(space, policy_0, seed=0):
    env = platforms.parallel_env(item_space=space, num_users=100, num_candidates=10, max_steps=30)
    history = run_episode(
        env, {"platform_0": policy_0, "platform_1": RandomRecommender(seed=seed)}, seed=seed
    )
    return history.array("market_share")[:, 0]


def test_greedy_platform_gains_market_share_from_random_platform(space):
    share = market_share_trajectory(space, OracleRecommender())
    assert abs(share[0] - 0.5) < 0.15  # newcomers start indifferent
    assert share[-10:].mean() > 0.65
    assert share[-10:].mean() > share[0] + 0.15


def test_two_random_platforms_split_the_market(space):
    share = market_share_trajectory(space, RandomRecommender(seed=7))
    assert abs(share[-10:].mean() - 0.5) < 0.1


def test_users_drift_from_a_disappointing_platform(space):
    env = platforms.parallel_env(
        **platform_options(space, num_users=200, choice={"switching_cost": 0.0})
    )
    obs, infos = env.reset(seed=0)
    greedy = OracleRecommender()
    greedy.observe(infos["platform_0"])
    worst = {
        "platform_0": greedy.predict(obs["platform_0"])[0],
        "platform_1": np.asarray(infos["platform_1"]["candidate_affinity"]).argmin(1),
    }
    visited_1 = obs["platform_1"]["visiting"] > 0
    env.step(worst)
    # A visit to the bad platform lowers the user's satisfaction with it below the good one's.
    satisfaction = env.satisfaction.numpy()
    assert (satisfaction[visited_1, 1] < satisfaction[visited_1, 0]).mean() > 0.8


def test_platform_sees_only_its_own_interactions(space):
    env = platforms.parallel_env(**platform_options(space, num_users=20, max_steps=20))
    obs, _ = env.reset(seed=1)
    for _ in range(8):
        obs, *_ = env.step({a: np.zeros(20, dtype=np.int64) for a in env.agents})
    masks = np.stack([obs[a]["history_mask"] for a in env.possible_agents])  # (M, U, H)
    assert masks.max() <= 1 and (masks.sum(0) <= 1).all()  # disjoint
    np.testing.assert_array_equal(masks.sum(0), env.simulator.observation()["history_mask"].numpy())
    for p, agent in enumerate(env.possible_agents):
        hidden = masks[p] == 0
        assert (obs[agent]["history_items"][hidden] == 0).all()
        assert (obs[agent]["history_feedback"][hidden] == 0).all()


def test_platform_exits_after_low_share_and_users_stop_visiting_it(space):
    env = platforms.parallel_env(
        **platform_options(space, num_users=60, exit_share=0.4, exit_patience=2)
    )
    obs, infos = env.reset(seed=0)
    greedy = OracleRecommender()
    while "platform_1" in env.agents:
        greedy.observe(infos["platform_0"])
        obs, _, terminations, _, infos = env.step(
            {
                "platform_0": greedy.predict(obs["platform_0"])[0],
                "platform_1": np.zeros(60, dtype=np.int64),
            }
        )
    assert terminations["platform_1"] and env.agents == ["platform_0"]
    assert (obs["platform_0"]["visiting"] == 1).all()


def test_platform_render_and_rewards_add_up(space):
    env = platforms.parallel_env(**platform_options(space, render_mode="ansi"))
    obs, _ = env.reset(seed=0)
    assert "new market" in env.render()
    _, rewards, _, _, infos = env.step({a: np.ones(8, dtype=np.int64) for a in env.agents})
    record = env.history.records[-1]
    assert sum(rewards.values()) == pytest.approx(record["welfare"] * 8, rel=1e-5)
    assert sum(info["visitors"] for info in infos.values()) == 8
    text = env.render()
    assert text.startswith("step 1/12: market share platform_0") and "welfare" in text


# -- creators --------------------------------------------------------------------------------------------------


def test_creator_moves_within_budget_and_publishes_nearest_items(space):
    env = creators.parallel_env(**creator_options(space, max_move=0.2))
    env.reset(seed=0)
    before = env.positions.clone()
    env.step({a: np.full(env.map_dim, 0.5, dtype=np.float32) for a in env.agents})
    expected = (before + 0.1).clamp(-1, 1)
    torch.testing.assert_close(env.positions, expected)
    distances = torch.cdist(env.positions, env.content_map.coords)
    nearest = distances.topk(env.portfolio_size, dim=1, largest=False).indices
    torch.testing.assert_close(env.offers.portfolios, nearest)
    # Every candidate offered to a user comes from its owner's portfolio.
    owner, candidates = env.offers.owner, env.simulator.candidates
    for c in range(env.num_creators):
        offered = candidates[owner == c]
        assert torch.isin(offered, env.offers.portfolios[c]).all()


def test_exposure_goes_to_the_creator_whose_item_is_recommended(space):
    holder = {}

    def favour_creator_1(observation):
        return (holder["env"].offers.owner == 1).float().argmax(1)

    env = creators.parallel_env(**creator_options(space, recommender=favour_creator_1))
    holder["env"] = env
    env.reset(seed=0)
    _, rewards, _, _, infos = env.step({a: np.zeros(env.map_dim, np.float32) for a in env.agents})
    assert rewards == {"creator_0": 0.0, "creator_1": 1.0, "creator_2": 0.0}
    assert infos["creator_1"]["exposure"] == 8
    assert env.history.records[-1]["exposure_gini"] == pytest.approx(2 / 3)


def test_creator_observation_layout(space):
    env = creators.parallel_env(**creator_options(space))
    obs, _ = env.reset(seed=2)
    q, c = env.map_dim, env.num_creators
    positions = env.positions.numpy()
    np.testing.assert_allclose(obs["creator_1"][:q], positions[1])
    np.testing.assert_allclose(obs["creator_1"][q : q * c], positions[[0, 2]].reshape(-1))
    obs, rewards, *_ = env.step({a: np.zeros(q, np.float32) for a in env.agents})
    assert obs["creator_2"][q * c] == pytest.approx(rewards["creator_2"])  # exposure share


# -- bad input ------------------------------------------------------------------------------------------------------


def test_platform_bad_actions_name_the_agent_and_value(space):
    env = platforms.parallel_env(**platform_options(space))
    env.reset(seed=0)
    ok = np.zeros(8, dtype=np.int64)
    with pytest.raises(ValueError, match=r"no action for live agent\(s\) \['platform_1'\]"):
        env.step({"platform_0": ok})
    with pytest.raises(ValueError, match=r"unknown agent 'platform_7' \(action=3\)"):
        env.step({"platform_0": ok, "platform_1": ok, "platform_7": 3})
    bad = ok.copy()
    bad[5] = 10
    with pytest.raises(
        ValueError,
        match=r"agent 'platform_1'.*position 10 is out of range; expected positions in \[0, 10\)",
    ):
        env.step({"platform_0": ok, "platform_1": bad})
    with pytest.raises(ValueError, match=r"agent 'platform_0'.*position -1 is out of range"):
        env.step({"platform_0": ok - 1, "platform_1": ok})
    with pytest.raises(
        ValueError, match=r"agent 'platform_0'.*shape \(7,\); expected shape \(8,\)"
    ):
        env.step({"platform_0": ok[:7], "platform_1": ok})
    with pytest.raises(ValueError, match=r"agent 'platform_1'.*NaN"):
        env.step({"platform_0": ok, "platform_1": np.full(8, np.nan)})
    assert env.num_steps == 0 and len(env.history) == 0  # nothing happened


def test_platform_action_for_an_exited_platform_is_an_error(space):
    env = platforms.parallel_env(
        **platform_options(space, num_users=60, exit_share=0.45, exit_patience=1)
    )
    obs, infos = env.reset(seed=0)
    greedy = OracleRecommender()
    while "platform_1" in env.agents:
        greedy.observe(infos["platform_0"])
        obs, *_, infos = env.step(
            {
                "platform_0": greedy.predict(obs["platform_0"])[0],
                "platform_1": np.zeros(60, dtype=np.int64),
            }
        )
    with pytest.raises(
        ValueError, match=r"agent 'platform_1', which is no longer active.*\(action=\[0 0 0"
    ):
        env.step(
            {"platform_0": np.zeros(60, dtype=np.int64), "platform_1": np.zeros(60, dtype=np.int64)}
        )


def test_creator_bad_actions_name_the_agent_and_value(space):
    env = creators.parallel_env(**creator_options(space))
    env.reset(seed=0)
    q = env.map_dim
    ok = {a: np.zeros(q, np.float32) for a in env.agents}
    with pytest.raises(ValueError, match=r"no action for live agent\(s\) \['creator_2'\]"):
        env.step({"creator_0": ok["creator_0"], "creator_1": ok["creator_1"]})
    with pytest.raises(ValueError, match=r"unknown agent 'creator_3'"):
        env.step({**ok, "creator_3": np.zeros(q)})
    with pytest.raises(
        ValueError, match=r"agent 'creator_1': move component 1.5 is outside \[-1, 1\]"
    ):
        env.step({**ok, "creator_1": np.array([0.0, 1.5, 0.0, 0.0])})
    with pytest.raises(ValueError, match=r"agent 'creator_0': move contains NaN"):
        env.step({**ok, "creator_0": np.array([np.nan, 0.0, 0.0, 0.0])})
    with pytest.raises(
        ValueError, match=r"agent 'creator_2': move has shape \(2,\); expected \(4,\)"
    ):
        env.step({**ok, "creator_2": np.zeros(2)})
    for _ in range(12):
        env.step(ok)
    assert env.agents == []
    with pytest.raises(RuntimeError, match="no live agents"):
        env.step(ok)


def test_bad_construction_options_are_named(space):
    with pytest.raises(ValueError, match="unknown ecosystem option 'reward'"):
        platforms.parallel_env(item_space=space, reward="click")
    with pytest.raises(ValueError, match="unknown platform choice option 'patience'"):
        platforms.parallel_env(item_space=space, choice={"patience": 2})
    with pytest.raises(ValueError, match="temperature=0"):
        platforms.parallel_env(item_space=space, choice={"temperature": 0})
    with pytest.raises(ValueError, match=r"exit_share=0.6 must be in \[0, 1/M\)"):
        platforms.parallel_env(item_space=space, exit_share=0.6)
    with pytest.raises(ValueError, match="unknown ecosystem option 'num_candidates'"):
        creators.parallel_env(item_space=space, num_candidates=5)
    with pytest.raises(ValueError, match="recommender='best' is invalid"):
        creators.parallel_env(item_space=space, recommender="best")
    with pytest.raises(
        ValueError, match=r"initial_positions has shape \(2, 4\); expected \(4, 4\)"
    ):
        creators.parallel_env(item_space=space, initial_positions=np.zeros((2, 4)))


def test_recommender_returning_bad_positions_is_an_error(space):
    env = creators.parallel_env(**creator_options(space, recommender=lambda obs: np.full(8, 99)))
    env.reset(seed=0)
    with pytest.raises(
        ValueError,
        match="recommender returned an invalid choice: action position 99 is out of range",
    ):
        env.step({a: np.zeros(env.map_dim, np.float32) for a in env.agents})


# -- metrics ---------------------------------------------------------------------------------------------------------


def test_metrics_on_known_values(space):
    assert gini([1, 1, 1, 1]) == 0.0
    assert gini([0, 0, 0, 4]) == pytest.approx(0.75)
    assert gini([0, 0]) == 0.0
    with pytest.raises(ValueError, match="non-negative"):
        gini([1, -1])
    np.testing.assert_allclose(
        market_share(torch.tensor([0, 1, 1, 1]), 3).numpy(), [0.25, 0.75, 0.0]
    )
    same = torch.full((5,), 7)
    assert content_diversity(same, space.fused) == pytest.approx(0.0, abs=1e-9)
    varied = torch.arange(50)
    unit = torch.nn.functional.normalize(space.fused[:50].double(), dim=-1)
    cos = unit @ unit.T
    expected = 1 - (cos.sum() - 50) / (50 * 49)
    assert content_diversity(varied, space.fused) == pytest.approx(float(expected))
    assert position_spread(torch.tensor([[0.0, 0.0], [3.0, 4.0]])) == pytest.approx(5.0)


# -- training ---------------------------------------------------------------------------------------------------------


def test_shared_creator_policy_trains_and_acts_in_range(space):
    model = train_shared(
        creators.parallel_env(**creator_options(space)),
        288,
        num_copies=2,
        n_steps=48,
        batch_size=48,
        n_epochs=1,
    )
    env = creators.parallel_env(**creator_options(space))
    history = run_episode(env, dict.fromkeys(env.possible_agents, model), seed=1)
    assert len(history) == 12
    assert np.abs(history.array("positions")).max() <= 1


def test_independent_learner_trains_against_a_fixed_platform(space):
    from stable_baselines3 import PPO

    from agents.ecosystem_training import PlatformScorerPolicy
    from recsim_mm.scorer import ScorerConfig

    scorer = ScorerConfig(d_text=space.d_text, d_image=space.d_image, hidden_dim=8, item_features=()).to_dict()

    def make_model(agent, view):
        return PPO(
            PlatformScorerPolicy,
            view,
            n_steps=24,
            batch_size=12,
            n_epochs=1,
            seed=0,
            policy_kwargs=dict(scorer_config=scorer),
        )

    models = train_independent(
        lambda: platforms.parallel_env(**platform_options(space)),
        make_model,
        fixed={"platform_1": RandomRecommender(seed=0)},
        rounds=1,
        steps_per_round=24,
    )
    assert models["platform_0"].num_timesteps == 24
    view = AgentView(
        platforms.parallel_env(**platform_options(space)),
        "platform_0",
        {"platform_1": RandomRecommender()},
    )
    obs, _ = view.reset(seed=0)
    action, _ = models["platform_0"].predict(obs, deterministic=True)
    assert view.action_space.contains(action)
    _, reward, *_ = view.step(action)
    assert reward == view.parallel_env.history.records[-1]["engagement"][0]


def test_stay_policy_keeps_creators_in_place(space):
    env = creators.parallel_env(**creator_options(space))
    history = run_episode(env, {a: StayPolicy(env.map_dim) for a in env.possible_agents}, seed=0)
    positions = history.array("positions")
    assert (positions == positions[0]).all()


# -- the ecosystem experiments through experiments/run.py ---------------------------------------------

#: Tiny ecosystem runs: the same synthetic catalog as tests/test_experiments.py's TINY.
ECO_TINY = ["progress=false", "jobs=1", "seeds=[0,1]", "catalog.num_items=300", "encoders.d_text=16",
            "encoders.d_image=16", "ecosystem.episode=20", "ecosystem.eval_episodes=3", "threads=1"]


def _metrics(run_dir):
    import csv

    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return {(r["strategy"], int(r["seed"]), r["metric"]): float(r["value"]) for r in rows}


@pytest.mark.slow
def test_platforms_preset_writes_the_results_folder_and_the_oracle_wins_the_users(tmp_path):
    from experiments.run import main

    previous = torch.get_num_threads()
    try:
        run_dir = main(["preset=platforms", *ECO_TINY, "ecosystem.users=4", "ecosystem.steps=200",
                        f"results_dir={tmp_path}"])
    finally:
        torch.set_num_threads(previous)
    metrics = _metrics(run_dir)
    assert {k[0] for k in metrics} == {"random", "oracle", "ppo", "ppo_shared"}
    for seed in (0, 1):  # reading true affinities wins engagement from a random competitor
        assert metrics[("oracle", seed, "engagement_share")] > metrics[("random", seed, "engagement_share")] + 0.2
    summary = (run_dir / "summary.md").read_text()
    assert "## Paired with `random` (same evaluation episodes per seed)" in summary
    assert "| oracle | engagement_share |" in summary
    for name in ("plots/platforms.png", "plots/metrics.png", "checkpoints/ppo-seed0.zip",
                 "checkpoints/ppo_shared-seed1.zip", "config.yaml", "item_space.pt", "stages.json"):
        assert (run_dir / name).stat().st_size > 0, name
    assert list((run_dir / "tensorboard" / "ppo-seed0").rglob("events.out.tfevents.*"))


@pytest.mark.slow
def test_creators_preset_reports_fixed_and_learning_creators_and_fixed_ones_never_move(tmp_path):
    from experiments.run import main

    previous = torch.get_num_threads()
    try:
        run_dir = main(["preset=creators", *ECO_TINY, "seeds=[0]", "ecosystem.creators=3", "ecosystem.users=16",
                        "ecosystem.steps=512", f"results_dir={tmp_path}"])
    finally:
        torch.set_num_threads(previous)
    metrics = _metrics(run_dir)
    assert {k[0] for k in metrics} == {"fixed", "ppo"}
    # fixed creators never move: their spread is the same at the start and the end
    assert metrics[("fixed", 0, "spread")] == pytest.approx(metrics[("fixed", 0, "spread_last10")])
    assert 0 <= metrics[("ppo", 0, "exposure_gini")] <= 1
    assert (run_dir / "plots" / "creators.png").stat().st_size > 0
    assert (run_dir / "checkpoints" / "ppo-seed0.zip").stat().st_size > 0
