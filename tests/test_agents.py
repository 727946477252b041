"""PPO / DQN on the shared scorer, warm start, checkpoints and resume, baselines."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from stable_baselines3.common.callbacks import BaseCallback

import envs
from agents.baselines import BASELINES, make_baseline
from agents.evaluation import evaluate_recommender
from agents.train import AgentConfig, build_agent, load_agent_checkpoint, make_env, train_agent
from envs.vector_env import RecVectorEnv
from recsim_mm import ItemSpace
from recsim_mm.item_features import item_feature_table
from recsim_mm.pipeline import default_item_space
from recsim_mm.ranker import Ranker
from recsim_mm.scorer import Scorer, ScorerConfig

ENV_ID = "recsim_mm/InterestEvolution-v0"
SMALL_SCORER = {"hidden_dim": 32}


@pytest.fixture(scope="module")
def space():
    return default_item_space(num_items=300)


def held_out_return(policy, space, seed=777, users=128) -> float:
    env = RecVectorEnv(users, item_space=space, obs_mode="ids", device="cpu")
    return evaluate_recommender(policy, env, seed=seed, item_table=space.fused).summary()["episode_return"]


def make_ranker(space, seed=0) -> Ranker:
    torch.manual_seed(seed)
    return Ranker(Scorer.for_item_space(space, **SMALL_SCORER), space)


@pytest.mark.slow
@pytest.mark.parametrize("algo,steps", [("ppo", 12_288), ("dqn", 12_288)])
def test_agent_improves_over_random_policy(space, tmp_path, algo, steps):
    config = AgentConfig(algo=algo, total_steps=steps, num_envs=64, device="cpu",
                         scorer=SMALL_SCORER, learning_starts=1_000)
    outcome = train_agent(config, ENV_ID, {"obs_mode": "ids"}, space, tmp_path)
    random_return = held_out_return(make_baseline("random", space.fused), space)
    agent_return = held_out_return(outcome.model, space)
    assert agent_return > 1.5 * random_return, (agent_return, random_return)


@pytest.mark.parametrize("algo", ["ppo", "dqn"])
@pytest.mark.parametrize("obs_mode", ["ids", "embeddings"])
def test_warm_start_is_the_greedy_expected_reward_policy(space, algo, obs_mode):
    # PPO's logits are log(expected reward) / temperature, DQN's Q-values the expected
    # reward itself: the greedy ranker's scores, so both pick greedy's candidate
    ranker = make_ranker(space, seed=3)
    config = AgentConfig(algo=algo, num_envs=64, device="cpu", learning_starts=10, temperature=0.5)
    venv = make_env(config, ENV_ID, {"obs_mode": obs_mode, "item_space": space})
    model = build_agent(config, venv, space, ranker=ranker)
    venv.seed(5)
    obs = venv.reset()
    for _ in range(3):  # held-out observations with some history
        obs, *_ = venv.step(np.random.default_rng(0).integers(0, 20, size=64))
    tensors, _ = model.policy.obs_to_tensor(obs)
    expected_reward = ranker.policy(objective="engagement").expected_reward(obs)
    with torch.no_grad():
        if algo == "ppo":
            logits = model.policy.get_distribution(tensors).distribution.logits
            expected = torch.log_softmax(expected_reward.log() / 0.5, dim=-1)
        else:
            logits = model.policy.q_net(tensors)
            expected = expected_reward
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
    greedy = make_baseline("greedy", space.fused, ranker=ranker, objective="engagement")
    np.testing.assert_array_equal(model.predict(obs, deterministic=True)[0], greedy.predict(obs)[0])


def test_warm_ppo_first_learning_curve_point_is_the_greedy_return(space, tmp_path):
    from agents.callbacks import LearningCurveCallback

    ranker = make_ranker(space, seed=3)
    curve_env = RecVectorEnv(64, item_space=space, obs_mode="ids", device="cpu")
    config = AgentConfig(algo="ppo", total_steps=256, num_envs=32, n_steps=8, batch_size=128, device="cpu")
    curve = LearningCurveCallback(curve_env, 99, 10_000, space.fused, tmp_path / "curve.json")
    train_agent(config, ENV_ID, {"obs_mode": "ids"}, space, tmp_path, ranker=ranker, callbacks=[curve])
    greedy = make_baseline("greedy", space.fused, ranker=ranker, objective="engagement")
    greedy_return = evaluate_recommender(greedy, curve_env, seed=99, item_table=space.fused).summary()
    first_step, first_return, explained = curve.rows[0]
    assert first_step == 0 and explained is None  # before the first update: no critic figure yet
    assert first_return == pytest.approx(greedy_return["episode_return"], rel=1e-6)
    assert curve.rows[-1][2] is not None  # after an update, the critic's explained variance


def test_cold_start_initialisation_is_a_function_of_the_seed(space):
    def initial_weights(seed: int) -> dict:
        config = AgentConfig(algo="ppo", num_envs=4, device="cpu", scorer=SMALL_SCORER, seed=seed)
        venv = make_env(config, ENV_ID, {"obs_mode": "ids", "item_space": space})
        return build_agent(config, venv, space).policy.scorer.state_dict()

    first, again, other = initial_weights(11), initial_weights(11), initial_weights(12)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)


class _Interrupt(BaseCallback):
    """Raises KeyboardInterrupt (what Ctrl-C raises) once training passes ``at`` steps."""

    def __init__(self, at: int):
        super().__init__()
        self.at = at

    def _on_step(self) -> bool:
        if self.num_timesteps >= self.at:
            raise KeyboardInterrupt
        return True


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["ppo", "dqn"])
def test_resume_continues_from_saved_step_with_identical_parameters(space, tmp_path, algo):
    config = AgentConfig(algo=algo, total_steps=4_096, num_envs=32, n_steps=16, device="cpu",
                         scorer=SMALL_SCORER, checkpoint_every=1_024, learning_starts=256)
    with pytest.raises(KeyboardInterrupt):
        train_agent(config, ENV_ID, {"obs_mode": "ids"}, space, tmp_path, callbacks=[_Interrupt(1_500)])
    saved = load_agent_checkpoint(tmp_path / "checkpoint.pt", config, space)
    assert 1_500 <= saved["num_timesteps"] < 4_096

    seen = {}

    class Capture(BaseCallback):
        def _on_training_start(self) -> None:
            seen["step"] = self.model.num_timesteps
            seen["params"] = {k: v.clone() for k, v in self.model.policy.state_dict().items()}

        def _on_step(self) -> bool:
            return True

    outcome = train_agent(config, ENV_ID, {"obs_mode": "ids"}, space, tmp_path, callbacks=[Capture()])
    assert outcome.resumed_from == saved["num_timesteps"] == seen["step"]
    for key, value in saved["policy"].items():
        assert torch.equal(seen["params"][key], value), key
    assert outcome.num_timesteps >= 4_096
    # TensorBoard curves continue in the same folder
    assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) >= 1


@pytest.mark.slow
def test_resume_from_different_configuration_is_refused(space, tmp_path):
    config = AgentConfig(algo="ppo", total_steps=512, num_envs=16, n_steps=16, device="cpu",
                         scorer=SMALL_SCORER, batch_size=128)
    train_agent(config, ENV_ID, {"obs_mode": "ids"}, space, tmp_path)
    other = AgentConfig(algo="ppo", total_steps=512, num_envs=16, n_steps=16, device="cpu",
                        scorer=SMALL_SCORER, batch_size=128, learning_rate=1e-3)
    with pytest.raises(ValueError, match=r"different configuration.*learning_rate"):
        train_agent(other, ENV_ID, {"obs_mode": "ids"}, space, tmp_path)


@pytest.mark.slow
def test_a_checkpoint_write_torn_midway_leaves_the_last_good_checkpoint_to_resume_from(space, tmp_path,
                                                                                      monkeypatch):
    config = AgentConfig(algo="ppo", total_steps=512, num_envs=16, n_steps=16, device="cpu",
                         scorer=SMALL_SCORER, batch_size=128, checkpoint_every=256)
    train_agent(config, ENV_ID, {"obs_mode": "ids"}, space, tmp_path)
    good = (tmp_path / "checkpoint.pt").read_bytes()

    def torn_save(payload, f, *args, **kwargs):  # the process dies halfway through a write
        (f.write if hasattr(f, "write") else Path(f).write_bytes)(b"half-written")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", torn_save)
    longer = dataclasses.replace(config, total_steps=1024)
    with pytest.raises(KeyboardInterrupt):
        train_agent(longer, ENV_ID, {"obs_mode": "ids"}, space, tmp_path)
    monkeypatch.undo()
    assert (tmp_path / "checkpoint.pt").read_bytes() == good
    outcome = train_agent(longer, ENV_ID, {"obs_mode": "ids"}, space, tmp_path)
    assert outcome.resumed_from == 512 and outcome.num_timesteps >= 1024


def test_warm_start_from_ranker_of_other_item_space_is_refused(space):
    from recsim_mm.item_space import ItemSpace

    other_space = ItemSpace(item_ids=space.item_ids, text=space.text.roll(1, 0), image=space.image,
                            quality=space.quality, duration=space.duration, topics=space.topics)
    ranker = make_ranker(other_space)
    config = AgentConfig(algo="ppo", num_envs=4, device="cpu")
    venv = make_env(config, ENV_ID, {"obs_mode": "ids", "item_space": space})
    with pytest.raises(ValueError, match="item space"):
        build_agent(config, venv, space, ranker=ranker)


def test_warm_start_architecture_mismatch_names_the_fields(space):
    ranker = make_ranker(space)
    config = AgentConfig(algo="dqn", num_envs=4, device="cpu", scorer={"hidden_dim": 16})
    model = build_agent(config, make_env(config, ENV_ID, {"obs_mode": "ids", "item_space": space}), space)
    with pytest.raises(ValueError, match="hidden_dim"):
        ranker.warm_start(model.policy.scorer)


def test_unknown_agent_name_is_an_error():
    with pytest.raises(ValueError, match="unknown agent 'sarsa'"):
        make_baseline("sarsa", torch.zeros(3, 4))
    with pytest.raises(ValueError, match="unknown agent algo 'sarsa'"):
        AgentConfig(algo="sarsa")


@pytest.mark.parametrize("env_id", sorted(i for i in envs.ENV_IDS))
def test_every_baseline_runs_on_every_registered_id(space, env_id):
    import gymnasium

    spec = gymnasium.spec(env_id)
    slate = spec.kwargs.get("slate_size", 1)
    env = RecVectorEnv(16, **{**spec.kwargs, "item_space": space, "device": "cpu", "max_steps": 20})
    ranker = make_ranker(space)
    from agents.references import MyopicOracle, PlanningReference

    size = None if slate == 1 else slate
    policies = [make_baseline(name, space.fused, popularity=np.arange(space.num_items), duration=space.duration,
                              ranker=ranker, slate_size=size) for name in BASELINES]
    policies += [MyopicOracle(slate_size=size), PlanningReference(3.0, slate_size=size)]
    for name, policy in zip([*BASELINES, "myopic_oracle", "planning"], policies, strict=True):
        result = evaluate_recommender(policy, env, seed=1, item_table=space.fused)
        assert np.isfinite(result.summary()["episode_return"]), (name, env_id)
        assert (result.session_length >= 1).all()


@pytest.mark.slow
def test_behaviour_cloning_raises_the_likelihood_of_logged_clicked_recommendations(space, tmp_path):
    from agents.train import behaviour_clone
    from envs.rec_env import RecEnvOptions, build_simulator
    from recsim_mm.logging_policies import ProductionPolicy, collect

    sim = build_simulator(RecEnvOptions(item_space=space, obs_mode="ids"), num_users=64, default_device="cpu")
    log = collect(sim, ProductionPolicy(), num_users=128, steps=20, seed=0)
    clicked = np.flatnonzero(log.clicked_slot >= 0)
    obs = log.observations(clicked, candidates="all")
    target = torch.as_tensor(log.shown[clicked, log.clicked_slot[clicked]])
    torch.manual_seed(0)
    scorer = Scorer.for_item_space(space, **SMALL_SCORER)

    def nll() -> float:
        with torch.no_grad():
            return float(torch.nn.functional.cross_entropy(scorer(obs), target))

    before = nll()
    losses = behaviour_clone(scorer, log, epochs=3, lr=3e-3)
    assert losses[-1] < losses[0]
    assert nll() < before - 0.05, (before, nll())

    config = AgentConfig(algo="ppo", total_steps=256, num_envs=16, n_steps=16, batch_size=128,
                         device="cpu", scorer=SMALL_SCORER, bc_epochs=1)
    with pytest.raises(ValueError, match="bc_log"):
        train_agent(config, ENV_ID, {"obs_mode": "ids"}, space, tmp_path)
    outcome = train_agent(config, ENV_ID, {"obs_mode": "ids"}, space, tmp_path / "bc", bc_log=log)
    assert outcome.num_timesteps >= 256


def test_behaviour_cloning_is_refused_for_dqn():
    with pytest.raises(ValueError, match="bc_epochs=2 with algo='dqn'"):
        AgentConfig(algo="dqn", bc_epochs=2)


def test_plackett_luce_slate_probabilities_sum_to_one_and_samples_are_distinct():
    import itertools

    from agents.policies import PlackettLuceDistribution

    logits = torch.tensor([[0.3, -1.0, 2.0, 0.5, 0.0]])
    dist = PlackettLuceDistribution(num_candidates=5, slate_size=3).proba_distribution(logits)
    slates = torch.tensor(list(itertools.permutations(range(5), 3)))
    total = dist.proba_distribution(logits.expand(len(slates), -1)).log_prob(slates).exp().sum()
    torch.testing.assert_close(total, torch.tensor(1.0))
    torch.manual_seed(0)
    many = PlackettLuceDistribution(5, 3).proba_distribution(logits.expand(2000, -1))
    drawn = many.sample()
    assert all(len(set(row.tolist())) == 3 for row in drawn)
    # the first position follows softmax(logits)
    first = torch.bincount(drawn[:, 0], minlength=5).float() / 2000
    torch.testing.assert_close(first, torch.softmax(logits[0], -1), atol=0.04, rtol=0)
    assert torch.equal(many.mode()[0], torch.tensor([2, 3, 0]))


@pytest.mark.slow
def test_ppo_slate_policy_improves_over_random_slates(space, tmp_path):
    env_id = "recsim_mm/InterestEvolutionSlate-v0"
    config = AgentConfig(algo="ppo", total_steps=12_288, num_envs=64, device="cpu", scorer=SMALL_SCORER)
    outcome = train_agent(config, env_id, {"obs_mode": "ids"}, space, tmp_path)
    env = RecVectorEnv(512, item_space=space, obs_mode="ids", device="cpu", slate_size=envs.SLATE_SIZE)
    actions, _ = outcome.model.predict(env.reset(seed=5)[0], deterministic=True)
    assert actions.shape == (512, envs.SLATE_SIZE)
    assert all(len(set(row)) == envs.SLATE_SIZE for row in actions.tolist())
    random_slates = make_baseline("random", space.fused, slate_size=envs.SLATE_SIZE)
    # same held-out users (same reset seed) for both: a paired comparison
    agent = evaluate_recommender(outcome.model, env, seed=777, item_table=space.fused).episode_return
    random = evaluate_recommender(random_slates, env, seed=777, item_table=space.fused).episode_return
    gain = agent - random
    standard_error = gain.std(ddof=1) / np.sqrt(len(gain))
    assert gain.mean() > 3 * standard_error, (gain.mean(), standard_error)


@pytest.mark.slow
def test_kl_penalty_keeps_ppo_closer_to_the_ranker(space, tmp_path):
    ranker = make_ranker(space, seed=3)
    venv_obs = make_env(AgentConfig(num_envs=256, device="cpu"), ENV_ID,
                        {"obs_mode": "ids", "item_space": space})
    venv_obs.seed(99)
    obs = {k: torch.as_tensor(v) for k, v in venv_obs.reset().items()}
    prior = torch.log_softmax(ranker.scorer(obs), -1)

    def kl_after_training(kl_coef: float) -> float:
        config = AgentConfig(algo="ppo", total_steps=4_096, num_envs=64, device="cpu",
                             scorer=SMALL_SCORER, kl_coef=kl_coef, learning_rate=1e-3)
        model = train_agent(config, ENV_ID, {"obs_mode": "ids"}, space, tmp_path / str(kl_coef),
                            ranker=ranker).model
        with torch.no_grad():
            log_p = torch.log_softmax(model.policy.scorer(obs), -1)
        return float((log_p.exp() * (log_p - prior)).sum(-1).mean())

    free, penalised = kl_after_training(0.0), kl_after_training(2.0)
    assert penalised < 0.5 * free, (penalised, free)


def test_kl_penalty_needs_a_ranker_and_ppo(space):
    with pytest.raises(ValueError, match="kl_coef=0.5 with algo='dqn'"):
        AgentConfig(algo="dqn", kl_coef=0.5)
    config = AgentConfig(algo="ppo", num_envs=4, device="cpu", kl_coef=0.5)
    venv = make_env(config, ENV_ID, {"obs_mode": "ids", "item_space": space})
    with pytest.raises(ValueError, match="needs ranker="):
        build_agent(config, venv, space)


def _observation(space, users=32, seed=3):
    env = RecVectorEnv(users, item_space=space, obs_mode="ids", device="cpu", user_model="satiation")
    obs, _ = env.reset(seed=seed)
    for _ in range(4):  # some history, so the redundancy term is not zero
        obs, *_ = env.step(np.zeros(users, dtype=np.int64))
    return obs


def test_expected_reward_greedy_ranks_by_click_probability_times_expected_engagement(space):
    ranker = make_ranker(space)
    obs = _observation(space)
    with torch.no_grad():
        heads = ranker.scorer.predict({k: torch.as_tensor(v) for k, v in obs.items()})
    product = torch.sigmoid(heads["click_logit"]) * heads["engagement"]
    policy = ranker.policy(objective="engagement")
    assert torch.allclose(policy.expected_reward(obs), product, atol=1e-6)
    assert np.array_equal(policy(obs), product.argmax(1).numpy())
    # The objective matters: ranked by click probability alone, some users get another item.
    assert not np.array_equal(ranker.policy(objective="click")(obs), policy(obs))


def test_mmr_with_zero_diversity_is_its_greedy_policy_and_penalises_recent_similar_items(space):
    from agents.baselines import MMRRecommender

    ranker = make_ranker(space)
    obs = _observation(space)
    greedy = ranker.policy(objective="engagement")
    mmr0 = MMRRecommender(greedy, space.fused, diversity=0.0)
    assert np.array_equal(mmr0.predict(obs)[0], greedy(obs))
    mmr = MMRRecommender(greedy, space.fused, diversity=1.0)
    redundancy = mmr.redundancy(obs)
    assert (redundancy >= 0).all() and redundancy.max() > 0
    rel = greedy.expected_reward(obs).numpy()
    expected = rel - rel.max(1, keepdims=True) * redundancy
    assert np.allclose(mmr.scores(obs), expected, atol=1e-5)


def test_evaluate_policy_is_a_deprecated_alias_of_evaluate_recommender(space):
    from agents.evaluation import evaluate_policy

    env = RecVectorEnv(8, item_space=space, obs_mode="ids", device="cpu", max_steps=5)
    new = evaluate_recommender(make_baseline("random", space.fused), env, seed=3, item_table=space.fused)
    with pytest.warns(DeprecationWarning, match="renamed evaluate_recommender"):
        old = evaluate_policy(make_baseline("random", space.fused), env, seed=3, item_table=space.fused)
    np.testing.assert_array_equal(old.episode_return, new.episode_return)
    np.testing.assert_array_equal(old.clicks, new.clicks)


def _kl_to(prior_scorer, scorer, obs) -> float:
    with torch.no_grad():
        prior = torch.log_softmax(prior_scorer(obs), -1)
        log_p = torch.log_softmax(scorer(obs), -1)
    return float((log_p.exp() * (log_p - prior)).sum(-1).mean())


def test_kl_penalty_without_entropy_bonus_keeps_ppo_closer_to_the_ranker(space, tmp_path):
    # ent_coef=0: the KL is its own loss term (agents.ppo.PriorRegularizedPPO), not the entropy slot
    ranker = make_ranker(space, seed=3)
    venv_obs = make_env(AgentConfig(num_envs=128, device="cpu"), ENV_ID, {"obs_mode": "ids", "item_space": space})
    venv_obs.seed(99)
    obs = {k: torch.as_tensor(v) for k, v in venv_obs.reset().items()}
    logged = {}

    def kl_after_training(kl_coef: float) -> float:
        config = AgentConfig(algo="ppo", total_steps=1_024, num_envs=32, n_steps=16, batch_size=128,
                             device="cpu", scorer=SMALL_SCORER, ent_coef=0.0, kl_coef=kl_coef,
                             learning_rate=3e-3)
        model = train_agent(config, ENV_ID, {"obs_mode": "ids"}, space, tmp_path / str(kl_coef),
                            ranker=ranker).model
        logged[kl_coef] = dict(model.logger.name_to_value)  # the last update's records
        return _kl_to(ranker.scorer, model.policy.scorer, obs)

    free, penalised = kl_after_training(0.0), kl_after_training(5.0)
    assert penalised < 0.5 * free, (penalised, free)
    assert "train/kl_to_prior" not in logged[0.0]
    assert logged[5.0]["train/kl_to_prior"] > 0
    # the entropy term is logged alone: -mean(entropy) <= 0, whatever the KL
    assert logged[5.0]["train/entropy_loss"] < 0 and logged[0.0]["train/entropy_loss"] < 0


def test_prior_regularized_ppo_with_kl_coef_0_trains_exactly_like_sb3_ppo(space):
    from stable_baselines3 import PPO

    from agents.policies import ScorerActorCriticPolicy
    from agents.ppo import PriorRegularizedPPO

    def trained(cls, **extra):
        config = AgentConfig(num_envs=16, device="cpu")
        venv = make_env(config, ENV_ID, {"obs_mode": "ids", "item_space": space})
        # no PopArt normaliser and one learning rate: SB3's PPO has neither
        kwargs = dict(scorer_config=ScorerConfig(d_text=space.d_text, d_image=space.d_image, hidden_dim=16).to_dict(),
                      item_table=space.fused, item_features=item_feature_table(space), normalize_values=False,
                      value_lr_scale=1.0)
        model = cls(ScorerActorCriticPolicy, venv, n_steps=16, batch_size=64, n_epochs=2, seed=5, device="cpu",
                    policy_kwargs=kwargs, **extra)
        model.learn(512)
        return model.policy.state_dict()

    ours, sb3 = trained(PriorRegularizedPPO, kl_coef=0.0), trained(PPO)
    assert ours.keys() == sb3.keys()
    assert all(torch.equal(ours[k], sb3[k]) for k in ours)


def test_prior_regularized_ppo_refuses_a_bad_kl_coef_or_a_missing_prior(space):
    from agents.ppo import PriorRegularizedPPO

    config = AgentConfig(num_envs=4, device="cpu")
    venv = make_env(config, ENV_ID, {"obs_mode": "ids", "item_space": space})
    from agents.policies import ScorerActorCriticPolicy

    kwargs = dict(scorer_config=ScorerConfig(d_text=space.d_text, d_image=space.d_image, hidden_dim=8).to_dict(),
                  item_table=space.fused, item_features=item_feature_table(space))
    with pytest.raises(ValueError, match="kl_coef=-1"):
        PriorRegularizedPPO(ScorerActorCriticPolicy, venv, kl_coef=-1, policy_kwargs=kwargs, device="cpu")
    model = PriorRegularizedPPO(ScorerActorCriticPolicy, venv, kl_coef=0.5, n_steps=8, batch_size=32,
                                policy_kwargs=kwargs, device="cpu")
    with pytest.raises(ValueError, match="needs a prior"):
        model.learn(32)


@pytest.mark.parametrize("algo,env_id", [("dqn", ENV_ID), ("slateq", "recsim_mm/InterestEvolutionSlate-v0")])
def test_resumed_replay_learner_has_the_same_buffer_and_updates_without_a_refill(space, tmp_path, algo, env_id):
    config = AgentConfig(algo=algo, total_steps=1_024, num_envs=32, device="cpu", scorer=SMALL_SCORER,
                         checkpoint_every=512, learning_starts=512, gradient_steps=1)
    train_agent(config, env_id, {"obs_mode": "ids"}, space, tmp_path)
    saved = load_agent_checkpoint(tmp_path / "checkpoint.pt", config, space)
    assert saved["replay_buffer"]["rows"] == 1_024 // 32
    seen = {}

    class Capture(BaseCallback):
        def _on_training_start(self) -> None:
            buffer = self.model.replay_buffer
            seen["obs"] = {k: v[: buffer.pos].copy() for k, v in buffer.observations.items()}
            seen["actions"] = buffer.actions[: buffer.pos].copy()
            seen["updates"] = self.model._n_updates

        def _on_step(self) -> bool:
            if "first_update" not in seen and self.model._n_updates > seen["updates"]:
                seen["first_update"] = self.model.num_timesteps
            return True

    resumed = dataclasses.replace(config, total_steps=1_024 + 256)
    outcome = train_agent(resumed, env_id, {"obs_mode": "ids"}, space, tmp_path, callbacks=[Capture()])
    assert outcome.resumed_from == 1_024
    for key, value in saved["replay_buffer"]["observations"].items():
        np.testing.assert_array_equal(seen["obs"][key], value.numpy())
    np.testing.assert_array_equal(seen["actions"], saved["replay_buffer"]["actions"].numpy())
    # a refill would wait learning_starts (512) steps; updates resume within the first vector steps
    assert seen["first_update"] <= 1_024 + 2 * 32, seen


def test_resume_with_a_buffer_from_another_item_space_is_refused(space, tmp_path):
    from agents.train import restore_replay_buffer
    config = AgentConfig(algo="dqn", total_steps=128, num_envs=32, device="cpu", scorer=SMALL_SCORER,
                         learning_starts=64)
    outcome = train_agent(config, ENV_ID, {"obs_mode": "ids"}, space, tmp_path)
    state = load_agent_checkpoint(tmp_path / "checkpoint.pt", config, space)["replay_buffer"]
    other = ItemSpace.random(space.num_items, space.d_text, space.d_image, seed=5)  # another fingerprint
    with pytest.raises(ValueError, match="replay buffer holds transitions on item space"):
        restore_replay_buffer(outcome.model.replay_buffer, state, other, tmp_path / "checkpoint.pt")


@pytest.mark.slow
def test_ppo_critic_explains_returns_on_a_small_problem(space, tmp_path):
    # The critic (detached, PopArt-normalised, 10x the actor's learning rate) must learn:
    # the shared tanh critic it replaced stayed at an explained variance of ~1e-7 for 150k
    # steps. On InterestEvolution (the time budget is visible, so returns are predictable)
    # it passes 0.1 within 12 updates (0.18 measured at 24,576 steps; 0.04 with the
    # critic's rate at 1x, 0.007 without the normalisation too).
    class ExplainedVariance(BaseCallback):
        def __init__(self):
            super().__init__()
            self.values: list[float] = []

        def _on_rollout_start(self) -> None:
            value = self.model.logger.name_to_value.get("train/explained_variance")
            if value is not None:
                self.values.append(float(value))

        def _on_step(self) -> bool:
            return True

    record = ExplainedVariance()
    config = AgentConfig(algo="ppo", total_steps=24_576, num_envs=64, device="cpu", scorer=SMALL_SCORER)
    outcome = train_agent(config, ENV_ID, {"obs_mode": "ids"}, space, tmp_path, callbacks=[record])
    assert outcome.model.policy.value_normalizer.std > 1.0  # returns of several minutes, in reward units
    assert max(record.values[-3:]) > 0.1, record.values
