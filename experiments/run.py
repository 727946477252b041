"""One command from nothing to a comparison of the supervised ranker, PPO, DQN and baselines.

    python experiments/run.py [preset=quick|default|full|path.yaml] [key=value ...]

The pipeline reads top to bottom, one numbered stage after another:

0. configuration and input checks: every user input is checked here, before anything
   is trained (unknown keys, types, agents, user model, encoders, catalog file,
   device, writable folders);
1. catalog -> embeddings -> item space;
2. logged interactions (a logging policy on simulated users);
3. the supervised ranker per seed (+ text-only / image-only ablations);
4. the RL agents per seed (PPO / DQN, warm-started from the ranker and/or cold);
5. evaluation of every strategy on the same held-out users of each seed;
6. the report: ``<results_dir>/<name>-<timestamp>/`` (summary.md, metrics.csv, plots,
   tensorboard/, checkpoints/, config.yaml).

Stages 1-5 are cached in ``<cache_dir>/<stage>-<hash>/`` (default
``results/.cache``), the hash covering exactly the config the stage depends on, its
upstream stages and the source code it runs. A re-run reuses every finished stage
(a finished config trains nothing); an agent interrupted mid-training resumes from
its last checkpoint. A stage folder is complete when its ``done.json`` exists.
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
from functools import cache
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
from stable_baselines3.common.callbacks import BaseCallback  # noqa: E402
from tqdm import tqdm  # noqa: E402

import envs  # noqa: E402,F401  (registers the recsim_mm/ ids)
from agents.baselines import PopularRecommender, make_baseline  # noqa: E402
from agents.evaluation import evaluate_policy  # noqa: E402
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
    RL_AGENTS,
    ConfigError,
    ExperimentConfig,
    load_config,
    to_yaml,
)
from recsim_mm.catalog import Catalog, CatalogError, load_catalog  # noqa: E402
from recsim_mm.device import resolve_device  # noqa: E402
from recsim_mm.encoders import ImageEncoder, TextEncoder  # noqa: E402
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
from recsim_mm.synthetic import TOPICS, generate_catalog  # noqa: E402
from recsim_mm.users import resolve_user_model  # noqa: E402

CACHE_FORMAT = "recsim_mm.ExperimentStage/1"
NUM_STAGES = 6


# -- the stage cache -------------------------------------------------------------------------


@cache
def code_version(*packages: str) -> str:
    """Hash of the Python sources of ``packages`` (folders under the repository root, or
    files): a stage's key includes the code it runs, so an edit never reuses stale output."""
    h = hashlib.sha256()
    for package in packages:
        root = ROOT / package
        files = sorted(root.rglob("*.py")) if root.is_dir() else [root]
        for file in files:
            h.update(str(file.relative_to(ROOT)).encode() + b"\0" + file.read_bytes())
    return h.hexdigest()[:12]


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

    def start(self) -> Path:
        """Create the stage folder (kept as is if an interrupted run left it) and return it."""
        self.dir.mkdir(parents=True, exist_ok=True)
        return self.dir

    def finish(self, **info: Any) -> None:
        """Mark the stage complete (atomically), recording what it depends on."""
        write_json(self.dir / "done.json", {"depends_on": self.parts, **info})

    def info(self) -> dict:
        """What `finish` recorded: ``depends_on`` and the stage's own results."""
        return json.loads((self.dir / "done.json").read_text())


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temporary file + rename): a crash never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True, default=str))
    tmp.replace(path)


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

    def record(self, stage: Stage, status: str, seconds: float = 0.0, **extra: Any) -> None:
        """Note one stage unit (``computed``, ``cached`` or ``resumed from step N``) for stages.json."""
        self.records.append({"stage": stage.name, "key": stage.key, "dir": str(stage.dir),
                             "status": status, "seconds": round(seconds, 2), **extra})


class ProgressCallback(BaseCallback):
    """Advances a progress bar by the environment steps an SB3 model takes."""

    def __init__(self, bar: tqdm):
        super().__init__()
        self.bar = bar
        self._last = 0

    def _on_training_start(self) -> None:
        self.bar.update(self.num_timesteps)  # a resumed run starts past zero
        self._last = self.num_timesteps

    def _on_step(self) -> bool:
        self.bar.update(self.num_timesteps - self._last)
        self._last = self.num_timesteps
        return True


class LearningCurveCallback(BaseCallback):
    """Every ``every`` environment steps: the deterministic policy's episode return on
    held-out curve users (``curve.csv`` and TensorBoard ``eval/episode_return``).

    Deterministic prediction draws no random numbers and the curve users have their
    own simulator, so the curve never changes the training run it measures.
    """

    def __init__(self, env: RecVectorEnv, seed: int, every: int, item_table: torch.Tensor, path: Path):
        super().__init__()
        self.env, self.seed, self.every, self.item_table, self.path = env, seed, every, item_table, path
        self.rows: list[tuple[int, float]] = []
        self._next = 0

    def _on_training_start(self) -> None:
        if self.path.exists():  # a resumed run: keep the points up to its checkpoint
            rows = json.loads(self.path.read_text())
            self.rows = [(int(s), float(r)) for s, r in rows if s <= self.num_timesteps]
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
        result = evaluate_policy(self.model, self.env, seed=self.seed, item_table=self.item_table)
        value = result.summary()["episode_return"]
        self.rows.append((int(self.num_timesteps), float(value)))
        self.logger.record("eval/episode_return", value)
        write_json(self.path, self.rows)


# -- stage 0 helpers: inputs checked before anything is trained -------------------------------


def check_writable(folder: Path, key: str) -> None:
    """Create ``folder`` if needed and prove it is writable by writing a file in it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise ConfigError(f"config key {key!r}: folder {str(folder)!r} is not writable ({exc})") from None


def environment_options(config: ExperimentConfig, device: torch.device) -> dict[str, Any]:
    """The env's options: its registered ones (user model, slate size), then the config's."""
    try:
        spec = gymnasium.spec(config.env.id)
    except gymnasium.error.Error as exc:
        ids = sorted(i for i in gymnasium.registry if i.startswith("recsim_mm/"))
        raise ConfigError(f"config key 'env.id': unknown environment {config.env.id!r} ({exc}); "
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
    if config.user_model is not None:
        options["user_model"] = config.user_model
    if config.user_params:
        options["user_params"] = dict(config.user_params)
    return options


def agent_config(config: ExperimentConfig, algo: str, seed: int, device: torch.device) -> AgentConfig:
    """`agents.train.AgentConfig` of one RL run from the experiment's ``ppo``/``dqn`` section."""
    section = dataclasses.asdict(getattr(config, algo))
    for name in ("warm_start", "cold_start", "reward"):
        section.pop(name)
    return AgentConfig(algo=algo, seed=seed, device=str(device),
                       scorer=dataclasses.asdict(config.scorer), **section)


def rl_runs(config: ExperimentConfig) -> list[tuple[str, str]]:
    """``(algo, start)`` pairs to train, e.g. ``[("ppo", "warm"), ("dqn", "warm")]``."""
    runs = []
    for algo in RL_AGENTS:
        if algo in config.agents:
            section = getattr(config, algo)
            runs += [(algo, start) for start, on in (("warm", section.warm_start),
                                                       ("cold", section.cold_start)) if on]
    return runs


def check_held_out_seeds(config: ExperimentConfig) -> None:
    """Held-out (test) and learning-curve users must come from env seeds no training used.

    Training users: the logs (``logging.seed``, ``+1``) and each agent's environment,
    seeded ``s`` and re-seeded ``s + steps`` after a resume (``s`` in ``seeds``).
    """
    longest = max([config.ppo.total_steps, config.dqn.total_steps])
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


def check_inputs(config: ExperimentConfig) -> dict[str, Any]:
    """Stage 0: everything that can be checked before any item is encoded or model trained.

    Returns:
        ``{"device", "env_options", "text_encoder", "image_encoder", "catalog" (a
        loaded user catalog or None), "cache_dir", "results_dir"}``.

    Raises:
        ConfigError: naming the config key and the offending value.
    """
    try:
        device = resolve_device(config.device)
    except ValueError as exc:
        raise ConfigError(f"config key 'device': {exc}") from None
    env_options = environment_options(config, device)
    rl = [a for a in config.agents if a in RL_AGENTS]
    if rl and env_options.get("slate_size", 1) > 1:
        raise ConfigError(f"config key 'agents': {rl} recommend one item per step, but env.id="
                          f"{config.env.id!r} asks for slates; use a non-Slate id or drop them")
    try:
        resolve_user_model(env_options["user_model"])
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"config key 'user_model': {exc}") from None
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
    try:  # the library's own checks of the scorer, ranker and agent settings
        ScorerConfig(d_text=config.encoders.d_text, d_image=config.encoders.d_image,
                     **dataclasses.asdict(config.scorer))
    except ValueError as exc:
        raise ConfigError(f"config section 'scorer': {exc}") from None
    try:
        ranker_train_config(config, seed=0, device=device, folder=None)
    except ValueError as exc:
        raise ConfigError(f"config section 'ranker': {exc}") from None
    for algo in RL_AGENTS:
        try:
            agent_config(config, algo, 0, device)
        except ValueError as exc:
            raise ConfigError(f"config section {algo!r}: {exc}") from None
    check_held_out_seeds(config)
    results_dir = Path(config.results_dir)
    cache_dir = Path(config.cache_dir) if config.cache_dir is not None else results_dir / ".cache"
    check_writable(results_dir, "results_dir")
    check_writable(cache_dir, "cache_dir" if config.cache_dir is not None else "results_dir")
    return {"device": device, "env_options": env_options, "text_encoder": text_encoder,
            "image_encoder": image_encoder, "catalog": catalog, "cache_dir": cache_dir,
            "results_dir": results_dir}


def ranker_train_config(config: ExperimentConfig, seed: int, device: torch.device,
                        folder: Path | None) -> TrainConfig:
    """`recsim_mm.ranker.TrainConfig` of one ranker from the ``ranker`` section."""
    r = config.ranker
    return TrainConfig(
        lr=r.lr, weight_decay=r.weight_decay, batch_size=r.batch_size, max_epochs=r.max_epochs,
        patience=r.patience, val_fraction=r.val_fraction, engagement_weight=r.engagement_weight,
        seed=seed, device=str(device),
        checkpoint_path=None if folder is None else str(folder / "ranker.pt"),
        tensorboard_dir=None if folder is None else str(folder / "tensorboard"),
    )


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


def trace_hidden_state(policy, env_options: dict, item_space: ItemSpace, seed: int, users: int) -> dict:
    """Step ``users`` held-out users through one episode and record what moves inside them.

    Returns ``{key: (steps, users) float64}`` with NaN after a user's episode ended:
    ``time_left`` (minutes), ``affinity`` (true affinity of the recommended item), each
    changing quantity of the user model's ``hidden_state()`` (as ``hidden:<name>``)
    and, when the user model has them, ``satiation`` (norm of the satiation memory)
    and ``interest_topics`` ``(steps, users, topics)`` (cosine of the text interest
    with each topic's centre). Hidden state is read for analysis only; policies never
    see it.
    """
    env = RecVectorEnv(users, **{**env_options, "item_space": item_space})
    obs, info = env.reset(seed=seed)
    model = env.simulator.users
    centres = None
    if item_space.topics is not None and hasattr(model, "interest"):
        weight = item_space.topics / item_space.topics.sum(0).clamp_min(1e-12)
        centres = torch.nn.functional.normalize(weight.T @ item_space.text, dim=-1).to(env.simulator.device)
    rows = {"time_left": [], "affinity": [], "satiation": [], "interest_topics": []}
    alive = np.ones(users, dtype=bool)
    for _ in range(env.simulator.max_steps + 1):
        if hasattr(policy, "observe"):
            policy.observe(info)
        actions, _ = policy.predict(obs, deterministic=True)
        first = np.asarray(actions).reshape(users, -1)[:, 0]
        nan = np.where(alive, 1.0, np.nan)
        rows["time_left"].append(obs["time_left"][:, 0] * nan)
        rows["affinity"].append(info["candidate_affinity"][np.arange(users), first] * nan)
        for key, value in model.hidden_state().items():
            rows.setdefault(f"hidden:{key}", []).append(value.cpu().numpy().astype(np.float64) * nan)
        if hasattr(model, "satiation"):
            rows["satiation"].append(model.satiation.norm(dim=1).cpu().numpy() * nan)
        if centres is not None:
            text = torch.nn.functional.normalize(model.interest[:, : item_space.d_text], dim=-1)
            rows["interest_topics"].append((text @ centres.T).cpu().numpy() * nan[:, None])
        obs, _, terminated, truncated, info = env.step(actions)
        alive &= ~(terminated | truncated)
        if not alive.any():
            break
    traces = {k: np.stack(v) for k, v in rows.items() if v}
    # A hidden quantity that never changes (e.g. a modality weight) is not a trajectory.
    return {k: v for k, v in traces.items()
            if not k.startswith("hidden:") or np.nanmax(v, 0).round(6).tolist() != np.nanmin(v, 0).round(6).tolist()}


# -- the experiment ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> Path:
    """Run the experiment the overrides describe; returns the results folder.

    Args:
        argv: ``key=value`` overrides (``preset=NAME`` picks the preset).

    Raises:
        ConfigError: bad input, raised before anything is trained (except a user
            model's parameters, checked once the item space exists, still before training).
    """
    started_at = time.strftime("%Y%m%d-%H%M%S")
    t0 = time.perf_counter()

    # ---- 0. configuration and input checks ---------------------------------------------------
    if os.getcwd() not in sys.path:  # users' own modules (user_model=my_users:MyUser), as with -m
        sys.path.insert(0, os.getcwd())
    config = load_config(argv or [])
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    inputs = check_inputs(config)
    device, env_options, cache = inputs["device"], inputs["env_options"], inputs["cache_dir"]
    progress = Progress(config.progress)
    progress.stage(0, "configuration", f"preset resolved, inputs checked; device {device}, "
                   f"{torch.get_num_threads()} torch thread(s), cache {cache}")
    seeds = config.seeds
    rl = rl_runs(config)
    needs_ranker = "greedy" in config.agents or bool(rl)
    strategies = [a for a in config.agents if a in BASELINE_AGENTS or a == "greedy"]
    if rl and "greedy" not in strategies:
        strategies.append("greedy")  # the reference every RL agent is compared against
    strategies += [f"{algo}-{start}" for algo, start in rl]

    # ---- 1. catalog -> embeddings -> item space -----------------------------------------------
    catalog: Catalog | None = inputs["catalog"]
    catalog_id = (catalog.content_hash() if catalog is not None else
                  {k: v for k, v in dataclasses.asdict(config.catalog).items() if k not in ("path", "missing_image")})
    items = Stage(cache, "items", ("recsim_mm",), catalog=catalog_id,
                  encoders=dataclasses.asdict(config.encoders), device=device.type)
    progress.stage(1, "item space", "cached" if items.done else "encoding the catalog (text + image)")
    start = time.perf_counter()
    if not items.done:
        if catalog is None:
            catalog = generate_catalog(config.catalog.num_items, config.catalog.num_topics,
                                       seed=config.catalog.seed, image_size=config.catalog.image_size)
        item_space = build_item_space(
            catalog, inputs["text_encoder"], inputs["image_encoder"], config.encoders.d_text,
            config.encoders.d_image, config.encoders.alignment, device=device,
        ).to("cpu")
        item_space.save(items.start() / "item_space.pt")
        items.finish(num_items=item_space.num_items, fingerprint=item_space.fingerprint())
        progress.record(items, "computed", time.perf_counter() - start)
    else:
        progress.record(items, "cached")
    item_space = ItemSpace.load(items.dir / "item_space.pt")
    table = item_space.fused
    env_key = {k: v for k, v in env_options.items() if k != "device"}
    try:  # the user model's parameters can only be checked against a real item space
        RecVectorEnv(1, **{**env_options, "item_space": item_space, "device": "cpu"})
    except (ValueError, TypeError) as exc:
        key = "user_params" if config.user_params else "user_model"
        raise ConfigError(f"config key {key!r}: {exc}") from None

    # ---- 2. logged interactions ---------------------------------------------------------------
    logs = Stage(cache, "logs", ("recsim_mm", "envs"), items=items.key, env=env_key,
                 logging=dataclasses.asdict(config.logging), device=device.type)
    progress.stage(2, "logged interactions", "cached" if logs.done else
                   f"{config.logging.policy} policy on {config.logging.num_users} + "
                   f"{config.logging.test_users} simulated users")
    start = time.perf_counter()
    if not logs.done:
        options = RecEnvOptions.parse({**env_options, "item_space": item_space, "obs_mode": "ids"})
        simulator = build_simulator(options, num_users=min(1024, config.logging.num_users),
                                    default_device=str(device))
        policy = logging_policy(config, item_space)
        steps = config.env.max_steps
        collect(simulator, policy, config.logging.num_users, steps, seed=config.logging.seed).save(
            logs.start() / "train.parquet")
        collect(simulator, policy, config.logging.test_users, steps, seed=config.logging.seed + 1).save(
            logs.dir / "test.parquet")
        logs.finish()
        progress.record(logs, "computed", time.perf_counter() - start)
    else:
        progress.record(logs, "cached")
    train_log = InteractionLog.load(logs.dir / "train.parquet", item_space)
    test_log = InteractionLog.load(logs.dir / "test.parquet", item_space)
    popularity = PopularRecommender.from_log(train_log, table).popularity  # clicks per item
    print(f"      {len(train_log)} training records, {len(test_log)} held-out records, "
          f"click rate {train_log.clicks.mean():.3f}", flush=True)

    # ---- 3. the supervised ranker (+ text-only / image-only ablations) ------------------------
    modalities = ["fused", "text", "image"] if config.ranker.ablations else ["fused"]
    ranker_stages = {(m, s): Stage(cache, "ranker", ("recsim_mm",), logs=logs.key, seed=s, modality=m,
                                   scorer=dataclasses.asdict(config.scorer),
                                   train=dataclasses.asdict(config.ranker), device=device.type)
                     for m in (modalities if needs_ranker else []) for s in seeds}
    todo = [k for k, st in ranker_stages.items() if not st.done]
    progress.stage(3, "ranker", f"{len(ranker_stages)} models ({', '.join(modalities)} x {len(seeds)} seeds), "
                   f"{len(ranker_stages) - len(todo)} cached")
    rankers: dict[int, Ranker] = {}
    offline: dict[str, dict[int, dict[str, float]]] = {}
    bar = progress.bar(len(todo), "ranker", "model")
    for (modality, seed), stage in ranker_stages.items():
        start = time.perf_counter()
        if not stage.done:
            scorer = ScorerConfig(item_space.d_text, item_space.d_image, modality=modality,
                                  **dataclasses.asdict(config.scorer))
            result = train_ranker(train_log, item_space, scorer,
                                  ranker_train_config(config, seed, device, stage.start()))
            metrics = evaluate_ranker(result.ranker, test_log, k=config.ranker.ndcg_k)
            stage.finish(metrics=metrics, history=result.history, best_epoch=result.best_epoch)
            progress.record(stage, "computed", time.perf_counter() - start)
            bar.update(1)
        else:
            progress.record(stage, "cached")
        offline.setdefault(modality, {})[seed] = stage.info()["metrics"]
        if modality == "fused":
            rankers[seed] = Ranker.load(stage.dir / "ranker.pt", item_space, device=device)
    bar.close()

    # ---- 4. RL agents: PPO / DQN, warm-started from the ranker and/or cold ---------------------
    curve_env = None
    if config.eval.curve_users and config.eval.curve_every:
        curve_env = RecVectorEnv(config.eval.curve_users, **{**env_options, "item_space": item_space})
    agent_stages = {}
    for algo, start_from in rl:
        section = getattr(config, algo)
        for seed in seeds:
            uses_ranker = start_from == "warm" or section.reward == "ranker"
            agent_stages[(algo, start_from, seed)] = Stage(
                cache, "agent", ("recsim_mm", "envs", "agents"), items=items.key, env=env_key,
                agent=dataclasses.asdict(agent_config(config, algo, seed, device)), start=start_from,
                reward=section.reward, ranker=ranker_stages[("fused", seed)].key if uses_ranker else None,
                curve=[config.eval.curve_users, config.eval.curve_every, config.eval.curve_seed_offset + seed],
                device=device.type)
    todo = [k for k, st in agent_stages.items() if not st.done]
    total = sum(getattr(config, algo).total_steps for algo, _, _ in todo)
    progress.stage(4, "RL agents", f"{len(agent_stages)} runs ({', '.join(f'{a}-{s}' for a, s in rl) or 'none'} "
                   f"x {len(seeds)} seeds), {len(agent_stages) - len(todo)} cached, {total:,} steps to train")
    models: dict[tuple[str, int], Any] = {}
    bar = progress.bar(total, "agents", "step")
    for (algo, start_from, seed), stage in agent_stages.items():
        name = f"{algo}-{start_from}"
        agent = agent_config(config, algo, seed, device)
        section = getattr(config, algo)
        start = time.perf_counter()
        if not stage.done:
            bar.set_description(f"agents: {name} seed {seed}")
            options = dict(env_options)
            if section.reward == "ranker":  # learn from the ranker's predicted engagement
                options.pop("reward")
                options["reward_fn"] = rankers[seed].reward_model()
            callbacks = [ProgressCallback(bar)]
            if curve_env is not None:
                callbacks.append(LearningCurveCallback(
                    curve_env, config.eval.curve_seed_offset + seed, config.eval.curve_every, table,
                    stage.start() / "curve.json"))
            outcome = train_agent(agent, config.env.id, options, item_space, stage.start(),
                                  ranker=rankers[seed] if start_from == "warm" else None, callbacks=callbacks)
            stage.finish(num_timesteps=outcome.num_timesteps, resumed_from=outcome.resumed_from)
            status = "computed" if outcome.resumed_from is None else f"resumed from step {outcome.resumed_from}"
            if outcome.resumed_from is not None:
                tqdm.write(f"      {name} seed {seed}: resumed from its checkpoint at step "
                           f"{outcome.resumed_from:,}", file=sys.stdout)
            progress.record(stage, status, time.perf_counter() - start, strategy=name, seed=seed,
                            num_timesteps=outcome.num_timesteps)
            model = outcome.model
        else:  # a finished run: rebuild the policy from its checkpoint, train nothing
            venv = make_env(agent, config.env.id, {**env_options, "item_space": item_space})
            model = build_agent(agent, venv, item_space)
            payload = load_agent_checkpoint(stage.dir / "checkpoint.pt", agent, item_space)
            model.policy.load_state_dict(payload["policy"])
            progress.record(stage, "cached", strategy=name, seed=seed)
        models[(name, seed)] = model
    bar.close()

    # ---- 5. evaluation on held-out users: every strategy, the same users per seed --------------
    def strategy_source(name: str, seed: int) -> str:
        if name in ("random", "oracle", "linucb"):
            return name
        if name == "popular":
            return logs.key
        if name == "greedy":
            return ranker_stages[("fused", seed)].key
        algo, start_from = name.split("-")
        return agent_stages[(algo, start_from, seed)].key

    def policy_of(name: str, seed: int):
        if (name, seed) in models:
            return models[(name, seed)]
        slate = env_options.get("slate_size", 1)
        return make_baseline(name, table, popularity=popularity, ranker=rankers.get(seed),
                             slate_size=slate if slate > 1 else None, seed=seed)

    eval_stages = {(name, seed): Stage(cache, "eval", ("recsim_mm", "envs", "agents", "experiments/run.py"),
                                       source=strategy_source(name, seed), strategy=name, seed=seed,
                                       env=env_key, items=items.key, logs=logs.key,
                                       eval=dataclasses.asdict(config.eval), device=device.type)
                   for name in strategies for seed in seeds}
    todo = [k for k, st in eval_stages.items() if not st.done]
    progress.stage(5, "evaluation", f"{len(strategies)} strategies x {len(seeds)} seeds on "
                   f"{config.eval.num_users} held-out users each, {len(eval_stages) - len(todo)} cached")
    eval_env = RecVectorEnv(config.eval.num_users, **{**env_options, "item_space": item_space})
    metrics: dict[str, dict[int, dict[str, float]]] = {}
    curve_levels: dict[str, dict[int, float]] = {}
    bar = progress.bar(len(todo), "evaluation", "run")
    for (name, seed), stage in eval_stages.items():
        start = time.perf_counter()
        if not stage.done:
            bar.set_description(f"evaluation: {name} seed {seed}")
            policy = policy_of(name, seed)
            summary = evaluate_policy(policy, eval_env, seed=config.eval.seed_offset + seed,
                                      item_table=table, popularity=popularity).summary()
            curve_level = None
            if curve_env is not None and name == "greedy":  # the level drawn into the curves
                curve_level = evaluate_policy(policy, curve_env, seed=config.eval.curve_seed_offset + seed,
                                              item_table=table).summary()["episode_return"]
            stage.start()
            stage.finish(summary=summary, curve_level=curve_level)
            progress.record(stage, "computed", time.perf_counter() - start, strategy=name, seed=seed)
            bar.update(1)
        else:
            progress.record(stage, "cached", strategy=name, seed=seed)
        info = stage.info()
        metrics.setdefault(name, {})[seed] = info["summary"]
        if info["curve_level"] is not None:
            curve_levels.setdefault(name, {})[seed] = info["curve_level"]
    bar.close()

    # ---- 6. the report -------------------------------------------------------------------------
    results_dir = inputs["results_dir"]
    run_dir = results_dir / f"{config.name}-{started_at}"
    suffix = 1
    while True:  # never reuse a folder: an earlier result is never overwritten
        try:
            run_dir.mkdir(parents=False)
            break
        except FileExistsError:
            suffix += 1
            run_dir = results_dir / f"{config.name}-{started_at}-{suffix}"
    progress.stage(6, "report", str(run_dir))
    (run_dir / "config.yaml").write_text(to_yaml(config))
    metric_names = [m for m in report.METRICS if any(m in v for per in metrics.values() for v in per.values())]
    report.write_rows(run_dir / "metrics.csv", ["strategy", "seed", "metric", "value"],
                      [(name, seed, m, float(metrics[name][seed][m]))
                       for name in strategies for seed in seeds for m in metric_names])
    report.write_rows(run_dir / "ranker_metrics.csv", ["ranker", "seed", "metric", "value"],
                      [(mod, seed, m, float(v)) for mod, per in offline.items()
                       for seed, values in per.items() for m, v in values.items()])
    comparisons = {}
    if "greedy" in metrics:
        greedy = [metrics["greedy"][s]["episode_return"] for s in seeds]
        for algo, start_from in rl:
            name = f"{algo}-{start_from}"
            comparisons[name] = report.paired_difference(
                [metrics[name][s]["episode_return"] for s in seeds], greedy)
        report.write_rows(run_dir / "paired_comparison.csv",
                          ["strategy", "baseline", "metric", "diff", "ci_low", "ci_high", "p_value", "wins", "n"],
                          [(n, "greedy", "episode_return", c["diff"], c["ci_low"], c["ci_high"], c["p_value"],
                            c["wins"], c["n"]) for n, c in comparisons.items()])

    plots = run_dir / "plots"
    plots.mkdir()
    report.plot_metric_bars(metrics, plots / "metrics.png")
    curves = {}
    for (algo, start_from, seed), stage in agent_stages.items():
        if (stage.dir / "curve.json").is_file():
            rows = json.loads((stage.dir / "curve.json").read_text())
            curves.setdefault(f"{algo}-{start_from}", {})[seed] = [(int(s), float(r)) for s, r in rows]
    if curves:
        level = report.mean_ci(list(curve_levels.get("greedy", {}).values()))[0]
        report.plot_learning_curves(curves, level, plots / "learning_curves.png")
        report.write_rows(run_dir / "learning_curves.csv", ["strategy", "seed", "step", "episode_return"],
                          [(n, s, step, float(r)) for n, per in curves.items() for s, rows in per.items()
                           for step, r in rows])
    traced = ["greedy"] + [f"{a}-{s}" for a, s in rl] if rl else [n for n in strategies if n != "oracle"][:2]
    if config.eval.trace_users and traced:
        seed = seeds[0]
        traces = {name: trace_hidden_state(policy_of(name, seed), env_options, item_space,
                                           config.eval.seed_offset + seed, config.eval.trace_users)
                  for name in traced}
        # The user with the longest sessions shows the most; the same user under every strategy.
        lengths = sum(np.isfinite(t["time_left"]).sum(0) for t in traces.values())
        user = int(np.argmax(lengths))
        first_user = {}
        for name, t in traces.items():
            steps = int(np.isfinite(t["time_left"][:, user]).sum())
            first_user[name] = {k: v[:steps, user] for k, v in t.items()}
        if config.catalog.path is None and item_space.topics is not None and item_space.topics.shape[1] <= len(TOPICS):
            topic_names = [TOPICS[t].name for t in range(item_space.topics.shape[1])]
        else:
            topic_names = None
        report.plot_interest_trajectory(first_user, topic_names, plots / "interest_trajectory.png")

    tensorboard = run_dir / "tensorboard"
    checkpoints = run_dir / "checkpoints"
    checkpoints.mkdir()
    for (modality, seed), stage in ranker_stages.items():
        shutil.copy2(stage.dir / "ranker.pt", checkpoints / f"ranker-{modality}-seed{seed}.pt")
        if (stage.dir / "tensorboard").is_dir():
            shutil.copytree(stage.dir / "tensorboard", tensorboard / f"ranker-{modality}-seed{seed}")
    for (algo, start_from, seed), stage in agent_stages.items():
        shutil.copy2(stage.dir / "checkpoint.pt", checkpoints / f"{algo}-{start_from}-seed{seed}.pt")
        shutil.copytree(stage.dir / "tensorboard", tensorboard / f"{algo}-{start_from}-seed{seed}")

    wall = time.perf_counter() - t0
    write_json(run_dir / "stages.json", progress.records)
    user_model = f"`{env_options['user_model']}`" + (f" {config.user_params}" if config.user_params else "")
    setting = (f"User model: {user_model}; catalog: {item_space.num_items} items "
               f"({config.catalog.path or 'synthetic'}); seeds {seeds}; {config.eval.num_users} held-out "
               f"users per seed (env seed {config.eval.seed_offset} + seed, never used in training); "
               f"device {device}; wall time {wall / 60:.1f} min.")
    summary = report.summary_markdown(f"{config.name}: supervised ranker vs RL on `{config.env.id}`", setting,
                                      metrics, metric_names, comparisons, offline, config.ranker.ndcg_k,
                                      config.env.id, run_dir)
    (run_dir / "summary.md").write_text(summary)
    computed = sum(r["status"] != "cached" for r in progress.records)
    print(f"done in {wall / 60:.1f} min ({computed} stage units computed, "
          f"{len(progress.records) - computed} reused); results: {run_dir}", flush=True)
    print(report.comparison_table(metrics, ["episode_return", "ctr", "session_length"]), flush=True)
    return run_dir


def cli() -> int:
    """Command-line entry: bad input prints one clear line (no traceback) and exits 2."""
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
    sys.exit(cli())
