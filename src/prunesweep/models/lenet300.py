"""LeNet-300-100 (LeCun et al. 1998), the fully connected baseline of Han et al. 2015 and the Lottery Ticket paper."""

from __future__ import annotations

import torch
from torch import nn


class LeNet300(nn.Module):
    """784-300-100-10 with ReLU, 266,610 parameters.

    >>> model = LeNet300()
    >>> sum(p.numel() for p in model.parameters())
    266610
    >>> model(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    """

    prunable_layers: tuple[str, ...] = ("fc1", "fc2", "fc3")
    classifier: str = "fc3"

    def __init__(self, num_classes: int = 10, in_features: int = 28 * 28) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)
