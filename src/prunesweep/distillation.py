"""Knowledge distillation for fine-tuning: the pruned model also matches its own dense model's outputs.

Hinton et al. (2015): the loss mixes cross-entropy on the labels with the KL divergence between the teacher's
and the student's temperature-softened class distributions, scaled by ``T²`` so its gradients keep their size
as ``T`` grows. A pruned network recovers faster from the dense one's soft targets than from labels alone: they
carry how similar the classes look, which the labels do not.

>>> student, teacher = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([[2.0, 0.0, -1.0]])
>>> labels = torch.tensor([0])
>>> same = distillation_loss(student, teacher, labels, Distillation(weight=1.0, temperature=4.0))
>>> float(same)  # identical outputs: nothing to learn from the teacher
0.0
>>> plain = distillation_loss(student, teacher, labels, Distillation(weight=0.0))
>>> torch.equal(plain, F.cross_entropy(student, labels))  # weight 0 is plain cross-entropy
True
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional as F


@dataclass(frozen=True)
class Distillation:
    """``finetune.distill``: the share of the loss that matches the teacher (0 = off, 1 = the teacher only) and
    the softmax temperature both distributions are softened with."""

    weight: float = 0.0
    temperature: float = 4.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.weight <= 1.0:
            raise ValueError(f"finetune.distill.weight={self.weight} must be in [0, 1] (0 turns distillation off)")
        if not self.temperature > 0.0:
            raise ValueError(f"finetune.distill.temperature={self.temperature} must be > 0")

    @property
    def enabled(self) -> bool:
        return self.weight > 0.0

    @classmethod
    def from_recipe(cls, recipe: Mapping[str, Any]) -> Distillation:
        """The ``distill`` entry of a ``finetune`` recipe; absent or null means off."""
        settings = recipe.get("distill") or {}
        return cls(
            weight=float(settings.get("weight", cls.weight)),
            temperature=float(settings.get("temperature", cls.temperature)),
        )


def teacher_name(teacher: Mapping[str, Any]) -> str:
    """What a ``finetune.distill.teacher`` model config is called: its ``name``, else its ``_target_``'s last part.

    >>> teacher_name({"_target_": "prunesweep.models.build_model", "name": "lenet5"})
    'lenet5'
    >>> teacher_name({"_target_": "my_package.models.Net"})
    'Net'
    """
    return str(teacher.get("name") or str(teacher.get("_target_", "")).rsplit(".", 1)[-1])


def distill_label(weight: float, teacher: Mapping[str, Any] | None = None) -> str:
    """How reports and run names call a fine-tune's distillation: ``off``, ``distill<weight>`` (from the point's own
    dense model), or ``distill<weight>-<teacher>`` (from another model, named by :func:`teacher_name`).

    >>> distill_label(0.0), distill_label(0.7), distill_label(0.7, {"name": "lenet5"})
    ('off', 'distill0.7', 'distill0.7-lenet5')
    """
    if weight <= 0:
        return "off"
    name = teacher_name(teacher) if teacher else ""
    return f"distill{weight:g}" + (f"-{name}" if name else "")


def distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor, distill: Distillation
) -> torch.Tensor:
    """``(1 - w)·CE(student, targets) + w·T²·KL(softmax(teacher/T) ‖ softmax(student/T))``, batch mean."""
    hard = F.cross_entropy(student_logits, targets)
    if not distill.enabled:
        return hard
    t = distill.temperature
    soft = F.kl_div(
        F.log_softmax(student_logits / t, dim=1),
        F.log_softmax(teacher_logits.detach() / t, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return (1.0 - distill.weight) * hard + distill.weight * t * t * soft
