"""A model defined outside the package that declares nothing: units are found automatically.

Imported by the CLI subprocess as ``own_model.tiny.TinyNet`` (the test puts ``tests/`` on ``PYTHONPATH``),
the way a user's own package would be.
"""

from __future__ import annotations

import torch
from torch import nn


class TinyNet(nn.Module):
    """conv-BN stem, a residual conv pair (an add couples the stem's and conv2's outputs), a 2-layer head."""

    def __init__(self, num_classes: int = 10, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.hidden = nn.Linear(width * 7 * 7, 32)
        self.out = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.bn(self.stem(x))), 2)
        x = torch.relu(x + self.conv2(torch.relu(self.conv1(x))))
        x = nn.functional.max_pool2d(x, 2)
        return self.out(torch.relu(self.hidden(torch.flatten(x, 1))))


class NotAModule:
    """Builds fine, but is not an ``nn.Module``."""

    def __init__(self, num_classes: int = 10) -> None:
        self.num_classes = num_classes


def three_outputs(num_classes: int = 10) -> nn.Module:
    """Ignores ``num_classes``: an output-width mismatch the harness must refuse."""
    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 3))
