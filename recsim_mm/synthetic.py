"""Deterministic synthetic catalog: items whose text and image are two noisy views of
a latent topic mixture.

Each item draws a dominant topic and a topic mixture around it. Its description is written word by
word from templates, each content word taken from the vocabulary of a topic drawn
from that mixture, with some words from a random topic and some generic filler
(real English words, so a pretrained text encoder's semantics matter). Its image is
drawn independently: a background gradient, shapes and a texture, each element's
style (palette, shape kind, texture) taken from a topic drawn from the same mixture,
plus per-item colour jitter and pixel noise. Neither view alone is the whole truth.
Same arguments -> identical catalog, bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from recsim_mm.catalog import Catalog, Item


@dataclass(frozen=True)
class TopicStyle:
    """What one topic looks like and reads like.

    Attributes:
        name: topic name.
        nouns, adjectives, verbs: topic vocabulary (verbs in -ing form); a few words
            deliberately appear in more than one topic.
        palette: 3 RGB colours (0-255).
        shape: shape kind drawn for this topic (see `_draw_shape`).
        texture: texture kind overlaid for this topic (see `_texture`).
        duration: typical duration in minutes.
    """

    name: str
    nouns: tuple[str, ...]
    adjectives: tuple[str, ...]
    verbs: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    shape: str
    texture: str
    duration: float


def _t(name, nouns, adjectives, verbs, palette, shape, texture, duration) -> TopicStyle:
    return TopicStyle(name, tuple(nouns.split()), tuple(adjectives.split()), tuple(verbs.split()),
                      palette, shape, texture, duration)  # fmt: skip


# Shared words on purpose ("star", "record", "season", "field", "market", "engine",
# "wave", "classic", "gallery"...): the text is informative, not a lookup table.
TOPICS: tuple[TopicStyle, ...] = (
    _t("cooking", "recipe kitchen chef pasta oven garlic sauce dough soup spices dessert bread butter market",
       "delicious crispy savory homemade spicy tender", "baking roasting simmering tasting seasoning",
       ((200, 60, 30), (250, 180, 60), (120, 160, 60)), "circle", "dots", 12.0),
    _t("football", "goal striker stadium match league referee penalty season team coach fans pitch field star",
       "decisive thrilling defensive tactical", "scoring tackling passing dribbling",
       ((30, 140, 50), (240, 240, 240), (20, 40, 140)), "square", "stripes_v", 10.0),
    _t("space", "planet rocket galaxy orbit astronaut telescope nebula comet moon star launch satellite universe",
       "cosmic distant stellar lunar interstellar", "orbiting launching exploring observing",
       ((15, 15, 60), (90, 60, 180), (240, 240, 200)), "star", "grain", 20.0),
    _t("jazz", "saxophone trumpet improvisation swing quartet melody piano record club bass rhythm blues solo",
       "smooth classic soulful syncopated mellow", "improvising swinging playing recording",
       ((120, 40, 90), (230, 170, 40), (30, 20, 30)), "ring", "rings", 6.0),
    _t("gardening", "garden roses seeds soil compost tomatoes flowers hedge shrubs harvest greenhouse field season",
       "blooming organic leafy green seasonal", "planting pruning watering growing",
       ((60, 150, 50), (230, 110, 150), (110, 80, 40)), "triangle", "grain", 9.0),
    _t("travel", "journey passport beach island museum hotel flight backpack city mountains itinerary market",
       "scenic exotic hidden coastal remote", "exploring wandering hiking discovering",
       ((40, 170, 210), (240, 210, 150), (230, 90, 50)), "diamond", "stripes_h", 15.0),
    _t("fitness", "workout muscles cardio yoga squat treadmill stretching protein gym running record coach",
       "intense strong healthy lean", "training lifting sprinting stretching",
       ((240, 60, 60), (30, 30, 30), (250, 200, 0)), "bar", "stripes_d", 25.0),
    _t("finance", "stocks investing portfolio budget savings market interest dividends bank inflation pension",
       "profitable fiscal risky financial", "investing saving trading budgeting",
       ((20, 80, 60), (200, 170, 60), (220, 220, 210)), "cross", "checker", 11.0),
    _t("cinema", "film director actor screenplay premiere camera scene trailer festival oscar star classic",
       "cinematic dramatic suspenseful animated", "filming directing acting screening",
       ((140, 10, 20), (20, 20, 20), (230, 190, 90)), "hexagon", "stripes_h", 30.0),
    _t("wildlife", "lion elephant safari jungle predator birds habitat wolves tigers savanna migration",
       "wild endangered majestic feral", "hunting tracking migrating roaming",
       ((170, 120, 50), (90, 110, 40), (60, 40, 20)), "triangle", "spots", 22.0),
    _t("computing", "software algorithm programming laptop code processor database internet robot engine data",
       "digital binary fast automated", "coding debugging computing compiling",
       ((0, 200, 220), (30, 30, 70), (120, 250, 120)), "square", "checker", 14.0),
    _t("fashion", "dress runway designer fabric style boutique model jeans jacket collection season market",
       "elegant trendy stylish vintage classic", "wearing designing sewing styling",
       ((230, 120, 180), (250, 240, 230), (80, 40, 100)), "diamond", "dots", 7.0),
    _t("history", "empire ancient war castle king archaeology medieval revolution century dynasty record",
       "historic ancient royal forgotten", "conquering ruling excavating remembering",
       ((150, 110, 70), (90, 60, 40), (200, 180, 140)), "hexagon", "grain", 28.0),
    _t("motoring", "car engine racing wheels motorbike garage tyres speed driver circuit fuel",
       "fast powerful electric turbo", "driving racing overtaking tuning",
       ((200, 20, 20), (100, 100, 110), (250, 200, 20)), "bar", "stripes_v", 13.0),
    _t("ocean", "ocean waves coral reef sailing dolphins sharks tide boat diving whale surf",
       "deep blue tropical salty", "sailing diving swimming surfing",
       ((10, 60, 140), (40, 190, 200), (240, 250, 250)), "wave", "rings", 18.0),
    _t("painting", "canvas brushes portrait watercolour gallery palette sketch museum artist landscape easel",
       "colourful abstract impressionist vivid", "painting sketching drawing mixing",
       ((250, 200, 40), (40, 80, 200), (220, 40, 60)), "circle", "spots", 16.0),
)  # fmt: skip

GENERIC_WORDS = tuple(
    "story guide week people ideas tips world life moments favourite new best simple "
    "great little big today weekend friends video episode series".split()
)
_TITLE_TEMPLATES = (
    "The {a} {n}",
    "{V} the {n}",
    "{N} and {n}",
    "A {a} guide to {n}",
    "{N}: {a} {n}",
    "Why {n} matters",
)
_SENTENCE_TEMPLATES = (
    "A {a} look at {n} and {n}.",
    "We spend the {g} {v} with a {n} and some {a} {n}.",
    "This {g} is all about {n}, {n} and {v}.",
    "Expect {a} {n}, plenty of {n} and a {g} {g}.",
    "{V} the {n} is {a} when the {n} is right.",
    "Our {g} {n} takes you from {n} to {a} {n}.",
    "Tips on {v} and {v} for every {n}.",
    "The {n} meets the {n} in a {a} {g}.",
)


def generate_catalog(
    num_items: int = 600,
    num_topics: int = 10,
    seed: int = 0,
    image_size: int = 128,
    dominance: tuple[float, float] = (0.5, 0.9),
    concentration: float = 0.5,
    text_noise: float = 0.25,
    image_noise: float = 0.1,
) -> Catalog:
    """Build a synthetic catalog, deterministic in its arguments.

    Args:
        num_items: number of items ``N`` (ids ``"item0000"``, ...).
        num_topics: number of latent topics ``T`` (at most ``len(TOPICS)`` = 16).
        seed: seed of every random draw.
        image_size: image side in pixels (32-512; the default 128 suits CNN encoders
            cheaply, since they are fully convolutional).
        dominance: range of the dominant topic's share of the mixture; each item's
            share is uniform in it, the rest spread by a Dirichlet.
        concentration: Dirichlet parameter spreading the non-dominant share
            (smaller -> fewer secondary topics).
        text_noise: probability that a content word comes from a uniformly random topic
            instead of the item's mixture.
        image_noise: probability that an image element takes a uniformly random
            topic's style instead of the item's mixture.

    Returns:
        A `Catalog` with in-memory ``(image_size, image_size, 3)`` uint8 images,
        ``topics`` ``(T,)`` mixtures, ``quality`` in [0, 1], ``duration`` in minutes
        and ``metadata["dominant_topic"]`` (the mixture's argmax topic name).

    Raises:
        ValueError: an argument out of range (names it and the valid range).
    """
    if not (isinstance(num_items, int) and num_items >= 1):
        raise ValueError(f"num_items={num_items!r}; expected an integer >= 1")
    if not (isinstance(num_topics, int) and 2 <= num_topics <= len(TOPICS)):
        raise ValueError(f"num_topics={num_topics!r}; expected an integer in [2, {len(TOPICS)}]")
    if not (isinstance(image_size, int) and 32 <= image_size <= 512):
        raise ValueError(f"image_size={image_size!r}; expected an integer in [32, 512]")
    if not 0.0 < dominance[0] <= dominance[1] <= 1.0:
        raise ValueError(f"dominance={dominance!r}; expected (low, high) with 0 < low <= high <= 1")
    if not concentration > 0:
        raise ValueError(f"concentration={concentration!r}; expected a positive number")
    for name, p in (("text_noise", text_noise), ("image_noise", image_noise)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name}={p!r}; expected a probability in [0, 1]")

    topics = TOPICS[:num_topics]
    rng = np.random.default_rng(seed)
    dominant_topic = rng.integers(num_topics, size=num_items)
    share = rng.uniform(dominance[0], dominance[1], size=num_items)
    rest = rng.dirichlet(np.full(num_topics, concentration), size=num_items)
    mixtures = (1.0 - share)[:, None] * rest
    mixtures[np.arange(num_items), dominant_topic] += share
    mixtures = mixtures.astype(np.float32)
    # Dirichlet draws can underflow to exact zeros; renormalise in float32 so rows sum to 1.
    mixtures /= mixtures.sum(axis=1, keepdims=True)
    quality = rng.beta(2.0, 2.0, size=num_items)
    width = max(4, len(str(num_items - 1)))
    items = []
    for row in range(num_items):
        # One child generator per item: item i's content does not depend on how many
        # random numbers earlier items consumed.
        item_rng = np.random.default_rng([seed, row])
        mixture = mixtures[row]
        dominant = int(mixture.argmax())
        title, description = _write_text(item_rng, mixture, topics, text_noise)
        image = _draw_image(item_rng, mixture, topics, image_noise, image_size)
        duration = float(np.round(topics[dominant].duration * item_rng.lognormal(0.0, 0.35), 2))
        items.append(
            Item(
                item_id=f"item{row:0{width}d}",
                title=title,
                description=description,
                image=image,
                topics=mixture,
                quality=float(round(quality[row], 4)),
                duration=max(duration, 0.5),
                metadata={"dominant_topic": topics[dominant].name},
            )
        )
    source = (
        f"synthetic(num_items={num_items}, num_topics={num_topics}, seed={seed}, "
        f"image_size={image_size})"
    )
    return Catalog(items=tuple(items), topic_names=tuple(t.name for t in topics), source=source)


def _pick_topic(rng: np.random.Generator, mixture: np.ndarray, noise: float) -> int:
    if rng.random() < noise:
        return int(rng.integers(len(mixture)))
    return int(rng.choice(len(mixture), p=mixture / mixture.sum()))


def _fill(template: str, rng: np.random.Generator, mixture, topics, noise: float) -> str:
    def word(kind: str) -> str:
        if kind == "g":
            return str(rng.choice(GENERIC_WORDS))
        style = topics[_pick_topic(rng, mixture, noise)]
        pool = {"n": style.nouns, "a": style.adjectives, "v": style.verbs}[kind]
        return str(rng.choice(pool))

    out, i = [], 0
    while i < len(template):
        if template[i] == "{":
            key = template[i + 1]
            w = word(key.lower())
            out.append(w.capitalize() if key.isupper() else w)
            i += 3
        else:
            out.append(template[i])
            i += 1
    return "".join(out)


def _write_text(rng, mixture, topics, noise) -> tuple[str, str]:
    title = _fill(_TITLE_TEMPLATES[rng.integers(len(_TITLE_TEMPLATES))], rng, mixture, topics, noise)
    title = title[0].upper() + title[1:]
    count = int(rng.integers(1, 5))  # 1-4 sentences: varied length
    sentences = [
        _fill(_SENTENCE_TEMPLATES[k], rng, mixture, topics, noise)
        for k in rng.choice(len(_SENTENCE_TEMPLATES), size=count, replace=False)
    ]
    return title, " ".join(s[0].upper() + s[1:] for s in sentences)


def _jitter(rng: np.random.Generator, colour, amount: float = 28.0) -> tuple[int, int, int]:
    c = np.asarray(colour, dtype=np.float64) + rng.normal(0.0, amount, size=3)
    return tuple(int(v) for v in np.clip(c, 0, 255))


def _draw_image(rng, mixture, topics, noise: float, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    # Background: gradient between two colours of one topic's palette.
    bg = topics[_pick_topic(rng, mixture, noise)]
    c0 = np.asarray(_jitter(rng, bg.palette[0]), dtype=np.float32)
    c1 = np.asarray(_jitter(rng, bg.palette[int(rng.integers(1, 3))]), dtype=np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    ramp = np.clip(0.5 + (xx - 0.5) * math.cos(angle) + (yy - 0.5) * math.sin(angle), 0, 1)
    pixels = c0 * (1 - ramp[..., None]) + c1 * ramp[..., None]

    # Texture of one topic, blended at partial opacity.
    tex = topics[_pick_topic(rng, mixture, noise)]
    mask = _texture(tex.texture, xx, yy, rng)
    tex_colour = np.asarray(_jitter(rng, tex.palette[int(rng.integers(3))]), dtype=np.float32)
    pixels = pixels * (1 - 0.35 * mask[..., None]) + tex_colour * 0.35 * mask[..., None]

    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(4, 10))):
        style = topics[_pick_topic(rng, mixture, noise)]
        colour = _jitter(rng, style.palette[int(rng.integers(3))])
        _draw_shape(draw, style.shape, rng, size, colour)

    out = np.asarray(image, dtype=np.float32)
    out += rng.normal(0.0, 10.0, size=out.shape)  # sensor-like pixel noise
    return np.clip(out, 0, 255).astype(np.uint8)


def _texture(kind: str, xx: np.ndarray, yy: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    freq = rng.uniform(10, 18)
    phase = rng.uniform(0, 2 * math.pi)
    if kind == "stripes_v":
        return (np.sin(xx * freq * 2 + phase) > 0).astype(np.float32)
    if kind == "stripes_h":
        return (np.sin(yy * freq * 2 + phase) > 0).astype(np.float32)
    if kind == "stripes_d":
        return (np.sin((xx + yy) * freq * 1.5 + phase) > 0).astype(np.float32)
    if kind == "checker":
        return ((np.floor(xx * freq / 2) + np.floor(yy * freq / 2)) % 2).astype(np.float32)
    if kind == "dots":
        return ((np.sin(xx * freq * 2 + phase) * np.sin(yy * freq * 2 + phase)) > 0.6).astype(np.float32)
    if kind == "rings":
        cx, cy = rng.uniform(0.2, 0.8, size=2)
        r = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
        return (np.sin(r * freq * 3 + phase) > 0).astype(np.float32)
    if kind == "spots":
        return (rng.random(xx.shape) < 0.04).astype(np.float32)
    if kind == "grain":
        return rng.random(xx.shape).astype(np.float32)
    raise ValueError(f"unknown texture kind {kind!r}")


def _regular_polygon(cx, cy, r, sides, rotation, inner: float | None = None):
    points = []
    count = sides * (2 if inner else 1)
    for k in range(count):
        radius = r if (inner is None or k % 2 == 0) else r * inner
        theta = rotation + 2 * math.pi * k / count
        points.append((cx + radius * math.cos(theta), cy + radius * math.sin(theta)))
    return points


def _draw_shape(draw: ImageDraw.ImageDraw, kind: str, rng, size: int, colour) -> None:
    cx, cy = rng.uniform(0.1, 0.9, size=2) * size
    r = rng.uniform(0.07, 0.2) * size
    rot = rng.uniform(0, 2 * math.pi)
    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif kind == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=colour, width=max(2, int(r / 3)))
    elif kind == "square":
        draw.polygon(_regular_polygon(cx, cy, r, 4, rot), fill=colour)
    elif kind == "triangle":
        draw.polygon(_regular_polygon(cx, cy, r, 3, rot), fill=colour)
    elif kind == "diamond":
        pts = [(cx, cy - r * 1.3), (cx + r * 0.7, cy), (cx, cy + r * 1.3), (cx - r * 0.7, cy)]
        draw.polygon(pts, fill=colour)
    elif kind == "star":
        draw.polygon(_regular_polygon(cx, cy, r, 5, rot, inner=0.4), fill=colour)
    elif kind == "hexagon":
        draw.polygon(_regular_polygon(cx, cy, r, 6, rot), fill=colour)
    elif kind == "bar":
        dx, dy = math.cos(rot) * r * 1.5, math.sin(rot) * r * 1.5
        draw.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=colour, width=max(3, int(r / 2.5)))
    elif kind == "cross":
        w = max(3, int(r / 3))
        draw.line([(cx - r, cy), (cx + r, cy)], fill=colour, width=w)
        draw.line([(cx, cy - r), (cx, cy + r)], fill=colour, width=w)
    elif kind == "wave":
        xs = np.linspace(cx - 1.5 * r, cx + 1.5 * r, 24)
        ys = cy + 0.4 * r * np.sin((xs - cx) / r * math.pi * 1.5 + rot)
        draw.line(list(zip(xs.tolist(), ys.tolist(), strict=True)), fill=colour, width=max(3, int(r / 4)))
    else:
        raise ValueError(f"unknown shape kind {kind!r}")
