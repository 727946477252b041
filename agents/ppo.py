"""PPO with a KL penalty toward a prior policy (the ranker), as a visible loss term.

`PriorRegularizedPPO` is SB3's PPO whose loss per minibatch is

    policy_loss + ent_coef * entropy_loss + kl_coef * kl_to_prior + vf_coef * value_loss

with ``kl_to_prior = mean KL(pi(.|s) || softmax(prior scores(s)))`` over the minibatch
(for slates, the KL of the first position's distribution). The prior is a frozen
scorer the policy holds (`agents.policies.ScorerActorCriticPolicy.set_prior`).

SB3's ``PPO.train`` computes the loss inline and has no hook for another term, so
`PriorRegularizedPPO.train` is SB3 2.x's ``PPO.train`` with the KL lines added (each
marked ``# KL``); everything else is SB3's code unchanged. With ``kl_coef=0``, a
policy without a value normaliser and one learning rate for all parameters, it runs
SB3's computation exactly (the test suite checks that it trains to the same
parameters as ``PPO``), so it is the PPO of every run.

With a policy that normalises its critic (``policy.value_normalizer``, a
`agents.policies.ValueNormalizer`), each update first folds the rollout's returns into
the normaliser (PopArt: the critic's predictions are unchanged by it), and the value
loss is measured in units of the returns' standard deviation (``mse / std**2``), so
``vf_coef`` means the same for returns of 1 or of 500 minutes. Lines marked ``# VALUE``.

Logged by ``train``: SB3's keys, with ``train/entropy_loss`` the entropy term alone
(``-mean(entropy)``), plus ``train/kl_to_prior`` (mean over the update's minibatches,
nats) when ``kl_coef > 0``, and ``train/value_scale`` (the normaliser's standard
deviation, reward units) with a normalised critic. Works with ``ent_coef = 0``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.utils import explained_variance
from torch.nn import functional as F


class PriorRegularizedPPO(PPO):
    """SB3 PPO plus ``kl_coef * KL(pi || prior)`` in the loss (see the module docstring).

    Args:
        policy, env: as for SB3's ``PPO``; with ``kl_coef > 0`` the policy must provide
            ``evaluate_actions_with_kl(obs, actions) -> (values, log_prob, entropy, kl)``
            (`agents.policies.ScorerActorCriticPolicy` does, once ``set_prior`` was
            called).
        kl_coef: weight of the KL term, ``>= 0`` (0: plain PPO).
        **kwargs: SB3 ``PPO`` arguments.

    Raises:
        ValueError: ``kl_coef`` negative or not finite; at the first update, ``kl_coef > 0``
            with a policy that has no prior.
    """

    def __init__(self, policy: Any, env: Any, kl_coef: float = 0.0, **kwargs: Any):
        if isinstance(kl_coef, bool) or not isinstance(kl_coef, int | float) or not (
            math.isfinite(kl_coef) and kl_coef >= 0
        ):
            raise ValueError(f"kl_coef={kl_coef!r}; expected a finite number >= 0")
        self.kl_coef = float(kl_coef)
        super().__init__(policy, env, **kwargs)

    def _update_learning_rate(self, optimizers) -> None:
        """SB3's schedule update, times each parameter group's ``lr_scale`` (the critic's
        own rate, `agents.policies.ScorerActorCriticPolicy`'s ``value_lr_scale``)."""
        super()._update_learning_rate(optimizers)
        for optimizer in optimizers if isinstance(optimizers, list) else [optimizers]:
            for group in optimizer.param_groups:
                group["lr"] *= group.get("lr_scale", 1.0)

    def train(self) -> None:
        """One PPO update on the collected rollout (SB3 2.x ``PPO.train`` + the KL term)."""
        if self.kl_coef and getattr(self.policy, "prior", None) is None:  # KL
            raise ValueError(
                f"PriorRegularizedPPO(kl_coef={self.kl_coef}) needs a prior: call "
                "model.policy.set_prior(scorer) before learning"
            )
        # Switch to train mode (this affects batch norm / dropout)
        self.policy.set_training_mode(True)
        # Update optimizer learning rate
        self._update_learning_rate(self.policy.optimizer)
        # Compute current clip range
        clip_range = self.clip_range(self._current_progress_remaining)  # type: ignore[operator]
        # Optional: clip range for the value function
        if self.clip_range_vf is not None:
            clip_range_vf = self.clip_range_vf(self._current_progress_remaining)  # type: ignore[operator]

        normalizer = getattr(self.policy, "value_normalizer", None)  # VALUE
        value_scale = 1.0
        if normalizer is not None:
            normalizer.update(th.as_tensor(self.rollout_buffer.returns, device=self.device))
            value_scale = float(normalizer.std)

        entropy_losses = []
        kl_losses = []  # KL
        pg_losses, value_losses = [], []
        clip_fractions = []

        continue_training = True
        # train for n_epochs epochs
        for epoch in range(self.n_epochs):
            approx_kl_divs = []
            # Do a complete pass on the rollout buffer
            for rollout_data in self.rollout_buffer.get(self.batch_size):
                actions = rollout_data.actions
                if isinstance(self.action_space, spaces.Discrete):
                    # Convert discrete action from float to long
                    actions = rollout_data.actions.long().flatten()

                if self.kl_coef:  # KL: the same forward pass also gives KL(pi || prior) per row
                    values, log_prob, entropy, kl = self.policy.evaluate_actions_with_kl(
                        rollout_data.observations, actions
                    )
                else:
                    values, log_prob, entropy = self.policy.evaluate_actions(rollout_data.observations, actions)
                values = values.flatten()
                # Normalize advantage
                advantages = rollout_data.advantages
                # Normalization does not make sense if mini batchsize == 1, see GH issue #325
                if self.normalize_advantage and len(advantages) > 1:
                    advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)

                # ratio between old and new policy, should be one at the first iteration
                ratio = th.exp(log_prob - rollout_data.old_log_prob)

                # clipped surrogate loss
                policy_loss_1 = advantages * ratio
                policy_loss_2 = advantages * th.clamp(ratio, 1 - clip_range, 1 + clip_range)
                policy_loss = -th.min(policy_loss_1, policy_loss_2).mean()

                # Logging
                pg_losses.append(policy_loss.item())
                clip_fraction = th.mean((th.abs(ratio - 1) > clip_range).float()).item()
                clip_fractions.append(clip_fraction)

                if self.clip_range_vf is None:
                    # No clipping
                    values_pred = values
                else:
                    # Clip the difference between old and new value
                    # NOTE: this depends on the reward scaling
                    values_pred = rollout_data.old_values + th.clamp(
                        values - rollout_data.old_values, -clip_range_vf, clip_range_vf
                    )
                # Value loss using the TD(gae_lambda) target
                value_loss = F.mse_loss(rollout_data.returns, values_pred) / value_scale**2  # VALUE
                value_losses.append(value_loss.item())

                # Entropy loss favor exploration
                if entropy is None:
                    # Approximate entropy when no analytical form
                    entropy_loss = -th.mean(-log_prob)
                else:
                    entropy_loss = -th.mean(entropy)

                entropy_losses.append(entropy_loss.item())

                loss = policy_loss + self.ent_coef * entropy_loss + self.vf_coef * value_loss
                if self.kl_coef:  # KL: its own term, with its own weight
                    kl_loss = kl.mean()
                    kl_losses.append(kl_loss.item())
                    loss = loss + self.kl_coef * kl_loss

                # Calculate approximate form of reverse KL Divergence for early stopping
                # see issue #417: https://github.com/DLR-RM/stable-baselines3/issues/417
                # and discussion in PR #419: https://github.com/DLR-RM/stable-baselines3/pull/419
                # and Schulman blog: http://joschu.net/blog/kl-approx.html
                with th.no_grad():
                    log_ratio = log_prob - rollout_data.old_log_prob
                    approx_kl_div = th.mean((th.exp(log_ratio) - 1) - log_ratio).cpu().numpy()
                    approx_kl_divs.append(approx_kl_div)

                if self.target_kl is not None and approx_kl_div > 1.5 * self.target_kl:
                    continue_training = False
                    if self.verbose >= 1:
                        print(f"Early stopping at step {epoch} due to reaching max kl: {approx_kl_div:.2f}")
                    break

                # Optimization step
                self.policy.optimizer.zero_grad()
                loss.backward()
                # Clip grad norm
                th.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
                self.policy.optimizer.step()

            self._n_updates += 1
            if not continue_training:
                break

        explained_var = explained_variance(self.rollout_buffer.values.flatten(), self.rollout_buffer.returns.flatten())

        # Logs
        self.logger.record("train/entropy_loss", np.mean(entropy_losses))
        if kl_losses:  # KL
            self.logger.record("train/kl_to_prior", np.mean(kl_losses))
        self.logger.record("train/policy_gradient_loss", np.mean(pg_losses))
        self.logger.record("train/value_loss", np.mean(value_losses))
        self.logger.record("train/approx_kl", np.mean(approx_kl_divs))
        self.logger.record("train/clip_fraction", np.mean(clip_fractions))
        self.logger.record("train/loss", loss.item())
        self.logger.record("train/explained_variance", explained_var)
        if normalizer is not None:  # VALUE
            self.logger.record("train/value_scale", value_scale)
        if hasattr(self.policy, "log_std"):
            self.logger.record("train/std", th.exp(self.policy.log_std).mean().item())

        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/clip_range", clip_range)
        if self.clip_range_vf is not None:
            self.logger.record("train/clip_range_vf", clip_range_vf)
