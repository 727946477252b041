"""Training agents in the ecosystem environments: independent PPO learners and SuperSuit parameter sharing.

Read top to bottom:

- the policy protocol of the ecosystems (SB3's ``predict``, plus an optional
  ``observe(info)`` hook for privileged baselines such as the true-affinity oracle),
  `StayPolicy` (a creator that never moves) and `run_episode`;
- `PlatformScorerPolicy`: PPO policy of a platform agent, the shared scorer
  (`recsim_mm.scorer.Scorer`) applied to each of the platform's U users;
- `AgentView`: one agent's view of a ParallelEnv as a Gymnasium env, the others
  acting by fixed policies; `train_independent` trains one SB3 PPO per learning
  agent, in alternation, each against the others' current policies;
- `shared_vec_env` / `train_shared`: SuperSuit's ``pettingzoo_env_to_vec_env_v1`` +
  ``concat_vec_envs_v1`` turn the homogeneous agents into the sub-environments of
  one SB3 VecEnv, so one PPO (one set of parameters) acts for all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import gymnasium as gym
import numpy as np
import supersuit as ss
import torch
from gymnasium import spaces
from pettingzoo import ParallelEnv
from stable_baselines3 import PPO
from stable_baselines3.common.distributions import MultiCategoricalDistribution
from stable_baselines3.common.vec_env import VecEnv, VecMonitor
from supersuit.vector.sb3_vector_wrapper import SB3VecEnvWrapper

from agents.policies import ScorerActorCriticPolicy, as_scorer_input
from recsim_mm.ecosystem_metrics import EcosystemHistory

# -- policies and episodes -----------------------------------------------------------------------


def act(policy: Any, observation: Any, info: dict[str, Any], deterministic: bool = True) -> Any:
    """One agent's action: ``policy.observe(info)`` (if it has the hook), then SB3's ``predict``.

    Args:
        policy: anything with ``predict(observation, deterministic=...) -> (action, state)``
            (SB3 models, `agents.baselines` recommenders, `StayPolicy`).
        observation: the agent's observation.
        info: the agent's info (privileged baselines read truth from it).
        deterministic: passed to ``predict``.
    """
    if hasattr(policy, "observe"):
        policy.observe(info)
    action, _ = policy.predict(observation, deterministic=deterministic)
    return action


class StayPolicy:
    """A creator that never moves: the ``(q,)`` float32 zero move (the fixed-creators baseline).

    Args:
        map_dim: ``q``.
    """

    def __init__(self, map_dim: int) -> None:
        self.map_dim = map_dim

    def predict(self, observation, state=None, episode_start=None, deterministic: bool = True):
        """``(zeros (q,) float32, state)``."""
        return np.zeros(self.map_dim, dtype=np.float32), state


def run_episode(
    env: ParallelEnv,
    policies: Mapping[str, Any],
    seed: int | None = None,
    deterministic: bool = True,
) -> EcosystemHistory:
    """Play one episode of an ecosystem env with one policy per agent.

    Args:
        env: a `PlatformCompetitionEnv` or `CreatorEcosystemEnv` (any ParallelEnv
            with a ``history``).
        policies: ``{agent: policy}`` for every possible agent (see `act`).
        seed: reset seed.
        deterministic: passed to the policies' ``predict``.

    Returns:
        A copy of the episode's per-step metric records.

    Raises:
        ValueError: a policy is missing for an agent (the missing ones are named).
    """
    missing = [agent for agent in env.possible_agents if agent not in policies]
    if missing:
        raise ValueError(
            f"no policy for agent(s) {missing}; give one per agent of {env.possible_agents}"
        )
    observations, infos = env.reset(seed=seed)
    while env.agents:
        actions = {
            agent: act(policies[agent], observations[agent], infos[agent], deterministic)
            for agent in env.agents
        }
        observations, _, _, _, infos = env.step(actions)
    history = EcosystemHistory()
    history.records = list(env.history.records)
    return history


# -- the platform policy ---------------------------------------------------------------------------


class PlatformScorerPolicy(ScorerActorCriticPolicy):
    """PPO policy of a platform: the shared scorer scores each of its U users' candidates.

    Observation: a platform's ``Dict`` (leading ``U``, see
    `envs.ecosystems.platforms.PlatformCompetitionEnv`); action ``MultiDiscrete([K] * U)``.
    The scorer runs on the ``n * U`` user rows of a batch of ``n`` observations
    (logits ``(n, U, K)``); the rows of users not visiting the platform get constant
    zero logits (uniform, no gradient: their actions are ignored by the env). The
    critic reads the visitors' mean user state and the visiting share.

    Args (policy_kwargs):
        scorer_config: `recsim_mm.scorer.ScorerConfig` fields as a dict.
        item_table: ``(N, d)`` float32, required in ``ids`` mode.
        value_hidden: width of the critic's hidden layer.

    Shapes: ``forward`` on ``n`` observations returns actions ``(n, U)`` int64,
    values ``(n, 1)`` and log-probabilities ``(n,)`` float32.
    """

    def _check_spaces(self, observation_space: spaces.Space, action_space: spaces.Space) -> None:
        if (
            not isinstance(observation_space, spaces.Dict)
            or "visiting" not in observation_space.spaces
        ):
            raise ValueError(
                f"PlatformScorerPolicy needs a platform observation (Dict with 'visiting'); got {observation_space}"
            )
        nvec = getattr(action_space, "nvec", None)
        if (
            not isinstance(action_space, spaces.MultiDiscrete)
            or nvec.ndim != 1
            or len(set(nvec.tolist())) != 1
        ):
            raise ValueError(
                f"PlatformScorerPolicy needs MultiDiscrete([K] * U) actions; got {action_space}"
            )
        self.num_users, self.num_candidates = len(nvec), int(nvec[0])

    def _make_action_dist(self) -> MultiCategoricalDistribution:
        return MultiCategoricalDistribution([self.num_candidates] * self.num_users)

    def _value_input_dim(self) -> int:
        return self.scorer.config.hidden_dim + 1  # visitors' mean user state + visiting share

    def _per_user(self, obs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``(n, U, ...)`` platform observations -> ``(n * U, ...)`` per-user scorer input."""
        flat = {
            key: value.reshape(-1, *value.shape[2:])
            for key, value in obs.items()
            if key != "visiting"
        }
        return as_scorer_input(flat, self.ids_mode)

    def _logits_and_values(self, obs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        visiting = obs["visiting"].float()
        n, u = visiting.shape
        logits, user_state = self.scorer.score_with_state(self._per_user(obs))
        logits = logits.view(n, u, -1) * visiting.unsqueeze(-1)
        weights = visiting / visiting.sum(1, keepdim=True).clamp_min(1.0)
        platform_state = (user_state.view(n, u, -1) * weights.unsqueeze(-1)).sum(1)
        values = self._value(torch.cat([platform_state, visiting.mean(1, keepdim=True)], dim=1))
        return logits.reshape(n, -1), values

    def get_distribution(self, obs):
        logits, _ = self._logits_and_values(obs)
        return self.action_dist.proba_distribution(action_logits=logits)

    def predict_values(self, obs) -> torch.Tensor:
        return self._logits_and_values(obs)[1]


# -- independent learners ------------------------------------------------------------------------------


class AgentView(gym.Env):
    """One agent's view of an ecosystem ParallelEnv, as a single-agent Gymnasium env.

    ``step(action)`` gathers the other live agents' actions from their policies
    (`act`), steps the parallel env and returns this agent's observation, reward,
    termination, truncation and info. The view's episode ends when this agent
    terminates or is truncated.

    Args:
        parallel_env: the ecosystem (owned by the view from now on).
        agent: the agent this view belongs to.
        others: ``{agent: policy}`` for every other possible agent; may be given
            later by `set_others` (which also replaces them between training rounds),
            but before the first `step`.
        others_deterministic: passed to the other policies' ``predict``.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        parallel_env: ParallelEnv,
        agent: str,
        others: Mapping[str, Any] | None = None,
        others_deterministic: bool = False,
    ) -> None:
        if agent not in parallel_env.possible_agents:
            raise ValueError(
                f"unknown agent {agent!r}; possible agents: {parallel_env.possible_agents}"
            )
        self.parallel_env, self.agent = parallel_env, agent
        self.observation_space = parallel_env.observation_space(agent)
        self.action_space = parallel_env.action_space(agent)
        self.others_deterministic = others_deterministic
        self.others: dict[str, Any] = {}
        if others is not None:
            self.set_others(others)
        self._observations: dict[str, Any] = {}
        self._infos: dict[str, dict[str, Any]] = {}

    def set_others(self, others: Mapping[str, Any]) -> None:
        """Replace the other agents' policies (one per other possible agent)."""
        needed = [a for a in self.parallel_env.possible_agents if a != self.agent]
        missing = [a for a in needed if a not in others]
        if missing:
            raise ValueError(f"AgentView({self.agent!r}) needs a policy for agent(s) {missing}")
        self.others = dict(others)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._observations, self._infos = self.parallel_env.reset(seed=seed, options=options)
        return self._observations[self.agent], self._infos[self.agent]

    def step(self, action):
        env = self.parallel_env
        if not self.others and len(env.possible_agents) > 1:
            raise RuntimeError(
                f"AgentView({self.agent!r}).step before set_others(): the other agents have no policy"
            )
        actions = {self.agent: action}
        for other in env.agents:
            if other != self.agent:
                actions[other] = act(
                    self.others[other],
                    self._observations[other],
                    self._infos[other],
                    self.others_deterministic,
                )
        observations, rewards, terminations, truncations, infos = env.step(actions)
        self._observations, self._infos = observations, infos
        terminated = bool(terminations[self.agent])
        truncated = bool(truncations[self.agent]) or (not env.agents and not terminated)
        return (
            observations[self.agent],
            float(rewards[self.agent]),
            terminated,
            truncated,
            infos[self.agent],
        )


def train_independent(
    env_fn: Callable[[], ParallelEnv],
    make_model: Callable[[str, gym.Env], PPO],
    fixed: Mapping[str, Any] | None = None,
    rounds: int = 2,
    steps_per_round: int = 1024,
    learners: list[str] | None = None,
) -> dict[str, PPO]:
    """Independent PPO learners, one per learning agent, trained in alternation.

    In each round every learner trains for ``steps_per_round`` steps of its own
    `AgentView` (its own copy of the env), while the other agents act by their
    current policies: learners by their latest PPO (stochastic), fixed agents by
    ``fixed``. Each learner has its own networks and optimizer.

    Args:
        env_fn: builds a fresh ecosystem ParallelEnv (called once per learner).
        make_model: ``(agent, view_env) -> PPO`` (policy, hyper-parameters, seed).
        fixed: ``{agent: policy}`` for the agents that do not learn.
        rounds: alternation rounds.
        steps_per_round: environment steps per learner per round.
        learners: learning agents (default: every possible agent not in ``fixed``).

    Returns:
        ``{agent: trained PPO}``.
    """
    fixed = dict(fixed or {})
    probe = env_fn()
    learners = (
        learners if learners is not None else [a for a in probe.possible_agents if a not in fixed]
    )
    unknown = [a for a in [*learners, *fixed] if a not in probe.possible_agents]
    if unknown:
        raise ValueError(f"unknown agent(s) {unknown}; possible agents: {probe.possible_agents}")
    uncovered = [a for a in probe.possible_agents if a not in learners and a not in fixed]
    if uncovered:
        raise ValueError(f"agent(s) {uncovered} neither learn nor have a fixed policy")
    views = {agent: AgentView(env_fn(), agent) for agent in learners}
    models = {agent: make_model(agent, views[agent]) for agent in learners}
    for _ in range(rounds):
        for agent in learners:
            views[agent].set_others(
                {
                    other: models.get(other, fixed.get(other))
                    for other in probe.possible_agents
                    if other != agent
                }
            )
            models[agent].learn(steps_per_round, reset_num_timesteps=False)
    return models


# -- shared parameters (SuperSuit) -------------------------------------------------------------------------


class _SeedableSuperSuitVecEnv(SB3VecEnvWrapper):
    """SuperSuit's SB3 adapter without the crash of SB3 2.x's ``seed`` call.

    SB3 >= 2 seeds a VecEnv by ``venv.seed(seed)`` then ``reset()``; SuperSuit's
    wrapper forwards ``seed`` to its ConcatVecEnv, which has none. Here the seed is
    kept for the next reset, which passes it on (copy i gets ``seed + i``).
    """

    def __init__(self, venv) -> None:
        super().__init__(venv)
        self._next_seed: int | None = None

    def seed(self, seed: int | None = None) -> list[int | None]:
        self._next_seed = seed
        return [None if seed is None else seed + i for i in range(self.num_envs)]

    def reset(self):
        observations, self.reset_infos = self.venv.reset(seed=self._next_seed)
        self._next_seed = None
        return observations


def shared_vec_env(parallel_env: ParallelEnv, num_copies: int = 1) -> VecEnv:
    """The homogeneous agents of ``num_copies`` copies of an ecosystem as one SB3 VecEnv.

    SuperSuit's ``pettingzoo_env_to_vec_env_v1`` makes each agent a sub-environment
    (``num_envs = copies * agents``); ``concat_vec_envs_v1`` stacks the copies (each
    a pickled copy of ``parallel_env``, reset with ``seed + i``); SB3's `VecMonitor`
    records episode returns. Every agent must stay live for the whole episode (no
    platform exits).
    """
    vec = ss.pettingzoo_env_to_vec_env_v1(parallel_env)
    vec = ss.concat_vec_envs_v1(vec, num_copies, num_cpus=0, base_class="gymnasium")
    return VecMonitor(_SeedableSuperSuitVecEnv(vec))


def train_shared(
    parallel_env: ParallelEnv,
    total_steps: int,
    policy: str | type = "MlpPolicy",
    num_copies: int = 1,
    seed: int = 0,
    **ppo_kwargs: Any,
) -> PPO:
    """One PPO whose parameters all agents share (SuperSuit, see `shared_vec_env`).

    Args:
        parallel_env: the ecosystem (homogeneous agents).
        total_steps: agent-steps to train (SB3 counts each agent's step).
        policy: SB3 policy (``"MlpPolicy"`` for creators, `PlatformScorerPolicy` for
            platforms with ``policy_kwargs``).
        num_copies: environment copies stepped together.
        seed: seeds PPO and the environment copies.
        **ppo_kwargs: any other `stable_baselines3.PPO` argument.
    """
    venv = shared_vec_env(parallel_env, num_copies)
    model = PPO(policy, venv, seed=seed, **ppo_kwargs)
    model.learn(total_steps)
    return model
