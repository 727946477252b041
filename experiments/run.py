"""One command from nothing to a comparison of the supervised ranker, PPO, DQN and baselines.

    .venv/bin/python experiments/run.py [preset=quick|default|full|path.yaml] [key=value ...]
    .venv/bin/python experiments/run.py --help

The experiment reads top to bottom as stage functions, one screen each (see `main`):

0. `check_inputs`: every user input is checked before anything is trained (unknown
   keys, types, ranges, agents, user model, encoders, catalog file, device, folders);
1. `item_space_stage`: catalog -> embeddings -> item space (shared by every environment);
2. `logs_stage`: logged interactions (a logging policy on simulated users);
3. `rankers_stage`: the supervised ranker per seed (+ text-only / image-only ablations);
4. `agents_stage`: the RL agents per seed (PPO / DQN, warm-started from the ranker and/or cold);
5. `evaluation_stage`: every strategy on the same held-out users of each seed;
6. `experiments.report.write_report`: ``<results_dir>/<name>-<timestamp>/`` (summary.md,
   metrics.csv, plots, tensorboard/, checkpoints/ with the item space, config.yaml).

Stages 2-5 take the environment (`EnvSetup`) as an argument, so an experiment over
several environments runs them once per environment on the one item space. Their
units (one ranker, one (agent, seed) training run, one evaluation) are the plain
functions `train_ranker_unit`, `train_agent_unit`, `tune_unit` and `evaluate_unit` of
picklable inputs; `StageRunner` is the one place that decides "compute, finish and
record, or reuse". It hands the units to an executor (`experiments.executor`):
``executor=local`` runs them on this machine, ``jobs`` worker processes at a time (one
per core by default; ``jobs=1``: here, one after another); ``executor=ray`` runs the units
of stages 3-5 as Ray tasks in parallel, on this machine or a cluster (docs/scaling.md),
each stage waiting for the units it needs. Stages 1-2 and the report run here.

Stages 1-5 are cached in ``<cache_dir>/<stage>-<hash>/`` (default
``results/.cache``), the hash covering exactly the config the stage depends on, its
upstream stages and the source code it runs. A re-run reuses every finished stage
(a finished config trains nothing); an agent interrupted mid-training resumes from
its last checkpoint. A stage folder is complete when its ``done.json`` exists; a unit
is computed under a lock on ``<cache_dir>/.<stage>-<hash>.lock``, so runs sharing a
cache compute a shared stage once.
Configuration keys: docs/configuration.md; walkthrough: docs/quickstart.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache, partial
from pathlib import Path
from typing import Any

# `python experiments/run.py` puts experiments/ first on sys.path; the repository root
# makes `experiments.*` importable. (`main` adds the working directory, for users' modules.)
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import gymnasium  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

import envs  # noqa: E402,F401  (registers the recsim_mm/ ids)
from agents.baselines import (  # noqa: E402
    ExposureAwareRecommender,
    MMRRecommender,
    PopularRecommender,
    make_baseline,
)
from agents.callbacks import LearningCurveCallback, ProgressCallback  # noqa: E402
from agents.evaluation import evaluate_recommender  # noqa: E402
from agents.references import (  # noqa: E402
    MODEL_PLANNING_NAME,
    ModelPlanning,
    MyopicOracle,
    PlanningReference,
    tune_model_planning_horizon,
    tune_planning_horizon,
)
from agents.rllib_backend import RLlibConfig, check_settings, require_rllib, train_rllib_agent  # noqa: E402
from agents.slateq import check_choice_model  # noqa: E402
from agents.tracing import trace_hidden_state  # noqa: E402
from agents.train import (  # noqa: E402
    AgentConfig,
    build_agent,
    load_agent_checkpoint,
    make_env,
    train_agent,
)
from envs.rec_env import RecEnvOptions, build_simulator  # noqa: E402
from envs.vector_env import RecVectorEnv  # noqa: E402
from experiments import report  # noqa: E402
from experiments.config import (  # noqa: E402
    BASELINE_AGENTS,
    RANKER_AGENTS,
    REFERENCE_AGENTS,
    RL_AGENTS,
    RLLIB_AGENTS,
    SINGLE_ITEM_RL,
    SLATE_RL,
    ConfigError,
    ExperimentConfig,
    agent_config,
    env_ids,
    help_text,
    load_config,
    ranker_train_config,
    rllib_config,
    scorer_config,
    to_yaml,
)
from experiments.executor import LocalExecutor, check_reachable, make_executor, run_unit  # noqa: E402
from recsim_mm.catalog import Catalog, CatalogError, file_sha256, load_catalog  # noqa: E402
from recsim_mm.device import default_torch_threads, resolve_device  # noqa: E402
from recsim_mm.encoders import ImageEncoder, TextEncoder  # noqa: E402
from recsim_mm.explain import modality_check  # noqa: E402
from recsim_mm.files import atomic_write, source_hash, write_json  # noqa: E402
from recsim_mm.item_space import ItemSpace  # noqa: E402
from recsim_mm.logs import (  # noqa: E402
    EpsilonMixture,
    InteractionLog,
    PopularityPolicy,
    ProductionPolicy,
    UniformPolicy,
    collect,
)
from recsim_mm.pipeline import build_item_space  # noqa: E402
from recsim_mm.ranker import Ranker, TrainConfig, evaluate_ranker, train_ranker  # noqa: E402
from recsim_mm.scorer import ScorerConfig  # noqa: E402
from recsim_mm.session_end import SessionEndModel  # noqa: E402
from recsim_mm.synthetic import TOPICS, generate_catalog  # noqa: E402
from recsim_mm.users import resolve_user_model  # noqa: E402

CACHE_FORMAT = "recsim_mm.ExperimentStage/1"
NUM_STAGES = 6


# -- the stage cache and its runner ----------------------------------------------------------


@cache
def code_version(*packages: str) -> str:
    """Hash of the Python sources of ``packages`` (folders under the repository root, or
    files): a stage's key includes the code it runs, so an edit never reuses stale output."""
    return source_hash([ROOT / p for p in packages], root=ROOT)


class Stage:
    """One cached stage output: the folder ``<cache_dir>/<name>-<key>/``.

    ``key`` hashes ``parts`` (the config the stage depends on and its upstream keys)
    with the stage's code version. The folder is complete once ``done.json`` exists;
    a folder without it (an interrupted stage) is recomputed, or, for agents, resumed.
    """

    def __init__(self, cache_dir: Path, name: str, code: tuple[str, ...], **parts: Any):
        self.name = name
        self.parts = {"format": CACHE_FORMAT, "stage": name, "code": code_version(*code), **parts}
        blob = json.dumps(self.parts, sort_keys=True, default=str)
        self.key = hashlib.sha256(blob.encode()).hexdigest()[:16]
        self.dir = cache_dir / f"{name}-{self.key}"

    @property
    def done(self) -> bool:
        """Whether the stage finished (its ``done.json`` exists)."""
        return (self.dir / "done.json").is_file()

    def info(self) -> dict:
        """What `finish` recorded: ``depends_on`` and the stage's own results."""
        return json.loads((self.dir / "done.json").read_text())


class Progress:
    """Stage headers on stdout and progress bars (progress, rate, time left) on stderr."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.started = time.perf_counter()
        self.records: list[dict] = []  # one per stage unit: what ran, what was reused

    def stage(self, number: int, title: str, detail: str = "") -> None:
        """Print ``[number/6] title: detail (elapsed ...)``."""
        elapsed = time.perf_counter() - self.started
        print(f"[{number}/{NUM_STAGES}] {title}{': ' + detail if detail else ''}  (elapsed {elapsed:.0f} s)",
              flush=True)

    def bar(self, total: int, desc: str, unit: str) -> tqdm:
        """A progress bar over ``total`` units (rate and time left; silent with ``progress=false``)."""
        return tqdm(total=total, desc=desc, unit=unit, disable=not self.enabled, file=sys.stderr,
                    dynamic_ncols=True, unit_scale=unit == "step", smoothing=0.1)

    def record(self, stage: Stage, status: str, seconds: float = 0.0, slot: int | None = None,
               **extra: Any) -> None:
        """Note one stage unit (``computed``, ``cached`` or ``resumed from step N``) for stages.json,
        at the end or in the ``slot`` `reserve` returned (records stay in submission order)."""
        entry = {"stage": stage.name, "key": stage.key, "dir": str(stage.dir),
                 "status": status, "seconds": round(seconds, 2), **extra}
        if slot is None:
            self.records.append(entry)
        else:
            self.records[slot] = entry

    def reserve(self) -> int:
        """A place for a record that `record` fills later (a unit still running)."""
        self.records.append({})
        return len(self.records) - 1


@dataclass
class Pending:
    """A submitted stage unit: its stage, the executor's future (None when cached), what
    its ``stages.json`` record carries, and, once known, the executor's ``result``."""

    stage: Stage
    future: Any
    record: dict
    keep: tuple[str, ...] = ()
    on_done: Callable[[dict], None] | None = None
    result: dict | None = None
    slot: int = -1


class StageRunner:
    """Runs stage units through the cache: the one place that decides compute or reuse.

    A unit is a picklable function ``unit(folder) -> info`` (usually a
    ``functools.partial`` of a ``*_unit`` function) writing its outputs into the stage
    folder and returning a JSON-able summary. A finished stage is reused as is; any
    other is handed to the executor, which computes it under the stage's lock and
    publishes ``done.json`` last (`experiments.executor.run_unit`). `submit` + `gather`
    run many units (in parallel under Ray); `run` one unit, here.
    """

    def __init__(self, cache_dir: Path, progress: Progress, executor: Any = None):
        self.cache_dir, self.progress = cache_dir, progress
        self.executor = executor if executor is not None else LocalExecutor()

    def stage(self, name: str, code: tuple[str, ...], **parts: Any) -> Stage:
        """The `Stage` of unit ``name`` keyed by ``parts`` and the sources ``code``."""
        return Stage(self.cache_dir, name, code, **parts)

    @property
    def inline(self) -> bool:
        """Whether units run in this process (they may then drive its progress bars)."""
        return self.executor.inline

    def submit(self, stage: Stage, unit: Callable[[Path], dict], resumable: bool = False,
               keep: tuple[str, ...] = (), on_done: Callable[[dict], None] | None = None,
               **record: Any) -> Pending:
        """Hand ``stage``'s unit to the executor unless the stage is done; `gather` collects it.

        Args:
            stage: the unit's cache entry.
            unit: ``folder -> info``; an ``info["resumed_from"]`` step that is not None
                is recorded as ``resumed from step N``.
            resumable: the unit resumes from what an interrupted attempt left (agents).
            keep: keys of the info copied into the unit's ``stages.json`` record.
            on_done: called with the info when a computed unit finishes (progress).
            **record: extra fields of that record (strategy, seed...).
        """
        if stage.done:
            pending = Pending(stage, None, record, result={"info": stage.info(), "status": "cached", "seconds": 0.0})
        else:
            pending = Pending(stage, self.executor.submit(stage.dir, stage.parts, unit, resumable), record, keep,
                              on_done)
        pending.slot = self.progress.reserve()
        if self.inline and pending.result is None:  # computed already: report it now, between units
            self.executor.wait([pending.future], lambda _, result: self._finished(pending, result))
        return pending

    def _finished(self, pending: Pending, result: dict) -> None:
        pending.result = result
        if pending.on_done is not None and result["status"] != "cached":
            pending.on_done(result["info"])

    def gather(self, pending: list[Pending]) -> list[dict]:
        """Wait for the submitted units, record them (in submission order) and return their infos."""
        waiting = [p for p in pending if p.result is None]
        self.executor.wait([p.future for p in waiting], lambda i, result: self._finished(waiting[i], result))
        for p in pending:
            extra = {k: p.result["info"][k] for k in p.keep} if p.result["status"] != "cached" else {}
            host = {"host": p.result["host"]} if "host" in p.result and not self.inline else {}
            self.progress.record(p.stage, p.result["status"], p.result["seconds"], slot=p.slot, **p.record, **extra,
                                 **host)
        return [p.result["info"] for p in pending]

    def run(self, stage: Stage, compute: Callable[[Path], dict], **record: Any) -> dict:
        """Compute ``stage`` here (not through the executor) unless it is done; return its info."""
        if stage.done:
            result = {"info": stage.info(), "status": "cached", "seconds": 0.0}
        else:
            result = run_unit(stage.dir, stage.parts, compute)
        self.progress.record(stage, result["status"], result["seconds"], **record)
        return result["info"]


@dataclass(frozen=True)
class EnvSetup:
    """One environment of an experiment: a registered id and its resolved options.

    Attributes:
        id: the Gymnasium id, e.g. ``"recsim_mm/Satiation-v0"``.
        options: `envs.rec_env.RecEnvOptions` overrides without ``item_space``: the id's
            registered options (user model, slate size) updated by the config's.
    """

    id: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> dict[str, Any]:
        """What a stage's results depend on (the options but the device, which stages key apart)."""
        return {k: v for k, v in self.options.items() if k != "device"}

    @property
    def slate_size(self) -> int | None:
        """``S`` of a slate environment, None when one item is recommended per step."""
        slate = self.options.get("slate_size", 1)
        return slate if slate > 1 else None

    def vector_env(self, num_users: int, item_space: ItemSpace, **overrides: Any) -> RecVectorEnv:
        """The native batched environment of ``num_users`` users on ``item_space``."""
        return RecVectorEnv(num_users, **{**self.options, "item_space": item_space, **overrides})


# -- stage 0: inputs checked before anything is trained ---------------------------------------


def check_writable(folder: Path, key: str) -> None:
    """Create ``folder`` if needed and prove it is writable by writing a file in it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise ConfigError(f"config key {key!r}: folder {str(folder)!r} is not writable ({exc})") from None


def environment_setup(config: ExperimentConfig, device: torch.device, env_id: str) -> EnvSetup:
    """The `EnvSetup` of ``env_id`` (one of ``env.id``): its registered options (user model,
    slate size), then the config's."""
    try:
        spec = gymnasium.spec(env_id)
    except gymnasium.error.Error as exc:
        ids = sorted(i for i in gymnasium.registry if i.startswith("recsim_mm/"))
        raise ConfigError(f"config key 'env.id': unknown environment {env_id!r} ({exc}); "
                          f"registered ids: {ids}") from None
    options = dict(spec.kwargs)
    options.update(
        num_candidates=config.env.num_candidates,
        history_length=config.env.history_length,
        max_steps=config.env.max_steps,
        reward=config.env.reward,
        obs_mode=config.env.obs_mode,
        device=str(device),
    )
    if config.env.history_prefix:  # only when set: the stage keys of other runs stay as they were
        options["history_prefix"] = config.env.history_prefix
    if config.user_model is not None:
        options["user_model"] = config.user_model
    if config.user_params:
        options["user_params"] = dict(config.user_params)
    return EnvSetup(env_id, options)


def rl_runs(config: ExperimentConfig) -> list[tuple[str, str]]:
    """``(algo, start)`` pairs to train, e.g. ``[("ppo", "warm"), ("dqn", "warm")]``."""
    runs = []
    for algo in RL_AGENTS:
        if algo in config.agents:
            section = getattr(config, algo)
            runs += [(algo, start) for start, on in (("warm", section.warm_start),
                                                       ("cold", section.cold_start)) if on]
    for name, section_name in RLLIB_AGENTS.items():  # the same section's starts, trained by RLlib
        if name in config.agents:
            section = getattr(config, section_name)
            runs += [(name, start) for start, on in (("warm", section.warm_start), ("cold", section.cold_start)) if on]
    return runs


def strategies_of(config: ExperimentConfig) -> list[str]:
    """Strategy names in report order: baselines, the greedy ranker (the expected-reward
    baseline every other strategy is compared with, added when an RL agent, MMR or
    model_planning is asked for), MMR and model_planning, then ``algo-start``, then the
    privileged references."""
    rl = rl_runs(config)
    names = [a for a in config.agents if a in BASELINE_AGENTS]
    if any(a in config.agents for a in ("greedy", "mmr", "fair", MODEL_PLANNING_NAME)) or rl:
        names.append("greedy")
    names += [a for a in config.agents if a in ("greedy_id", "mmr", MODEL_PLANNING_NAME)]
    if "fair" in config.agents:
        names += [report.fair_name(weight) for weight in config.eval.fairness]
    names += [f"{algo}-{start}" for algo, start in rl]
    return names + [a for a in config.agents if a in REFERENCE_AGENTS]


def check_held_out_seeds(config: ExperimentConfig) -> None:
    """Held-out (test) and learning-curve users must come from env seeds no training used.

    Training users: the logs (``logging.seed``, ``+1``) and each agent's environment,
    seeded ``s`` and re-seeded ``s + steps`` after a resume (``s`` in ``seeds``).
    """
    longest = max([config.ppo.total_steps, config.dqn.total_steps, *config.ppo.steps_by_env.values(),
                   *config.dqn.steps_by_env.values()])
    training = [(config.logging.seed, config.logging.seed + 1)] + [(s, s + longest) for s in config.seeds]
    for key, offset in (("eval.seed_offset", config.eval.seed_offset),
                        ("eval.curve_seed_offset", config.eval.curve_seed_offset)):
        for s in config.seeds:
            clash = [r for r in training if r[0] <= offset + s <= r[1]]
            if clash:
                raise ConfigError(f"config key {key!r} = {offset}: held-out seed {offset + s} falls in the "
                                  f"training seeds {clash[0]}; use an offset above {max(r[1] for r in training)}")
    tests = {config.eval.seed_offset + s for s in config.seeds}
    curves = {config.eval.curve_seed_offset + s for s in config.seeds}
    if tests & curves:
        raise ConfigError("config keys 'eval.seed_offset' and 'eval.curve_seed_offset' give the same "
                          f"env seeds {sorted(tests & curves)}; the test users must be their own")
    tuning = {config.eval.tune_seed_offset + s for s in [0, *config.seeds]}
    if tests & tuning:
        raise ConfigError("config keys 'eval.seed_offset' and 'eval.tune_seed_offset' give the same "
                          f"env seeds {sorted(tests & tuning)}; nothing may be tuned on the test users")


def check_encoders(config: ExperimentConfig, device: torch.device) -> tuple[TextEncoder, ImageEncoder]:
    """The configured text and image encoders, or a ConfigError naming ``encoders.text/image``."""
    try:
        text_encoder = TextEncoder(model=config.encoders.text, device=device)
    except (ValueError, OSError) as exc:
        raise ConfigError(f"config key 'encoders.text': cannot use text encoder {config.encoders.text!r} "
                          "(expected 'default', a local Hugging Face model folder, or a hub id in the "
                          f"local cache): {exc}") from None
    try:
        image_encoder = ImageEncoder(model=config.encoders.image, device=device,
                                     image_size=config.encoders.image_size)
    except (ValueError, OSError) as exc:
        raise ConfigError(f"config key 'encoders.image': {exc}") from None
    return text_encoder, image_encoder


def check_inputs(config: ExperimentConfig) -> dict[str, Any]:
    """Stage 0: everything that can be checked before any item is encoded or model trained.

    Returns:
        ``{"device", "envs" (the `EnvSetup` of each environment), "text_encoder",
        "image_encoder", "catalog" (a loaded user catalog or None), "cache_dir",
        "results_dir"}``.

    Raises:
        ConfigError: naming the config key and the offending value.
    """
    try:
        device = resolve_device(config.device)
    except ValueError as exc:
        raise ConfigError(f"config key 'device': {exc}") from None
    setups = [environment_setup(config, device, env_id) for env_id in env_ids(config)]
    rl = [a for a in config.agents if a in RL_AGENTS]
    for env in setups:
        wrong = [a for a in rl if a not in (SLATE_RL if env.slate_size is not None else SINGLE_ITEM_RL)]
        if wrong and env.slate_size is not None:
            raise ConfigError(f"config key 'agents': {wrong} recommend one item per step, but env.id "
                              f"{env.id!r} asks for slates; on slates use {list(SLATE_RL)}")
        if wrong:
            raise ConfigError(f"config key 'agents': {wrong} needs a slate environment (a ...Slate-v0 id); "
                              f"env.id {env.id!r} recommends one item per step (use dqn)")
        if "slateq" in rl:
            try:
                # the environment's own user model, on a small random catalog (no encoding yet)
                check_choice_model(env.vector_env(1, ItemSpace.random(64, 4, 4)).simulator)
            except ValueError as exc:
                raise ConfigError(f"config key 'agents': {exc}") from None
        try:
            resolve_user_model(env.options["user_model"])
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"config key 'user_model': {exc}") from None
    text_encoder, image_encoder = check_encoders(config, device)
    catalog = None
    if config.catalog.path is not None:
        try:
            catalog = load_catalog(config.catalog.path, missing_image=config.catalog.missing_image)
        except CatalogError as exc:
            raise ConfigError(f"config key 'catalog.path': {exc}") from None
    num_items = len(catalog) if catalog is not None else config.catalog.num_items
    for key in ("d_text", "d_image"):
        value = getattr(config.encoders, key)
        if value > num_items - 1:
            raise ConfigError(f"config key 'encoders.{key}' = {value}: the catalog has {num_items} items, "
                              f"so at most {num_items - 1} dimensions")
    if any(name in RLLIB_AGENTS for name in config.agents):
        try:
            require_rllib()
        except ImportError as exc:
            raise ConfigError(f"config key 'agents': {exc}") from None
        try:
            check_settings(rllib_config(config))
        except ValueError as exc:
            raise ConfigError(f"config key 'rllib.settings': {exc}") from None
        if config.ray.address not in (None, "auto"):  # rllib_ppo connects there, even with executor=local
            check_reachable(config.ray.address)
    if config.env.new_items:
        setups = hold_back_new_items(config, setups, num_items)
    check_held_out_seeds(config)
    if config.experiment != "recommendation":
        from experiments.ecosystem import check_ecosystem  # supersuit: only for these experiments

        check_ecosystem(config)
    results_dir = Path(config.results_dir)
    cache_dir = Path(config.cache_dir) if config.cache_dir is not None else results_dir / ".cache"
    check_writable(results_dir, "results_dir")
    check_writable(cache_dir, "cache_dir" if config.cache_dir is not None else "results_dir")
    check_real_data(config, setups, cache_dir)
    return {"device": device, "envs": setups, "text_encoder": text_encoder, "image_encoder": image_encoder,
            "catalog": catalog, "cache_dir": cache_dir, "results_dir": results_dir}


def check_real_data(config: ExperimentConfig, setups: list[EnvSetup], cache_dir: Path) -> None:
    """``logging.path`` holds both log files; ``user_population`` exists and goes to every
    environment's users as a copy named by its content hash (so stage keys follow the
    file's content, not its path)."""
    if config.logging.path is not None:
        missing = [n for n in REAL_LOG_FILES if not (Path(config.logging.path) / n).is_file()]
        if missing:
            raise ConfigError(f"config key 'logging.path': folder {config.logging.path!r} lacks {missing} "
                              "(written by python -m recsim_mm.real_data import)")
        if config.scorer.use_time_left:
            raise ConfigError("config key 'scorer.use_time_left' = True: a real log (logging.path) records no "
                              "user's time left; set scorer.use_time_left=false")
    if config.user_population is not None:
        source = Path(config.user_population)
        if not source.is_file():
            raise ConfigError(f"config key 'user_population': file {str(source)!r} does not exist")
        copy = cache_dir / "populations" / f"{file_sha256(source)[:16]}.pt"
        if not copy.is_file():
            atomic_write(copy, lambda f: f.write(source.read_bytes()))
        for env in setups:
            env.options["user_params"] = {**(env.options.get("user_params") or {}), "population": str(copy)}


#: Arrival step of the held-back items in logs, training and tuning: a step no run reaches.
NEVER = 10**9


def hold_back_new_items(config: ExperimentConfig, setups: list[EnvSetup], num_items: int) -> list[EnvSetup]:
    """Item cold start (``env.new_items``): the catalog's last rows are held back from the
    logs, training and tuning (they arrive at a step no run reaches) and arrive at step 1
    for the held-out users (`evaluate_unit`), so no log, training episode or history
    mentions them."""
    count = int(round(config.env.new_items * num_items))
    if not 1 <= count <= num_items - config.env.num_candidates:
        raise ConfigError(f"config key 'env.new_items' = {config.env.new_items}: holds back {count} of {num_items} "
                          f"items; expected at least 1, leaving at least env.num_candidates = "
                          f"{config.env.num_candidates} items")
    held = []
    for env in setups:
        if env.options.get("candidates"):
            raise ConfigError(f"config key 'env.new_items': env.id {env.id!r} sets candidate options, which "
                              f"item cold start does not combine with (candidates are uniform over the items so far)")
        held.append(dataclasses.replace(env, options={**env.options, "new_items": [{"at": NEVER, "last": count}]}))
    return held


def logging_policy(config: ExperimentConfig, item_space: ItemSpace):
    """The logging policy of the ``logging`` section (epsilon-mixed with uniform slates)."""
    name = config.logging.policy
    if name == "production":
        base = ProductionPolicy(config.logging.noise_std, config.logging.temperature)
    elif name == "popularity":
        base = PopularityPolicy(item_space.quality.cpu().clamp_min(1e-3))
    else:
        base = UniformPolicy()
    return EpsilonMixture(base, config.logging.epsilon) if config.logging.epsilon > 0 else base


# -- stage units: plain functions of picklable inputs (what an executor ships) ----------------


def collect_logs_unit(folder: Path, env: EnvSetup, item_space: ItemSpace, policy: Any, num_users: int,
                      test_users: int, steps: int, seed: int, device: str) -> dict:
    """Log ``num_users`` training and ``test_users`` held-out sessions of ``policy`` into
    ``folder/train.parquet`` and ``folder/test.parquet`` (env seeds ``seed`` and ``seed + 1``)."""
    options = RecEnvOptions.parse({**env.options, "item_space": item_space, "obs_mode": "ids"})
    simulator = build_simulator(options, num_users=min(1024, num_users), default_device=device)
    collect(simulator, policy, num_users, steps, seed=seed).save(folder / "train.parquet")
    collect(simulator, policy, test_users, steps, seed=seed + 1).save(folder / "test.parquet")
    return {}


def copy_real_log(folder: Path, source: Path) -> dict:
    """Copy a real log's ``train.parquet`` and ``test.parquet`` into the logs stage ``folder``."""
    for name in REAL_LOG_FILES:
        shutil.copyfile(source / name, folder / name)
    return {}


def train_ranker_unit(folder: Path, item_space: ItemSpace, train_log: InteractionLog, test_log: InteractionLog,
                      scorer: ScorerConfig, train: TrainConfig, ndcg_k: int) -> dict:
    """Fit one ranker (``folder/ranker.pt``, ``folder/tensorboard/``) and score it on the held-out log.

    Returns:
        ``{"metrics": held-out offline metrics, "history": per-epoch losses, "best_epoch"}``.
    """
    train = dataclasses.replace(train, checkpoint_path=str(folder / "ranker.pt"),
                                tensorboard_dir=str(folder / "tensorboard"))
    result = train_ranker(train_log, item_space, scorer, train)
    metrics = evaluate_ranker(result.ranker, test_log, k=ndcg_k)
    return {"metrics": metrics, "history": result.history, "best_epoch": result.best_epoch}


def folder_free(unit: Callable[..., dict], folder: Path, **inputs: Any) -> dict:
    """``unit(**inputs)``: a unit that writes no files (tuning, evaluation) as a
    ``folder -> info`` stage unit (``partial(folder_free, unit, **inputs)``)."""
    return unit(**inputs)


@dataclass(frozen=True)
class CurveSpec:
    """Learning-curve users: ``users`` users reset with env seed ``seed`` every ``every`` steps."""

    users: int
    every: int
    seed: int


def train_agent_unit(folder: Path, agent: AgentConfig, env: EnvSetup, item_space: ItemSpace,
                     ranker: Ranker | None = None, reward_ranker: Ranker | None = None,
                     curve: CurveSpec | None = None, callbacks: tuple = (),
                     bc_log: InteractionLog | None = None) -> dict:
    """Train (or resume) one (agent, seed) run in ``folder`` (``checkpoint.pt``, ``tensorboard/``,
    ``curve.json``).

    Args:
        ranker: warm-start source; None trains from random weights.
        reward_ranker: a ranker whose predicted engagement replaces the simulator's reward.
        curve: learning-curve users, or None for no curve.
        callbacks: extra SB3 callbacks (e.g. a progress bar).
        bc_log: the training log, for ``agent.bc_epochs`` of behaviour cloning before RL.

    Returns:
        ``{"num_timesteps", "resumed_from" (step of the checkpoint resumed, or None)}``.
    """
    options = dict(env.options)
    if reward_ranker is not None:
        options.pop("reward")
        options["reward_fn"] = reward_ranker.reward_model()
    callbacks = list(callbacks)
    if curve is not None:
        callbacks.append(LearningCurveCallback(env.vector_env(curve.users, item_space), curve.seed, curve.every,
                                               item_space.fused, folder / "curve.json"))
    outcome = train_agent(agent, env.id, options, item_space, folder, ranker=ranker, callbacks=callbacks,
                          bc_log=bc_log if agent.bc_epochs else None)
    return {"num_timesteps": outcome.num_timesteps, "resumed_from": outcome.resumed_from}


def train_rllib_agent_unit(folder: Path, agent: AgentConfig, rllib: RLlibConfig, env: EnvSetup,
                           item_space: ItemSpace, ranker: Ranker | None = None, address: str | None = None,
                           num_cpus: int | None = None) -> dict:
    """`train_agent_unit` on the RLlib backend (`agents.rllib_backend.train_rllib_agent`): the
    same ``checkpoint.pt`` and ``tensorboard/`` in ``folder``; Ray at ``address`` (None: a local
    instance of ``num_cpus`` CPUs), or the connection of the Ray task running this unit."""
    outcome = train_rllib_agent(agent, rllib, env.id, env.options, item_space, folder, ranker=ranker,
                                address=address, num_cpus=num_cpus)
    return {"num_timesteps": outcome.num_timesteps, "resumed_from": outcome.resumed_from,
            "env_steps_per_second": round(outcome.env_steps_per_second, 1)}


@dataclass
class PolicySpec:
    """How to build one strategy's policy for seed ``seed``: a baseline by ``name`` (with
    the ``ranker`` and ``popularity`` it may need, MMR's tuned ``diversity``), a privileged
    reference (the planning reference's tuned ``horizon``), model_planning (the ``ranker``,
    the training log's ``end_model`` and its tuned ``horizon``), or an RL agent from
    ``checkpoint``."""

    name: str
    seed: int
    ranker: Ranker | None = None
    popularity: np.ndarray | None = None
    agent: AgentConfig | None = None
    checkpoint: Path | None = None
    diversity: float = 0.0
    horizon: float = 0.0
    fairness: float = 0.0
    end_model: SessionEndModel | None = None


def build_policy(spec: PolicySpec, env: EnvSetup, item_space: ItemSpace) -> Any:
    """The policy ``spec`` describes (anything with SB3's ``predict``). Every ranker-based
    baseline ranks by the environment's own reward (expected minutes or click probability)."""
    reward = env.options["reward"]
    if spec.name == "myopic_oracle":
        return MyopicOracle(reward, env.slate_size, seed=spec.seed)
    if spec.name == "planning":
        return PlanningReference(spec.horizon, reward, env.slate_size, seed=spec.seed)
    if spec.name == MODEL_PLANNING_NAME:
        return ModelPlanning(spec.ranker, spec.end_model, spec.horizon, reward, env.slate_size, seed=spec.seed)
    if spec.name == "mmr":
        return MMRRecommender(spec.ranker.policy(objective=reward), item_space.fused, spec.diversity,
                              slate_size=env.slate_size, seed=spec.seed)
    if report.fair_weight(spec.name) is not None:
        return ExposureAwareRecommender(spec.ranker.policy(objective=reward), item_space.fused, spec.fairness,
                                        slate_size=env.slate_size, seed=spec.seed)
    if spec.agent is None:
        name = "greedy" if spec.name == "greedy_id" else spec.name  # greedy on the id-only ranker
        return make_baseline(name, item_space.fused, popularity=spec.popularity, duration=item_space.duration,
                             ranker=spec.ranker, objective=reward, slate_size=env.slate_size, seed=spec.seed)
    venv = make_env(spec.agent, env.id, {**env.options, "item_space": item_space})
    # the KL prior and behaviour cloning act in training only: the trained weights are all there is
    model = build_agent(dataclasses.replace(spec.agent, kl_coef=0.0, bc_epochs=0), venv, item_space)
    weights = load_agent_checkpoint(spec.checkpoint, spec.agent, item_space)["policy"]
    model.policy.load_state_dict({k: v for k, v in weights.items() if not k.startswith("prior.")})
    return model


def evaluate_unit(policy: PolicySpec, env: EnvSetup, item_space: ItemSpace, num_users: int, seed: int,
                  popularity: np.ndarray, curve: tuple[int, int] | None = None) -> dict:
    """One strategy on ``num_users`` held-out users (env seed ``seed``).

    Args:
        curve: ``(users, seed)`` of the learning-curve users to also score the policy on
            (the reference level drawn into the curves), or None.

    Returns:
        ``{"summary": metrics of `agents.evaluation.EvalResult.summary`, "curve_level",
        "by_step": [[clicks, users] per session step]}``.
    """
    model = build_policy(policy, env, item_space)
    arrivals = {}
    if "new_items" in env.options:  # item cold start: the held-back items arrive for the held-out users
        arrivals["new_items"] = [{"at": 1, "last": env.options["new_items"][0]["last"]}]
    result = evaluate_recommender(model, env.vector_env(num_users, item_space, **arrivals), seed=seed,
                                  item_table=item_space.fused, popularity=popularity)
    summary = result.summary()
    curve_level = None
    if curve is not None:
        curve_level = evaluate_recommender(model, env.vector_env(curve[0], item_space), seed=curve[1],
                                      item_table=item_space.fused).summary()["episode_return"]
    by_step = [[float(c), int(u)] for c, u in zip(result.step_clicks, result.step_users, strict=True)]
    return {"summary": summary, "curve_level": curve_level, "by_step": by_step}


# -- stages 1-5 ------------------------------------------------------------------------------


#: The files of a real log folder (``logging.path``).
REAL_LOG_FILES = ("train.parquet", "test.parquet")


def item_space_stage(runner: StageRunner, config: ExperimentConfig, inputs: dict) -> tuple[Stage, ItemSpace]:
    """Stage 1: catalog -> text and image embeddings -> item space (``item_space.pt``)."""
    catalog: Catalog | None = inputs["catalog"]
    device = inputs["device"]
    catalog_id = (catalog.content_hash() if catalog is not None else
                  {k: v for k, v in dataclasses.asdict(config.catalog).items() if k not in ("path", "missing_image")})
    items = runner.stage("items", ("recsim_mm",), catalog=catalog_id,
                         encoders=dataclasses.asdict(config.encoders), device=device.type)
    runner.progress.stage(1, "item space", "cached" if items.done else "encoding the catalog (text + image)")

    def compute(folder: Path) -> dict:
        source = catalog if catalog is not None else generate_catalog(
            config.catalog.num_items, config.catalog.num_topics, seed=config.catalog.seed,
            image_size=config.catalog.image_size)
        item_space = build_item_space(source, inputs["text_encoder"], inputs["image_encoder"],
                                      config.encoders.d_text, config.encoders.d_image,
                                      config.encoders.alignment, device=device).to("cpu")
        item_space.save(folder / "item_space.pt")
        return {"num_items": item_space.num_items, "fingerprint": item_space.fingerprint()}

    runner.run(items, compute)
    return items, ItemSpace.load(items.dir / "item_space.pt")


def check_user_model(config: ExperimentConfig, env: EnvSetup, item_space: ItemSpace) -> None:
    """The user model's parameters, which can only be checked against a real item space,
    and, when references are asked for, its privileged one-step model."""
    try:
        venv = env.vector_env(1, item_space, device="cpu")
    except (ValueError, TypeError) as exc:
        key = "user_params" if config.user_params else "user_model"
        key = "user_population" if config.user_population and "population" in str(exc) else key
        raise ConfigError(f"config key {key!r}: {exc}") from None
    references = [a for a in config.agents if a in REFERENCE_AGENTS]
    if references:
        venv.reset(seed=0)
        sim = venv.simulator
        try:
            sim.users.expected_outcomes(sim.candidates)
        except NotImplementedError as exc:
            raise ConfigError(f"config key 'agents': {references} need the user model's expected_outcomes "
                              f"({exc}); drop them from 'agents' for this user model") from None


# -- tuning on training users (never the held-out users) --------------------------------------

#: MMR diversity weights tried on training users (0 is the greedy ranker itself).
MMR_DIVERSITIES = (0.0, 0.1, 0.2, 0.4, 0.8)


def tune_unit(kind: str, env: EnvSetup, item_space: ItemSpace, num_users: int, seed: int,
              ranker: Ranker | None = None, end_model: SessionEndModel | None = None) -> dict:
    """Tune the planning reference's horizon (``kind="planning"``), model_planning's horizon
    (``kind="model_planning"``, over ``ranker`` and ``end_model``) or MMR's diversity
    (``kind="mmr"``, over ``ranker``) on ``num_users`` training users of env seed ``seed``.

    Returns:
        ``{"best": value, "tried": {value: mean episode return}}``.
    """
    venv = env.vector_env(num_users, item_space)

    def mean_return(policy) -> float:
        return evaluate_recommender(policy, venv, seed=seed, item_table=item_space.fused).summary()["episode_return"]

    reward = env.options["reward"]
    if kind == "planning":
        best, tried = tune_planning_horizon(mean_return, reward, slate_size=env.slate_size)
    elif kind == MODEL_PLANNING_NAME:
        best, tried = tune_model_planning_horizon(mean_return, ranker, end_model, reward, slate_size=env.slate_size)
    else:
        greedy = ranker.policy(objective=reward)
        tried = {d: mean_return(MMRRecommender(greedy, item_space.fused, d, slate_size=env.slate_size))
                 for d in MMR_DIVERSITIES}
        best = max(tried, key=lambda d: (tried[d], -d))
    return {"best": float(best), "tried": {str(k): float(v) for k, v in tried.items()}}


def tuning_stage(runner: StageRunner, config: ExperimentConfig, env: EnvSetup, items: Stage,
                 item_space: ItemSpace, rankers: Rankers, device: torch.device,
                 logs: Logs | None = None) -> dict[tuple[str, int], float]:
    """The planning horizon (once per environment: it uses the true model), MMR's diversity
    and model_planning's horizon (per seed: they use that seed's ranker; model_planning
    also ``logs.end_model``, fitted on the training log), each tuned on training users.

    Returns:
        ``{("planning", 0): horizon, ("mmr", seed): diversity, ("model_planning", seed):
        horizon, ...}`` for what ``agents`` asks for.
    """
    units = []
    if "planning" in config.agents:
        units.append(("planning", 0, None))
    for kind in ("mmr", MODEL_PLANNING_NAME):
        if kind in config.agents:
            units += [(kind, seed, rankers.stages[("fused", seed)].key) for seed in config.seeds]
    pending = []
    for kind, seed, ranker_key in units:
        # model_planning also depends on the training log (its session-end model)
        fitted_on = {"logs": logs.stage.key} if kind == MODEL_PLANNING_NAME else {}
        stage = runner.stage("tune", ("recsim_mm", "envs", "agents"), kind=kind, env=env.key, items=items.key,
                             ranker=ranker_key, users=config.eval.tune_users,
                             seed=config.eval.tune_seed_offset + seed, device=device.type, **fitted_on)
        unit = partial(folder_free, tune_unit, kind=kind, env=env, item_space=item_space,
                       num_users=config.eval.tune_users, seed=config.eval.tune_seed_offset + seed,
                       ranker=rankers.fused.get(seed),
                       end_model=logs.end_model if kind == MODEL_PLANNING_NAME else None)
        pending.append(runner.submit(stage, unit, strategy=kind, seed=seed))
    tuned = {(kind, seed): info["best"] for (kind, seed, _), info in zip(units, runner.gather(pending), strict=True)}
    what = {"planning": "horizon", "mmr": "diversity (seed {})", MODEL_PLANNING_NAME: "horizon (seed {})"}
    if tuned:
        print("      tuned on training users: " + ", ".join(
            f"{kind} {what[kind].format(seed)} {value:g}" for (kind, seed), value in tuned.items()), flush=True)
    return tuned


def fit_session_end_model(config: ExperimentConfig, logs: Logs, item_space: ItemSpace) -> None:
    """``logs.end_model``: model_planning's session-end model, fitted on the training log
    (`recsim_mm.session_end.SessionEndModel`; a second or so), when ``agents`` asks for it."""
    if MODEL_PLANNING_NAME not in config.agents or logs.end_model is not None:
        return
    try:
        logs.end_model = SessionEndModel.fit(logs.train, item_space)
    except ValueError as exc:
        raise ConfigError(f"config key 'agents': {MODEL_PLANNING_NAME!r} fits a session-end model on the training "
                          f"log, which failed: {exc}") from None
    kept = ", ".join(logs.end_model.nonzero_coefficients()) or "none (a constant)"
    stats = logs.end_model.stats
    print(f"      session-end model (training log, {stats['ends']} ends in {stats['records']} records): "
          f"features kept {kept}", flush=True)


@dataclass
class Logs:
    """Stage 2's output: the logs' stage, the training and held-out logs, clicks per item, and
    (with model_planning) the session-end model fitted on the training log."""

    stage: Stage
    train: InteractionLog
    test: InteractionLog
    popularity: np.ndarray
    end_model: SessionEndModel | None = None


def logs_stage(runner: StageRunner, config: ExperimentConfig, env: EnvSetup, items: Stage,
               item_space: ItemSpace, device: torch.device) -> Logs:
    """Stage 2: the logging policy's sessions with simulated users of ``env``."""
    real = Path(config.logging.path) if config.logging.path is not None else None
    source = ({"real_log": [file_sha256(real / n) for n in REAL_LOG_FILES]} if real is not None else
              {"env": env.key, "logging": dataclasses.asdict(config.logging)})
    stage = runner.stage("logs", ("recsim_mm", "envs"), items=items.key, device=device.type, **source)
    runner.progress.stage(2, "logged interactions", "cached" if stage.done else f"real log {real}" if real else
                          f"{config.logging.policy} policy on {config.logging.num_users} + "
                          f"{config.logging.test_users} simulated users")
    if real is not None:
        runner.run(stage, partial(copy_real_log, source=real))
    else:
        runner.run(stage, lambda folder: collect_logs_unit(
            folder, env, item_space, logging_policy(config, item_space), config.logging.num_users,
            config.logging.test_users, config.env.max_steps, config.logging.seed, str(device)))
    try:
        train_log = InteractionLog.load(stage.dir / "train.parquet", item_space)
        test_log = InteractionLog.load(stage.dir / "test.parquet", item_space)
    except ValueError as exc:  # a real log over another catalog
        raise ConfigError(f"config key 'logging.path': {exc}") from None
    popularity = PopularRecommender.from_log(train_log, item_space.fused).popularity
    print(f"      {len(train_log)} training records, {len(test_log)} held-out records, "
          f"click rate {train_log.clicks.mean():.3f}", flush=True)
    return Logs(stage, train_log, test_log, popularity)


@dataclass
class Rankers:
    """Stage 3's output: the stages per ``(modality, seed)``, the fused ranker per seed,
    the held-out offline metrics ``{modality: {seed: {metric: value}}}`` and, with
    ``greedy_id`` among the agents, the id-only ranker per seed."""

    stages: dict[tuple[str, int], Stage]
    fused: dict[int, Ranker]
    offline: dict[str, dict[int, dict[str, float]]]
    id_only: dict[int, Ranker] = field(default_factory=dict)


def rankers_stage(runner: StageRunner, config: ExperimentConfig, logs: Logs, item_space: ItemSpace,
                  device: torch.device) -> Rankers:
    """Stage 3: the supervised ranker per seed (+ text-only / image-only ablations)."""
    needed = any(a in config.agents for a in RANKER_AGENTS) or bool(rl_runs(config))
    modalities = ["fused", "text", "image"] if config.ranker.ablations else ["fused"]
    if "greedy_id" in config.agents:  # the id-only baseline: item vectors replaced by learned id embeddings
        modalities.append("id")
    stages = {(m, s): runner.stage("ranker", ("recsim_mm",), logs=logs.stage.key, seed=s, modality=m,
                                   scorer=dataclasses.asdict(config.scorer),
                                   train=dataclasses.asdict(config.ranker), device=device.type)
              for m in (modalities if needed else []) for s in config.seeds}
    todo = sum(not st.done for st in stages.values())
    runner.progress.stage(3, "ranker", f"{len(stages)} models ({', '.join(modalities)} x {len(config.seeds)} "
                          f"seeds), {len(stages) - todo} cached")
    result = Rankers(stages, {}, {})
    bar = runner.progress.bar(todo, "ranker", "model")
    pending = [runner.submit(stage, partial(
        train_ranker_unit, item_space=item_space, train_log=logs.train, test_log=logs.test,
        scorer=scorer_config(config, item_space.d_text, item_space.d_image, modality),
        train=ranker_train_config(config, seed, str(device)), ndcg_k=config.ranker.ndcg_k),
        on_done=lambda info: bar.update(1)) for (modality, seed), stage in stages.items()]
    for ((modality, seed), stage), info in zip(stages.items(), runner.gather(pending), strict=True):
        result.offline.setdefault(modality, {})[seed] = info["metrics"]
        if modality in ("fused", "id"):
            (result.fused if modality == "fused" else result.id_only)[seed] = Ranker.load(
                stage.dir / "ranker.pt", item_space, device=device)
    bar.close()
    return result


@dataclass
class AgentRun:
    """One (agent, seed) training run of stage 4: its cache entry and `AgentConfig`."""

    stage: Stage
    config: AgentConfig


def agents_stage(runner: StageRunner, config: ExperimentConfig, env: EnvSetup, items: Stage,
                 item_space: ItemSpace, logs: Logs, rankers: Rankers,
                 device: torch.device) -> tuple[dict[tuple[str, int], AgentRun], Callable[[], None]]:
    """Stage 4: every RL run (``algo-start``) per seed, warm-started from the ranker and/or cold.

    Returns:
        the runs, and ``wait()``, which returns once every run is trained: the runs are
        submitted here and, under Ray, train while the tuning stage runs.
    """
    runs: dict[tuple[str, int], AgentRun] = {}
    curves = bool(config.eval.curve_users and config.eval.curve_every)
    for algo, start in rl_runs(config):
        section = getattr(config, RLLIB_AGENTS.get(algo, algo))
        # an RLlib run trains the same AgentConfig: its own settings keep its stage apart
        backend = {"rllib": dataclasses.asdict(config.rllib)} if algo in RLLIB_AGENTS else {}
        for seed in config.seeds:
            uses_ranker = start == "warm" or section.reward == "ranker"
            agent = agent_config(config, RLLIB_AGENTS.get(algo, algo), seed, str(device), env.id)
            runs[(f"{algo}-{start}", seed)] = AgentRun(runner.stage(
                "agent", ("recsim_mm", "envs", "agents"), items=items.key, env=env.key,
                agent=dataclasses.asdict(agent), start=start, reward=section.reward,
                ranker=rankers.stages[("fused", seed)].key if uses_ranker else None,
                logs=logs.stage.key if agent.bc_epochs else None,
                curve=[config.eval.curve_users, config.eval.curve_every, config.eval.curve_seed_offset + seed],
                device=device.type, **backend), agent)
    todo = {k: r for k, r in runs.items() if not r.stage.done}
    total = sum(r.config.total_steps for r in todo.values())
    runner.progress.stage(4, "RL agents", f"{len(runs)} runs ({', '.join(f'{a}-{s}' for a, s in rl_runs(config)) or 'none'} "
                          f"x {len(config.seeds)} seeds), {len(runs) - len(todo)} cached, {total:,} steps to train")
    bar = runner.progress.bar(total, "agents", "step")
    pending = []
    for (name, seed), run in runs.items():
        rllib = name.rsplit("-", 1)[0] in RLLIB_AGENTS

        def done(info: dict, name=name, seed=seed, run=run, rllib=rllib) -> None:
            if not runner.inline or rllib:  # a local SB3 run's bar counts every step (ProgressCallback)
                bar.set_description(f"agents: {name} seed {seed} done")
                bar.update(run.config.total_steps)
            if info["resumed_from"] is not None:
                tqdm.write(f"      {name} seed {seed}: resumed from its checkpoint at step "
                           f"{info['resumed_from']:,}", file=sys.stdout)

        if runner.inline and not run.stage.done:
            bar.set_description(f"agents: {name} seed {seed}")
        curve = CurveSpec(config.eval.curve_users, config.eval.curve_every,
                          config.eval.curve_seed_offset + seed) if curves else None
        ranker = rankers.fused[seed] if name.endswith("-warm") else None
        if rllib:  # no learning curve: RLlib's rollouts report episode returns to TensorBoard
            unit = partial(train_rllib_agent_unit, agent=run.config, rllib=rllib_config(config), env=env,
                           item_space=item_space, ranker=ranker, address=config.ray.address,
                           num_cpus=config.ray.num_cpus)
        else:
            unit = partial(
                train_agent_unit, agent=run.config, env=env, item_space=item_space, ranker=ranker,
                reward_ranker=rankers.fused[seed] if getattr(config, run.config.algo).reward == "ranker" else None,
                curve=curve, callbacks=(ProgressCallback(bar),) if runner.inline else (),
                bc_log=logs.train if run.config.bc_epochs else None)
        keep = ("num_timesteps", "env_steps_per_second") if rllib else ("num_timesteps",)
        pending.append(runner.submit(run.stage, unit, resumable=True, keep=keep, on_done=done,
                                     strategy=name, seed=seed))

    def wait() -> None:
        runner.gather(pending)
        bar.close()

    return runs, wait


def policy_spec(name: str, seed: int, logs: Logs, rankers: Rankers,
                agents: dict[tuple[str, int], AgentRun], tuned: dict[tuple[str, int], float]) -> PolicySpec:
    """The `PolicySpec` of strategy ``name`` for ``seed``."""
    if (name, seed) in agents:
        run = agents[(name, seed)]
        return PolicySpec(name, seed, agent=run.config, checkpoint=run.stage.dir / "checkpoint.pt")
    ranker = rankers.id_only.get(seed) if name == "greedy_id" else rankers.fused.get(seed)
    horizon = tuned.get((MODEL_PLANNING_NAME, seed), 0.0) if name == MODEL_PLANNING_NAME else tuned.get(("planning", 0), 0.0)
    return PolicySpec(name, seed, ranker=ranker, popularity=logs.popularity,
                      diversity=tuned.get(("mmr", seed), 0.0), horizon=horizon,
                      fairness=report.fair_weight(name) or 0.0,
                      end_model=logs.end_model if name == MODEL_PLANNING_NAME else None)


def evaluation_stage(runner: StageRunner, config: ExperimentConfig, env: EnvSetup, items: Stage,
                     item_space: ItemSpace, logs: Logs, rankers: Rankers,
                     agents: dict[tuple[str, int], AgentRun], tuned: dict[tuple[str, int], float],
                     device: torch.device) -> report.EnvResults:
    """Stage 5: every strategy on the same ``eval.num_users`` held-out users of each seed."""
    def source(name: str, seed: int) -> str:  # the upstream result a strategy depends on
        if (name, seed) in agents:
            return agents[(name, seed)].stage.key
        if name == "greedy" or report.fair_weight(name) is not None:
            return rankers.stages[("fused", seed)].key
        if name == "greedy_id":
            return rankers.stages[("id", seed)].key
        if name == "mmr":
            return f"{rankers.stages[('fused', seed)].key}:{tuned[('mmr', seed)]}"
        if name == "planning":
            return f"planning:{tuned[('planning', 0)]}"
        if name == MODEL_PLANNING_NAME:  # the training log (its session-end model) is in the key as ``logs``
            return f"{rankers.stages[('fused', seed)].key}:{name}:{tuned[(name, seed)]}"
        return logs.stage.key if name == "popular" else name

    strategies = strategies_of(config)
    stages = {(name, seed): runner.stage("eval", ("recsim_mm", "envs", "agents", "experiments/run.py"),
                                         source=source(name, seed), strategy=name, seed=seed, env=env.key,
                                         items=items.key, logs=logs.stage.key,
                                         eval=dataclasses.asdict(config.eval), device=device.type)
              for name in strategies for seed in config.seeds}
    todo = sum(not st.done for st in stages.values())
    runner.progress.stage(5, "evaluation", f"{len(strategies)} strategies x {len(config.seeds)} seeds on "
                          f"{config.eval.num_users} held-out users each, {len(stages) - todo} cached")
    results = report.EnvResults(env.id, strategies, list(config.seeds))
    bar = runner.progress.bar(todo, "evaluation", "run")
    pending = []
    for (name, seed), stage in stages.items():
        def done(info: dict, name=name, seed=seed) -> None:
            bar.set_description(f"evaluation: {name} seed {seed}")
            bar.update(1)

        curve = None
        if name == "greedy" and config.eval.curve_users and config.eval.curve_every:
            curve = (config.eval.curve_users, config.eval.curve_seed_offset + seed)
        unit = partial(folder_free, evaluate_unit, policy=policy_spec(name, seed, logs, rankers, agents, tuned),
                       env=env, item_space=item_space, num_users=config.eval.num_users,
                       seed=config.eval.seed_offset + seed, popularity=logs.popularity, curve=curve)
        pending.append(runner.submit(stage, unit, on_done=done, strategy=name, seed=seed))
    for ((name, seed), _), info in zip(stages.items(), runner.gather(pending), strict=True):
        results.metrics.setdefault(name, {})[seed] = info["summary"]
        if info.get("by_step"):
            results.by_step.setdefault(name, {})[seed] = info["by_step"]
        if info["curve_level"] is not None:
            results.curve_levels.setdefault(name, {})[seed] = info["curve_level"]
    bar.close()
    return results


# -- per environment, the report, and the experiment ------------------------------------------


def hidden_state_traces(config: ExperimentConfig, env: EnvSetup, item_space: ItemSpace, logs: Logs,
                        rankers: Rankers, agents: dict[tuple[str, int], AgentRun]) -> dict | None:
    """One held-out user's hidden state under the greedy ranker and each RL agent (seed
    ``seeds[0]``): the user with the longest sessions, the same user under every strategy."""
    rl = [name for name, _ in agents]
    traced = ["greedy", *dict.fromkeys(rl)] if rl else [n for n in strategies_of(config)
                                                        if n not in ("oracle", "mmr", MODEL_PLANNING_NAME,
                                                                     *REFERENCE_AGENTS)][:2]
    if not (config.eval.trace_users and traced):
        return None
    seed = config.seeds[0]
    traces = {name: trace_hidden_state(build_policy(policy_spec(name, seed, logs, rankers, agents, {}), env, item_space),
                                       env.options, item_space, config.eval.seed_offset + seed,
                                       config.eval.trace_users)
              for name in traced}
    user = int(np.argmax(sum(np.isfinite(t["time_left"]).sum(0) for t in traces.values())))
    steps = {name: int(np.isfinite(t["time_left"][:, user]).sum()) for name, t in traces.items()}
    return {name: {k: v[: steps[name], user] for k, v in t.items()} for name, t in traces.items()}


def ranker_explanations(config: ExperimentConfig, env: EnvSetup, item_space: ItemSpace,
                        rankers: Rankers) -> dict | None:
    """Why the greedy ranker (seed ``seeds[0]``) recommends what it does, checked against the
    hidden modality weights (`recsim_mm.explain.modality_check` on ``eval.num_users``
    held-out users); None without a ranker or for a user model with no modality weight."""
    seed = config.seeds[0]
    if seed not in rankers.fused or not config.eval.explain:
        return None
    venv = env.vector_env(config.eval.num_users, item_space, obs_mode="ids")
    if not hasattr(venv.simulator.users, "modality_weight"):
        return None
    ranker = rankers.fused[seed]
    try:
        check = modality_check(ranker.scorer, ranker.policy(objective=env.options["reward"], slate_size=env.slate_size),
                               venv, seed=config.eval.seed_offset + seed)
    except ValueError as exc:  # too few users with a history: say so in the report
        return {"skipped": str(exc)}
    return {"seed": seed, "correlation": check["correlation"], "users": check["users"],
            "explanation": check["explanation"], "recommended": check["recommended"],
            "text_share": check["text_share"], "modality_weight": check["modality_weight"]}


def run_environment(runner: StageRunner, config: ExperimentConfig, env: EnvSetup, items: Stage,
                    item_space: ItemSpace, device: torch.device) -> report.EnvResults:
    """Stages 2-5 on one environment, and what the report needs from them."""
    logs = logs_stage(runner, config, env, items, item_space, device)
    rankers = rankers_stage(runner, config, logs, item_space, device)
    agents, agents_trained = agents_stage(runner, config, env, items, item_space, logs, rankers, device)
    fit_session_end_model(config, logs, item_space)
    tuned = tuning_stage(runner, config, env, items, item_space, rankers, device, logs)
    agents_trained()
    results = evaluation_stage(runner, config, env, items, item_space, logs, rankers, agents, tuned, device)
    results.tuned = {f"{kind}" if kind == "planning" else f"{kind}-seed{seed}": value
                     for (kind, seed), value in tuned.items()}
    results.rl_strategies = list(dict.fromkeys(name for name, _ in agents))
    results.offline = rankers.offline
    for (name, seed), run in agents.items():
        if (run.stage.dir / "curve.json").is_file():
            rows = json.loads((run.stage.dir / "curve.json").read_text())
            results.curves.setdefault(name, {})[seed] = [(int(s), float(r)) for s, r, *_ in rows]
            critic = [(int(s), float(rest[0])) for s, _, *rest in rows if rest and rest[0] is not None]
            if critic:
                results.critic.setdefault(name, {})[seed] = critic
    results.traces = hidden_state_traces(config, env, item_space, logs, rankers, agents)
    results.explanations = ranker_explanations(config, env, item_space, rankers)
    for (modality, seed), stage in rankers.stages.items():
        results.artifacts[f"ranker-{modality}-seed{seed}"] = (stage.dir / "ranker.pt", stage.dir / "tensorboard")
    for (name, seed), run in agents.items():
        results.artifacts[f"{name}-seed{seed}"] = (run.stage.dir / "checkpoint.pt", run.stage.dir / "tensorboard")
    return results


def new_run_folder(results_dir: Path, name: str, started_at: str) -> Path:
    """``<results_dir>/<name>-<timestamp>[-N]/``, created; an earlier folder is never reused."""
    run_dir, suffix = results_dir / f"{name}-{started_at}", 1
    while True:
        try:
            run_dir.mkdir(parents=False)
            return run_dir
        except FileExistsError:
            suffix += 1
            run_dir = results_dir / f"{name}-{started_at}-{suffix}"


def main(argv: list[str] | None = None) -> Path:
    """Run the experiment the overrides describe; returns the results folder.

    Args:
        argv: ``key=value`` overrides (``preset=NAME`` picks the preset).

    Raises:
        ConfigError: bad input, raised before anything is trained (except a user
            model's parameters, checked once the item space exists, still before training).
    """
    started_at, t0 = time.strftime("%Y%m%d-%H%M%S"), time.perf_counter()
    if os.getcwd() not in sys.path:  # users' own modules (user_model=my_users:MyUser), as with -m
        sys.path.insert(0, os.getcwd())
    config = load_config(argv or [])
    threads = default_torch_threads() if config.threads is None else config.threads
    if threads > 0:
        torch.set_num_threads(threads)
    inputs = check_inputs(config)
    device = inputs["device"]
    # Ray is imported only here, if asked for
    executor = make_executor(config, gpu=device.type == "cuda", threads=threads)
    try:
        executor.check_writable({"results_dir": inputs["results_dir"], "cache_dir": inputs["cache_dir"]})
        runner = StageRunner(inputs["cache_dir"], Progress(config.progress), executor)
        where = executor.describe() if not runner.inline else "this process"
        runner.progress.stage(0, "configuration", f"preset resolved, inputs checked; device {device}, "
                              f"{torch.get_num_threads()} torch thread(s), cache {runner.cache_dir}; units run in "
                              f"{where}")
        return run_experiment(runner, config, inputs, started_at, t0)
    finally:
        executor.close()


def run_experiment(runner: StageRunner, config: ExperimentConfig, inputs: dict, started_at: str,
                   t0: float) -> Path:
    """Stages 1-6 of `main` once the inputs are checked and the executor is ready."""
    device = inputs["device"]
    items, item_space = item_space_stage(runner, config, inputs)
    if config.experiment != "recommendation":  # competing platforms or learning creators
        from experiments.ecosystem import run_ecosystem

        return run_ecosystem(runner, config, items, lambda: new_run_folder(inputs["results_dir"], config.name,
                                                                           started_at),
                             to_yaml(config), torch.get_num_threads(), t0)
    for env in inputs["envs"]:
        check_user_model(config, env, item_space)
    suite = len(inputs["envs"]) > 1
    results = {}
    for env in inputs["envs"]:
        if suite:
            print(f"== environment {env.id}", flush=True)
        results[env.id] = run_environment(runner, config, env, items, item_space, device)

    run_dir = new_run_folder(inputs["results_dir"], config.name, started_at)
    runner.progress.stage(6, "report", str(run_dir))
    topic_names = None
    if config.catalog.path is None and item_space.topics is not None and item_space.topics.shape[1] <= len(TOPICS):
        topic_names = [TOPICS[t].name for t in range(item_space.topics.shape[1])]
    sections = []
    for env in inputs["envs"]:
        folder = run_dir / env.id.split("/")[-1] if suite else run_dir
        folder.mkdir(exist_ok=True)
        report.write_report(folder, results[env.id], to_yaml(config), topic_names, items.dir / "item_space.pt")
        user_model = f"`{env.options['user_model']}`" + (f" {config.user_params}" if config.user_params else "")
        sections.append((env.id, user_model, folder))
    wall = time.perf_counter() - t0
    write_json(run_dir / "stages.json", runner.progress.records)
    setting = (f"Seeds {config.seeds}; catalog: {item_space.num_items} items ({config.catalog.path or 'synthetic'}); "
               f"{config.eval.num_users} held-out users per seed and environment (env seed {config.eval.seed_offset}"
               f" + seed, never used in training or tuning); reward `{config.env.reward}`; device {device}; "
               f"wall time {wall / 60:.1f} min.")
    report.write_summary(run_dir, config.name, setting, results, sections, config.ranker.ndcg_k)
    computed = sum(r["status"] != "cached" for r in runner.progress.records)
    print(f"done in {wall / 60:.1f} min ({computed} stage units computed, "
          f"{len(runner.progress.records) - computed} reused); results: {run_dir}", flush=True)
    print(report.suite_table(results), flush=True)
    return run_dir


def cli() -> int:
    """Command-line entry: ``-h``/``--help`` prints the usage, presets and keys; bad input
    prints one clear line (no traceback) and exits 2."""
    if any(arg in ("-h", "--help") for arg in sys.argv[1:]):
        print(help_text())
        return 0
    try:
        main(sys.argv[1:])
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: re-run the same command to resume (finished stages and agent "
              "checkpoints are kept)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    # Run the module as `experiments.run`, not `__main__`, so the stage units it ships to
    # Ray workers are found there by name (a `__main__` function would travel by value).
    from experiments.run import cli as package_cli

    sys.exit(package_cli())
