"""A small ResNet for 28×28 inputs (He et al. 2016, the CIFAR layout of ResNet-20): stem, 3 stages × 3 basic blocks.

The stem has stride 2 (stages at 14×14, 7×7, 4×4): 4× cheaper than stride 1 on a CPU, and MNIST digits
lose nothing a 99.3 % model needs.

Coarse prunable units are declared in ``structures`` (see :mod:`prunesweep.models`): every conv+BN of a
same-shape block (``layer``) and every same-shape block (``block``). Downsampling blocks change the shape, so
they are never units: removing all units of a stage still leaves a valid network.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn


class ConvBN(nn.Module):
    """``k×k`` conv (no bias: BN's shift replaces it) followed by BatchNorm."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class BasicBlock(nn.Module):
    """``relu(shortcut(x) + conv2(relu(conv1(x))))``; the shortcut is identity unless the shape changes."""

    # Zeroing every parameter of a same-shape block zeroes its branch (the last BN's weight and bias are 0),
    # leaving relu(x) = x since its input is itself a ReLU output: masking equals replacing it by identity.
    zeroed_is_identity: ClassVar[bool] = True

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = ConvBN(in_channels, out_channels, stride=stride)
        self.conv2 = ConvBN(out_channels, out_channels)
        self.same_shape = stride == 1 and in_channels == out_channels
        self.shortcut: nn.Module = (
            nn.Identity() if self.same_shape else ConvBN(in_channels, out_channels, kernel_size=1, stride=stride)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.shortcut(x) + self.conv2(torch.relu(self.conv1(x))))


class ResNet(nn.Module):
    """ResNet-20 layout (16-32-64 channels, 3 blocks per stage, stride-2 stem) on 1×28×28 images, 272,186 parameters.

    >>> model = ResNet()
    >>> sum(p.numel() for p in model.parameters())
    272186
    >>> model(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    >>> {g: len(units) for g, groups in model.structures.items() for units in [sum(groups.values(), ())]}
    {'layer': 14, 'block': 7}
    """

    classifier: str = "fc"

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        widths: tuple[int, ...] = (16, 32, 64),
        blocks_per_stage: int = 3,
        stem_stride: int = 2,
    ) -> None:
        super().__init__()
        self.stem = ConvBN(in_channels, widths[0], stride=stem_stride)
        channels = widths[0]
        stages = []
        for index, width in enumerate(widths):
            stride = 1 if index == 0 else 2
            blocks = [BasicBlock(channels, width, stride)]
            blocks += [BasicBlock(width, width) for _ in range(blocks_per_stage - 1)]
            stages.append(nn.Sequential(*blocks))
            channels = width
        self.stages = nn.ModuleList(stages)
        self.fc = nn.Linear(channels, num_classes)

        # Declarations the pruning engine reads (instance attributes: they depend on the widths/depth).
        self.prunable_layers: tuple[str, ...] = tuple(
            name for name, m in self.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))
        )
        # channel = each block's inner width (conv1's filters, with its BN): the residual stream's channels are
        # coupled across a whole stage by the adds, where per-layer cuts would compound (see compute_masks).
        self.channel_layers: tuple[str, ...] = tuple(
            f"stages.{s}.{b}.conv1.conv" for s, stage in enumerate(self.stages) for b in range(len(stage))
        )
        same_shape = {
            f"stages.{s}": tuple(f"stages.{s}.{b}" for b, block in enumerate(stage) if block.same_shape)
            for s, stage in enumerate(self.stages)
        }
        # granularity -> {group (the set a layerwise threshold cuts in): unit module names}
        self.structures: dict[str, dict[str, tuple[str, ...]]] = {
            "layer": {
                stage: tuple(f"{b}.{c}" for b in blocks for c in ("conv1", "conv2"))
                for stage, blocks in same_shape.items()
            },
            "block": same_shape,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        for stage in self.stages:
            x = stage(x)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))
