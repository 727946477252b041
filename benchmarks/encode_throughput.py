"""Encoding throughput and the embedding cache's speed-up on a synthetic catalog.

Prints text and image encoding rates (items/s) on the current device, then the time
of a cold embedding run (models loaded, every item encoded, cache written) against a
cached one (fresh encoders and freshly computed content hashes, as in a new process;
every vector read from disk, no model loaded). Target: cached >= 50x faster.

    python benchmarks/encode_throughput.py [--items 2000] [--device auto]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time

import torch

from recsim_mm import encoders
from recsim_mm.catalog import Catalog
from recsim_mm.device import default_cpu_threads, resolve_device
from recsim_mm.embedding_cache import EmbeddingCache
from recsim_mm.encoders import ImageEncoder, TextEncoder
from recsim_mm.pipeline import DEFAULT_IMAGE_SIZE, embed_catalog
from recsim_mm.synthetic import generate_catalog


def fresh_copy(catalog: Catalog) -> Catalog:
    """Same content, new Item objects: content hashes are computed again, as in a new process."""
    return Catalog(items=tuple(dataclasses.replace(i) for i in catalog.items), topic_names=catalog.topic_names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)

    catalog = generate_catalog(num_items=args.items, num_topics=10, seed=0, image_size=DEFAULT_IMAGE_SIZE)
    threads = default_cpu_threads() if device.type == "cpu" else "-"
    print(f"device={device} torch_threads={threads} items={len(catalog)} image_size={DEFAULT_IMAGE_SIZE}")

    with tempfile.TemporaryDirectory() as cache_dir:
        # Cold run: models loaded, every item hashed and encoded, cache written.
        cold_catalog = fresh_copy(catalog)
        cache = EmbeddingCache(cache_dir)
        text_enc = TextEncoder(device=device, progress=False)
        image_enc = ImageEncoder(device=device, image_size=DEFAULT_IMAGE_SIZE, progress=False)
        t0 = time.perf_counter()
        text_enc.load()
        image_enc.load()
        load_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        cold_text = cache.embed(text_enc, cold_catalog.texts, [i.text_hash() for i in cold_catalog])
        text_s = time.perf_counter() - t1
        t1 = time.perf_counter()
        images = [item.image for item in cold_catalog]
        cold_image = cache.embed(image_enc, images, [i.image_hash() for i in cold_catalog])
        image_s = time.perf_counter() - t1
        cold_s = time.perf_counter() - t0

        # Cached run, as a new process does it: fresh encoders, content and weights
        # hashes recomputed, every vector read from disk.
        encoders._weights_digest.cache_clear()
        loads = encoders.model_loads()
        text_enc = TextEncoder(device=device, progress=False)
        image_enc = ImageEncoder(device=device, image_size=DEFAULT_IMAGE_SIZE, progress=False)
        t0 = time.perf_counter()
        cached_text, cached_image = embed_catalog(fresh_copy(catalog), text_enc, image_enc, cache_dir)
        cached_s = time.perf_counter() - t0
        assert encoders.model_loads() == loads, "the cached run loaded a model"
        assert torch.equal(cold_text, cached_text) and torch.equal(cold_image, cached_image)

    n = len(catalog)
    print(f"text  encoding: {n / text_s:8.1f} items/s  ({text_s:.2f} s, all-MiniLM-L6-v2)")
    print(f"image encoding: {n / image_s:8.1f} items/s  ({image_s:.2f} s, EfficientNet-Lite0)")
    ratio = cold_s / cached_s
    print(f"model loading : {load_s:8.2f} s")
    print(f"cold   run    : {cold_s:8.2f} s  (load models, hash + encode {n} texts and images, write cache)")
    print(f"cached run    : {cached_s:8.3f} s  (hash content, read cache; no model loaded)")
    print(f"speed-up      : {ratio:8.1f}x  (target >= 50x: {'met' if ratio >= 50 else 'NOT met'})")


if __name__ == "__main__":
    main()
