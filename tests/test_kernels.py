"""The fused CPU kernels (recsim_mm/kernels.py) against the torch path they replace.

The default user's step, fresh-user draws and candidate sets run as numba kernels on
CPU; the torch path runs on CUDA and with ``RECSIM_MM_KERNELS=0``. Both must give the
same trajectory for the same seed: the same discrete outcomes (clicks, items, episode
ends) and the same floats up to last-bit rounding (the checksums of
tests/test_trajectory_pin.py, relative tolerance 1e-6). The cases cover every branch
of the fused step: the one-item logit kernel, slates and the cascade model (utility
kernel, torch choice), quits and boredom (Satiation), drift and budgets
(InterestEvolution).
"""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest

import envs  # noqa: F401  (registers the ids)
from recsim_mm import kernels
from tests.test_trajectory_pin import (
    NUM_ENVS,
    STEPS,
    _item_space,
    single_env_trace,
    vector_env_trace,
)


def slate_trace(env_id: str, **options) -> tuple:
    """`vector_env_trace` for a slate env: fixed random slates of distinct positions."""
    env = gymnasium.make(env_id, item_space=_item_space())
    k, s = env.unwrapped.simulator.num_candidates, env.unwrapped.simulator.slate_size
    slates = np.argsort(np.random.default_rng(99).random((STEPS, NUM_ENVS, k)), axis=2)[:, :, :s]
    return vector_env_trace(env_id, actions=slates, **options)


CASES = {
    "interest_evolution": ("recsim_mm/InterestEvolution-v0", {}),
    "satiation_quits_and_boredom": ("recsim_mm/Satiation-v0", {}),
    "cascade": ("recsim_mm/InterestEvolution-v0", {"user_params": {"choice_model": "cascade"}}),
    "ids_no_truth": ("recsim_mm/Myopic-v0", {"obs_mode": "ids", "track_truth": False}),
}


def _traces(trace, monkeypatch, env_id: str, options: dict) -> tuple:
    fused = trace(env_id, **options)
    monkeypatch.setattr(kernels, "AVAILABLE", False)
    reference = trace(env_id, **options)
    monkeypatch.setattr(kernels, "AVAILABLE", True)
    return fused, reference


@pytest.mark.skipif(not kernels.AVAILABLE, reason="numba kernels disabled (RECSIM_MM_KERNELS=0)")
@pytest.mark.parametrize("case", sorted(CASES))
def test_kernel_and_torch_paths_give_the_same_vector_trajectory(case, monkeypatch):
    env_id, options = CASES[case]
    (discrete, full), (ref_discrete, ref_full) = _traces(vector_env_trace, monkeypatch, env_id, options)
    assert discrete == ref_discrete, "clicks, items or episode ends differ between the kernel and torch paths"
    np.testing.assert_allclose(full, ref_full, rtol=1e-6, atol=0)


@pytest.mark.skipif(not kernels.AVAILABLE, reason="numba kernels disabled (RECSIM_MM_KERNELS=0)")
@pytest.mark.parametrize("env_id", ["recsim_mm/InterestEvolutionSlate-v0", "recsim_mm/SatiationSlate-v0"])
def test_kernel_and_torch_paths_give_the_same_slate_trajectory(env_id, monkeypatch):
    (discrete, full), (ref_discrete, ref_full) = _traces(slate_trace, monkeypatch, env_id, {})
    assert discrete == ref_discrete
    np.testing.assert_allclose(full, ref_full, rtol=1e-6, atol=0)


@pytest.mark.skipif(not kernels.AVAILABLE, reason="numba kernels disabled (RECSIM_MM_KERNELS=0)")
def test_kernel_and_torch_paths_give_the_same_single_env_trajectory(monkeypatch):
    (discrete, full), (ref_discrete, ref_full) = _traces(
        single_env_trace, monkeypatch, "recsim_mm/Satiation-v0", {})
    assert discrete == ref_discrete
    np.testing.assert_allclose(full, ref_full, rtol=1e-6, atol=0)


@pytest.mark.skipif(not kernels.AVAILABLE, reason="numba kernels disabled (RECSIM_MM_KERNELS=0)")
def test_default_cpu_environments_run_the_fused_step():
    env = gymnasium.make("recsim_mm/InterestEvolution-v0", item_space=_item_space())
    assert env.unwrapped.simulator.users._fused_step
    vec = gymnasium.make_vec("recsim_mm/Satiation-v0", num_envs=4, vectorization_mode="vector_entry_point",
                             item_space=_item_space(), device="cpu")
    assert vec.unwrapped.simulator.users._fused_step


def test_disabled_kernels_leave_the_torch_step(monkeypatch):
    monkeypatch.setattr(kernels, "AVAILABLE", False)
    env = gymnasium.make("recsim_mm/InterestEvolution-v0", item_space=_item_space())
    assert not env.unwrapped.simulator.users._fused_step
    env.reset(seed=0)
    _, reward, *_ = env.step(0)
    assert np.isfinite(reward)


def test_fresh_user_draws_as_tensors_match_the_numpy_path(monkeypatch):
    """The tensor branch of the fresh-user samplers (what CUDA runs) gives the users the
    numpy branch gives on CPU from the same draws (checked here on CPU by handing the
    samplers tensors, as `_draws` does on CUDA)."""
    import torch

    from recsim_mm.users import InterestEvolutionUser, multimodal

    space = _item_space()
    rows = torch.arange(0, 64, 3)

    def drawn(tensor_draws: bool) -> dict:
        monkeypatch.setattr(kernels, "AVAILABLE", tensor_draws is False and kernels.AVAILABLE)
        if tensor_draws:
            monkeypatch.setattr(multimodal, "_draws", lambda kind, shape, g, dev: (
                torch.rand if kind == "rand" else torch.randn)(shape, generator=g, device=dev))
        users = InterestEvolutionUser(space, 64, torch.device("cpu"))
        users.sample(rows, torch.Generator().manual_seed(5))
        monkeypatch.undo()
        return {name: getattr(users, name).clone() for name in ("interest", "modality_weight", "budget", "_weighted")}

    numpy_path, tensor_path = drawn(False), drawn(True)
    for name in numpy_path:
        torch.testing.assert_close(tensor_path[name], numpy_path[name], rtol=1e-5, atol=1e-6, msg=name)
    assert bool((numpy_path["budget"][rows] > 0).all())
