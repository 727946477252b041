"""recsim_mm.files: atomic publish, checkpoint load checks, source hashing."""

from __future__ import annotations

import pytest
import torch

from recsim_mm.files import (
    atomic_torch_save,
    atomic_write,
    load_checkpoint,
    source_hash,
    write_json,
)


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
