"""SlateQ: the slate-value decomposition, slate selection, click attribution, learning."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import envs
from agents.baselines import make_baseline
from agents.evaluation import evaluate_recommender
from agents.sb3_vec_env import SB3VecEnv
from agents.slateq import (
    SlateQ,
    SlateQPolicy,
    all_slates,
    best_slates,
    check_choice_model,
    clicked_slot,
    slate_values,
)
from agents.train import AgentConfig, build_agent, make_env
from envs.vector_env import RecVectorEnv
from recsim_mm.choice import MultinomialLogit
from recsim_mm.item_features import item_feature_table
from recsim_mm.pipeline import default_item_space
from recsim_mm.ranker import Ranker
from recsim_mm.scorer import Scorer, ScorerConfig

SLATE_ENV = "recsim_mm/InterestEvolutionSlate-v0"


@pytest.fixture(scope="module")
def space():
    return default_item_space(num_items=300)


def brute_force_value(v: list[float], q: list[float], null: float, slate: tuple[int, ...]) -> float:
    """Q(s, A) by the definition, one slate, plain Python: sum over outcomes of P x value."""
    weights = {i: np.exp(v[i]) for i in slate}
    total = 1.0 + sum(weights.values())
    return null / total + sum(weights[i] / total * q[i] for i in slate)


def test_decomposition_equals_brute_force_slate_value_and_the_best_slate_is_the_brute_force_best():
    generator = torch.Generator().manual_seed(0)
    batch, k, s = 4, 6, 3
    v = torch.randn(batch, k, generator=generator) * 2
    q = torch.randn(batch, k, generator=generator) * 5
    null = torch.randn(batch, generator=generator)
    ordered = list(itertools.permutations(range(k), s))
    decomposed = slate_values(v, q, null, torch.tensor(ordered))
    slates, value = best_slates(v, q, null, s)
    for row in range(batch):
        brute = [brute_force_value(v[row].tolist(), q[row].tolist(), float(null[row]), a) for a in ordered]
        np.testing.assert_allclose(decomposed[row].numpy(), brute, rtol=1e-5, atol=1e-5)
        assert float(value[row]) == pytest.approx(max(brute), rel=1e-5)
        assert brute_force_value(v[row].tolist(), q[row].tolist(), float(null[row]),
                                 tuple(slates[row].tolist())) == pytest.approx(max(brute), rel=1e-5)
        assert len(set(slates[row].tolist())) == s


def test_click_probabilities_are_the_environments_multinomial_logit():
    """The decomposition's P(i | s, A) is recsim_mm.choice.MultinomialLogit with T=1, no-click 0."""
    v = torch.tensor([[0.3, -1.0, 2.0]])
    one_hot = torch.eye(3)
    # Q-bar = indicator of item i (no-click 0): the slate value is then P(i | s, A)
    p = torch.cat([slate_values(v, one_hot[i : i + 1], torch.zeros(1), torch.tensor([[0, 1, 2]]))
                   for i in range(3)], dim=1)
    expected = MultinomialLogit(temperature=1.0, no_click_utility=0.0).click_probability(v)
    torch.testing.assert_close(p, expected)


def test_greedy_selection_is_never_better_than_exact_and_returns_distinct_slates():
    generator = torch.Generator().manual_seed(1)
    v = torch.randn(64, 8, generator=generator)
    q = torch.rand(64, 8, generator=generator) * 10
    null = torch.rand(64, generator=generator)
    exact_slates, exact = best_slates(v, q, null, 3)
    greedy_slates, greedy = best_slates(v, q, null, 3, max_exact_slates=1)
    assert (greedy <= exact + 1e-5).all()
    assert (greedy >= 0.9 * exact).float().mean() > 0.9  # the paper's greedy is near-optimal
    assert all(len(set(row)) == 3 for row in greedy_slates.tolist())
    torch.testing.assert_close(slate_values(v, q, null, greedy_slates.unsqueeze(1)).squeeze(1), greedy)
    assert all_slates(8, 3).shape == (56, 3)


@pytest.mark.parametrize("obs_mode", ["ids", "embeddings"])
def test_clicked_slot_read_from_the_next_observation_matches_the_simulator(space, obs_mode):
    venv = SB3VecEnv(SLATE_ENV, 256, obs_mode=obs_mode, item_space=space, device="cpu")
    venv.seed(3)
    obs = venv.reset()
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(5):
        slates = np.argsort(rng.random((256, 20)), axis=1)[:, : envs.SLATE_SIZE]
        venv.step_async(slates)
        new_obs, _, dones, infos = venv.step_wait()
        next_obs = {key: value.copy() for key, value in new_obs.items()}
        for row in np.flatnonzero(dones):  # SB3's replay buffer stores the final observation
            for key in next_obs:
                next_obs[key][row] = infos[row]["terminal_observation"][key]
        as_tensor = lambda o: {key: torch.as_tensor(value, dtype=torch.float32) for key, value in o.items()}  # noqa: E731
        slot = clicked_slot(as_tensor(next_obs), as_tensor(obs), torch.as_tensor(slates), obs_mode == "ids")
        item = venv.last_info["clicked_item"]
        ids = obs["candidate_items"] if obs_mode == "ids" else None
        for row in range(256):
            if item[row] < 0:
                assert slot[row] == -1
            elif ids is not None:
                assert ids[row, slates[row, slot[row]]] == item[row]
            else:
                np.testing.assert_allclose(obs["candidate_items"][row, slates[row, slot[row]]],
                                           space.fused[item[row]].numpy(), atol=1e-6)
            checked += int(item[row] >= 0)
        obs = new_obs
    assert checked > 50  # enough clicks were attributed to mean something


def slateq(space, venv, **kwargs) -> SlateQ:
    config = ScorerConfig(d_text=space.d_text, d_image=space.d_image, hidden_dim=32).to_dict()
    options = dict(learning_rate=1e-3, buffer_size=50_000, learning_starts=1_000, batch_size=128,
                   train_freq=1, gradient_steps=1, target_update_interval=1_000, exploration_fraction=0.3,
                   exploration_final_eps=0.05, gamma=0.9, seed=0, device="cpu",
                   policy_kwargs=dict(scorer_config=config, item_table=space.fused.cpu(),
                                      item_features=item_feature_table(space)))
    return SlateQ(SlateQPolicy, venv, **{**options, **kwargs})


def test_slateq_acts_with_distinct_slates_and_has_a_zero_no_click_value_at_start(space):
    venv = SB3VecEnv(SLATE_ENV, 8, obs_mode="ids", item_space=space, device="cpu")
    model = slateq(space, venv)
    venv.seed(0)
    obs = venv.reset()
    actions, _ = model.predict(obs, deterministic=True)
    assert actions.shape == (8, envs.SLATE_SIZE)
    assert all(len(set(row)) == envs.SLATE_SIZE for row in actions.tolist())
    with torch.no_grad():
        _, null = model.q_net.values({k: torch.as_tensor(v) for k, v in obs.items()})
    assert torch.equal(null, torch.zeros(8))


@pytest.mark.slow
def test_slateq_beats_random_slates_on_held_out_users(space):
    venv = SB3VecEnv(SLATE_ENV, 64, obs_mode="ids", item_space=space, device="cpu")
    model = slateq(space, venv)
    model.learn(12_288)
    env = RecVectorEnv(512, item_space=space, obs_mode="ids", device="cpu", slate_size=envs.SLATE_SIZE)
    agent = evaluate_recommender(model, env, seed=777, item_table=space.fused).episode_return
    random_slates = make_baseline("random", space.fused, slate_size=envs.SLATE_SIZE)
    random = evaluate_recommender(random_slates, env, seed=777, item_table=space.fused).episode_return
    gain = agent - random  # same held-out users: paired
    standard_error = gain.std(ddof=1) / np.sqrt(len(gain))
    assert gain.mean() > 5 * standard_error, (gain.mean(), standard_error)


def test_slateq_refuses_one_item_environments_and_non_mnl_users(space):
    with pytest.raises(ValueError, match="needs a slate environment"):
        slateq(space, SB3VecEnv("recsim_mm/InterestEvolution-v0", 4, obs_mode="ids", item_space=space,
                                device="cpu"))
    cascade = SB3VecEnv(SLATE_ENV, 4, obs_mode="ids", item_space=space, device="cpu",
                        user_params={"choice_model": "cascade"})
    with pytest.raises(ValueError, match="choose by Cascade"):
        check_choice_model(cascade.venv.simulator)
    check_choice_model(SB3VecEnv(SLATE_ENV, 4, obs_mode="ids", item_space=space, device="cpu").venv.simulator)


@pytest.mark.parametrize("obs_mode", ["ids", "embeddings"])
def test_warm_start_first_item_values_and_click_model_equal_the_rankers_scores(space, obs_mode):
    torch.manual_seed(3)
    ranker = Ranker(Scorer.for_item_space(space, hidden_dim=32), space)
    config = AgentConfig(algo="slateq", num_envs=8, device="cpu", learning_starts=10)
    venv = make_env(config, SLATE_ENV, {"obs_mode": obs_mode, "item_space": space})
    model = build_agent(config, venv, space, ranker=ranker)
    venv.seed(0)
    obs = {key: torch.as_tensor(value) for key, value in venv.reset().items()}
    scorer_obs = {key: value.long() if obs_mode == "ids" and key in ("history_items", "candidate_items")
                  else value for key, value in obs.items()}
    with torch.no_grad():
        expected = ranker.scorer(scorer_obs)
        item_values, _ = model.q_net.values(obs)
        target_values, _ = model.q_net_target.values(obs)
        click_logits = model.policy.click_logits(obs)
    torch.testing.assert_close(item_values, expected)
    torch.testing.assert_close(target_values, expected)
    torch.testing.assert_close(click_logits, expected)
