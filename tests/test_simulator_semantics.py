"""What the simulation means: each environment tests what it claims, against true references.

The references (`agents.references`) read the hidden state: the myopic oracle is greedy
on the true expected reward, the planning reference adds a continuation value times the
true probability that the session continues (horizon tuned on training users). Their
difference, on the same held-out users, is the planning headroom:

- Satiation: (a) a ranker trained on logged histories identifies the user's taste (its
  expected-reward greedy is far above random and popular); (b) the planning reference
  beats the myopic oracle by a clear margin;
- Myopic (the control): (c) zero headroom: the references choose the same items;
- InterestEvolution: the myopic oracle is far above random; its headroom is small
  (budget refunds and patience act over many steps, which a one-step lookahead misses).

Held-out users come from seeds nothing was tuned on (parameters were chosen on seeds
0-5 and 777); each comparison is paired: the same seed gives the same users.
"""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest
import torch

import envs  # noqa: F401
from agents.baselines import make_baseline
from agents.evaluation import evaluate_recommender
from agents.references import MyopicOracle, PlanningReference, tune_planning_horizon
from recsim_mm import ItemSpace
from recsim_mm.simulator import Simulator
from recsim_mm.users import MyopicUser

USERS = 400
HELD_OUT_SEED = 90_210
TRAINING_SEED = 5
MAX_STEPS = 50


def vector_env(variant: str, users: int = USERS):
    return gymnasium.make_vec(f"recsim_mm/{variant}-v0", num_envs=users, vectorization_mode="vector_entry_point",
                              device="cpu", obs_mode="ids", max_steps=MAX_STEPS)


def returns(variant: str, policy, seed: int = HELD_OUT_SEED, users: int = USERS) -> np.ndarray:
    """``(users,)`` return of each user's first episode under ``policy``."""
    env = vector_env(variant, users)
    return evaluate_recommender(policy, env, seed=seed, item_table=env.simulator.item_space.fused).episode_return


def mean_and_se(x: np.ndarray) -> tuple[float, float]:
    return float(x.mean()), float(x.std(ddof=1) / np.sqrt(len(x)))


def tuned_planning_reference(variant: str) -> PlanningReference:
    """The planning reference with its horizon tuned on TRAINING users (another seed)."""
    horizon, _ = tune_planning_horizon(lambda ref: returns(variant, ref, seed=TRAINING_SEED, users=200).mean())
    return PlanningReference(horizon)


@pytest.mark.parametrize("variant", ["InterestEvolution", "Satiation", "Myopic"])
def test_myopic_oracle_beats_random_by_a_clear_margin(variant):
    space = vector_env(variant, 1).simulator.item_space
    oracle, oracle_se = mean_and_se(returns(variant, MyopicOracle()))
    rand, rand_se = mean_and_se(returns(variant, make_baseline("random", space.fused)))
    # Clear margin: at least twice the random return and 10 standard errors apart.
    assert oracle > 2 * rand, (oracle, rand)
    assert oracle - rand > 10 * np.hypot(oracle_se, rand_se), (oracle, rand)


def test_in_satiation_the_planning_reference_beats_the_myopic_oracle_by_a_clear_margin():
    gain = returns("Satiation", tuned_planning_reference("Satiation")) - returns("Satiation", MyopicOracle())
    mean, se = mean_and_se(gain)
    myopic = returns("Satiation", MyopicOracle()).mean()
    assert mean > 4 * se, (mean, se)  # sessions vary a lot per user: 4 standard errors
    assert mean > 0.2 * myopic, (mean, myopic)  # a clear margin: more than a fifth of the myopic return


@pytest.mark.parametrize("horizon", [3.0, 30.0])
def test_in_myopic_the_planning_headroom_is_exactly_zero(horizon):
    # The session end does not depend on the item, so lookahead changes no choice.
    assert np.array_equal(returns("Myopic", PlanningReference(horizon)), returns("Myopic", MyopicOracle()))


@pytest.mark.slow
def test_in_satiation_a_ranker_trained_on_logged_histories_identifies_the_users_taste():
    from envs.rec_env import RecEnvOptions, build_simulator
    from recsim_mm.logs import EpsilonMixture, ProductionPolicy, collect
    from recsim_mm.ranker import TrainConfig, train_ranker
    from recsim_mm.scorer import ScorerConfig

    env = vector_env("Satiation")
    space = env.simulator.item_space
    spec = gymnasium.spec("recsim_mm/Satiation-v0")
    options = RecEnvOptions(**spec.kwargs, item_space=space, obs_mode="ids", max_steps=MAX_STEPS)
    log = collect(build_simulator(options, num_users=600, default_device="cpu"),
                  EpsilonMixture(ProductionPolicy(), 0.5), 600, MAX_STEPS, seed=0)
    ranker = train_ranker(log, space, ScorerConfig(space.d_text, space.d_image, hidden_dim=32),
                          TrainConfig(max_epochs=4, seed=0, device="cpu")).ranker
    popular = make_baseline("popular", space.fused, popularity=np.bincount(
        log.candidate_items[log.clicked_slot >= 0, log.shown[log.clicked_slot >= 0, 0]], minlength=space.num_items))
    greedy = returns("Satiation", ranker.policy(objective="engagement"))
    for name, baseline in (("random", make_baseline("random", space.fused)), ("popular", popular)):
        other = returns("Satiation", baseline)
        gain, se = mean_and_se(greedy - other)
        assert greedy.mean() > 1.4 * other.mean() and gain > 5 * se, (name, greedy.mean(), other.mean(), se)


# ------------------------------------------------------------------ core mechanics
@pytest.fixture(scope="module")
def space() -> ItemSpace:
    return ItemSpace.random(120, d_text=8, d_image=8, num_topics=6, seed=1)


def _core(space, users=6, history=3, obs_mode="ids", **kwargs) -> Simulator:
    model = MyopicUser(space, users, patience=10**6, time_budget=1e6, step_cost=0.0)
    return Simulator(space, model, history_length=history, obs_mode=obs_mode, max_steps=10**6, **kwargs)


def test_history_window_holds_the_last_h_shown_items_most_recent_last(space):
    sim = _core(space, history=3, obs_mode="embeddings")
    sim.reset(seed=0)
    shown: list[torch.Tensor] = []
    for t in range(11):  # wraps the 2H buffer several times
        action = torch.full((6, 1), t % 20)
        shown.append(sim.candidates[:, t % 20].clone())
        outcome = sim.step(action)
        obs = sim.observation()
        expected = torch.stack(shown[-3:], dim=1)  # (B, <=3)
        width = expected.shape[1]
        assert torch.equal(obs["history_mask"][:, -width:], torch.ones(6, width))
        assert torch.allclose(obs["history_items"][:, -width:], space.fused[expected])
        assert torch.equal(obs["history_feedback"][:, -1, 0], outcome.click.float())
        assert torch.equal(obs["history_feedback"][:, -1, 1], outcome.engagement)
        arrays = sim.observation_arrays(copy=True)
        assert all(np.array_equal(arrays[key], obs[key].numpy()) for key in obs)
        if width < 3:
            assert (obs["history_mask"][:, : 3 - width] == 0).all()
            assert (obs["history_items"][:, : 3 - width] == 0).all()


def test_resetting_some_rows_leaves_the_other_users_untouched(space):
    sim = _core(space, users=4)
    sim.reset(seed=0)
    for _ in range(4):
        sim.step(torch.zeros(4, 1, dtype=torch.long))
    before = {k: v.clone() for k, v in sim.observation().items()}
    interest = sim.users.interest.clone()
    sim.reset_rows(torch.tensor([False, True, False, True]))
    after = sim.observation()
    keep = torch.tensor([0, 2])
    for key in before:
        assert torch.equal(before[key][keep], after[key][keep]), key
    assert torch.equal(interest[keep], sim.users.interest[keep])
    assert (after["history_mask"][[1, 3]] == 0).all()
    assert not torch.equal(interest[1], sim.users.interest[1])


def test_truncation_at_max_steps_and_ids_mode_never_copies_embeddings(space):
    model = MyopicUser(space, 2, patience=10**6, time_budget=1e6, step_cost=0.0)
    sim = Simulator(space, model, obs_mode="ids", max_steps=3)
    assert sim._hist_vectors is None and sim._candidate_vectors is None
    sim.reset(seed=0)
    flags = [sim.step(torch.zeros(2, 1, dtype=torch.long)).truncated.tolist() for _ in range(3)]
    assert flags == [[False, False], [False, False], [True, True]]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_core_runs_on_cuda_with_the_same_semantics(space):
    model = MyopicUser(space, 64, device="cuda")
    sim = Simulator(space, model, obs_mode="embeddings")
    obs = sim.reset(seed=0)
    assert obs["candidate_items"].device.type == "cuda"
    outcome = sim.step(torch.zeros(64, 1, dtype=torch.long, device="cuda"))
    assert outcome.reward.device.type == "cuda"
