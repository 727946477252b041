"""The item space: every item's multimodal vectors and attributes, as one frozen table.

This is the contract between the content pipeline (catalog -> encoders -> fusion)
and everything downstream (users, simulator, environments, scorer, agents). Rows are
items, in catalog order; row ``i`` of every tensor describes ``item_ids[i]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from recsim_mm.files import atomic_torch_save, load_checkpoint


def match_rows(table: torch.Tensor, vectors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The row of ``table`` each vector is, found by the largest dot product.

    Args:
        table: ``(N, d)`` float32 item vectors (``ItemSpace.fused``).
        vectors: ``(..., d)`` float32 vectors that should be rows of it.

    Returns:
        ``rows`` ``(...)`` int64 and ``exact`` ``(...)`` bool: whether the vector equals its
        row (elementwise within ``1e-5 + 1e-5 x |row|``, as ``torch.allclose``); a vector
        that is no row (another item space, padding) has ``exact`` False.
    """
    flat = vectors.reshape(-1, vectors.shape[-1]).float()
    rows = (flat @ table.T).argmax(dim=-1)
    matched = table.index_select(0, rows)
    exact = ((matched - flat).abs() <= 1e-5 + 1e-5 * matched.abs()).all(dim=-1)
    return rows.reshape(vectors.shape[:-1]), exact.reshape(vectors.shape[:-1])


@dataclass(frozen=True)
class ItemSpace:
    """Frozen per-item tensors that the simulator and the policies read.

    Attributes:
        item_ids: ``N`` unique item ids (strings), in row order.
        text: ``(N, d_text)`` float32, L2-normalised rows: the text part (projected
            BERT-family embedding).
        image: ``(N, d_image)`` float32, L2-normalised rows: the image part
            (projected CNN embedding).
        quality: ``(N,)`` float32 in [0, 1]: intrinsic item quality.
        duration: ``(N,)`` float32, minutes: time a full consumption takes.
        topics: ``(N, T)`` float32 rows summing to 1 (latent topic mixture) when the
            catalog knows it (synthetic catalogs do), else ``None``. Only simulated
            users may read it; policies must not.
        fused: ``(N, d_text + d_image)`` float32, ``cat([text, image], -1)``; derived,
            not passed in.
    """

    item_ids: tuple[str, ...]
    text: torch.Tensor
    image: torch.Tensor
    quality: torch.Tensor
    duration: torch.Tensor
    topics: torch.Tensor | None = None
    fused: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        n = len(self.item_ids)
        if n == 0:
            raise ValueError("ItemSpace needs at least one item; got an empty item_ids")
        if len(set(self.item_ids)) != n:
            seen: set[str] = set()
            dup = next(i for i in self.item_ids if i in seen or seen.add(i))
            raise ValueError(f"ItemSpace item_ids must be unique; {dup!r} appears more than once")
        expected = {"text": 2, "image": 2, "quality": 1, "duration": 1, "topics": 2}
        for name, ndim in expected.items():
            value = getattr(self, name)
            if value is None and name == "topics":
                continue
            if not isinstance(value, torch.Tensor) or value.ndim != ndim or value.shape[0] != n:
                shape = getattr(value, "shape", type(value).__name__)
                raise ValueError(
                    f"ItemSpace.{name} must be a tensor with {ndim} dims and {n} rows "
                    f"(one per item); got {shape}"
                )
            if value.dtype != torch.float32:
                raise ValueError(f"ItemSpace.{name} must be float32; got {value.dtype}")
            if not torch.isfinite(value).all():
                bad = int((~torch.isfinite(value)).reshape(n, -1).any(-1).nonzero()[0, 0])
                raise ValueError(
                    f"ItemSpace.{name} has a NaN or infinite value at item {self.item_ids[bad]!r}"
                )
        if self.text.device != self.image.device:
            raise ValueError("ItemSpace.text and ItemSpace.image must live on the same device")
        object.__setattr__(self, "fused", torch.cat([self.text, self.image], dim=-1))

    @property
    def num_items(self) -> int:
        """Number of items ``N``."""
        return len(self.item_ids)

    @property
    def d_text(self) -> int:
        """Width of the text part."""
        return self.text.shape[1]

    @property
    def d_image(self) -> int:
        """Width of the image part."""
        return self.image.shape[1]

    @property
    def dim(self) -> int:
        """Width of the fused vector, ``d_text + d_image``."""
        return self.fused.shape[1]

    @property
    def device(self) -> torch.device:
        """Device the tensors live on."""
        return self.text.device

    def index_of(self, item_ids: list[str] | tuple[str, ...]) -> torch.Tensor:
        """Map item ids to row indices.

        Returns:
            ``(len(item_ids),)`` int64 tensor of rows.

        Raises:
            KeyError: an id is not in this item space (the first such id is named).
        """
        lookup = self._lookup()
        rows = []
        for item_id in item_ids:
            if item_id not in lookup:
                raise KeyError(f"item id {item_id!r} is not in this item space ({self.num_items} items)")
            rows.append(lookup[item_id])
        return torch.tensor(rows, dtype=torch.long)

    def _lookup(self) -> dict[str, int]:
        cached = self.__dict__.get("_lookup_cache")
        if cached is None:
            cached = {item_id: row for row, item_id in enumerate(self.item_ids)}
            object.__setattr__(self, "_lookup_cache", cached)
        return cached

    def to(self, device: torch.device | str) -> ItemSpace:
        """Return a copy whose tensors live on ``device``."""
        return ItemSpace(
            item_ids=self.item_ids,
            text=self.text.to(device),
            image=self.image.to(device),
            quality=self.quality.to(device),
            duration=self.duration.to(device),
            topics=None if self.topics is None else self.topics.to(device),
        )

    def fingerprint(self) -> str:
        """A short hash of ids and vectors: checkpoints trained on one item space
        refuse to load on another."""
        import hashlib

        h = hashlib.sha256()
        h.update("\n".join(self.item_ids).encode())
        for t in (self.text, self.image):
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def save(self, path: str | Path) -> None:
        """Write to ``path`` (a ``.pt`` file readable with ``weights_only=True``), atomically."""
        payload = {
            "format": "recsim_mm.ItemSpace/1",
            "item_ids": list(self.item_ids),
            "text": self.text.cpu(),
            "image": self.image.cpu(),
            "quality": self.quality.cpu(),
            "duration": self.duration.cpu(),
            "topics": None if self.topics is None else self.topics.cpu(),
        }
        atomic_torch_save(payload, path)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> ItemSpace:
        """Read an item space written by `save` (``weights_only=True``).

        Raises:
            ValueError: the file is not a saved ItemSpace (names the file).
        """
        payload = load_checkpoint(path, "recsim_mm.ItemSpace/1", "ItemSpace file", map_location=device)
        return cls(
            item_ids=tuple(payload["item_ids"]),
            text=payload["text"],
            image=payload["image"],
            quality=payload["quality"],
            duration=payload["duration"],
            topics=payload["topics"],
        )

    @classmethod
    def random(
        cls,
        num_items: int,
        d_text: int = 32,
        d_image: int = 32,
        num_topics: int = 8,
        seed: int = 0,
        device: str | torch.device = "cpu",
    ) -> ItemSpace:
        """A clustered random item space with no content behind it.

        For throughput benchmarks and scale tests that must not pay for encoding;
        every simulation that claims meaning uses the encoded catalog
        (`recsim_mm.pipeline.default_item_space`). Items are noisy copies of
        ``num_topics`` random topic centres, independently per modality.
        """
        g = torch.Generator().manual_seed(seed)
        topic = torch.randint(num_topics, (num_items,), generator=g)
        mixture = torch.nn.functional.one_hot(topic, num_topics).float()

        def part(d: int) -> torch.Tensor:
            centres = torch.randn(num_topics, d, generator=g)
            v = centres[topic] + 0.8 * torch.randn(num_items, d, generator=g)
            return torch.nn.functional.normalize(v, dim=-1)

        text, image = part(d_text), part(d_image)
        quality = torch.rand(num_items, generator=g)
        duration = 2.0 + 8.0 * torch.rand(num_items, generator=g)
        width = max(1, math.ceil(math.log10(num_items + 1)))
        return cls(
            item_ids=tuple(f"item{i:0{width}d}" for i in range(num_items)),
            text=text,
            image=image,
            quality=quality,
            duration=duration,
            topics=mixture,
        ).to(device)
