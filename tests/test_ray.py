"""executor=ray and sweeps on a real Ray cluster of two nodes started on this machine.

One module-scoped `ray.cluster_utils.Cluster` (a head and a worker node, one CPU each,
no dashboard) serves every test that needs Ray; runs use the TINY sizes of
tests/test_experiments.py. What is shown, without mocks: the quick preset on the
cluster writes the same metrics as a local run; a worker killed during agent training
is replaced and the run resumes from the agent's checkpoint; two runs sharing a cache
at the same moment compute each stage once; a sweep over a user-model parameter writes
its table and plot and resumes; bad input stops before training; the local path never
imports Ray.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from experiments.config import ConfigError, RayConfig
from experiments.run import main
from tests.test_experiments import TINY, read_metrics, stage_status

ROOT = Path(__file__).resolve().parent.parent
#: The quick preset at TINY sizes, agents cut to one rollout (the cluster tests' budget);
#: one torch thread, as in each Ray task (``ray.cpus_per_task=1``), so local and Ray runs
#: compute the same numbers on any machine.
QUICK = ["preset=quick", *TINY, "ppo.total_steps=512", "dqn.total_steps=512", "eval.curve_every=256", "threads=1"]


@pytest.fixture(autouse=True)
def _restore_threads():
    previous = torch.get_num_threads()
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def cluster():
    """A head node and one worker node (one CPU each) on loopback; yields the head's address."""
    from ray.cluster_utils import Cluster

    # Workers at niceness 0, as executor=ray's own local instance starts them (Ray's default, 15,
    # slows them down beside other jobs on a shared machine).
    c = Cluster(initialize_head=True, connect=False,
                head_node_args={"num_cpus": 1, "include_dashboard": False,
                                "_system_config": {"worker_niceness": 0}})
    c.add_node(num_cpus=1)
    c.wait_for_nodes()
    yield c.address
    c.shutdown()


@pytest.fixture(scope="module")
def local_quick(tmp_path_factory):
    """The quick preset (TINY sizes) run locally, in its own cache."""
    return main([*QUICK, f"results_dir={tmp_path_factory.mktemp('local') / 'results'}"])


@pytest.fixture(scope="module")
def ray_quick(cluster, tmp_path_factory):
    """The same config with executor=ray on the cluster, in another cache."""
    return main([*QUICK, "executor=ray", f"ray.address={cluster}",
                 f"results_dir={tmp_path_factory.mktemp('ray') / 'results'}"])


def files_of(run_dir: Path) -> list[str]:
    """Relative paths of a results folder, TensorBoard event files by folder only (their
    names carry the host, time and pid)."""
    return sorted(str(p.relative_to(run_dir).parent / "events") if p.name.startswith("events.out.tfevents")
                  else str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file())


def values(run_dir: Path) -> dict[tuple[str, str, str], float]:
    return {(r["strategy"], r["seed"], r["metric"]): float(r["value"]) for r in read_metrics(run_dir)}


def assert_same_values(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9, nan_ok=True), key


# -- the local path ----------------------------------------------------------------------------


@pytest.mark.slow
def test_the_local_executor_never_imports_ray(tmp_path):
    script = ("import sys; from experiments.run import main; "
              f"main({[*TINY, 'seeds=[0]', 'agents=[random]', f'results_dir={tmp_path}']!r}); "
              "print('ray imported' if 'ray' in sys.modules else 'ray not imported')")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("ray not imported"), done.stdout[-500:]


# -- the cluster -------------------------------------------------------------------------------


@pytest.mark.slow
def test_quick_preset_on_a_ray_cluster_writes_the_same_results_as_a_local_run(local_quick, ray_quick):
    assert files_of(ray_quick) == files_of(local_quick)
    local, remote = values(local_quick), values(ray_quick)
    assert len(local) > 100
    assert_same_values(remote, local)
    for name in ("ranker_metrics.csv", "paired_comparison.csv", "learning_curves.csv"):
        with open(local_quick / name) as a, open(ray_quick / name) as b:
            rows_a, rows_b = list(csv.reader(a)), list(csv.reader(b))
        # labels, then the values (learning_curves.csv: return and the critic's explained
        # variance, which is empty before the first update)
        width = 2 if name == "learning_curves.csv" else 1
        assert [r[:-width] for r in rows_a] == [r[:-width] for r in rows_b], name
        for column in range(-width, 0):
            a_values = [float(r[column]) if r[column] else None for r in rows_a[1:]]
            b_values = [float(r[column]) if r[column] else None for r in rows_b[1:]]
            assert [v is None for v in a_values] == [v is None for v in b_values], name
            assert [v for v in a_values if v is not None] == pytest.approx(
                [v for v in b_values if v is not None], rel=1e-6), name
    # Stages 3-5 ran as Ray tasks in several worker processes; stages 1-2 in the driver.
    statuses = stage_status(ray_quick)
    remote_units = [s for s in statuses if s["stage"] in ("ranker", "agent", "tune", "eval")]
    assert remote_units and all(s["status"] == "computed" and "host" in s for s in remote_units)
    assert len({s["host"] for s in remote_units}) >= 2
    assert all("host" not in s for s in statuses if s["stage"] in ("items", "logs"))
    assert (ray_quick / "summary.md").is_file()


@pytest.mark.slow
def test_a_worker_killed_during_agent_training_is_retried_and_resumes_from_its_checkpoint(cluster, ray_quick):
    results = ray_quick.parent  # its cache holds the item space, logs and rankers of this config
    args = [*QUICK, "seeds=[0]", "agents=[greedy,ppo]", "ppo.total_steps=4096", "ppo.checkpoint_every=256",
            "executor=ray", f"ray.address={cluster}", f"results_dir={results}"]
    killed: dict = {}

    def kill_the_trainer() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not killed:
            for checkpoint in (results / ".cache").glob("agent-*/checkpoint.pt"):
                stage = checkpoint.parent
                lock = stage.parent / f".{stage.name}.lock"
                if (stage / "done.json").exists() or not lock.is_file():
                    continue
                pid = int(lock.read_text().split()[1])
                killed.update(pid=pid, stage=stage,
                              step=torch.load(checkpoint, weights_only=True)["num_timesteps"])
                os.kill(pid, signal.SIGKILL)  # the Ray worker process training the agent
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_the_trainer)
    killer.start()
    run_dir = main(args)
    killer.join()
    assert killed, "no agent checkpoint appeared to kill the worker at"
    assert killed["pid"] != os.getpid()
    with pytest.raises(ProcessLookupError):
        os.kill(killed["pid"], 0)  # that worker is gone
    agent = [s for s in stage_status(run_dir) if s["stage"] == "agent"]
    assert len(agent) == 1 and agent[0]["status"].startswith("resumed from step "), agent
    assert int(agent[0]["status"].rsplit(" ", 1)[1]) >= killed["step"] >= 256
    assert 4096 <= agent[0]["num_timesteps"] < 4096 + 512
    assert agent[0]["host"].split(":")[1] != str(killed["pid"])
    assert (killed["stage"] / "done.json").is_file()
    rows = read_metrics(run_dir)
    assert {r["strategy"] for r in rows} == {"greedy", "ppo-warm"} and {r["seed"] for r in rows} == {"0"}
    assert torch.load(run_dir / "checkpoints" / "ppo-warm-seed0.pt", weights_only=True)["num_timesteps"] >= 4096
    assert (run_dir / "summary.md").is_file()


@pytest.mark.slow
def test_two_runs_sharing_a_cache_at_once_compute_each_stage_once(cluster, local_quick, tmp_path):
    # Run A: executor=local in another process; run B: executor=ray here; same config, one cache.
    args = [*QUICK, "agents=[random,greedy,ppo]", f"results_dir={tmp_path / 'results'}"]
    other = subprocess.Popen([sys.executable, str(ROOT / "experiments" / "run.py"), *args], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        mine = main([*args, "executor=ray", f"ray.address={cluster}"])
        assert mine.name.startswith("quick-")
        out, err = other.communicate(timeout=600)
    finally:
        other.kill()
    assert other.returncode == 0, err[-2000:]
    assert "units run in this process" in out
    theirs = next(p for p in (tmp_path / "results").iterdir() if p.is_dir() and p != mine and not p.name.startswith("."))
    computed: dict[str, int] = {}
    for run in (mine, theirs):
        for s in stage_status(run):
            computed[s["key"]] = computed.get(s["key"], 0) + (s["status"] != "cached")
    assert computed and all(n == 1 for n in computed.values()), {k: n for k, n in computed.items() if n != 1}
    assert read_metrics(mine) == read_metrics(theirs)
    # Neither corrupted the other: the metrics are those of the separate local run.
    reference = {k: v for k, v in values(local_quick).items() if k[0] in ("random", "greedy", "ppo-warm")}
    assert_same_values(values(mine), reference)
    assert not list((tmp_path / "results" / ".cache").glob("*/*.tmp"))


@pytest.mark.slow
def test_a_sweep_over_a_user_model_parameter_writes_the_table_and_plot_and_resumes(cluster, tmp_path):
    from experiments import sweep

    args = [f"base={ROOT / 'experiments' / 'configs' / 'quick.yaml'}", *TINY[1:], "agents=[random,greedy]",
            "grid.user_params.patience=[2,5]", f"ray.address={cluster}", f"results_dir={tmp_path / 'results'}"]
    folder = sweep.main(args)
    with open(folder / "sweep.csv") as f:
        rows = list(csv.DictReader(f))
    assert {(r["user_params.patience"], r["strategy"]) for r in rows} == {
        (p, s) for p in ("2", "5") for s in ("random", "greedy")}
    assert all(r["n"] == "2" and r["metric"] == "episode_return" for r in rows)
    random_rows = [r for r in rows if r["strategy"] == "random"]
    assert all(float(r["ci_low"]) <= float(r["mean"]) <= float(r["ci_high"]) for r in rows)
    assert all(r["diff_vs_greedy"] not in ("", "nan") for r in random_rows)
    assert rows[0]["mean"] != rows[2]["mean"]  # the swept parameter changed the users
    assert (folder / "plots" / "user_params.patience.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| `2` | InterestEvolution-v0 | random |" in (folder / "sweep.md").read_text()
    trials = sorted((folder / "trials").iterdir())
    assert len(trials) == 2
    # The trials shared the cache: one item space for both.
    statuses = [s for t in trials for s in stage_status(sweep.complete_run(t)) if s["stage"] == "items"]
    assert sorted(s["status"] for s in statuses) == ["cached", "computed"]
    # An interrupted sweep: one trial's results lost. The re-run runs that trial only,
    # from the stage cache (nothing retrained), and keeps the other.
    kept = sweep.complete_run(trials[0])
    lost = sweep.complete_run(trials[1])
    import shutil

    shutil.rmtree(trials[1])
    again = sweep.main(args)
    assert sweep.complete_run(trials[0]) == kept and sweep.complete_run(trials[1]) is not None
    assert sweep.complete_run(trials[1]) != lost
    assert all(s["status"] == "cached" for s in stage_status(sweep.complete_run(trials[1])))
    with open(again / "sweep.csv") as f:
        assert list(csv.DictReader(f)) == rows


# -- bad input: before training --------------------------------------------------------------


@pytest.mark.slow
def test_rllib_ppo_trains_on_slates_with_an_env_runner_on_each_node_of_the_cluster(cluster, tmp_path):
    """The RLlib backend (agent rllib_ppo) on the cluster: one env runner per node, each
    stepping its own batched environment, here of slates (Plackett-Luce) in ``embeddings``
    mode; the run writes its checkpoint (tests/test_rllib.py shows it learning on a local
    instance, one item per step in ``ids`` mode)."""
    pytest.importorskip("ray.rllib")
    from agents.rllib_backend import RLlibConfig, train_rllib_agent
    from agents.train import AgentConfig
    from recsim_mm.item_space import ItemSpace

    nodes = {}

    def where(algo) -> None:
        import ray

        ids = algo.env_runner_group.foreach_env_runner(lambda runner: ray.get_runtime_context().get_node_id(),
                                                       local_env_runner=False)
        nodes["runners"] = ids

    agent = AgentConfig(total_steps=512, num_envs=16, n_steps=16, batch_size=256, device="cpu",
                        scorer={"hidden_dim": 16, "num_heads": 2})
    outcome = train_rllib_agent(agent, RLlibConfig(num_env_runners=2), "recsim_mm/SatiationSlate-v0",
                                {"num_candidates": 10, "obs_mode": "embeddings", "max_steps": 20},
                                ItemSpace.random(50, 8, 8), tmp_path, address=cluster, on_start=where)
    assert len(nodes["runners"]) == 2 and len(set(nodes["runners"])) == 2  # one env runner on each node
    assert outcome.num_timesteps >= 512 and outcome.checkpoint.is_file()  # one iteration: 2 x 16 x 16 steps


def test_an_unreachable_ray_address_stops_before_training(tmp_path):
    with pytest.raises(ConfigError, match=r"config key 'ray.address' = '127.0.0.1:9': no Ray cluster reachable"):
        main([*TINY, "executor=ray", "ray.address=127.0.0.1:9", f"results_dir={tmp_path}"])
    assert not (tmp_path / ".cache").exists() or not list((tmp_path / ".cache").iterdir())


def test_ray_requested_but_not_installed_is_one_error_line(tmp_path):
    # A Python where `import ray` fails, as it does where Ray is not installed.
    script = ("import sys; sys.modules['ray'] = None; sys.argv = ['run.py'] + sys.argv[1:]; "
              "from experiments.run import cli; sys.exit(cli())")
    done = subprocess.run([sys.executable, "-c", script, *TINY, "executor=ray", f"results_dir={tmp_path}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.startswith("error: config key 'executor' = 'ray': Ray is not installed"), done.stderr
    assert "Traceback" not in done.stderr and not list((tmp_path / ".cache").glob("items-*"))


@pytest.mark.parametrize("grid,message", [
    (["grid.ppo.learning_rat=[0.001,0.0003]"], r"unknown config key 'ppo.learning_rat'; did you mean 'ppo.learning_rate'\?"),
    (["grid.user_parms.patience=[2,5]"], r"unknown config key 'user_parms.patience'; did you mean 'user_params'\?"),
    (["grid.ppo.learning_rate=[]"], r"sweep key 'grid.ppo.learning_rate' = \[\]: expected a non-empty list"),
    (["grid.ppo.learning_rate=0.1"], r"sweep key 'grid.ppo.learning_rate' = 0.1: expected a non-empty list"),
    ([], r"sweep: no grid"),
    (["grid.ppo.gamma=[0.9,1.5]"], r"grid.ppo.gamma=1.5: config key 'ppo.gamma'"),
    (["grid.seeds=[[0],[1]]"], r"sweep key 'grid.seeds'"),
    (["grid.ppo.gamma=[0.9]", "sweep.metrc=ctr"], r"unknown sweep key 'sweep.metrc'"),
])
def test_bad_sweep_input_stops_before_any_trial(grid, message, tmp_path):
    from experiments import sweep

    with pytest.raises(ConfigError, match=message):
        sweep.main(["base=quick", *grid, f"results_dir={tmp_path}"])
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("override,message", [
    ("executor=rey", r"config key 'executor' = 'rey' is invalid; expected one of \['local', 'ray'\]"),
    ("ray.cpus_per_task=0", r"config key 'ray.cpus_per_task' = 0.0 is invalid"),
    ("ray.gpus_per_task=2", r"config key 'ray.gpus_per_task' = 2.0 is invalid"),
    ("ray.adress=auto", r"unknown config key 'ray.adress'; did you mean 'ray.address'\?"),
])
def test_bad_ray_settings_are_errors_naming_the_key(override, message):
    from experiments.config import load_config

    with pytest.raises(ConfigError, match=message):
        load_config([override])


@pytest.mark.slow
def test_a_folder_a_ray_worker_cannot_write_is_an_error_naming_the_key_and_node(cluster, tmp_path):
    from experiments.executor import RayExecutor

    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    executor = RayExecutor(RayConfig(address=cluster))
    try:
        executor.check_writable({"cache_dir": tmp_path / "fine"})  # every node can write this one
        with pytest.raises(ConfigError, match=r"config key 'results_dir': folder '.*a_file/results' is not "
                                              r"writable by a Ray worker on node .*storage every node sees"):
            executor.check_writable({"results_dir": blocker / "results"})
        with pytest.raises(ConfigError, match=r"config key 'ray.cpus_per_task' = 3.0: the cluster has 2 CPUs"):
            RayExecutor(RayConfig(address=cluster, cpus_per_task=3.0))
    finally:
        executor.close()


def test_stage_units_publish_done_json_last_and_start_from_an_empty_folder(tmp_path):
    from experiments.executor import run_unit

    stage = tmp_path / "cache" / "ranker-abc"
    stage.mkdir(parents=True)
    (stage / "left_over.pt").write_text("an interrupted attempt")

    def unit(folder: Path) -> dict:
        assert not (folder / "done.json").exists() and not (folder / "left_over.pt").exists()
        (folder / "out.txt").write_text("x")
        return {"value": 1}

    result = run_unit(stage, {"stage": "ranker"}, unit)
    assert result["status"] == "computed" and result["info"] == {"depends_on": {"stage": "ranker"}, "value": 1}
    assert sorted(p.name for p in stage.iterdir()) == ["done.json", "out.txt"]
    assert sorted(p.name for p in stage.parent.iterdir()) == [".ranker-abc.lock", "ranker-abc"]  # no temp folder
    # Done: a second call returns the published result without computing.
    assert run_unit(stage, {"stage": "ranker"}, lambda folder: 1 / 0)["status"] == "cached"
    # A unit that fails publishes nothing.
    failing = tmp_path / "cache" / "eval-def"
    with pytest.raises(ZeroDivisionError):
        run_unit(failing, {}, lambda folder: 1 / 0)
    assert not failing.exists() and not list(failing.parent.glob("*.tmp"))
    # A resumable unit (an agent run) keeps what the interrupted attempt left.
    agent = tmp_path / "cache" / "agent-123"
    agent.mkdir()
    (agent / "checkpoint.pt").write_text("step 256")
    info = run_unit(agent, {}, lambda folder: {"resumed_from": 256, "kept": (folder / "checkpoint.pt").read_text()},
                    resumable=True)
    assert info["status"] == "resumed from step 256" and info["info"]["kept"] == "step 256"
    assert json.loads((agent / "done.json").read_text())["resumed_from"] == 256
