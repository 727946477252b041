"""Pipeline: the default item space contract, the embedding cache, fusion, memo and disk cache."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from recsim_mm import encoders
from recsim_mm.catalog import Catalog
from recsim_mm.embedding_cache import CacheWarning, EmbeddingCache
from recsim_mm.encoders import ImageEncoder, TextEncoder
from recsim_mm.fusion import PCAProjection, fuse, topic_separation
from recsim_mm.item_space import ItemSpace
from recsim_mm.pipeline import build_item_space, clear_memo, default_item_space, embed_catalog
from recsim_mm.synthetic import generate_catalog


@pytest.fixture(scope="session")
def default_space() -> ItemSpace:
    # Shared by the whole test session (memoised in-process, cached under RECSIM_MM_CACHE).
    return default_item_space()


@pytest.fixture(scope="session")
def default_catalog() -> Catalog:
    return generate_catalog(600, 10, seed=0, image_size=128)


@pytest.fixture(scope="session")
def loaded_encoders() -> tuple[TextEncoder, ImageEncoder]:
    """Encoders loaded once for the runs that fill a cache."""
    text, image = fresh_encoders()
    text.load()
    image.load()
    return text, image


@pytest.fixture(scope="session")
def tiny_catalog() -> Catalog:
    return generate_catalog(num_items=24, num_topics=4, seed=5, image_size=64)


def fresh_encoders() -> tuple[TextEncoder, ImageEncoder]:
    """New, unloaded encoders: what a second process would construct."""
    return TextEncoder(device="cpu", progress=False), ImageEncoder(device="cpu", image_size=64, progress=False)


def test_default_item_space_follows_the_contract(default_space, default_catalog):
    catalog = default_catalog
    assert default_space.item_ids == catalog.item_ids
    assert default_space.text.shape == (600, 32) and default_space.image.shape == (600, 32)
    assert default_space.fused.shape == (600, 64) and default_space.device.type == "cpu"
    for part in (default_space.text, default_space.image):
        torch.testing.assert_close(part.norm(dim=-1), torch.ones(600))
    torch.testing.assert_close(default_space.topics, torch.from_numpy(catalog.topics))
    torch.testing.assert_close(default_space.quality, torch.from_numpy(catalog.quality))
    torch.testing.assert_close(default_space.duration, torch.from_numpy(catalog.duration))


def test_default_item_space_is_memoised_in_process(default_space):
    loads = encoders.model_loads()
    assert default_item_space() is default_space
    assert encoders.model_loads() == loads


def test_item_space_parts_separate_dominant_topics_by_a_clear_margin(default_space):
    dominant = default_space.topics.argmax(1)
    for part in (default_space.text, default_space.image):
        margin, auc = topic_separation(part, dominant, center=False)
        assert margin > 0.15 and auc > 0.7, (margin, auc)


def test_second_embedding_of_a_catalog_loads_no_model(tiny_catalog, loaded_encoders, tmp_path):
    text1, image1 = embed_catalog(tiny_catalog, *loaded_encoders, cache_dir=tmp_path)
    loads = encoders.model_loads()
    text_encoder, image_encoder = fresh_encoders()
    text2, image2 = embed_catalog(tiny_catalog, text_encoder, image_encoder, cache_dir=tmp_path)
    assert not text_encoder.loaded and not image_encoder.loaded
    assert encoders.model_loads() == loads
    assert torch.equal(text1, text2) and torch.equal(image1, image2)


def test_second_build_in_a_new_process_loads_no_model(tiny_catalog, loaded_encoders, tmp_path):
    clear_memo()
    space = build_item_space(tiny_catalog, *loaded_encoders, d_text=4, d_image=4, cache_dir=tmp_path, device="cpu")
    clear_memo()  # what a new process sees: only the disk cache
    loads = encoders.model_loads()
    text_encoder, image_encoder = fresh_encoders()
    again = build_item_space(tiny_catalog, text_encoder, image_encoder, d_text=4, d_image=4, cache_dir=tmp_path, device="cpu")
    assert encoders.model_loads() == loads and not text_encoder.loaded and not image_encoder.loaded
    assert again.fingerprint() == space.fingerprint()


def test_changed_item_is_re_encoded_alone(tiny_catalog, loaded_encoders, tmp_path):
    before_text, before_image = embed_catalog(tiny_catalog, *loaded_encoders, cache_dir=tmp_path)
    items = list(tiny_catalog.items)
    items[3] = dataclasses.replace(items[3], description=items[3].description + " Now with whales.")
    changed = Catalog(items=tuple(items), topic_names=tiny_catalog.topic_names)
    text_encoder, image_encoder = fresh_encoders()
    text, image = embed_catalog(changed, text_encoder, image_encoder, cache_dir=tmp_path)
    assert text_encoder.items_encoded == 1  # only item 3's text
    assert not image_encoder.loaded  # its image did not change
    unchanged = [i for i in range(len(items)) if i != 3]
    assert torch.equal(text[unchanged], before_text[unchanged])
    assert not torch.allclose(text[3], before_text[3])
    assert torch.equal(image, before_image)


def _cache_file(tmp_path: Path) -> Path:
    files = sorted((tmp_path / "embeddings").glob("*.pt"))
    assert files and not list((tmp_path / "embeddings").glob("*.tmp"))  # atomic: no leftovers
    return files[0]


@pytest.mark.parametrize("damage", ["garbage", "truncated", "tampered", "other_encoder"])
def test_corrupt_cache_file_is_detected_rebuilt_and_never_used(loaded_encoders, tmp_path, damage):
    encoder = loaded_encoders[0]
    texts, keys = ["space rocket launch", "jazz saxophone solo"], ["k1", "k2"]
    cache = EmbeddingCache(tmp_path)
    good = cache.embed(encoder, texts, keys)
    path = cache.path_for(encoder.identity)
    assert path == _cache_file(tmp_path)
    if damage == "garbage":
        path.write_bytes(b"not a torch file at all")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    else:
        payload = torch.load(path, weights_only=True)
        if damage == "tampered":
            payload["vectors"][0, 0] += 1.0  # a wrong vector the checksum must catch
        else:
            payload["identity"] = "text:some-other-model|..."
        torch.save(payload, path)
    encoded_before = encoder.items_encoded
    with pytest.warns(CacheWarning, match=r"embedding cache .* is .*; ignoring it and re-encoding"):
        again = cache.embed(encoder, texts, keys)
    assert encoder.items_encoded - encoded_before == 2 and cache.last_stats.rebuilt
    torch.testing.assert_close(again, good)
    # The rebuilt file is valid: the next run uses it without warning or loading.
    fresh = TextEncoder(device="cpu")
    torch.testing.assert_close(cache.embed(fresh, texts, keys), good)
    assert not fresh.loaded


def test_corrupt_item_space_cache_file_is_rebuilt_with_a_warning(tiny_catalog, loaded_encoders, tmp_path):
    clear_memo()  # an earlier test built the same space in this process
    space = build_item_space(tiny_catalog, *loaded_encoders, d_text=4, d_image=4, cache_dir=tmp_path, device="cpu")
    (spaces,) = (tmp_path / "item_spaces").glob("*.pt")
    spaces.write_bytes(b"\x00" * 64)
    clear_memo()
    with pytest.warns(CacheWarning, match=r"item-space cache .* is unusable"):
        again = build_item_space(tiny_catalog, *loaded_encoders, d_text=4, d_image=4, cache_dir=tmp_path, device="cpu")
    assert again.fingerprint() == space.fingerprint()


def test_pca_projection_is_deterministic_and_normalised():
    x = torch.randn(50, 20, generator=torch.Generator().manual_seed(0))
    a, b = PCAProjection.fit(x, 5), PCAProjection.fit(x.clone(), 5)
    torch.testing.assert_close(a.transform(x), b.transform(x))
    torch.testing.assert_close(a.transform(x).norm(dim=-1), torch.ones(50))
    assert (a.explained_variance_ratio[:-1] >= a.explained_variance_ratio[1:]).all()
    with pytest.raises(ValueError, match=r"d=50 is not possible here.*at most min\(N - 1, D\) = 20"):
        PCAProjection.fit(x, 50)


def test_contrastive_alignment_puts_an_items_text_and_image_together(default_space, default_catalog):
    # Raw embeddings of the default catalog come from the session's cache.
    catalog = default_catalog
    text, image = embed_catalog(
        catalog, TextEncoder(device="cpu"), ImageEncoder(device="cpu", image_size=128)
    )
    text, image = text[:300], image[:300]  # half the catalog keeps the test quick
    pca_t, pca_i = fuse(text, image, 16, 16, alignment="pca")
    aligned_t, aligned_i = fuse(text, image, 16, 16, alignment="contrastive")
    matched = (aligned_t * aligned_i).sum(-1).mean()
    assert matched > (pca_t * pca_i).sum(-1).mean() + 0.3, matched
    # Topic structure survives the alignment, in each part.
    dominant = torch.from_numpy(catalog.topics[:300].argmax(1))
    assert topic_separation(aligned_t, dominant, center=False)[1] > 0.7
    assert topic_separation(aligned_i, dominant, center=False)[1] > 0.7
    again_t, _ = fuse(text, image, 16, 16, alignment="contrastive")
    torch.testing.assert_close(again_t, aligned_t)
    with pytest.raises(ValueError, match=r"d_text and d_image must be equal"):
        fuse(text, image, 16, 8, alignment="contrastive")


def test_bad_fusion_settings_are_rejected_before_encoding(tiny_catalog):
    text_encoder, image_encoder = fresh_encoders()
    with pytest.raises(ValueError, match=r"unknown alignment 'cca'"):
        build_item_space(tiny_catalog, text_encoder, image_encoder, alignment="cca")
    with pytest.raises(ValueError, match=r"d_image=40: .* 24 items gives 1 to 23 components"):
        build_item_space(tiny_catalog, text_encoder, image_encoder, d_text=4, d_image=40)
    assert not text_encoder.loaded and not image_encoder.loaded
