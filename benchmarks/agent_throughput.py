"""PPO and DQN end-to-end throughput: environment steps per second of `model.learn`.

Runs SB3 PPO / DQN with the shared-scorer policies over the native batched
environment (`agents.sb3_vec_env.SB3VecEnv`, no subprocesses), after a warm-up
learn() call, on the current device. Design target (DESIGN.md): PPO >= 10k env steps/s
on 2 CPU cores.

    python benchmarks/agent_throughput.py [--steps 16384] [--device cpu|cuda|auto] [--threads 1]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from agents.train import AgentConfig, build_agent, make_env
from recsim_mm.pipeline import default_item_space

ENV_ID = "recsim_mm/InterestEvolution-v0"


def measure(algo: str, steps: int, num_envs: int, device: str, scorer: dict, obs_mode: str) -> float:
    """Environment steps per second of ``learn(steps)`` after a short warm-up."""
    space = default_item_space()
    config = AgentConfig(algo=algo, total_steps=steps, num_envs=num_envs, device=device,
                         scorer=scorer, learning_starts=num_envs * 4)
    venv = make_env(config, ENV_ID, {"obs_mode": obs_mode, "item_space": space})
    with tempfile.TemporaryDirectory() as tmp:
        model = build_agent(config, venv, space, tensorboard_dir=tmp)
        model.learn(total_timesteps=num_envs * config.n_steps)  # warm-up (allocations, kernels)
        start = time.perf_counter()
        model.learn(total_timesteps=steps, reset_num_timesteps=False)
        elapsed = time.perf_counter() - start
    return steps / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=16_384)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"device={args.device} torch_threads={torch.get_num_threads()} steps={args.steps}")
    cases = [
        ("ppo", 64, {}, "ids"),
        ("ppo", 256, {}, "ids"),
        ("ppo", 256, {"hidden_dim": 32, "history_match": False}, "ids"),
        ("ppo", 256, {}, "embeddings"),
        ("dqn", 64, {}, "ids"),
    ]
    for algo, num_envs, scorer, obs_mode in cases:
        rate = measure(algo, args.steps, num_envs, args.device, scorer, obs_mode)
        label = ",".join(f"{k}={v}" for k, v in scorer.items()) or "default scorer"
        target = "  (target >= 10,000 for PPO on 2 CPU cores)" if algo == "ppo" else ""
        print(f"{algo.upper():3s} num_envs={num_envs:4d} obs={obs_mode:10s} {label:32s} {rate:10,.0f} env steps/s{target}")


if __name__ == "__main__":
    main()
