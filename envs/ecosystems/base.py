"""What both ecosystem environments share: the user population, action-dict checks, seeding, render.

An ecosystem environment is a PettingZoo `ParallelEnv` whose agents (platforms or
creators) act on one population of ``U`` simulated users held by ONE batched
`recsim_mm.simulator.Simulator` (B = U): no Python loop over users. Users whose
session ends (the user model's ``done``: they left after too many disappointments or
spent their time budget) leave the ecosystem and a newcomer takes their row, so the
population size stays ``U``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from pettingzoo import ParallelEnv

from envs.rec_env import RecEnvOptions, build_simulator
from recsim_mm.ecosystem_metrics import EcosystemHistory
from recsim_mm.simulator import Simulator

#: `RecEnvOptions` fields an ecosystem env accepts as simulation options (the others,
#: e.g. ``reward``, ``slate_size``, ``max_steps``, are defined by the ecosystem itself).
SIMULATION_OPTIONS = (
    "user_model",
    "user_params",
    "item_space",
    "item_space_options",
    "obs_mode",
    "num_candidates",
    "history_length",
    "candidates",
    "track_truth",
    "device",
)


def check_count(name: str, value: Any, low: int) -> int:
    """``value`` as an int, or `ValueError` naming ``name`` when it is not an integer ``>= low``."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name}={value!r} must be an integer >= {low}")
    return int(value)


def short_repr(value: Any) -> str:
    """A short printable form of an action for error messages (at most ~120 characters)."""
    text = np.array2string(value, threshold=12) if isinstance(value, np.ndarray) else repr(value)
    return text if len(text) < 120 else text[:117] + "..."


def build_population(
    options: dict[str, Any],
    num_users: int,
    max_steps: int,
    allowed: tuple[str, ...] = SIMULATION_OPTIONS,
    fixed: dict[str, Any] | None = None,
) -> Simulator:
    """The simulator core holding the ``U`` users of an ecosystem.

    Args:
        options: simulation options (a subset of `RecEnvOptions` fields, ``allowed``).
        num_users: ``U``.
        max_steps: the episode length (the core's truncation step).
        allowed: option names this environment accepts.
        fixed: options the environment sets itself (e.g. ``num_candidates`` for
            creators), not given by the user.

    Raises:
        ValueError: an option the environment does not accept (the accepted ones are
            listed), or any invalid option value (see `RecEnvOptions`).
    """
    for name in options:
        if name not in allowed:
            raise ValueError(
                f"unknown ecosystem option {name!r}; accepted simulation options: {list(allowed)}"
            )
    parsed = RecEnvOptions.parse({**options, **(fixed or {}), "max_steps": max_steps})
    return build_simulator(parsed, num_users=num_users, default_device="cpu")


class EcosystemEnv(ParallelEnv):
    """Base class of the ecosystem environments (see the module docstring).

    Subclasses build ``self.simulator``, set ``possible_agents`` and the per-agent
    spaces, and implement `_reset_ecosystem`, `_step_ecosystem`, `_check_agent_action`
    and `_summary`. This class checks the action dict (missing, unknown and dead
    agents) before anything changes, handles seeding and renders.

    Args:
        render_mode: ``None``, ``"ansi"`` (`render` returns the text summary) or
            ``"human"`` (`render` prints it).
    """

    metadata: ClassVar[dict[str, Any]] = {
        "render_modes": ["ansi", "human"],
        "is_parallelizable": True,
    }

    def __init__(self, render_mode: str | None = None) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode={render_mode!r} is not supported; expected None or one of {self.metadata['render_modes']}"
            )
        self.render_mode = render_mode
        self.agents: list[str] = []
        self.history = EcosystemHistory()
        self.num_steps = 0
        self._seeded = False
        self._observation_spaces: dict[str, Any] = {}
        self._action_spaces: dict[str, Any] = {}

    # -- spaces (the same object on every call, as PettingZoo requires) -------------------
    def observation_space(self, agent: str):
        """The observation space of ``agent`` (see the subclass docstring)."""
        return self._space(self._observation_spaces, agent)

    def action_space(self, agent: str):
        """The action space of ``agent`` (see the subclass docstring)."""
        return self._space(self._action_spaces, agent)

    def _space(self, table: dict[str, Any], agent: str):
        if agent not in table:
            raise KeyError(f"unknown agent {agent!r}; possible agents: {self.possible_agents}")
        return table[agent]

    # -- episode ----------------------------------------------------------------------------
    def reset(
        self, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        """Start an episode: a fresh user population and fresh agent state.

        Args:
            seed: re-seeds the simulator's generator, the one source of randomness
                (same seed and same actions: same episode). ``None`` continues the
                stream (the first unseeded reset draws a seed from OS entropy).
            options: no reset options exist; given keys are reported by a warning
                (PettingZoo's API test passes one) and otherwise unused.

        Returns:
            ``(observations, infos)``, one entry per agent.
        """
        if seed is not None and not isinstance(seed, (int, np.integer)):
            raise ValueError(f"seed must be an int or None; got {type(seed).__name__}")
        if options:
            warnings.warn(
                f"{type(self).__name__}.reset has no options; ignoring {sorted(options)}",
                stacklevel=2,
            )
        if seed is None and not self._seeded:
            seed = int(np.random.default_rng().integers(2**62))
        self._seeded = True
        if seed is not None:
            # What Simulator.reset(seed) does first, done here so that subclasses can
            # draw their own initial state from the re-seeded generator before the users.
            self.simulator.seed(int(seed))
        self.agents = list(self.possible_agents)
        self.num_steps = 0
        self.history.clear()
        return self._reset_ecosystem()

    def step(self, actions: Mapping[str, Any]):
        """Advance every user by one step with one action per live agent.

        Args:
            actions: ``{agent: action}`` for exactly the live agents (``self.agents``).

        Returns:
            ``(observations, rewards, terminations, truncations, infos)`` keyed by the
            agents live at the start of the step; agents that terminated or were
            truncated leave ``self.agents``.

        Raises:
            RuntimeError: the episode has ended (or never started); call `reset`.
            ValueError: an action is missing for a live agent, given for an unknown
                or a no-longer-active agent, or invalid; the message names the agent
                and the value. Nothing changes in that case.
        """
        if not self.agents:
            raise RuntimeError(
                f"step() called on a {type(self).__name__} with no live agents (the episode ended "
                "or reset() was never called); call reset() first"
            )
        checked = self._check_actions(actions)
        return self._step_ecosystem(checked)

    def _check_actions(self, actions: Mapping[str, Any]) -> dict[str, Any]:
        """Validate the action dict as a whole, then each agent's action (see `step`)."""
        if not isinstance(actions, Mapping):
            raise ValueError(
                f"actions must be a dict {{agent: action}}; got {type(actions).__name__} ({short_repr(actions)})"
            )
        live = set(self.agents)
        for agent, action in actions.items():
            if agent not in self.possible_agents:
                raise ValueError(
                    f"action given for unknown agent {agent!r} (action={short_repr(action)}); "
                    f"possible agents: {self.possible_agents}"
                )
            if agent not in live:
                raise ValueError(
                    f"action given for agent {agent!r}, which is no longer active (it terminated or was "
                    f"truncated) (action={short_repr(action)}); live agents: {self.agents}"
                )
        missing = [agent for agent in self.agents if agent not in actions]
        if missing:
            raise ValueError(
                f"no action for live agent(s) {missing}; every live agent must act each step "
                f"(live agents: {self.agents})"
            )
        checked = {}
        for agent in self.agents:
            try:
                checked[agent] = self._check_agent_action(agent, actions[agent])
            except ValueError as error:
                raise ValueError(f"action of agent {agent!r}: {error}") from None
        return checked

    # -- hooks --------------------------------------------------------------------------------
    def _reset_ecosystem(self) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        raise NotImplementedError

    def _step_ecosystem(self, actions: dict[str, Any]):
        raise NotImplementedError

    def _check_agent_action(self, agent: str, action: Any) -> Any:
        raise NotImplementedError

    def _summary(self) -> str:
        raise NotImplementedError

    # -- users -------------------------------------------------------------------------------
    def _replace_departed(self, departed: torch.Tensor) -> torch.Tensor:
        """Newcomers take the rows of users whose session ended (``(U,)`` bool); returns their rows."""
        rows = departed.nonzero().squeeze(1)
        self.simulator.reset_rows(rows)
        return rows

    # -- rendering ----------------------------------------------------------------------------
    def render(self) -> str | None:
        """A short text summary of the last step: returned (``"ansi"``) or printed (``"human"``)."""
        if self.render_mode is None:
            warnings.warn(
                f"{type(self).__name__}.render() called with render_mode=None; nothing to render",
                stacklevel=2,
            )
            return None
        text = self._summary()
        if self.render_mode == "human":
            print(text)
            return None
        return text

    def close(self) -> None:
        """Nothing to release (the simulator holds only tensors)."""
