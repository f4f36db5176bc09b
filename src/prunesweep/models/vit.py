"""A small Vision Transformer (Dosovitskiy et al. 2021) for 28×28 images: 7×7 patches, width 64, 4 heads, 4 layers.

Pre-norm encoder layers, so every sub-layer adds its contribution to the residual stream: removing a sub-layer
(``layer``) or a whole encoder layer (``block``) is replacing it with identity, and zeroing its parameters
removes exactly its contribution. Attention keeps q/k/v/out as separate ``nn.Linear`` so heads are row/column
slices that can be masked and physically removed (``head``).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn


class MultiHeadSelfAttention(nn.Module):
    """Self-attention with separate q, k, v, out projections; ``num_heads`` shrinks when heads are removed."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, _ = x.shape

        def heads(proj: nn.Linear) -> torch.Tensor:  # (N, T, H*d) -> (N, H, T, d)
            return proj(x).reshape(n, t, self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.q), heads(self.k), heads(self.v)
        weights = torch.softmax(q @ k.transpose(-2, -1) * self.head_dim**-0.5, dim=-1)
        context = (weights @ v).transpose(1, 2).reshape(n, t, self.num_heads * self.head_dim)
        return self.out(context)


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(nn.functional.gelu(self.fc1(x)))


class Residual(nn.Module):
    """``x + fn(norm(x))``: one sub-layer of the residual stream."""

    # Zeroing fn's last projection (weight and bias) makes the contribution exactly 0, i.e. identity.
    zeroed_is_identity: ClassVar[bool] = True

    def __init__(self, dim: int, fn: nn.Module) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fn(self.norm(x))


class EncoderLayer(nn.Module):
    zeroed_is_identity: ClassVar[bool] = True  # both sub-layers then add exactly 0

    def __init__(self, dim: int, num_heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.attn = Residual(dim, MultiHeadSelfAttention(dim, num_heads))
        self.mlp = Residual(dim, MLP(dim, mlp_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.attn(x))


class ViT(nn.Module):
    """16 patch tokens + a class token, 4 pre-norm encoder layers, classifier on the class token; 139,018 parameters.

    >>> model = ViT()
    >>> sum(p.numel() for p in model.parameters())
    139018
    >>> model(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    >>> {g: sum(len(u) for u in groups.values()) for g, groups in model.structures.items()}
    {'layer': 8, 'block': 4, 'head': 16}
    """

    classifier: str = "fc"

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int = 28,
        patch_size: int = 7,
        dim: int = 64,
        depth: int = 4,
        num_heads: int = 4,
        mlp_dim: int = 128,
    ) -> None:
        super().__init__()
        tokens = (image_size // patch_size) ** 2 + 1
        self.patch_embed = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        self.encoder = nn.Sequential(*[EncoderLayer(dim, num_heads, mlp_dim) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes)

        layers = [f"encoder.{i}" for i in range(depth)]
        self.prunable_layers: tuple[str, ...] = tuple(
            name for name, m in self.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))
        )
        # channel = MLP hidden neurons: the only widths whose removal needs no change to the residual stream.
        self.channel_layers: tuple[str, ...] = tuple(f"{layer}.mlp.fn.fc1" for layer in layers)
        # granularity -> {group (the set a layerwise threshold cuts in): unit names}; head units are indices.
        self.structures: dict[str, dict[str, tuple[str, ...]]] = {
            "layer": {layer: (f"{layer}.attn", f"{layer}.mlp") for layer in layers},
            "block": {"encoder": tuple(layers)},
            "head": {f"{layer}.attn.fn": tuple(str(h) for h in range(num_heads)) for layer in layers},
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (N, 16, dim)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.encoder(x)
        return self.fc(self.norm(x[:, 0]))
