"""A Lightning callback that forwards per-epoch metrics to a plain logging function.

It replaces Lightning's MLFlowLogger on purpose: that logger marks the run FINISHED when ``fit``
ends, which would make a point that dies later (during pruning or measuring) look complete to a
resumed sweep.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import pytorch_lightning as pl

log = logging.getLogger("prunesweep")


class EpochMetrics(pl.Callback):
    """Send ``train/loss`` and ``val/acc`` (as ``<prefix>train/loss`` ...) once per epoch, step = epoch."""

    def __init__(
        self,
        log_metrics: Callable[[Mapping[str, float], int], None],
        prefix: str = "",
        keys: tuple[str, ...] = ("train/loss", "val/acc"),
    ) -> None:
        self.log_metrics = log_metrics
        self.prefix = prefix
        self.keys = keys

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        found = {
            f"{self.prefix}{k}": float(trainer.callback_metrics[k]) for k in self.keys if k in trainer.callback_metrics
        }
        if found:
            self.log_metrics(found, trainer.current_epoch)
            shown = "  ".join(f"{k} {v:.4f}" for k, v in found.items())
            log.info("epoch %d/%d  %s", trainer.current_epoch + 1, trainer.max_epochs, shown)
