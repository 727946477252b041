"""What the simulation means: oracles beat random, long-term effects exist exactly where configured.

All runs use held-out users: seeds that the simulator parameters were never tuned on
(tuning used seed 123), through the registered vector environments. Each row plays
one episode; the comparisons use the mean episode return (engagement minutes) and its
standard error over users.
"""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest
import torch

import envs  # noqa: F401
from recsim_mm import ItemSpace
from recsim_mm.simulator import Simulator
from recsim_mm.users import MyopicUser

USERS = 500


HELD_OUT_SEED = 90_210


def random_policy(obs, info, rng):
    """Uniform over the K candidates."""
    return rng.integers(info["candidate_affinity"].shape[1], size=info["candidate_affinity"].shape[0])


def greedy_oracle(obs, info, rng):
    """Rank by true affinity, recommend the top candidate (myopic)."""
    return info["candidate_affinity"].argmax(axis=1)


def diversity_oracle(obs, info, rng, weight=0.5, window=3):
    """Maximal marginal relevance: true affinity minus ``weight`` x the highest fused
    cosine between the candidate and the user's last ``window`` clicked items."""
    history, candidates = obs["history_items"], obs["candidate_items"]  # (B, H, d), (B, K, d)
    clicked = obs["history_feedback"][..., 0] * obs["history_mask"]  # (B, H)
    recent = np.cumsum(clicked[:, ::-1], axis=1)[:, ::-1] <= window  # last `window` clicks
    keep = (clicked * recent) > 0
    similarity = np.einsum("bkd,bhd->bkh", candidates, history) / 2  # fused vectors: |x|^2 = 2
    similarity = np.where(keep[:, None, :], similarity, -np.inf).max(axis=2)
    penalty = np.where(np.isfinite(similarity), np.maximum(similarity, 0.0), 0.0)
    return (info["candidate_affinity"] - weight * penalty).argmax(axis=1)


def episode_returns(env_id: str, policy, seed: int = HELD_OUT_SEED, users: int = USERS) -> np.ndarray:
    """``(users,)`` return of each user's first episode under ``policy``."""
    venv = gymnasium.make_vec(env_id, num_envs=users, vectorization_mode="vector_entry_point", device="cpu")
    rng = np.random.default_rng(seed)
    obs, info = venv.reset(seed=seed)
    returns = np.zeros(users)
    running = np.ones(users, dtype=bool)
    while running.any():
        obs, reward, terminated, truncated, info = venv.step(policy(obs, info, rng))
        returns += reward * running
        running &= ~(terminated | truncated)
    return returns


def mean_and_se(x: np.ndarray) -> tuple[float, float]:
    return float(x.mean()), float(x.std(ddof=1) / np.sqrt(len(x)))


@pytest.mark.parametrize("variant", ["InterestEvolution", "Satiation", "Myopic"])
def test_true_affinity_oracle_beats_random_by_a_clear_margin(variant):
    env_id = f"recsim_mm/{variant}-v0"
    oracle, oracle_se = mean_and_se(episode_returns(env_id, greedy_oracle))
    rand, rand_se = mean_and_se(episode_returns(env_id, random_policy))
    # Clear margin: at least twice the random return and 10 standard errors apart.
    assert oracle > 2 * rand, (oracle, rand)
    assert oracle - rand > 10 * np.hypot(oracle_se, rand_se), (oracle, rand)


def test_in_satiation_a_diversity_aware_oracle_beats_the_greedy_oracle():
    # Same seed -> the same users for both policies: a paired comparison per user.
    gain = episode_returns("recsim_mm/Satiation-v0", diversity_oracle) - episode_returns(
        "recsim_mm/Satiation-v0", greedy_oracle
    )
    mean, se = mean_and_se(gain)
    assert mean > 3 * se, (mean, se)


def test_in_myopic_a_diversity_aware_oracle_does_not_beat_the_greedy_oracle():
    gain = episode_returns("recsim_mm/Myopic-v0", diversity_oracle) - episode_returns(
        "recsim_mm/Myopic-v0", greedy_oracle
    )
    assert gain.mean() < 0, gain.mean()


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
