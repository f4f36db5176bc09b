"""LeNet-5 as in the seed article (Caffe's variant): conv20-conv50-fc500-fc10, 431,080 parameters."""

from __future__ import annotations

import torch
from torch import nn


def max_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """``max_pool2d(x, 2)``, the same values bit for bit, faster where it can be.

    Without autograd on the CPU (evaluation, latency), two elementwise maxima over strided views compute it
    about 10x faster than PyTorch's pooling kernel, which made up ~40 % of LeNet-5's batch-256 forward. Training
    keeps ``max_pool2d`` (its backward is the faster one), and so do tracing and ONNX export (one MaxPool op).

    >>> x = torch.randn(2, 3, 8, 6)
    >>> with torch.no_grad():
    ...     torch.equal(max_pool_2x2(x), nn.functional.max_pool2d(x, 2))
    True
    """
    height, width = x.shape[-2:]
    if torch.is_grad_enabled() or x.is_cuda or torch.jit.is_tracing() or height % 2 or width % 2:
        return nn.functional.max_pool2d(x, 2)
    rows = torch.maximum(x[..., 0::2, :], x[..., 1::2, :])
    return torch.maximum(rows[..., 0::2], rows[..., 1::2])


class LeNet5(nn.Module):
    """conv 1→20 (5×5), pool; conv 20→50 (5×5), pool; fc 800→500; fc 500→10.

    >>> model = LeNet5()
    >>> sum(p.numel() for p in model.parameters())
    431080
    >>> model(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    """

    # Layers the pruning engine may touch, in forward order; the last one is the classifier,
    # whose outputs (the classes) are never removed.
    prunable_layers: tuple[str, ...] = ("conv1", "conv2", "fc1", "fc2")
    classifier: str = "fc2"

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 20, kernel_size=5)
        self.conv2 = nn.Conv2d(20, 50, kernel_size=5)
        self.fc1 = nn.Linear(50 * 4 * 4, 500)
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Pool, then ReLU: they commute exactly (ReLU is monotone), values and gradients alike, and ReLU then
        # touches a quarter of the elements (a training step ~15 % faster on the CPU).
        x = torch.relu(max_pool_2x2(self.conv1(x)))
        x = torch.relu(max_pool_2x2(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = torch.relu(self.fc1(x))
        return self.fc2(x)
