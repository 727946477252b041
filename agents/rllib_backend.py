"""PPO on the shared scorer with RLlib: env runners across a Ray cluster, learners on GPUs.

SB3 (`agents.train`) is the single-machine learner and the default. When one training
run needs more samples or learners than one machine has, this backend trains the same
policy (`agents.rllib_module.ScorerRLModule`, parameters named as the SB3 policy's)
with RLlib's PPO on the new API stack, from the same `AgentConfig`:

- each env runner steps the native batched environment (`envs.vector_env.RecVectorEnv`,
  ``AgentConfig.num_envs`` users in one torch batch, through Gymnasium's
  ``vector_entry_point`` vectorisation, see `make_rllib_env`), not many single envs;
- PPO's knobs map one to one (`ppo_settings`), with SB3's loss: no KL term, unclipped
  value loss with weight 0.5, gradient norm clipped at 0.5;
- warm start loads the ranker's weights into the scorer of every copy of the module
  (learners and env runners), so the first step's logits are the ranker's scores;
- ``run_dir/checkpoint.pt`` is an `agents.train` agent checkpoint (same format, its
  ``policy`` loads into `agents.policies.ScorerActorCriticPolicy`), so RLlib-trained
  and SB3-trained agents are evaluated by the same code on the same held-out users;
  ``run_dir/rllib_checkpoint/`` is RLlib's own (optimizer, env runner state), from which
  an interrupted run resumes; ``run_dir/tensorboard/`` gets SB3's curve names.

Read top to bottom: `RLlibConfig` (the backend's own settings), the checks, the env
creator, `build_rllib_ppo`, and `train_rllib_agent` (the loop). Ray is imported only
inside these functions: importing this module costs nothing on the default path.

Example (a local Ray instance; ``experiments/run.py agents=[...,rllib_ppo]`` does this
per seed)::

    from agents.rllib_backend import RLlibConfig, train_rllib_agent
    from agents.train import AgentConfig
    from recsim_mm.item_space import ItemSpace

    item_space = ItemSpace.random(200, 8, 8)
    outcome = train_rllib_agent(
        AgentConfig(total_steps=8192, num_envs=32, device="cpu"), RLlibConfig(num_env_runners=1),
        "recsim_mm/Satiation-v0", {"num_candidates": 10, "obs_mode": "ids"}, item_space, "runs/rllib")
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from agents.train import CHECKPOINT_FORMAT, AgentConfig, load_agent_checkpoint
from recsim_mm.files import atomic_torch_save
from recsim_mm.item_features import item_feature_table
from recsim_mm.item_space import ItemSpace
from recsim_mm.scorer import ScorerConfig

ROOT = Path(__file__).resolve().parent.parent
#: The RLlib module id of the single policy.
MODULE_ID = "default_policy"


@dataclass
class RLlibConfig:
    """Settings of the RLlib backend that SB3 has no counterpart for (hashed with the run).

    PPO's hyperparameters are the run's `AgentConfig` (see `ppo_settings`); users per env
    runner are ``AgentConfig.num_envs``. Where Ray runs is the caller's: a Ray instance
    already initialised is used as is, else `connect` starts or joins one.

    Attributes:
        num_env_runners: Ray actors that step environments (each its own batched
            environment of ``num_envs`` users); 0 samples in the driver's process.
        num_learners: Ray actors that compute gradients (data-parallel); 0: one learner
            in the driver's process.
        num_cpus_per_env_runner: CPUs each env runner asks for (and its torch threads).
        num_gpus_per_learner: GPU share each learner asks for (> 0 trains on CUDA; with
            ``num_learners=0`` the driver's learner needs a GPU on its node).
        settings: further `ray.rllib.algorithms.ppo.PPOConfig` settings by name, applied
            last (e.g. ``{restart_failed_env_runners: true, sample_timeout_s: 120}``); a
            setting the backend sets itself or does not support is an error (`check_settings`).
    """

    num_env_runners: int = 1
    num_learners: int = 0
    num_cpus_per_env_runner: float = 1.0
    num_gpus_per_learner: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("num_env_runners", "num_learners"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"RLlibConfig.{name}={value!r}; expected an int >= 0")
        for name in ("num_cpus_per_env_runner", "num_gpus_per_learner"):
            value = getattr(self, name)
            low_ok = value > 0 if name == "num_cpus_per_env_runner" else value >= 0
            if isinstance(value, bool) or not isinstance(value, int | float) or not low_ok or not math.isfinite(value):
                raise ValueError(f"RLlibConfig.{name}={value!r}; expected a number "
                                 f"{'> 0' if name == 'num_cpus_per_env_runner' else '>= 0'}")
        if not isinstance(self.settings, dict) or not all(isinstance(k, str) for k in self.settings):
            raise ValueError(f"RLlibConfig.settings={self.settings!r}; expected a mapping of PPOConfig setting names")
        for name in self.settings:
            if name in _SET_BY_BACKEND:
                raise ValueError(f"RLlibConfig.settings: {name!r} is set by the backend; use {_SET_BY_BACKEND[name]}")
            if name in _UNSUPPORTED:
                raise ValueError(f"RLlibConfig.settings: {name!r} is not supported by the RLlib backend "
                                 f"({_UNSUPPORTED[name]})")


#: PPOConfig settings the backend sets itself, and where their value comes from.
_SET_BY_BACKEND = {
    "env": "the run's environment", "env_config": "the environment's options",
    "num_env_runners": "RLlibConfig.num_env_runners", "num_learners": "RLlibConfig.num_learners",
    "num_cpus_per_env_runner": "RLlibConfig.num_cpus_per_env_runner",
    "num_gpus_per_learner": "RLlibConfig.num_gpus_per_learner",
    "num_envs_per_env_runner": "AgentConfig.num_envs (users per env runner)",
    "gym_env_vectorize_mode": "the native vector env (vector_entry_point)",
    "rollout_fragment_length": "AgentConfig.n_steps",
    "train_batch_size_per_learner": "AgentConfig.n_steps x num_envs x env runners",
    "train_batch_size": "AgentConfig.n_steps x num_envs x env runners",
    "minibatch_size": "AgentConfig.batch_size", "num_epochs": "AgentConfig.n_epochs",
    "lr": "AgentConfig.learning_rate", "gamma": "AgentConfig.gamma", "lambda_": "AgentConfig.gae_lambda",
    "entropy_coeff": "AgentConfig.ent_coef", "clip_param": "AgentConfig.clip_range",
    "seed": "AgentConfig.seed", "rl_module_spec": "agents.rllib_module.ScorerRLModule",
    "model_config": "the scorer section (ScorerConfig)",
}
#: PPOConfig settings the backend cannot honour, and why.
_UNSUPPORTED = {
    "framework": "the scorer is a torch module",
    "enable_rl_module_and_learner": "the scorer is an RLModule of the new API stack",
    "enable_env_runner_and_connector_v2": "the env runners of the new API stack step the vector env",
    "use_kl_loss": "Plackett-Luce slates have no closed-form KL; PPO here has SB3's loss (clipping only)",
    "kl_coeff": "no KL term (see use_kl_loss)",
    "model": "the old API stack's model config; the module is the scorer",
    "env_to_module_connector": "the scorer reads the observation dict itself (no flattening)",
    "evaluation_interval": "evaluation runs on the held-out users, outside RLlib (agents.evaluation)",
}
#: SB3 PPO's loss in RLlib's settings (where RLlib's defaults differ): no KL term, the value
#: loss unclipped with weight 0.5, the gradient norm clipped at 0.5.
SB3_LOSS = {"use_kl_loss": False, "vf_loss_coeff": 0.5, "vf_clip_param": float("inf"),
            "grad_clip": 0.5, "grad_clip_by": "global_norm"}


def unsupported_agent_settings(agent: AgentConfig) -> list[str]:
    """What of ``agent`` the RLlib backend cannot train, as ``"field=value: why"`` lines."""
    problems = []
    if agent.algo != "ppo":
        problems.append(f"algo={agent.algo!r}: the RLlib backend trains PPO")
    if agent.kl_coef:
        problems.append(f"kl_coef={agent.kl_coef}: the KL penalty toward the ranker is SB3-only "
                        "(agents.ppo.PriorRegularizedPPO)")
    if agent.bc_epochs:
        problems.append(f"bc_epochs={agent.bc_epochs}: behaviour cloning before RL is SB3-only")
    return problems


def require_rllib() -> None:
    """Raise ``ImportError`` with the install command when ``ray[rllib]`` is missing."""
    try:
        import ray.rllib  # noqa: F401
        import ray.tune  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            f"the RLlib backend needs ray[rllib] ({type(exc).__name__}: {exc}); install it with "
            "`.venv/bin/python -m pip install -e '.[rllib]'` (or `ray[rllib]`), or train with SB3 "
            "(agent 'ppo')") from None


def check_settings(rllib: RLlibConfig) -> None:
    """Check ``rllib.settings`` against RLlib's `PPOConfig` (imports RLlib).

    Raises:
        ValueError: a name that is not a PPOConfig setting (with the nearest one).
    """
    from ray.rllib.algorithms.ppo import PPOConfig

    known = sorted(k for k in vars(PPOConfig()) if not k.startswith("_"))
    for name in rllib.settings:
        if name not in known:
            near = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ValueError(f"RLlibConfig.settings: {name!r} is not a PPOConfig setting{hint}")


def check_run(agent: AgentConfig, rllib: RLlibConfig) -> None:
    """Everything about an RLlib run that can be checked before Ray starts.

    Raises:
        ImportError: ray[rllib] is not installed.
        ValueError: an `AgentConfig` field or RLlib setting the backend does not support.
    """
    problems = unsupported_agent_settings(agent)
    if problems:
        raise ValueError("AgentConfig: not supported by the RLlib backend: " + "; ".join(problems))
    require_rllib()
    check_settings(rllib)


# -- the environment on an env runner ----------------------------------------------------------


def make_rllib_env(env_config: dict) -> gym.Env:
    """The environment of an env runner (RLlib calls it through `RLlibEnv`).

    ``env_config``: ``{"env_id", "options" (RecEnvOptions, with the item space),
    "threads"}``, plus ``"num_envs"`` when RLlib vectorises (``vector_entry_point``
    mode): then the native `RecVectorEnv` of that many users (an empty info: the
    rollout does not read it, and RLlib turns info dicts into one dict per user).
    ``threads`` (torch threads of an env runner's process) is None when the environment
    lives in the driver (``num_env_runners=0``), whose setting is left alone.
    """
    import envs  # noqa: F401  (registers the ids in this worker process)
    from envs.rec_env import RecEnv
    from envs.vector_env import RecVectorEnv

    if env_config.get("threads") is not None:
        torch.set_num_threads(max(1, int(env_config["threads"])))
    options = {**gym.spec(env_config["env_id"]).kwargs, **env_config["options"]}
    if "num_envs" in env_config:
        return RecVectorEnv(int(env_config["num_envs"]), info_keys=[], **options)
    return RecEnv(**options)


class RLlibEnv:
    """What ``config.environment(env=RLlibEnv)`` names: RLlib builds the environment of each
    env runner as ``RLlibEnv(env_config)``, which returns `make_rllib_env`'s environment.

    A class, not a name in Ray Tune's registry: that registry keys its entries by the
    first job id it saw in the process, so after an earlier ``ray.init``/``shutdown`` (a
    sweep, an ``executor=ray`` run) the env runners of a new job could not find the name
    (seen on the test cluster). RLlib takes a class (not a plain function) and calls it.
    """

    def __new__(cls, env_config: dict) -> gym.Env:  # type: ignore[misc]
        return make_rllib_env(env_config)


# -- the algorithm -----------------------------------------------------------------------------


def scorer_config_of(agent: AgentConfig, item_space: ItemSpace, ranker=None) -> dict:
    """The scorer's architecture: the ranker's when warm-starting, else the config's.

    Raises:
        ValueError: the ranker was trained on another item space.
    """
    if ranker is None:
        return ScorerConfig(d_text=item_space.d_text, d_image=item_space.d_image, **agent.scorer).to_dict()
    if ranker.item_space.fingerprint() != item_space.fingerprint():
        raise ValueError(f"warm start: the ranker was trained on item space {ranker.item_space.fingerprint()}, "
                         f"the environment uses {item_space.fingerprint()}")
    return ranker.config.to_dict()


def scorer_module_spec(agent: AgentConfig, item_space: ItemSpace, ranker=None, objective: str = "engagement"):
    """The `RLModuleSpec` of `agents.rllib_module.ScorerRLModule` (warm-started from ``ranker``).

    ``objective``: the environment's reward (``"engagement"`` or ``"click"``), what the
    actor's logits rank by (as the SB3 policy: ``log(expected reward) / temperature``).
    """
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    from agents.rllib_module import ScorerRLModule

    scorer_config = scorer_config_of(agent, item_space, ranker)
    if ranker is not None:
        features = ranker.scorer.item_feature_table
    else:
        names = ScorerConfig.from_dict(scorer_config).item_features
        features = item_feature_table(item_space, names) if names else None
    model_config = {"scorer_config": scorer_config, "item_table": item_space.fused.detach().cpu(),
                    "item_features": None if features is None else features.detach().cpu(),
                    "objective": objective, "temperature": agent.temperature, "value_hidden": agent.value_hidden}
    if ranker is not None:
        model_config["scorer_state"] = ranker.warm_start_state_dict()
    return RLModuleSpec(module_class=ScorerRLModule, model_config=model_config)


def ppo_settings(agent: AgentConfig, rllib: RLlibConfig) -> dict[str, Any]:
    """RLlib `PPOConfig.training` arguments from the run's `AgentConfig` (SB3's meanings).

    A rollout is ``n_steps`` steps of every user of every env runner (SB3: ``n_steps x
    num_envs``), split across the learners.
    """
    rollout = agent.n_steps * agent.num_envs * max(1, rllib.num_env_runners)
    return {"lr": agent.learning_rate, "gamma": agent.gamma, "lambda_": agent.gae_lambda,
            "train_batch_size_per_learner": max(1, rollout // max(1, rllib.num_learners)),
            "minibatch_size": agent.batch_size, "num_epochs": agent.n_epochs,
            "entropy_coeff": agent.ent_coef, "clip_param": agent.clip_range, **SB3_LOSS}


def build_rllib_ppo(agent: AgentConfig, rllib: RLlibConfig, env_id: str, env_options: dict[str, Any],
                    item_space: ItemSpace, ranker=None):
    """An RLlib PPO `Algorithm` on the scorer module (Ray must be initialised; see `connect`).

    Env runners simulate on the CPU (``env_options["device"]`` is replaced): the batch of
    one runner is small and its actor may sit on a node without a GPU.
    """
    check_run(agent, rllib)
    from ray.rllib.algorithms.ppo import PPOConfig
    reward = env_options.get("reward", "engagement")
    module_spec = scorer_module_spec(agent, item_space, ranker, reward if isinstance(reward, str) else "engagement")
    options = {**env_options, "item_space": item_space, "device": "cpu"}
    config = (
        PPOConfig()
        .environment(env=RLlibEnv, env_config={
            "env_id": env_id, "options": options,
            "threads": rllib.num_cpus_per_env_runner if rllib.num_env_runners else None})
        .env_runners(num_env_runners=rllib.num_env_runners, num_envs_per_env_runner=agent.num_envs,
                     gym_env_vectorize_mode="vector_entry_point", rollout_fragment_length=agent.n_steps,
                     num_cpus_per_env_runner=rllib.num_cpus_per_env_runner)
        .learners(num_learners=rllib.num_learners, num_gpus_per_learner=rllib.num_gpus_per_learner)
        .training(**ppo_settings(agent, rllib))
        .rl_module(rl_module_spec=module_spec)
        .debugging(seed=agent.seed, log_level="ERROR")
    )
    if rllib.settings:
        config = config.update_from_dict(dict(rllib.settings))
    return config.build_algo()


def connect(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Initialise Ray unless it is: join ``address`` or start a local instance.

    Returns:
        Whether this call started the connection (the caller shuts it down).

    Raises:
        ConnectionError: no Ray cluster at ``address``.
    """
    import ray

    if ray.is_initialized():
        return False
    # Env runners import this checkout's packages (the cluster's nodes see it at this path).
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    try:
        ray.init(address=address or "local", num_cpus=num_cpus if address is None else None,
                 include_dashboard=False, configure_logging=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": path}})
    except (RuntimeError, ValueError, TimeoutError) as exc:
        raise ConnectionError(f"cannot connect to the Ray cluster at {address!r}: {exc}") from None
    return True


# -- metrics and checkpoints -------------------------------------------------------------------

#: RLlib result keys -> the TensorBoard names SB3 runs write (so both backends share curves).
TENSORBOARD_NAMES = {
    ("env_runners", "episode_return_mean"): "rollout/ep_rew_mean",
    ("env_runners", "episode_len_mean"): "rollout/ep_len_mean",
    ("learners", MODULE_ID, "policy_loss"): "train/policy_gradient_loss",
    ("learners", MODULE_ID, "vf_loss"): "train/value_loss",
    ("learners", MODULE_ID, "entropy"): "train/entropy",
    ("learners", MODULE_ID, "vf_explained_var"): "train/explained_variance",
    ("learners", MODULE_ID, "gradients_default_optimizer_global_norm"): "train/grad_norm",
}


def _lookup(result: dict, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(result, dict) or key not in result:
            return None
        result = result[key]
    return result


def log_result(writer, result: dict, step: int, steps_this_iteration: int) -> dict[str, float]:
    """Write one training iteration's metrics to TensorBoard at env step ``step``.

    Returns:
        The scalars written (name -> value), ``time/fps`` included.
    """
    scalars = {}
    for path, name in TENSORBOARD_NAMES.items():
        value = _lookup(result, path)
        if isinstance(value, int | float | np.floating) and math.isfinite(float(value)):
            scalars[name] = float(value)
    seconds = float(result.get("time_this_iter_s") or 0.0)
    if seconds > 0:
        scalars["time/fps"] = steps_this_iteration / seconds
    for name, value in scalars.items():
        writer.add_scalar(name, value, step)
    writer.flush()
    return scalars


def module_state(algo) -> dict[str, torch.Tensor]:
    """The trained module's parameters (a learner's copy) as CPU tensors."""
    state = algo.learner_group.get_state(components=f"learner/rl_module/{MODULE_ID}")
    weights = state["learner"]["rl_module"][MODULE_ID]  # numpy arrays or tensors, by RLlib version
    return {k: torch.as_tensor(np.array(v.detach().cpu() if isinstance(v, torch.Tensor) else v))
            for k, v in weights.items()}


def save_rllib_checkpoint(run_dir: Path, algo, agent: AgentConfig, rllib: RLlibConfig, item_space: ItemSpace,
                          num_timesteps: int, iterations: int) -> None:
    """``checkpoint.pt`` (an `agents.train` agent checkpoint of the module's weights) and
    RLlib's own ``rllib_checkpoint/`` (for resuming), the latter first. Each is replaced
    whole: RLlib's folder is written beside it and renamed into place."""
    final, fresh, old = (run_dir / name for name in ("rllib_checkpoint", ".rllib_checkpoint.new",
                                                      ".rllib_checkpoint.old"))
    shutil.rmtree(fresh, ignore_errors=True)
    algo.save_to_path(str(fresh.resolve()))
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    fresh.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "algo": agent.algo,
        "backend": "rllib",
        "config": json.loads(json.dumps(dataclasses.asdict(agent), default=str)),
        "config_fingerprint": agent.fingerprint(),
        "rllib": json.loads(json.dumps(dataclasses.asdict(rllib), default=str)),
        "item_space_fingerprint": item_space.fingerprint(),
        "num_timesteps": int(num_timesteps),
        "n_updates": int(iterations),
        # RLlib's critic predicts returns in reward units: an identity PopArt normaliser
        # (mean 0, std 1) makes the weights load into the SB3 policy unchanged
        "policy": {**module_state(algo), "value_normalizer.mean": torch.zeros(1),
                   "value_normalizer.second_moment": torch.ones(1), "value_normalizer.initialised": torch.ones(1)},
    }
    atomic_torch_save(payload, run_dir / "checkpoint.pt")


@dataclass
class RLlibOutcome:
    """What `train_rllib_agent` did: steps sampled, where it resumed, the checkpoint, the
    throughput of its iterations (env steps per second of wall time, learning included)."""

    num_timesteps: int
    resumed_from: int | None
    checkpoint: Path
    env_steps_per_second: float
    iterations: int


def train_rllib_agent(agent: AgentConfig, rllib: RLlibConfig, env_id: str, env_options: dict[str, Any],
                      item_space: ItemSpace, run_dir: str | Path, ranker=None, address: str | None = None,
                      num_cpus: int | None = None, on_start: Callable[[Any], None] | None = None) -> RLlibOutcome:
    """Train (or resume) PPO on the scorer with RLlib; checkpoints and TensorBoard in ``run_dir``.

    Training runs whole RLlib iterations (one rollout of ``n_steps`` per user of every env
    runner, then ``n_epochs`` of minibatch updates) until ``agent.total_steps`` env steps
    were sampled, so it may overshoot by less than a rollout. A checkpoint is written
    every ``checkpoint_every`` steps (at the end of the iteration that passes it), at the
    end, and when the loop is interrupted. A ``run_dir`` holding a checkpoint of the same
    configuration resumes from it (RLlib's state: weights, optimizer, step counters).

    Args:
        agent: PPO's hyperparameters, users per env runner (``num_envs``), seed.
        rllib: env runners, learners and further RLlib settings.
        env_id: a registered id, e.g. ``"recsim_mm/Satiation-v0"``.
        env_options: `envs.rec_env.RecEnvOptions` overrides (``item_space`` is set from
            the argument; ``device`` is the CPU on env runners).
        item_space: the environment's item space.
        run_dir: folder for ``checkpoint.pt``, ``rllib_checkpoint/`` and ``tensorboard/``.
        ranker: warm-start source (a trained `recsim_mm.ranker.Ranker` on ``item_space``).
        address, num_cpus: where Ray runs when it is not initialised yet (`connect`).
        on_start: called with the RLlib `Algorithm` once it is built (and restored),
            before the first iteration (to inspect it, e.g. the env runners' modules).

    Raises:
        ImportError: ray[rllib] is not installed.
        ValueError: an unsupported setting, a ranker from another item space, a resume
            directory of another configuration; all before Ray starts.
    """
    check_run(agent, rllib)
    scorer_config_of(agent, item_space, ranker)  # a ranker from another item space fails here
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = run_dir / "checkpoint.pt"
    payload = load_agent_checkpoint(checkpoint, agent, item_space) if checkpoint.exists() else None
    if payload is not None and payload.get("rllib") != json.loads(json.dumps(dataclasses.asdict(rllib), default=str)):
        raise ValueError(f"{checkpoint}: the resume directory holds a run with other RLlib settings "
                         f"{payload.get('rllib')}; use a new directory or the same settings")
    from torch.utils.tensorboard import SummaryWriter

    owns_ray = connect(address, num_cpus)
    algo = None
    try:
        algo = build_rllib_ppo(agent, rllib, env_id, env_options, item_space, ranker)
        steps, iterations, resumed_from = 0, 0, None
        if payload is not None and (run_dir / "rllib_checkpoint").is_dir():
            algo.restore_from_path(str((run_dir / "rllib_checkpoint").resolve()))
            steps = resumed_from = int(payload["num_timesteps"])
            iterations = int(payload["n_updates"])
        if on_start is not None:
            on_start(algo)
        writer = SummaryWriter(str(run_dir / "tensorboard"))
        next_checkpoint = (steps // agent.checkpoint_every + 1) * agent.checkpoint_every
        sampled_seconds, sampled_steps = 0.0, 0
        try:
            while steps < agent.total_steps:
                started = time.perf_counter()
                result = algo.train()
                seconds = time.perf_counter() - started
                new_steps = int(result["env_runners"]["num_env_steps_sampled"])
                steps += new_steps
                iterations += 1
                sampled_seconds += seconds
                sampled_steps += new_steps
                log_result(writer, result, steps, new_steps)
                if steps >= next_checkpoint and steps < agent.total_steps:
                    save_rllib_checkpoint(run_dir, algo, agent, rllib, item_space, steps, iterations)
                    next_checkpoint = (steps // agent.checkpoint_every + 1) * agent.checkpoint_every
        except BaseException:
            if iterations:
                save_rllib_checkpoint(run_dir, algo, agent, rllib, item_space, steps, iterations)
            raise
        finally:
            writer.close()
        save_rllib_checkpoint(run_dir, algo, agent, rllib, item_space, steps, iterations)
        rate = sampled_steps / sampled_seconds if sampled_seconds else float("nan")
        return RLlibOutcome(steps, resumed_from, checkpoint, rate, iterations)
    finally:
        if algo is not None:
            algo.stop()
        if owns_ray:
            import ray

            ray.shutdown()
