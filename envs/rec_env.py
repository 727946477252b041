"""`RecEnv`: one simulated user as a Gymnasium environment (the simulator core at B=1).

Also home of what the single and the vector environment share: the environment
options (`RecEnvOptions`, validated, unknown names listed), building the simulator
from them, the observation space, and action checking with clear messages.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from recsim_mm.candidates import ArrivalSchedule, ArrivingCatalog
from recsim_mm.device import resolve_device
from recsim_mm.item_space import ItemSpace
from recsim_mm.observation import (
    CANDIDATE_ITEMS,
    HISTORY_FEEDBACK,
    HISTORY_ITEMS,
    HISTORY_MASK,
    TIME_LEFT,
    USER_FEATURES,
)
from recsim_mm.simulator import Simulator
from recsim_mm.users import UserModel, resolve_user_model


@dataclass
class RecEnvOptions:
    """Options of every recsim_mm environment (keyword arguments of `RecEnv`, `RecVectorEnv`).

    Attributes:
        user_model: registered name (``"interest_evolution"``, ``"satiation"``,
            ``"myopic"``, ``"multimodal"``), dotted path ``"package.module:ClassName"``,
            or a `UserModel` subclass.
        user_params: keyword parameters of the user model (e.g. ``{"patience": 5}``).
        item_space: an `ItemSpace` to use instead of the default catalog.
        item_space_options: keyword arguments of
            ``recsim_mm.pipeline.default_item_space`` (e.g. ``{"num_items": 300}``);
            only without ``item_space``.
        obs_mode: ``"embeddings"`` (vectors) or ``"ids"`` (item rows).
        num_candidates: ``K``.
        history_length: ``H``.
        slate_size: ``S``; 1 gives a ``Discrete(K)`` action, more a
            ``MultiDiscrete([K] * S)`` slate.
        max_steps: episode truncation length.
        candidates: candidate options (see `recsim_mm.candidates.CandidateConfig`),
            e.g. ``{"popular": 0.25, "similar": 0.25, "exclude_consumed": True}``.
        reward: ``"engagement"`` (minutes), ``"click"``, or a callable (see ``reward_fn``).
        reward_fn: callable ``(observation, slate_positions, response) -> (B,) float32
            tensor`` replacing ``reward`` (batched torch inputs; see
            `recsim_mm.simulator.Simulator`).
        track_truth: put true affinities in ``info`` (costs a gather in ``ids`` mode).
        new_items: item cold start: ``[{"at": step, "items": [item id or row, ...]},
            ...]`` holds those items back until simulator step ``at`` (steps since the
            last seeded reset; see `recsim_mm.candidates.ArrivalSchedule`); candidates
            are then uniform over the items available (not combined with
            ``candidates``).
        history_prefix: user cold start: each fresh user arrives with this many past
            steps in its history (0 = an empty history; see
            `recsim_mm.simulator.Simulator`, docs/cold_start.md).
        device: ``"cpu"``, ``"cuda"``, ``"auto"``; default ``"cpu"`` for `RecEnv`
            (one user: kernel launches would dominate on a GPU), ``"auto"`` for the
            vector env.
    """

    user_model: str | type[UserModel] = "interest_evolution"
    user_params: dict[str, Any] | None = None
    item_space: ItemSpace | None = None
    item_space_options: dict[str, Any] | None = None
    obs_mode: str = "embeddings"
    num_candidates: int = 20
    history_length: int = 10
    slate_size: int = 1
    max_steps: int = 100
    candidates: dict[str, Any] | None = None
    reward: str | Callable = "engagement"
    reward_fn: Callable | None = None
    track_truth: bool = True
    new_items: list[dict[str, Any]] | None = None
    history_prefix: int = 0
    device: str | torch.device | None = None

    @classmethod
    def parse(cls, options: dict[str, Any]) -> RecEnvOptions:
        """Validate option names; unknown ones raise `ValueError` listing the valid ones."""
        valid = [f.name for f in dataclasses.fields(cls)]
        for name in options:
            if name not in valid:
                raise ValueError(f"unknown environment option {name!r}; valid options: {valid}")
        parsed = cls(**options)
        if parsed.reward_fn is not None:
            if not callable(parsed.reward_fn):
                raise ValueError(f"reward_fn must be callable; got {type(parsed.reward_fn).__name__}")
            if parsed.reward != "engagement":
                raise ValueError("give either reward=... or reward_fn=..., not both")
            parsed.reward = parsed.reward_fn
        if parsed.item_space is not None and not isinstance(parsed.item_space, ItemSpace):
            raise ValueError(f"item_space must be a recsim_mm.ItemSpace; got {type(parsed.item_space).__name__}")
        if parsed.item_space is not None and parsed.item_space_options:
            raise ValueError("give either item_space=... or item_space_options=..., not both")
        if parsed.item_space_options and "device" in parsed.item_space_options:
            raise ValueError("item_space_options must not set 'device'; use the environment option device=")
        if parsed.new_items is not None and parsed.candidates:
            raise ValueError("new_items draws candidates uniformly over the items available so far; "
                             "it is not combined with candidates= options")
        if parsed.user_params is not None and not isinstance(parsed.user_params, dict):
            raise ValueError(f"user_params must be a dict; got {type(parsed.user_params).__name__}")
        return parsed


def build_simulator(options: RecEnvOptions, num_users: int, default_device: str) -> Simulator:
    """The simulator core for ``num_users`` users as the options describe."""
    device = resolve_device(options.device if options.device is not None else default_device)
    if options.item_space is not None:
        item_space = options.item_space.to(device)
    else:
        from recsim_mm.pipeline import default_item_space

        item_space = default_item_space(**(options.item_space_options or {}), device=device)
    user_cls = resolve_user_model(options.user_model)
    users = user_cls(item_space, num_users, device, **(options.user_params or {}))
    arrivals = None
    if options.new_items is not None:
        arrivals = ArrivingCatalog(item_space, options.num_candidates,
                                   ArrivalSchedule.parse(options.new_items, item_space))
    return Simulator(
        item_space,
        users,
        num_candidates=options.num_candidates,
        history_length=options.history_length,
        slate_size=options.slate_size,
        obs_mode=options.obs_mode,
        max_steps=options.max_steps,
        candidates=options.candidates,
        reward=options.reward,
        track_truth=options.track_truth,
        candidate_source=arrivals,
        history_prefix=options.history_prefix,
    )


def observation_space(sim: Simulator) -> spaces.Dict:
    """The single-user observation space of a simulator (see docs/environments.md)."""
    h, k, n, d = sim.history_length, sim.num_candidates, sim.item_space.num_items, sim.item_space.dim
    if sim.obs_mode == "embeddings":
        # Fused vectors are [unit text | unit image]: every entry lies in [-1, 1].
        history = spaces.Box(-1.0, 1.0, (h, d), np.float32)
        candidates = spaces.Box(-1.0, 1.0, (k, d), np.float32)
    else:
        history = spaces.Box(0, n - 1, (h,), np.int64)
        candidates = spaces.Box(0, n - 1, (k,), np.int64)
    feedback_high = np.broadcast_to(np.array([1.0, sim.users.max_engagement()], np.float32), (h, 2))
    obs = {
        HISTORY_ITEMS: history,
        HISTORY_FEEDBACK: spaces.Box(np.zeros((h, 2), np.float32), feedback_high.copy(), dtype=np.float32),
        HISTORY_MASK: spaces.Box(0.0, 1.0, (h,), np.float32),
        CANDIDATE_ITEMS: candidates,
        TIME_LEFT: spaces.Box(0.0, sim.users.max_time_left(), (1,), np.float32),
    }
    if sim.num_features:
        obs[USER_FEATURES] = spaces.Box(-np.inf, np.inf, (sim.num_features,), np.float32)
    return spaces.Dict(obs)


class SlateSpace(spaces.MultiDiscrete):
    """``MultiDiscrete([K] * S)`` whose members hold S distinct positions (along the last axis).

    ``sample()`` draws distinct positions (uniform over ordered S-subsets of
    ``range(K)``) and ``contains()`` rejects repeats, so random agents and the
    Gymnasium/SB3 checkers produce valid slates. With ``batch=B`` the shape is
    ``(B, S)``: the action space of the vector env.

    Args:
        num_candidates: ``K``.
        slate_size: ``S`` (<= K).
        batch: optional leading ``B``.
        seed: seed of the space's sampler.
    """

    def __init__(self, num_candidates: int, slate_size: int, batch: int | None = None, seed: int | None = None):
        shape = (slate_size,) if batch is None else (batch, slate_size)
        super().__init__(np.full(shape, num_candidates, dtype=np.int64), dtype=np.int64, seed=seed)
        self.num_candidates, self.slate_size, self.batch = num_candidates, slate_size, batch

    def sample(self, mask: Any = None, probability: Any = None) -> np.ndarray:
        if mask is not None or probability is not None:
            raise ValueError("SlateSpace.sample does not support mask or probability")
        keys = self.np_random.random((*self.shape[:-1], self.num_candidates))
        return np.argsort(keys, axis=-1)[..., : self.slate_size].astype(np.int64)

    def contains(self, x: Any) -> bool:
        if not super().contains(np.asarray(x) if isinstance(x, (list, tuple)) else x):
            return False
        ordered = np.sort(np.asarray(x), axis=-1)
        return not bool((ordered[..., 1:] == ordered[..., :-1]).any())

    def __repr__(self) -> str:
        batch = "" if self.batch is None else f", batch={self.batch}"
        return f"SlateSpace(num_candidates={self.num_candidates}, slate_size={self.slate_size}{batch})"

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, SlateSpace) and super().__eq__(other)


def action_space(sim: Simulator, batch: int | None = None) -> spaces.Space:
    """``Discrete(K)`` for one recommendation, a `SlateSpace` (``MultiDiscrete([K] * S)``)
    for a slate; with ``batch`` the vector env's batched space."""
    k, s = sim.num_candidates, sim.slate_size
    if s > 1:
        return SlateSpace(k, s, batch)
    return spaces.Discrete(k) if batch is None else spaces.MultiDiscrete(np.full(batch, k, dtype=np.int64))


def check_actions(actions: Any, num_candidates: int, slate_size: int, batch: int | None) -> np.ndarray:
    """Validate actions and return them as ``(batch or 1, S)`` int64.

    Args:
        actions: one action (``batch=None``: an integer for ``S = 1``, ``(S,)`` for a
            slate) or a batch (``(B,)`` for ``S = 1``, ``(B, S)`` for slates).
        num_candidates: ``K``; positions must be in ``[0, K)``.
        slate_size: ``S``; positions in a slate must be distinct.
        batch: ``B`` for a vector env, ``None`` for a single env.

    Raises:
        ValueError: wrong shape, a non-integer or NaN entry, a position out of range,
            or a repeated position within a slate; the message names the value.
    """
    k, s = num_candidates, slate_size
    # Fast path for the commonest single-env call: a plain integer position.
    if batch is None and s == 1 and isinstance(actions, (int, np.integer)) and not isinstance(actions, bool):
        if not 0 <= actions < k:
            raise ValueError(f"action {int(actions)} is out of range; expected a candidate position in [0, {k})")
        return np.array([[actions]], dtype=np.int64)
    arr = np.asarray(actions)
    if batch is None:
        expected = () if s == 1 else (s,)
        what = "an integer position" if s == 1 else f"a slate of {s} distinct positions, shape ({s},)"
    else:
        expected = (batch,) if s == 1 else (batch, s)
        what = f"shape {expected}"
    if arr.shape != expected:
        raise ValueError(f"action has shape {arr.shape}; expected {what} (action={_short(arr)})")
    if arr.dtype.kind == "f":
        if np.isnan(arr).any():
            raise ValueError(f"action contains NaN; expected integer candidate positions (action={_short(arr)})")
        if not np.all(arr == np.round(arr)):
            raise ValueError(f"action contains a non-integer position; expected integers (action={_short(arr)})")
    elif arr.dtype.kind not in "iu":
        raise ValueError(f"action has dtype {arr.dtype}; expected integer candidate positions (action={_short(arr)})")
    out = arr.astype(np.int64, copy=False).reshape(-1, s)
    if out.size and (out.min() < 0 or out.max() >= k):
        bad = out[(out < 0) | (out >= k)][0]
        raise ValueError(f"action position {bad} is out of range; expected positions in [0, {k}) (action={_short(arr)})")
    if s > 1:
        ordered = np.sort(out, axis=1)
        repeated = (ordered[:, 1:] == ordered[:, :-1]).any(axis=1)
        if repeated.any():
            row = int(np.argmax(repeated))
            where = f" in row {row}" if batch is not None else ""
            raise ValueError(
                f"slate {out[row].tolist()}{where} repeats a position; the {s} slate positions must be distinct"
            )
    return out


def _short(arr: np.ndarray) -> str:
    text = np.array2string(np.asarray(arr), threshold=12)
    return text if len(text) < 120 else text[:117] + "..."


class RecEnv(gym.Env):
    """Recommend to one simulated user, step by step, for one session.

    The user's hidden interests live in the text and image parts of a multimodal item
    space (MiniLM text and EfficientNet-Lite0 image embeddings of a synthetic catalog
    by default). Each step the agent picks one of ``K`` candidates (or a slate of
    ``S``); the user clicks or not, engages for some minutes, and their state moves
    (satiation, interest drift, time budget, patience) per the user model.

    ## Action Space
    ``Discrete(K)``: the candidate position to recommend. Slate ids
    (``...Slate-v0``): ``MultiDiscrete([K] * S)``, ``S`` distinct positions, position
    0 first. An out-of-range, NaN, non-integer, wrongly shaped or (slates) repeated
    action raises `ValueError`; nothing is clamped.

    ## Observation Space
    ``Dict``:

    - ``history_items``: last ``H`` shown items (the clicked one on slates, else
      position 0), most recent last; ``(H, d)`` float32 fused vectors
      (``obs_mode="embeddings"``) or ``(H,)`` int64 item rows (``"ids"``); zero where padded.
    - ``history_feedback``: ``(H, 2)`` float32 ``[clicked 0/1, engagement minutes]``.
    - ``history_mask``: ``(H,)`` float32, 1 for a real past step.
    - ``candidate_items``: ``(K, d)`` float32 or ``(K,)`` int64.
    - ``time_left``: ``(1,)`` float32 minutes of the user's session budget.
    - ``user_features``: ``(F,)`` float32, only for user models that expose features.

    ## Rewards
    ``reward="engagement"`` (default): minutes engaged this step; ``"click"``: 1 for a
    click; or ``reward_fn`` (a learned reward model, say), called on batched torch
    tensors.

    ## Starting State
    A fresh user drawn by the user model (interests around favourite topics of the
    catalog, modality weight from a Beta, a time budget), an empty history and ``K``
    candidates.

    ## Episode End
    Terminated when the user leaves (``patience`` disappointments in a row) or has
    spent the time budget; truncated after ``max_steps`` steps. Calling `step` again
    without `reset` raises `RuntimeError`.

    ## Info
    ``click`` (bool), ``engagement`` (float minutes), ``clicked_item`` (int item row
    or -1), ``true_affinity`` ((K,) float32 of the candidates the action chose from),
    ``candidate_affinity`` ((K,) float32 of the candidates now in the observation:
    for oracle baselines), ``modality_weight`` (float). Hidden truth: for analysis
    and oracles only; never feed it to a learning agent. Reset info has
    ``candidate_affinity`` and ``modality_weight``.

    ## Arguments
    ``render_mode`` (``None`` or ``"ansi"``) and every field of `RecEnvOptions`
    (``user_model``, ``user_params``, ``item_space``, ``item_space_options``,
    ``obs_mode``, ``num_candidates``, ``history_length``, ``slate_size``,
    ``max_steps``, ``candidates``, ``reward``, ``reward_fn``, ``track_truth``,
    ``device``). Unknown names raise `ValueError` listing the valid ones.

    ```text
    env = gymnasium.make("recsim_mm/Satiation-v0", obs_mode="ids", max_steps=50)
    ```

    ## Version History
    - v0: initial version.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(self, render_mode: str | None = None, **options: Any) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode={render_mode!r} is not supported; expected None or 'ansi'")
        self.render_mode = render_mode
        self.options = RecEnvOptions.parse(options)
        self.simulator = build_simulator(self.options, num_users=1, default_device="cpu")
        self.observation_space = observation_space(self.simulator)
        self.action_space = action_space(self.simulator)
        self._num_candidates = self.simulator.num_candidates
        self._slate_size = self.simulator.slate_size
        self._on_cpu = self.simulator.device.type == "cpu"
        self._needs_reset = True
        self._seeded = False
        self._last: dict[str, Any] = {}

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        if options:
            raise ValueError(f"RecEnv.reset takes no options; got {sorted(options)}")
        if seed is None and not self._seeded:
            # Unseeded first reset: draw the core's seed from Gymnasium's np_random.
            seed = int(self.np_random.integers(2**62))
        self._seeded = True
        self.simulator.reset(seed, observe=False)
        self._needs_reset = False
        self._last = {}
        obs = self._observation()  # first: see step
        return obs, self._reset_info()

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        if self._needs_reset:
            raise RuntimeError(
                "step() called on a RecEnv whose episode has ended (or that was never reset); "
                "call reset() first"
            )
        positions = check_actions(action, self._num_candidates, self._slate_size, batch=None)
        sim = self.simulator
        out = sim.step_array(positions) if self._on_cpu else sim.step(torch.from_numpy(positions).to(sim.device))
        # The observation first: in embeddings mode the true affinities of the new
        # candidates are computed from the vectors it gathers (`_reset_info` reads them).
        obs = self._observation()
        # One host read per scalar (no stacking op); the affinity tensor is fresh each
        # step and never written again by the core, so its row is handed out as is.
        reward = out.reward.item()
        terminated, truncated = bool(out.terminated.item()), bool(out.truncated.item())
        self._needs_reset = terminated or truncated
        info = {
            "click": bool(out.click.item()),
            "engagement": out.engagement.item(),
            "clicked_item": out.clicked_item.item(),
        }
        if self.simulator.track_truth:
            info["true_affinity"] = (out.true_affinity if self._on_cpu else out.true_affinity.cpu()).numpy()[0]
        info.update(self._reset_info())
        self._last = {"action": positions[0].tolist(), "reward": reward, **info}
        return obs, reward, terminated, truncated, info

    def _observation(self) -> dict[str, np.ndarray]:
        # Fresh (1, ...) arrays, each written once; row 0 of each is the observation.
        return {key: value[0] for key, value in self.simulator.observation_arrays(copy=True).items()}

    def _reset_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {}
        sim = self.simulator
        if sim.track_truth:
            info["candidate_affinity"] = sim.candidate_affinity.cpu().numpy()[0].copy()
        for key, value in sim.users.hidden_state().items():
            info[key] = value.item()
        return info

    def render(self) -> str | None:
        """``"ansi"``: a one-line text summary of the last step (and time left)."""
        if self.render_mode != "ansi":
            return None
        time_left = float(self.simulator.users.time_left()[0])
        if not self._last:
            return f"new session: {self._num_candidates} candidates, {time_left:.1f} min left"
        return (
            f"step {int(self.simulator.steps[0])}: recommended {self._last['action']}, "
            f"click={self._last['click']}, engagement={self._last['engagement']:.2f} min, "
            f"reward={self._last['reward']:.2f}, {time_left:.1f} min left"
        )
