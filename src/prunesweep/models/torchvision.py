"""Ready torchvision models for 1×28×28 inputs (``model=torchvision_resnet18``, ``model=mobilenet_v2``).

They are torchvision's own classes, untouched except for the first convolution, which reads ``in_channels``
(1 for MNIST) instead of RGB. They declare no prunable units: :func:`prunesweep.pruning.discover.annotate` finds
them (every conv/linear; channel groups coupled by residual adds, depthwise convs and BatchNorm; identity-shortcut
residual blocks). torchvision is imported when a builder is called, so the model registry does not need it.

>>> import torch
>>> model = resnet18()
>>> model(torch.zeros(2, 1, 28, 28)).shape, sum(p.numel() for p in model.parameters())
(torch.Size([2, 10]), 11175370)
"""

from __future__ import annotations

from torch import nn


def _same_conv(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """``conv`` with ``in_channels`` inputs; kernel, stride, padding and bias unchanged."""
    return nn.Conv2d(
        in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        bias=conv.bias is not None,
    )


def resnet18(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """``torchvision.models.resnet18(weights=None, num_classes=...)`` with an ``in_channels`` stem.

    On 28×28 the 7×7/2 stem and max-pool leave 7×7 maps for ``layer1`` and 1×1 for ``layer4``.
    """
    from torchvision.models import resnet18 as build

    model = build(weights=None, num_classes=num_classes)
    model.conv1 = _same_conv(model.conv1, in_channels)
    return model


def mobilenet_v2(num_classes: int = 10, in_channels: int = 1, width_mult: float = 1.0) -> nn.Module:
    """``torchvision.models.mobilenet_v2(weights=None, num_classes=...)`` with an ``in_channels`` stem.

    Depthwise convolutions and inverted residuals: channel groups couple a pointwise conv, the depthwise
    conv after it and their BatchNorms, and the projections a residual add ties together.
    """
    from torchvision.models import mobilenet_v2 as build

    model = build(weights=None, num_classes=num_classes, width_mult=width_mult)
    model.features[0][0] = _same_conv(model.features[0][0], in_channels)
    return model
