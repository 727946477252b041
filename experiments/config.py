"""Experiment configuration: typed dataclasses, YAML presets and `key=value` overrides.

A config is data, never code: YAML is read with `yaml.safe_load`, every key is checked
against the dataclass schema below (an unknown key is an error that suggests the
nearest valid key), and every value against its field's type and range. The schema
is the one source of truth for keys. Where a library component owns settings, the
section is a view of that component's own dataclass (`library_view`): ``scorer`` of
`recsim_mm.scorer.ScorerConfig` (its hyperparameters; the data dimensions come from
the item space), ``ranker`` of `recsim_mm.ranker.TrainConfig`, ``ppo`` and ``dqn`` of
`agents.train.AgentConfig`; names, types and defaults are defined there once, and
`validate` builds those dataclasses so their own checks become errors naming the key.
`experiments/configs/*.yaml` only override the schema: ``default.yaml`` sizes the
default experiment, ``quick.yaml`` a smoke run and ``full.yaml`` a GPU run.

The loader is these ~150 lines rather than OmegaConf: OmegaConf's structured configs
would replace the type checks but not the nearest-key hints, the range checks or the
shell-friendly mapping form, and would add a dependency for no net saving.

Precedence: schema defaults < preset file < command-line overrides, e.g.::

    .venv/bin/python experiments/run.py preset=quick seeds=[0,1] ppo.total_steps=20000 agents=[ppo,greedy]
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agents.references import MODEL_PLANNING_NAME, REFERENCE_NAMES
from agents.rllib_backend import RLlibConfig, unsupported_agent_settings
from agents.train import AgentConfig
from envs import ENV_IDS
from envs.ecosystems.creators import CREATOR_REWARDS
from recsim_mm.ranker import TrainConfig
from recsim_mm.scorer import ScorerConfig
from recsim_mm.simulator import OBS_MODES, REWARDS
from recsim_mm.synthetic import TOPICS

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

#: Strategies an experiment can compare: baselines (no training), the greedy ranker, its
#: MMR re-ranking and the non-privileged planning reference on it (``model_planning``),
#: the privileged references, and the RL agents (trained per seed; warm and/or cold start).
BASELINE_AGENTS = ("random", "popular", "longest", "oracle", "linucb")
RANKER_AGENTS = ("greedy", "greedy_id", "mmr", "fair", MODEL_PLANNING_NAME)
REFERENCE_AGENTS = REFERENCE_NAMES
RL_AGENTS = ("ppo", "dqn", "slateq")
#: RL agents for one recommendation per step / for slates (PPO acts on both).
SINGLE_ITEM_RL = ("ppo", "dqn")
SLATE_RL = ("ppo", "slateq")
#: RL agents trained by RLlib (`agents.rllib_backend`), and the section of hyperparameters
#: each shares with its SB3 twin: ``rllib_ppo`` is PPO from the ``ppo`` section, on RLlib.
RLLIB_AGENTS = {"rllib_ppo": "ppo"}
KNOWN_AGENTS = (*BASELINE_AGENTS, *RANKER_AGENTS, *REFERENCE_AGENTS, *RL_AGENTS, *RLLIB_AGENTS)
#: The default experiment's environments (`make run`): the long-term-effects suite.
SUITE = ("recsim_mm/InterestEvolution-v0", "recsim_mm/Satiation-v0", "recsim_mm/Myopic-v0")
LOGGING_POLICIES = ("production", "uniform", "popularity")


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
            ``Myopic-v0``, their ``...Slate-v0`` forms), or a list of them: a suite,
            every strategy run on each (the item space is shared).
        num_candidates: ``K`` candidates per step.
        history_length: ``H`` past steps in the observation.
        max_steps: episode truncation length.
        reward: ``"engagement"`` (minutes) or ``"click"``; evaluation always reports
            this simulator reward.
        obs_mode: ``"ids"`` (item rows; policies hold the item table) or ``"embeddings"``.
        history_prefix: user cold start: past steps every fresh user arrives with
            (0 = an empty history; at most ``history_length``; docs/cold_start.md).
        new_items: item cold start: the share of the catalog (its last rows) held back
            from the logs, training and tuning, arriving at step 1 for the held-out
            users (0 = off; docs/cold_start.md).
    """

    id: str | list[str] = "recsim_mm/InterestEvolution-v0"
    num_candidates: int = 20
    history_length: int = 10
    max_steps: int = 50
    reward: str = "engagement"
    obs_mode: str = "ids"
    history_prefix: int = 0
    new_items: float = 0.0


@dataclass
class LoggingConfig:
    """Logged interactions the ranker learns from (and the popularity baseline counts).

    Attributes:
        policy: logging policy, ``"production"`` (softmax over noisy true affinity),
            ``"uniform"`` or ``"popularity"`` (item quality as popularity).
        epsilon: share of uniformly random slates mixed in (exploration). Default 0.5:
            the production policy alone shows only items the user likes, so in its logs
            a skipped item still signals interest and a ranker learns the wrong sign for
            "similar to a skipped item"; half uniform slates make skips mean what they mean.
        noise_std, temperature: the production policy's noise and softmax temperature.
        num_users: logged training sessions.
        test_users: logged held-out sessions for the ranker's offline metrics.
        seed: seed of the logged users (test users use ``seed + 1``).
        path: a folder with ``train.parquet`` and ``test.parquet`` of a real log
            (``python -m recsim_mm.real_data import``, docs/real_data.md): the ranker
            trains and is scored on it instead of simulated logs (the policy keys
            above are then unused); None: simulated logs.
    """

    policy: str = "production"
    epsilon: float = 0.5
    noise_std: float = 0.3
    temperature: float = 0.2
    num_users: int = 2000
    test_users: int = 500
    seed: int = 0
    path: str | None = None


def library_view(name: str, library: type, fields: Sequence[str], doc: str,
                 extra: Sequence[tuple[str, Any, Any]] = ()) -> type:
    """A config section made of fields of a library dataclass, defined there once.

    The section's fields take their names, types and defaults from ``library`` (so
    a changed default or a new hyperparameter needs no edit here); ``extra`` adds the
    experiment's own settings as ``(name, type, default)``. The library dataclass still
    checks the values: `validate` builds it from the section.

    Args:
        name: class name of the section.
        library: the library's config dataclass (e.g. `recsim_mm.ranker.TrainConfig`).
        fields: the names of its fields that are experiment settings, in key order.
        doc: the section's docstring.
        extra: experiment-only fields.
    """
    hints = typing.get_type_hints(library)
    by_name = {f.name: f for f in dataclasses.fields(library)}
    spec: list[tuple[str, Any, Any]] = []
    for field_name in fields:
        f = by_name[field_name]
        default = (field(default=f.default) if f.default is not dataclasses.MISSING
                   else field(default_factory=f.default_factory))
        spec.append((field_name, hints[field_name], default))
    spec += [(n, t, field(default_factory=lambda d=d: type(d)(d)) if isinstance(d, dict | list) else field(default=d))
             for n, t, d in extra]
    return dataclasses.make_dataclass(name, spec, namespace={"__doc__": doc, "__module__": __name__})


#: `ScorerConfig` fields that describe the data or are set per model by the runner,
#: not hyperparameters: the item vectors' widths (from the item space), the modality
#: (one per ranker ablation), the observation's history length and user features.
SCORER_DATA_FIELDS = ("d_text", "d_image", "modality", "max_history", "user_features_dim")
#: `TrainConfig` fields set per run by the runner (seed, device, output paths, threads).
RANKER_RUN_FIELDS = ("seed", "device", "checkpoint_path", "tensorboard_dir", "num_threads")
#: `AgentConfig` fields of each algorithm's section (the rest are set per run or not offered).
AGENT_SHARED_FIELDS = ("total_steps", "num_envs", "learning_rate", "gamma", "checkpoint_every")
PPO_FIELDS = (*AGENT_SHARED_FIELDS, "n_steps", "batch_size", "n_epochs", "gae_lambda", "ent_coef", "clip_range",
              "temperature", "vf_coef", "normalize_values", "value_hidden", "value_lr_scale", "kl_coef", "bc_epochs", "bc_lr")
DQN_FIELDS = (*AGENT_SHARED_FIELDS, "buffer_size", "learning_starts", "train_freq", "gradient_steps",
              "target_update_interval", "exploration_fraction", "exploration_final_eps")
#: What every RL section adds to its `AgentConfig` fields.
AGENT_EXTRA = (("warm_start", bool, True), ("cold_start", bool, False), ("reward", str, "simulator"),
               ("steps_by_env", dict[str, int], {}))

ScorerSection = library_view(
    "ScorerSection", ScorerConfig,
    [f.name for f in dataclasses.fields(ScorerConfig) if f.name not in SCORER_DATA_FIELDS],
    """The shared scorer's hyperparameters (the ranker's, and the RL agents' networks): the
    fields of `recsim_mm.scorer.ScorerConfig` but its data dimensions (`SCORER_DATA_FIELDS`),
    which come from the item space. Meanings and defaults: `ScorerConfig`.""")

RankerSection = library_view(
    "RankerSection", TrainConfig,
    [f.name for f in dataclasses.fields(TrainConfig) if f.name not in RANKER_RUN_FIELDS],
    """Supervised ranker training: the fields of `recsim_mm.ranker.TrainConfig` but the
    per-run ones (`RANKER_RUN_FIELDS`), plus ``ablations`` (also train text-only and
    image-only rankers, for the offline metrics) and ``ndcg_k`` (cut-off of NDCG@k /
    Recall@k).""",
    extra=(("ablations", bool, True), ("ndcg_k", int, 5)))

PPOSection = library_view(
    "PPOSection", AgentConfig, PPO_FIELDS,
    """PPO: `agents.train.AgentConfig`'s shared and PPO fields (`PPO_FIELDS`), plus
    ``warm_start`` (train "ppo-warm", initialised from the ranker), ``cold_start`` (train
    "ppo-cold" from random weights) and ``reward`` (``"simulator"``, or ``"ranker"``: the
    ranker's predicted engagement as a learned reward; evaluation still uses the simulator's)
    and ``steps_by_env`` (``{env id or its name after "recsim_mm/": total_steps}``: a
    budget per environment of a suite, each read from that environment's learning curves;
    environments not named train ``total_steps``).""",
    extra=AGENT_EXTRA)

DQNSection = library_view(
    "DQNSection", AgentConfig, DQN_FIELDS,
    """DQN: `agents.train.AgentConfig`'s shared and DQN fields (`DQN_FIELDS`), plus
    ``warm_start``, ``cold_start``, ``reward`` and ``steps_by_env`` as for `PPOSection`.""",
    extra=AGENT_EXTRA)

SlateQSection = library_view(
    "SlateQSection", AgentConfig, DQN_FIELDS,
    """SlateQ (`agents.slateq`, slate environments only): the same fields as `DQNSection`
    (SlateQ is SB3's DQN with decomposed slate values), plus ``warm_start``,
    ``cold_start``, ``reward`` and ``steps_by_env``.""",
    extra=AGENT_EXTRA)

RLlibSection = library_view(
    "RLlibSection", RLlibConfig, [f.name for f in dataclasses.fields(RLlibConfig)],
    """The RLlib backend of agent ``rllib_ppo`` (`agents.rllib_backend.RLlibConfig`: env runners,
    learners, further PPOConfig settings); its PPO hyperparameters are the ``ppo`` section's
    and its Ray cluster is ``ray.address`` / ``ray.num_cpus`` (docs/scaling.md).""")


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
        tune_users: training users on which the planning reference's horizon, MMR's
            diversity and model_planning's horizon are tuned (env seed
            ``tune_seed_offset`` [+ s for MMR and model_planning]).
        tune_seed_offset: env seed of the tuning users, distinct from the test users.
        explain: explain the greedy ranker's recommendations to the held-out users of the
            first seed (integrated gradients, `recsim_mm.explain`): ``explanations.json``,
            ``plots/explanation.png`` and the modality check in summary.md.
        fairness: regulariser weights of the ``fair`` strategy (one strategy
            ``fair-<weight>`` each; `agents.baselines.ExposureAwareRecommender`), the
            points of the return-fairness trade-off plot.
    """

    num_users: int = 500
    seed_offset: int = 1_000_000_000
    curve_users: int = 128
    curve_every: int = 10_000
    curve_seed_offset: int = 2_000_000_000
    trace_users: int = 4
    tune_users: int = 200
    tune_seed_offset: int = 500_000_000
    explain: bool = True
    fairness: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])


#: Where stage units run: on this machine (``jobs`` processes), or as Ray tasks (docs/scaling.md).
EXECUTORS = ("local", "ray")
EXPERIMENTS = ("recommendation", "platforms", "creators")
#: Strategies of each ecosystem experiment (`experiments.ecosystem`); the first is the reference.
ECOSYSTEM_STRATEGIES = {"platforms": ("random", "oracle", "ppo", "ppo_shared"), "creators": ("fixed", "ppo")}


@dataclass
class EcosystemSection:
    """The ecosystem experiments (``experiment=platforms`` or ``creators``;
    `experiments.ecosystem`, docs/ecosystems.md).

    Attributes:
        strategies: which to run (default all: platforms ``random`` (reference), ``oracle``,
            ``ppo``, ``ppo_shared``; creators ``fixed`` (reference), ``ppo``).
        users: users in the ecosystem (null: 8 for platforms, 128 for creators).
        candidates: candidates per user and step on each platform (platforms).
        creators: number of creators (creators).
        max_move: the farthest a creator moves per step, in map units (creators).
        creator_reward: ``"exposure"`` or ``"engagement"`` share (creators).
        episode: steps per episode.
        steps: PPO environment steps per learner (null: 5000 platforms, 40000 creators).
        eval_episodes: evaluation episodes per seed (the same for every strategy).
    """

    strategies: list[str] = field(default_factory=list)
    users: int | None = None
    candidates: int = 10
    creators: int = 6
    max_move: float = 0.1
    creator_reward: str = "exposure"
    episode: int = 50
    steps: int | None = None
    eval_episodes: int = 20


@dataclass
class RayConfig:
    """Ray settings, read only with ``executor=ray`` (docs/scaling.md).

    Attributes:
        address: an existing cluster (``host:port`` of its head, ``ray://host:10001``
            or ``auto``); None starts a Ray instance on this machine for the run.
        num_cpus: CPUs of that local instance; None = all of this machine's cores.
            Ignored with ``address``.
        cpus_per_task: CPUs each unit (ranker, agent run, tuning, evaluation) asks for;
            also its torch thread count.
        gpus_per_task: GPU share each unit asks for when ``device`` is CUDA (0.25: four
            units per GPU); ignored on CPU.
        max_retries: times a unit whose worker process died is re-run (an agent run
            resumes from its last checkpoint); an exception raised by the unit itself
            is not retried.
    """

    address: str | None = None
    num_cpus: int | None = None
    cpus_per_task: float = 1.0
    gpus_per_task: float = 0.25
    max_retries: int = 3


@dataclass
class ExperimentConfig:
    """Everything one ``python experiments/run.py`` run depends on.

    Attributes:
        name: results go to ``<results_dir>/<name>-<timestamp>/``.
        seeds: one full replicate per seed (ranker, agents, held-out users).
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` for networks and simulators.
        threads: torch CPU threads; None (default): half the machine's cores, 1 to 4
            (`recsim_mm.device.default_torch_threads`); 0: torch's own default.
        results_dir: parent folder of the run folders.
        cache_dir: stage cache (default ``<results_dir>/.cache``): finished stages are
            reused, an interrupted agent resumes from its checkpoint.
        progress: show progress bars (stage, progress, time left) on stderr.
        user_model: None (the env id's own), a registered name or
            ``package.module:ClassName``.
        user_params: parameters of the user model (e.g. ``{patience: 5}``).
        user_population: a fitted user population file (``python -m recsim_mm.real_data
            calibrate``, docs/real_data.md): every environment's users are drawn from it
            and take its fitted parameters (``user_params`` still win); None: the user
            model's own hand-set users.
        agents: strategies to compare (see `KNOWN_AGENTS`).
        experiment: ``"recommendation"`` (supervised vs RL recommenders, the default),
            ``"platforms"`` (competing platforms) or ``"creators"`` (learning creators): the
            ecosystem experiments (`experiments.ecosystem`) use ``seeds``, ``catalog``,
            ``encoders``, ``user_model``, ``eval.seed_offset`` and the ``ecosystem`` section.
        ecosystem: the ecosystem experiments' settings (`EcosystemSection`).
        executor: ``"local"`` (units run on this machine, ``jobs`` at a time; Ray is
            not imported) or ``"ray"`` (stages 3-5's units as Ray tasks, see ``ray``).
        jobs: with ``executor=local``, stage units run at the same time, each in its
            own worker process (`experiments.executor.ProcessExecutor`); 1: every
            unit in this process, one after another. None (default): as many as the
            cores hold at ``threads`` threads each on CPU (2 on a 2-core machine, at
            most 8), 1 on CUDA (`experiments.executor.default_jobs`). Results do not depend on it.
        ray: the Ray cluster and per-task resources (`RayConfig`).
    """

    name: str = "default"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    device: str = "auto"
    threads: int | None = None
    results_dir: str = "results"
    cache_dir: str | None = None
    progress: bool = True
    user_model: str | None = None
    user_params: dict[str, Any] = field(default_factory=dict)
    user_population: str | None = None
    agents: list[str] = field(
        default_factory=lambda: ["random", "popular", "longest", "greedy", "mmr", "ppo", "myopic_oracle", "planning"]
    )
    catalog: CatalogConfig = field(default_factory=CatalogConfig)
    encoders: EncoderConfig = field(default_factory=EncoderConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    scorer: ScorerSection = field(default_factory=ScorerSection)
    ranker: RankerSection = field(default_factory=RankerSection)
    ppo: PPOSection = field(default_factory=PPOSection)
    dqn: DQNSection = field(default_factory=DQNSection)
    slateq: SlateQSection = field(default_factory=SlateQSection)
    rllib: RLlibSection = field(default_factory=RLlibSection)
    eval: EvalConfig = field(default_factory=EvalConfig)
    experiment: str = "recommendation"
    ecosystem: EcosystemSection = field(default_factory=EcosystemSection)
    executor: str = "local"
    jobs: int | None = None
    ray: RayConfig = field(default_factory=RayConfig)


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
    if typing.get_args(hint):  # list[int], str | None, dict[str, Any]
        return str(hint).replace("typing.", "")
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
    if origin is tuple:  # tuple[T, ...] fields of library dataclasses, written as a list
        item_type = typing.get_args(hint)[0]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"config key {key!r} expects a list like [a,b]; got {value!r}")
        return tuple(_check_value(f"{key}[{i}]", v, item_type) for i, v in enumerate(value))
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


#: ``key:value`` with no space after the colon inside a YAML flow mapping: YAML reads
#: ``{patience:5}`` as a key named ``patience:5``; a shell-friendly form should just work.
_TIGHT_MAPPING_KEY = re.compile(r"([{,]\s*)([A-Za-z_][\w.]*):(?=[^\s/])")


def parse_override(text: str) -> tuple[str, Any]:
    """Split one ``key=value`` command-line override; the value is parsed as YAML.

    ``ppo.total_steps=5000`` -> ``("ppo.total_steps", 5000)``;
    ``agents=[ppo,greedy]`` -> ``("agents", ["ppo", "greedy"])``;
    ``user_params={patience:5}`` (no space, so no shell quoting needed) and
    ``'user_params={patience: 5}'`` -> ``("user_params", {"patience": 5})``.
    """
    if text.startswith("-"):
        raise ConfigError(f"unknown option {text!r}; the only options are -h/--help, the rest is key=value "
                          "(e.g. seeds=[0,1] or preset=quick)")
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not key=value (e.g. seeds=[0,1] or preset=quick)")
    key, raw = text.split("=", 1)
    if raw.lstrip().startswith("{"):
        raw = _TIGHT_MAPPING_KEY.sub(r"\1\2: ", raw)
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


def _preset_summary(name: str) -> str:
    """The first comment line of a preset file (what it is for)."""
    for line in (CONFIG_DIR / f"{name}.yaml").read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def help_text(program: str = "experiments/run.py") -> str:
    """``--help``: usage, the presets and every key with its type and schema default,
    generated from `ExperimentConfig` (so it cannot drift from the schema)."""
    lines = [f"usage: {program} [-h] [preset=NAME|FILE.yaml] [key=value ...]", "",
             "Train and compare the supervised ranker, PPO, DQN and baselines; results go to",
             "<results_dir>/<name>-<timestamp>/. Values are YAML; quote what the shell would split:",
             "  seeds=[0,1,2]  agents=[greedy,ppo]  ppo.total_steps=20000  user_params.patience=5",
             "  'user_params={patience: 5}'  \"name='2024'\"  catalog.path=null", "",
             "presets (schema < preset < overrides; default: default):"]
    lines += [f"  {name:<10} {_preset_summary(name)}" for name in presets()]
    lines += ["", "keys (type, schema default; meanings: docs/configuration.md):"]
    defaults = to_dict(ExperimentConfig())

    def walk(cls: type, data: dict, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name], data[f.name], f"{prefix}{f.name}.")
            else:
                default = yaml.safe_dump(data[f.name], default_flow_style=True).strip().removesuffix("...").strip()
                lines.append(f"  {prefix + f.name:<32} {_type_name(hints[f.name]):<14} {default}")

    walk(ExperimentConfig, defaults, "")
    return "\n".join(lines)


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
    # A budget given on the command line is for every environment: it replaces the
    # preset's per-environment budgets unless the same command line sets those too.
    given = {key for key, _ in rest}
    for section in ("ppo", "dqn", "slateq"):
        if f"{section}.total_steps" in given and not any(k.startswith(f"{section}.steps_by_env") for k in given):
            getattr(config, section).steps_by_env = {}
    validate(config)
    return config


def _require(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"config key {key!r} = {value!r} is invalid; expected {expected}")


# -- the library's config objects, built from the sections -------------------------------------


def scorer_config(config: ExperimentConfig, d_text: int, d_image: int, modality: str = "fused") -> ScorerConfig:
    """`recsim_mm.scorer.ScorerConfig` of the ``scorer`` section on item vectors of these widths."""
    return ScorerConfig(d_text=d_text, d_image=d_image, modality=modality, **dataclasses.asdict(config.scorer))


def ranker_train_config(config: ExperimentConfig, seed: int, device: str) -> TrainConfig:
    """`recsim_mm.ranker.TrainConfig` of one ranker (seed ``seed``) from the ``ranker`` section."""
    section = {k: v for k, v in dataclasses.asdict(config.ranker).items() if k not in ("ablations", "ndcg_k")}
    return TrainConfig(seed=seed, device=device, **section)


def rllib_config(config: ExperimentConfig) -> RLlibConfig:
    """`agents.rllib_backend.RLlibConfig` of the ``rllib`` section."""
    return RLlibConfig(**dataclasses.asdict(config.rllib))


def env_budget(steps_by_env: dict[str, int], env_id: str | None) -> int | None:
    """The ``steps_by_env`` entry of ``env_id`` (by full id or by its name after the
    namespace), or None."""
    if env_id is None:
        return None
    for name in (env_id, env_id.rsplit("/", 1)[-1]):
        if name in steps_by_env:
            return steps_by_env[name]
    return None


def agent_config(config: ExperimentConfig, algo: str, seed: int, device: str,
                 env_id: str | None = None) -> AgentConfig:
    """`agents.train.AgentConfig` of one RL run from the ``ppo`` / ``dqn`` section, on
    ``env_id`` (its ``steps_by_env`` budget, when the section names it)."""
    values = dataclasses.asdict(getattr(config, algo))
    section = {k: v for k, v in values.items() if k not in dict.fromkeys(name for name, _, _ in AGENT_EXTRA)}
    budget = env_budget(values.get("steps_by_env", {}), env_id)
    if budget is not None:
        section["total_steps"] = budget
    return AgentConfig(algo=algo, seed=seed, device=device, scorer=dataclasses.asdict(config.scorer), **section)


_LIBRARY_FIELD = re.compile(r"\b(?:ScorerConfig|TrainConfig|AgentConfig|RLlibConfig)\.(\w+)")


def _library_checked(section: str, build: typing.Callable[[], Any]) -> Any:
    """``build()``, with a library config's ValueError turned into a ConfigError that names
    the config key (``section.<field>``, the field the library's message names)."""
    try:
        return build()
    except ValueError as exc:
        match = _LIBRARY_FIELD.search(str(exc))
        key = f"{section}.{match.group(1)}" if match else section
        raise ConfigError(f"config key {key!r}: {exc}") from None


def validate(config: ExperimentConfig) -> None:
    """Checks of the experiment's own settings; the scorer, ranker and agent sections are
    checked by building the library's config objects from them (their checks, defined
    once there, become errors naming the key). The runner checks what needs the
    environment registry or files (env id, user model, encoders, catalog, device, folders).

    Raises:
        ConfigError: naming the key, the value and what was expected.
    """
    c = config
    _require(bool(c.name) and "/" not in c.name and not c.name.startswith("."), "name", c.name,
             "a non-empty folder name without '/'")
    _require(len(c.seeds) >= 1 and all(s >= 0 for s in c.seeds), "seeds", c.seeds,
             "a non-empty list of integers >= 0")
    _require(len(set(c.seeds)) == len(c.seeds), "seeds", c.seeds, "distinct seeds")
    _require(c.threads is None or c.threads >= 0, "threads", c.threads,
             "null (from the machine), 0 (torch's default) or an integer >= 1")
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
    for key in ("catalog.num_items", "encoders.d_text", "encoders.d_image",
                "env.num_candidates", "env.history_length", "env.max_steps", "logging.num_users",
                "logging.test_users", "ranker.ndcg_k", "eval.num_users"):
        value = _get(c, key)
        _require(value >= 1, key, value, "an integer >= 1")
    for key in ("eval.curve_users", "eval.curve_every", "eval.trace_users", "eval.seed_offset",
                "eval.curve_seed_offset", "eval.tune_users", "eval.tune_seed_offset", "logging.seed", "catalog.seed"):
        value = _get(c, key)
        _require(value >= 0, key, value, "an integer >= 0")
    _require(len(c.eval.fairness) >= 1 and all(w > 0 for w in c.eval.fairness)
             and len(set(c.eval.fairness)) == len(c.eval.fairness), "eval.fairness", c.eval.fairness,
             "a non-empty list of distinct weights > 0 (weight 0 is the greedy ranker, always shown)")
    _require(2 <= c.catalog.num_topics <= len(TOPICS), "catalog.num_topics", c.catalog.num_topics,
             f"an integer in [2, {len(TOPICS)}] (the synthetic catalog's topics)")
    _require(32 <= c.catalog.image_size <= 512, "catalog.image_size", c.catalog.image_size,
             "an integer in [32, 512] (pixels)")
    _require(c.encoders.image_size is None or 32 <= c.encoders.image_size <= 1024, "encoders.image_size",
             c.encoders.image_size, "null (the CNN's native size) or an integer in [32, 1024] (pixels)")
    ids = env_ids(c)
    _require(len(ids) >= 1 and len(set(ids)) == len(ids), "env.id", c.env.id, "an id or a non-empty list of distinct ids")
    _require(c.env.reward in REWARDS, "env.reward", c.env.reward, f"one of {list(REWARDS)}")
    _require(c.env.obs_mode in OBS_MODES, "env.obs_mode", c.env.obs_mode, f"one of {list(OBS_MODES)}")
    _require(c.logging.policy in LOGGING_POLICIES, "logging.policy", c.logging.policy,
             f"one of {list(LOGGING_POLICIES)}")
    _require(0.0 <= c.logging.epsilon <= 1.0, "logging.epsilon", c.logging.epsilon, "a number in [0, 1]")
    _require(c.logging.noise_std >= 0.0, "logging.noise_std", c.logging.noise_std, "a number >= 0")
    _require(c.logging.temperature > 0.0, "logging.temperature", c.logging.temperature, "a number > 0")
    _require(0 <= c.env.history_prefix <= c.env.history_length, "env.history_prefix", c.env.history_prefix,
             f"an integer in [0, env.history_length = {c.env.history_length}]")
    _require(0.0 <= c.env.new_items < 0.5, "env.new_items", c.env.new_items,
             "a share in [0, 0.5): 0 = off, else the share of the catalog held back until evaluation")
    _require(c.ranker.ndcg_k <= c.env.num_candidates, "ranker.ndcg_k", c.ranker.ndcg_k,
             f"at most env.num_candidates = {c.env.num_candidates}")
    _require(c.experiment in EXPERIMENTS, "experiment", c.experiment, f"one of {list(EXPERIMENTS)}")
    if c.experiment in ECOSYSTEM_STRATEGIES:
        allowed = ECOSYSTEM_STRATEGIES[c.experiment]
        _require(all(n in allowed for n in c.ecosystem.strategies) and
                 len(set(c.ecosystem.strategies)) == len(c.ecosystem.strategies), "ecosystem.strategies",
                 c.ecosystem.strategies, f"distinct names from {list(allowed)} (experiment={c.experiment})")
    for key in ("ecosystem.candidates", "ecosystem.creators", "ecosystem.episode", "ecosystem.eval_episodes"):
        _require(_get(c, key) >= 1, key, _get(c, key), "an integer >= 1")
    for key in ("ecosystem.users", "ecosystem.steps"):
        _require(_get(c, key) is None or _get(c, key) >= 1, key, _get(c, key), "null (the default) or an integer >= 1")
    _require(c.ecosystem.max_move > 0, "ecosystem.max_move", c.ecosystem.max_move, "a number > 0 (map units)")
    _require(c.ecosystem.creator_reward in CREATOR_REWARDS, "ecosystem.creator_reward", c.ecosystem.creator_reward,
             f"one of {list(CREATOR_REWARDS)}")
    _require(c.executor in EXECUTORS, "executor", c.executor, f"one of {list(EXECUTORS)}")
    _require(c.jobs is None or c.jobs >= 1, "jobs", c.jobs,
             "null (from the machine's cores) or an integer >= 1 (1: every unit in this process)")
    _require(c.ray.address is None or bool(c.ray.address.strip()), "ray.address", c.ray.address,
             "null (a local Ray instance), 'auto', 'host:port' or 'ray://host:port'")
    _require(c.ray.num_cpus is None or c.ray.num_cpus >= 1, "ray.num_cpus", c.ray.num_cpus,
             "null (all cores) or an integer >= 1")
    _require(c.ray.cpus_per_task > 0, "ray.cpus_per_task", c.ray.cpus_per_task, "a number > 0")
    _require(0 <= c.ray.gpus_per_task <= 1, "ray.gpus_per_task", c.ray.gpus_per_task, "a number in [0, 1]")
    _require(c.ray.max_retries >= 0, "ray.max_retries", c.ray.max_retries, "an integer >= 0")
    _library_checked("scorer", lambda: scorer_config(c, c.encoders.d_text, c.encoders.d_image))
    _library_checked("ranker", lambda: ranker_train_config(c, 0, "cpu"))
    for algo in RL_AGENTS:
        section = getattr(c, algo)
        _require(section.reward in ("simulator", "ranker"), f"{algo}.reward", section.reward,
                 "'simulator' or 'ranker'")
        if algo in c.agents:
            _require(section.warm_start or section.cold_start, f"{algo}.warm_start", section.warm_start,
                     f"true, or {algo}.cold_start=true: agent {algo!r} is listed in 'agents'")
        _library_checked(algo, lambda algo=algo: agent_config(c, algo, 0, "cpu"))
        for name, steps in section.steps_by_env.items():
            key = f"{algo}.steps_by_env.{name}"
            # entries for registered environments outside this run are kept unused, so a
            # preset's budgets survive `env.id=...` picking one environment of its suite
            known = sorted({*ids, *ENV_IDS})
            _require(any(env_budget({name: 1}, e) for e in known), key, name,
                     "a registered environment id, or its name after 'recsim_mm/' (e.g. 'Satiation-v0')")
            _require(isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1, key, steps,
                     "an int >= 1 (environment steps)")
    _library_checked("rllib", lambda: rllib_config(c))
    for name, section in RLLIB_AGENTS.items():
        if name in c.agents:
            _require(getattr(c, section).warm_start or getattr(c, section).cold_start, f"{section}.warm_start",
                     getattr(c, section).warm_start, f"true, or {section}.cold_start=true: agent {name!r} is listed")
            _require(getattr(c, section).reward == "simulator", f"{section}.reward", getattr(c, section).reward,
                     f"'simulator' with agent {name!r} (the RLlib backend trains on the simulator's reward)")
            for problem in unsupported_agent_settings(agent_config(c, section, 0, "cpu")):
                field_name = problem.split("=", 1)[0]
                raise ConfigError(f"config key '{section}.{field_name}' with agent {name!r}: {problem}")
    _require(not (c.ppo.kl_coef and c.ppo.cold_start), "ppo.kl_coef", c.ppo.kl_coef,
             "0 with ppo.cold_start=true (the KL prior is the warm start's ranker; a cold run has none)")


def _get(config: Any, key: str) -> Any:
    for part in key.split("."):
        config = getattr(config, part)
    return config


def to_dict(config: ExperimentConfig) -> dict:
    """The config as plain nested data (for `config.yaml` and stage hashes); tuples become
    lists, as YAML reads them back."""
    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        return value

    return plain(dataclasses.asdict(config))


def to_yaml(config: ExperimentConfig) -> str:
    """The resolved config as YAML that `load_config` reads back (keys in schema order)."""
    return yaml.safe_dump(to_dict(config), sort_keys=False, default_flow_style=None)


def env_ids(config: ExperimentConfig) -> list[str]:
    """The experiment's environments: ``env.id`` as a list (one id, or a suite)."""
    return [config.env.id] if isinstance(config.env.id, str) else list(config.env.id)
