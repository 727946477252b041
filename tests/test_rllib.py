"""The RLlib backend (agents.rllib_backend, agents.rllib_module) on a local Ray instance.

One module-scoped Ray instance (2 CPUs) serves the tests that need Ray; the learner runs
in the test process (one torch thread, tests/conftest.py). What is shown:
RLlib PPO with the scorer module learns on Satiation-v0 (beats random, paired over the
same held-out users, evaluated through the SB3 code path every strategy uses), its
second half resumed from the first half's checkpoint; warm
start puts the ranker's scores into the first step's logits of every copy of the module
(the env runner's and the learner's); the slate distribution is Plackett-Luce, as the
SB3 policy's; ``experiments/run.py agents=[...,rllib_ppo]`` writes the usual results
folder; bad input (a ranker of another item space, settings the backend does not
support, no RLlib) stops before training.

Sizes are the smallest that still show learning: a random item space of 50 items (no
encoders), 10 candidates, 20-step sessions, 32 users on one env runner, 16k steps (about 20 s).
"""

from __future__ import annotations

import dataclasses
import sys
import time

import gymnasium as gym
import numpy as np
import pytest
import torch

import envs  # noqa: F401
from agents.baselines import make_baseline
from agents.evaluation import evaluate_recommender
from agents.policies import PlackettLuceDistribution
from agents.rllib_backend import (
    RLlibConfig,
    check_run,
    require_rllib,
    scorer_module_spec,
    train_rllib_agent,
)
from agents.train import AgentConfig
from envs.vector_env import RecVectorEnv
from experiments.config import ConfigError, load_config
from recsim_mm.item_space import ItemSpace
from recsim_mm.ranker import Ranker
from recsim_mm.scorer import Scorer
from tests.test_experiments import TINY

ENV_ID = "recsim_mm/Satiation-v0"
ENV_OPTIONS = {"num_candidates": 10, "obs_mode": "ids", "max_steps": 20}
SCORER = {"hidden_dim": 16, "num_heads": 2}
#: PPO that learns within 16k steps here (measured: +6.3 +- 1.9 minutes over random's 18.0).
AGENT = AgentConfig(total_steps=16384, num_envs=32, n_steps=32, n_epochs=10, batch_size=256, learning_rate=1e-3,
                    device="cpu", checkpoint_every=4096, scorer=SCORER)
HELD_OUT_SEED = 1_000_000_000


@pytest.fixture(scope="module")
def item_space() -> ItemSpace:
    return ItemSpace.random(50, 8, 8, seed=0)


@pytest.fixture(scope="module")
def local_ray():
    """A Ray instance on this machine (2 CPUs) for the module; the backend reuses it."""
    pytest.importorskip("ray.rllib")
    import ray

    from agents.rllib_backend import connect

    started = connect(None, num_cpus=2)
    yield
    if started:
        ray.shutdown()


def held_out_env(item_space: ItemSpace, num_users: int = 256) -> RecVectorEnv:
    return RecVectorEnv(num_users, **{**gym.spec(ENV_ID).kwargs, **ENV_OPTIONS, "item_space": item_space,
                                      "device": "cpu"})


def untrained_ranker(item_space: ItemSpace) -> Ranker:
    """A ranker with random weights (its own seed): a warm start that teaches nothing."""
    torch.manual_seed(123)
    return Ranker(Scorer.for_item_space(item_space, **SCORER), item_space)


def as_tensors(obs: dict) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(v) for k, v in obs.items()}


# -- on Ray --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_rllib_ppo_on_the_scorer_beats_random_on_satiation_and_warm_start_gives_the_rankers_logits(
        local_ray, item_space, tmp_path):
    from ray.rllib.core.columns import Columns

    from agents.rllib_backend import module_state
    from experiments.run import EnvSetup, PolicySpec, build_policy

    ranker = untrained_ranker(item_space)  # random weights: the run below learns from scratch
    obs, _ = held_out_env(item_space, 64).reset(seed=HELD_OUT_SEED)
    with torch.no_grad():
        # the actor's logits: log(expected reward) / temperature, as the SB3 policy's
        ranker_logits = ranker.scorer.log_expected_reward(as_tensors(obs))[0] / AGENT.temperature
    checked = {}

    def first_step(algo) -> None:
        runner_module = algo.get_module()  # the env runner's copy (a Ray actor's)
        with torch.no_grad():
            logits = runner_module.forward_inference({Columns.OBS: as_tensors(obs)})[Columns.ACTION_DIST_INPUTS]
        checked["runner"] = torch.allclose(logits, ranker_logits, atol=1e-5)
        learner = {k.removeprefix("scorer."): v for k, v in module_state(algo).items() if k.startswith("scorer.")}
        checked["learner"] = all(torch.equal(learner[k], v) for k, v in ranker.warm_start_state_dict().items())

    started = time.perf_counter()
    half = dataclasses.replace(AGENT, total_steps=AGENT.total_steps // 2)
    first = train_rllib_agent(half, RLlibConfig(num_env_runners=1), ENV_ID, ENV_OPTIONS, item_space, tmp_path,
                              ranker=ranker, on_start=first_step)
    assert checked == {"runner": True, "learner": True}
    assert first.resumed_from is None and (tmp_path / "rllib_checkpoint").is_dir()
    # the second half resumes from the first's checkpoint (RLlib's state: weights, optimizer, counters)
    outcome = train_rllib_agent(AGENT, RLlibConfig(num_env_runners=1), ENV_ID, ENV_OPTIONS, item_space, tmp_path,
                                ranker=ranker)
    seconds = time.perf_counter() - started
    assert outcome.resumed_from == first.num_timesteps and outcome.num_timesteps >= AGENT.total_steps
    assert list((tmp_path / "tensorboard").glob("events.out.*"))

    # Evaluated as every strategy is: the checkpoint through run.py's policy builder (SB3's
    # ScorerActorCriticPolicy), on the same held-out users as the random baseline.
    env = EnvSetup(ENV_ID, {**gym.spec(ENV_ID).kwargs, **ENV_OPTIONS, "reward": "engagement", "device": "cpu"})
    policy = build_policy(PolicySpec("rllib_ppo-warm", 0, agent=AGENT, checkpoint=outcome.checkpoint), env,
                          item_space)
    ppo = evaluate_recommender(policy, held_out_env(item_space), HELD_OUT_SEED, item_space.fused).episode_return
    random = evaluate_recommender(make_baseline("random", item_space.fused, seed=0), held_out_env(item_space),
                                  HELD_OUT_SEED, item_space.fused).episode_return
    diff = ppo - random
    half_width = 1.96 * diff.std(ddof=1) / np.sqrt(len(diff))
    print(f"RLlib PPO {ppo.mean():.2f} vs random {random.mean():.2f}: paired difference {diff.mean():+.2f} "
          f"+- {half_width:.2f} (95%), {outcome.env_steps_per_second:.0f} env-steps/s, {seconds:.1f} s")
    assert diff.mean() - half_width > 0
    assert diff.mean() > 0.15 * random.mean()


@pytest.mark.slow
def test_run_py_trains_rllib_ppo_into_the_usual_results_folder_and_table(local_ray, tmp_path):
    from experiments.run import main
    from tests.test_experiments import read_metrics, stage_status

    run_dir = main([*TINY, "seeds=[0]", "agents=[random,rllib_ppo]", "ppo.total_steps=512", "ppo.n_steps=16",
                    "ppo.num_envs=16", "eval.num_users=32", "eval.curve_users=0", "eval.trace_users=0",
                    "eval.explain=false", "rllib.num_env_runners=1", f"results_dir={tmp_path}"])
    strategies = {row["strategy"] for row in read_metrics(run_dir)}
    assert {"random", "greedy", "rllib_ppo-warm"} <= strategies
    assert (run_dir / "checkpoints" / "rllib_ppo-warm-seed0.pt").is_file()
    assert list((run_dir / "tensorboard" / "rllib_ppo-warm-seed0").glob("events.out.*"))
    agents = [s for s in stage_status(run_dir) if s["stage"] == "agent"]
    assert [(s["strategy"], s["status"]) for s in agents] == [("rllib_ppo-warm", "computed")]
    assert "rllib_ppo-warm" in (run_dir / "summary.md").read_text()


# -- without Ray: the module, and bad input ---------------------------------------------------


def test_the_slate_distribution_is_plackett_luce_as_in_the_sb3_policy(item_space):
    pytest.importorskip("ray.rllib")
    from ray.rllib.core.columns import Columns

    venv = RecVectorEnv(8, **{**ENV_OPTIONS, "user_model": "satiation", "slate_size": 3, "item_space": item_space,
                              "device": "cpu"})
    spec = scorer_module_spec(AGENT, item_space)
    spec.observation_space, spec.action_space = venv.single_observation_space, venv.single_action_space
    module = spec.build()
    obs, _ = venv.reset(seed=0)
    logits = module.forward_exploration({Columns.OBS: as_tensors(obs)})[Columns.ACTION_DIST_INPUTS]
    dist = module.get_exploration_action_dist_cls().from_logits(logits)
    slates = dist.sample()
    assert slates.shape == (8, 3) and all(len(set(row.tolist())) == 3 for row in slates)
    reference = PlackettLuceDistribution(10, 3).proba_distribution(logits)
    assert torch.allclose(dist.logp(slates), reference.log_prob(slates))
    assert torch.allclose(dist.entropy(), reference.entropy())
    assert torch.equal(dist.to_deterministic().sample(), logits.topk(3, dim=-1).indices)


def test_a_ranker_from_another_item_space_is_refused_before_ray_starts(item_space, tmp_path):
    pytest.importorskip("ray.rllib")
    other = untrained_ranker(ItemSpace.random(50, 8, 8, seed=1))
    with pytest.raises(ValueError, match="warm start: the ranker was trained on item space"):
        train_rllib_agent(AGENT, RLlibConfig(), ENV_ID, ENV_OPTIONS, item_space, tmp_path / "run", ranker=other)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("settings,message", [
    ({"lr": 0.1}, "'lr' is set by the backend; use AgentConfig.learning_rate"),
    ({"use_kl_loss": True}, "'use_kl_loss' is not supported by the RLlib backend"),
    ({"framework": "tf2"}, "'framework' is not supported"),
])
def test_settings_the_backend_sets_or_cannot_honour_are_errors(settings, message):
    with pytest.raises(ValueError, match=message):
        RLlibConfig(settings=settings)


def test_an_unknown_rllib_setting_and_sb3_only_agent_settings_are_errors():
    pytest.importorskip("ray.rllib")
    with pytest.raises(ValueError, match="'restart_failed_env_runner' is not a PPOConfig setting .did you mean "
                                         "'restart_failed_env_runners'"):
        check_run(AGENT, RLlibConfig(settings={"restart_failed_env_runner": True}))
    check_run(AGENT, RLlibConfig(settings={"restart_failed_env_runners": True}))
    with pytest.raises(ValueError, match="kl_coef=0.1: the KL penalty toward the ranker is SB3-only"):
        check_run(AgentConfig(kl_coef=0.1), RLlibConfig())
    with pytest.raises(ValueError, match="algo='dqn': the RLlib backend trains PPO"):
        check_run(AgentConfig(algo="dqn"), RLlibConfig())


@pytest.mark.parametrize("override,key", [
    ("ppo.kl_coef=0.1", "ppo.kl_coef"), ("ppo.bc_epochs=2", "ppo.bc_epochs"), ("ppo.reward=ranker", "ppo.reward"),
    ("rllib.settings={num_epochs: 3}", "rllib.settings"), ("rllib.num_env_runners=-1", "rllib.num_env_runners"),
])
def test_run_py_refuses_what_the_rllib_backend_does_not_support(override, key, tmp_path):
    with pytest.raises(ConfigError, match=rf"config key '{key}'"):
        load_config([*TINY, "agents=[random,rllib_ppo]", override, f"results_dir={tmp_path}"])


def test_without_rllib_installed_the_error_says_how_to_install_it_before_training(monkeypatch, tmp_path):
    from experiments.run import check_inputs

    monkeypatch.setitem(sys.modules, "ray.rllib", None)  # `import ray.rllib` now fails
    with pytest.raises(ImportError, match=r"pip install -e '.\[rllib\]'"):
        require_rllib()
    config = load_config([*TINY, "agents=[random,rllib_ppo]", f"results_dir={tmp_path / 'results'}"])
    with pytest.raises(ConfigError, match=r"config key 'agents': the RLlib backend needs ray\[rllib\]"):
        check_inputs(config)
    assert not (tmp_path / "results" / ".cache").exists() or not list((tmp_path / "results" / ".cache").iterdir())
