"""The Lightning side of pruning: hold masks through fine-tuning, and update them on a gradual schedule.

This is the only Lightning-aware file of the engine; everything it calls is plain PyTorch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
from torch import nn

from prunesweep.pruning.plan import MaskPlan, masked_nonzero
from prunesweep.pruning.schedule import GradualSchedule


class MaskViolation(RuntimeError):
    """A weight that the mask removed came back (the seed's MATLAB bug). Never silently tolerated."""


class PruningCallback(pl.Callback):
    """Prune on ``schedule`` (if any) and check after every epoch that masked weights are still exactly zero.

    ``prune(target, previous_plan)`` computes and applies masks for a target sparsity and returns the plan;
    ``on_final(plan)`` runs once when the last mask update of the schedule has been applied (e.g. to
    measure accuracy before the remaining recovery steps).
    """

    def __init__(
        self,
        model: nn.Module,
        prune: Callable[[float, MaskPlan | None], MaskPlan] | None = None,
        schedule: GradualSchedule | None = None,
        on_final: Callable[[MaskPlan], Any] | None = None,
        plan: MaskPlan | None = None,
    ) -> None:
        if schedule is not None and prune is None:
            raise ValueError("a gradual schedule needs a prune function")
        self.model = model
        self.prune = prune
        self.schedule = schedule
        self.on_final = on_final
        self.plan = plan
        self.updates = 0
        self.final_reached = schedule is None

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.final_reached or self.schedule is None or self.prune is None:
            return
        step = trainer.global_step
        if not self.schedule.is_update_step(step):
            return
        self.plan = self.prune(self.schedule.target(step), self.plan)
        self.updates += 1
        if step >= self.schedule.end_step:
            self.final_reached = True
            if self.on_final is not None:
                self.on_final(self.plan)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.check()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.final_reached and self.schedule is not None and self.prune is not None:
            # Fewer steps than the schedule expected (e.g. a tiny subset): finish the schedule anyway.
            self.plan = self.prune(self.schedule.final, self.plan)
            self.final_reached = True
            if self.on_final is not None:
                self.on_final(self.plan)
        self.check()

    def check(self) -> None:
        if self.plan is None:
            return
        regrown = masked_nonzero(self.model, self.plan)
        if regrown:
            raise MaskViolation(f"{regrown} pruned weights are nonzero after a training step")
