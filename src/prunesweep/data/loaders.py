"""Batch iteration over tensors that already sit in memory.

MNIST fits in RAM as one tensor, so a ``DataLoader`` (per-item ``__getitem__``, collation, worker
processes) only adds overhead; slicing whole batches out of the tensor is several times faster on CPU.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch


class InMemoryLoader:
    """Iterable of ``(x, y)`` batches sliced from in-memory tensors.

    With ``shuffle`` each pass draws a permutation from a ``torch.Generator`` seeded with ``seed + epoch``,
    where ``epoch`` counts the passes started so far: the sequence of epochs is reproducible, and
    consecutive epochs see different orders.  Without ``shuffle`` batches are contiguous views (no copy).

    >>> x, y = torch.arange(10.0).unsqueeze(1), torch.arange(10)
    >>> [b[1].tolist() for b in InMemoryLoader(x, y, batch_size=4)]
    [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    >>> len(InMemoryLoader(x, y, batch_size=4, drop_last=True))
    2
    >>> loader = InMemoryLoader(x, y, batch_size=10, shuffle=True, seed=1)
    >>> first, second = next(iter(loader))[1], next(iter(loader))[1]
    >>> sorted(first.tolist()) == list(range(10)) and not torch.equal(first, second)
    True
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        if len(x) != len(y):
            raise ValueError(f"x and y differ in length: {len(x)} vs {len(y)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.x, self.y = x, y
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass use the order of pass ``epoch`` (e.g. when resuming)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        n = len(self.x)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # Draw the order here, not inside a generator body, so the epoch advances when the pass starts
        # even if the caller never pulls a batch.
        order = None
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(len(self.x), generator=g)
        self.epoch += 1
        return self._batches(order)

    def _batches(self, order: torch.Tensor | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        bs = self.batch_size
        for i in range(len(self)):
            if order is None:
                yield self.x[i * bs : (i + 1) * bs], self.y[i * bs : (i + 1) * bs]
            else:
                idx = order[i * bs : (i + 1) * bs]
                yield self.x[idx], self.y[idx]

    def __repr__(self) -> str:
        return (
            f"InMemoryLoader(n={len(self.x)}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
            f"seed={self.seed}, drop_last={self.drop_last}, epoch={self.epoch})"
        )
