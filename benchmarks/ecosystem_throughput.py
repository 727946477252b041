"""Throughput of the PettingZoo ecosystem environments, in agent-steps/s (and user-steps/s).

For each environment and population size it times ``ParallelEnv.step`` with valid,
pre-drawn actions (no policy cost), episodes restarting with ``reset`` when they
end, and reports:

- agent-steps/s: actions consumed per second (live agents x env steps / s);
- env steps/s and user-steps/s (U users advance each env step).

Platforms: M = 2 platforms, K = 20 candidates, both observation modes, and ``ids``
without the privileged true affinities in ``info`` (``track_truth=False``). Creators:
C = 8 creators, 2 offers each (K = 16), the true-affinity recommender. One AEC
row (``env()``, PettingZoo's ``parallel_to_aec``) shows the conversion's cost.
The item space is `ItemSpace.random` (600 items, d = 64, 10 topics): throughput
does not depend on what the vectors encode, and the benchmark must not pay for
encoding.

Usage::

    .venv/bin/python benchmarks/ecosystem_throughput.py [--threads 1] [--device cpu]
        [--seconds 2] [--users 64 1024 8192]

The 2-core development box is shared: figures measured there are noisy; run on an
idle machine for reference numbers.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from envs.ecosystems import creators, platforms  # noqa: E402
from recsim_mm import ItemSpace  # noqa: E402

NUM_ITEMS, D_TEXT, D_IMAGE, TOPICS = 600, 32, 32, 10


def draw_actions(env, count: int, seed: int) -> list[dict]:
    """``count`` joint actions sampled from the agents' action spaces (seeded)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        joint = {}
        for agent in env.possible_agents:
            space = env.action_space(agent)
            if hasattr(space, "nvec"):
                joint[agent] = rng.integers(0, space.nvec).astype(np.int64)
            else:
                joint[agent] = rng.uniform(space.low, space.high).astype(np.float32)
        out.append(joint)
    return out


def parallel_rate(env, seconds: float) -> tuple[float, float]:
    """``(agent-steps/s, env steps/s)`` of ``env.step`` over about ``seconds``."""
    actions = draw_actions(env, 16, seed=1)
    env.reset(seed=0)
    steps = agent_steps = 0
    start = time.perf_counter()
    while True:
        for joint in actions:
            if not env.agents:
                env.reset()
            agent_steps += len(env.agents)
            env.step({agent: joint[agent] for agent in env.agents})
            steps += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return agent_steps / elapsed, steps / elapsed


def aec_rate(env, seconds: float) -> float:
    """Agent-steps/s of the AEC form (one ``step`` call per agent turn)."""
    actions = draw_actions(env.unwrapped, 16, seed=1)
    env.reset(seed=0)
    agent_steps, i = 0, 0
    start = time.perf_counter()
    while True:
        for agent in env.agent_iter(max_iter=256):
            _, _, terminated, truncated, _ = env.last(observe=True)
            env.step(None if terminated or truncated else actions[i % 16][agent])
            agent_steps += 1
            i += 1
        env.reset()
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return agent_steps / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1: robust on a busy box)"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--seconds", type=float, default=2.0, help="timing window per row")
    parser.add_argument("--users", type=int, nargs="+", default=[64, 1024, 8192])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    space = ItemSpace.random(NUM_ITEMS, d_text=D_TEXT, d_image=D_IMAGE, num_topics=TOPICS, seed=0)
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), device {args.device}, item space {NUM_ITEMS} x {space.dim}"
    )
    print(
        f"{'environment':44s} {'U':>6s} {'agent-steps/s':>14s} {'env steps/s':>12s} {'user-steps/s':>13s}"
    )

    def row(name: str, users: int, agent_rate: float, step_rate: float | None) -> None:
        env_steps = f"{step_rate:12,.0f}" if step_rate is not None else f"{'':12s}"
        user_steps = f"{step_rate * users:13,.0f}" if step_rate is not None else ""
        print(f"{name:44s} {users:6d} {agent_rate:14,.0f} {env_steps} {user_steps}", flush=True)

    for users in args.users:
        for mode, truth in (("embeddings", True), ("ids", True), ("ids", False)):
            env = platforms.parallel_env(
                item_space=space,
                num_users=users,
                num_candidates=20,
                max_steps=100,
                obs_mode=mode,
                track_truth=truth,
                device=args.device,
            )
            name = f"platforms M=2 K=20 ({mode}{'' if truth else ', no truth'})"
            row(name, users, *parallel_rate(env, args.seconds))
        env = creators.parallel_env(
            item_space=space, num_users=users, num_creators=8, max_steps=100, device=args.device
        )
        row("creators C=8 K=16 (affinity recommender)", users, *parallel_rate(env, args.seconds))
    users = args.users[0]
    aec = platforms.env(
        item_space=space,
        num_users=users,
        num_candidates=20,
        max_steps=100,
        obs_mode="ids",
        device=args.device,
    )
    row("platforms M=2 K=20 (ids), AEC env()", users, aec_rate(aec, args.seconds), None)
    aec = creators.env(
        item_space=space, num_users=users, num_creators=8, max_steps=100, device=args.device
    )
    row("creators C=8 K=16, AEC env()", users, aec_rate(aec, args.seconds), None)


if __name__ == "__main__":
    main()
