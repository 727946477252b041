"""PPO and DQN end-to-end throughput: environment steps per second of `model.learn`.

Runs SB3 PPO / DQN with the shared-scorer policies over the native batched
environment (`agents.sb3_vec_env.SB3VecEnv`, no subprocesses), after a warm-up
learn() call, on the current device. Design targets (docs/design_notes.md): PPO >= 10k and DQN
>= 5k env steps/s on 2 CPU cores with the default scorer.

    python benchmarks/agent_throughput.py [--steps 16384] [--device cpu|cuda|auto] [--threads 1]
    python benchmarks/agent_throughput.py --cases ppo-256 dqn-64      # a subset
    python benchmarks/agent_throughput.py --alternatives              # + non-default hyperparameters

Every case uses `AgentConfig`'s defaults except what its label names. The
alternatives change the learner's work per environment step (epochs, minibatch size,
replay ratio), so an experiment's conclusions at the same number of environment steps
must be checked before any becomes a default.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import yaml

from agents.train import AgentConfig, build_agent, make_env
from recsim_mm.pipeline import default_item_space

ENV_ID = "recsim_mm/InterestEvolution-v0"

#: name -> (algo, AgentConfig overrides, ScorerConfig overrides, obs_mode)
CASES = {
    "ppo-64": ("ppo", {"num_envs": 64}, {}, "ids"),
    "ppo-256": ("ppo", {"num_envs": 256}, {}, "ids"),
    "ppo-256-small-scorer": ("ppo", {"num_envs": 256}, {"hidden_dim": 32, "history_match": False}, "ids"),
    "ppo-256-embeddings": ("ppo", {"num_envs": 256}, {}, "embeddings"),
    "dqn-64": ("dqn", {"num_envs": 64}, {}, "ids"),
}
ALTERNATIVES = {
    "ppo-128-batch1024": ("ppo", {"num_envs": 128, "batch_size": 1024}, {"hidden_dim": 32, "num_heads": 2}, "ids"),
    "ppo-128-batch1024-epochs2": ("ppo", {"num_envs": 128, "batch_size": 1024, "n_epochs": 2},
                                  {"hidden_dim": 32, "num_heads": 2}, "ids"),
    "ppo-256-epochs2": ("ppo", {"num_envs": 256, "n_epochs": 2}, {}, "ids"),
    "ppo-256-batch2048": ("ppo", {"num_envs": 256, "batch_size": 2048}, {}, "ids"),
    "ppo-1024": ("ppo", {"num_envs": 1024}, {}, "ids"),
    "dqn-256": ("dqn", {"num_envs": 256}, {}, "ids"),
    "dqn-64-gradsteps1": ("dqn", {"num_envs": 64, "gradient_steps": 1}, {}, "ids"),
}


def run_default_case() -> tuple[str, tuple]:
    """What `make run` trains: PPO with the default preset's ``ppo.num_envs`` and its
    ``scorer`` overrides, read from experiments/configs/default.yaml so the case follows
    the preset."""
    preset = yaml.safe_load((Path(__file__).resolve().parent.parent / "experiments" / "configs" / "default.yaml").read_text())
    num_envs = preset["ppo"]["num_envs"]
    return f"ppo-{num_envs}-run-default", ("ppo", {"num_envs": num_envs}, dict(preset.get("scorer", {})), "ids")


RUN_DEFAULT, RUN_DEFAULT_CASE = run_default_case()
CASES[RUN_DEFAULT] = RUN_DEFAULT_CASE


def measure(algo: str, steps: int, device: str, overrides: dict, scorer: dict, obs_mode: str) -> float:
    """Environment steps per second of ``learn(steps)`` after a short warm-up (steps
    actually taken: at least ``steps``)."""
    space = default_item_space()
    num_envs = overrides["num_envs"]
    config = AgentConfig(algo=algo, total_steps=steps, device=device, scorer=scorer,
                         learning_starts=num_envs * 4, **overrides)
    venv = make_env(config, ENV_ID, {"obs_mode": obs_mode, "item_space": space})
    with tempfile.TemporaryDirectory() as tmp:
        model = build_agent(config, venv, space, tensorboard_dir=tmp)
        model.learn(total_timesteps=num_envs * config.n_steps)  # warm-up (allocations, kernels)
        done_before = model.num_timesteps
        start = time.perf_counter()
        model.learn(total_timesteps=steps, reset_num_timesteps=False)
        elapsed = time.perf_counter() - start
    # PPO collects whole rollouts (num_envs * n_steps), which may exceed ``steps``
    return (model.num_timesteps - done_before) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=16_384)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--cases", nargs="+", choices=sorted({**CASES, **ALTERNATIVES}),
                        help="run only these (default: every default case)")
    parser.add_argument("--alternatives", action="store_true",
                        help="also measure the non-default hyperparameter alternatives")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"device={args.device} torch_threads={torch.get_num_threads()} steps={args.steps}")
    everything = {**CASES, **ALTERNATIVES}
    names = args.cases or [*CASES, *(ALTERNATIVES if args.alternatives else [])]
    for name in names:
        algo, overrides, scorer, obs_mode = everything[name]
        rate = measure(algo, args.steps, args.device, overrides, scorer, obs_mode)
        label = ",".join(f"{k}={v}" for k, v in {**overrides, **scorer}.items())
        target = {"ppo": 10_000, "dqn": 5_000}[algo]
        scorer_kind = "default scorer" if not scorer else "preset scorer" if name == RUN_DEFAULT else "small scorer"
        print(f"{name:22s} {algo.upper()} obs={obs_mode:10s} {label:40s} {scorer_kind:14s} "
              f"{rate:8,.0f} env steps/s (target >= {target:,} with the default scorer)", flush=True)


if __name__ == "__main__":
    main()
