"""SB3 callbacks an experiment attaches to a training run: a progress bar and a learning curve.

Both follow SB3's `BaseCallback` protocol and never touch the training run's random
numbers, so attaching them does not change what is learned.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback

from agents.evaluation import evaluate_recommender
from recsim_mm.files import write_json


class ProgressCallback(BaseCallback):
    """Advances a progress bar (anything with tqdm's ``update(n)``) by the environment
    steps an SB3 model takes; a resumed run starts the bar past zero."""

    def __init__(self, bar: Any):
        super().__init__()
        self.bar = bar
        self._last = 0

    def _on_training_start(self) -> None:
        self.bar.update(self.num_timesteps)
        self._last = self.num_timesteps

    def _on_step(self) -> bool:
        self.bar.update(self.num_timesteps - self._last)
        self._last = self.num_timesteps
        return True


class LearningCurveCallback(BaseCallback):
    """Every ``every`` environment steps: the deterministic policy's mean episode return
    on held-out curve users and the critic's latest explained variance, appended to
    ``path`` (JSON ``[[step, return, explained variance or null], ...]``) and logged to
    TensorBoard as ``eval/episode_return``.

    The explained variance is SB3's ``train/explained_variance`` of the last update
    before the point (``1 - Var(returns - values) / Var(returns)`` over the rollout;
    null before the first update and for algorithms without a critic).

    Deterministic prediction draws no random numbers and the curve users have their
    own simulator (``env``, reset with ``seed`` at every point), so the curve never
    changes the training run it measures. A resumed run keeps the points up to its
    checkpoint's step.

    Args:
        env: an `envs.vector_env.RecVectorEnv` of the curve users.
        seed: reset seed of the curve users (never a training seed).
        every: environment steps between points.
        item_table: ``(N, d)`` float32 fused item vectors.
        path: the JSON file of points.
    """

    def __init__(self, env: Any, seed: int, every: int, item_table: torch.Tensor, path: Path):
        super().__init__()
        self.env, self.seed, self.every, self.item_table, self.path = env, seed, every, item_table, Path(path)
        self.rows: list[tuple] = []
        self._next = 0

    def _on_training_start(self) -> None:
        if self.path.exists():
            rows = json.loads(self.path.read_text())
            self.rows = [(int(s), float(r), *rest[:1]) for s, r, *rest in rows if s <= self.num_timesteps]
        if not self.rows or self.rows[-1][0] < self.num_timesteps:
            self._evaluate()
        self._next = (self.num_timesteps // self.every + 1) * self.every

    def _on_step(self) -> bool:
        if self.num_timesteps >= self._next:
            self._evaluate()
            self._next = (self.num_timesteps // self.every + 1) * self.every
        return True

    def _on_training_end(self) -> None:
        if self.rows[-1][0] < self.num_timesteps:
            self._evaluate()

    def _evaluate(self) -> None:
        result = evaluate_recommender(self.model, self.env, seed=self.seed, item_table=self.item_table)
        value = result.summary()["episode_return"]
        explained = self.model.logger.name_to_value.get("train/explained_variance")
        explained = None if explained is None or not np.isfinite(explained) else float(explained)
        self.rows.append((int(self.num_timesteps), float(value), explained))
        self.logger.record("eval/episode_return", value)
        write_json(self.path, self.rows)
