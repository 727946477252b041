"""SlateQ (Ie et al., 2019) on the shared scorer: slate values from item values and a click model.

A slate's long-term value decomposes over the item the user clicks:

    Q(s, A) = P(none | s, A) * Qbar(s, none) + sum_{i in A} P(i | s, A) * Qbar(s, i)

where ``Qbar(s, i)`` is the long-term value of the user clicking item ``i`` (learned by
temporal differences, only ever on the item actually clicked) and ``P(. | s, A)`` is a
choice model over the slate. Learning item values instead of slate values is what makes
slates of S out of K candidates tractable: there are K item values, not K!/(K-S)!
slate values.

The pieces here:

- **Item values** ``Qbar(s, i)``: the scorer's output per candidate (`SlateQNetwork`),
  so SlateQ warm-starts from the ranker exactly as DQN does (first-step item values =
  the ranker's scores).
- **No-click value** ``Qbar(s, none)``: a linear head on the scorer's user state,
  initialised to 0, trained on the steps where nothing was clicked.
- **Click model**: a multinomial logit with a no-click option of logit 0,
  ``P(i | s, A) = exp(v_i) / (1 + sum_{j in A} exp(v_j))``, whose logits ``v`` are a
  second scorer (`SlateQPolicy.click_model`) *learned* from the clicks in the replay
  buffer by maximum likelihood. It is the environment's documented choice rule
  (recsim_mm.choice.MultinomialLogit) in form, not in parameters: the agent never sees
  the user's utilities. For a one-item slate it is ``sigmoid(v_i)``, the quantity the
  ranker's click head estimates, so warm start copies the ranker into the click model
  too (`SlateQPolicy.warm_start_click_model`).
- **Slate selection** (`best_slates`): the exact maximiser of ``Q(s, A)`` over the
  ``C(K, S)`` unordered slates when there are at most ``max_exact_slates`` of them
  (1,140 for K=20, S=3), else the greedy construction of the SlateQ paper (add the
  item that raises the slate value most, S times). Under the MNL the order inside a
  slate does not change who clicks; positions are filled by ``P-weight x value``,
  best first (position 0 is what the history records when nothing is clicked).
- **Learning** (`SlateQ.train`): Q-learning on item values. For a transition
  ``(s, A, r, s')`` in which the user clicked item ``i`` (or nothing), the target is
  ``r + gamma * max_A' Q(s', A')`` with the target network's item and no-click values
  and the click model's probabilities at ``s'``; the loss is the Huber loss on
  ``Qbar(s, i)`` (or ``Qbar(s, none)``) plus the click model's negative log-likelihood.
  Which item was clicked is read from ``s'``: the environment records the clicked item
  as the newest history entry, with ``history_feedback[..., -1, 0] = 1``
  (docs/environments.md, "Observation").

Everything else (replay buffer, epsilon-greedy exploration with uniformly random distinct
slates, target network updates, checkpoints) is stable-baselines3's DQN.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3 import DQN
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from torch import nn
from torch.nn import functional as F

from agents.policies import ScorerDQNPolicy, ScorerQNetwork, as_scorer_input, build_scorer
from recsim_mm.choice import MultinomialLogit
from recsim_mm.observation import CANDIDATE_ITEMS, HISTORY_FEEDBACK, HISTORY_ITEMS
from recsim_mm.scorer import Scorer

#: Above this many unordered slates, `best_slates` switches from exact enumeration to greedy.
MAX_EXACT_SLATES = 5_000


def slate_size_of(action_space: spaces.Space) -> int:
    """S for a slate ``MultiDiscrete([K] * S)``.

    Raises:
        ValueError: any other action space, a one-item ``Discrete(K)`` included (SlateQ
            is for slates; DQN is the one-item learner).
    """
    if isinstance(action_space, spaces.MultiDiscrete) and action_space.nvec.ndim == 1:
        return len(action_space.nvec)
    raise ValueError(f"SlateQ needs a slate environment (a MultiDiscrete([K] * S) action space, the "
                     f"...Slate-v0 ids); got {action_space}. For one item per step use DQN.")


def check_choice_model(simulator: Any) -> None:
    """Refuse an environment whose users do not choose by a multinomial logit with no-click.

    SlateQ's click model has the MNL's form (`slate_values`); its logits are learned, its
    form is not. ``simulator`` is the environment's `recsim_mm.simulator.Simulator`
    (``env.unwrapped.simulator``, ``SB3VecEnv.venv.simulator``).

    Raises:
        ValueError: the user model exposes no choice model, or another one (named).
    """
    choice = getattr(simulator.users, "choice", None)
    if choice is None:
        raise ValueError(f"SlateQ needs to know how users choose from a slate; user model "
                         f"{type(simulator.users).__name__} exposes no `choice` model")
    if not isinstance(choice, MultinomialLogit):
        raise ValueError(f"SlateQ's click model is a multinomial logit with a no-click option; this "
                         f"environment's users choose by {type(choice).__name__} (user_params "
                         f"choice_model='mnl' gives the MNL)")


def slate_values(click_logits: torch.Tensor, item_values: torch.Tensor, null_value: torch.Tensor,
                 slates: torch.Tensor) -> torch.Tensor:
    """The SlateQ decomposition ``Q(s, A)`` for given slates.

    Args:
        click_logits: ``(B, K)`` float32 MNL logits ``v`` (no-click logit 0).
        item_values: ``(B, K)`` float32 ``Qbar(s, i)`` per candidate.
        null_value: ``(B,)`` float32 ``Qbar(s, none)``.
        slates: ``(B, C, S)`` or ``(C, S)`` int64 candidate positions (distinct within a slate).

    Returns:
        ``(B, C)`` float32 slate values, in the units of the item values (reward).
    """
    batch = click_logits.shape[0]
    if slates.dim() == 2:
        slates = slates.unsqueeze(0).expand(batch, -1, -1)
    # P(i | A) = exp(v_i) / (1 + sum_A exp(v_j)); every weight scaled by exp(-shift), the
    # no-click option's too, so nothing overflows: the ratios are exact.
    shift = click_logits.detach().amax(dim=1, keepdim=True).clamp_min(0.0)  # (B, 1)
    weight = (click_logits - shift).exp()  # (B, K)
    none = (-shift).exp()  # (B, 1)
    flat = slates.reshape(batch, -1)
    w = weight.gather(1, flat).reshape(slates.shape)  # (B, C, S)
    wq = (weight * item_values).gather(1, flat).reshape(slates.shape)
    return (none * null_value.unsqueeze(1) + wq.sum(-1)) / (none + w.sum(-1))


def all_slates(num_candidates: int, slate_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``(C(K, S), S)`` int64: every unordered slate of S distinct positions out of K."""
    return torch.tensor(list(itertools.combinations(range(num_candidates), slate_size)),
                        dtype=torch.int64, device=device).reshape(-1, slate_size)


def _order_within(slates: torch.Tensor, click_logits: torch.Tensor, item_values: torch.Tensor) -> torch.Tensor:
    """Positions of each ``(B, S)`` slate sorted by ``exp(v) * Qbar``, best first."""
    weight = (click_logits.exp() * item_values).gather(1, slates)
    return slates.gather(1, weight.argsort(dim=1, descending=True))


def best_slates(click_logits: torch.Tensor, item_values: torch.Tensor, null_value: torch.Tensor,
                slate_size: int, max_exact_slates: int = MAX_EXACT_SLATES) -> tuple[torch.Tensor, torch.Tensor]:
    """The slate of highest SlateQ value per row, and that value.

    Exact (all ``C(K, S)`` slates scored at once) when ``C(K, S) <= max_exact_slates``,
    else greedy: S rounds, each adding the candidate that gives the highest value of the
    slate built so far. Shapes as in `slate_values`.

    Returns:
        slates ``(B, S)`` int64 positions ordered by ``exp(v) * Qbar`` (best first), and
        their values ``(B,)`` float32.
    """
    batch, num_candidates = click_logits.shape
    if math.comb(num_candidates, slate_size) <= max_exact_slates:
        candidates = all_slates(num_candidates, slate_size, click_logits.device)
        value, best = slate_values(click_logits, item_values, null_value, candidates).max(dim=1)
        chosen = candidates[best]
    else:
        chosen = click_logits.new_zeros(batch, 0, dtype=torch.int64)
        taken = torch.zeros_like(click_logits, dtype=torch.bool)
        positions = torch.arange(num_candidates, device=click_logits.device)
        for _ in range(slate_size):
            grown = torch.cat([chosen.unsqueeze(1).expand(-1, num_candidates, -1),
                               positions.view(1, -1, 1).expand(batch, -1, 1)], dim=2)
            value = slate_values(click_logits, item_values, null_value, grown).masked_fill(taken, float("-inf"))
            pick = value.argmax(dim=1)
            chosen = torch.cat([chosen, pick.unsqueeze(1)], dim=1)
            taken = taken.scatter(1, pick.unsqueeze(1), True)
        value = slate_values(click_logits, item_values, null_value, chosen.unsqueeze(1)).squeeze(1)
    return _order_within(chosen, click_logits, item_values), value


def clicked_slot(next_obs: dict[str, torch.Tensor], obs: dict[str, torch.Tensor], slates: torch.Tensor,
                 ids_mode: bool) -> torch.Tensor:
    """Which slate slot the user clicked, read from the next observation.

    The environment appends the clicked item to the history with feedback
    ``[1, minutes]`` (with no click: position 0's item with ``[0, 0]``).

    Args:
        next_obs: observation after the step (SB3 replay storage: floats).
        obs: observation the slate was chosen in.
        slates: ``(B, S)`` int64 candidate positions shown.
        ids_mode: item rows (True) or item vectors (False) in the observation.

    Returns:
        ``(B,)`` int64 slot in ``[0, S)``, or -1 where nothing was clicked.
    """
    clicked = next_obs[HISTORY_FEEDBACK][:, -1, 0] > 0.5
    candidates = obs[CANDIDATE_ITEMS]
    if ids_mode:
        shown = candidates.long().gather(1, slates)  # (B, S) item rows
        newest = next_obs[HISTORY_ITEMS][:, -1].long().unsqueeze(1)
        slot = (shown == newest).to(torch.int8).argmax(dim=1)
    else:
        index = slates.unsqueeze(-1).expand(-1, -1, candidates.shape[-1])
        shown = candidates.gather(1, index)  # (B, S, d)
        newest = next_obs[HISTORY_ITEMS][:, -1].unsqueeze(1)
        slot = (shown - newest).square().sum(-1).argmin(dim=1)
    return torch.where(clicked, slot, -1)


class SlateQNetwork(ScorerQNetwork):
    """Item values ``Qbar(s, i)`` (the scorer, ``(B, K)``) and the no-click value (a head, ``(B,)``)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.null_head = nn.Linear(self.scorer.config.hidden_dim, 1)
        nn.init.zeros_(self.null_head.weight)
        nn.init.zeros_(self.null_head.bias)

    def values(self, obs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, K)`` item values and ``(B,)`` no-click values from one scorer pass."""
        item_values, user_state = self.scorer.score_with_state(as_scorer_input(obs, self.ids_mode))
        return item_values, self.null_head(user_state).squeeze(-1)


class SlateQPolicy(ScorerDQNPolicy):
    """SlateQ's policy: item-value network (+ target, from DQN), click model, slate selection.

    Args (policy_kwargs): ``scorer_config`` and ``item_table`` as `ScorerDQNPolicy`;
    ``max_exact_slates``: the exact/greedy switch of `best_slates`.

    Actions: ``(B, S)`` int64 distinct positions.
    """

    def __init__(self, observation_space: spaces.Dict, action_space: spaces.Space, lr_schedule,
                 max_exact_slates: int = MAX_EXACT_SLATES, **kwargs: Any):
        self.slate_size = slate_size_of(action_space)
        self.max_exact_slates = max_exact_slates
        super().__init__(observation_space, action_space, lr_schedule, **kwargs)

    def make_q_net(self) -> SlateQNetwork:
        net_args = self._update_features_extractor(self.net_args, features_extractor=None)
        net_args.pop("net_arch", None)
        net_args.pop("activation_fn", None)
        # the network values single candidates: its action space is Discrete(K)
        net_args["action_space"] = spaces.Discrete(int(self.action_space.nvec[0]))
        return SlateQNetwork(scorer_config=self._scorer_config, item_table=self._item_table,
                             item_features=self._item_features, objective=self.objective,
                             **net_args).to(self.device)

    def _build(self, lr_schedule) -> None:
        super()._build(lr_schedule)
        self.click_model = build_scorer(self.observation_space, self._scorer_config,
                                        self._item_table, self._item_features).to(self.device)
        # one optimizer for the item values, the no-click head and the click model
        self.optimizer = self.optimizer_class(
            [*self.q_net.parameters(), *self.click_model.parameters()], lr=lr_schedule(1),
            **self.optimizer_kwargs,
        )

    def warm_start_click_model(self, prior: Scorer) -> None:
        """Copy a trained click scorer (the ranker's) into the click model."""
        self.click_model.load_state_dict(prior.state_dict())

    def click_logits(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(B, K)`` MNL click logits (no-click logit 0)."""
        return self.click_model(as_scorer_input(obs, self.q_net.ids_mode))

    def _predict(self, obs: dict[str, torch.Tensor], deterministic: bool = True) -> torch.Tensor:
        item_values, null_value = self.q_net.values(obs)
        slates, _ = best_slates(self.click_logits(obs), item_values, null_value, self.slate_size,
                                self.max_exact_slates)
        return slates

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(max_exact_slates=self.max_exact_slates)
        return data


class SlateQ(DQN):
    """SB3 DQN with SlateQ's decomposed targets, for slate actions ``MultiDiscrete([K] * S)``.

    Takes DQN's arguments (``policy`` should be `SlateQPolicy`). The loss per gradient
    step, logged separately: ``train/td_loss`` (Huber, item or no-click value of the
    slot clicked) + ``train/click_loss`` (click model NLL, nats per step).
    """

    policy_aliases = {"SlateQPolicy": SlateQPolicy}

    def __init__(self, policy: str | type[SlateQPolicy], env, **kwargs: Any):
        # DQN.__init__ hard-codes Discrete actions; run its body for slate actions instead.
        if hasattr(env, "action_space"):
            slate_size_of(env.action_space)  # a clear error before SB3's assertion
        init_setup = kwargs.pop("_init_setup_model", True)
        dqn_only = {name: kwargs.pop(name, default) for name, default in (
            ("target_update_interval", 10_000), ("exploration_fraction", 0.1),
            ("exploration_initial_eps", 1.0), ("exploration_final_eps", 0.05), ("max_grad_norm", 10.0))}
        OffPolicyAlgorithm.__init__(
            self, policy, env, action_noise=None, sde_support=False, support_multi_env=True,
            supported_action_spaces=(spaces.MultiDiscrete,), **kwargs,
        )
        for name, value in dqn_only.items():
            setattr(self, name, value)
        self._n_calls = 0
        self.exploration_rate = 0.0
        if init_setup:
            self._setup_model()

    def train(self, gradient_steps: int, batch_size: int = 100) -> None:
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        ids_mode = self.q_net.ids_mode
        td_losses, click_losses = [], []
        for _ in range(gradient_steps):
            data = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)
            obs, next_obs = data.observations, data.next_observations
            slates = data.actions.long().reshape(len(data.rewards), -1)  # (B, S)
            slot = clicked_slot(next_obs, obs, slates, ids_mode)
            with torch.no_grad():
                next_items, next_null = self.q_net_target.values(next_obs)
                _, next_value = best_slates(self.policy.click_logits(next_obs), next_items, next_null,
                                            self.policy.slate_size, self.policy.max_exact_slates)
                target = data.rewards.squeeze(1) + (1 - data.dones.squeeze(1)) * self.gamma * next_value
            item_values, null_value = self.q_net.values(obs)
            clicked_position = slates.gather(1, slot.clamp_min(0).unsqueeze(1)).squeeze(1)
            current = torch.where(slot >= 0, item_values.gather(1, clicked_position.unsqueeze(1)).squeeze(1),
                                  null_value)
            td_loss = F.smooth_l1_loss(current, target)
            logits = self.policy.click_logits(obs).gather(1, slates)
            with_none = torch.cat([logits.new_zeros(len(logits), 1), logits], dim=1)
            click_loss = F.cross_entropy(with_none, slot + 1)
            self.policy.optimizer.zero_grad()
            (td_loss + click_loss).backward()
            torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
            self.policy.optimizer.step()
            td_losses.append(td_loss.item())
            click_losses.append(click_loss.item())
        self._n_updates += gradient_steps
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/td_loss", float(np.mean(td_losses)))
        self.logger.record("train/click_loss", float(np.mean(click_losses)))
