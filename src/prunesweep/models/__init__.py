"""Model registry. Models are plain ``nn.Module``s that know nothing of pruning, tracking or Lightning.

Each model declares ``prunable_layers`` (conv/linear module names in forward order) and ``classifier`` (the
output layer, whose outputs are never pruned). Models with coarser units also declare

* ``structures``: ``{granularity: {group: units}}`` for ``layer``, ``block`` and ``head``. A group is a module
  name (a ResNet stage, a ViT encoder layer or attention module): what ``threshold=layerwise`` cuts within
  and what ``pruning.layers`` selects. ``layer``/``block`` units are module names that can be replaced by
  ``nn.Identity``; ``head`` units are head indices of the group's attention module.
* ``channel_layers`` (optional): the layers whose outputs ``channel`` prunes, when not ``prunable_layers``.
"""

from __future__ import annotations

from torch import nn

from prunesweep.models.lenet5 import LeNet5
from prunesweep.models.lenet300 import LeNet300
from prunesweep.models.resnet import ResNet
from prunesweep.models.vit import ViT

MODELS: dict[str, type[nn.Module]] = {"lenet5": LeNet5, "lenet300": LeNet300, "resnet": ResNet, "vit": ViT}


def build_model(name: str, num_classes: int = 10) -> nn.Module:
    """Build a fresh model by registry name, e.g. ``build_model("lenet5")``."""
    if name not in MODELS:
        raise ValueError(f"model.name={name!r} is unknown; choose one of {sorted(MODELS)}")
    return MODELS[name](num_classes=num_classes)


__all__ = ["MODELS", "LeNet5", "LeNet300", "ResNet", "ViT", "build_model"]
