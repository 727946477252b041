"""Throughput and memory of the simulator core and of the single-user environment.

Prints user-steps/s of the batched core (`recsim_mm.simulator.Simulator`) at
B in {1, 1024, 16384} users, K = 20 candidates, d = 64 (32 text + 32 image), in both
observation modes, with and without the hidden-truth affinities that the envs put in
``info``; steps/s of the single `RecEnv` (direct and through ``gymnasium.make``);
bytes of per-user state and whether one million users fit in 4 GB.

The core runs the InterestEvolution user (drift and satiation on, every mechanism
active) and resets ended users within the step, as the vector env does. The item
space is `ItemSpace.random` (600 items): throughput does not depend on what the
vectors encode, and the benchmark must not pay for encoding.

Usage::

    .venv/bin/python benchmarks/env_throughput.py [--threads 2] [--device cpu] [--seconds 3]
        [--batch-sizes 1 1024 16384] [--million]

Targets (design brief, 2 CPU cores): >= 1M user-steps/s (embeddings), >= 2M (ids),
>= 20k steps/s for the single env, 1M users in 4 GB.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from envs.rec_env import RecEnv  # noqa: E402
from recsim_mm import ItemSpace, resolve_device  # noqa: E402
from recsim_mm.simulator import Simulator  # noqa: E402
from recsim_mm.users import InterestEvolutionUser  # noqa: E402

K, D_TEXT, D_IMAGE, NUM_ITEMS, H = 20, 32, 32, 600, 10
FOUR_GB = 4 * 1024**3


def make_core(space: ItemSpace, users: int, obs_mode: str, truth: bool, device: torch.device) -> Simulator:
    model = InterestEvolutionUser(space, users, device)
    return Simulator(space, model, num_candidates=K, history_length=H, obs_mode=obs_mode, track_truth=truth)


def core_rate(space: ItemSpace, users: int, obs_mode: str, truth: bool, device: torch.device, seconds: float) -> float:
    """User-steps per second of step + autoreset of ended rows + observation."""
    sim = make_core(space, users, obs_mode, truth, device)
    sim.reset(seed=0)
    g = torch.Generator(device=device).manual_seed(1)
    actions = [torch.randint(K, (users, 1), generator=g, device=device) for _ in range(8)]

    def step(i: int) -> None:
        out = sim.step(actions[i % 8])
        ended = out.terminated | out.truncated
        sim.reset_rows(ended)
        sim.observation()

    for i in range(3):  # warm-up
        step(i)
    _sync(device)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(5):
            step(steps)
            steps += 1
        _sync(device)
    return users * steps / (time.perf_counter() - start)


def env_rate(space: ItemSpace, obs_mode: str, seconds: float, through_make: bool) -> float:
    """Steps per second of one `RecEnv` under a random policy, resets included."""
    if through_make:
        import gymnasium

        import envs  # noqa: F401

        env = gymnasium.make("recsim_mm/InterestEvolution-v0", item_space=space, obs_mode=obs_mode)
    else:
        env = RecEnv(user_model="interest_evolution", item_space=space, obs_mode=obs_mode)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    actions = rng.integers(K, size=4096).tolist()
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(200):
            _, _, terminated, truncated, _ = env.step(actions[steps % 4096])
            steps += 1
            if terminated or truncated:
                env.reset()
    return steps / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def memory_report(space: ItemSpace, device: torch.device, million: bool) -> None:
    print("\nmemory per simulated user (core + user model + candidate state, K=20, H=10, d=64)")
    for obs_mode in ("ids", "embeddings"):
        for truth in (False, True):
            sim = make_core(space, 1024, obs_mode, truth, device)
            per_user = sim.state_bytes() / 1024
            fits = "yes" if per_user * 1e6 <= FOUR_GB else "no"
            print(
                f"  {obs_mode:10s} truth={'on ' if truth else 'off'}: {per_user:7.0f} B/user -> "
                f"1M users {per_user * 1e6 / 1024**3:5.2f} GiB; fit in 4 GB: {fits}"
            )
    if million and device.type == "cpu":
        before = _rss_bytes()
        sim = make_core(space, 1_000_000, "ids", True, device)
        sim.reset(seed=0)
        sim.step(torch.zeros(1_000_000, 1, dtype=torch.long))
        grown = _rss_bytes() - before
        print(f"  measured: 1,000,000 users, ids mode, truth on, after reset + 1 step: process grew "
              f"{grown / 1024**3:.2f} GiB (peak RSS, includes step temporaries)")


def bandwidth_bound(space: ItemSpace, users: int, seconds: float) -> None:
    """The memory-bandwidth ceiling of an ``embeddings`` observation: one step of ``users``
    users writes ``(H + K) * d`` float32 vectors per user; this times gathering exactly
    those bytes from the item table (`torch.index_select`, what the core does) and a
    plain copy of them, and prints the user-steps/s each allows, before any simulation."""
    rows = (H + K) * users
    table = space.fused.cpu()
    index = torch.randint(table.shape[0], (rows,), generator=torch.Generator().manual_seed(0))
    out = torch.empty(rows, table.shape[1])
    copy_to = torch.empty_like(out)
    per_user = (H + K) * table.shape[1] * 4
    print(f"\nmemory-bandwidth ceiling, embeddings observation of {users:,} users "
          f"({per_user:,} bytes per user-step, {rows * table.shape[1] * 4 / 1e6:,.0f} MB per step)")
    for name, op in (("gather from the item table", lambda: torch.index_select(table, 0, index, out=out)),
                     ("plain copy of those bytes", lambda: copy_to.copy_(out))):
        op()
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            op()
            count += 1
        per_step = (time.perf_counter() - start) / count
        print(f"  {name:28s} {per_step * 1e3:7.1f} ms/step = {per_user * users / per_step / 1e9:5.1f} GB/s "
              f"-> at most {users / per_step:12,.0f} user-steps/s")


def _rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (the target is for 2 cores)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--seconds", type=float, default=3.0, help="measuring time per configuration")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 1024, 16384])
    parser.add_argument("--million", action="store_true", help="also allocate 1M users (ids mode) and report RSS")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    space = ItemSpace.random(NUM_ITEMS, d_text=D_TEXT, d_image=D_IMAGE, num_topics=10, seed=0, device=device)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"device={device}, torch threads={torch.get_num_threads()}, K={K}, d={space.dim}, H={H}, N={NUM_ITEMS}")
    print(f"load average {load} on {os.cpu_count()} CPUs (other processes on the cores slow every figure; "
          "with more busy threads than cores, torch's multi-threaded ops stall: compare --threads 1)")
    print("\nbatched core: user-steps/s (step + autoreset + observation)")
    print(f"  {'B':>6} {'obs_mode':10s} {'truth off':>12} {'truth on':>12}")
    for users in args.batch_sizes:
        for obs_mode in ("embeddings", "ids"):
            off = core_rate(space, users, obs_mode, False, device, args.seconds)
            on = core_rate(space, users, obs_mode, True, device, args.seconds)
            print(f"  {users:>6} {obs_mode:10s} {off:12,.0f} {on:12,.0f}", flush=True)
    if device.type == "cpu":
        bandwidth_bound(space, max(args.batch_sizes), args.seconds)
        print("\nsingle RecEnv (B=1, info with true affinities), steps/s")
        for obs_mode in ("embeddings", "ids"):
            direct = env_rate(space, obs_mode, args.seconds, through_make=False)
            made = env_rate(space, obs_mode, args.seconds, through_make=True)
            print(f"  {obs_mode:10s} RecEnv: {direct:8,.0f}   gymnasium.make (checker + order wrappers): {made:8,.0f}")
    memory_report(space, device, args.million)


if __name__ == "__main__":
    main()
