"""Model registry. Models are plain ``nn.Module``s that know nothing of pruning, tracking or Lightning.

Each model class declares ``prunable_layers`` (module names in forward order) and ``classifier``
(the output layer, whose outputs are never pruned).
"""

from __future__ import annotations

from torch import nn

from prunesweep.models.lenet5 import LeNet5
from prunesweep.models.lenet300 import LeNet300

MODELS: dict[str, type[nn.Module]] = {"lenet5": LeNet5, "lenet300": LeNet300}


def build_model(name: str, num_classes: int = 10) -> nn.Module:
    """Build a fresh model by registry name, e.g. ``build_model("lenet5")``."""
    if name not in MODELS:
        raise ValueError(f"model.name={name!r} is unknown; choose one of {sorted(MODELS)}")
    return MODELS[name](num_classes=num_classes)


__all__ = ["MODELS", "LeNet5", "LeNet300", "build_model"]
