"""RLlib PPO vs SB3 PPO on the shared scorer: environment steps per second, in one run.

Both train the same policy (`agents.rllib_module.ScorerRLModule` / the SB3
`ScorerActorCriticPolicy`) with the same `AgentConfig` (defaults: 64 users per
environment, 32 steps per rollout, 4 epochs of 512-step minibatches, the default scorer)
on the native batched environment of `benchmarks/agent_throughput.py` (InterestEvolution,
``ids`` observations, the default item space). The rate counts whole training
iterations, sampling and learning, after a warm-up iteration; RLlib's build and Ray's
start are not counted (they are printed).

    python benchmarks/rllib_throughput.py [--steps 16384] [--runners 1 2] [--threads 1] [--num-cpus N]

RLlib's learner runs in this process (``num_learners=0``) with ``--threads`` torch
threads, each env runner in its own Ray actor with one CPU and one thread; SB3 runs in
this process with ``--threads`` threads. On a shared machine compare the rows of one run.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from agent_throughput import ENV_ID, measure

from agents.rllib_backend import RLlibConfig, build_rllib_ppo, connect
from agents.train import AgentConfig
from recsim_mm.pipeline import default_item_space


def measure_rllib(steps: int, num_env_runners: int, num_envs: int) -> dict[str, float]:
    """Env steps per second of RLlib PPO iterations until ``steps`` were sampled (after one
    warm-up iteration), with the mean sampling and learning seconds per iteration."""
    space = default_item_space()
    agent = AgentConfig(num_envs=num_envs, device="cpu")
    started = time.perf_counter()
    algo = build_rllib_ppo(agent, RLlibConfig(num_env_runners=num_env_runners), ENV_ID, {"obs_mode": "ids"}, space)
    build = time.perf_counter() - started
    try:
        algo.train()  # warm-up
        sampled, iterations, sample_s, learn_s = 0, 0, 0.0, 0.0
        started = time.perf_counter()
        while sampled < steps:
            result = algo.train()
            sampled += int(result["env_runners"]["num_env_steps_sampled"])
            iterations += 1
            sample_s += result["timers"]["env_runner_sampling_timer"]
            learn_s += result["timers"]["learner_update_timer"]
        elapsed = time.perf_counter() - started
    finally:
        algo.stop()
    return {"rate": sampled / elapsed, "build_s": build, "iterations": iterations,
            "sample_s": sample_s / iterations, "learn_s": learn_s / iterations}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=16_384)
    parser.add_argument("--runners", type=int, nargs="+", default=[1, 2], help="env runner counts to measure")
    parser.add_argument("--num-envs", type=int, default=64, help="users per environment (per env runner)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of this process")
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count(), help="CPUs of the local Ray instance")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    print(f"{ENV_ID} ids, {args.num_envs} users per env, {args.steps} steps per case, torch threads "
          f"{args.threads}, Ray CPUs {args.num_cpus}, load average {load:.2f}", flush=True)
    sb3 = measure("ppo", args.steps, "cpu", {"num_envs": args.num_envs}, {}, "ids")
    print(f"SB3 PPO                       {sb3:8,.0f} env steps/s", flush=True)
    started = time.perf_counter()
    connect(None, num_cpus=args.num_cpus)
    print(f"(Ray started in {time.perf_counter() - started:.1f} s)", flush=True)
    for runners in args.runners:
        r = measure_rllib(args.steps, runners, args.num_envs)
        print(f"RLlib PPO, {runners} env runner(s)   {r['rate']:8,.0f} env steps/s  ({r['iterations']} iterations: "
              f"sampling {r['sample_s']:.2f} s + learning {r['learn_s']:.2f} s each; build {r['build_s']:.1f} s)",
              flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
