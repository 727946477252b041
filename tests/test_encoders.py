"""Encoders: real pretrained semantics, pooling, identities, torchvision models, bad names."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from recsim_mm import encoders
from recsim_mm.encoders import ImageEncoder, TextEncoder, image_model_names
from recsim_mm.fusion import topic_separation
from recsim_mm.synthetic import generate_catalog


@pytest.fixture(scope="session")
def semantic_catalog():
    return generate_catalog(num_items=160, num_topics=8, seed=3, image_size=128)


@pytest.fixture(scope="session")
def dominant(semantic_catalog) -> torch.Tensor:
    return torch.from_numpy(semantic_catalog.topics.argmax(1))


@pytest.fixture(scope="session")
def text_encoder() -> TextEncoder:
    return TextEncoder(device="cpu", progress=False)


@pytest.fixture(scope="session")
def image_encoder() -> ImageEncoder:
    return ImageEncoder(device="cpu", image_size=128, progress=False)


@pytest.fixture(scope="session")
def pretrained_text_separation(semantic_catalog, dominant, text_encoder):
    return topic_separation(text_encoder.encode(semantic_catalog.texts), dominant)


def test_text_embeddings_are_closer_within_a_dominant_topic(pretrained_text_separation):
    margin, auc = pretrained_text_separation
    assert margin > 0.15, margin
    assert auc > 0.8, auc


def test_image_embeddings_are_closer_within_a_dominant_topic(semantic_catalog, dominant, image_encoder):
    vectors = image_encoder.encode([item.image for item in semantic_catalog])
    assert vectors.shape == (160, 1280) and vectors.dtype == torch.float32
    margin, auc = topic_separation(vectors, dominant)
    assert margin > 0.1, margin
    assert auc > 0.7, auc


def test_random_init_text_encoder_separates_topics_less_than_pretrained(
    semantic_catalog, dominant, pretrained_text_separation
):
    random_encoder = TextEncoder(device="cpu", pretrained=False, seed=0, progress=False)
    margin, auc = topic_separation(random_encoder.encode(semantic_catalog.texts), dominant)
    pre_margin, pre_auc = pretrained_text_separation
    assert margin < pre_margin - 0.05, (margin, pre_margin)
    assert auc < pre_auc - 0.1, (auc, pre_auc)
    assert random_encoder.identity != TextEncoder().identity


def test_mean_pooling_ignores_padding(text_encoder):
    alone = text_encoder.encode(["jazz quartet"])
    batched = text_encoder.encode(["jazz quartet", "a much longer sentence about football and goals " * 4])
    torch.testing.assert_close(alone[0], batched[0], atol=1e-4, rtol=1e-4)


def test_identity_never_loads_the_model_and_tracks_what_changes_output():
    loads = encoders.model_loads()
    text, image = TextEncoder(device="cpu"), ImageEncoder(device="cpu", image_size=128)
    assert "all-MiniLM-L6-v2" in text.identity and "weights-sha256=" in text.identity
    assert "efficientnet-lite0" in image.identity and "size=128" in image.identity
    assert image.identity != ImageEncoder(device="cpu", image_size=96).identity
    assert image.identity != ImageEncoder(device="cpu", image_size=128, pretrained=False).identity
    assert not text.loaded and not image.loaded
    assert encoders.model_loads() == loads


def test_text_model_from_a_local_folder_matches_the_default(text_encoder):
    folder = text_encoder._folder  # the offline package's folder, passed as a plain path
    by_path = TextEncoder(str(folder), device="cpu")
    torch.testing.assert_close(by_path.encode(["ocean waves"]), text_encoder.encode(["ocean waves"]))


def test_image_encoder_resizes_and_crops_any_image(image_encoder):
    wide = Image.new("RGB", (200, 90), (10, 200, 30))
    grey = np.full((64, 64, 3), 120, np.uint8)
    x = image_encoder.preprocess([wide, grey])
    assert x.shape == (2, 3, 128, 128)
    assert image_encoder.encode([wide, grey]).shape == (2, 1280)


@pytest.mark.parametrize(("name", "dim"), [("resnet18", 512), ("squeezenet1_1", 512)])
def test_torchvision_model_gives_pooled_features_before_its_classifier(name, dim):
    # Random weights: no download here; the feature extractor is what is tested.
    enc = ImageEncoder(name, device="cpu", image_size=64, pretrained=False)
    out = enc.encode([np.zeros((64, 64, 3), np.uint8), np.full((64, 64, 3), 255, np.uint8)])
    assert out.shape == (2, dim)


def test_torchvision_model_without_local_weights_says_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"'resnet18': pretrained weights not found at .*resnet18-.*\.pth"):
        ImageEncoder("resnet18")


def test_unknown_image_encoder_name_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown image encoder 'resnet-9000'.*efficientnet-lite0.*resnet50"):
        ImageEncoder("resnet-9000")
    assert "vit_b_16" in image_model_names()


def test_unknown_text_encoder_name_is_an_error_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match=r"unknown text encoder 'no-such-org/no-such-model'.*HF_HUB_OFFLINE"):
        TextEncoder("no-such-org/no-such-model")


def test_empty_text_is_rejected_with_its_position():
    with pytest.raises(ValueError, match=r"text #1 is '  '; expected a non-empty string"):
        TextEncoder(device="cpu").encode(["fine", "  "])
