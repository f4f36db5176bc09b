"""The LightningModule and :func:`fit`: image classification with cross-entropy, for dense training and
fine-tuning. ``fit`` is the one way the experiment, the bench and the tests train a model."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from prunesweep.distillation import Distillation, distillation_loss
from prunesweep.tracking.lightning import EpochMetrics

LR_SCHEDULES = ("constant", "cosine")
#: ``trainer.accelerator`` values and the device each asks for ("auto": a GPU when there is one).
ACCELERATORS = ("cpu", "auto", "gpu", "cuda")

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


class Classifier(pl.LightningModule):
    """Wraps any ``nn.Module`` classifier; logs ``train/loss`` and ``val/acc`` once per epoch.

    The wrapped model is shared, not copied: fine-tuning the Classifier fine-tunes the model the
    pruning engine masked. With a ``teacher`` and ``distill`` enabled, the training loss also matches the
    teacher's outputs (:mod:`prunesweep.distillation`); the teacher stays frozen and in eval mode.
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float,
        optimizer: str = "sgd",
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        lr_schedule: str = "constant",
        teacher: nn.Module | None = None,
        distill: Distillation | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.distill = distill or Distillation()
        # Kept out of the module tree: Lightning would otherwise warn about modules in eval mode, put the teacher
        # back in train mode every epoch and save it with the student. Frozen, in eval mode, moved at fit start.
        self._teacher = [] if teacher is None or not self.distill.enabled else [teacher.requires_grad_(False).eval()]
        self.lr = lr
        self.optimizer_name = optimizer
        self.momentum = momentum
        self.weight_decay = weight_decay
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule={lr_schedule!r} is unknown; choose one of {LR_SCHEDULES}")
        self.lr_schedule = lr_schedule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self.model(x)
        if self.teacher is None:
            loss = nn.functional.cross_entropy(logits, y)
        else:
            with torch.no_grad():
                teacher_logits = self.teacher(x)
            loss = distillation_loss(logits, teacher_logits, y, self.distill)
        if not torch.isfinite(loss):
            # A NaN loss never recovers; stop now with a reason rather than train garbage for hours.
            raise FloatingPointError(f"training loss became {loss.item()} at step {self.global_step}")
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y))
        return loss

    @property
    def teacher(self) -> nn.Module | None:
        """The frozen model distilled from, or None (no teacher, or ``distill.weight`` 0)."""
        return self._teacher[0] if self._teacher else None

    def on_fit_start(self) -> None:
        if self.teacher is not None:
            self.teacher.to(self.device)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        acc = (self.model(x).argmax(dim=1) == y).float().mean()
        self.log("val/acc", acc, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y))

    def configure_optimizers(self) -> Any:
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.optimizer_name == "adam":
            optimizer: torch.optim.Optimizer = torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        else:
            optimizer = torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        if self.lr_schedule == "constant":
            return optimizer
        # cosine: per-step decay to 0 over the whole fit; the last epochs at a small lr settle the accuracy.
        steps = max(1, int(self.trainer.estimated_stepping_batches))
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": cosine, "interval": "step"}}

    @classmethod
    def from_recipe(cls, model: nn.Module, recipe: Mapping[str, Any], teacher: nn.Module | None = None) -> Classifier:
        """A Classifier with a ``train``/``finetune`` recipe's optimizer settings (absent keys: the defaults), and
        its ``distill`` settings when a ``teacher`` is given."""
        return cls(
            model,
            lr=float(recipe["lr"]),
            optimizer=str(recipe["optimizer"]),
            momentum=float(recipe.get("momentum", 0.9)),
            weight_decay=float(recipe.get("weight_decay", 0.0)),
            lr_schedule=str(recipe.get("lr_schedule") or "constant"),
            teacher=teacher,
            distill=Distillation.from_recipe(recipe),
        )


class StopAfter(pl.Callback):
    """Stop after ``steps`` optimizer steps *through* ``should_stop``: Lightning then validates the partial last
    epoch, which ``max_steps`` alone skips (its per-epoch metrics would repeat the previous epoch's ``val/acc``)."""

    def __init__(self, steps: int) -> None:
        self.steps = steps

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if trainer.global_step >= self.steps:
            trainer.should_stop = True


def fit(
    model: nn.Module,
    train: Batches,
    val: Batches | None,
    recipe: Mapping[str, Any],
    trainer_cfg: Mapping[str, Any],
    *,
    epochs: int | None = None,
    max_steps: int | None = None,
    log_metrics: Callable[[Mapping[str, float], int], None] | None = None,
    prefix: str = "",
    callbacks: Sequence[pl.Callback] = (),
    teacher: nn.Module | None = None,
) -> pl.Trainer:
    """Train ``model`` in place with a recipe (``lr``, ``optimizer``, ``momentum``, ``weight_decay``,
    ``lr_schedule``, ``epochs``) under a Trainer built from ``trainer_cfg``; return the trainer, whose
    ``global_step`` is the number of optimizer steps taken.

    ``epochs`` overrides the recipe's; ``max_steps`` stops earlier, after that many steps (the last epoch is
    then partial, and a cosine schedule decays over the steps). ``log_metrics(metrics, epoch)`` receives
    ``<prefix>train/loss`` and ``<prefix>val/acc`` once per epoch. No logger and no checkpoints: runs are
    recorded by the caller. ``teacher`` is the model a recipe with ``distill.weight > 0`` distils from.
    """
    extra: list[pl.Callback] = [] if log_metrics is None else [EpochMetrics(log_metrics, prefix=prefix)]
    if max_steps is not None:
        extra.append(StopAfter(max_steps))
    settings = OmegaConf.to_container(trainer_cfg, resolve=True) if isinstance(trainer_cfg, DictConfig) else trainer_cfg
    trainer = pl.Trainer(
        **dict(settings),
        max_epochs=int(recipe["epochs"] if epochs is None else epochs),
        max_steps=-1 if max_steps is None else int(max_steps),
        logger=False,
        enable_checkpointing=False,
        callbacks=[*extra, *callbacks],
    )
    trainer.fit(Classifier.from_recipe(model, recipe, teacher), train_dataloaders=train, val_dataloaders=val)
    return trainer


def select_device(trainer_cfg: Mapping[str, Any], cuda_available: bool | None = None) -> torch.device:
    """The device a ``trainer`` config asks for, as Lightning will pick it: ``auto`` takes the GPU when there is one,
    ``gpu``/``cuda`` insist on it (a clear error instead of a silent CPU run), ``cpu`` stays on the CPU.

    >>> select_device({"accelerator": "auto"}, cuda_available=False), select_device({"accelerator": "auto"}, True)
    (device(type='cpu'), device(type='cuda', index=0))
    """
    accelerator = str(trainer_cfg.get("accelerator", "cpu"))
    if accelerator not in ACCELERATORS:
        raise ValueError(f"trainer.accelerator={accelerator!r} is not supported; choose one of {ACCELERATORS}")
    available = torch.cuda.is_available() if cuda_available is None else cuda_available
    if accelerator == "cpu" or (accelerator == "auto" and not available):
        return torch.device("cpu")
    if not available:
        raise RuntimeError(f"trainer.accelerator={accelerator} but no CUDA device is visible; use trainer=cpu")
    return torch.device("cuda", 0)


def in_layout(model: nn.Module, channels_last: bool) -> nn.Module:
    """``model`` with its 4-d tensors (convolution weights) in the channels-last layout when asked, in place.

    oneDNN's channels-last convolutions are the fast ones on CPUs; the numbers agree with the contiguous layout's
    to float rounding, not bit for bit (hence the config key ``channels_last`` is part of a run's identity).
    Parameters keep their identity, so an optimizer made earlier still trains them.

    >>> conv = in_layout(nn.Conv2d(3, 8, 3), channels_last=True)
    >>> conv.weight.is_contiguous(memory_format=torch.channels_last), conv.weight.is_contiguous()
    (True, False)
    """
    return model.to(memory_format=torch.channels_last) if channels_last else model


@torch.inference_mode()
def evaluate(model: nn.Module, batches: Batches) -> float:
    """Top-1 accuracy of ``model`` over ``batches``: a plain loop, no Trainer overhead, on the model's device (the
    batches go there; on a GPU keep them there already, see ``trainer=gpu``).

    The model is back in the mode it had afterwards, even when a batch raises.
    """
    # The same pattern as prunesweep.pruning._util.eval_mode; use that once the package exports it.
    was_training = model.training
    model.eval()
    correct = total = 0
    try:
        device = next(model.parameters(), torch.empty(0)).device
        for x, y in batches:
            correct += int((model(x.to(device)).argmax(dim=1) == y.to(device)).sum())
            total += len(y)
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError("evaluate() got no batches")
    return correct / total
