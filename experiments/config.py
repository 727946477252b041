"""Experiment configuration: typed dataclasses, YAML presets and `key=value` overrides.

A config is data, never code: YAML is read with `yaml.safe_load`, every key is checked
against the dataclass schema below (unknown keys are an error that suggests the
nearest valid key), and every value against its field's type. The schema is the one
source of truth for keys and defaults; `experiments/configs/*.yaml` only override it.
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

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


class ConfigError(ValueError):
    """A config file or override that does not fit the schema; the message names the key."""


@dataclass
class CatalogConfig:
    """Where items come from: `path` to a CSV/JSONL catalog, or a synthetic one."""

    path: str | None = None
    num_items: int = 600
    num_topics: int = 10
    seed: int = 0


@dataclass
class EncoderConfig:
    """Text/image encoders ("default" = the offline MiniLM / EfficientNet-Lite0) and fusion."""

    text: str = "default"
    image: str = "default"
    d_text: int = 32
    d_image: int = 32
    alignment: str = "pca"


@dataclass
class EnvConfig:
    """The Gymnasium environment the strategies are trained and evaluated in."""

    id: str = "recsim_mm/InterestEvolution-v0"
    num_candidates: int = 20
    history_length: int = 10
    max_steps: int = 50
    obs_mode: str = "embeddings"


@dataclass
class LoggingConfig:
    """Logged interactions for the ranker: logging policy and amount."""

    policy: str = "production"
    num_users: int = 2000
    epsilon: float = 0.1


@dataclass
class RankerConfig:
    """Supervised ranker training."""

    epochs: int = 20
    batch_size: int = 256
    lr: float = 1e-3
    patience: int = 3
    engagement_head: bool = True
    ablations: bool = True


@dataclass
class AgentConfig:
    """One RL agent's budget and options (PPO or DQN)."""

    total_steps: int = 100_000
    num_envs: int = 64
    lr: float = 3e-4
    warm_start: bool = True
    cold_start: bool = False
    checkpoint_every: int = 20_000


@dataclass
class EvalConfig:
    """Evaluation on held-out users (never the training users)."""

    num_users: int = 500
    user_seed_offset: int = 1_000_000


@dataclass
class ExperimentConfig:
    """Everything one `python experiments/run.py` run depends on."""

    name: str = "default"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    device: str = "auto"
    results_dir: str = "results"
    user_model: str = "interest_evolution"
    agents: list[str] = field(
        default_factory=lambda: ["random", "popular", "oracle", "greedy", "ppo", "dqn"]
    )
    catalog: CatalogConfig = field(default_factory=CatalogConfig)
    encoders: EncoderConfig = field(default_factory=EncoderConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    ranker: RankerConfig = field(default_factory=RankerConfig)
    ppo: AgentConfig = field(default_factory=AgentConfig)
    dqn: AgentConfig = field(default_factory=lambda: AgentConfig(lr=1e-4, warm_start=True))
    eval: EvalConfig = field(default_factory=EvalConfig)


def valid_keys(cls: type = ExperimentConfig, prefix: str = "") -> list[str]:
    """Every dotted key the schema accepts, e.g. ``["name", ..., "env.id", ...]``."""
    keys = []
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        if dataclasses.is_dataclass(f.type) or dataclasses.is_dataclass(_resolve(cls, f)):
            keys.extend(valid_keys(_resolve(cls, f), key + "."))
        else:
            keys.append(key)
    return keys


def _resolve(cls: type, f: dataclasses.Field) -> Any:
    return typing.get_type_hints(cls)[f.name]


def _unknown_key(key: str) -> ConfigError:
    keys = valid_keys()
    near = difflib.get_close_matches(key, keys, n=1, cutoff=0.5)
    hint = f"; did you mean {near[0]!r}?" if near else ""
    return ConfigError(f"unknown config key {key!r}{hint} Valid keys: {', '.join(keys)}")


def _check_value(key: str, value: Any, hint: Any) -> Any:
    """Return ``value`` if it has type ``hint`` (ints accepted for floats), else raise."""
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
        raise ConfigError(errors[0])
    if origin is list:
        (item_type,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"config key {key!r} expects a list like [a,b]; got {value!r}")
        return [_check_value(f"{key}[{i}]", v, item_type) for i, v in enumerate(value)]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, bool) or not isinstance(value, hint):
        raise ConfigError(
            f"config key {key!r} expects {hint.__name__}; got {value!r} ({type(value).__name__})"
        )
    return value


def _apply(obj: Any, data: dict, prefix: str = "") -> None:
    """Write the nested ``data`` into the dataclass instance ``obj``, checking every key."""
    hints = typing.get_type_hints(type(obj))
    for name, value in data.items():
        key = prefix + str(name)
        if name not in hints:
            raise _unknown_key(key)
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"config key {key!r} is a section; expected a mapping, got {value!r}")
            _apply(current, value, key + ".")
        else:
            setattr(obj, name, _check_value(key, value, hints[name]))


def parse_override(text: str) -> tuple[str, Any]:
    """Split one ``key=value`` command-line override; the value is parsed as YAML.

    ``ppo.total_steps=5000`` -> ``("ppo.total_steps", 5000)``;
    ``agents=[ppo,greedy]`` -> ``("agents", ["ppo", "greedy"])``.
    """
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not key=value")
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


def load_config(overrides: list[str] | None = None) -> ExperimentConfig:
    """Build the experiment config from the schema defaults, a preset and overrides.

    Args:
        overrides: ``key=value`` strings. ``preset=NAME`` selects
            ``experiments/configs/NAME.yaml`` (default ``default``), applied before
            the other overrides.

    Raises:
        ConfigError: unknown key (with the nearest valid one), wrong type, unknown preset.
    """
    overrides = list(overrides or [])
    preset = "default"
    rest = []
    for text in overrides:
        key, value = parse_override(text)
        if key == "preset":
            preset = str(value)
        else:
            rest.append((key, value))
    path = CONFIG_DIR / f"{preset}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise ConfigError(f"unknown preset {preset!r}; expected one of {names}")
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
    return config


def to_dict(config: ExperimentConfig) -> dict:
    """The config as plain nested data (for `config.yaml` and stage hashes)."""
    return dataclasses.asdict(config)
