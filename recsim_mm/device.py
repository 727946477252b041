"""Device selection: one rule for every component (`device="auto"`)."""

from __future__ import annotations

import torch


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn a user's device request into a `torch.device`.

    Args:
        device: ``"auto"`` (CUDA when available, else CPU), or anything
            `torch.device` accepts (``"cpu"``, ``"cuda"``, ``"cuda:1"``).

    Returns:
        The resolved `torch.device`.

    Raises:
        ValueError: the string is not a device name, or CUDA was asked for
            on a machine without it.
    """
    if isinstance(device, torch.device):
        resolved = device
    elif device == "auto":
        resolved = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            resolved = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ValueError(
                f"device={device!r} is not a device; expected 'auto', 'cpu', 'cuda' or 'cuda:N'"
            ) from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} asks for CUDA, but torch sees no CUDA device here")
    return resolved
