"""Fusion: raw encoder outputs -> the item space's compact, L2-normalised text and image parts.

Each modality gets its own PCA projection fitted on the catalog (optionally whitened,
so no single direction dominates cosine similarity), then rows are L2-normalised. The
two parts stay separate (users weigh them with their modality weight) and their
concatenation is the fused vector. Optionally a CLIP-style contrastive linear map
aligns the two parts, so an item's text and image vectors point the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from recsim_mm.device import cpu_threads
from recsim_mm.pca import principal_components

#: Valid values of ``alignment``.
ALIGNMENTS = ("pca", "contrastive")


@dataclass(frozen=True)
class PCAProjection:
    """A fitted per-modality projection ``x -> normalise((x - mean) @ components / scale)``.

    Attributes:
        mean: ``(D,)`` float32 catalog mean of the raw embeddings.
        components: ``(D, d)`` float32 orthonormal principal directions, by
            decreasing variance (sign fixed: largest-magnitude entry positive).
        scale: ``(d,)`` float32 divisor per component: its standard deviation when
            whitened, else ones.
        explained_variance_ratio: ``(d,)`` float32 share of total variance per component.
    """

    mean: torch.Tensor
    components: torch.Tensor
    scale: torch.Tensor
    explained_variance_ratio: torch.Tensor

    @classmethod
    def fit(cls, x: torch.Tensor, d: int, whiten: bool = True) -> PCAProjection:
        """Fit on raw embeddings.

        Args:
            x: ``(N, D)`` float raw embeddings of the catalog.
            d: output width; needs ``d <= min(N - 1, D)``.
            whiten: divide each component by its standard deviation.

        Raises:
            ValueError: ``d`` too large for the catalog or the encoder (names both).
        """
        n, width = x.shape
        if not (isinstance(d, int) and 1 <= d <= min(n - 1, width)):
            raise ValueError(
                f"projection size d={d!r} is not possible here: a PCA fitted on {n} items of "
                f"width {width} gives at most min(N - 1, D) = {min(n - 1, width)} components"
            )
        x = x.double()  # float64: small eigenvalues of whitening stay accurate
        with cpu_threads(x.device):
            mean, components, s = principal_components(x, d)
        components = components.T
        var = s**2 / max(n - 1, 1)
        std = var[:d].sqrt()
        if whiten and bool((std <= 1e-8 * std[0]).any()):
            raise ValueError(
                f"projection size d={d} keeps a component with (near) zero variance; the "
                "catalog's embeddings span fewer directions: use a smaller d"
            )
        scale = std if whiten else torch.ones(d, dtype=x.dtype)
        return cls(
            mean=mean.float(),
            components=components.float(),
            scale=scale.float(),
            explained_variance_ratio=(var[:d] / var.sum()).float(),
        )

    def transform(self, x: torch.Tensor, normalise: bool = True) -> torch.Tensor:
        """Project ``(N, D)`` raw embeddings to ``(N, d)`` float32 (L2-normalised rows
        unless ``normalise=False``)."""
        z = ((x.float() - self.mean) @ self.components) / self.scale
        return F.normalize(z, dim=-1) if normalise else z


def contrastive_alignment(
    text: torch.Tensor,
    image: torch.Tensor,
    d: int,
    steps: int = 300,
    temperature: float = 0.1,
    lr: float = 0.01,
    weight_decay: float = 1e-4,
    batch_size: int = 1024,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Learn CLIP-style linear maps that put an item's text and image in one space.

    Symmetric InfoNCE over minibatches of items: text ``i`` must pick image ``i`` among
    the batch's images and vice versa. Maps start at the plain projection onto the
    first ``d`` inputs (the PCA solution), so training only moves away from it where
    it aligns the modalities.

    Args:
        text: ``(N, p_t)`` float32 PCA features (unnormalised), ``p_t >= d``.
        image: ``(N, p_i)`` float32 PCA features (unnormalised), ``p_i >= d``.
        d: output width of both parts.
        steps, temperature, lr, weight_decay, batch_size: optimisation settings.
        seed: seed of minibatch sampling (same seed -> same maps).

    Returns:
        ``(W_text (p_t, d), W_image (p_i, d))`` float32 maps.
    """
    n = text.shape[0]
    g = torch.Generator().manual_seed(seed)
    w_text = torch.eye(text.shape[1], d).requires_grad_(True)
    w_image = torch.eye(image.shape[1], d).requires_grad_(True)
    opt = torch.optim.AdamW([w_text, w_image], lr=lr, weight_decay=weight_decay)
    labels = torch.arange(min(n, batch_size))
    with cpu_threads(text.device):
        for _ in range(steps):
            rows = torch.randperm(n, generator=g)[:batch_size] if n > batch_size else torch.arange(n)
            zt = F.normalize(text[rows] @ w_text, dim=-1)
            zi = F.normalize(image[rows] @ w_image, dim=-1)
            logits = zt @ zi.T / temperature
            loss = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
            opt.zero_grad()
            loss.backward()
            opt.step()
    return w_text.detach(), w_image.detach()


def fuse(
    text: torch.Tensor,
    image: torch.Tensor,
    d_text: int = 32,
    d_image: int = 32,
    alignment: Literal["pca", "contrastive"] = "pca",
    whiten: bool = False,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Project raw embeddings to the item space's text and image parts.

    Args:
        text: ``(N, D_text)`` float raw text embeddings.
        image: ``(N, D_image)`` float raw image embeddings.
        d_text, d_image: part widths (``alignment="contrastive"`` needs them equal).
        alignment: ``"pca"`` (independent per-modality PCA) or ``"contrastive"``
            (PCA to a wider size, then a learned contrastive linear map per modality).
        whiten: whiten the PCA components. Off by default: on the synthetic catalog
            whitening gives the noise directions as much weight as the topic
            directions (same-topic vs other-topic AUC of text 0.89 -> 0.77).
        seed: seed of the contrastive training.

    Returns:
        ``(text_part (N, d_text), image_part (N, d_image))`` float32, rows L2-normalised.

    Raises:
        ValueError: unknown alignment, unequal sizes for contrastive, or a size the
            catalog cannot support.
    """
    if alignment not in ALIGNMENTS:
        raise ValueError(f"unknown alignment {alignment!r}; expected one of {ALIGNMENTS}")
    if text.shape[0] != image.shape[0]:
        raise ValueError(f"text has {text.shape[0]} rows but image has {image.shape[0]}; expected one per item")
    if alignment == "pca":
        return (
            PCAProjection.fit(text, d_text, whiten).transform(text),
            PCAProjection.fit(image, d_image, whiten).transform(image),
        )
    if d_text != d_image:
        raise ValueError(
            f"alignment='contrastive' maps text and image into one space, so d_text and "
            f"d_image must be equal; got d_text={d_text}, d_image={d_image}"
        )
    n = text.shape[0]
    # A wider PCA than the output gives the learned map directions to choose from.
    wide_t = min(4 * d_text, n - 1, text.shape[1])
    wide_i = min(4 * d_image, n - 1, image.shape[1])
    zt = PCAProjection.fit(text, max(wide_t, d_text), whiten).transform(text, normalise=False)
    zi = PCAProjection.fit(image, max(wide_i, d_image), whiten).transform(image, normalise=False)
    w_text, w_image = contrastive_alignment(zt, zi, d_text, seed=seed)
    return F.normalize(zt @ w_text, dim=-1), F.normalize(zi @ w_image, dim=-1)


def topic_separation(vectors: torch.Tensor, labels: torch.Tensor, center: bool = True) -> tuple[float, float]:
    """How well vectors separate items by topic (a diagnostic, also used by the tests).

    Cosine similarity over all item pairs, split into pairs sharing a label and pairs
    that do not.

    Args:
        vectors: ``(N, D)`` float embeddings (raw or projected).
        labels: ``(N,)`` int64 label per item, e.g. the dominant topic.
        center: subtract the mean vector first (raw encoder outputs share a large
            common component that hides the structure in plain cosines).

    Returns:
        ``(margin, auc)``: mean same-label cosine minus mean different-label cosine,
        and the probability that a random same-label pair is more similar than a
        random different-label pair (0.5 = no separation, 1 = perfect).
    """
    x = vectors.double()
    x = F.normalize(x - x.mean(0) if center else x, dim=-1)
    sim = x @ x.T
    same = labels[:, None] == labels[None, :]
    upper = torch.ones_like(same).triu(1)
    pos, neg = sim[same & upper], sim[~same & upper]
    if pos.numel() == 0 or neg.numel() == 0:
        raise ValueError("topic_separation needs at least one same-label and one different-label pair")
    ranks = torch.cat([pos, neg]).argsort().argsort().double()
    auc = (ranks[: pos.numel()].mean() - (pos.numel() - 1) / 2) / neg.numel()
    return float(pos.mean() - neg.mean()), float(auc)
