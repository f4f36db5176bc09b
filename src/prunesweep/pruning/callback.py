"""The Lightning side of pruning: hold masks through fine-tuning, and update them on a gradual schedule.

This is the only Lightning-aware file of the engine; everything it calls is plain PyTorch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from prunesweep.pruning.plan import MaskPlan, masked_nonzero
from prunesweep.pruning.reconstruct import rebuild_like
from prunesweep.pruning.schedule import GradualSchedule


class MaskViolation(RuntimeError):
    """A weight that the mask removed came back (the seed's MATLAB bug). Never silently tolerated."""


class PruningCallback(pl.Callback):
    """Prune on ``schedule`` (if any) and check after every epoch that masked weights are still exactly zero.

    ``prune(target, previous_plan)`` computes and applies masks for a target sparsity and returns the plan;
    ``on_final(plan)`` runs once when the last mask update of the schedule has been applied, and the model rebuilt
    if asked (e.g. to measure accuracy before the remaining recovery steps). ``rebuild(plan)`` (optional) makes the
    physically smaller model: once the final masks are applied, training goes on with it instead of the masked
    model, with the optimizer's state cut to match (:meth:`continue_with`), so the remaining steps compute the
    same, for less.
    """

    def __init__(
        self,
        model: nn.Module,
        prune: Callable[[float, MaskPlan | None], MaskPlan] | None = None,
        schedule: GradualSchedule | None = None,
        on_final: Callable[[MaskPlan], Any] | None = None,
        plan: MaskPlan | None = None,
        rebuild: Callable[[MaskPlan], nn.Module] | None = None,
    ) -> None:
        if schedule is not None and prune is None:
            raise ValueError("a gradual schedule needs a prune function")
        self.model = model
        self.prune = prune
        self.schedule = schedule
        self.on_final = on_final
        self.plan = plan
        self.rebuild = rebuild
        self.rebuilt: nn.Module | None = None
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
            if self.rebuild is not None:
                self.rebuilt = self.rebuild(self.plan)
                self.continue_with(trainer, pl_module, self.rebuilt)
            if self.on_final is not None:
                self.on_final(self.plan)

    def continue_with(self, trainer: pl.Trainer, pl_module: pl.LightningModule, rebuilt: nn.Module) -> None:
        """Train ``rebuilt`` from the next step on: it replaces the masked model in ``pl_module``, and a new optimizer
        of the same kind takes over the hyperparameters, the current learning rate, the step counts and the per-weight
        state (momentum, Adam's moments) of the surviving weights; the lr schedulers drive the new optimizer."""
        old = trainer.optimizers[0]
        if len(trainer.optimizers) != 1 or len(old.param_groups) != 1:
            raise ValueError("continuing with a rebuilt model needs one optimizer with one parameter group")
        names = {id(p): n.removesuffix("_orig") for n, p in self.model.named_parameters()}
        old_state = {names[id(p)]: (p, old.state[p]) for p in old.param_groups[0]["params"] if p in old.state}
        per_weight = {key for p, state in old_state.values() for key, v in state.items() if _like(v, p)}
        assert self.plan is not None  # continue_with runs once the final masks are applied
        cut = {}
        for key in per_weight:
            tensors = {name: state[key] for name, (p, state) in old_state.items() if _like(state.get(key), p)}
            cut[key] = rebuild_like(self.model, self.plan, tensors)
        params = [p for p in rebuilt.parameters() if p.requires_grad]
        new = type(old)(params, **old.defaults)
        new.param_groups[0].update({k: v for k, v in old.param_groups[0].items() if k != "params"})
        for name, param in rebuilt.named_parameters():
            if param.requires_grad and name in old_state:
                state = old_state[name][1]
                new.state[param] = {k: cut[k][name] if k in cut else _copy(v) for k, v in state.items()}
        for name, child in pl_module.named_children():
            if child is self.model:
                setattr(pl_module, name, rebuilt)
        trainer.optimizers = [new]
        for config in trainer.lr_scheduler_configs:
            config.scheduler.optimizer = new

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.check()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.final_reached and self.schedule is not None and self.prune is not None:
            # Fewer steps than the schedule expected (e.g. a tiny subset): finish the schedule anyway.
            self.plan = self.prune(self.schedule.final, self.plan)
            self.final_reached = True
            if self.rebuild is not None:
                self.rebuilt = self.rebuild(self.plan)  # no step left to train it, but the caller measures it
            if self.on_final is not None:
                self.on_final(self.plan)
        self.check()

    def check(self) -> None:
        if self.plan is None:
            return
        regrown = masked_nonzero(self.model, self.plan)
        if regrown:
            raise MaskViolation(f"{regrown} pruned weights are nonzero after a training step")


def _like(value: Any, param: torch.Tensor) -> bool:
    """Whether an optimizer state entry is per weight (cut with the weights) rather than per parameter (a step)."""
    return isinstance(value, torch.Tensor) and value.shape == param.shape and value.dim() > 0


def _copy(value: Any) -> Any:
    return value.clone() if isinstance(value, torch.Tensor) else value
