"""Where stage units run: in this process (`LocalExecutor`), in worker processes on this
machine (`ProcessExecutor`) or as Ray tasks (`RayExecutor`).

`experiments.run.StageRunner` hands every unit that is not cached to an executor as
``run_unit(stage_dir, depends_on, unit, resumable, threads)``; `run_unit` is the same
code in both cases, so a unit computes the same thing wherever it runs:

1. take the stage's lock (``<cache_dir>/.<stage>-<key>.lock``, `recsim_mm.files.file_lock`),
   so two processes that need one stage (two runs sharing a cache, two sweep trials)
   compute it once: the second waits, then finds ``done.json`` and reuses it;
2. if ``done.json`` appeared meanwhile, return it (``cached``);
3. otherwise compute: a stage that cannot resume in a fresh temporary folder beside
   the stage folder (``.<stage>-<key>.<host>-<pid>.tmp``), an agent run in the stage
   folder itself, where its ``checkpoint.pt`` (written atomically every
   ``checkpoint_every`` steps) lets a later attempt resume;
4. publish: write ``done.json`` last (atomically), then rename the temporary folder to
   the stage folder (replacing what an interrupted attempt left). A worker killed
   before that leaves no ``done.json`` in the stage folder, so no later run mistakes
   it for a finished stage; where the lock is not effective (see `recsim_mm.files`),
   the rename publishes one whole result and the other process reuses it.

`LocalExecutor` calls `run_unit` at once, in order (``jobs=1``: the whole run in one
process). `ProcessExecutor` (``executor=local`` with ``jobs`` > 1, the default on a
machine with two or more cores) hands it to a pool of worker processes on this machine,
so independent units (the seeds of a stage, the evaluations) use every core; the
standard library's `concurrent.futures`, Ray is never imported. `RayExecutor` submits
it as a ``ray.remote`` task with the unit's CPU/GPU request and ``max_retries`` (a
worker that dies is replaced and the unit re-run: an agent resumes from its
checkpoint), and `RayExecutor.wait` collects the results as tasks finish. Ray is
imported only by `RayExecutor`.

A unit computes the same thing under every executor (it seeds itself, reads its
inputs from its arguments and writes only its stage folder), so ``metrics.csv`` is
byte-identical whichever ran it (tests/test_experiments.py, tests/test_ray.py).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from recsim_mm.files import file_lock, write_json

ROOT = Path(__file__).resolve().parent.parent


def lock_path(stage_dir: Path) -> Path:
    """The lock file of a stage folder: ``<parent>/.<folder name>.lock``."""
    return stage_dir.parent / f".{stage_dir.name}.lock"


def run_unit(stage_dir: Path, depends_on: dict, unit: Callable[[Path], dict], resumable: bool = False,
             threads: int | None = None) -> dict:
    """Compute one stage unit under its lock and publish it (see the module docstring).

    Args:
        stage_dir: the stage folder ``<cache_dir>/<stage>-<key>/``.
        depends_on: what the stage's key hashes (recorded in ``done.json``).
        unit: ``folder -> info`` (a JSON-able dict), the unit's computation.
        resumable: the unit resumes from what an interrupted attempt left (agent runs,
            from ``checkpoint.pt``): it computes in the stage folder itself. Any other
            unit computes in a fresh temporary folder beside it, renamed to the stage
            folder once ``done.json`` is written in it.
        threads: torch CPU threads for the unit; None leaves the process's setting.

    Returns:
        ``{"info": done.json's content, "status": "computed" | "resumed from step N" |
        "cached", "seconds": wall time of the unit, "host": "<hostname>:<pid>"}``.
    """
    started = time.perf_counter()
    host = f"{socket.gethostname()}:{os.getpid()}"
    done = stage_dir / "done.json"

    def cached() -> dict:
        return {"info": json.loads(done.read_text()), "status": "cached", "seconds": 0.0, "host": host}

    with file_lock(lock_path(stage_dir)):
        if done.is_file():  # another process finished it while this one waited
            return cached()
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        if resumable:
            stage_dir.mkdir(parents=True, exist_ok=True)
            info = unit(stage_dir)
            write_json(done, {"depends_on": depends_on, **info})
        else:
            work = stage_dir.with_name(f".{stage_dir.name}.{socket.gethostname()}-{os.getpid()}.tmp")
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            try:
                info = unit(work)
                write_json(work / "done.json", {"depends_on": depends_on, **info})
                if stage_dir.exists() and not done.is_file():  # what an interrupted attempt left
                    shutil.rmtree(stage_dir)
                try:
                    os.rename(work, stage_dir)
                except OSError:  # published meanwhile by a process the lock did not stop (see files.py)
                    if not done.is_file():
                        raise
                    return cached()
            finally:
                shutil.rmtree(work, ignore_errors=True)
    resumed = info.get("resumed_from")
    return {"info": json.loads(done.read_text()),
            "status": "computed" if resumed is None else f"resumed from step {resumed}",
            "seconds": round(time.perf_counter() - started, 2), "host": host}


class Future:
    """A unit's result that is already known (what `LocalExecutor.submit` returns)."""

    def __init__(self, value: dict):
        self.value = value


class LocalExecutor:
    """Runs every unit in this process, at submission, in order (``executor=local jobs=1``)."""

    #: Units run in the driver, so they may report progress to its progress bars.
    inline = True

    def submit(self, stage_dir: Path, depends_on: dict, unit: Callable[[Path], dict],
               resumable: bool = False) -> Future:
        """Run the unit now (`run_unit`); its result is ready on return."""
        return Future(run_unit(stage_dir, depends_on, unit, resumable))

    def wait(self, futures: Sequence[Future], on_result: Callable[[int, dict], None]) -> None:
        """Call ``on_result(i, result)`` for every future, in order (all are done)."""
        for i, future in enumerate(futures):
            on_result(i, future.value)

    def check_writable(self, folders: dict[str, Path]) -> None:
        """Nothing to add: the driver's own check (`experiments.run.check_writable`) covers it."""

    def close(self) -> None:
        """Nothing to release."""


class ProcessExecutor:
    """Runs units in ``jobs`` worker processes on this machine (``executor=local``, ``jobs`` > 1).

    A `concurrent.futures.ProcessPoolExecutor` with the ``spawn`` start method (a fork
    of a process that has started torch's thread pools or CUDA can hang); each worker
    imports the package once and then runs unit after unit, each with ``threads``
    torch threads. Units travel by pickle (they are ``functools.partial`` of module
    functions with plain inputs, as for Ray); the workers inherit ``sys.path``, so a
    user model named by module path imports there too.

    User models registered in this process at run time
    (`recsim_mm.users.register_user_model`) are registered in every worker too
    (``user_models``), so a unit finds them by name as it would here.

    Args:
        jobs: worker processes, >= 2 (one per core at one torch thread each is the
            default, `default_jobs`).
        threads: torch CPU threads per unit; None leaves torch's default.
        user_models: ``{name: class}`` to register in each worker before its first
            unit (`forwardable_user_models`); classes travel by reference (module and
            name), so each must be importable there.
    """

    inline = False

    def __init__(self, jobs: int, threads: int | None = None, user_models: dict[str, type] | None = None):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        if jobs < 2:
            raise ValueError(f"ProcessExecutor needs jobs >= 2 (got {jobs}); use LocalExecutor for one")
        self.jobs, self.threads = jobs, threads
        self.pool = ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_register_user_models, initargs=(dict(user_models or {}),))

    def describe(self) -> str:
        """One line: how many worker processes, with how many torch threads each."""
        threads = "torch's default" if self.threads is None else self.threads
        return f"{self.jobs} worker processes on this machine, {threads} torch thread(s) each"

    def submit(self, stage_dir: Path, depends_on: dict, unit: Callable[[Path], dict], resumable: bool = False):
        """Queue `run_unit` on the pool; returns its `concurrent.futures.Future`."""
        return self.pool.submit(run_unit, stage_dir, depends_on, unit, resumable, self.threads)

    def wait(self, futures: Sequence[Any], on_result: Callable[[int, dict], None]) -> None:
        """Call ``on_result(i, result)`` as each unit finishes (any order).

        Raises:
            the unit's own exception (its worker's traceback chained as the cause), or
            RuntimeError when a worker process died (killed, out of memory): re-running
            the same command resumes, finished units are cached. Units not yet started
            are cancelled; running ones finish and are published (their work is kept).
        """
        from concurrent.futures import as_completed
        from concurrent.futures.process import BrokenProcessPool

        index = {future: i for i, future in enumerate(futures)}
        try:
            for future in as_completed(futures):
                on_result(index[future], future.result())
        except BrokenProcessPool as exc:
            raise RuntimeError(f"a worker process of executor=local (jobs={self.jobs}) died while running a "
                               f"stage unit ({exc}); re-run the same command to resume (finished units are "
                               "cached, agents resume from their checkpoints)") from None
        except BaseException:
            for future in futures:
                future.cancel()
            raise

    def check_writable(self, folders: dict[str, Path]) -> None:
        """Nothing to add: the workers share this machine's file system with the driver."""

    def close(self) -> None:
        """Cancel queued units, let running ones finish, stop the workers."""
        self.pool.shutdown(wait=True, cancel_futures=True)


def _register_user_models(user_models: dict[str, type]) -> None:
    """In a new worker: register the driver's run-time user models (`ProcessExecutor`)."""
    from recsim_mm.users import register_user_model

    for name, cls in user_models.items():
        register_user_model(name, cls)  # a name already registered to this class (the built-ins) is a no-op


def forwardable_user_models() -> tuple[dict[str, type], dict[str, type]]:
    """The user models registered in this process, split by whether a spawned worker can
    import their class: ``(forwardable, not_forwardable)``, each ``{name: class}``.

    A class in a module imports by name; a class in ``__main__`` does when ``__main__``
    is a script file (the worker runs it again as its ``__main__``, under
    ``if __name__ == "__main__"`` guards); one typed into a notebook, a REPL or
    ``python -c`` has no file to import from.
    """
    import sys

    from recsim_mm.users import registered_user_models, resolve_user_model

    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    forwardable, stuck = {}, {}
    for name in registered_user_models():
        cls = resolve_user_model(name)
        (stuck if cls.__module__ == "__main__" and main_file is None else forwardable)[name] = cls
    return forwardable, stuck


#: Most worker processes `default_jobs` picks: each holds its own copy of torch and the
#: unit's data (~1-2 GB for the default preset's units), and past about 8 the stages'
#: own width limits the speed-up (docs/scaling.md). ``jobs=N`` goes beyond it.
MAX_DEFAULT_JOBS = 8


def default_jobs(threads: int, cuda: bool = False, cores: int | None = None) -> int:
    """Worker processes ``executor=local`` uses unless ``jobs`` is set.

    On CPU, as many as the cores hold at ``threads`` torch threads each (2 on a 2-core
    machine at the default one thread; ``threads=0``, torch's own default of every
    core, gives 1), at most `MAX_DEFAULT_JOBS`. With CUDA 1: units share one GPU one
    at a time unless ``jobs=N`` says otherwise.

    Args:
        threads: torch threads per unit (0: torch's default, all cores).
        cuda: whether the units run on CUDA.
        cores: CPU cores to fill; None = ``os.cpu_count()``.
    """
    if cuda or threads <= 0:
        return 1
    return max(1, min((cores or os.cpu_count() or 1) // threads, MAX_DEFAULT_JOBS))


class RayExecutor:
    """Runs units as Ray tasks on a local Ray instance or an existing cluster.

    Args:
        config: the experiment's ``ray`` section (`experiments.config.RayConfig`).
        gpu: whether units run on CUDA (``device`` resolved to a GPU): each then asks
            for ``ray.gpus_per_task`` of a GPU.

    Raises:
        experiments.config.ConfigError: Ray is not installed, or ``ray.address`` cannot
            be reached (raised here, before anything is trained).
    """

    inline = False

    def __init__(self, config: Any, gpu: bool = False):
        from experiments.config import ConfigError

        try:
            import ray
        except ImportError as exc:
            raise ConfigError(
                f"config key 'executor' = 'ray': Ray is not installed in this Python ({exc}); install it "
                "with `.venv/bin/python -m pip install -e '.[ray]'` (or `ray[tune]>=2.9`), or use "
                "executor=local") from None
        self.ray, self.config = ray, config
        self.owns = not ray.is_initialized()  # shut down on close only what this run started
        if self.owns:
            address = config.address
            if address not in (None, "auto"):
                check_reachable(address)
            # Workers import this checkout (the shared file system holds it at the same path).
            path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
            try:
                # "local" starts a fresh instance even where a cluster already runs on this machine
                # (address=None would join it).
                ray.init(address=address or "local", num_cpus=config.num_cpus if address is None else None,
                         include_dashboard=False, configure_logging=False, log_to_driver=True,
                         runtime_env={"env_vars": {"PYTHONPATH": path}},
                         # Ray runs workers at niceness 15 by default: beside other jobs they would
                         # run slower than executor=local's process. An existing cluster keeps its own.
                         **({"_system_config": {"worker_niceness": 0}} if address is None else {}))
            except (ConnectionError, TimeoutError, RuntimeError, ValueError) as exc:
                raise ConfigError(f"config key 'ray.address' = {address!r}: cannot connect to the Ray "
                                  f"cluster ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
                                  ) from None
        self.threads = max(1, int(config.cpus_per_task))
        options: dict[str, Any] = {"num_cpus": config.cpus_per_task, "max_retries": config.max_retries,
                                   "retry_exceptions": False}
        if gpu:
            options["num_gpus"] = config.gpus_per_task
        self.task = ray.remote(run_unit).options(**options)
        resources = ray.cluster_resources()
        if resources.get("CPU", 0) < config.cpus_per_task:
            self.close()
            raise ConfigError(f"config key 'ray.cpus_per_task' = {config.cpus_per_task}: the cluster has "
                              f"{resources.get('CPU', 0):g} CPUs")
        if gpu and resources.get("GPU", 0) < config.gpus_per_task:
            self.close()
            raise ConfigError(f"config key 'device': units run on CUDA but the Ray cluster has "
                              f"{resources.get('GPU', 0):g} GPUs; use device=cpu or add GPU nodes")

    def describe(self) -> str:
        """One line: where the tasks run (nodes, CPUs, GPUs)."""
        nodes = [n for n in self.ray.nodes() if n.get("Alive")]
        res = self.ray.cluster_resources()
        return (f"Ray: {len(nodes)} node(s), {res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs; "
                f"{self.config.cpus_per_task:g} CPU(s) per task")

    def submit(self, stage_dir: Path, depends_on: dict, unit: Callable[[Path], dict], resumable: bool = False):
        """Submit `run_unit` as a Ray task; returns its ``ObjectRef``."""
        return self.task.remote(stage_dir, depends_on, unit, resumable, self.threads)

    def wait(self, futures: Sequence[Any], on_result: Callable[[int, dict], None]) -> None:
        """Call ``on_result(i, result)`` as each task finishes (any order).

        Raises:
            the unit's own exception (a failing unit is not retried), or Ray's error for
            a worker that died more than ``ray.max_retries`` times; the other tasks are
            cancelled.
        """
        index = {ref: i for i, ref in enumerate(futures)}
        pending = list(futures)
        try:
            while pending:
                ready, pending = self.ray.wait(pending, num_returns=1)
                for ref in ready:
                    on_result(index[ref], self.ray.get(ref))
        except self.ray.exceptions.RayTaskError as exc:
            self._cancel(pending)
            raise exc.as_instanceof_cause() from None
        except BaseException:
            self._cancel(pending)
            raise

    def _cancel(self, refs: Sequence[Any]) -> None:
        for ref in refs:
            self.ray.cancel(ref, force=True)

    def check_writable(self, folders: dict[str, Path]) -> None:
        """Prove on every alive node that a worker can write each folder.

        Args:
            folders: ``{config key: folder}``, e.g. ``{"results_dir": ..., "cache_dir": ...}``.

        Raises:
            experiments.config.ConfigError: naming the key, the folder and the node whose
                worker could not write it (a path that is not on storage every node sees).
        """
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from experiments.config import ConfigError

        probe = self.ray.remote(num_cpus=0, max_retries=0)(_probe_writable)
        nodes = [n for n in self.ray.nodes() if n.get("Alive")]
        refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote({k: str(v) for k, v in folders.items()}) for n in nodes]
        for node, problems in zip(nodes, self.ray.get(refs), strict=True):
            for key, (folder, error) in problems.items():
                raise ConfigError(f"config key {key!r}: folder {folder!r} is not writable by a Ray worker on "
                                  f"node {node.get('NodeManagerAddress')} ({error}); results and cache must be "
                                  "on storage every node sees (docs/scaling.md)")

    def close(self) -> None:
        """Shut Ray down if this executor started it (a connection made before is kept)."""
        if self.owns and self.ray.is_initialized():
            self.ray.shutdown()


def _probe_writable(folders: dict[str, str]) -> dict[str, tuple[str, str]]:
    """On a worker: ``{key: (folder, error)}`` for each folder it cannot create a file in."""
    problems = {}
    for key, folder in folders.items():
        probe = Path(folder) / f".write-test-{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            problems[key] = (folder, f"{type(exc).__name__}: {exc}")
    return problems


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast (before Ray's own long retries) when ``address`` has no listener.

    Raises:
        experiments.config.ConfigError: naming ``ray.address``, the address and the error.
    """
    from experiments.config import ConfigError

    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"config key 'ray.address' = {address!r}: expected 'host:port', 'ray://host:port' "
                          "or 'auto'")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise ConfigError(f"config key 'ray.address' = {address!r}: no Ray cluster reachable there "
                          f"({type(exc).__name__}: {exc}); start one with `ray start --head` or fix the "
                          "address") from None


def make_executor(config: Any, gpu: bool = False,
                  threads: int = 1) -> LocalExecutor | ProcessExecutor | RayExecutor:
    """The executor ``config.executor`` names (``ray`` imports Ray and connects).

    ``executor=local`` is `LocalExecutor` with one job (``jobs=1``, or `default_jobs`
    gives 1) and `ProcessExecutor` with more.

    Args:
        config: the `experiments.config.ExperimentConfig`.
        gpu: whether units run on CUDA.
        threads: the run's torch threads per unit (0: torch's default).
    """
    if config.executor == "ray":
        return RayExecutor(config.ray, gpu=gpu)
    jobs = config.jobs if config.jobs is not None else default_jobs(threads, cuda=gpu)
    if jobs == 1:
        return LocalExecutor()
    forwardable, stuck = forwardable_user_models()
    if config.user_model in stuck:
        from experiments.config import ConfigError

        raise ConfigError(f"config key 'user_model' = {config.user_model!r}: that class was registered in this "
                          "session and defined where a worker process cannot import it (a notebook, a REPL, "
                          f"`python -c`), and the units run in {jobs} worker processes (key 'jobs'); use jobs=1, "
                          "or move the class into a module and give 'module:ClassName'")
    return ProcessExecutor(jobs, threads if threads > 0 else None, user_models=forwardable)
