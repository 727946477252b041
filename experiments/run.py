"""TEMPORARY entry point for `make run`: build the default item space and summarise it.

Replaced by the full experiment runner (ranker vs PPO vs DQN vs baselines) later.
Usage: python experiments/run.py [device=cpu|cuda|auto]
"""

from __future__ import annotations

import sys
import time

from recsim_mm.fusion import topic_separation
from recsim_mm.pipeline import default_item_space
from recsim_mm.synthetic import TOPICS


def main(argv: list[str]) -> None:
    options = dict(arg.split("=", 1) for arg in argv)
    unknown = set(options) - {"device"}
    if unknown:
        raise SystemExit(f"unknown option(s) {sorted(unknown)}; valid: device=cpu|cuda|auto")
    start = time.perf_counter()
    space = default_item_space(device=options.get("device", "cpu"))
    print(f"item space: {space.num_items} items, text {space.d_text} + image {space.d_image} = "
          f"{space.dim} dims, on {space.device} ({time.perf_counter() - start:.1f} s)")  # fmt: skip
    dominant = space.topics.argmax(1).cpu()
    for name, part in (("text", space.text), ("image", space.image)):
        margin, auc = topic_separation(part.cpu(), dominant, center=False)
        print(f"{name:5s} part: same-topic cosine margin {margin:.3f}, same-vs-other AUC {auc:.3f}")
    counts = dominant.bincount(minlength=space.topics.shape[1]).tolist()
    print("dominant topics:", ", ".join(f"{TOPICS[t].name} {n}" for t, n in enumerate(counts)))
    print(f"quality mean {space.quality.mean():.2f}, duration mean {space.duration.mean():.1f} min")


if __name__ == "__main__":
    main(sys.argv[1:])
