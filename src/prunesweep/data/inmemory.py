"""The base of every datamodule here: splits held as tensors in memory, served by :class:`InMemoryLoader`.

A subclass fills ``x_train``/``y_train``/``x_val``/``y_val``/``x_test``/``y_test`` in ``setup()`` and sets
``batch_size``, ``eval_batch_size`` and ``shuffle_seed``; the loaders and calibration batches come from here.
"""

from __future__ import annotations

from collections.abc import Callable

import pytorch_lightning as pl
import torch

from .errors import DataError
from .loaders import InMemoryLoader

# Offset so calibration batches never coincide with the order of any training epoch (seed + epoch).
_CALIBRATION_SEED_OFFSET = 1_000_003


class InMemoryDataModule(pl.LightningDataModule):
    """Train/validation/test loaders over in-memory tensors, set up on first use."""

    batch_size: int
    eval_batch_size: int
    shuffle_seed: int
    train_on_val: bool = False
    log: Callable[[str], None] = print
    x_train: torch.Tensor | None = None
    y_train: torch.Tensor | None = None
    x_val: torch.Tensor | None = None
    y_val: torch.Tensor | None = None
    x_test: torch.Tensor | None = None
    y_test: torch.Tensor | None = None

    def __repr__(self) -> str:  # Lightning's default would call every *_dataloader()
        return f"{type(self).__name__}(batch_size={self.batch_size})"

    def __str__(self) -> str:  # the subclass's __repr__, not Lightning's
        return repr(self)

    def _training_indices(self, train: torch.Tensor, val: torch.Tensor) -> torch.Tensor:
        """``train``'s indices, led by ``val``'s when ``train_on_val`` (the pruning papers' protocol): then the
        validation images are trained on too, and the run says so."""
        if not self.train_on_val:
            return train
        self.log(f"data.train_on_val=true: the {len(val)} validation images are also trained on")
        return torch.cat([val, train])

    def _ready(self) -> None:
        if self.x_train is None:
            self.setup()

    def train_dataloader(self) -> InMemoryLoader:
        self._ready()
        return InMemoryLoader(self.x_train, self.y_train, self.batch_size, shuffle=True, seed=self.shuffle_seed)

    def val_dataloader(self) -> InMemoryLoader:
        self._ready()
        return InMemoryLoader(self.x_val, self.y_val, self.eval_batch_size)

    def test_dataloader(self) -> InMemoryLoader:
        self._ready()
        return InMemoryLoader(self.x_test, self.y_test, self.eval_batch_size)

    def calibration_batches(self, n: int, batch_size: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``n`` training batches for pruning-importance estimates; the same ones on every call and run.

        Drawn from their own seeded permutation, so they don't depend on how far training has iterated.
        """
        self._ready()
        size = self.batch_size if batch_size is None else int(batch_size)
        loader = InMemoryLoader(
            self.x_train, self.y_train, size, shuffle=True, seed=self.shuffle_seed + _CALIBRATION_SEED_OFFSET
        )
        if not 1 <= n <= len(loader):
            raise DataError(
                f"calibration needs 1..{len(loader)} batches of {size} from {len(self.x_train)} training "
                f"images; got n={n}"
            )
        batches = iter(loader)
        return [next(batches) for _ in range(n)]
