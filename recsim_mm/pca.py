"""Principal components with a deterministic sign: the one PCA used across recsim_mm.

`principal_components` centres a matrix, takes its thin SVD and fixes each
component's arbitrary SVD sign (its largest-magnitude loading is made positive), so
the same data always gives the same directions. Used by `recsim_mm.fusion`
(per-modality projections); the creators' content map in `envs.ecosystems.creators`
computes the same thing.
"""

from __future__ import annotations

import torch


def principal_components(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The top ``k`` principal directions of the rows of ``x``.

    Computed in ``x``'s dtype and on its device (pass float64 where small eigenvalues
    matter, e.g. before whitening). The caller checks ``k`` against its own limits.

    Args:
        x: ``(N, D)`` float data, one row per sample.
        k: number of components, ``1 <= k <= min(N, D)``.

    Returns:
        ``(mean (D,), components (k, D), singular_values (min(N, D),))``: the row mean;
        orthonormal directions by decreasing variance, each signed so its
        largest-magnitude entry is positive; all singular values of ``x - mean``
        (the variance along component ``i`` is ``singular_values[i] ** 2 / (N - 1)``).
    """
    mean = x.mean(0)
    _, singular_values, vh = torch.linalg.svd(x - mean, full_matrices=False)
    components = vh[:k]
    pivot = components.abs().argmax(1, keepdim=True)
    signs = components.gather(1, pivot).sign()
    components = components * torch.where(signs == 0, 1.0, signs)
    return mean, components, singular_values
