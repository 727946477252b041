"""The shared scorer as an RLlib `RLModule`: PPO's actor-critic on RLlib's new API stack.

`ScorerRLModule` is the RLlib twin of `agents.policies.ScorerActorCriticPolicy` (the SB3
PPO policy), with the same parameters under the same names:

- ``scorer``: a `recsim_mm.scorer.Scorer`; its click logits over the K candidates are
  the action distribution's inputs (``Columns.ACTION_DIST_INPUTS``, ``(B, K)`` float32);
- ``value_net``: ``Linear(h, value_hidden) -> Tanh -> Linear(value_hidden, 1)`` on the
  scorer's user state (``Columns.EMBEDDINGS`` in the train pass, so PPO's value loss
  reuses the forward pass's history encoding).

So a module's ``state_dict()`` loads into the SB3 policy and back (the RLlib backend's
``checkpoint.pt`` is evaluated by the SB3 code path, `agents.rllib_backend`), and warm
start is the same ``ranker.warm_start(module.scorer)``.

Observations are the environment's dict in either mode (``embeddings`` or ``ids``;
RLlib keeps a ``Dict`` observation as a dict of tensors, so no ``FlattenObservations``
connector is used): the scorer reads it as the SB3 policy does. Actions: ``Discrete(K)``
(RLlib's ``TorchCategorical``) or a slate ``MultiDiscrete([K] * S)``
(`TorchPlackettLuce`: S distinct candidates, as `agents.policies.PlackettLuceDistribution`).
The observation has no candidate mask (every candidate can be recommended), so no
logit is masked.

This module imports Ray; `agents.rllib_backend` imports it only when the RLlib backend
is used.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.distribution.torch.torch_distribution import (
    TorchCategorical,
    TorchDeterministic,
    TorchDistribution,
)
from ray.rllib.core.rl_module.apis.value_function_api import ValueFunctionAPI
from ray.rllib.core.rl_module.torch import TorchRLModule
from torch import nn

from agents.policies import (
    as_scorer_input,
    build_scorer,
    candidate_action_distribution,
    critic_input,
    is_ids_mode,
)
from recsim_mm.sampling import gumbel_top_k, plackett_luce_log_prob_and_entropy


class TorchPlackettLuce(TorchDistribution):
    """Ordered slates of ``slate_size`` distinct candidates from ``softmax(logits)`` (Plackett-Luce).

    The RLlib form of `agents.policies.PlackettLuceDistribution`, on the same functions of
    `recsim_mm.sampling`: sampling is the Gumbel top-S draw, ``logp`` the exact
    log-probability of an ordered slate, ``entropy`` the chain-rule estimate along the
    slate last given to ``logp`` (or the mode), the mode the top-S candidates. RLlib
    builds distributions from a class (``from_logits``), so the slate size is a class
    attribute: `plackett_luce_class` makes the class for one S.

    Shapes: logits ``(B, K)`` float32; slates ``(B, S)`` int64 positions.
    """

    slate_size: int = 0

    def __init__(self, logits: torch.Tensor):
        self.logits = logits
        self._entropy: torch.Tensor | None = None
        super().__init__(logits=logits)

    def _get_torch_distribution(self, logits: torch.Tensor) -> None:
        return None  # no torch.distributions equivalent; every method is defined here

    @classmethod
    def from_logits(cls, logits: torch.Tensor, **kwargs: Any) -> TorchPlackettLuce:
        return cls(logits)

    @staticmethod
    def required_input_dim(space: gym.Space, **kwargs: Any) -> int:
        return int(space.nvec[0])

    def logp(self, value: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        slates = value.long().reshape(-1, self.slate_size)
        log_prob, self._entropy = plackett_luce_log_prob_and_entropy(self.logits, slates)
        return log_prob

    def entropy(self) -> torch.Tensor:
        if self._entropy is None:
            self._entropy = plackett_luce_log_prob_and_entropy(self.logits, self._mode())[1]
        return self._entropy

    def kl(self, other: TorchDistribution) -> torch.Tensor:
        raise NotImplementedError("Plackett-Luce slates have no closed-form KL; the RLlib backend runs "
                                  "PPO with use_kl_loss=False (SB3's PPO has no KL term either)")

    def sample(self, *, sample_shape=None) -> torch.Tensor:
        return gumbel_top_k(self.logits.detach(), self.slate_size)

    def rsample(self, *, sample_shape=None) -> torch.Tensor:
        raise NotImplementedError("slates are discrete: no reparametrised sample")

    def _mode(self) -> torch.Tensor:
        return self.logits.topk(self.slate_size, dim=-1).indices

    def to_deterministic(self) -> TorchDeterministic:
        return TorchDeterministic(loc=self._mode())


def plackett_luce_class(slate_size: int) -> type[TorchPlackettLuce]:
    """`TorchPlackettLuce` for slates of ``slate_size`` (one class per S, cached)."""
    if slate_size not in _PL_CLASSES:
        _PL_CLASSES[slate_size] = type(f"TorchPlackettLuce{slate_size}", (TorchPlackettLuce,),
                                       {"slate_size": slate_size, "__module__": __name__})
    return _PL_CLASSES[slate_size]


_PL_CLASSES: dict[int, type[TorchPlackettLuce]] = {}


class ScorerRLModule(TorchRLModule, ValueFunctionAPI):
    """PPO actor-critic on the shared scorer (see the module docstring).

    ``model_config`` (a dict, given through ``RLModuleSpec(model_config=...)``; built by
    `agents.rllib_backend.scorer_module_spec`):

    - ``scorer_config``: `recsim_mm.scorer.ScorerConfig` fields as a dict;
    - ``item_table``: ``(N, d)`` float32 fused item vectors, required in ``ids`` mode;
    - ``item_features``: ``(N, F)`` float32 item metadata when the scorer config lists any;
    - ``objective`` (``"engagement"`` or ``"click"``) and ``temperature``: the actor's
      logits are ``log(expected reward) / temperature``, as the SB3 policy's;
    - ``value_hidden``: width of the critic's hidden layers (default 64, as the SB3 policy);
    - ``scorer_state``: optional scorer ``state_dict`` loaded at construction (warm
      start: the ranker's ``warm_start_state_dict()``), so the learners and every env
      runner start from the ranker's weights.

    Forward passes return ``Columns.ACTION_DIST_INPUTS`` = the scorer's log expected
    rewards over the temperature ``(B, K)``; the train pass also returns
    ``Columns.EMBEDDINGS`` = the critic's detached input (user state and the candidates'
    log-reward max, log-sum-exp and mean, ``(B, h + 3)``), which `compute_values` maps
    to values ``(B,)``. RLlib's own value-function settings apply (no PopArt here).
    """

    def setup(self) -> None:
        config = self.model_config
        candidate_action_distribution(self.action_space)  # a clear error for other action spaces
        self.ids_mode = is_ids_mode(self.observation_space)
        self.scorer = build_scorer(self.observation_space, config["scorer_config"], config.get("item_table"),
                                   config.get("item_features"))
        self.objective = config.get("objective", "engagement")
        self.temperature = float(config.get("temperature", 0.5))
        hidden = int(config.get("value_hidden", 64))
        self.value_net = nn.Sequential(
            nn.Linear(self.scorer.config.hidden_dim + 3, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
            nn.Linear(hidden, 1),
        )
        if isinstance(self.action_space, gym.spaces.Discrete):
            self.action_dist_cls = TorchCategorical
        else:
            self.action_dist_cls = plackett_luce_class(len(self.action_space.nvec))
        if config.get("scorer_state") is not None:
            self.scorer.load_state_dict(config["scorer_state"])

    def _obs(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return as_scorer_input(batch[Columns.OBS], self.ids_mode)

    def _actor(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``(B, K)`` and the critic's detached input ``(B, h + 3)``."""
        log_reward, user_state = self.scorer.log_expected_reward(self._obs(batch), self.objective)
        return log_reward / self.temperature, critic_input(log_reward, user_state)

    def _forward(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        return {Columns.ACTION_DIST_INPUTS: self._actor(batch)[0]}

    def _forward_train(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        logits, critic_input = self._actor(batch)
        return {Columns.ACTION_DIST_INPUTS: logits, Columns.EMBEDDINGS: critic_input}

    def compute_values(self, batch: dict[str, Any], embeddings: Any = None) -> torch.Tensor:
        """Values ``(B,)`` float32 from the critic's input (``embeddings``, or computed from ``batch``)."""
        if embeddings is None:
            embeddings = self._actor(batch)[1]
        return self.value_net(embeddings).squeeze(-1)
