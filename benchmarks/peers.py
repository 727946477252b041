"""recsim-mm next to its peers, measured in one run: RecSim and RecoGym steps/s.

What a researcher would otherwise pick, under a random policy, each in its own fresh
subprocess (TensorFlow and torch never share a process or its thread pools), back
to back, in rounds that interleave peers and recsim-mm so that a change in the
machine's load hits all of them alike:

- ``recsim``: RecSim 0.2.4 ``interest_evolution`` (its gym environment, 20
  candidates, slate of 1, documents resampled each step), steps/s.
- ``recogym``: RecoGym 0.1.3 ``RecoEnv1`` (20 products), bandit steps/s (organic
  sessions it generates in between are part of its step).
- ``single``: ``gymnasium.make("recsim_mm/InterestEvolution-v0")``, steps/s.
- ``vec1024`` / ``vec16384``: ``gymnasium.make_vec(..., num_envs=N,
  vectorization_mode="vector_entry_point")`` with default options, user-steps/s.
- ``ids16384``: the same with ``obs_mode="ids", track_truth=False``, user-steps/s.
- ``lean16384`` (not in the default set): default options but ``copy=False`` (zero-copy
  observations) and ``info_keys=[]`` (no info, so no true affinities), user-steps/s:
  what the options documented in docs/environments.md buy.

``--baseline DIR`` also measures every recsim-mm figure with the code in ``DIR`` (a
checkout of an earlier commit, e.g. ``git worktree add /tmp/base <commit>``) in the
same rounds, right before the current code's: a before/after comparison in one run.

Every figure is printed with its ratio to RecSim's in the same round. The peers
need a separate environment (``make bench-peers`` builds ``.venv-peers``): RecSim
0.2.4 imports ``tf.estimator`` (gone from TensorFlow 2.16+: a shim supplies the one
class it touches) and RecoGym 0.1.3 imports ``scipy.rand`` (gone from SciPy: numpy's
is put in its place). A peer that cannot be imported is reported with the reason and
the rest still runs. Peers are never a dependency of recsim-mm or of its tests.

Usage::

    .venv-peers/bin/python benchmarks/peers.py [--seconds 5] [--rounds 2] [--threads 1]
        [--only recsim single ...] [--baseline /tmp/base]

recsim-mm runs with one torch thread by default: on a shared 2-core machine torch's
two intra-op threads stall behind other processes at every parallel op (measured:
make_vec 1,024 at 3.5k user-steps/s with 2 threads vs ~45k with 1, at load 6);
``--threads 2`` measures the two-thread figure on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
K = 20
MEASURES = ("recsim", "recogym", "single", "vec1024", "vec16384", "ids16384", "lean16384")
DEFAULT_MEASURES = MEASURES[:-1]
PEERS = ("recsim", "recogym")
UNITS = {"recsim": "steps/s", "recogym": "steps/s", "single": "steps/s"}


def _timed(step: Callable[[int], int], seconds: float) -> float:
    """Calls ``step(i)`` (returning the work units it did) for ``seconds``; units per second."""
    step(0)  # warm-up (first-call set-up, caches)
    done, i, start = 0, 1, time.perf_counter()
    while time.perf_counter() - start < seconds:
        done += step(i)
        i += 1
    return done / (time.perf_counter() - start)


def measure_recsim(seconds: float) -> float:
    """RecSim 0.2.4 interest_evolution under random actions: steps/s (resets included)."""
    import numpy as np
    import tensorflow as tf

    if not hasattr(tf, "estimator"):  # TF >= 2.16 dropped it; gin.tf only subclasses this hook
        tf.estimator = types.SimpleNamespace(SessionRunHook=object)
    from recsim.environments import interest_evolution

    env = interest_evolution.create_environment(
        {"num_candidates": K, "slate_size": 1, "resample_documents": True, "seed": 0}
    )
    env.reset()
    actions = np.random.default_rng(0).integers(K, size=4096)

    def step(i: int) -> int:
        _, _, done, _ = env.step([int(actions[i % 4096])])
        if done:
            env.reset()
        return 1

    return _timed(step, seconds)


def measure_recogym(seconds: float) -> float:
    """RecoGym 0.1.3 RecoEnv1 (20 products) under random actions: bandit steps/s."""
    import numpy as np
    import scipy

    if not hasattr(scipy, "rand"):  # removed from SciPy; recogym's agents import it
        scipy.rand = np.random.rand
    from recogym import env_1_args
    from recogym.envs.reco_env_v1 import RecoEnv1

    env = RecoEnv1()
    env.init_gym({**env_1_args, "num_products": K, "random_seed": 0})
    actions = np.random.default_rng(0).integers(K, size=4096)
    state = {"user": 0}

    def new_user() -> None:
        env.reset(state["user"])
        state["user"] += 1
        env.step(None)  # the first call returns the user's organic session

    new_user()

    def step(i: int) -> int:
        _, _, done, _ = env.step(int(actions[i % 4096]))
        if done:
            new_user()
        return 1

    return _timed(step, seconds)


def measure_single(seconds: float) -> float:
    """``gymnasium.make("recsim_mm/InterestEvolution-v0")``, random actions: steps/s."""
    import gymnasium
    import numpy as np

    import envs  # noqa: F401

    env = gymnasium.make("recsim_mm/InterestEvolution-v0")
    env.reset(seed=0)
    actions = np.random.default_rng(0).integers(K, size=4096).tolist()

    def step(i: int) -> int:
        for j in range(100):
            _, _, terminated, truncated, _ = env.step(actions[(100 * i + j) % 4096])
            if terminated or truncated:
                env.reset()
        return 100

    return _timed(step, seconds)


def measure_vector(seconds: float, num_envs: int, **options: object) -> float:
    """``gymnasium.make_vec(..., num_envs)`` with ``options``: user-steps/s (autoreset included)."""
    import gymnasium
    import numpy as np

    import envs  # noqa: F401

    env = gymnasium.make_vec(
        "recsim_mm/InterestEvolution-v0", num_envs=num_envs, vectorization_mode="vector_entry_point", **options
    )
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    actions = [rng.integers(K, size=num_envs) for _ in range(8)]

    def step(i: int) -> int:
        env.step(actions[i % 8])
        return num_envs

    return _timed(step, seconds)


def run_one(name: str, seconds: float) -> float:
    """Measure ``name`` (one of `MEASURES`) in this process."""
    if name == "recsim":
        return measure_recsim(seconds)
    if name == "recogym":
        return measure_recogym(seconds)
    if name == "single":
        return measure_single(seconds)
    if name == "vec1024":
        return measure_vector(seconds, 1024)
    if name == "vec16384":
        return measure_vector(seconds, 16384)
    if name == "ids16384":
        return measure_vector(seconds, 16384, obs_mode="ids", track_truth=False)
    if name == "lean16384":
        return measure_vector(seconds, 16384, copy=False, info_keys=[])
    raise ValueError(f"unknown measurement {name!r}; expected one of {MEASURES}")


def _child(name: str, seconds: float, threads: int | None, root: Path = ROOT) -> dict[str, object]:
    """Run one measurement in a fresh interpreter on the code in ``root``;
    ``{"rate": float}`` or ``{"error": str}``."""
    cmd = [sys.executable, str(root / "benchmarks" / "peers.py"), "--child", name, "--seconds", str(seconds)]
    if threads:
        cmd += ["--threads", str(threads)]
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "TF_CPP_MIN_LOG_LEVEL": "3", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
    return {"error": f"exit {proc.returncode}: {tail}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measuring time per figure")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (the median is reported)")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch threads for recsim-mm (default 1, see docs/design_notes.md; 0: torch's default)",
    )
    parser.add_argument("--only", nargs="+", choices=MEASURES, default=list(DEFAULT_MEASURES))
    parser.add_argument(
        "--baseline", type=Path, default=None,
        help="a checkout of earlier code: its recsim-mm figures are measured in the same rounds (before/after)",
    )
    parser.add_argument("--child", choices=MEASURES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        if args.threads and args.child not in ("recsim", "recogym"):  # peers never import torch here
            import torch

            torch.set_num_threads(args.threads)
        try:
            print(json.dumps({"rate": run_one(args.child, args.seconds)}))
        except ImportError as error:
            print(json.dumps({"error": f"cannot import ({error}); build the peers' environment: make bench-peers"}))
        return

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    threads = args.threads or "torch's default"
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {load} at start; "
          f"{args.seconds:g} s per figure, {args.rounds} interleaved round(s), recsim-mm torch threads: {threads}")
    if args.baseline is not None and not (args.baseline / "benchmarks" / "peers.py").is_file():
        raise SystemExit(f"--baseline {args.baseline}: no benchmarks/peers.py there (expected a recsim-mm checkout)")
    results: dict[str, list[float]] = {name: [] for name in args.only}
    before: dict[str, list[float]] = {name: [] for name in args.only}
    errors: dict[str, str] = {}
    ratios: dict[str, list[float]] = {name: [] for name in args.only}
    for round_ in range(args.rounds):
        rates: dict[str, float] = {}
        for name in args.only:
            if name in errors:
                continue
            if args.baseline is not None and name not in PEERS:
                old = _child(name, args.seconds, args.threads, args.baseline.resolve())
                if "rate" in old:
                    before[name].append(float(old["rate"]))  # type: ignore[arg-type]
                    print(f"  round {round_ + 1}: {name:9s} {before[name][-1]:14,.0f} (baseline)", flush=True)
                else:
                    print(f"  round {round_ + 1}: {name:9s} baseline unavailable: {old['error']}", flush=True)
            out = _child(name, args.seconds, args.threads)
            if "error" in out:
                errors[name] = str(out["error"])
                print(f"  round {round_ + 1}: {name:9s} unavailable: {errors[name]}", flush=True)
                continue
            rates[name] = float(out["rate"])  # type: ignore[arg-type]
            results[name].append(rates[name])
            unit = UNITS.get(name, "user-steps/s")
            print(f"  round {round_ + 1}: {name:9s} {rates[name]:14,.0f} {unit}", flush=True)
        for name, rate in rates.items():
            if "recsim" in rates:
                ratios[name].append(rate / rates["recsim"])
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\nmedian over rounds (load average {load} at the end; ratio: to RecSim in the same round)")
    labels = {
        "recsim": "RecSim 0.2.4 interest_evolution",
        "recogym": "RecoGym 0.1.3 RecoEnv1",
        "single": "recsim-mm gymnasium.make (single env)",
        "vec1024": "recsim-mm make_vec 1,024 (default options)",
        "vec16384": "recsim-mm make_vec 16,384 (default options)",
        "ids16384": "recsim-mm make_vec 16,384 (ids, track_truth=False)",
        "lean16384": "recsim-mm make_vec 16,384 (copy=False, info_keys=[])",
    }
    for name in args.only:
        if name in errors:
            print(f"  {labels[name]:52s} unavailable: {errors[name]}")
            continue
        rate = statistics.median(results[name])
        ratio = f"{statistics.median(ratios[name]):8.2f}x RecSim" if ratios[name] else ""
        if before[name]:
            old = statistics.median(before[name])
            ratio += f"   baseline {old:,.0f} ({rate / old:.2f}x)"
        print(f"  {labels[name]:52s} {rate:14,.0f} {UNITS.get(name, 'user-steps/s'):13s} {ratio}")


if __name__ == "__main__":
    main()
