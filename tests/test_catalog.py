"""Catalog: the synthetic generator and the CSV/JSONL loader, including every bad input."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from recsim_mm.catalog import Catalog, CatalogError, Item, load_catalog
from recsim_mm.synthetic import TOPICS, generate_catalog


@pytest.fixture(scope="module")
def small_synthetic() -> Catalog:
    return generate_catalog(num_items=40, num_topics=5, seed=7, image_size=96)


def test_synthetic_catalog_is_deterministic_by_seed(small_synthetic):
    again = generate_catalog(num_items=40, num_topics=5, seed=7, image_size=96)
    other = generate_catalog(num_items=40, num_topics=5, seed=8, image_size=96)
    assert again.content_hash() == small_synthetic.content_hash()
    assert [i.text for i in again] == [i.text for i in small_synthetic]
    assert other.content_hash() != small_synthetic.content_hash()


def test_synthetic_items_have_content_mixture_and_attributes(small_synthetic):
    topics = small_synthetic.topics
    assert topics.shape == (40, 5) and topics.dtype == np.float32
    np.testing.assert_allclose(topics.sum(1), 1.0, atol=1e-5)
    assert (topics.max(1) >= 0.5).all()  # a dominant topic by construction
    assert small_synthetic.topic_names == tuple(t.name for t in TOPICS[:5])
    for item in small_synthetic:
        assert item.image.shape == (96, 96, 3) and item.image.dtype == np.uint8
        assert len(item.text.split()) >= 5
        assert 0.0 <= item.quality <= 1.0 and item.duration > 0
    lengths = {len(item.description.split()) for item in small_synthetic}
    assert max(lengths) >= 2 * min(lengths)  # varied length


def test_synthetic_text_is_a_noisy_view_of_the_dominant_topic(small_synthetic):
    # Most content words come from the dominant topic's vocabulary, but not all.
    shares = []
    for item in small_synthetic:
        style = TOPICS[int(item.topics.argmax())]
        vocab = set(style.nouns) | set(style.adjectives) | set(style.verbs)
        words = re.findall(r"[a-z]+", item.text.lower())
        shares.append(sum(w in vocab for w in words) / len(words))
    assert 0.15 < float(np.mean(shares)) < 0.8


def test_synthetic_image_colours_follow_the_dominant_topic(small_synthetic):
    # Mean colour is nearer the dominant topic's palette than other topics' palettes
    # for most items, yet not for every item (the image is a noisy view).
    palettes = np.array([np.mean(t.palette, axis=0) for t in TOPICS[:5]])
    hits = []
    for item in small_synthetic:
        mean = item.image.reshape(-1, 3).mean(0)
        hits.append(int(np.linalg.norm(palettes - mean, axis=1).argmin()) == int(item.topics.argmax()))
    assert 0.5 < np.mean(hits)


def test_synthetic_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"num_topics=99.*\[2, 16\]"):
        generate_catalog(num_items=5, num_topics=99)
    with pytest.raises(ValueError, match="num_items=0"):
        generate_catalog(num_items=0)


# ---------------------------------------------------------------- loader


def _png(path, colour=(200, 30, 30), size=(40, 30), mode="RGB"):
    Image.new(mode, size, colour if mode == "RGB" else 128).save(path)
    return path


def _write_csv(path, header, rows):
    lines = [",".join(header)] + [",".join(map(str, r)) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_csv_catalog_loads_text_images_attributes_and_metadata(tmp_path):
    (tmp_path / "img").mkdir()
    _png(tmp_path / "img" / "a.png")
    absolute = _png(tmp_path / "b.png", mode="L")  # greyscale file: converted to RGB
    csv_path = _write_csv(
        tmp_path / "items.csv",
        ["item_id", "text", "image_path", "quality", "duration", "topic", "author"],
        [["a", "A jazz trio live", "img/a.png", 0.9, 4.5, "jazz", "ann"],
         ["b", "Cooking pasta at home", str(absolute), 0.2, 12, "cooking", "bob"]],
    )  # fmt: skip
    cat = load_catalog(csv_path)
    assert cat.item_ids == ("a", "b")
    assert cat.texts == ["A jazz trio live", "Cooking pasta at home"]
    np.testing.assert_allclose(cat.quality, [0.9, 0.2])
    np.testing.assert_allclose(cat.duration, [4.5, 12.0])
    assert cat.topic_names == ("cooking", "jazz")
    np.testing.assert_array_equal(cat.topics, [[0, 1], [1, 0]])
    assert cat[0].metadata == {"author": "ann"}
    assert cat[0].image_path == (tmp_path / "img" / "a.png").resolve()
    img = cat[1].load_image()
    assert img.mode == "RGB" and img.size == (40, 30)


def test_jsonl_catalog_with_title_description_and_mixture(tmp_path):
    _png(tmp_path / "x.png")
    rows = [
        {"item_id": "x1", "title": "Moon", "description": "A lunar launch.", "image_path": "x.png",
         "topics": [0.25, 0.75]},
        {"item_id": "x2", "title": "", "description": "Only a description", "image_path": "x.png",
         "topics": [1.0, 0.0]},
    ]  # fmt: skip
    path = tmp_path / "items.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    cat = load_catalog(path)
    assert cat.texts == ["Moon. A lunar launch.", "Only a description"]
    np.testing.assert_allclose(cat.topics, [[0.25, 0.75], [1.0, 0.0]])
    assert cat.quality.tolist() == [0.5, 0.5]  # documented default without the column
    # Same image file, same content hash: the cache encodes it once.
    assert cat[0].image_hash() == cat[1].image_hash()


def test_missing_image_file_names_item_and_path(tmp_path):
    path = _write_csv(tmp_path / "c.csv", ["item_id", "text", "image_path"], [["it7", "some text", "nope.png"]])
    with pytest.raises(CatalogError, match=r"item 'it7'.*nope\.png.*does not exist"):
        load_catalog(path)


def test_missing_images_become_blank_only_when_asked_and_warn_with_count(tmp_path):
    _png(tmp_path / "ok.png")
    path = _write_csv(
        tmp_path / "c.csv",
        ["item_id", "text", "image_path"],
        [["a", "text a", "gone1.png"], ["b", "text b", "ok.png"], ["c", "text c", "gone2.png"]],
    )
    with pytest.warns(UserWarning, match=r"2 item\(s\) have a missing image file.*'a', 'c'"):
        cat = load_catalog(path, missing_image="blank")
    assert cat[0].image is not None and (cat[0].image == 128).all()
    assert cat[1].image is None and cat[1].image_path is not None


def test_unreadable_image_file_names_path(tmp_path):
    (tmp_path / "fake.png").write_text("this is not a png")
    path = _write_csv(tmp_path / "c.csv", ["item_id", "text", "image_path"], [["z", "words", "fake.png"]])
    with pytest.raises(CatalogError, match=r"item 'z'.*fake\.png.*not a readable image"):
        load_catalog(path)


def test_empty_text_names_item(tmp_path):
    _png(tmp_path / "i.png")
    path = _write_csv(tmp_path / "c.csv", ["item_id", "text", "image_path"], [["q1", "  ", "i.png"]])
    with pytest.raises(CatalogError, match=r"item 'q1': empty text"):
        load_catalog(path)
    with pytest.raises(CatalogError, match=r"item 'm': empty text"):
        Item(item_id="m", title="", description="", image=np.zeros((4, 4, 3), np.uint8))


def test_duplicate_item_ids_are_named(tmp_path):
    _png(tmp_path / "i.png")
    path = _write_csv(
        tmp_path / "c.csv", ["item_id", "text", "image_path"], [["d1", "a", "i.png"], ["d1", "b", "i.png"]]
    )
    with pytest.raises(CatalogError, match=r"duplicate item id 'd1'"):
        load_catalog(path)
    item = Item(item_id="d2", title="t", description="", image=np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(CatalogError, match=r"duplicate item id 'd2'"):
        Catalog(items=(item, item))


@pytest.mark.parametrize(
    ("header", "missing"),
    [(["item_id", "text"], "image_path"), (["text", "image_path"], "item_id"), (["item_id", "image_path"], "text")],
)
def test_csv_missing_required_column_is_named(tmp_path, header, missing):
    path = _write_csv(tmp_path / "c.csv", header, [["v"] * len(header)])
    with pytest.raises(CatalogError, match=rf"missing required column '{missing}'"):
        load_catalog(path)


def test_bad_attribute_values_name_item_and_column(tmp_path):
    _png(tmp_path / "i.png")
    path = _write_csv(
        tmp_path / "c.csv", ["item_id", "text", "image_path", "quality"], [["k", "words", "i.png", "1.7"]]
    )
    with pytest.raises(CatalogError, match=r"item 'k': quality '1.7' is not a number in \[0, 1\]"):
        load_catalog(path)
    path = _write_csv(
        tmp_path / "d.csv", ["item_id", "text", "image_path", "duration"], [["k", "words", "i.png", ""]]
    )
    with pytest.raises(CatalogError, match=r"item 'k': column 'duration' is empty"):
        load_catalog(path)


def test_unknown_catalog_file_type_is_rejected(tmp_path):
    path = tmp_path / "items.xlsx"
    path.write_text("x")
    with pytest.raises(CatalogError, match=r"unknown type '.xlsx'; expected .csv or .jsonl"):
        load_catalog(path)


def test_invalid_jsonl_line_names_file_and_line(tmp_path):
    path = tmp_path / "items.jsonl"
    path.write_text('{"item_id": "a", "text": "ok", "image_path": "a.png"}\n{not json}\n', encoding="utf-8")
    with pytest.raises(CatalogError, match=r"items\.jsonl:2: not valid JSON"):
        load_catalog(path)
