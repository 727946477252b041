"""Training PPO and DQN on the shared scorer: build, warm-start, checkpoint, resume.

Read top to bottom: `AgentConfig` (every knob), `build_agent` (SB3 algorithm on the
native batched environment, warm start from the ranker), `RecMetricsCallback`
(recommendation metrics into TensorBoard), checkpoint I/O, and `train_agent` (the
loop with periodic checkpoints and resume after an interruption).

Checkpoints are our own ``.pt`` files (policy and optimizer state, step counter,
config hash, item space fingerprint), written atomically and loaded with
``weights_only=True``; a resume directory from a different configuration is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3 import DQN
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.logger import configure

from agents.policies import ScorerActorCriticPolicy, ScorerDQNPolicy
from agents.ppo import PriorRegularizedPPO
from agents.sb3_vec_env import SB3VecEnv
from agents.slateq import SlateQ, SlateQPolicy, check_choice_model
from recsim_mm.device import resolve_device
from recsim_mm.files import atomic_torch_save, load_checkpoint
from recsim_mm.item_features import item_feature_table
from recsim_mm.item_space import ItemSpace
from recsim_mm.scorer import ScorerConfig

ALGOS = ("ppo", "dqn", "slateq")
CHECKPOINT_FORMAT = "recsim_mm.AgentCheckpoint/1"


@dataclass
class AgentConfig:
    """Everything that defines one RL training run (hashed to guard resumes).

    Attributes:
        algo: ``"ppo"``, ``"dqn"`` or ``"slateq"`` (`agents.slateq.SlateQ`: slate
            environments; DQN's knobs below apply to it).
        total_steps: environment steps (summed over the ``num_envs`` users).
        num_envs: users simulated in parallel (one torch batch).
        learning_rate: Adam step size.
        gamma: discount per recommendation step.
        seed: seeds SB3, the networks and the training users.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"`` for networks and simulator.
        checkpoint_every: environment steps between checkpoints.
        scorer: `ScorerConfig` overrides (e.g. ``{"hidden_dim": 32}``); ignored for
            the architecture when warm-starting (the ranker's architecture is used).
        temperature: the actor's softmax temperature over log expected rewards
            (PPO): ``pi(i) ~ expected_reward_i ** (1 / temperature)``; smaller is
            closer to the greedy ranker. Its mode is greedy's choice at any value.
        n_steps, batch_size, n_epochs, gae_lambda, ent_coef, clip_range: PPO.
        vf_coef: weight of the value loss in PPO's loss (the critic is detached from
            the actor's scorer, so it trades off nothing but the critic's step size).
        normalize_values: PopArt normalisation of the critic's output
            (`agents.policies.ValueNormalizer`); the value loss is then measured in
            units of the returns' standard deviation.
        value_hidden: width of the critic's two hidden layers.
        value_lr_scale: the critic's learning rate over ``learning_rate`` (PPO): the
            critic starts from scratch beside a warm-started actor.
        kl_coef: weight of ``KL(pi || ranker)`` in PPO's loss, its own term
            (`agents.ppo.PriorRegularizedPPO`; needs a ranker, any ``ent_coef``); 0 = off.
        bc_epochs, bc_lr: behaviour cloning of the logged clicked recommendations
            before RL (`behaviour_clone`; PPO only, 0 epochs = off).
        buffer_size, learning_starts, train_freq, gradient_steps,
        target_update_interval, exploration_fraction, exploration_final_eps: DQN
            and SlateQ.
    """

    algo: str = "ppo"
    total_steps: int = 50_000
    num_envs: int = 64
    learning_rate: float = 3e-4
    gamma: float = 0.95
    seed: int = 0
    device: str = "auto"
    checkpoint_every: int = 10_000
    scorer: dict[str, Any] = field(default_factory=dict)
    # PPO
    n_steps: int = 32
    batch_size: int = 512
    n_epochs: int = 4
    gae_lambda: float = 0.9
    ent_coef: float = 0.01
    clip_range: float = 0.2
    temperature: float = 0.5
    vf_coef: float = 0.5
    normalize_values: bool = True
    value_hidden: int = 64
    value_lr_scale: float = 10.0
    # DQN
    buffer_size: int = 50_000
    learning_starts: int = 2_000
    train_freq: int = 1
    gradient_steps: int = 4
    target_update_interval: int = 2_000
    exploration_fraction: float = 0.3
    exploration_final_eps: float = 0.05
    # KL penalty toward the ranker (PPO with warm start; 0 = off)
    kl_coef: float = 0.0
    # behaviour cloning before RL (PPO only; needs a log passed to train_agent)
    bc_epochs: int = 0
    bc_lr: float = 1e-3

    def __post_init__(self) -> None:
        if self.algo not in ALGOS:
            raise ValueError(f"unknown agent algo {self.algo!r}; expected one of {ALGOS}")
        for name in ("total_steps", "num_envs", "checkpoint_every", "n_steps", "batch_size", "value_hidden"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"AgentConfig.{name}={value!r}; expected an int >= 1")
        for name in ("n_epochs", "buffer_size", "train_freq", "target_update_interval", "bc_epochs",
                     "learning_starts", "gradient_steps"):
            value, low = getattr(self, name), 0 if name in ("bc_epochs", "learning_starts") else 1
            if not isinstance(value, int) or (value < low and not (name == "gradient_steps" and value == -1)):
                raise ValueError(f"AgentConfig.{name}={value!r}; expected an int >= {low}"
                                 + (" (or -1: as many as environment steps)" if name == "gradient_steps" else ""))
        # Ranges SB3 does not check: out of them it trains silently wrong (or dies in torch).
        ranges = {"learning_rate": (0.0, None, "> 0"), "bc_lr": (0.0, None, "> 0"),
                  "clip_range": (0.0, None, "> 0"), "gamma": (0.0, 1.0, "in [0, 1]"),
                  "gae_lambda": (0.0, 1.0, "in [0, 1]"), "exploration_fraction": (0.0, 1.0, "in [0, 1]"),
                  "exploration_final_eps": (0.0, 1.0, "in [0, 1]"), "ent_coef": (0.0, None, ">= 0"),
                  "kl_coef": (0.0, None, ">= 0"), "temperature": (0.0, None, "> 0"),
                  "vf_coef": (0.0, None, ">= 0"), "value_lr_scale": (0.0, None, "> 0")}
        for name, (low, high, expected) in ranges.items():
            value = getattr(self, name)
            strict = expected == "> 0"
            if (not isinstance(value, int | float) or isinstance(value, bool) or value < low
                    or (strict and value == low) or (high is not None and value > high)):
                raise ValueError(f"AgentConfig.{name}={value!r}; expected a number {expected}")
        for name in ("normalize_values",):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"AgentConfig.{name}={getattr(self, name)!r}; expected true or false")
        if self.kl_coef and self.algo != "ppo":
            raise ValueError(f"AgentConfig.kl_coef={self.kl_coef} with algo={self.algo!r}: the KL penalty is for PPO")
        if self.bc_epochs and self.algo != "ppo":
            raise ValueError(
                f"AgentConfig.bc_epochs={self.bc_epochs} with algo={self.algo!r}: behaviour "
                "cloning initialises a policy, so it is offered for PPO only"
            )

    def fingerprint(self) -> str:
        """Hash of every field but ``total_steps`` (a resume may extend the budget)."""
        data = {k: v for k, v in dataclasses.asdict(self).items() if k != "total_steps"}
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def make_env(config: AgentConfig, env_id: str, env_options: dict[str, Any]) -> SB3VecEnv:
    """The native batched environment for training, as an SB3 `VecEnv` (no subprocesses)."""
    options = dict(env_options)
    options.setdefault("device", config.device)
    return SB3VecEnv(env_id, config.num_envs, **options)


def build_agent(
    config: AgentConfig,
    venv: SB3VecEnv,
    item_space: ItemSpace,
    ranker=None,
    tensorboard_dir: str | Path | None = None,
) -> BaseAlgorithm:
    """An SB3 PPO or DQN whose policy is the shared scorer, optionally warm-started.

    Args:
        config: the run's `AgentConfig`.
        venv: the training environment (`make_env`).
        item_space: the environment's item space (its table goes into the policy in
            ``ids`` mode).
        ranker: a trained `recsim_mm.ranker.Ranker`: its architecture and weights
            initialise the PPO actor / DQN Q-network (warm start). None: cold start.
        tensorboard_dir: where SB3's logger writes (TensorBoard + CSV).

    Raises:
        ValueError: the ranker was trained on another item space or its architecture
            does not fit.
    """
    if ranker is not None:
        if ranker.item_space.fingerprint() != item_space.fingerprint():
            raise ValueError(
                f"warm start: the ranker was trained on item space "
                f"{ranker.item_space.fingerprint()}, the environment uses "
                f"{item_space.fingerprint()}"
            )
        scorer_config = ranker.config.to_dict()
        # the ranker's item metadata (its log's popularity included) travels with its weights
        item_features = ranker.scorer.item_feature_table
        item_features = None if item_features is None else item_features.detach().cpu()
    else:
        architecture = ScorerConfig(d_text=item_space.d_text, d_image=item_space.d_image, **config.scorer)
        scorer_config = architecture.to_dict()
        # a cold start has no log: catalog metadata only (popularity and click rate 0)
        item_features = (item_feature_table(item_space, architecture.item_features)
                         if architecture.item_features else None)
    reward = venv.venv.simulator.reward
    objective = reward if isinstance(reward, str) else "engagement"  # a learned reward is minutes
    device = resolve_device(config.device)
    # fused: Adam's update as one kernel per parameter tensor (0.28 ms a step on CPU for
    # the default scorer, vs 0.73 ms for the multi-tensor `foreach` update, which on
    # CPU still runs ~7 ops per tensor, and 1.0 ms for SB3's default Python loop); the
    # same update up to float rounding
    policy_kwargs = dict(scorer_config=scorer_config, item_table=item_space.fused.cpu(),
                         item_features=item_features, objective=objective, optimizer_kwargs=dict(fused=True))
    if config.algo == "ppo":
        policy_kwargs.update(temperature=config.temperature, value_hidden=config.value_hidden,
                             normalize_values=config.normalize_values, value_lr_scale=config.value_lr_scale)
    common = dict(
        learning_rate=config.learning_rate,
        gamma=config.gamma,
        seed=config.seed,
        device=device,
        verbose=0,
        policy_kwargs=policy_kwargs,
    )
    if config.algo == "ppo":
        model: BaseAlgorithm = PriorRegularizedPPO(
            ScorerActorCriticPolicy,
            venv,
            kl_coef=config.kl_coef,
            n_steps=config.n_steps,
            batch_size=config.batch_size,
            n_epochs=config.n_epochs,
            gae_lambda=config.gae_lambda,
            ent_coef=config.ent_coef,
            clip_range=config.clip_range,
            vf_coef=config.vf_coef,
            **common,
        )
    else:
        if config.algo == "slateq":
            check_choice_model(venv.venv.simulator)
        algorithm, policy = (SlateQ, SlateQPolicy) if config.algo == "slateq" else (DQN, ScorerDQNPolicy)
        model = algorithm(
            policy,
            venv,
            buffer_size=config.buffer_size,
            learning_starts=config.learning_starts,
            train_freq=config.train_freq,
            gradient_steps=config.gradient_steps,
            target_update_interval=config.target_update_interval,  # SB3 divides by num_envs
            exploration_fraction=config.exploration_fraction,
            exploration_final_eps=config.exploration_final_eps,
            **common,
        )
    if ranker is not None:
        ranker.warm_start(model.policy.scorer)
        if config.algo in ("dqn", "slateq"):
            model.policy.q_net_target.load_state_dict(model.policy.q_net.state_dict())
        if config.algo == "slateq":  # the ranker's click head is SlateQ's click model
            model.policy.warm_start_click_model(ranker.scorer)
    if config.kl_coef:
        if ranker is None:
            raise ValueError(f"AgentConfig.kl_coef={config.kl_coef} needs ranker= (the KL penalty's prior)")
        model.policy.set_prior(ranker.scorer)
    if tensorboard_dir is not None:
        model.set_logger(configure(str(tensorboard_dir), ["tensorboard", "csv"]))
    return model


class RecMetricsCallback(BaseCallback):
    """Recommendation metrics into SB3's logger (TensorBoard) at every rollout end.

    Logged: ``rec/ctr`` (clicks per step), ``rec/engagement_per_step`` (minutes),
    ``rec/session_length`` (steps of sessions that ended in the window) and
    ``rec/click_diversity`` (``1 - cos`` between a user's consecutive clicked items).
    """

    def __init__(self, item_table: torch.Tensor, log_every: int = 1):
        super().__init__()
        self.table = item_table.detach().cpu().numpy()
        self.log_every = log_every
        self._reset_window()
        self._length: np.ndarray | None = None
        self._last_click: np.ndarray | None = None

    def _reset_window(self) -> None:
        self._steps = self._clicks = 0
        self._engagement = 0.0
        self._ended: list[int] = []
        self._diversity: list[float] = []

    def _on_step(self) -> bool:
        info = self.training_env.last_info
        dones = np.asarray(self.locals["dones"], dtype=bool)
        if self._length is None:
            self._length = np.zeros(len(dones), dtype=np.int64)
            self._last_click = np.full(len(dones), -1, dtype=np.int64)
        click = np.asarray(info["click"], dtype=bool)
        self._steps += len(click)
        self._clicks += int(click.sum())
        self._engagement += float(np.sum(info["engagement"]))
        self._length += 1
        rows = np.flatnonzero(click)
        item = np.asarray(info["clicked_item"])[rows]
        had = self._last_click[rows] >= 0
        if had.any():
            a = self.table[self._last_click[rows[had]]]
            b = self.table[item[had]]
            cos = (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12)
            self._diversity.extend((1.0 - cos).tolist())
        self._last_click[rows] = item
        self._ended.extend(self._length[dones].tolist())
        self._length[dones] = 0
        self._last_click[dones] = -1
        return True

    def _on_rollout_end(self) -> None:
        if self._steps:
            self.logger.record("rec/ctr", self._clicks / self._steps)
            self.logger.record("rec/engagement_per_step", self._engagement / self._steps)
        if self._ended:
            self.logger.record("rec/session_length", float(np.mean(self._ended)))
        if self._diversity:
            self.logger.record("rec/click_diversity", float(np.mean(self._diversity)))
        self._reset_window()


def behaviour_clone(scorer, log, epochs: int, lr: float = 1e-3, batch_size: int = 512,
                    seed: int = 0) -> list[float]:
    """Fit ``scorer`` to imitate the logged recommendations that were clicked.

    For every logged record with a click, the target is the candidate position that was
    shown and clicked; the loss is the cross-entropy of the scorer's logits over the K
    candidates (a softmax policy imitating successful recommendations). Used before PPO
    so that RL starts from a policy that already recommends what users took.

    Args:
        scorer: the `recsim_mm.scorer.Scorer` to train in place (must hold the item table).
        log: a `recsim_mm.logs.InteractionLog` on the same item space.
        epochs: passes over the clicked records.
        lr: Adam step size.
        batch_size: records per step.
        seed: order of the records.

    Returns:
        Mean loss (nats) per epoch.

    Raises:
        ValueError: the log has no clicked record.
    """
    clicked = np.flatnonzero(log.clicked_slot >= 0)
    if clicked.size == 0:
        raise ValueError(f"{log.source}: behaviour cloning needs clicked records; the log has none")
    device = next(scorer.parameters()).device
    obs = log.observations(clicked, device=device, candidates="all")
    target = torch.as_tensor(log.shown[clicked, log.clicked_slot[clicked]], device=device)
    optimizer = torch.optim.Adam(scorer.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    was_training = scorer.training
    scorer.train()
    losses = []
    for _ in range(epochs):
        order = torch.randperm(clicked.size, generator=generator).to(device)
        total = 0.0
        for start in range(0, clicked.size, batch_size):
            batch = order[start : start + batch_size]
            logits = scorer({k: v[batch] for k, v in obs.items()})
            loss = torch.nn.functional.cross_entropy(logits, target[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss) * len(batch)
        losses.append(total / clicked.size)
    scorer.train(was_training)
    return losses


# -- checkpoints -----------------------------------------------------------------------------


def save_agent_checkpoint(
    path: Path, model: BaseAlgorithm, config: AgentConfig, item_space: ItemSpace
) -> None:
    """Write policy + optimizer state and the step counter, atomically (`recsim_mm.files.atomic_torch_save`)."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "algo": config.algo,
        "config": json.loads(json.dumps(dataclasses.asdict(config), default=str)),
        "config_fingerprint": config.fingerprint(),
        "item_space_fingerprint": item_space.fingerprint(),
        "num_timesteps": int(model.num_timesteps),
        "n_updates": int(getattr(model, "_n_updates", 0)),
        "policy": {k: v.detach().cpu() for k, v in model.policy.state_dict().items()},
        "optimizer": model.policy.optimizer.state_dict(),
    }
    buffer = getattr(model, "replay_buffer", None)
    if buffer is not None:
        payload["replay_buffer"] = replay_buffer_state(buffer, item_space)
    atomic_torch_save(payload, path)


#: Array fields of SB3's (Dict)ReplayBuffer that a checkpoint carries.
_BUFFER_FIELDS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")


def replay_buffer_state(buffer, item_space: ItemSpace) -> dict:
    """The filled part of an SB3 replay buffer as tensors (``weights_only``-loadable).

    Rows ``[0, pos)`` (all rows once the buffer has wrapped), each field
    ``(rows, n_envs, ...)``; observations in ``ids`` mode are item rows, so the state
    records the item space's fingerprint they refer to.
    """
    rows = buffer.buffer_size if buffer.full else buffer.pos
    state: dict[str, Any] = {"pos": int(buffer.pos), "full": bool(buffer.full), "rows": int(rows),
                             "item_space_fingerprint": item_space.fingerprint()}
    for name in _BUFFER_FIELDS:
        value = getattr(buffer, name)
        if isinstance(value, dict):
            state[name] = {key: torch.from_numpy(array[:rows].copy()) for key, array in value.items()}
        else:
            state[name] = torch.from_numpy(value[:rows].copy())
    return state


def restore_replay_buffer(buffer, state: dict, item_space: ItemSpace, source: Path) -> None:
    """Put a `replay_buffer_state` back into an SB3 replay buffer of the same shape.

    Raises:
        ValueError: the buffer was filled on another item space, or its shapes do not fit
            (names ``source`` and the field).
    """
    if state["item_space_fingerprint"] != item_space.fingerprint():
        raise ValueError(f"{source}: the replay buffer holds transitions on item space "
                         f"{state['item_space_fingerprint']}; this run uses {item_space.fingerprint()}")
    rows = state["rows"]
    for name in _BUFFER_FIELDS:
        target, saved = getattr(buffer, name), state[name]
        pairs = [(target[k], saved[k], f"{name}.{k}") for k in target] if isinstance(target, dict) else [
            (target, saved, name)]
        for array, value, label in pairs:
            if rows > len(array) or tuple(value.shape[1:]) != array.shape[1:]:
                raise ValueError(f"{source}: replay buffer field {label} has shape {tuple(value.shape)}; "
                                 f"this run's buffer holds (<= {len(array)}, {', '.join(map(str, array.shape[1:]))})")
            array[:rows] = value.numpy()
    buffer.pos, buffer.full = state["pos"], state["full"]


def load_agent_checkpoint(path: Path, config: AgentConfig, item_space: ItemSpace) -> dict:
    """Read a checkpoint (`recsim_mm.files.load_checkpoint`: ``weights_only=True``, format
    checked) and check it belongs to this run.

    Raises:
        ValueError: unreadable or not an agent checkpoint, another configuration (names the differing
            keys), or another item space.
    """
    payload = load_checkpoint(path, CHECKPOINT_FORMAT, "recsim_mm agent checkpoint")
    if payload["config_fingerprint"] != config.fingerprint():
        mine = json.loads(json.dumps(dataclasses.asdict(config), default=str))
        differing = sorted(
            k for k in set(mine) | set(payload["config"])
            if k != "total_steps" and mine.get(k) != payload["config"].get(k)
        )
        raise ValueError(
            f"{path}: the resume directory holds a run with a different configuration "
            f"(differing keys: {differing}); use a new directory or the same config"
        )
    if payload["item_space_fingerprint"] != item_space.fingerprint():
        raise ValueError(
            f"{path}: checkpoint was trained on item space {payload['item_space_fingerprint']}, "
            f"this run uses {item_space.fingerprint()}"
        )
    return payload


class _CheckpointCallback(BaseCallback):
    """Saves a checkpoint every ``every`` environment steps."""

    def __init__(self, path: Path, every: int, config: AgentConfig, item_space: ItemSpace):
        super().__init__()
        self.path, self.every, self.config, self.item_space = path, every, config, item_space
        self._next = None

    def _on_step(self) -> bool:
        if self._next is None:
            self._next = (self.num_timesteps // self.every + 1) * self.every
        if self.num_timesteps >= self._next:
            save_agent_checkpoint(self.path, self.model, self.config, self.item_space)
            self._next += self.every
        return True


@dataclass
class TrainOutcome:
    """What `train_agent` did: the model, its final step count, and whether it resumed."""

    model: BaseAlgorithm
    num_timesteps: int
    resumed_from: int | None
    checkpoint: Path


def train_agent(
    config: AgentConfig,
    env_id: str,
    env_options: dict[str, Any],
    item_space: ItemSpace,
    run_dir: str | Path,
    ranker=None,
    callbacks: list[BaseCallback] | None = None,
    bc_log=None,
) -> TrainOutcome:
    """Train (or resume training) one agent; checkpoints and TensorBoard in ``run_dir``.

    If ``run_dir/checkpoint.pt`` exists, training resumes from its step counter with its
    parameters and optimizer state, and TensorBoard curves continue from that step. An
    interruption (Ctrl-C, a crash inside the loop) writes a checkpoint before it
    propagates. DQN's and SlateQ's replay buffer is part of the checkpoint, so a resumed
    run keeps learning on the same transitions, with no refill.

    Args:
        config: the run's `AgentConfig`.
        env_id: registered environment id, e.g. ``"recsim_mm/Satiation-v0"``.
        env_options: `envs.rec_env.RecEnvOptions` overrides for the training env
            (``item_space`` is set from the argument below).
        item_space: the environment's item space.
        run_dir: folder for ``checkpoint.pt`` and ``tensorboard/``.
        ranker: warm-start source (see `build_agent`); None for cold start.
        callbacks: extra SB3 callbacks.
        bc_log: an `InteractionLog` for ``config.bc_epochs`` of behaviour cloning before
            RL (after the warm start, on a fresh run only; a resume skips it).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = run_dir / "checkpoint.pt"
    payload = load_agent_checkpoint(checkpoint, config, item_space) if checkpoint.exists() else None
    venv = make_env(config, env_id, {**env_options, "item_space": item_space})
    model = build_agent(config, venv, item_space, ranker, tensorboard_dir=run_dir / "tensorboard")
    resumed_from = None
    if config.bc_epochs and payload is None:
        if bc_log is None:
            raise ValueError(f"AgentConfig.bc_epochs={config.bc_epochs} needs bc_log= (an InteractionLog)")
        behaviour_clone(model.policy.scorer, bc_log, config.bc_epochs, config.bc_lr, seed=config.seed)
    if payload is not None:
        try:
            model.policy.load_state_dict(payload["policy"])
        except RuntimeError as exc:
            # same AgentConfig, other scorer architecture: a checkpoint from before a
            # ScorerConfig field was added (e.g. history_decays)
            raise ValueError(
                f"{checkpoint}: the policy weights do not fit this version's scorer "
                f"architecture {model.policy.scorer.config} (written by an older version?); "
                f"use a new run directory ({exc})"
            ) from exc
        model.policy.optimizer.load_state_dict(payload["optimizer"])
        model.num_timesteps = resumed_from = payload["num_timesteps"]
        model._n_updates = payload["n_updates"]
        if "replay_buffer" in payload:  # DQN / SlateQ continue on the same transitions
            restore_replay_buffer(model.replay_buffer, payload["replay_buffer"], item_space, checkpoint)
        # fresh training users after a resume, but still a function of (seed, step)
        venv.seed(config.seed + model.num_timesteps)
    remaining = config.total_steps - model.num_timesteps
    if remaining > 0:
        all_callbacks = [
            RecMetricsCallback(item_space.fused),
            _CheckpointCallback(checkpoint, config.checkpoint_every, config, item_space),
            *(callbacks or []),
        ]
        try:
            model.learn(
                total_timesteps=remaining,
                callback=CallbackList(all_callbacks),
                reset_num_timesteps=payload is None,
            )
        except BaseException:
            save_agent_checkpoint(checkpoint, model, config, item_space)
            raise
    save_agent_checkpoint(checkpoint, model, config, item_space)
    return TrainOutcome(model, int(model.num_timesteps), resumed_from, checkpoint)
