"""Shape checks of the tensor API: every tensor input is ``[B, *dims]`` or, unbatched, ``[*dims]``.

As in gsplat, a leading batch dimension is optional. Batch sizes must agree; size 1 and unbatched
inputs are shared by the whole batch, and the outputs are unbatched when every input is.
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from .errors import GAGAvatarError


class ShapeError(GAGAvatarError, ValueError):
    """A tensor of the wrong shape; ``str(err)`` is one line naming the argument, the expected and
    the given shapes (or the two batch sizes that disagree)."""


def batch_size(where: str, name: str, t: Tensor, dims: Sequence[int | str], batch: str = "B") -> int | None:
    """``B`` if ``t`` is ``[B, *dims]``, ``None`` if it is unbatched ``[*dims]``, else a :class:`ShapeError`.

    Args:
        where: the function, named first in the message (``"render_gaussians"``).
        name: the argument.
        dims: the unbatched shape: ints are required sizes, strings any size (their name is shown).
        batch: the batch dimension's name in the message (``"T"`` for frames).
    """
    rank = len(dims)
    tail = t.shape[t.dim() - rank:]
    if t.dim() in (rank, rank + 1) and all(isinstance(d, str) or d == s for d, s in zip(dims, tail)):
        return t.shape[0] if t.dim() > rank else None
    spell = ", ".join(map(str, dims))
    raise ShapeError(f"{where}: {name} must be [{batch}, {spell}] or [{spell}], got {list(t.shape)}")


def common_batch(where: str, **batches: int | None) -> int | None:
    """The batch size of inputs of batch sizes ``name=B`` (``None`` = unbatched), or ``None`` when every
    input is unbatched; size 1 and unbatched inputs broadcast, other disagreements are a :class:`ShapeError`."""
    wide = [(name, b) for name, b in batches.items() if b not in (None, 1)]
    for name, b in wide[1:]:
        if b != wide[0][1]:
            raise ShapeError(f"{where}: {wide[0][0]} batch {wide[0][1]} does not match {name} batch {b}")
    return max((b for b in batches.values() if b is not None), default=None)


def batched(t: Tensor, B: int, rank: int) -> Tensor:
    """``t`` (``[*dims]``, ``[1, *dims]`` or ``[B, *dims]`` with ``len(dims) == rank``) as a ``[B, *dims]`` view."""
    return t.expand(B, *t.shape[t.dim() - rank:])


def broadcast(where: str, **inputs: tuple[Tensor | None, Sequence[int | str]]
              ) -> tuple[int | None, list[Tensor | None]]:
    """Check ``name=(tensor, dims)`` inputs (tensor ``None``: not given) and expand them to their common batch.

    Returns:
        ``(batch, tensors)``: ``batch`` as :func:`common_batch` gives it; ``tensors`` in the order given,
        each a ``[B, *dims]`` view (``B = 1`` when every input is unbatched), ``None`` where not given.
    """
    given = {name: (t, dims) for name, (t, dims) in inputs.items() if t is not None}
    batch = common_batch(where, **{name: batch_size(where, name, t, dims) for name, (t, dims) in given.items()})
    B = 1 if batch is None else batch
    return batch, [None if t is None else batched(t, B, len(dims)) for t, dims in inputs.values()]
