"""Device selection: one rule for every component (`device="auto"`)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

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


#: Most torch threads `default_torch_threads` picks: the small batched ops of this
#: project (K x d scoring, SB3 updates on a few hundred rows) stop gaining beyond a few.
MAX_DEFAULT_THREADS = 4


def default_torch_threads() -> int:
    """Torch CPU threads an experiment uses unless told otherwise: half the machine's
    cores, at least 1 and at most `MAX_DEFAULT_THREADS`.

    Half, as in `default_cpu_threads`: with every core busy, torch's threads wait at
    each barrier for a descheduled partner, and the many small ops of RL training run
    several times slower than on fewer threads (measured: the quick preset on 2 cores
    loaded by other jobs spent over 15 minutes in its agent stage on 2 threads; the whole
    preset took 2.6 minutes on 1). ``threads=N`` overrides it.
    """
    return max(1, min((os.cpu_count() or 2) // 2, MAX_DEFAULT_THREADS))


def default_cpu_threads() -> int:
    """Torch threads that compute-heavy content code (encoders, fusion) uses on CPU
    unless told otherwise: half the cores (at least 1, at most torch's setting).

    Why not all cores: when other jobs share the cores, torch threads spin at each
    barrier while a partner thread is descheduled, and convolutions and SVDs can run
    several times slower than on fewer threads; half the cores keeps most of the speed
    on an idle machine and avoids that collapse on a busy one.
    """
    return max(1, min(torch.get_num_threads(), (os.cpu_count() or 2) // 2))


@contextmanager
def cpu_threads(device: torch.device, num_threads: int | None = None) -> Iterator[None]:
    """Run the block with ``num_threads`` torch threads on CPU (default
    `default_cpu_threads`), restoring the previous setting after; no-op on CUDA."""
    if device.type != "cpu":
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(num_threads or default_cpu_threads())
    try:
        yield
    finally:
        torch.set_num_threads(previous)
