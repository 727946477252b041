"""Privileged references: what the best myopic play and a planner with the true model reach.

Two references bound every comparison; neither is a strategy a real system could run,
because both read the simulated users' hidden state through the user model's
`recsim_mm.users.UserModel.expected_outcomes` (expected click, engagement and session
end of each candidate shown alone, computed with the true dynamics):

- `MyopicOracle`: greedy on the TRUE expected reward of this step, given the full
  hidden state (interests, satiation, budget): ``P(click) x E[minutes | click]`` for
  ``reward="engagement"``, ``P(click)`` for ``reward="click"``. It is the upper bound
  of one-step-greedy play, whatever model a greedy recommender learns.
- `PlanningReference`: a one-step lookahead with the true model and a constant
  continuation value: ``E[reward now] + value x P(the session continues)``, where
  ``value = horizon x (the best expected reward among this step's candidates)`` is what
  the rest of the session is worth. ``horizon`` (steps) is tuned per environment on
  training users (`tune_planning_horizon`); ``horizon=0`` is the myopic oracle. It
  captures the long-term effect that dominates the built-in environments: whether the
  user stays (boredom, patience, budget). It ignores effects that act only through
  later utilities (satiation lowering future clicks without ending the session), so it
  is a lower bound of what planning can reach, not the optimum.

The planning headroom of an environment is ``planning - myopic oracle`` on the same
users; the report states each strategy's fraction of both. In the Myopic control the
session end does not depend on the recommendation, so the two references choose the
same item and the headroom is exactly zero.

Both follow the baselines' interface (`agents.baselines.Recommender`) plus one hook,
``attach(env)``, which `agents.evaluation.evaluate_recommender` calls with the vector env
before the first step so the reference can read its simulator.

One NON-privileged reference sits beside them: `ModelPlanning`, the planning
reference's lookahead on learned, observable information only (the ranker's expected
reward and click probability, and a session-end model fitted on the training log,
`recsim_mm.session_end.SessionEndModel`). It is a strategy a real system could run: the
planning bar a deployable policy can be held to, where `PlanningReference` is the bar
with the true model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from agents.baselines import Recommender
from recsim_mm.ranker import Ranker
from recsim_mm.session_end import SessionEndModel

#: Strategy names of the references, as configs and reports use them.
REFERENCE_NAMES: tuple[str, ...] = ("myopic_oracle", "planning")
#: Strategy name of the non-privileged planning reference (`ModelPlanning`).
MODEL_PLANNING_NAME = "model_planning"
#: Horizons (steps of continuation value) `tune_planning_horizon` tries by default.
PLANNING_HORIZONS: tuple[float, ...] = (0.0, 1.0, 3.0, 10.0, 30.0, 100.0)


def lookahead(immediate: torch.Tensor, end_probability: torch.Tensor, horizon: float) -> torch.Tensor:
    """The one-step lookahead both planning references rank by, ``(B, K)``:
    ``r_i + horizon x max_j r_j x (1 - P(end | i))``.

    Args:
        immediate: ``(B, K)`` expected reward of this step (minutes or click probability).
        end_probability: ``(B, K)`` probability that the session ends after showing ``i``.
        horizon: >= 0 steps the continuation is worth, in units of this step's best reward.
    """
    value = horizon * immediate.amax(dim=1, keepdim=True)
    return immediate + value * (1.0 - end_probability)


def best_horizon(evaluate: Callable[[Recommender], float], reference: Callable[[float], Recommender],
                 horizons: Sequence[float]) -> tuple[float, dict[float, float]]:
    """``(best horizon, {horizon: mean return})``: ``evaluate(reference(h))`` for each
    horizon, in order; ties keep the smaller horizon (0 = greedy on the immediate reward)."""
    returns = {float(h): float(evaluate(reference(float(h)))) for h in horizons}
    return max(returns, key=lambda h: (returns[h], -h)), returns


class MyopicOracle(Recommender):
    """PRIVILEGED: greedy on the true expected reward of this step (see the module docstring).

    Args:
        reward: the environment's reward, ``"engagement"`` (minutes) or ``"click"``.
        slate_size: None or ``S`` (top-S by the single-item expected reward: an
            approximation for slates, where items compete for the click).
        seed: tie-breaking seed.
    """

    name = REFERENCE_NAMES[0]
    privileged = True

    def __init__(self, reward: str = "engagement", slate_size: int | None = None, seed: int = 0):
        super().__init__(slate_size, seed)
        if reward not in ("engagement", "click"):
            raise ValueError(
                f"reward={reward!r}: the references know the built-in rewards 'engagement' and 'click' only"
            )
        self.reward = reward
        self.simulator = None

    def attach(self, env) -> None:
        """Read the hidden state of ``env`` (a `envs.vector_env.RecVectorEnv`) from now on."""
        self.simulator = env.simulator

    def _outcomes(self):
        if self.simulator is None:
            raise RuntimeError(f"{type(self).__name__}.attach(env) must run before predict()")
        sim = self.simulator
        return sim.users.expected_outcomes(sim.candidates)

    def _immediate(self, outcomes) -> torch.Tensor:
        """``(B, K)`` expected reward of this step."""
        if self.reward == "click":
            return outcomes.click_probability
        return outcomes.click_probability * outcomes.engagement_if_clicked

    def scores(self, observation):
        """``(B, K)`` true expected reward of each candidate (minutes or click probability)."""
        return self._immediate(self._outcomes()).cpu().numpy()


class PlanningReference(MyopicOracle):
    """PRIVILEGED: one-step lookahead with the true model (see the module docstring).

    Score of candidate ``i``: ``r_i + horizon x max_j r_j x (1 - P(end | i))``, with
    ``r`` the true expected reward of this step.

    Args:
        horizon: >= 0 steps the continuation is worth, in units of this step's best
            expected reward (tune it with `tune_planning_horizon`).
        reward, slate_size, seed: as `MyopicOracle`.
    """

    name = REFERENCE_NAMES[1]

    def __init__(self, horizon: float, reward: str = "engagement", slate_size: int | None = None, seed: int = 0):
        super().__init__(reward, slate_size, seed)
        if not horizon >= 0:
            raise ValueError(f"horizon={horizon!r}; expected >= 0 steps")
        self.horizon = float(horizon)

    def scores(self, observation):
        """``(B, K)`` expected reward now plus the continuation value times P(stay)."""
        outcomes = self._outcomes()
        return lookahead(self._immediate(outcomes), outcomes.end_probability, self.horizon).cpu().numpy()


def tune_planning_horizon(
    evaluate: Callable[[PlanningReference], float],
    reward: str = "engagement",
    horizons: Sequence[float] = PLANNING_HORIZONS,
    slate_size: int | None = None,
) -> tuple[float, dict[float, float]]:
    """Pick the planning horizon with the highest mean return on TRAINING users.

    Args:
        evaluate: ``evaluate(reference) -> mean episode return`` on training users
            (never the held-out users the report uses).
        reward: the environment's reward.
        horizons: candidates, tried in order; ties keep the smaller one (0 = myopic).
        slate_size: None or ``S``.

    Returns:
        ``(best horizon, {horizon: mean return})``.
    """
    return best_horizon(evaluate, lambda h: PlanningReference(h, reward, slate_size), horizons)


class ModelPlanning(Recommender):
    """NOT privileged: the planning reference's one-step lookahead on learned models only.

    Score of candidate ``i``: ``r_i + horizon x max_j r_j x (1 - P(end | show i))`` with

    - ``r`` the ranker's expected reward of this step (``(B, K)``: minutes ``P(click) x
      E[minutes | click]`` for ``reward="engagement"``, ``P(click)`` for ``"click"``; the
      greedy ranker's ranking, `recsim_mm.ranker.RankerPolicy.expected_reward`);
    - ``P(end | show i) = p_i P(end | click on i) + (1 - p_i) P(end | no click)`` from
      ``end_model`` (`recsim_mm.session_end.SessionEndModel`, fitted on the training log)
      and the ranker's click probability ``p_i``.

    Nothing here reads the simulated users' hidden state, so it is a deployable strategy
    and the planning bar for the other deployable ones. ``horizon=0`` ranks exactly as the
    greedy ranker; where the fitted end model does not depend on the candidate (the Myopic
    control) every horizon does. Slates: the top-S candidates by this single-item score
    (an approximation, as for the privileged references).

    Args:
        ranker: the trained `recsim_mm.ranker.Ranker` (with the engagement head for
            ``reward="engagement"``).
        end_model: the fitted session-end model, over the ranker's item space.
        horizon: >= 0 steps the continuation is worth, in units of this step's best
            expected reward (tune it with `tune_model_planning_horizon` on training users).
        reward: the environment's reward, ``"engagement"`` or ``"click"``.
        slate_size: None or ``S``.
        seed: tie-breaking seed.

    Raises:
        ValueError: an unknown reward, a negative horizon, a ranker without the engagement
            head for ``"engagement"``, or an end model over another item space.
    """

    name = MODEL_PLANNING_NAME
    privileged = False

    def __init__(self, ranker: Ranker, end_model: SessionEndModel, horizon: float, reward: str = "engagement",
                 slate_size: int | None = None, seed: int = 0):
        super().__init__(slate_size, seed)
        if reward not in ("engagement", "click"):
            raise ValueError(f"reward={reward!r}: model_planning knows the built-in rewards 'engagement' and 'click' only")
        if not horizon >= 0:
            raise ValueError(f"horizon={horizon!r}; expected >= 0 steps")
        ranker.policy(objective=reward)  # raises for "engagement" without the engagement head
        if end_model.item_ids != ranker.item_space.item_ids:
            raise ValueError("the session-end model was fitted over another item space than the ranker's; fit it "
                             "on a log of the ranker's item space")
        self.ranker, self.end_model = ranker, end_model
        self.horizon, self.reward = float(horizon), reward

    def expected_reward(self, observation) -> tuple[torch.Tensor, torch.Tensor]:
        """The ranker's ``(expected reward (B, K), click probability (B, K))``, float64, on
        the ranker's device, from one forward pass."""
        obs = {k: torch.as_tensor(v) for k, v in observation.items()}
        out = self.ranker.predict(obs)
        click = out["click_probability"]  # float32 products as the greedy ranker's, so its ranking is exact
        immediate = click if self.reward == "click" else click * out["engagement"]
        return immediate.double(), click.double()

    def scores(self, observation):
        """``(B, K)`` float64: expected reward now plus the continuation value times P(stay)."""
        immediate, click = self.expected_reward(observation)
        if self.horizon == 0:
            return immediate.cpu().numpy()
        end = self.end_model.end_probability(observation, click).to(immediate.device)
        return lookahead(immediate, end, self.horizon).cpu().numpy()


def tune_model_planning_horizon(
    evaluate: Callable[[ModelPlanning], float],
    ranker: Ranker,
    end_model: SessionEndModel,
    reward: str = "engagement",
    horizons: Sequence[float] = PLANNING_HORIZONS,
    slate_size: int | None = None,
) -> tuple[float, dict[float, float]]:
    """`tune_planning_horizon` for `ModelPlanning`: the horizon with the highest mean return
    on TRAINING users (never the held-out users).

    Args:
        evaluate: ``evaluate(policy) -> mean episode return`` on training users.
        ranker, end_model: as `ModelPlanning`.
        reward: the environment's reward.
        horizons: candidates, tried in order; ties keep the smaller one (0 = greedy).
        slate_size: None or ``S``.

    Returns:
        ``(best horizon, {horizon: mean return})``.
    """
    return best_horizon(evaluate, lambda h: ModelPlanning(ranker, end_model, h, reward, slate_size), horizons)


def fraction_of(value: float, reference: float) -> float:
    """``value / reference`` (e.g. a strategy's return as a fraction of an oracle's); NaN if
    the reference is not positive, where a fraction means nothing."""
    return float(value / reference) if reference > 1e-12 else float("nan")
