"""The supervised multimodal ranker: training on logged interactions, evaluation, and its three uses.

Training (`train_ranker`) fits the shared `Scorer` to an `InteractionLog`: click
binary cross-entropy on every shown slot plus, optionally, an engagement regression
head on clicked slots (multi-task); AdamW; a validation split by user; early stopping
on validation log loss; the best weights kept (and written atomically to a checkpoint
when a path is given); TensorBoard scalars when a folder is given. On CPU, the same
seed gives the same weights.

Evaluation (`evaluate_ranker`) on held-out users: AUC and log loss of the shown
slots' clicks, and, for simulated logs that carry the hidden true affinities of all
candidates, NDCG@k and Recall@k of the model's ranking of the K candidates.

Uses of a trained `Ranker`:

1. `RankerPolicy`: greedy recommendation (top-scored candidate, or top-S slate) on any
   recsim-mm observation, single or batched, ``embeddings`` or ``ids`` mode.
2. `EngagementRewardModel`: predicted engagement as a learned reward, for the
   environments' ``reward_fn=`` option.
3. `Ranker.warm_start_state_dict()` / `Ranker.warm_start(scorer)`: the scorer's weights
   for the PPO actor / DQN Q-network.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from recsim_mm.device import cpu_threads, resolve_device
from recsim_mm.files import atomic_torch_save
from recsim_mm.item_features import item_feature_table
from recsim_mm.item_space import ItemSpace
from recsim_mm.logs import InteractionLog
from recsim_mm.metrics import auc, log_loss, ndcg_at_k, recall_at_k, top_k_relevant
from recsim_mm.observation import CANDIDATE_ITEMS
from recsim_mm.scorer import Scorer, ScorerConfig

CHECKPOINT_FORMAT = "recsim_mm.Ranker/1"


@dataclass(frozen=True)
class TrainConfig:
    """How `train_ranker` fits the scorer.

    Attributes:
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        batch_size: records per gradient step.
        max_epochs: passes over the training records at most.
        patience: epochs without a validation log-loss improvement of ``min_delta``
            before stopping.
        min_delta: smallest improvement of validation log loss (nats) that counts.
        val_fraction: share of users held out for validation (when no ``val_log``
            is given).
        engagement_weight: weight of the engagement loss (0 disables it); the loss
            is the MSE in minutes on clicked slots divided by the variance of the
            training engagement, so the weight is scale-free.
        grad_clip: max gradient norm.
        seed: initial weights, the user split and the batch order.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        checkpoint_path: where the best checkpoint is written (atomically), or None.
        tensorboard_dir: folder for TensorBoard scalars, or None.
        eval_batch_size: records per forward pass in validation.
        num_threads: torch CPU threads while training (None:
            `recsim_mm.device.default_cpu_threads`, half the cores).
    """

    lr: float = 3e-3
    weight_decay: float = 1e-4
    batch_size: int = 256
    max_epochs: int = 30
    patience: int = 3
    min_delta: float = 1e-4
    val_fraction: float = 0.2
    engagement_weight: float = 0.2
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "auto"
    checkpoint_path: str | None = None
    tensorboard_dir: str | None = None
    eval_batch_size: int = 4096
    num_threads: int | None = None

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_epochs", "patience", "eval_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"TrainConfig.{name}={value!r}; expected a positive int")
        for name in ("lr", "weight_decay", "engagement_weight", "grad_clip", "min_delta"):
            if getattr(self, name) < 0:
                raise ValueError(f"TrainConfig.{name}={getattr(self, name)}; expected >= 0")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"TrainConfig.val_fraction={self.val_fraction}; expected in (0, 1)")


class Ranker:
    """A trained scorer bound to the item space it was trained on.

    Args:
        scorer: the network; it must hold ``item_space.fused`` as its item table.
        item_space: the `ItemSpace` of the logs it learned from.

    The scorer is kept in eval mode; every method runs without gradients.
    """

    def __init__(self, scorer: Scorer, item_space: ItemSpace):
        if scorer.item_table is None:
            raise ValueError("Ranker needs a Scorer built with item_table=item_space.fused")
        self.scorer = scorer.eval()
        self.item_space = item_space

    @property
    def config(self) -> ScorerConfig:
        """The scorer's architecture."""
        return self.scorer.config

    @property
    def device(self) -> torch.device:
        """Where the scorer's weights live."""
        return next(self.scorer.parameters()).device

    def to(self, device: str | torch.device) -> Ranker:
        """Move the scorer (in place) to ``device`` (``"auto"`` allowed); returns self."""
        self.scorer.to(resolve_device(device))
        return self

    @torch.no_grad()
    def predict(self, obs: dict[str, torch.Tensor], batch_size: int = 4096) -> dict[str, torch.Tensor]:
        """Scorer heads on a batched observation, chunked to bound memory.

        Returns:
            ``{"click_logit": (B, K) float32, "engagement": (B, K) float32 minutes given
            a click (when the head exists), "click_probability": (B, K) float32}``, on the
            ranker's device.
        """
        device = self.device
        batch = next(iter(obs.values())).shape[0]
        parts = []
        for start in range(0, batch, batch_size):
            chunk = {k: v[start : start + batch_size].to(device) for k, v in obs.items()}
            parts.append(self.scorer.predict(chunk))
        out = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        out["click_probability"] = torch.sigmoid(out["click_logit"])
        return out

    def score_log(self, log: InteractionLog, candidates: str = "shown") -> torch.Tensor:
        """Click logits of a log's records: ``(M, S)`` for ``"shown"``, ``(M, K)`` for ``"all"``."""
        _check_log_matches(log, self.item_space)
        return self.predict(log.observations(candidates=candidates))["click_logit"].cpu()

    # -- the three uses --------------------------------------------------------------------

    def policy(self, slate_size: int | None = None, objective: str = "click") -> RankerPolicy:
        """Greedy policy: the top candidate (``slate_size=None``) or the top-S slate, ranked
        by ``objective`` (``"click"``: P(click); ``"engagement"``: P(click) x E[minutes | click],
        the expected reward of an engagement environment)."""
        return RankerPolicy(self, slate_size=slate_size, objective=objective)

    def reward_model(self) -> EngagementRewardModel:
        """Learned reward: the predicted engagement of what was recommended."""
        return EngagementRewardModel(self)

    def warm_start_state_dict(self) -> dict[str, torch.Tensor]:
        """CPU copy of the scorer's weights (no item table: it loads in either obs mode)."""
        return {k: v.detach().cpu().clone() for k, v in self.scorer.state_dict().items()}

    def warm_start(self, scorer: Scorer) -> Scorer:
        """Load this ranker's weights into ``scorer`` (e.g. a PPO actor's), in place.

        Raises:
            ValueError: ``scorer`` has a different architecture (names the differing
                `ScorerConfig` fields).
        """
        _require_same_architecture(self.config, scorer.config, "the ranker", "the target scorer")
        scorer.load_state_dict(self.warm_start_state_dict())
        return scorer

    # -- checkpoints -----------------------------------------------------------------------

    def save(self, path: str | Path, extra: dict | None = None) -> None:
        """Write a checkpoint (atomically: a crash never leaves a half-written file).

        It holds the scorer config, the item space fingerprint and the weights, and
        loads with ``torch.load(..., weights_only=True)``.
        """
        save_checkpoint(path, self.scorer, self.item_space, extra or {})

    @classmethod
    def load(
        cls,
        path: str | Path,
        item_space: ItemSpace,
        device: str | torch.device = "auto",
        expected_config: ScorerConfig | None = None,
    ) -> Ranker:
        """Read a checkpoint written by `save` / `train_ranker`.

        Args:
            path: the checkpoint file.
            item_space: must be the item space it was trained on (fingerprint check).
            device: where to put the scorer.
            expected_config: when given, the stored architecture must equal it.

        Raises:
            FileNotFoundError: no such file.
            ValueError: not a ranker checkpoint, a different item space, a different
                architecture than ``expected_config``, or weights that do not fit the
                stored architecture (each message names the file and the mismatch).
        """
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such ranker checkpoint")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types for a bad file
            raise ValueError(f"{path}: not a readable checkpoint ({exc})") from exc
        if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{path}: not a ranker checkpoint (missing format {CHECKPOINT_FORMAT!r})")
        fingerprint = item_space.fingerprint()
        if payload["item_space_fingerprint"] != fingerprint:
            raise ValueError(
                f"{path}: checkpoint was trained on item space {payload['item_space_fingerprint']} "
                f"({payload['num_items']} items), but the given item space is {fingerprint} "
                f"({item_space.num_items} items); scores would refer to different items"
            )
        missing = sorted({f.name for f in fields(ScorerConfig)} - set(payload["scorer_config"]))
        if missing:
            # a field added since the file was written (e.g. history_decays): its default
            # would build an architecture the stored weights do not fit
            raise ValueError(
                f"{path}: checkpoint written by an older version; its scorer config lacks "
                f"ScorerConfig field(s) {missing}, so its weights do not fit this version's "
                "architecture: retrain the ranker"
            )
        try:
            config = ScorerConfig.from_dict(payload["scorer_config"])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: invalid stored scorer config ({exc})") from exc
        if expected_config is not None:
            _require_same_architecture(config, expected_config, f"checkpoint {path}", "expected_config")
        # the item features are a persistent buffer: the checkpoint's values replace these
        placeholder = torch.zeros(item_space.num_items, len(config.item_features)) if config.item_features else None
        scorer = Scorer(config, item_table=item_space.fused.cpu(), item_features=placeholder)
        try:
            scorer.load_state_dict(payload["state_dict"])
        except RuntimeError as exc:
            raise ValueError(
                f"{path}: weights do not fit the stored architecture {config} ({exc})"
            ) from exc
        return cls(scorer, item_space).to(device)


def save_checkpoint(path: str | Path, scorer: Scorer, item_space: ItemSpace, extra: dict) -> None:
    """Atomically write a ranker checkpoint (see `Ranker.save`)."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "scorer_config": scorer.config.to_dict(),
        "item_space_fingerprint": item_space.fingerprint(),
        "num_items": item_space.num_items,
        "state_dict": {k: v.detach().cpu() for k, v in scorer.state_dict().items()},
        **extra,
    }
    atomic_torch_save(payload, path)


def _require_same_architecture(a: ScorerConfig, b: ScorerConfig, name_a: str, name_b: str) -> None:
    # Dropout changes no weight shape, but a differing rate would silently change the
    # model; every field counts.
    da, db = a.to_dict(), b.to_dict()
    diff = {k: (da[k], db[k]) for k in da if da[k] != db[k]}
    if diff:
        detail = ", ".join(f"{k}: {va!r} vs {vb!r}" for k, (va, vb) in diff.items())
        raise ValueError(f"architecture mismatch between {name_a} and {name_b}: {detail}")


def _check_log_matches(log: InteractionLog, item_space: ItemSpace) -> None:
    if log.item_ids != item_space.item_ids:
        raise ValueError(
            f"{log.source}: the log's item rows refer to a different item space than the "
            "ranker's; load the log with InteractionLog.load(path, item_space)"
        )


# -- training --------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """What `train_ranker` returns.

    Attributes:
        ranker: the best-validation-loss weights, in eval mode.
        history: one dict per epoch: ``epoch``, ``train_loss``, ``train_click_loss``,
            ``train_engagement_loss``, ``val_log_loss``, ``val_auc``, ``seconds``.
        best_epoch: epoch (from 1) of the kept weights.
        samples_per_second: training records per second over all epochs (excludes
            validation).
    """

    ranker: Ranker
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    samples_per_second: float = 0.0


def train_ranker(
    log: InteractionLog,
    item_space: ItemSpace,
    scorer_config: ScorerConfig | None = None,
    config: TrainConfig | None = None,
    val_log: InteractionLog | None = None,
) -> TrainResult:
    """Fit a `Scorer` to logged clicks (and engagement) and keep the best weights.

    Args:
        log: training records; split by user into train/validation unless ``val_log``.
        item_space: the item space the log refers to.
        scorer_config: architecture (default: `ScorerConfig` sized for ``item_space``).
        config: optimisation settings (`TrainConfig`).
        val_log: explicit validation records (users must not overlap with ``log``).

    Returns:
        `TrainResult`; with ``config.checkpoint_path`` the best checkpoint is on disk.

    Raises:
        ValueError: the log belongs to another item space, the architecture does not
            fit the item space, the training log has no clicks and no non-clicks, a
            user is in both splits, or the log lacks ``time_left`` while the scorer
            reads it.
    """
    config = config or TrainConfig()
    scorer_config = scorer_config or ScorerConfig(d_text=item_space.d_text, d_image=item_space.d_image)
    _check_log_matches(log, item_space)
    if (scorer_config.d_text, scorer_config.d_image) != (item_space.d_text, item_space.d_image):
        raise ValueError(
            f"scorer_config has d_text={scorer_config.d_text}, d_image={scorer_config.d_image}; "
            f"the item space has {item_space.d_text}, {item_space.d_image}"
        )
    if scorer_config.use_time_left and log.time_left is None:
        raise ValueError(
            f"{log.source}: the log has no time_left column but the scorer reads it; "
            "set ScorerConfig(use_time_left=False)"
        )
    if scorer_config.user_features_dim:
        raise ValueError("logs carry no user_features; train with ScorerConfig(user_features_dim=0)")
    if val_log is None:
        train_log, val_log = log.split_by_user(config.val_fraction, seed=config.seed)
    else:
        _check_log_matches(val_log, item_space)
        overlap = set(np.unique(log.user_id)) & set(np.unique(val_log.user_id))
        if overlap:
            raise ValueError(f"users {sorted(overlap)[:5]} are in both the training and validation logs")
        train_log = log
    train_labels = train_log.clicks
    if train_labels.min() == train_labels.max():
        raise ValueError(
            f"{log.source}: the training records are all {'clicks' if train_labels.max() else 'non-clicks'}; "
            "a click model needs both"
        )

    device = resolve_device(config.device)
    # fork_rng: seeding here must not change the caller's global random stream.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), \
            cpu_threads(device, config.num_threads):
        torch.manual_seed(config.seed)  # initial weights and dropout
        return _fit(train_log, val_log, item_space, scorer_config, config, device)


def _fit(
    train_log: InteractionLog,
    val_log: InteractionLog,
    item_space: ItemSpace,
    scorer_config: ScorerConfig,
    config: TrainConfig,
    device: torch.device,
) -> TrainResult:
    """The training loop of `train_ranker` (inputs already checked, RNG seeded)."""
    train_labels = train_log.clicks
    # item metadata from the catalog (duration) and from the training records only (the
    # validation users' clicks stay out of the popularity counts)
    features = item_feature_table(item_space, scorer_config.item_features, train_log) if scorer_config.item_features else None
    scorer = Scorer(scorer_config, item_table=item_space.fused.cpu(), item_features=features).to(device)
    optimizer = torch.optim.AdamW(scorer.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    use_engagement = scorer_config.engagement_head and config.engagement_weight > 0

    obs = train_log.observations(candidates="shown", device=device)
    labels = torch.as_tensor(train_labels, device=device)
    engagement = torch.zeros_like(labels)
    clicked = train_log.clicked_slot >= 0
    engagement[torch.as_tensor(np.nonzero(clicked)[0], device=device),
               torch.as_tensor(train_log.clicked_slot[clicked], device=device)] = torch.as_tensor(
        train_log.engagement[clicked], device=device)
    engagement_var = float(train_log.engagement[clicked].var()) if clicked.sum() > 1 else 1.0
    engagement_var = engagement_var if engagement_var > 0 else 1.0
    val_obs = val_log.observations(candidates="shown")
    val_labels = val_log.clicks

    writer = None
    if config.tensorboard_dir is not None:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(config.tensorboard_dir)

    generator = torch.Generator().manual_seed(config.seed)
    m = len(train_log)
    best_loss, best_state, best_epoch, stale = math.inf, None, 0, 0
    history: list[dict] = []
    train_seconds = 0.0
    ranker = Ranker(scorer, item_space)
    for epoch in range(1, config.max_epochs + 1):
        scorer.train()
        start = time.perf_counter()
        order = torch.randperm(m, generator=generator).to(device)
        totals = torch.zeros(3, device=device)
        for first in range(0, m, config.batch_size):
            idx = order[first : first + config.batch_size]
            batch = {k: v[idx] for k, v in obs.items()}
            out = scorer.predict(batch)
            click_loss = F.binary_cross_entropy_with_logits(out["click_logit"], labels[idx])
            loss = click_loss
            eng_loss = torch.zeros((), device=device)
            if use_engagement:
                # Masked mean over clicked slots, without a data-dependent branch (no
                # host sync per batch on CUDA).
                hit = labels[idx]
                err = (out["engagement"] - engagement[idx]) * hit
                eng_loss = (err * err).sum() / hit.sum().clamp_min(1.0) / engagement_var
                loss = loss + config.engagement_weight * eng_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(scorer.parameters(), config.grad_clip)
            optimizer.step()
            totals += torch.stack([loss.detach(), click_loss.detach(), eng_loss.detach()]) * len(idx)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        train_seconds += seconds
        scorer.eval()
        val_logits = ranker.predict(val_obs, batch_size=config.eval_batch_size)["click_logit"].cpu()
        val_loss = log_loss(val_logits, val_labels)
        try:
            val_auc = auc(val_logits, val_labels)
        except ValueError:  # one-class validation split: AUC undefined, loss still valid
            val_auc = float("nan")
        train_loss, train_click, train_eng = (totals / m).tolist()
        row = {
            "epoch": epoch, "train_loss": train_loss, "train_click_loss": train_click,
            "train_engagement_loss": train_eng, "val_log_loss": val_loss, "val_auc": val_auc,
            "seconds": seconds,
        }
        history.append(row)
        if writer is not None:
            for key in ("train_loss", "train_click_loss", "train_engagement_loss"):
                writer.add_scalar(f"train/{key[6:]}", row[key], epoch)
            writer.add_scalar("val/log_loss", val_loss, epoch)
            writer.add_scalar("val/auc", val_auc, epoch)
            writer.add_scalar("train/samples_per_second", m / seconds, epoch)
        if val_loss < best_loss - config.min_delta:
            best_loss, best_epoch, stale = val_loss, epoch, 0
            best_state = copy.deepcopy(scorer.state_dict())
            if config.checkpoint_path is not None:
                save_checkpoint(config.checkpoint_path, scorer, item_space, {
                    "train_config": asdict(config), "epoch": epoch, "val_log_loss": val_loss,
                })
        else:
            stale += 1
            if stale >= config.patience:
                break
    if writer is not None:
        writer.close()
    scorer.load_state_dict(best_state)
    return TrainResult(
        ranker=Ranker(scorer, item_space),
        history=history,
        best_epoch=best_epoch,
        samples_per_second=m * len(history) / train_seconds,
    )


# -- evaluation ------------------------------------------------------------------------------


def evaluate_ranker(ranker: Ranker, log: InteractionLog, k: int = 5) -> dict[str, float]:
    """Held-out metrics of ``ranker`` on ``log`` (use users it was not trained on).

    Args:
        ranker: the model.
        log: evaluation records (same item space).
        k: cut-off of NDCG@k / Recall@k.

    Returns:
        ``{"auc", "log_loss", "click_rate", "records"}`` over the shown slots' clicks
        and, when the log carries ``true_affinity``, ``"ndcg@k"`` (graded relevance:
        each candidate's true affinity minus the row's lowest, so the worst candidate
        gains 0) and ``"recall@k"`` (share of the k truly best candidates in the
        model's top k), both over all K candidates.
    """
    _check_log_matches(log, ranker.item_space)
    labels = log.clicks
    logits = ranker.score_log(log, "shown")
    out = {
        "records": float(len(log)),
        "click_rate": float(labels.mean()),
        "auc": auc(logits, labels),
        "log_loss": log_loss(logits, labels),
    }
    if log.true_affinity is not None:
        if not 1 <= k <= log.num_candidates:
            raise ValueError(f"k={k} must be in [1, K={log.num_candidates}]")
        scores = ranker.score_log(log, "all").numpy()
        truth = log.true_affinity.astype(np.float64)
        out[f"ndcg@{k}"] = ndcg_at_k(scores, truth - truth.min(axis=1, keepdims=True), k)
        out[f"recall@{k}"] = recall_at_k(scores, top_k_relevant(truth, k), k)
    return out


# -- greedy policy and reward model -----------------------------------------------------------


def _as_batch(obs: dict, device: torch.device) -> tuple[dict[str, torch.Tensor], bool]:
    """Observation (single or batched; numpy or torch) -> batched tensors, and whether
    the input was a single observation."""
    cand = obs[CANDIDATE_ITEMS]
    ids_mode = not np.issubdtype(np.asarray(cand).dtype, np.floating) if not isinstance(
        cand, torch.Tensor) else not cand.is_floating_point()
    single = np.ndim(cand) == (1 if ids_mode else 2)
    batch = {}
    for key, value in obs.items():
        tensor = torch.as_tensor(np.asarray(value) if not isinstance(value, torch.Tensor) else value)
        batch[key] = (tensor.unsqueeze(0) if single else tensor).to(device)
    return batch, single


#: What a `RankerPolicy` ranks by, named after the environment reward it maximises.
OBJECTIVES = ("click", "engagement")


class RankerPolicy:
    """Greedy policy over a trained ranker: recommend the top-scored candidate(s).

    Works on any recsim-mm observation: single or batched (vector env), numpy or
    torch, ``embeddings`` or ``ids`` mode.

    Args:
        ranker: the trained `Ranker`.
        slate_size: None for a single item (``Discrete(K)`` action); ``S`` for the
            top-S slate in descending score (``MultiDiscrete([K] * S)`` action).
        objective: ``"click"`` ranks by the predicted click probability (the expected
            reward of ``reward="click"``); ``"engagement"`` by ``P(click) x E[minutes |
            click]`` from the two heads (the expected reward of ``reward="engagement"``;
            needs the engagement head). Rank by the objective the environment rewards,
            or the comparison with an agent trained on that reward is unfair.

    Calling it returns the action: ``int`` (single obs) or ``(B,)`` int64 for
    ``slate_size=None``; ``(S,)`` or ``(B, S)`` int64 for slates.
    """

    def __init__(self, ranker: Ranker, slate_size: int | None = None, objective: str = "click"):
        if slate_size is not None and slate_size < 1:
            raise ValueError(f"slate_size={slate_size}; expected None or >= 1")
        if objective not in OBJECTIVES:
            raise ValueError(f"objective={objective!r}; expected one of {OBJECTIVES}")
        if objective == "engagement" and ranker.scorer.engagement_head is None:
            raise ValueError("objective='engagement' needs a ranker trained with ScorerConfig(engagement_head=True)")
        self.ranker = ranker
        self.slate_size = slate_size
        self.objective = objective

    @torch.no_grad()
    def expected_reward(self, obs: dict) -> torch.Tensor:
        """``(B, K)`` float32 predicted reward of each candidate under ``objective``
        (probability for ``"click"``, minutes for ``"engagement"``), on the ranker's device."""
        batch, _ = _as_batch(obs, self.ranker.device)
        out = self.ranker.scorer.predict(batch)
        click = torch.sigmoid(out["click_logit"])
        return click if self.objective == "click" else click * out["engagement"]

    @torch.no_grad()
    def __call__(self, obs: dict):
        batch, single = _as_batch(obs, self.ranker.device)
        scores = self.ranker.scorer(batch) if self.objective == "click" else self.expected_reward(batch)
        if self.slate_size is None:
            action = scores.argmax(dim=-1).cpu().numpy()
            return int(action[0]) if single else action
        if self.slate_size > scores.shape[-1]:
            raise ValueError(f"slate_size={self.slate_size} exceeds the K={scores.shape[-1]} candidates")
        action = scores.topk(self.slate_size, dim=-1).indices.cpu().numpy()
        return action[0] if single else action

    def predict(self, observation: dict, state=None, episode_start=None, deterministic: bool = True):
        """Stable-Baselines3-style ``(action, state)``, so SB3 evaluation helpers accept it."""
        return self(observation), state


class EngagementRewardModel:
    """Learned reward: the ranker's predicted engagement (minutes) of the recommendation.

    For a single item the reward is ``P(click) * E[engagement | click]`` of the
    recommended candidate; for a slate, the sum of that product over the slate's
    items (it ignores competition between items of one slate). It reads only the
    observation and the action, never what the simulated user did, so an agent trained
    on it learns from the model alone; evaluate such an agent with the true simulator
    reward.

    It has the signature of the environments' ``reward_fn=`` option (see
    `recsim_mm.simulator.Simulator`): ``reward_model(observation, slate_positions,
    response=None) -> (B,) float32`` tensor on the observation's device, where
    ``observation`` is the batched dict in ``embeddings`` or ``ids`` mode and
    ``slate_positions`` ``(B, S)`` int64. Example::

        env = gymnasium.make("recsim_mm/InterestEvolution-v0", reward_fn=ranker.reward_model())

    Args:
        ranker: a `Ranker` with the engagement head.
    """

    def __init__(self, ranker: Ranker):
        if ranker.scorer.engagement_head is None:
            raise ValueError(
                "the reward model needs a ranker trained with ScorerConfig(engagement_head=True)"
            )
        self.ranker = ranker

    @torch.no_grad()
    def expected_engagement(self, observation: dict) -> torch.Tensor:
        """``(B, K)`` float32 predicted minutes of every candidate: P(click) x engagement.

        ``observation`` is batched (numpy or torch, either mode); the result is on the
        ranker's device.
        """
        batch, _ = _as_batch(observation, self.ranker.device)
        out = self.ranker.scorer.predict(batch)
        return torch.sigmoid(out["click_logit"]) * out["engagement"]

    def __call__(self, observation: dict, slate_positions, response=None) -> torch.Tensor:
        """``(B,)`` float32 predicted engagement of the slates; ``response`` is ignored."""
        value = self.expected_engagement(observation)
        positions = torch.as_tensor(np.asarray(slate_positions) if not isinstance(
            slate_positions, torch.Tensor) else slate_positions, device=value.device).long()
        positions = positions.reshape(value.shape[0], -1)
        reward = value.gather(1, positions).sum(1).float()
        device = next(iter(observation.values())).device if isinstance(
            next(iter(observation.values())), torch.Tensor) else torch.device("cpu")
        return reward.to(device)
