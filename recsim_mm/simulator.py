"""The one batched simulator core: B users x K candidates per step, in torch, CPU or CUDA.

Every environment is this core: the single-user Gymnasium env runs it at B=1, the
vector env at B=N. A step takes the chosen slate positions of all users at once, asks
the user model to respond and transition, writes the observed history, draws the next
candidates and reports rewards, terminations and truncations; no Python loop runs over
users. All randomness comes from one `torch.Generator` seeded by `reset(seed=...)`.

Observation (views into preallocated buffers, leading dim B; see docs/environments.md):

- ``history_items``: ``(B, H, d)`` float32 fused vectors (``embeddings`` mode) or
  ``(B, H)`` int64 item rows (``ids`` mode), zero where padded, most recent last.
- ``history_feedback``: ``(B, H, 2)`` float32 ``[clicked, engagement minutes]``.
- ``history_mask``: ``(B, H)`` float32, 1 for a real past step.
- ``candidate_items``: ``(B, K, d)`` float32 or ``(B, K)`` int64.
- ``time_left``: ``(B, 1)`` float32 minutes.
- ``user_features``: ``(B, F)`` float32, only if the user model has features.

The history records, per step, the item the user clicked, or (no click) the item in
slate position 0, with its feedback. It lives in a buffer of 2H slots per user whose
window of the H most recent entries starts at an offset shared by all users (they
all step together): a step writes one slot and moves the window by one; every H + 1
steps the window is copied back to the front.

The core keeps item rows, never item vectors: in ``embeddings`` mode the history and
candidate vectors are gathered from the item table (a few hundred KB, cache-resident)
when an observation is asked for, straight into the arrays handed out
(`observation_arrays`), so a step writes each observation byte once and per-user
state stays small (the history holds ``(B, 2H)`` rows, not ``(B, 2H, d)`` vectors).
"""

from __future__ import annotations

import inspect
import math
import sys
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch

from recsim_mm.candidates import (
    CandidateConfig,
    CandidateGenerator,
    CandidateSource,
    check_candidate_source,
)
from recsim_mm.item_space import ItemSpace
from recsim_mm.observation import (
    CANDIDATE_ITEMS,
    HISTORY_FEEDBACK,
    HISTORY_ITEMS,
    HISTORY_MASK,
    ITEM_KEYS,
    TIME_LEFT,
    USER_FEATURES,
)
from recsim_mm.users.base import UserModel, UserResponse

OBS_MODES = ("embeddings", "ids")
REWARDS = ("engagement", "click")

#: ``reward_fn(observation, slate_positions, response) -> (B,) float32``; see `Simulator`.
RewardFn = Callable[[dict[str, torch.Tensor], torch.Tensor, UserResponse], torch.Tensor]


#: Arrays per key that `FreshArrays` keeps for reuse (a loop holding the previous
#: step's observation while the next one is built needs two; one spare).
_POOL_SIZE = 3


class FreshArrays:
    """Output arrays for observations the caller may keep, without a page fault per step.

    ``get(key, shape, dtype)`` returns an array nobody but this pool references: one of
    the arrays it handed out earlier if the caller has dropped every reference to it
    (its reference count shows only the pool's own; a kept array, a view of it, a
    ``torch.from_numpy`` of it or a dict holding it all count as references), else a
    new ``np.empty``. The caller then writes every element, so the array is as good as
    fresh: what the caller still holds is never written again. A step of a large
    vector env hands out about a hundred MB; a new allocation of that size is
    page-faulted in by the kernel every step (mmap'd, zero-filled), which costs about
    as much as writing the observation itself.

    Args:
        size: arrays kept per key; when all are held by the caller, new arrays are
            allocated (and not kept).
        small_bytes: arrays smaller than this are always allocated new (a one-user
            observation: reuse would cost more than it saves).
    """

    def __init__(self, size: int = _POOL_SIZE, small_bytes: int = 64 * 1024) -> None:
        self.size = size
        self.small_bytes = small_bytes
        self._arrays: dict[str, list[np.ndarray]] = {}
        # The count of an array only a list holds, measured the way `get` measures it
        # (interpreters differ in the temporary references a call adds).
        probe = [np.empty(0)]
        self._unreferenced = self._count(probe, 0)

    @staticmethod
    def _count(arrays: list[np.ndarray], i: int) -> int:
        return sys.getrefcount(arrays[i])

    def get(self, key: str, shape: tuple[int, ...], dtype: np.dtype | type) -> np.ndarray:
        """An uninitialised ``shape`` ``dtype`` array no one else references (see the class).

        Arrays under ``small_bytes`` are always new: malloc serves them from the heap
        without a page fault, and a new one costs less than looking for a free one."""
        if math.prod(shape) * np.dtype(dtype).itemsize < self.small_bytes:
            return np.empty(shape, dtype)
        arrays = self._arrays.setdefault(key, [])
        for i in range(len(arrays)):
            # Any reference beyond the list's own is a holder.
            if self._count(arrays, i) == self._unreferenced and arrays[i].shape == shape and arrays[i].dtype == dtype:
                return arrays[i]
        out = np.empty(shape, dtype)
        if len(arrays) < self.size:
            arrays.append(out)
        return out

    def copy(self, key: str, value: np.ndarray) -> np.ndarray:
        """``value`` copied into an array from `get` (one write)."""
        if value.nbytes < self.small_bytes:
            return value.copy()
        out = self.get(key, value.shape, value.dtype)
        np.copyto(out, value)
        return out


class StepOutcome(NamedTuple):
    """What one core step produced, all with leading dim B, on the simulator's device.

    Attributes:
        reward: ``(B,)`` float32.
        click: ``(B,)`` bool, the user clicked a slate item.
        clicked_position: ``(B,)`` int64 slate position clicked, ``-1`` for none.
        clicked_item: ``(B,)`` int64 item row clicked, ``-1`` for none.
        engagement: ``(B,)`` float32 minutes.
        terminated: ``(B,)`` bool, the user ended the session (left or budget spent).
        truncated: ``(B,)`` bool, ``max_steps`` reached and not terminated.
        true_affinity: ``(B, K)`` float32 true affinity of the candidates the action
            chose from (zeros when the core does not track truth).
    """

    reward: torch.Tensor
    click: torch.Tensor
    clicked_position: torch.Tensor
    clicked_item: torch.Tensor
    engagement: torch.Tensor
    terminated: torch.Tensor
    truncated: torch.Tensor
    true_affinity: torch.Tensor


class Simulator:
    """Batched simulation of ``B = user_model.num_users`` users.

    Args:
        item_space: the catalog's item space (moved to the user model's device).
        user_model: holds the B users; its device is the simulator's device.
        num_candidates: ``K`` candidates offered per step.
        history_length: ``H`` past steps in the observation.
        slate_size: ``S`` positions the action fills (1: single recommendation).
        obs_mode: ``"embeddings"`` or ``"ids"``.
        max_steps: steps after which an episode is truncated.
        candidates: `CandidateConfig` or a dict of its options.
        reward: ``"engagement"`` (minutes, default), ``"click"`` (0/1) or a callable
            ``reward_fn(observation, slate_positions, response) -> (B,) float32``,
            called with the observation the action was taken on (batched dict as
            above), ``slate_positions`` ``(B, S)`` int64 and the `UserResponse`.
        track_truth: keep the candidates' true affinities (`candidate_affinity`,
            ``StepOutcome.true_affinity``, for ``info``), computed once per step when
            first asked for (in ``embeddings`` mode from the candidate vectors the
            observation gathers; in ``ids`` mode it costs a gather of ``(B, K, d)``).
        seed: initial seed of the generator (`reset` and `seed` can re-seed).
        candidate_source: where candidates come from instead of the
            `CandidateGenerator` that ``candidates`` configures (an ecosystem's
            creators, say); see `recsim_mm.candidates.CandidateSource`. It can also
            be set later with `set_candidate_source`.
        history_prefix: user cold start (docs/cold_start.md): each fresh user arrives
            with ``P`` past steps already in the observed history instead of none
            (``0 <= P <= H``). Past step ``j`` is the user's favourite (highest true
            affinity) of ``K`` items drawn uniformly from the catalog, recorded as a
            click watched in full (its duration in minutes). The prefix only fills
            the history: the user's hidden state (interests, satiation, budget) is
            not changed by it. 0 (default) draws nothing, so trajectories are
            unchanged.
    """

    def __init__(
        self,
        item_space: ItemSpace,
        user_model: UserModel,
        *,
        num_candidates: int = 20,
        history_length: int = 10,
        slate_size: int = 1,
        obs_mode: str = "embeddings",
        max_steps: int = 100,
        candidates: CandidateConfig | dict | None = None,
        reward: str | RewardFn = "engagement",
        track_truth: bool = True,
        seed: int | None = None,
        candidate_source: CandidateSource | None = None,
        history_prefix: int = 0,
    ) -> None:
        if obs_mode not in OBS_MODES:
            raise ValueError(f"obs_mode={obs_mode!r} is not an observation mode; expected one of {OBS_MODES}")
        if not (isinstance(reward, str) and reward in REWARDS) and not callable(reward):
            raise ValueError(f"reward={reward!r} is invalid; expected one of {REWARDS} or a callable")
        for name, value, low in (
            ("num_candidates", num_candidates, 1),
            ("history_length", history_length, 1),
            ("slate_size", slate_size, 1),
            ("max_steps", max_steps, 1),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name}={value!r} must be an integer >= {low}")
        if slate_size > num_candidates:
            raise ValueError(f"slate_size={slate_size} exceeds num_candidates={num_candidates}")
        if (not isinstance(history_prefix, int) or isinstance(history_prefix, bool)
                or not 0 <= history_prefix <= history_length):
            raise ValueError(f"history_prefix={history_prefix!r} must be an integer in [0, history_length="
                             f"{history_length}] (past steps a fresh user arrives with)")
        self.history_prefix = history_prefix
        self.users = user_model
        self.device = dev = user_model.device
        self.item_space = item_space if item_space.device == dev else item_space.to(dev)
        self.num_users = b = user_model.num_users
        self.num_candidates = k = num_candidates
        self.history_length = h = history_length
        self.slate_size = slate_size
        self.obs_mode = obs_mode
        self.max_steps = max_steps
        self.reward = reward
        self.track_truth = track_truth
        self.num_features = int(getattr(user_model, "num_features", 0))
        d = self.item_space.dim
        self._fused = self.item_space.fused
        self.candidate_config = CandidateConfig.from_options(candidates)
        self.candidate_generator: CandidateSource = CandidateGenerator(
            self.item_space, k, b, self.candidate_config, max_consumed=max_steps
        )
        if candidate_source is not None:
            self.set_candidate_source(candidate_source)
        self.generator = torch.Generator(device=dev)
        self.generator.manual_seed(0 if seed is None else int(seed))

        embeddings = obs_mode == "embeddings"
        # History buffers (2H slots; window [start, start + H), see module docstring).
        self._hist_items = torch.zeros(b, 2 * h, dtype=torch.long, device=dev)
        # [clicked, engagement, mask] side by side: one write per step for all three.
        self._hist_feedback = torch.zeros(b, 2 * h, 3, device=dev)
        # embeddings mode: the history's rows of `_vector_table`, whose extra last row
        # (index N) is the zero vector of padded slots: one gather yields the history.
        n = self.item_space.num_items
        self._padding_row = n
        self._vector_table = torch.cat([self._fused, self._fused.new_zeros(1, d)]) if embeddings else None
        self._hist_rows = torch.full((b, 2 * h), n, dtype=torch.long, device=dev) if embeddings else None
        self._start = 0
        self.candidates = torch.zeros(b, k, dtype=torch.long, device=dev)
        # embeddings mode: (B, H, d) and (B, K, d) vectors behind `observation()` and
        # `observation_arrays(copy=False)`, allocated on first use and gathered at most
        # once per step (`_vectors_current`).
        self._hist_vectors: torch.Tensor | None = None
        self._candidate_vectors: torch.Tensor | None = None
        self._vectors_current = False
        # True affinities of the current candidates: a new tensor each time they are
        # computed (never written in place, so one handed out as
        # `StepOutcome.true_affinity` stays as it was), computed lazily: at most once
        # per step, when first asked for (`candidate_affinity`).
        self._affinity = torch.zeros(b, k, device=dev)
        self._affinity_current = True
        self._affinity_takes_vectors = "fused" in inspect.signature(user_model.affinity).parameters
        self._fresh = FreshArrays()
        self.steps = torch.zeros(b, dtype=torch.int32, device=dev)
        self._all_rows = torch.arange(b, device=dev)
        self._row_index = np.arange(b)
        self._on_cpu = dev.type == "cpu"
        self._ones = torch.ones(b, device=dev)
        self._checked_user_outputs = False
        # CPU: numpy views of the buffers above (same memory), made once; the CPU step
        # and observation index and copy through them (numpy's per-call cost is a
        # fraction of torch's, which is what a step of a few users is made of).
        self._np: dict[str, np.ndarray] = {}
        self._numpy_key: torch.Tensor | None = None
        self._numpy_value: np.ndarray | None = None
        if dev.type == "cpu":
            self._np = {
                "hist_items": self._hist_items.numpy(),
                "feedback": self._hist_feedback.numpy(),
                "candidates": self.candidates.numpy(),
                "steps": self.steps.numpy(),
                "fused": self._fused.numpy(),
            }
            if embeddings:
                self._np["hist_rows"] = self._hist_rows.numpy()
                self._np["vector_table"] = self._vector_table.numpy()

    # ------------------------------------------------------------------ reset
    def reset(self, seed: int | None = None, *, observe: bool = True) -> dict[str, torch.Tensor] | None:
        """Start every row with a fresh user (re-seeding the generator if ``seed`` is given).

        Args:
            seed: re-seed the generator first (see `seed`); None continues the stream.
            observe: return the observation; False returns None, for callers that
                take it as numpy arrays (`observation_arrays`) and so skip building
                the torch one.

        Returns:
            The observation dict (see module docstring), or None with ``observe=False``.
        """
        if seed is not None:
            self.seed(seed)
        self._start = 0
        self.reset_rows(self._all_rows)
        return self.observation() if observe else None

    def seed(self, seed: int, *, clear_candidates: bool = True) -> None:
        """Re-seed the simulator's generator (the one source of its randomness).

        Args:
            seed: an int; the same seed and actions give the same trajectories.
            clear_candidates: also let the candidate source forget what it drew from
                the old stream (pre-drawn blocks) and all consumed items, as a full
                reset wants; False keeps them (re-seeding while other rows go on,
                as the vector env's ``reset(seed=..., options={"reset_mask": ...})``).

        Raises:
            ValueError: ``seed`` is not an integer.
        """
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ValueError(f"seed={seed!r} must be an int")
        self.generator.manual_seed(int(seed))
        if clear_candidates:
            self.candidate_generator.clear()

    def set_candidate_source(self, source: CandidateSource) -> None:
        """Draw candidates from ``source`` from now on (see `recsim_mm.candidates.CandidateSource`).

        Raises:
            TypeError: ``source`` lacks a method or property of the interface (named).
        """
        check_candidate_source(source)
        self.candidate_generator = source

    def reset_rows(self, rows: torch.Tensor) -> None:
        """Put fresh users into ``rows`` (``(R,)`` int64 indices or ``(B,)`` bool mask).

        Their history is cleared, their step counter zeroed and new candidates drawn;
        other rows are untouched.
        """
        if rows.dtype == torch.bool:
            rows = rows.nonzero().squeeze(1)
        if rows.numel() == 0:
            return
        self.users.sample(rows, self.generator)
        if self._np:  # CPU: the same fills through the numpy views (cheaper for a few rows)
            views, index = self._np, rows.numpy()
            views["hist_items"][index] = 0
            views["feedback"][index] = 0
            if "hist_rows" in views:
                views["hist_rows"][index] = self._padding_row
            views["steps"][index] = 0
        else:
            self._clear_rows_torch(rows)
        if self.history_prefix:
            self._write_prefix(rows)
        self.candidate_generator.clear_rows(rows)
        self._draw_candidates(rows)

    def _clear_rows_torch(self, rows: torch.Tensor) -> None:
        # index_fill_: one kernel per buffer (indexed assignment dispatches far more).
        self._hist_items.index_fill_(0, rows, 0)
        self._hist_feedback.index_fill_(0, rows, 0)
        if self._hist_rows is not None:
            self._hist_rows.index_fill_(0, rows, self._padding_row)
        self.steps.index_fill_(0, rows, 0)

    def _write_prefix(self, rows: torch.Tensor) -> None:
        """Fill the newest ``P`` history slots of the fresh ``rows`` (see ``history_prefix``)."""
        p, k, h = self.history_prefix, self.num_candidates, self.history_length
        pool = torch.randint(self.item_space.num_items, (rows.numel(), p * k), generator=self.generator,
                             device=self.device)
        affinity = self.users.affinity(pool, rows).view(-1, p, k)
        chosen = pool.view(-1, p, k).gather(2, affinity.argmax(2, keepdim=True)).squeeze(2)  # (R, P)
        slots = torch.arange(self._start + h - p, self._start + h, device=self.device)
        index = (rows[:, None], slots[None, :])
        self._hist_items[index] = chosen
        self._hist_feedback[index] = torch.stack(
            [torch.ones_like(chosen, dtype=torch.float32), self.item_space.duration[chosen],
             torch.ones_like(chosen, dtype=torch.float32)], dim=-1)
        if self._hist_rows is not None:
            self._hist_rows[index] = chosen

    # ------------------------------------------------------------------ step
    def step(self, slate_positions: torch.Tensor) -> StepOutcome:
        """Advance all B users by one step.

        Args:
            slate_positions: ``(B, S)`` int64 candidate positions in ``[0, K)``,
                distinct within a row; validated by the caller (the envs check
                range, shape, NaN and duplicates with messages).

        Returns:
            `StepOutcome`. Rows that terminated or were truncated keep stepping if
            called again; the caller resets them (`reset_rows`).
        """
        if self._on_cpu:
            return self.step_array(slate_positions.numpy(), slate_positions)
        users, g = self.users, self.generator
        # Affinities of the candidates the action chooses from, before the step moves
        # the users' state (usually already computed for the observation).
        acted_on_affinity = self.candidate_affinity
        slate = self.candidates.gather(1, slate_positions)
        response = users.respond(slate, g)
        if not self._checked_user_outputs:
            self._check_response(response)
        reward = self._reward(slate_positions, response)
        users.transition(slate, response, g)
        clicked_position = response.clicked
        click = clicked_position >= 0
        if self.slate_size == 1:
            shown = slate[:, 0]
        else:
            shown = slate.gather(1, clicked_position.clamp_min(0).unsqueeze(1)).squeeze(1)
        clicked_item = torch.where(click, shown, -1)
        self._write_history(shown, click, response.engagement)
        self.candidate_generator.record(shown, click)
        self.steps += 1
        terminated = users.done()
        truncated = (self.steps >= self.max_steps) & ~terminated
        self._draw_candidates(None)
        return StepOutcome(
            reward=reward,
            click=click,
            clicked_position=clicked_position,
            clicked_item=clicked_item,
            engagement=response.engagement,
            terminated=terminated,
            truncated=truncated,
            true_affinity=acted_on_affinity,
        )

    def step_array(self, positions: np.ndarray, slate_positions: torch.Tensor | None = None) -> StepOutcome:
        """`step` for a CPU simulator, taking the positions as a numpy array (what the
        environments hold); the same operations, with the index and compare work on
        numpy views of the same memory (a numpy op on a few values costs a fraction of
        a torch op, which is what a one-user step is made of).

        Args:
            positions: ``(B, S)`` int64 candidate positions (validated by the caller).
            slate_positions: the same as a tensor, if the caller has one (a reward
                function receives it); made from ``positions`` when needed.
        """
        users, g, views = self.users, self.generator, self._np
        acted_on_affinity = self.candidate_affinity
        rows = self._row_index
        if self.slate_size == 1:
            slate_np = views["candidates"][rows, positions[:, 0]][:, None]
        else:
            slate_np = views["candidates"][rows[:, None], positions]
        slate = torch.from_numpy(slate_np)
        response = users.respond(slate, g)
        if not self._checked_user_outputs:
            self._check_response(response)
        if slate_positions is None and not isinstance(self.reward, str):
            slate_positions = torch.from_numpy(positions)
        reward = self._reward(slate_positions, response)
        users.transition(slate, response, g)
        clicked_position = response.clicked
        clicked_np = clicked_position.numpy()
        engagement_np = response.engagement.numpy()
        click_np = clicked_np >= 0
        shown_np = slate_np[:, 0] if self.slate_size == 1 else slate_np[rows, clicked_np.clip(0, None)]
        self._write_history_np(shown_np, click_np, engagement_np)
        click = torch.from_numpy(click_np)
        if getattr(self.candidate_generator, "records", True):
            self.candidate_generator.record(torch.from_numpy(shown_np), click)
        steps = views["steps"]
        steps += 1
        terminated = users.done()
        truncated_np = steps >= self.max_steps
        truncated_np &= ~terminated.numpy()
        self._draw_candidates(None)
        return StepOutcome(
            reward=reward,
            click=click,
            clicked_position=clicked_position,
            clicked_item=torch.from_numpy(np.where(click_np, shown_np, -1)),
            engagement=response.engagement,
            terminated=terminated,
            truncated=torch.from_numpy(truncated_np),
            true_affinity=acted_on_affinity,
        )

    def _reward(self, slate_positions: torch.Tensor, response: UserResponse) -> torch.Tensor:
        if self.reward == "engagement":
            return response.engagement
        if self.reward == "click":
            return (response.clicked >= 0).float()
        # The callable sees the observation the action was taken on: the buffers are
        # still unchanged at this point of the step.
        value = self.reward(self.observation(), slate_positions, response)
        if not isinstance(value, torch.Tensor) or value.shape != (self.num_users,):
            shape = getattr(value, "shape", type(value).__name__)
            raise ValueError(f"reward_fn must return a ({self.num_users},) float tensor; got {shape}")
        value = value.to(torch.float32)
        if not torch.isfinite(value).all():
            raise ValueError("reward_fn returned a NaN or infinite reward")
        return value

    def _check_response(self, response: UserResponse) -> None:
        """Catch a custom user model breaking the contract, once, with a clear message."""
        name = type(self.users).__name__
        b, s = self.num_users, self.slate_size
        if not isinstance(response, tuple) or len(response) != 2:
            raise TypeError(f"{name}.respond must return UserResponse(clicked, engagement); got {type(response).__name__}")
        clicked, engagement = response
        if clicked.shape != (b,) or clicked.dtype != torch.long:
            raise TypeError(f"{name}.respond: clicked must be ({b},) int64; got {tuple(clicked.shape)} {clicked.dtype}")
        if engagement.shape != (b,) or engagement.dtype != torch.float32:
            raise TypeError(
                f"{name}.respond: engagement must be ({b},) float32; got {tuple(engagement.shape)} {engagement.dtype}"
            )
        if bool(((clicked < -1) | (clicked >= s)).any()):
            raise ValueError(f"{name}.respond: clicked positions must be in [-1, {s}); got {clicked.tolist()[:8]}")
        for method, shape in (("done", (b,)), ("time_left", (b,))):
            out = getattr(self.users, method)()
            if not isinstance(out, torch.Tensor) or out.shape != shape:
                raise TypeError(f"{name}.{method}() must return a {shape} tensor; got {getattr(out, 'shape', out)}")
        self._checked_user_outputs = True

    def _write_history(self, item: torch.Tensor, click: torch.Tensor, engagement: torch.Tensor) -> None:
        if self.device.type == "cpu":
            self._write_history_np(item.numpy(), click.numpy(), engagement.numpy())
            return
        h = self.history_length
        buffers = [self._hist_items, self._hist_feedback]
        if self._hist_rows is not None:
            buffers.append(self._hist_rows)
        start = self._start + 1
        if start > h:
            for buf in buffers:
                buf[:, : h - 1] = buf[:, start : start + h - 1]
            start = 0
        self._start = start
        newest = start + h - 1
        self._hist_items[:, newest] = item
        self._hist_feedback[:, newest] = torch.stack([click.float(), engagement, self._ones], dim=1)
        if self._hist_rows is not None:
            self._hist_rows[:, newest] = item

    def _write_history_np(self, item: np.ndarray, click: np.ndarray, engagement: np.ndarray) -> None:
        """`_write_history` on CPU, through the numpy views (pure data movement, same values)."""
        h, views = self.history_length, self._np
        items, feedback, rows = views["hist_items"], views["feedback"], views.get("hist_rows")
        start = self._start + 1
        if start > h:  # the window would run past the buffer: move its H - 1 newest entries to the front
            for buf in (items, feedback) if rows is None else (items, feedback, rows):
                buf[:, : h - 1] = buf[:, start : start + h - 1]
            start = 0
        self._start = start
        newest = start + h - 1
        items[:, newest] = item
        feedback[:, newest, 0] = click
        feedback[:, newest, 1] = engagement
        feedback[:, newest, 2] = 1.0
        if rows is not None:
            rows[:, newest] = item

    def _draw_candidates(self, rows: torch.Tensor | None) -> None:
        """New candidates for ``rows`` (None: all).

        Also marks the observation's vectors and the true affinities stale: every
        caller changes the history, the candidates or the users."""
        self._vectors_current = False
        self._affinity_current = not self.track_truth
        items = clicked = None
        if self.candidate_generator.reads_state:
            window = slice(self._start, self._start + self.history_length)
            items = self._hist_items[:, window]
            clicked = self._hist_feedback[:, window, 0] > 0
            if rows is not None:
                items, clicked = items[rows], clicked[rows]
        count = self.num_users if rows is None else rows.numel()
        source = self.candidate_generator
        if self._np and isinstance(source, CandidateGenerator) and source.streams_blocks:
            fresh_np = source.block_rows(count, self.generator)  # numpy rows of a pre-drawn block
        else:
            fresh = source.sample(rows, count, items, clicked, self.generator)
            fresh_np = fresh.numpy() if self._np else None
        if self._np:
            if rows is None:
                self._np["candidates"][:] = fresh_np
            else:
                self._np["candidates"][rows.numpy()] = fresh_np
        elif rows is None:
            self.candidates.copy_(fresh)
        else:
            self.candidates.index_copy_(0, rows, fresh)

    @property
    def candidate_affinity(self) -> torch.Tensor:
        """``(B, K)`` float32 true affinity of each user for the current candidates.

        Zeros when the core does not track truth. Computed at most once per step, on
        first access (the observation's candidate vectors are reused in
        ``embeddings`` mode); the tensor is never written afterwards.
        """
        if not self._affinity_current:
            self._compute_affinity(None)
        return self._affinity

    def _compute_affinity(self, candidate_vectors: torch.Tensor | None) -> None:
        """Affinities of the current candidates (``(B, K, d)`` vectors if at hand)."""
        if candidate_vectors is not None and self._affinity_takes_vectors:
            self._affinity = self.users.affinity(self.candidates, None, fused=candidate_vectors)
        else:
            self._affinity = self.users.affinity(self.candidates, None)
        self._affinity_current = True

    # ------------------------------------------------------------------ observation
    def _current_vectors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, H, d)`` history and ``(B, K, d)`` candidate vectors (embeddings mode),
        gathered into reused buffers at most once per step."""
        if self._hist_vectors is None or self._candidate_vectors is None:
            b, d, dev = self.num_users, self.item_space.dim, self.device
            self._hist_vectors = torch.empty(b, self.history_length, d, device=dev)
            self._candidate_vectors = torch.empty(b, self.num_candidates, d, device=dev)
        if not self._vectors_current:
            self._gather_vectors(self._hist_vectors, self._candidate_vectors)
            self._vectors_current = True
        return self._hist_vectors, self._candidate_vectors

    def _affinity_from(self, candidate_vectors: torch.Tensor) -> None:
        """Compute stale true affinities from just-gathered ``(B, K, d)`` candidate vectors."""
        if not self._affinity_current:
            self._compute_affinity(candidate_vectors)

    def _gather_vectors(self, history: torch.Tensor, candidates: torch.Tensor) -> None:
        """Write the history ``(B, H, d)`` and candidate ``(B, K, d)`` vectors into the
        given contiguous float32 tensors (one gather each from the cache-resident table)."""
        assert self._vector_table is not None and self._hist_rows is not None
        d = self.item_space.dim
        window = slice(self._start, self._start + self.history_length)
        if self.device.type == "cpu":
            self._gather_vectors_np(history.numpy(), candidates.numpy())
            return
        torch.index_select(self._vector_table, 0, self._hist_rows[:, window].reshape(-1), out=history.view(-1, d))
        torch.index_select(self._fused, 0, self.candidates.view(-1), out=candidates.view(-1, d))

    def _numpy_of(self, tensor: torch.Tensor) -> np.ndarray:
        """``tensor.numpy()``, remembered for the last tensor asked for (a user model's
        state tensor is the same object every step; ``.numpy()`` costs a few us)."""
        if tensor is not self._numpy_key:
            self._numpy_key, self._numpy_value = tensor, tensor.numpy()
        return self._numpy_value

    def _gather_vectors_np(self, history: np.ndarray, candidates: np.ndarray) -> None:
        """`_gather_vectors` on CPU into numpy arrays: numpy's take, the same copy for a
        fraction of the dispatch (``mode="clip"``: rows are valid, and the default
        ``"raise"`` would buffer the whole output)."""
        views = self._np
        window = slice(self._start, self._start + self.history_length)
        np.take(views["vector_table"], views["hist_rows"][:, window], axis=0, out=history, mode="clip")
        np.take(views["fused"], views["candidates"], axis=0, out=candidates, mode="clip")

    def observation(self) -> dict[str, torch.Tensor]:
        """The current observation as torch tensors (see module docstring).

        Views of the simulator's buffers (the vectors of ``embeddings`` mode are
        gathered into reused buffers on the first call after a step): they change on
        the next `step`/`reset`; copy them to keep them.
        """
        window = slice(self._start, self._start + self.history_length)
        feedback = self._hist_feedback[:, window]
        if self.obs_mode == "embeddings":
            history, candidates = self._current_vectors()
            self._affinity_from(candidates)
        else:
            history, candidates = self._hist_items[:, window], self.candidates
        obs = {
            HISTORY_ITEMS: history,
            HISTORY_FEEDBACK: feedback[..., :2],
            HISTORY_MASK: feedback[..., 2],
            CANDIDATE_ITEMS: candidates,
            TIME_LEFT: self.users.time_left().unsqueeze(1),
        }
        if self.num_features:
            obs[USER_FEATURES] = self.users.features()
        return obs

    def observation_rows(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Fresh numpy arrays of the current observation of ``rows`` only (``(R,)`` int64).

        Same keys as `observation`, leading dim ``R``; what a vector env keeps of the
        users whose episode just ended, without gathering everyone's vectors.
        """
        index = torch.as_tensor(rows, dtype=torch.long, device=self.device)
        window = slice(self._start, self._start + self.history_length)
        feedback = self._hist_feedback.index_select(0, index)[:, window]
        if self.obs_mode == "embeddings":
            assert self._vector_table is not None and self._hist_rows is not None
            d = self.item_space.dim
            history_rows = self._hist_rows.index_select(0, index)[:, window].reshape(-1)
            history = self._vector_table.index_select(0, history_rows).view(len(rows), self.history_length, d)
            candidates = self._fused.index_select(0, self.candidates.index_select(0, index).view(-1))
            candidates = candidates.view(len(rows), self.num_candidates, d)
        else:
            history = self._hist_items.index_select(0, index)[:, window]
            candidates = self.candidates.index_select(0, index)
        obs = {
            HISTORY_ITEMS: history,
            HISTORY_FEEDBACK: feedback[..., :2],
            HISTORY_MASK: feedback[..., 2],
            CANDIDATE_ITEMS: candidates,
            TIME_LEFT: self.users.time_left().index_select(0, index).unsqueeze(1),
        }
        if self.num_features:
            obs[USER_FEATURES] = self.users.features().index_select(0, index)
        return {key: np.array(value.cpu().numpy()) for key, value in obs.items()}

    def observation_arrays(self, copy: bool = True) -> dict[str, np.ndarray]:
        """The current observation as numpy arrays (same keys and shapes as `observation`).

        ``copy=True`` (what the environments hand out by default): arrays the caller
        may keep, each written once (the ``embeddings`` vectors are gathered from the
        item table straight into them, and the true affinities, if tracked, are
        computed from those vectors). They come from `FreshArrays`: memory of an
        earlier observation is reused only once the caller holds no reference to it,
        so a kept observation is never overwritten. ``copy=False``: views of the
        simulator's buffers, valid until the next `step`/`reset`, which then
        overwrites them (the vectors are gathered into reused buffers). On CUDA the
        tensors are copied to host memory.
        """
        if not self._on_cpu:
            return {key: value.cpu().numpy() for key, value in self.observation().items()}
        views = self._np
        window = slice(self._start, self._start + self.history_length)
        feedback = views["feedback"][:, window]
        time_left = self._numpy_of(self.users.time_left()).reshape(-1, 1)
        fresh_vectors = False
        if self.obs_mode == "ids":
            history, candidates = views["hist_items"][:, window], views["candidates"]
        elif not copy or self._vectors_current:
            hist_vectors, candidate_vectors = self._current_vectors()
            self._affinity_from(candidate_vectors)
            history, candidates = hist_vectors.numpy(), candidate_vectors.numpy()
        else:  # arrays for the caller, gathered into directly: the one write of these bytes
            b, d, pool = self.num_users, self.item_space.dim, self._fresh
            history = pool.get(HISTORY_ITEMS, (b, self.history_length, d), np.float32)
            candidates = pool.get(CANDIDATE_ITEMS, (b, self.num_candidates, d), np.float32)
            self._gather_vectors_np(history, candidates)
            if not self._affinity_current:
                # The fused user's kernel reads the (cache-resident) table, not these vectors.
                fused_user = getattr(self.users, "_fused_step", False)
                self._compute_affinity(None if fused_user else torch.from_numpy(candidates))
            fresh_vectors = True
        obs = {
            HISTORY_ITEMS: history,
            HISTORY_FEEDBACK: feedback[..., :2],
            HISTORY_MASK: feedback[..., 2],
            CANDIDATE_ITEMS: candidates,
            TIME_LEFT: time_left,
        }
        if self.num_features:
            obs[USER_FEATURES] = self.users.features().numpy()
        if not copy:
            return obs
        pool = self._fresh
        return {
            key: value if fresh_vectors and key in ITEM_KEYS else pool.copy(key, value)
            for key, value in obs.items()
        }

    # ------------------------------------------------------------------ memory
    def state_bytes(self) -> int:
        """Bytes of all per-user tensors held by the core and its user model (B users)."""
        seen: set[int] = set()
        total = 0
        for owner in (self, self.users, self.candidate_generator):
            for value in vars(owner).values():
                if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == self.num_users:
                    if value.data_ptr() not in seen:
                        seen.add(value.data_ptr())
                        total += value.numel() * value.element_size()
        return total
