"""Stable-Baselines3 policies built on the shared `recsim_mm.scorer.Scorer`.

One scorer network serves three roles (the one-scorer design, docs/agents.md):

- `ScorerActorCriticPolicy` (PPO): actor logits over the K candidates = the scorer's
  log expected reward divided by a temperature, ``log(P(click) x E[minutes | click]) / T``
  (``log P(click) / T`` for a click reward), so the policy's most likely action is the
  candidate the greedy ranker picks; critic = a separate head on the detached user
  state, with its output normalised (PopArt) so it can follow returns of any scale.
- `ScorerDQNPolicy` (DQN): ``Q(s, i) = V(s) + exp(a) x expected reward(s, i)``, with the
  state value ``V`` starting at 0 and ``a`` at 0: the initial Q-values are the expected
  reward itself, the greedy ranker's scores.
- The ranker (recsim_mm.ranker) trains the same scorer on logged clicks and minutes, so
  warm start is ``policy.scorer.load_state_dict(ranker_state_dict)``: a warm agent
  starts as the greedy baseline it is compared with.

Both observation modes work: ``embeddings`` (vectors in the observation) and ``ids``
(item rows; the policy holds the frozen item table and gathers). SB3 stores
observations as float32 in its buffers, so ids come back as floats and are cast to
int64 here (exact for tables below 2**24 items).
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.distributions import CategoricalDistribution, Distribution
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.dqn.policies import DQNPolicy, QNetwork
from torch import nn

from recsim_mm.observation import CANDIDATE_ITEMS, HISTORY_ITEMS
from recsim_mm.sampling import gumbel_top_k, plackett_luce_log_prob_and_entropy
from recsim_mm.scorer import Scorer, ScorerConfig

ID_KEYS = (HISTORY_ITEMS, CANDIDATE_ITEMS)


class _PassThrough(BaseFeaturesExtractor):
    """SB3 requires a features extractor; the scorer reads the observation dict itself."""

    def __init__(self, observation_space: spaces.Dict):
        super().__init__(observation_space, features_dim=1)

    def forward(self, observations: Any) -> Any:
        return observations


def is_ids_mode(observation_space: spaces.Dict) -> bool:
    """True when ``candidate_items`` holds item rows (integer Box) rather than vectors."""
    return np.issubdtype(observation_space[CANDIDATE_ITEMS].dtype, np.integer)


def build_scorer(
    observation_space: spaces.Dict,
    scorer_config: dict,
    item_table: torch.Tensor | None,
    item_features: torch.Tensor | None = None,
) -> Scorer:
    """The scorer for an environment's observation space.

    Args:
        observation_space: the env's ``Dict`` observation space.
        scorer_config: `ScorerConfig` fields as a dict (``d_text``/``d_image`` required).
        item_table: ``(N, d)`` float32 fused vectors; required in ``ids`` mode and with
            item features.
        item_features: ``(N, F)`` float32 item metadata when the config lists item
            features (`recsim_mm.item_features.item_feature_table`).

    Raises:
        ValueError: ``ids`` mode without an item table, or a table/config width mismatch.
    """
    config = ScorerConfig.from_dict(scorer_config)
    if is_ids_mode(observation_space) and item_table is None:
        raise ValueError(
            "the observation space is in 'ids' mode (integer candidate_items) but no "
            "item_table was given; pass policy_kwargs=dict(item_table=item_space.fused, ...)"
        )
    return Scorer(config, item_table=item_table, item_features=item_features)


def as_scorer_input(obs: dict[str, torch.Tensor], ids_mode: bool) -> dict[str, torch.Tensor]:
    """Undo SB3's float32 storage of item ids (``(B, H)``/``(B, K)`` -> int64)."""
    if not ids_mode:
        return obs
    return {k: (v.long() if k in ID_KEYS else v) for k, v in obs.items()}


class PlackettLuceDistribution(Distribution):
    """Slates of S distinct candidates, drawn without replacement from ``softmax(logits)``.

    Position 0 is drawn from the softmax over all K candidates, position 1 from the
    softmax over the remaining ones, and so on (the Plackett-Luce model), so a sampled
    slate never repeats a candidate, as the slate environments require. Sampling uses
    the Gumbel top-S trick, which draws from exactly this model; the mode is the top-S
    candidates by logit. Sampling and scoring are `recsim_mm.sampling`'s (`gumbel_top_k`,
    `plackett_luce_log_prob_and_entropy`), shared with the logging policies.

    ``log_prob(actions)`` is the exact log-probability of the ordered slate. The exact
    entropy sums over all K!/(K-S)! slates, so ``entropy()`` returns the chain-rule
    estimate along the slate last given to ``log_prob`` (or the mode):
    ``sum_s H(softmax over the candidates not in slate[:s])``; with slates drawn from
    the policy it is unbiased, which is what PPO's entropy bonus needs.

    Shapes: logits ``(B, K)`` float32; actions ``(B, S)`` int64 positions.
    """

    def __init__(self, num_candidates: int, slate_size: int):
        super().__init__()
        if not 1 <= slate_size <= num_candidates:
            raise ValueError(f"slate_size={slate_size} must be in [1, K={num_candidates}]")
        self.num_candidates, self.slate_size = num_candidates, slate_size
        self.logits: torch.Tensor | None = None
        self._entropy: torch.Tensor | None = None

    def proba_distribution_net(self, *args, **kwargs) -> nn.Module:
        """Not used: the scorer produces the logits."""
        return nn.Identity()

    def proba_distribution(self, action_logits: torch.Tensor) -> PlackettLuceDistribution:
        self.logits = action_logits
        self._entropy = None
        return self

    def log_prob(self, actions: torch.Tensor) -> torch.Tensor:
        slates = actions.long().reshape(-1, self.slate_size)
        log_prob, self._entropy = plackett_luce_log_prob_and_entropy(self.logits, slates)
        return log_prob

    def entropy(self) -> torch.Tensor:
        if self._entropy is None:
            self._entropy = plackett_luce_log_prob_and_entropy(self.logits, self.mode())[1]
        return self._entropy

    def sample(self) -> torch.Tensor:
        return gumbel_top_k(self.logits, self.slate_size)

    def mode(self) -> torch.Tensor:
        return self.logits.topk(self.slate_size, dim=-1).indices

    def actions_from_params(self, action_logits: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        self.proba_distribution(action_logits)
        return self.get_actions(deterministic=deterministic)

    def log_prob_from_params(self, action_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        actions = self.actions_from_params(action_logits)
        return actions, self.log_prob(actions)


def candidate_action_distribution(action_space: spaces.Space) -> Distribution:
    """The action distribution over candidates for ``Discrete(K)`` or a slate ``MultiDiscrete([K] * S)``.

    Raises:
        ValueError: any other action space (named).
    """
    if isinstance(action_space, spaces.Discrete):
        return CategoricalDistribution(int(action_space.n))
    if isinstance(action_space, spaces.MultiDiscrete) and action_space.nvec.ndim == 1 and len(
        set(action_space.nvec.tolist())
    ) == 1:
        return PlackettLuceDistribution(int(action_space.nvec[0]), len(action_space.nvec))
    raise ValueError(
        f"the scorer policies act on Discrete(K) or slate MultiDiscrete([K] * S) actions; got {action_space}"
    )


#: Objectives the scorer policies rank by (the environment's reward).
OBJECTIVES = ("engagement", "click")


def critic_input(log_reward: torch.Tensor, user_state: torch.Tensor) -> torch.Tensor:
    """The critics' input, detached from the actor: the user state and the candidates'
    log expected reward summarised (max, log-sum-exp, mean), ``(B, h + 3)`` float32.

    Args:
        log_reward: ``(B, K)`` the scorer's log expected reward of each candidate.
        user_state: ``(B, h)`` the scorer's user state.
    """
    detached = log_reward.detach()
    summary = torch.stack([detached.amax(-1), detached.logsumexp(-1), detached.mean(-1)], dim=-1)
    return torch.cat([user_state.detach(), summary], dim=-1)


class ValueNormalizer(nn.Module):
    """PopArt-style output normalisation of a critic (van Hasselt et al., 2016).

    The critic's last layer predicts ``(V - mean) / std``; `update` moves ``mean`` and
    ``std`` toward the statistics of new returns (an exponential moving average with
    rate ``beta``) and rescales the last layer so every prediction is unchanged by the
    update. Returns of ~100 minutes then train a unit-scale head instead of saturating it.
    ``mean`` and ``std`` are buffers (saved with the policy). Units: the reward's (minutes).

    Args:
        layer: the critic's last ``nn.Linear(., 1)``.
        beta: moving-average rate per `update` in (0, 1].
    """

    def __init__(self, layer: nn.Linear, beta: float = 0.1):
        super().__init__()
        # not a submodule: the layer's weights live (and are saved) in the critic
        object.__setattr__(self, "layer", layer)
        self.beta = beta
        self.register_buffer("mean", torch.zeros(1))
        self.register_buffer("second_moment", torch.ones(1))
        self.register_buffer("initialised", torch.zeros(1))

    @property
    def std(self) -> torch.Tensor:
        """``(1,)`` float32 standard deviation of the returns, at least 1e-3."""
        return (self.second_moment - self.mean**2).clamp_min(1e-6).sqrt()

    def denormalise(self, normalised: torch.Tensor) -> torch.Tensor:
        """Values in reward units from the head's normalised output (any shape)."""
        return normalised * self.std + self.mean

    @torch.no_grad()
    def update(self, returns: torch.Tensor) -> None:
        """Fold a rollout's ``returns`` (any shape, reward units) into the statistics,
        preserving the critic's outputs."""
        old_mean, old_std = self.mean.clone(), self.std.clone()
        batch_mean, batch_second = returns.float().mean(), (returns.float() ** 2).mean()
        beta = 1.0 if not bool(self.initialised) else self.beta  # the first rollout sets the scale
        self.mean.mul_(1 - beta).add_(beta * batch_mean)
        self.second_moment.mul_(1 - beta).add_(beta * batch_second)
        self.initialised.fill_(1.0)
        new_std = self.std
        self.layer.weight.mul_(old_std / new_std)
        self.layer.bias.mul_(old_std).add_(old_mean - self.mean).div_(new_std)


class ScorerActorCriticPolicy(ActorCriticPolicy):
    """PPO policy: expected-reward logits over candidates, a normalised critic on the user state.

    Actor: ``logits = log(expected reward) / temperature`` from the scorer's click and
    engagement heads (`recsim_mm.scorer.Scorer.log_expected_reward`): the action
    distribution is ``pi(i) ~ expected_reward_i ** (1 / temperature)``, so its mode is the
    greedy ranker's choice and a warm-started policy starts as the greedy baseline.

    Critic: an MLP on the scorer's user state and the candidates' log expected reward
    (max, log-sum-exp, mean), all detached: the value loss never moves the actor's
    scorer, which keeps the warm start intact and keeps returns of ~100 minutes from
    saturating a shared trunk. Its output is normalised (`ValueNormalizer`) when
    ``normalize_values`` is on.

    Args (policy_kwargs):
        scorer_config: `ScorerConfig` fields as a dict.
        item_table: ``(N, d)`` float32, required in ``ids`` mode and with item features.
        item_features: ``(N, F)`` float32 item metadata when the config lists item features.
        objective: ``"engagement"`` (minutes) or ``"click"``: the environment's reward.
        temperature: ``T > 0`` of the actor's logits (log-reward units).
        value_hidden: width of the critic's hidden layers.
        normalize_values: PopArt normalisation of the critic's output.
        value_lr_scale: the critic's learning rate over the actor's (its own optimizer
            parameter group, ``lr_scale``; `agents.ppo.PriorRegularizedPPO` keeps it when
            the schedule updates the rate): a critic learned from scratch beside a
            warm-started actor needs larger steps than the actor should take.

    Actions: ``Discrete(K)`` (a categorical over the candidates) or a slate
    ``MultiDiscrete([K] * S)`` (`PlackettLuceDistribution`: S distinct candidates drawn
    without replacement from the same scores).

    Shapes: for a batch of B observations, ``forward`` returns actions ``(B,)`` (or
    ``(B, S)``) int64, values ``(B, 1)`` float32 (reward units) and log-probabilities ``(B,)``.
    """

    def __init__(
        self,
        observation_space: spaces.Dict,
        action_space: spaces.Discrete,
        lr_schedule,
        scorer_config: dict | None = None,
        item_table: torch.Tensor | None = None,
        item_features: torch.Tensor | None = None,
        objective: str = "engagement",
        temperature: float = 0.5,
        value_hidden: int = 64,
        normalize_values: bool = True,
        value_lr_scale: float = 1.0,
        **kwargs: Any,
    ):
        if scorer_config is None:
            raise ValueError(f"{type(self).__name__} needs policy_kwargs['scorer_config']")
        if not (isinstance(value_lr_scale, int | float) and value_lr_scale > 0):
            raise ValueError(f"value_lr_scale={value_lr_scale!r}; expected a number > 0")
        self._value_lr_scale = float(value_lr_scale)
        if objective not in OBJECTIVES:
            raise ValueError(f"objective={objective!r}; expected one of {OBJECTIVES}")
        if not (isinstance(temperature, int | float) and temperature > 0):
            raise ValueError(f"temperature={temperature!r}; expected a number > 0")
        self._check_spaces(observation_space, action_space)  # refuse bad spaces early
        self._scorer_config = dict(scorer_config)
        self._item_table = item_table
        self._item_features = item_features
        self.objective, self.temperature = objective, float(temperature)
        self._value_hidden = value_hidden
        self._normalize_values = normalize_values
        self.ids_mode = is_ids_mode(observation_space)
        kwargs.setdefault("features_extractor_class", _PassThrough)
        kwargs["ortho_init"] = False  # the scorer has its own initialisation (and warm start)
        super().__init__(observation_space, action_space, lr_schedule, **kwargs)

    # Hooks a subclass overrides to act on other spaces over the same scorer
    # (e.g. agents.ecosystem_training.PlatformScorerPolicy).

    def _check_spaces(self, observation_space: spaces.Space, action_space: spaces.Space) -> None:
        """Raise ``ValueError`` naming a space this policy cannot act on."""
        candidate_action_distribution(action_space)

    def _make_action_dist(self) -> Distribution:
        """The action distribution the scorer's logits parametrise."""
        return candidate_action_distribution(self.action_space)

    def _value_input_dim(self) -> int:
        """Width of the critic's input: the user state and 3 statistics of the candidates' log reward."""
        return self.scorer.config.hidden_dim + 3

    def _build(self, lr_schedule) -> None:
        self.scorer = build_scorer(self.observation_space, self._scorer_config, self._item_table,
                                   self._item_features)
        if self.objective == "engagement" and self.scorer.engagement_head is None:
            raise ValueError("objective='engagement' needs a scorer with the engagement head; "
                             "set ScorerConfig.engagement_head=True or objective='click'")
        width = self._value_hidden
        last = nn.Linear(width, 1)
        self.value_net = nn.Sequential(
            nn.Linear(self._value_input_dim(), width), nn.GELU(), nn.Linear(width, width), nn.GELU(), last,
        )
        self.value_normalizer = ValueNormalizer(last) if self._normalize_values else None
        self.action_dist = self._make_action_dist()
        critic = {id(p) for p in self.value_net.parameters()}
        groups = [{"params": [p for p in self.parameters() if id(p) not in critic], "lr_scale": 1.0},
                  {"params": list(self.value_net.parameters()), "lr_scale": self._value_lr_scale}]
        self.optimizer = self.optimizer_class(groups, lr=lr_schedule(1), **self.optimizer_kwargs)
        for group in self.optimizer.param_groups:
            group["lr"] *= group["lr_scale"]

    def _actor(self, obs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Actor logits ``(B, K)`` and the critic's input ``(B, h + 3)`` (detached)."""
        log_reward, user_state = self.scorer.log_expected_reward(as_scorer_input(obs, self.ids_mode), self.objective)
        return log_reward / self.temperature, critic_input(log_reward, user_state)

    def _value(self, critic_input: torch.Tensor) -> torch.Tensor:
        """``(B, 1)`` state values in reward units."""
        value = self.value_net(critic_input)
        return self.value_normalizer.denormalise(value) if self.value_normalizer is not None else value

    def _logits_and_values(self, obs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        logits, critic_input = self._actor(obs)
        return logits, self._value(critic_input)

    def forward(self, obs, deterministic: bool = False):
        logits, values = self._logits_and_values(obs)
        distribution = self.action_dist.proba_distribution(action_logits=logits)
        actions = distribution.get_actions(deterministic=deterministic)
        return actions, values, distribution.log_prob(actions)

    def set_prior(self, prior: Scorer) -> None:
        """Hold a frozen copy of ``prior`` (the ranker's scorer) for `evaluate_actions_with_kl`.

        `agents.ppo.PriorRegularizedPPO` adds ``kl_coef * KL(pi || prior policy)`` to PPO's
        loss as its own term, where the prior policy is the same expected-reward softmax
        (same objective and temperature) on the prior's scores. The copy is outside the
        optimizer (its weights are saved with the policy's ``state_dict``).
        """
        self.prior = copy.deepcopy(prior).eval().requires_grad_(False).to(self.device)

    def evaluate_actions(self, obs, actions: torch.Tensor):
        logits, values = self._logits_and_values(obs)
        distribution = self.action_dist.proba_distribution(action_logits=logits)
        return values, distribution.log_prob(actions), distribution.entropy()

    def evaluate_actions_with_kl(self, obs, actions: torch.Tensor):
        """`evaluate_actions` plus the KL to the prior, from one forward pass of the scorer.

        Returns:
            ``(values (B, 1), log_prob (B,), entropy (B,), kl (B,))``: ``kl`` is
            ``KL(softmax(logits) || prior policy)`` in nats over the K candidates
            (for slates, the first position's distribution), differentiable in the
            policy's parameters.

        Raises:
            ValueError: no prior was set (`set_prior`).
        """
        if getattr(self, "prior", None) is None:
            raise ValueError(f"{type(self).__name__}.evaluate_actions_with_kl needs set_prior(scorer) first")
        logits, values = self._logits_and_values(obs)
        distribution = self.action_dist.proba_distribution(action_logits=logits)
        log_prob, entropy = distribution.log_prob(actions), distribution.entropy()
        with torch.no_grad():
            prior_log_reward, _ = self.prior.log_expected_reward(as_scorer_input(obs, self.ids_mode), self.objective)
            prior_log_p = torch.log_softmax(prior_log_reward / self.temperature, -1)
        log_p = torch.log_softmax(logits, -1)
        kl = (log_p.exp() * (log_p - prior_log_p)).sum(-1)
        return values, log_prob, entropy, kl

    def get_distribution(self, obs):
        logits, _ = self._actor(obs)
        return self.action_dist.proba_distribution(action_logits=logits)

    def predict_values(self, obs) -> torch.Tensor:
        return self._value(self._actor(obs)[1])

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            scorer_config=self._scorer_config,
            item_table=self._item_table,
            item_features=self._item_features,
            objective=self.objective,
            temperature=self.temperature,
            value_hidden=self._value_hidden,
            normalize_values=self._normalize_values,
            value_lr_scale=self._value_lr_scale,
        )
        return data


class ScorerQNetwork(QNetwork):
    """DQN Q-network over the scorer, ``(B, K)``:
    ``Q(s, i) = V(s) + exp(a) x expected_reward(s, i)``.

    ``expected_reward`` is the scorer's ``P(click) x E[minutes | click]`` (or ``P(click)``
    for ``objective="click"``), ``V`` a linear head on the scorer's user state and ``a``
    a learned scalar; ``V`` starts at 0 and ``a`` at 0, so a warm-started network's
    Q-values are the greedy ranker's expected rewards, and learning can move them to
    discounted returns (tens of times one step's reward) that the bounded heads alone
    could not reach.
    """

    def __init__(
        self,
        observation_space: spaces.Dict,
        action_space: spaces.Discrete,
        features_extractor: BaseFeaturesExtractor,
        features_dim: int,
        scorer_config: dict | None = None,
        item_table: torch.Tensor | None = None,
        item_features: torch.Tensor | None = None,
        objective: str = "engagement",
        **kwargs: Any,
    ):
        super().__init__(
            observation_space, action_space, features_extractor, features_dim, net_arch=[], **kwargs
        )
        del self.q_net  # replaced by the scorer
        if objective not in OBJECTIVES:
            raise ValueError(f"objective={objective!r}; expected one of {OBJECTIVES}")
        self.ids_mode = is_ids_mode(observation_space)
        self.scorer = build_scorer(observation_space, scorer_config, item_table, item_features)
        self.objective = objective
        self.state_value = nn.Linear(self.scorer.config.hidden_dim, 1)
        nn.init.zeros_(self.state_value.weight)
        nn.init.zeros_(self.state_value.bias)
        self.log_scale = nn.Parameter(torch.zeros(()))
        self._scorer_config = scorer_config
        self._item_table = item_table
        self._item_features = item_features

    def forward(self, obs) -> torch.Tensor:
        log_reward, user_state = self.scorer.log_expected_reward(as_scorer_input(obs, self.ids_mode), self.objective)
        return self.state_value(user_state) + (log_reward + self.log_scale).exp()

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(scorer_config=self._scorer_config, item_table=self._item_table,
                    item_features=self._item_features, objective=self.objective)
        return data


class ScorerDQNPolicy(DQNPolicy):
    """DQN policy whose online and target Q-networks are `ScorerQNetwork`s.

    Args (policy_kwargs): ``scorer_config`` (dict), ``item_table`` (``ids`` mode and item
    features), ``item_features`` (``(N, F)``, when the config lists item features) and
    ``objective`` (the environment's reward, ``"engagement"`` or ``"click"``).
    """

    def __init__(
        self,
        observation_space: spaces.Dict,
        action_space: spaces.Discrete,
        lr_schedule,
        scorer_config: dict | None = None,
        item_table: torch.Tensor | None = None,
        item_features: torch.Tensor | None = None,
        objective: str = "engagement",
        **kwargs: Any,
    ):
        if scorer_config is None:
            raise ValueError("ScorerDQNPolicy needs policy_kwargs['scorer_config']")
        self._scorer_config = dict(scorer_config)
        self._item_table = item_table
        self._item_features = item_features
        self.objective = objective
        kwargs.setdefault("features_extractor_class", _PassThrough)
        super().__init__(observation_space, action_space, lr_schedule, **kwargs)

    @property
    def scorer(self) -> Scorer:
        """The online Q-network's scorer (what warm start loads into)."""
        return self.q_net.scorer

    def make_q_net(self) -> ScorerQNetwork:
        net_args = self._update_features_extractor(self.net_args, features_extractor=None)
        net_args.pop("net_arch", None)
        net_args.pop("activation_fn", None)
        return ScorerQNetwork(
            scorer_config=self._scorer_config, item_table=self._item_table, item_features=self._item_features,
            objective=self.objective, **net_args
        ).to(self.device)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(scorer_config=self._scorer_config, item_table=self._item_table,
                    item_features=self._item_features, objective=self.objective)
        return data
