"""`SB3VecEnv`: the native batched environment as a stable-baselines3 `VecEnv`, no subprocesses.

SB3 algorithms step a `VecEnv`; wrapping B copies of `RecEnv` in `DummyVecEnv` would
loop over users in Python. This adapter hands SB3 the one-batch `RecVectorEnv`
directly, in Gymnasium's ``SAME_STEP`` autoreset mode, which is what SB3 expects: a
finished row is reset within the step, its last observation goes to
``infos[i]["terminal_observation"]`` and ``infos[i]["TimeLimit.truncated"]`` tells a
truncation (bootstrap) from a termination.

Example:

```text
from stable_baselines3 import PPO
from agents.sb3_vec_env import SB3VecEnv
venv = SB3VecEnv("recsim_mm/Satiation-v0", num_envs=64, obs_mode="embeddings")
PPO("MultiInputPolicy", venv).learn(10_000)
```
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode
from stable_baselines3.common.vec_env import VecEnv
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices, VecEnvObs, VecEnvStepReturn

import envs  # noqa: F401  (registers the recsim_mm ids)
from envs.vector_env import RecVectorEnv


class SB3VecEnv(VecEnv):
    """Present a `RecVectorEnv` (B users in one torch batch) to stable-baselines3.

    Args:
        env_id: a registered id (``"recsim_mm/Satiation-v0"``); its registered
            options apply, overridden by ``options``.
        num_envs: ``B``.
        **options: environment options (see `envs.RecEnvOptions`).

    Attributes:
        venv: the underlying `RecVectorEnv` (``SAME_STEP`` autoreset).
        last_info: the vector env's batched info dict of the last step (arrays with a
            leading B: ``click``, ``engagement``, ...), for metric callbacks.

    ``get_attr`` / ``env_method`` act on that single batched env and return its
    answer once per row; ``set_attr`` sets it for all rows (per-row indices other
    than all rows are rejected: the rows share one simulator).
    """

    def __init__(self, env_id: str, num_envs: int, **options: Any) -> None:
        spec = gym.spec(env_id)
        kwargs = {**spec.kwargs, **options}
        self.venv = RecVectorEnv(num_envs, autoreset_mode=AutoresetMode.SAME_STEP, **kwargs)
        super().__init__(num_envs, self.venv.single_observation_space, self.venv.single_action_space)
        self._actions: np.ndarray | None = None

    def reset(self) -> VecEnvObs:
        """Reset every row; uses the seed from `seed()` if one was set (then forgets it)."""
        seed = self._seeds[0]
        obs, info = self.venv.reset(seed=seed)
        self._reset_seeds()
        self._reset_options()
        self.reset_infos = [{} for _ in range(self.num_envs)]
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self) -> VecEnvStepReturn:
        if self._actions is None:
            raise RuntimeError("step_wait() called without step_async(actions)")
        obs, reward, terminated, truncated, info = self.venv.step(self._actions)
        self._actions = None
        # batched arrays (click, engagement, clicked_item, ...) for metric callbacks
        self.last_info = info
        dones = terminated | truncated
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        if dones.any():
            final_obs = info["final_obs"]
            for row in np.flatnonzero(dones):
                infos[row]["terminal_observation"] = final_obs[row]
                infos[row]["TimeLimit.truncated"] = bool(truncated[row] and not terminated[row])
        return obs, reward.astype(np.float32), dones, infos

    def close(self) -> None:
        self.venv.close()

    def _rows(self, indices: VecEnvIndices) -> list[int]:
        return list(self._get_indices(indices))

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        value = getattr(self.venv, attr_name)
        return [value for _ in self._rows(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        if sorted(self._rows(indices)) != list(range(self.num_envs)):
            raise ValueError(
                f"set_attr({attr_name!r}) on a subset of rows is not possible: all "
                f"{self.num_envs} rows share one batched simulator"
            )
        setattr(self.venv, attr_name, value)

    def env_method(self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **method_kwargs: Any) -> list[Any]:
        result = getattr(self.venv, method_name)(*method_args, **method_kwargs)
        return [result for _ in self._rows(indices)]

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        return [False for _ in self._rows(indices)]

    def get_images(self) -> Sequence[np.ndarray | None]:
        return [None for _ in range(self.num_envs)]
