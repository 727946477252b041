"""The speed work's seams (issue 11, 12): reused observation arrays, lazy true affinities,
``info_keys``, `Simulator.seed` / `set_candidate_source`, the observation key constants
and the one watched-fraction formula."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import gymnasium
import numpy as np
import pytest
import torch

import envs  # noqa: F401  (registers the ids)
from envs.vector_env import RecVectorEnv
from recsim_mm import ItemSpace
from recsim_mm.candidates import CandidateGenerator
from recsim_mm.observation import OBSERVATION_KEYS, REQUIRED_KEYS
from recsim_mm.simulator import FreshArrays, Simulator
from recsim_mm.users import InterestEvolutionUser, MultimodalUser

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def space():
    return ItemSpace.random(200, d_text=8, d_image=8, num_topics=5, seed=3)


def _sim(space, users=6, **kwargs):
    return Simulator(space, InterestEvolutionUser(space, users), num_candidates=5, history_length=3, **kwargs)


def test_fresh_arrays_allocates_small_arrays_new():
    pool = FreshArrays(small_bytes=1024)
    small = pool.get("x", (4, 3), np.float32)
    assert not pool._arrays.get("x")  # not kept: the caller owns it alone
    assert pool.get("y", (1024,), np.float32).nbytes >= 1024 and len(pool._arrays["y"]) == 1
    value = np.arange(3.0)
    copied = pool.copy("z", value)
    assert np.array_equal(copied, value) and copied is not value and small.shape == (4, 3)


def test_fresh_arrays_reuses_an_array_only_once_the_caller_holds_no_reference():
    pool = FreshArrays(small_bytes=0)  # pool even tiny arrays (the default allocates those new)
    first = pool.get("x", (4, 3), np.float32)
    address = first.ctypes.data
    assert pool.get("x", (4, 3), np.float32) is not first  # held by `first`
    held_by_view, held_by_tensor, held_by_dict = first[1:], None, None
    del first
    assert all(a.ctypes.data != address for a in [pool.get("x", (4, 3), np.float32)])  # a view keeps it
    del held_by_view
    reused = pool.get("x", (4, 3), np.float32)
    assert reused.ctypes.data == address  # dropped everywhere: reused
    held_by_tensor = torch.from_numpy(reused)
    del reused
    assert pool.get("x", (4, 3), np.float32).ctypes.data != address  # torch.from_numpy keeps it
    held_by_dict = {"obs": held_by_tensor.numpy()}
    del held_by_tensor
    assert pool.get("x", (4, 3), np.float32).ctypes.data != address  # the dict's array is a view of it
    del held_by_dict
    assert pool.get("x", (4, 3), np.float32).ctypes.data == address


def test_a_kept_vector_observation_is_never_written_and_a_dropped_one_is_reused():
    env = gymnasium.make_vec(
        "recsim_mm/InterestEvolution-v0", num_envs=8, vectorization_mode="vector_entry_point", device="cpu",
        item_space=ItemSpace.random(60, d_text=4, d_image=4, num_topics=3, seed=1),
    )
    env.unwrapped.simulator._fresh.small_bytes = 0  # these observations are tiny: pool them anyway
    kept, _ = env.reset(seed=2)
    snapshot = {key: value.copy() for key, value in kept.items()}
    actions = np.zeros(8, dtype=np.int64)
    addresses = set()
    for _ in range(15):  # the loop drops each observation: its arrays come back
        obs, *_ = env.step(actions)
        addresses.add(obs["candidate_items"].ctypes.data)
        del obs
    assert all(np.array_equal(kept[key], snapshot[key]) for key in kept)
    assert kept["candidate_items"].ctypes.data not in addresses
    assert len(addresses) <= 2  # dropped arrays are reused, not reallocated every step


@pytest.mark.parametrize("obs_mode", ["embeddings", "ids"])
def test_lazy_true_affinities_equal_the_user_models_affinities_of_the_current_candidates(space, obs_mode):
    sim = _sim(space, obs_mode=obs_mode)
    sim.reset(seed=4)
    g = torch.Generator().manual_seed(0)
    for _ in range(8):
        before = sim.users.affinity(sim.candidates, None)
        out = sim.step(torch.randint(5, (6, 1), generator=g))
        assert torch.equal(out.true_affinity, before)  # what the action chose from, before the step
        sim.reset_rows(out.terminated | out.truncated)
        sim.observation_arrays()
        assert torch.equal(sim.candidate_affinity, sim.users.affinity(sim.candidates, None))


def test_info_keys_builds_only_the_named_keys_and_skips_affinities_nobody_reads():
    space = ItemSpace.random(60, d_text=4, d_image=4, num_topics=3, seed=1)

    def make(**kwargs):
        return RecVectorEnv(4, device="cpu", item_space=space, **kwargs)

    full, some, none = make(), make(info_keys=["click", "candidate_affinity"]), make(info_keys=[])
    infos = [env.reset(seed=1)[1] for env in (full, some, none)]
    actions = np.array([0, 1, 2, 3])
    for _ in range(6):
        infos = [env.step(actions)[4] for env in (full, some, none)]
        assert set(infos[1]) == {"click", "_click", "candidate_affinity", "_candidate_affinity"}
        for key in infos[1]:
            assert np.array_equal(infos[1][key], infos[0][key]), key
        assert infos[2] == {}
    assert full.simulator.track_truth and not none.simulator.track_truth


def test_bad_info_keys_are_errors_naming_them(space):
    with pytest.raises(ValueError, match=r"unknown info key 'clicks' in info_keys; valid: \['click'"):
        RecVectorEnv(2, device="cpu", item_space=space, info_keys=["clicks"])
    with pytest.raises(ValueError, match="info key 'true_affinity' needs track_truth=True"):
        RecVectorEnv(2, device="cpu", item_space=space, info_keys=["true_affinity"], track_truth=False)
    with pytest.raises(ValueError, match="info_keys='click' must be a list of key names"):
        RecVectorEnv(2, device="cpu", item_space=space, info_keys="click")


def test_simulator_seed_repeats_the_stream_and_rejects_non_integers(space):
    sim = _sim(space)
    runs = []
    for _ in range(2):
        sim.seed(11)
        sim.reset(observe=False)
        out = sim.step(torch.zeros(6, 1, dtype=torch.long))
        runs.append((sim.candidates.clone(), out.engagement.clone()))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    with pytest.raises(ValueError, match=r"seed='7' must be an int"):
        sim.seed("7")
    assert sim.reset(observe=False) is None


def test_seed_without_clearing_keeps_the_pre_drawn_candidate_block(space):
    sim = _sim(space)
    sim.reset(seed=0)
    block = sim.candidate_generator._block
    sim.seed(5, clear_candidates=False)
    assert sim.candidate_generator._block is block
    sim.seed(5)
    assert sim.candidate_generator._block is None


class _FirstItems:
    """A candidate source offering items 0..K-1 to everyone, recording what it is told."""

    reads_state = False

    def __init__(self, k: int) -> None:
        self.k, self.cleared, self.recorded = k, 0, 0

    def clear(self) -> None:
        self.cleared += 1

    def clear_rows(self, rows):
        pass

    def record(self, items, consumed):
        self.recorded += 1

    def sample(self, rows, num_rows, history_items, history_clicked, generator):
        return torch.arange(self.k).expand(num_rows, self.k).clone()


def test_a_candidate_source_passed_in_or_set_later_is_what_the_simulator_draws_from(space):
    source = _FirstItems(5)
    for sim in (_sim(space, candidate_source=source), _sim(space)):
        if not isinstance(sim.candidate_generator, _FirstItems):
            sim.set_candidate_source(source)
        sim.reset(seed=3)
        sim.step(torch.zeros(6, 1, dtype=torch.long))
        assert torch.equal(sim.candidates, torch.arange(5).expand(6, 5))
    assert source.cleared == 2 and source.recorded == 2


def test_a_candidate_source_missing_part_of_the_interface_is_an_error_naming_it(space):
    class NoRecord:
        reads_state = False

        def clear(self): ...

        def clear_rows(self, rows): ...

        def sample(self, *args): ...

    with pytest.raises(TypeError, match=r"candidate source NoRecord lacks \['record'\]"):
        _sim(space).set_candidate_source(NoRecord())
    assert isinstance(_sim(space).candidate_generator, CandidateGenerator)


def test_observations_use_the_key_constants_and_no_module_spells_them_out():
    env = gymnasium.make("recsim_mm/InterestEvolution-v0", item_space=ItemSpace.random(50, 4, 4, num_topics=3, seed=0))
    obs, _ = env.reset(seed=0)
    assert tuple(obs) == REQUIRED_KEYS and set(env.observation_space.spaces) == set(REQUIRED_KEYS)
    # Observation keys are spelled once, in recsim_mm/observation.py: no other module's code
    # (docstrings and messages aside) holds one as a string literal. "time_left" also
    # names a traced quantity, so only its reads of an observation count.
    def spelled_out(source: str) -> bool:
        tree = ast.parse(source)
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
                      and node.body and isinstance(node.body[0], ast.Expr)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id in (
                    "obs", "observation", "base") and isinstance(node.slice, ast.Constant) and node.slice.value == "time_left":
                return True
            if (isinstance(node, ast.Constant) and id(node) not in docstrings and node.value in OBSERVATION_KEYS
                    and node.value != "time_left"):
                return True
        return False

    offenders = []
    for folder in ("recsim_mm", "envs", "agents", "experiments"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            name = path.relative_to(ROOT).as_posix()
            if name != "recsim_mm/observation.py" and spelled_out(path.read_text()):
                offenders.append(name)
    assert offenders == []


def test_respond_and_expected_outcomes_share_the_watched_fraction(space):
    users = MultimodalUser(space, 16, no_click_utility=-100.0, time_budget=1e6)  # every user clicks
    g = torch.Generator().manual_seed(0)
    users.sample(torch.arange(16), g)
    items = torch.randint(space.num_items, (16, 1), generator=g)
    # Without noise the formula is deterministic: respond's minutes are the expected ones.
    users.config = dataclasses.replace(users.config, engagement_noise=0.0)
    expected = users.expected_outcomes(items).engagement_if_clicked[:, 0]
    response = users.respond(items, g)
    assert bool((response.clicked == 0).all())
    torch.testing.assert_close(response.engagement, expected, rtol=1e-6, atol=0)
    # Both go through watched_fraction: replacing it changes both alike.
    users.watched_fraction = lambda utility, noise: torch.full(torch.broadcast_shapes(utility.shape, noise.shape), 0.25)
    duration = space.duration[items[:, 0]]
    assert torch.equal(users.respond(items, g).engagement, 0.25 * duration)
    # (a mean over the noise nodes of equal values: equal up to rounding)
    torch.testing.assert_close(users.expected_outcomes(items).engagement_if_clicked[:, 0], 0.25 * duration)
