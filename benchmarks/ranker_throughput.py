"""Ranker training throughput (logged records per second) on CPU, and on CUDA when present.

Throughput does not depend on what the log says, only on its shapes, so the log here
is random records over a random item space of the default sizes (d_text = d_image =
32, H = 10 history steps, K = 20 candidates, one shown item per record); the quality
of training is measured by benchmarks/ranker_quality.py instead.

    .venv/bin/python benchmarks/ranker_throughput.py [--records 20000] [--epochs 2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from recsim_mm import ItemSpace
from recsim_mm.logs import InteractionLog
from recsim_mm.ranker import TrainConfig, train_ranker
from recsim_mm.scorer import ScorerConfig


def random_log(space: ItemSpace, records: int, history: int, candidates: int, seed: int) -> InteractionLog:
    """A shape-realistic random log (users of 20 records each)."""
    rng = np.random.default_rng(seed)
    n = space.num_items
    mask = (rng.random((records, history)) < 0.8).astype(np.float32)
    clicked = np.where(rng.random(records) < 0.4, 0, -1)  # slot 0 clicked, or none
    return InteractionLog(
        item_ids=space.item_ids,
        user_id=np.asarray([f"u{i // 20}" for i in range(records)]),
        step=np.arange(records, dtype=np.int64) % 20,
        history_items=rng.integers(0, n, (records, history)) * mask.astype(np.int64),
        history_feedback=np.stack(
            [rng.integers(0, 2, (records, history)), rng.uniform(0, 8, (records, history))], -1
        ).astype(np.float32) * mask[..., None],
        history_mask=mask,
        candidate_items=rng.integers(0, n, (records, candidates)),
        shown=rng.integers(0, candidates, (records, 1)),
        clicked_slot=clicked,
        engagement=np.where(clicked >= 0, rng.uniform(0, 8, records), 0).astype(np.float32),
        propensity=np.full(records, 1.0 / candidates),
        time_left=rng.uniform(0, 60, records).astype(np.float32),
    )


def measure(device: str, records: int, epochs: int, batch_size: int, encoder: str) -> float:
    """Training records/s over ``epochs`` epochs on ``device`` (validation excluded)."""
    space = ItemSpace.random(600, d_text=32, d_image=32, seed=0)
    log = random_log(space, records, history=10, candidates=20, seed=0)
    result = train_ranker(
        log, space,
        ScorerConfig(d_text=32, d_image=32, user_encoder=encoder),
        # patience=epochs: early stopping can never cut the run short.
        TrainConfig(max_epochs=epochs, patience=epochs, batch_size=batch_size,
                    device=device, seed=0),
    )
    return result.samples_per_second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"ranker training throughput: {args.records} records x {args.epochs} epochs, "
          f"batch {args.batch_size}, H=10, K=20, d=64, torch threads={torch.get_num_threads()}")
    for device in devices:
        for encoder in ("attention", "gru"):
            start = time.perf_counter()
            rate = measure(device, args.records, args.epochs, args.batch_size, encoder)
            print(f"  {device:4s} {encoder:9s}: {rate:10.0f} records/s "
                  f"(total {time.perf_counter() - start:.1f} s incl. validation)")
    if len(devices) == 1:
        print("  cuda: not available on this machine")


if __name__ == "__main__":
    main()
