"""recsim_mm.files: atomic publish, checkpoint load checks, source hashing, the file lock
(and the embedding cache that uses it, with two processes at once)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from recsim_mm.files import (
    atomic_torch_save,
    atomic_write,
    file_lock,
    load_checkpoint,
    source_hash,
    write_json,
)

ROOT = Path(__file__).resolve().parent.parent


def test_a_write_that_fails_midway_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "result.json"
    write_json(target, {"value": 1})
    before = target.read_bytes()

    def half_then_crash(f):
        f.write(b'{"value": 2')
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, half_then_crash)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_checkpoint_round_trip_and_errors_name_the_file_and_the_expected_format(tmp_path):
    path = tmp_path / "deep" / "model.pt"
    atomic_torch_save({"format": "demo/1", "weights": torch.arange(3)}, path)
    assert torch.equal(load_checkpoint(path, "demo/1")["weights"], torch.arange(3))
    with pytest.raises(ValueError, match=r"model\.pt: not a demo file \(format 'demo/1'; expected 'other/2'\)"):
        load_checkpoint(path, "other/2", "demo file")
    path.write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"model\.pt: not a readable checkpoint"):
        load_checkpoint(path, "demo/1")


def test_source_hash_follows_content_and_relative_names_not_location(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder / "pkg").mkdir(parents=True)
        (tmp_path / folder / "pkg" / "m.py").write_text("x = 1\n")
    same = [source_hash([tmp_path / f / "pkg"], root=tmp_path / f) for f in ("a", "b")]
    assert same[0] == same[1]
    (tmp_path / "b" / "pkg" / "m.py").write_text("x = 2\n")
    assert source_hash([tmp_path / "b" / "pkg"], root=tmp_path / "b") != same[0]


def test_a_lock_names_its_holder_and_is_released_when_the_holder_is_killed(tmp_path):
    lock = tmp_path / ".stage.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from recsim_mm.files import file_lock\n"
         "with file_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(120)", str(lock)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(TimeoutError, match=rf"\.stage\.lock: lock held by \S+ {holder.pid} for more than 0.2 s"):
            with file_lock(lock, timeout=0.2):
                pass
        os.kill(holder.pid, signal.SIGKILL)  # no clean-up: the kernel releases the lock
        holder.wait()
        with file_lock(lock, timeout=10):
            assert lock.read_text().split()[1] == str(os.getpid())
    finally:
        holder.kill()


#: Run by two processes at once: embeds keys ``start..stop`` with an encoder that logs
#: how many rows it encodes and takes a second doing it (both processes meet first).
_EMBED = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import torch
    from recsim_mm.embedding_cache import EmbeddingCache

    folder, name, start, stop = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])

    class SlowEncoder:
        identity = "test-slow-encoder/1"

        def encode(self, inputs):
            rows = list(inputs)
            with open(folder / "encoded.log", "a") as f:
                f.write(f"{len(rows)}\\n")
            time.sleep(1.0)
            return torch.tensor([[float(x), float(x) ** 0.5] for x in rows])

    (folder / f"ready-{name}").touch()
    while len(list(folder.glob("ready-*"))) < 2:
        time.sleep(0.01)
    keys = [f"k{i}" for i in range(start, stop)]
    vectors = EmbeddingCache(folder / "cache").embed(SlowEncoder(), list(range(start, stop)), keys)
    torch.save(vectors, folder / f"out-{name}.pt")
""")


def test_two_processes_sharing_the_embedding_cache_encode_each_row_once_and_keep_all_rows(tmp_path):
    from recsim_mm.embedding_cache import EmbeddingCache

    script = tmp_path / "embed.py"
    script.write_text(_EMBED)
    runs = [subprocess.Popen([sys.executable, str(script), str(tmp_path), name, start, stop], cwd=ROOT,
                             stderr=subprocess.PIPE, text=True)
            for name, start, stop in (("a", "0", "30"), ("b", "20", "50"))]
    for run in runs:
        assert run.wait(timeout=300) == 0, run.stderr.read()[-2000:]
    # Rows 20-29 are wanted by both: encoded once. Without the lock both processes
    # encode their 30 rows (60) and the later write drops the other's rows.
    assert sum(int(n) for n in (tmp_path / "encoded.log").read_text().split()) == 50
    expected = torch.tensor([[float(x), float(x) ** 0.5] for x in range(50)])
    assert torch.equal(torch.load(tmp_path / "out-a.pt"), expected[:30])
    assert torch.equal(torch.load(tmp_path / "out-b.pt"), expected[20:])

    class Nothing:  # every row is on disk: the cache never calls encode
        identity = "test-slow-encoder/1"

    cache = EmbeddingCache(tmp_path / "cache")
    assert torch.equal(cache.embed(Nothing(), list(range(50)), [f"k{i}" for i in range(50)]), expected)
    assert cache.last_stats.hits == 50 and cache.last_stats.misses == 0
