"""Fresh noise for the renderers' noise injection, drawn per global batch.

Training draws new ``N(0, 1)`` noise per sample at every noise layer (the StyleUNet's
``StyleConv``, the tiny model's renderer). In data-parallel training each process holds rows
``start .. start + b - 1`` of a global batch of ``B`` samples; inside :func:`global_batch_rows`
every draw is made for the whole global batch (from the generator that every process seeded
alike) and the process keeps its own rows, so N processes see exactly the noise that one process
with the global batch draws. Outside it, a draw is for the batch at hand.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

_rows: tuple[int, int] | None = None
"""``(start, total)`` inside :func:`global_batch_rows`. A plain module variable, not a ContextVar:
``torch.compile`` traces it (and guards on it) where a ContextVar would break the graph."""


@contextmanager
def global_batch_rows(start: int, total: int) -> Iterator[None]:
    """Within the block, :func:`fresh_noise` draws for ``total`` samples and returns rows
    ``start ..`` (as many as the features have). Process-wide: for one training step at a time."""
    global _rows
    previous, _rows = _rows, (start, total)
    try:
        yield
    finally:
        _rows = previous


def fresh_noise(features: torch.Tensor) -> torch.Tensor:
    """``[B, 1, H, W]`` standard normal noise (the dtype and device of ``features [B, C, H, W]``)."""
    start, total = _rows or (0, features.shape[0])
    noise = torch.randn(total, 1, *features.shape[2:], dtype=features.dtype, device=features.device)
    return noise[start:start + features.shape[0]]
