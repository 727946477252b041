"""Gymnasium environments: API conformance, registration, determinism, vector env, SB3, bad input."""

from __future__ import annotations

import warnings

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import envs
from agents.sb3_vec_env import SB3VecEnv
from envs.rec_env import RecEnv
from envs.vector_env import RecVectorEnv

IDS = sorted(envs.ENV_IDS)
MODES = ("embeddings", "ids")




@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("env_id", IDS)
def test_every_registered_id_passes_the_gymnasium_and_sb3_env_checkers(env_id, mode):
    env = gymnasium.make(env_id, obs_mode=mode, render_mode="ansi")
    with warnings.catch_warnings():
        # SB3 recommends flat observations; (H, d) history matrices are the contract.
        warnings.filterwarnings("ignore", message=".*unconventional shape.*")
        check_env(env.unwrapped, skip_render_check=False)
        sb3_check_env(gymnasium.make(env_id, obs_mode=mode), warn=True)
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert set(obs) == {"history_items", "history_feedback", "history_mask", "candidate_items", "time_left"}
    assert isinstance(env.render(), str)


def test_ids_register_on_import_and_through_the_module_prefix():
    env = gymnasium.make("envs:recsim_mm/InterestEvolution-v0")
    assert isinstance(env.unwrapped, RecEnv)
    assert env.unwrapped.simulator.users.__class__.__name__ == "InterestEvolutionUser"
    slate = gymnasium.make("recsim_mm/SatiationSlate-v0")
    assert slate.action_space.shape == (envs.SLATE_SIZE,)
    assert slate.unwrapped.simulator.users.__class__.__name__ == "SatiationUser"


def test_observation_and_info_follow_the_contract_in_both_modes():
    for mode in MODES:
        env = gymnasium.make("recsim_mm/Myopic-v0", obs_mode=mode, history_length=4, num_candidates=7)
        obs, info = env.reset(seed=3)
        sim = env.unwrapped.simulator
        d, n = sim.item_space.dim, sim.item_space.num_items
        if mode == "embeddings":
            assert obs["history_items"].shape == (4, d) and obs["history_items"].dtype == np.float32
            assert obs["candidate_items"].shape == (7, d)
            rows = sim.candidates[0].numpy()
            assert np.allclose(obs["candidate_items"], sim.item_space.fused[rows].numpy())
        else:
            assert obs["history_items"].shape == (4,) and obs["history_items"].dtype == np.int64
            assert obs["candidate_items"].shape == (7,) and obs["candidate_items"].max() < n
        assert obs["history_mask"].tolist() == [0, 0, 0, 0]
        obs, reward, terminated, truncated, info = env.step(0)
        assert obs["history_mask"].tolist() == [0, 0, 0, 1]  # most recent last
        assert set(info) >= {"click", "engagement", "clicked_item", "true_affinity", "candidate_affinity"}
        assert info["true_affinity"].shape == (7,) and info["true_affinity"].dtype == np.float32
        assert obs["history_feedback"][-1].tolist() == [float(info["click"]), pytest.approx(info["engagement"])]
        assert reward == pytest.approx(info["engagement"])
        assert info["clicked_item"] == (-1 if not info["click"] else info["clicked_item"])


def test_true_affinity_in_info_is_the_affinity_of_the_candidates_acted_on():
    env = gymnasium.make("recsim_mm/InterestEvolution-v0")
    obs, info = env.reset(seed=5)
    shown = info["candidate_affinity"]
    obs, reward, terminated, truncated, info = env.step(int(shown.argmax()))
    assert np.array_equal(info["true_affinity"], shown)


def _rollout(env, seed, steps, action_seed):
    rng = np.random.default_rng(action_seed)
    obs, _ = env.reset(seed=seed)
    trace = [obs["candidate_items"].copy()]
    for _ in range(steps):
        obs, reward, terminated, truncated, info = env.step(int(rng.integers(env.action_space.n)))
        trace += [obs["candidate_items"].copy(), np.float64(reward), info["click"]]
        if terminated or truncated:
            obs, _ = env.reset()
            trace.append(obs["candidate_items"].copy())
    return trace


def _same(a, b):
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_same_seed_gives_identical_trajectories_and_different_seeds_differ():
    env = gymnasium.make("recsim_mm/Satiation-v0", obs_mode="ids")
    first = _rollout(env, seed=11, steps=40, action_seed=0)
    again = _rollout(gymnasium.make("recsim_mm/Satiation-v0", obs_mode="ids"), seed=11, steps=40, action_seed=0)
    other = _rollout(env, seed=12, steps=40, action_seed=0)
    assert _same(first, again)
    assert not _same(first, other)


def test_vector_env_same_seed_identical_different_seed_differs():
    def run(seed):
        venv = gymnasium.make_vec("recsim_mm/Satiation-v0", num_envs=16, vectorization_mode="vector_entry_point", device="cpu")
        obs, _ = venv.reset(seed=seed)
        venv.action_space.seed(0)
        out = [obs["candidate_items"]]
        for _ in range(30):
            obs, reward, terminated, truncated, info = venv.step(venv.action_space.sample())
            out += [obs["candidate_items"], reward, terminated, truncated]
        return out

    assert _same(run(4), run(4))
    assert not _same(run(4), run(5))


def test_make_vec_builds_the_native_batched_env_with_next_step_autoreset():
    venv = gymnasium.make_vec("recsim_mm/Myopic-v0", num_envs=5, vectorization_mode="vector_entry_point", obs_mode="ids")
    assert isinstance(venv.unwrapped, RecVectorEnv)
    assert venv.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    assert venv.unwrapped.simulator.num_users == 5  # one core, not five envs
    obs, info = venv.reset(seed=0)
    assert venv.observation_space.contains(obs)
    assert obs["candidate_items"].shape == (5, 20)
    assert info["candidate_affinity"].shape == (5, 20)
    obs, reward, terminated, truncated, info = venv.step(venv.action_space.sample())
    assert reward.shape == terminated.shape == (5,)
    assert info["true_affinity"].shape == (5, 20) and info["_click"].all()


def _episode_returns_single(env_id, episodes, policy, seed):
    env = gymnasium.make(env_id, obs_mode="ids")
    rng = np.random.default_rng(seed)
    returns = []
    obs, info = env.reset(seed=seed)
    for _ in range(episodes):
        total, done = 0.0, False
        while not done:
            action = policy(info["candidate_affinity"][None], rng)[0]
            obs, reward, terminated, truncated, info = env.step(int(action))
            total += reward
            done = terminated or truncated
        returns.append(total)
        obs, info = env.reset()
    return np.array(returns)


def _episode_returns_vector(env_id, num_envs, policy, seed, **options):
    """First episode of every row of a vector env (NEXT_STEP autoreset)."""
    venv = gymnasium.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point", device="cpu", **options)
    rng = np.random.default_rng(seed)
    obs, info = venv.reset(seed=seed)
    returns = np.zeros(num_envs)
    running = np.ones(num_envs, dtype=bool)
    while running.any():
        obs_before, info_before = obs, info
        actions = policy(info_before["candidate_affinity"], rng, obs_before)
        obs, reward, terminated, truncated, info = venv.step(actions)
        returns += reward * running
        running &= ~(terminated | truncated)
    return returns


def _random_policy(affinity, rng, obs=None):
    return rng.integers(affinity.shape[1], size=affinity.shape[0])


def _greedy_policy(affinity, rng, obs=None):
    return affinity.argmax(axis=1)


@pytest.mark.parametrize("policy", [_random_policy, _greedy_policy], ids=["random", "greedy"])
def test_vector_env_matches_single_envs_in_distribution(policy):
    n = 200
    single = _episode_returns_single("recsim_mm/Satiation-v0", n, policy, seed=100)
    vector = _episode_returns_vector("recsim_mm/Satiation-v0", n, policy, seed=200, obs_mode="ids")
    se = np.sqrt(single.var() / n + vector.var() / n)
    # Same user population and dynamics: the means agree within 4 standard errors.
    assert abs(single.mean() - vector.mean()) < 4 * se, (single.mean(), vector.mean(), se)


def test_next_step_autoreset_starts_a_fresh_user_on_the_following_step():
    venv = RecVectorEnv(8, obs_mode="ids", user_model="myopic", user_params={"patience": 1, "no_click_utility": 10.0}, device="cpu")
    obs, _ = venv.reset(seed=0)
    obs, reward, terminated, truncated, info = venv.step(np.zeros(8, dtype=np.int64))
    assert terminated.all()  # never clicks, patience 1: everyone leaves at once
    assert obs["history_mask"][:, -1].all()  # the terminal observation, history included
    obs, reward, terminated, truncated, info = venv.step(np.zeros(8, dtype=np.int64))
    assert (reward == 0).all() and not terminated.any() and not truncated.any()
    assert not obs["history_mask"].any()  # fresh users, empty history
    assert not info["_click"].any()  # no step result for reset rows


def test_same_step_autoreset_returns_final_observation_and_fresh_users():
    venv = RecVectorEnv(
        4, autoreset_mode="SameStep", obs_mode="ids", user_model="myopic",
        user_params={"patience": 1, "no_click_utility": 10.0}, device="cpu",
    )  # fmt: skip
    assert venv.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    venv.reset(seed=0)
    obs, reward, terminated, truncated, info = venv.step(np.zeros(4, dtype=np.int64))
    assert terminated.all() and info["_final_obs"].all()
    assert info["final_obs"][2]["history_mask"][-1] == 1  # the ended episode's last step
    assert not obs["history_mask"].any()  # already the fresh users
    assert info["final_info"]["click"].shape == (4,)


def test_disabled_autoreset_needs_a_masked_reset():
    venv = RecVectorEnv(
        3, autoreset_mode="Disabled", obs_mode="ids", user_model="myopic",
        user_params={"patience": 1, "no_click_utility": 10.0}, device="cpu",
    )  # fmt: skip
    venv.reset(seed=0)
    venv.step(np.zeros(3, dtype=np.int64))
    with pytest.raises(RuntimeError, match="sub-environment 0 ended and autoreset disabled"):
        venv.step(np.zeros(3, dtype=np.int64))
    obs, _ = venv.reset(options={"reset_mask": np.array([True, True, True])})
    assert not obs["history_mask"].any()
    venv.step(np.zeros(3, dtype=np.int64))


def test_sb3_adapter_reports_terminal_observations_and_trains_ppo():
    from stable_baselines3 import PPO

    venv = SB3VecEnv("recsim_mm/Myopic-v0", num_envs=6, obs_mode="ids", device="cpu", user_params={"patience": 1})
    venv.seed(0)
    obs = venv.reset()
    assert obs["candidate_items"].shape == (6, 20)
    seen_done = False
    for _ in range(30):
        venv.step_async(np.zeros(6, dtype=np.int64))
        obs, rewards, dones, infos = venv.step_wait()
        assert rewards.dtype == np.float32 and len(infos) == 6
        for done, info in zip(dones, infos, strict=True):
            if done:
                seen_done = True
                assert info["terminal_observation"]["history_mask"][-1] == 1
                assert info["TimeLimit.truncated"] is False
    assert seen_done
    model = PPO("MultiInputPolicy", venv, n_steps=8, batch_size=24, n_epochs=1, seed=0)
    model.learn(total_timesteps=48)


# ------------------------------------------------------------------ rewards
def test_click_reward_and_a_callable_reward_fn():
    env = gymnasium.make("recsim_mm/Myopic-v0", reward="click")
    env.reset(seed=0)
    for _ in range(10):
        _, reward, terminated, truncated, info = env.step(0)
        assert reward == float(info["click"])
        if terminated or truncated:
            env.reset()
    calls = []

    def reward_fn(observation, positions, response):
        calls.append((observation["candidate_items"].shape, positions.shape))
        return response.engagement * 2 + 1

    env = gymnasium.make("recsim_mm/MyopicSlate-v0", reward_fn=reward_fn)
    env.reset(seed=0)
    _, reward, _, _, info = env.step(np.array([0, 1, 2]))
    assert reward == pytest.approx(2 * info["engagement"] + 1)
    assert calls == [((1, 20, 64), (1, 3))]  # batched torch inputs, B = 1


def test_reward_fn_returning_the_wrong_shape_is_an_error():
    env = gymnasium.make("recsim_mm/Myopic-v0", reward_fn=lambda obs, pos, resp: torch.zeros(3))
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"reward_fn must return a \(1,\) float tensor; got torch.Size\(\[3\]\)"):
        env.step(0)


# ------------------------------------------------------------------ bad input
@pytest.fixture(scope="module")
def single_env():
    return RecEnv(user_model="myopic", device="cpu")


@pytest.fixture(scope="module")
def slate_env():
    return RecEnv(user_model="myopic", slate_size=3, device="cpu")


@pytest.mark.parametrize(
    ("action", "message"),
    [
        (20, r"action 20 is out of range; expected a candidate position in \[0, 20\)"),
        (-1, r"action -1 is out of range"),
        (np.float64("nan"), r"action contains NaN"),
        (np.array([1, 2]), r"action has shape \(2,\); expected an integer position"),
        (2.5, r"non-integer position"),
        ("3", r"action has dtype <U1; expected integer candidate positions"),
    ],
)
def test_bad_single_actions_raise_naming_the_value(single_env, action, message):
    single_env.reset(seed=0)
    with pytest.raises(ValueError, match=message):
        single_env.step(action)


@pytest.mark.parametrize(
    ("action", "message"),
    [
        (np.array([3, 3, 5]), r"slate \[3, 3, 5\] repeats a position; the 3 slate positions must be distinct"),
        (np.array([0, 1]), r"action has shape \(2,\); expected a slate of 3 distinct positions"),
        (np.array([0, 1, 25]), r"action position 25 is out of range; expected positions in \[0, 20\)"),
        (np.array([0.0, np.nan, 2.0]), r"action contains NaN"),
    ],
)
def test_bad_slates_raise_naming_the_value(slate_env, action, message):
    slate_env.reset(seed=0)
    with pytest.raises(ValueError, match=message):
        slate_env.step(action)


def test_bad_vector_actions_raise_naming_the_row():
    venv = RecVectorEnv(4, slate_size=2, obs_mode="ids", device="cpu")
    venv.reset(seed=0)
    with pytest.raises(ValueError, match=r"slate \[1, 1\] in row 2 repeats a position"):
        venv.step(np.array([[0, 1], [2, 3], [1, 1], [4, 5]]))
    with pytest.raises(ValueError, match=r"action has shape \(4,\); expected shape \(4, 2\)"):
        venv.step(np.zeros(4, dtype=np.int64))
    assert venv.action_space.contains(venv.action_space.sample())  # samples are distinct slates


def test_step_after_termination_without_reset_is_an_error():
    env = RecEnv(user_model="myopic", user_params={"patience": 1, "no_click_utility": 10.0}, device="cpu")
    with pytest.raises(RuntimeError, match="never reset"):
        env.step(0)
    env.reset(seed=0)
    _, _, terminated, _, _ = env.step(0)
    assert terminated
    with pytest.raises(RuntimeError, match="episode has ended.*call reset\\(\\) first"):
        env.step(0)


def test_unknown_options_and_user_models_are_errors_listing_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown environment option 'num_candidate'; valid options: \[.*'num_candidates'"):
        gymnasium.make("recsim_mm/Myopic-v0", num_candidate=5)
    with pytest.raises(ValueError, match=r"obs_mode='pixels' is not an observation mode; expected one of \('embeddings', 'ids'\)"):
        gymnasium.make("recsim_mm/Myopic-v0", obs_mode="pixels")
    with pytest.raises(ValueError, match=r"unknown user model 'bored'; registered names: \[.*'satiation'"):
        gymnasium.make("recsim_mm/Myopic-v0", user_model="bored")
    with pytest.raises(ValueError, match=r"unknown user parameter 'patients'; valid parameters: \[.*'patience'"):
        gymnasium.make("recsim_mm/Myopic-v0", user_params={"patients": 2})
    with pytest.raises(ValueError, match=r"module 'not_a_module' does not import"):
        gymnasium.make("recsim_mm/Myopic-v0", user_model="not_a_module:User")
    with pytest.raises(TypeError, match=r"'envs.rec_env:RecEnvOptions'.*does not implement the user model contract"):
        gymnasium.make("recsim_mm/Myopic-v0", user_model="envs.rec_env:RecEnvOptions")
    with pytest.raises(ValueError, match=r"unknown reset option\(s\) \['reset_maks'\]; valid: \['reset_mask'\]"):
        RecVectorEnv(2, device="cpu").reset(seed=0, options={"reset_maks": None})


def test_default_observations_are_fresh_arrays_and_copy_false_gives_views_with_the_same_values():
    def make(copy):
        return gymnasium.make_vec("recsim_mm/InterestEvolution-v0", num_envs=6, vectorization_mode="vector_entry_point",
                                  copy=copy, device="cpu")

    fresh_env, view_env = make(True), make(False)
    fresh, _ = fresh_env.reset(seed=5)
    views, _ = view_env.reset(seed=5)
    kept = {key: value.copy() for key, value in fresh.items()}
    actions = np.arange(6) % 20
    for _ in range(12):  # crosses the history buffer's wrap-around and some autoresets
        previous_fresh, previous_views = fresh, views
        fresh, *_ = fresh_env.step(actions)
        views, *_ = view_env.step(actions)
        for key in fresh:
            assert np.array_equal(fresh[key], views[key]), key
        for key in ("history_items", "candidate_items"):
            assert not np.shares_memory(fresh[key], previous_fresh[key])  # kept arrays stay valid
            assert np.shares_memory(views[key], previous_views[key])  # zero-copy: one reused buffer
    first, _ = make(True).reset(seed=5)
    assert all(np.array_equal(first[key], kept[key]) for key in kept)  # stepping never wrote into a handed-out array


def test_copy_must_be_a_bool():
    with pytest.raises(ValueError, match="copy='no' must be True"):
        gymnasium.make_vec("recsim_mm/Myopic-v0", num_envs=2, vectorization_mode="vector_entry_point", copy="no")
