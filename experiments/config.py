"""Experiment configuration: typed dataclasses, YAML presets and `key=value` overrides.

A config is data, never code: YAML is read with `yaml.safe_load`, every key is checked
against the dataclass schema below (an unknown key is an error that suggests the
nearest valid key), and every value against its field's type and range. The schema
is the one source of truth for keys; defaults that belong to a library component
(the scorer's architecture, the ranker's optimiser, PPO/DQN knobs) are read from that
component's own dataclass, so they are defined once. `experiments/configs/*.yaml`
only override the schema: ``default.yaml`` sizes the default experiment, ``quick.yaml``
a smoke run and ``full.yaml`` a GPU run.

Precedence: schema defaults < preset file < command-line overrides, e.g.::

    python experiments/run.py preset=quick seeds=[0,1] ppo.total_steps=20000 agents=[ppo,greedy]
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agents.train import AgentConfig
from recsim_mm.ranker import TrainConfig
from recsim_mm.scorer import ScorerConfig

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

#: Strategies an experiment can compare: baselines (no training), the greedy ranker,
#: and the RL agents (trained per seed; warm and/or cold start).
BASELINE_AGENTS = ("random", "popular", "oracle", "linucb")
RL_AGENTS = ("ppo", "dqn")
KNOWN_AGENTS = (*BASELINE_AGENTS, "greedy", *RL_AGENTS)
LOGGING_POLICIES = ("production", "uniform", "popularity")

# Library defaults, read once: the schema refers to them instead of repeating numbers.
_AGENT = AgentConfig()
_TRAIN = TrainConfig()
_SCORER = ScorerConfig(d_text=1, d_image=1)


class ConfigError(ValueError):
    """A config file or override that does not fit the schema; the message names the key."""


@dataclass
class CatalogConfig:
    """Where items come from.

    Attributes:
        path: a CSV/JSONL catalog (see docs/catalog.md); None = the synthetic catalog.
        missing_image: ``"error"`` or ``"blank"`` (grey image) for a catalog row whose
            image file is missing.
        num_items, num_topics, seed, image_size: the synthetic catalog's size, number
            of latent topics, seed and image side in pixels (ignored with ``path``).
    """

    path: str | None = None
    missing_image: str = "error"
    num_items: int = 600
    num_topics: int = 10
    seed: int = 0
    image_size: int = 128


@dataclass
class EncoderConfig:
    """Text/image encoders and their fusion into the item space.

    Attributes:
        text: ``"default"`` (offline MiniLM), a local Hugging Face folder or a hub id
            already in the local cache.
        image: ``"default"`` (offline EfficientNet-Lite0) or a torchvision model name
            whose weights are in the local torch hub cache.
        image_size: side (pixels) images are fed to the CNN; None = its native size.
        d_text, d_image: widths of the text and image parts of the item vectors.
        alignment: ``"pca"`` or ``"contrastive"`` (see docs/encoders.md).
    """

    text: str = "default"
    image: str = "default"
    image_size: int | None = 128
    d_text: int = 32
    d_image: int = 32
    alignment: str = "pca"


@dataclass
class EnvConfig:
    """The Gymnasium environment every strategy is trained and evaluated in.

    Attributes:
        id: a registered id (``recsim_mm/InterestEvolution-v0``, ``Satiation-v0``,
            ``Myopic-v0``, their ``...Slate-v0`` forms).
        num_candidates: ``K`` candidates per step.
        history_length: ``H`` past steps in the observation.
        max_steps: episode truncation length.
        reward: ``"engagement"`` (minutes) or ``"click"``; evaluation always reports
            this simulator reward.
        obs_mode: ``"ids"`` (item rows; policies hold the item table) or ``"embeddings"``.
    """

    id: str = "recsim_mm/InterestEvolution-v0"
    num_candidates: int = 20
    history_length: int = 10
    max_steps: int = 50
    reward: str = "engagement"
    obs_mode: str = "ids"


@dataclass
class LoggingConfig:
    """Logged interactions the ranker learns from (and the popularity baseline counts).

    Attributes:
        policy: logging policy, ``"production"`` (softmax over noisy true affinity),
            ``"uniform"`` or ``"popularity"`` (item quality as popularity).
        epsilon: share of uniformly random slates mixed in (exploration).
        noise_std, temperature: the production policy's noise and softmax temperature.
        num_users: logged training sessions.
        test_users: logged held-out sessions for the ranker's offline metrics.
        seed: seed of the logged users (test users use ``seed + 1``).
    """

    policy: str = "production"
    epsilon: float = 0.1
    noise_std: float = 0.3
    temperature: float = 0.2
    num_users: int = 2000
    test_users: int = 500
    seed: int = 0


@dataclass
class ScorerSection:
    """The shared scorer's architecture: the ranker, and the RL agents' networks.

    Fields and defaults are those of `recsim_mm.scorer.ScorerConfig` (docs/ranker).
    """

    hidden_dim: int = _SCORER.hidden_dim
    user_encoder: str = _SCORER.user_encoder
    fusion: str = _SCORER.fusion
    num_heads: int = _SCORER.num_heads
    num_queries: int = _SCORER.num_queries
    history_match: bool = _SCORER.history_match
    engagement_head: bool = _SCORER.engagement_head
    use_time_left: bool = _SCORER.use_time_left
    dropout: float = _SCORER.dropout


@dataclass
class RankerSection:
    """Supervised ranker training (defaults from `recsim_mm.ranker.TrainConfig`).

    Attributes:
        lr, weight_decay, batch_size, max_epochs, patience, val_fraction,
            engagement_weight: the optimiser and early stopping.
        ablations: also train text-only and image-only rankers (offline metrics).
        ndcg_k: cut-off of NDCG@k / Recall@k.
    """

    lr: float = _TRAIN.lr
    weight_decay: float = _TRAIN.weight_decay
    batch_size: int = _TRAIN.batch_size
    max_epochs: int = _TRAIN.max_epochs
    patience: int = _TRAIN.patience
    val_fraction: float = _TRAIN.val_fraction
    engagement_weight: float = _TRAIN.engagement_weight
    ablations: bool = True
    ndcg_k: int = 5


@dataclass
class AgentSection:
    """What every RL agent section shares (defaults from `agents.train.AgentConfig`).

    Attributes:
        total_steps: environment steps per training run (summed over users).
        warm_start: train an agent initialised from the ranker ("ppo-warm", "dqn-warm").
        cold_start: train one from random weights ("ppo-cold", "dqn-cold").
        reward: ``"simulator"`` (the env's reward) or ``"ranker"`` (the ranker's
            predicted engagement as a learned reward; evaluation still uses the
            simulator's).
        the rest: see `agents.train.AgentConfig`.
    """

    total_steps: int = _AGENT.total_steps
    num_envs: int = _AGENT.num_envs
    learning_rate: float = _AGENT.learning_rate
    gamma: float = _AGENT.gamma
    checkpoint_every: int = _AGENT.checkpoint_every
    warm_start: bool = True
    cold_start: bool = False
    reward: str = "simulator"


@dataclass
class PPOSection(AgentSection):
    """PPO budget and knobs: `AgentSection` plus PPO's own (see `agents.train.AgentConfig`)."""

    n_steps: int = _AGENT.n_steps
    batch_size: int = _AGENT.batch_size
    n_epochs: int = _AGENT.n_epochs
    gae_lambda: float = _AGENT.gae_lambda
    ent_coef: float = _AGENT.ent_coef
    clip_range: float = _AGENT.clip_range


@dataclass
class DQNSection(AgentSection):
    """DQN budget and knobs: `AgentSection` plus DQN's own (see `agents.train.AgentConfig`)."""

    buffer_size: int = _AGENT.buffer_size
    learning_starts: int = _AGENT.learning_starts
    train_freq: int = _AGENT.train_freq
    gradient_steps: int = _AGENT.gradient_steps
    target_update_interval: int = _AGENT.target_update_interval
    exploration_fraction: float = _AGENT.exploration_fraction
    exploration_final_eps: float = _AGENT.exploration_final_eps


@dataclass
class EvalConfig:
    """Evaluation on held-out users, and the learning curves.

    Attributes:
        num_users: held-out users per seed (one episode each), the same users for
            every strategy.
        seed_offset: the held-out users of experiment seed ``s`` come from env seed
            ``seed_offset + s`` (checked to be a seed no training ever used).
        curve_users: users of the learning-curve evaluations (0: no curves).
        curve_every: environment steps between learning-curve points.
        curve_seed_offset: env seed of the learning-curve users (``+ s``), distinct
            from the test users.
        trace_users: held-out users whose hidden state is traced for the interest plot.
    """

    num_users: int = 500
    seed_offset: int = 1_000_000_000
    curve_users: int = 128
    curve_every: int = 10_000
    curve_seed_offset: int = 2_000_000_000
    trace_users: int = 4


@dataclass
class ExperimentConfig:
    """Everything one ``python experiments/run.py`` run depends on.

    Attributes:
        name: results go to ``<results_dir>/<name>-<timestamp>/``.
        seeds: one full replicate per seed (ranker, agents, held-out users).
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` for networks and simulators.
        threads: torch CPU threads (0: torch's default). 1 by default: on a shared
            2-core machine two threads measured ~10x slower under concurrent load.
        results_dir: parent folder of the run folders.
        cache_dir: stage cache (default ``<results_dir>/.cache``): finished stages are
            reused, an interrupted agent resumes from its checkpoint.
        progress: show progress bars (stage, progress, time left) on stderr.
        user_model: None (the env id's own), a registered name or
            ``package.module:ClassName``.
        user_params: parameters of the user model (e.g. ``{patience: 5}``).
        agents: strategies to compare (see `KNOWN_AGENTS`).
    """

    name: str = "default"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    device: str = "auto"
    threads: int = 1
    results_dir: str = "results"
    cache_dir: str | None = None
    progress: bool = True
    user_model: str | None = None
    user_params: dict[str, Any] = field(default_factory=dict)
    agents: list[str] = field(
        default_factory=lambda: ["random", "popular", "oracle", "linucb", "greedy", "ppo", "dqn"]
    )
    catalog: CatalogConfig = field(default_factory=CatalogConfig)
    encoders: EncoderConfig = field(default_factory=EncoderConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    scorer: ScorerSection = field(default_factory=ScorerSection)
    ranker: RankerSection = field(default_factory=RankerSection)
    ppo: PPOSection = field(default_factory=PPOSection)
    dqn: DQNSection = field(default_factory=DQNSection)
    eval: EvalConfig = field(default_factory=EvalConfig)


# -- loading ---------------------------------------------------------------------------------


def valid_keys(cls: type = ExperimentConfig, prefix: str = "") -> list[str]:
    """Every dotted key the schema accepts, e.g. ``["name", ..., "env.id", ...]``."""
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        if dataclasses.is_dataclass(hints[f.name]):
            keys.extend(valid_keys(hints[f.name], key + "."))
        else:
            keys.append(key)
    return keys


def _unknown_key(key: str) -> ConfigError:
    keys = valid_keys()
    near = difflib.get_close_matches(key, keys, n=1, cutoff=0.5)
    if not near:  # a misspelt section name: compare the last part with the last parts
        leaf = key.rsplit(".", 1)[-1]
        near = [k for k in keys if difflib.get_close_matches(leaf, [k.rsplit(".", 1)[-1]], cutoff=0.8)][:1]
    hint = f"; did you mean {near[0]!r}?" if near else ""
    return ConfigError(f"unknown config key {key!r}{hint} Valid keys: {', '.join(keys)}")


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint).replace("typing.", ""))


def _check_value(key: str, value: Any, hint: Any) -> Any:
    """Return ``value`` if it has type ``hint`` (ints accepted for floats), else raise."""
    if hint is Any:
        return value
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _check_value(key, value, option)
            except ConfigError as exc:
                errors.append(str(exc))
        names = " or ".join("null" if o is type(None) else _type_name(o) for o in options)
        raise ConfigError(f"config key {key!r} expects {names}; got {value!r} ({type(value).__name__})")
    if origin is list:
        (item_type,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"config key {key!r} expects a list like [a,b]; got {value!r}")
        return [_check_value(f"{key}[{i}]", v, item_type) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r} expects a mapping like {{name: value}}; got {value!r}")
        return dict(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if (hint in (int, float) and isinstance(value, bool)) or not isinstance(value, hint):
        raise ConfigError(
            f"config key {key!r} expects {_type_name(hint)}; got {value!r} ({type(value).__name__})"
        )
    return value


def _apply(obj: Any, data: dict, prefix: str = "") -> None:
    """Write the nested ``data`` into the dataclass instance ``obj``, checking every key."""
    hints = typing.get_type_hints(type(obj))
    for name, value in data.items():
        key = prefix + str(name)
        if name not in hints:
            while isinstance(value, dict) and len(value) == 1:  # name the full dotted key given
                (inner, value), = value.items()
                key = f"{key}.{inner}"
            raise _unknown_key(key)
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"config key {key!r} is a section; expected a mapping, got {value!r}")
            _apply(current, value, key + ".")
        elif typing.get_origin(hints[name]) is dict and isinstance(value, dict):
            # Mappings merge (``user_params.patience=5`` keeps the other parameters).
            setattr(obj, name, {**current, **_check_value(key, value, hints[name])})
        else:
            setattr(obj, name, _check_value(key, value, hints[name]))


def parse_override(text: str) -> tuple[str, Any]:
    """Split one ``key=value`` command-line override; the value is parsed as YAML.

    ``ppo.total_steps=5000`` -> ``("ppo.total_steps", 5000)``;
    ``agents=[ppo,greedy]`` -> ``("agents", ["ppo", "greedy"])``.
    """
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not key=value (e.g. seeds=[0,1] or preset=quick)")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value {raw!r} is not valid YAML ({exc})") from exc
    return key.strip(), value


def _nest(key: str, value: Any) -> dict:
    out: Any = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


def presets() -> list[str]:
    """Names of the preset files in `CONFIG_DIR`."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def load_config(overrides: list[str] | None = None) -> ExperimentConfig:
    """Build the experiment config from the schema, a preset and overrides, and validate it.

    Args:
        overrides: ``key=value`` strings. ``preset=NAME`` selects
            ``experiments/configs/NAME.yaml`` (default ``default``), ``preset=FILE.yaml``
            any YAML file of config keys; it is applied before the other overrides
            wherever it appears.

    Raises:
        ConfigError: unknown key (with the nearest valid one), wrong type, a value out
            of range, an unknown agent or preset.
    """
    preset = "default"
    rest = []
    for text in overrides or []:
        key, value = parse_override(text)
        if key == "preset":
            preset = str(value)
        else:
            rest.append((key, value))
    # A preset is a name in experiments/configs/ or the path of a YAML file, such as a
    # results folder's config.yaml (re-running a finished experiment).
    path = Path(preset) if preset.endswith((".yaml", ".yml")) else CONFIG_DIR / f"{preset}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown preset {preset!r}; expected one of {presets()} or an existing .yaml file")
    config = ExperimentConfig()
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    try:
        _apply(config, data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    for key, value in rest:
        _apply(config, _nest(key, value))
    validate(config)
    return config


def _require(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"config key {key!r} = {value!r} is invalid; expected {expected}")


def validate(config: ExperimentConfig) -> None:
    """Range and choice checks that need no library import (the runner checks the rest:
    env id, user model, encoders, catalog file, device, folders).

    Raises:
        ConfigError: naming the key, the value and what was expected.
    """
    c = config
    _require(bool(c.name) and "/" not in c.name and not c.name.startswith("."), "name", c.name,
             "a non-empty folder name without '/'")
    _require(len(c.seeds) >= 1 and all(s >= 0 for s in c.seeds), "seeds", c.seeds,
             "a non-empty list of integers >= 0")
    _require(len(set(c.seeds)) == len(c.seeds), "seeds", c.seeds, "distinct seeds")
    _require(c.threads >= 0, "threads", c.threads, "an integer >= 0 (0: torch's default)")
    _require(len(c.agents) >= 1, "agents", c.agents, f"a non-empty list from {list(KNOWN_AGENTS)}")
    for name in c.agents:
        if name not in KNOWN_AGENTS:
            near = difflib.get_close_matches(name, KNOWN_AGENTS, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ConfigError(
                f"config key 'agents' has unknown agent {name!r}{hint}; expected names from {list(KNOWN_AGENTS)}"
            )
    _require(len(set(c.agents)) == len(c.agents), "agents", c.agents, "each agent once")
    _require(c.catalog.missing_image in ("error", "blank"), "catalog.missing_image",
             c.catalog.missing_image, "'error' or 'blank'")
    for key in ("catalog.num_items", "catalog.num_topics", "encoders.d_text", "encoders.d_image",
                "env.num_candidates", "env.history_length", "env.max_steps", "logging.num_users",
                "logging.test_users", "ranker.batch_size", "ranker.max_epochs", "ranker.patience",
                "ranker.ndcg_k", "ppo.total_steps", "ppo.num_envs", "ppo.checkpoint_every",
                "dqn.total_steps", "dqn.num_envs", "dqn.checkpoint_every", "eval.num_users",
                "scorer.hidden_dim", "scorer.num_heads"):
        value = _get(c, key)
        _require(value >= 1, key, value, "an integer >= 1")
    for key in ("eval.curve_users", "eval.curve_every", "eval.trace_users", "eval.seed_offset",
                "eval.curve_seed_offset", "logging.seed", "catalog.seed"):
        value = _get(c, key)
        _require(value >= 0, key, value, "an integer >= 0")
    _require(c.env.reward in ("engagement", "click"), "env.reward", c.env.reward, "'engagement' or 'click'")
    _require(c.env.obs_mode in ("ids", "embeddings"), "env.obs_mode", c.env.obs_mode, "'ids' or 'embeddings'")
    _require(c.logging.policy in LOGGING_POLICIES, "logging.policy", c.logging.policy,
             f"one of {list(LOGGING_POLICIES)}")
    _require(0.0 <= c.logging.epsilon <= 1.0, "logging.epsilon", c.logging.epsilon, "a number in [0, 1]")
    _require(c.ranker.ndcg_k <= c.env.num_candidates, "ranker.ndcg_k", c.ranker.ndcg_k,
             f"at most env.num_candidates = {c.env.num_candidates}")
    for algo in ("ppo", "dqn"):
        section = getattr(c, algo)
        _require(section.reward in ("simulator", "ranker"), f"{algo}.reward", section.reward,
                 "'simulator' or 'ranker'")
        if algo in c.agents:
            _require(section.warm_start or section.cold_start, f"{algo}.warm_start", section.warm_start,
                     f"true, or {algo}.cold_start=true: agent {algo!r} is listed in 'agents'")


def _get(config: Any, key: str) -> Any:
    for part in key.split("."):
        config = getattr(config, part)
    return config


def to_dict(config: ExperimentConfig) -> dict:
    """The config as plain nested data (for `config.yaml` and stage hashes)."""
    return dataclasses.asdict(config)


def to_yaml(config: ExperimentConfig) -> str:
    """The resolved config as YAML that `load_config` reads back (keys in schema order)."""
    return yaml.safe_dump(to_dict(config), sort_keys=False, default_flow_style=None)
