"""`RecVectorEnv`: B simulated users in one torch batch, a native Gymnasium `VectorEnv`.

Not B copies of `RecEnv`: one simulator core steps all users at once, so the cost per
user-step is a few vectorised tensor operations. Created by
``gymnasium.make_vec(id, num_envs=B, vectorization_mode="vector_entry_point")``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from envs.rec_env import (
    RecEnvOptions,
    action_space,
    build_simulator,
    check_actions,
    observation_space,
)


class RecVectorEnv(VectorEnv):
    """B users, one batch: the vector form of `RecEnv` (same spaces per user, same options).

    ## Spaces
    ``single_observation_space`` / ``single_action_space`` are those of `RecEnv`;
    ``observation_space`` and ``action_space`` add a leading ``B`` dimension
    (``Discrete(K)`` batches to ``MultiDiscrete([K] * B)``, a slate to ``(B, S)``).

    ## Autoreset
    ``autoreset_mode`` (``metadata["autoreset_mode"]``):

    - ``NEXT_STEP`` (default, Gymnasium 1.x's default): a user whose episode ended
      on step t is replaced by a fresh user on step t+1; that step ignores the row's
      action and returns the fresh observation with reward 0 and
      terminated = truncated = False.
    - ``SAME_STEP``: the fresh user's observation is returned on step t itself; the
      last observation and info of the ended episode are in ``info["final_obs"]``
      (object array, a dict per ended row, None elsewhere) and ``info["final_info"]``,
      with masks ``info["_final_obs"]``, ``info["_final_info"]``.
    - ``DISABLED``: ended rows must be reset with
      ``reset(options={"reset_mask": mask})`` before the next step.

    ## Info
    Arrays with a leading ``B``: ``click``, ``engagement``, ``clicked_item``,
    ``true_affinity`` ``(B, K)``, ``candidate_affinity`` ``(B, K)``,
    ``modality_weight``; each key ``k`` has a mask ``_k`` (False for rows that were
    reset this step under ``NEXT_STEP``, which have no step result). ``info_keys``
    builds only the named keys (the affinities, the costliest entries, are then
    computed only if asked for or needed by the observation).

    ## Arguments
    ``num_envs`` (``B``), ``autoreset_mode``, ``copy`` (default True: observations are
    arrays the caller may keep, each written once per step, whose memory is reused
    only once the caller holds no reference to it (`recsim_mm.simulator.FreshArrays`);
    False: zero-copy views of the simulator's buffers, overwritten by the next
    ``step``/``reset``; see docs/environments.md), ``info_keys`` (default None: every key above; a list:
    only those, e.g. ``[]`` for an empty info; an unknown key, or an affinity
    without ``track_truth``, raises `ValueError`), ``render_mode`` (None only), and
    every `RecEnvOptions` field (``device`` defaults to ``"auto"`` here).
    """

    def __init__(
        self,
        num_envs: int = 1,
        *,
        autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
        copy: bool = True,
        info_keys: Sequence[str] | None = None,
        render_mode: str | None = None,
        **options: Any,
    ) -> None:
        if not isinstance(num_envs, int) or isinstance(num_envs, bool) or num_envs < 1:
            raise ValueError(f"num_envs={num_envs!r} must be an integer >= 1")
        try:
            mode = AutoresetMode(autoreset_mode)
        except ValueError:
            raise ValueError(
                f"autoreset_mode={autoreset_mode!r} is invalid; expected one of "
                f"{[m.value for m in AutoresetMode]}"
            ) from None
        if not isinstance(copy, bool):
            raise ValueError(f"copy={copy!r} must be True (fresh observation arrays) or False (views)")
        if render_mode is not None:
            raise ValueError(f"render_mode={render_mode!r} is not supported by the vector env; expected None")
        self.options = RecEnvOptions.parse(options)
        self.simulator = sim = build_simulator(self.options, num_users=num_envs, default_device="auto")
        self.num_envs = num_envs
        self.copy = copy
        self.render_mode = None
        self.metadata = {"autoreset_mode": mode, "render_modes": []}
        self.single_observation_space = observation_space(sim)
        self.single_action_space = action_space(sim)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = action_space(sim, batch=num_envs)
        self._autoreset = np.zeros(num_envs, dtype=bool)
        self._needs_reset = True
        self._seeded = False
        self._all_valid = np.ones(num_envs, dtype=bool)
        self.info_keys = self._check_info_keys(info_keys)
        if not {"true_affinity", "candidate_affinity"} & set(self.info_keys):
            sim.track_truth = False  # nothing reads the affinities: the core skips them

    def _check_info_keys(self, info_keys: Sequence[str] | None) -> tuple[str, ...]:
        """The info keys to build: all available ones for None, else the named ones (validated)."""
        sim = self.simulator
        truth = ("true_affinity", "candidate_affinity")
        available = ("click", "engagement", "clicked_item", *truth, *sim.users.hidden_state())
        if info_keys is None:
            return tuple(key for key in available if sim.track_truth or key not in truth)
        if isinstance(info_keys, str) or not all(isinstance(key, str) for key in info_keys):
            raise ValueError(f"info_keys={info_keys!r} must be a list of key names; valid: {list(available)}")
        for key in info_keys:
            if key not in available:
                raise ValueError(f"unknown info key {key!r} in info_keys; valid: {list(available)}")
            if key in truth and not sim.track_truth:
                raise ValueError(f"info key {key!r} needs track_truth=True")
        return tuple(dict.fromkeys(info_keys))

    @property
    def autoreset_mode(self) -> AutoresetMode:
        """The mode in ``metadata["autoreset_mode"]``."""
        return self.metadata["autoreset_mode"]

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Reset all users, or only ``options["reset_mask"]`` ``(B,)`` bool rows.

        ``seed`` (an int) re-seeds the core's generator: the same seed gives the same
        trajectories for the same actions.
        """
        if seed is not None and not isinstance(seed, (int, np.integer)):
            raise ValueError(f"seed must be an int or None; got {type(seed).__name__} (one generator serves all users)")
        super().reset(seed=seed)
        options = dict(options or {})
        mask = options.pop("reset_mask", None)
        if options:
            raise ValueError(f"unknown reset option(s) {sorted(options)}; valid: ['reset_mask']")
        sim = self.simulator
        if seed is None and not self._seeded:
            seed = int(self.np_random.integers(2**62))
        if mask is None:
            self._seeded = True
            sim.reset(seed, observe=False)
            self._autoreset[:] = False
        else:
            mask = np.asarray(mask)
            if mask.shape != (self.num_envs,) or mask.dtype != np.bool_:
                raise ValueError(f"reset_mask must be a ({self.num_envs},) bool array; got {mask.shape} {mask.dtype}")
            if self._needs_reset:
                raise RuntimeError("reset(options={'reset_mask': ...}) needs a full reset() first")
            if seed is not None:
                sim.seed(int(seed), clear_candidates=False)  # other rows go on
            sim.reset_rows(torch.from_numpy(mask).to(sim.device))
            self._autoreset[mask] = False
        self._needs_reset = False
        return self._observation(), self._state_info({}, self._all_valid)

    def step(
        self, actions: Any
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        if self._needs_reset:
            raise RuntimeError("step() called before reset(); call reset() first")
        sim = self.simulator
        mode = self.autoreset_mode
        if mode == AutoresetMode.DISABLED and self._autoreset.any():
            row = int(np.argmax(self._autoreset))
            raise RuntimeError(
                f"step() called with sub-environment {row} ended and autoreset disabled; "
                "call reset(options={'reset_mask': mask}) first"
            )
        positions = check_actions(actions, sim.num_candidates, sim.slate_size, batch=self.num_envs)
        out = sim.step_array(positions) if sim.device.type == "cpu" else sim.step(torch.from_numpy(positions).to(sim.device))
        reward = out.reward.cpu().numpy().astype(np.float64)
        terminated = out.terminated.cpu().numpy()
        truncated = out.truncated.cpu().numpy()
        keys = self.info_keys
        info: dict[str, Any] = {}
        if "click" in keys:
            info["click"] = out.click.cpu().numpy()
        if "engagement" in keys:
            info["engagement"] = out.engagement.cpu().numpy().copy()
        if "clicked_item" in keys:
            info["clicked_item"] = out.clicked_item.cpu().numpy()
        if "true_affinity" in keys:
            # A fresh tensor per step that the core never writes again: no copy.
            info["true_affinity"] = out.true_affinity.cpu().numpy()
        valid = self._all_valid
        if mode == AutoresetMode.NEXT_STEP:
            restart = self._autoreset
            if restart.any():
                sim.reset_rows(torch.from_numpy(restart).to(sim.device))
                reward[restart] = 0.0
                terminated[restart] = False
                truncated[restart] = False
                valid = ~restart
                for key in ("click", "engagement", "clicked_item"):
                    if key in info:
                        info[key][restart] = 0 if key != "clicked_item" else -1
                if "true_affinity" in info:
                    info["true_affinity"][restart] = 0.0
            self._autoreset = terminated | truncated
        elif mode == AutoresetMode.SAME_STEP:
            ended = terminated | truncated
            if ended.any():
                self._add_final(info, ended)
                sim.reset_rows(torch.from_numpy(ended).to(sim.device))
        else:
            self._autoreset = terminated | truncated
        return self._observation(), reward, terminated, truncated, self._state_info(info, valid)

    def _add_final(self, info: dict[str, Any], ended: np.ndarray) -> None:
        """SAME_STEP: stash the ended rows' last observation and info before their reset."""
        rows = np.flatnonzero(ended)
        obs = self.simulator.observation_rows(rows)  # fresh (R, ...) arrays of the ended rows only
        final_obs = np.full(self.num_envs, None, dtype=object)
        for i, row in enumerate(rows):
            final_obs[row] = {key: value[i] for key, value in obs.items()}
        step_info = self._state_info(dict(info), self._all_valid)
        info["final_obs"], info["_final_obs"] = final_obs, ended.copy()
        info["final_info"] = {k: v.copy() for k, v in step_info.items() if not k.startswith("_")}
        info["final_info"].update({f"_{k}": ended.copy() for k in list(info["final_info"])})
        info["_final_info"] = ended.copy()

    def _observation(self) -> dict[str, np.ndarray]:
        return self.simulator.observation_arrays(copy=self.copy)

    def _state_info(self, info: dict[str, Any], valid: np.ndarray) -> dict[str, Any]:
        """Add the current candidates' affinities and hidden state, then ``_key`` masks."""
        sim, keys = self.simulator, self.info_keys
        if "candidate_affinity" in keys:
            info["candidate_affinity"] = sim.candidate_affinity.cpu().numpy().copy()
        for key, value in sim.users.hidden_state().items():
            if key in keys:
                info[key] = value.cpu().numpy().copy()
        for key in list(info):
            if not key.startswith("_") and key not in ("final_obs", "final_info"):
                info[f"_{key}"] = valid if key in ("click", "engagement", "clicked_item", "true_affinity") else self._all_valid
        return info
