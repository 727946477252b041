"""PPO / DQN agents on the shared scorer, baselines, warm start and checkpoints."""
