"""Fine-tuning the rebuilt model is fine-tuning the masked one: a removed unit's weights are zeros that stay zeros
(``torch.nn.utils.prune`` multiplies by the mask in every forward, so neither its gradient nor its momentum or
weight decay reaches the effective weight), and every kept weight sees the same gradients in both models.

This is what lets ``finetune.rebuilt`` train the physically smaller model without changing a sweep's numbers.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from prunesweep.models import LeNet5, ResNet, ViT
from prunesweep.pruning import PruningSpec, apply_masks, check_rebuild, compute_masks, masked_nonzero, rebuild

EXAMPLE = torch.zeros(1, 1, 28, 28)
STEPS = 5

OPTIMIZERS: dict[str, Callable[[list[nn.Parameter]], torch.optim.Optimizer]] = {
    "sgd-momentum-wd": lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-3),
    "adam": lambda params: torch.optim.Adam(params, lr=1e-3),
    "adam-wd": lambda params: torch.optim.Adam(params, lr=1e-3, weight_decay=5e-3),
}


def _batches(n: int = STEPS, size: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(size, 1, 28, 28, generator=generator), torch.randint(0, 10, (size,), generator=generator))
            for _ in range(n)]  # fmt: skip


def _model(model_cls: type[nn.Module]) -> nn.Module:
    """Random init with shifted norms, so a pruned unit that leaked would show in the outputs."""
    torch.manual_seed(0)
    model = model_cls()
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm2d, nn.LayerNorm)):
            nn.init.normal_(module.bias, std=0.5)
    return model


def _train(model: nn.Module, make_optimizer, batches) -> None:
    model.train()
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad])
    for x, y in batches:
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
@pytest.mark.parametrize(
    ("model_cls", "granularity"),
    [(LeNet5, "channel"), (ResNet, "layer"), (ResNet, "block"), (ViT, "head")],
    ids=["lenet5-channel", "resnet-layer", "resnet-block", "vit-head"],
)
def test_training_the_rebuilt_model_equals_training_the_masked_one(model_cls, granularity, optimizer) -> None:
    masked = _model(model_cls)
    plan = compute_masks(masked, PruningSpec(sparsity=0.5, granularity=granularity, threshold="global"))
    apply_masks(masked, plan)
    rebuilt = rebuild(masked, plan, EXAMPLE)
    assert sum(p.numel() for p in rebuilt.parameters()) < sum(p.numel() for p in _model(model_cls).parameters())

    batches = _batches()
    _train(masked, OPTIMIZERS[optimizer], batches)
    _train(rebuilt, OPTIMIZERS[optimizer], batches)

    assert masked_nonzero(masked, plan) == 0  # the masked model's removed weights stayed zero
    x = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        moved = (masked.eval()(x) - _model(model_cls).eval()(x)).abs().max().item()
    assert moved > 1e-3  # the steps changed the model, so the comparison below is not vacuous
    assert check_rebuild(masked, rebuilt, x, name=model_cls.__name__) <= 1e-5


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_the_rebuilt_model_keeps_the_masked_models_mode(mode: str) -> None:
    """Lightning keeps the modes it is given: a rebuilt ResNet left in eval mode by tracing would fine-tune its
    BatchNorm on running statistics, unlike the masked model."""
    masked = _model(ResNet).train(mode == "train")
    apply_masks(masked, plan := compute_masks(masked, PruningSpec(sparsity=0.5, granularity="channel")))
    rebuilt = rebuild(masked, plan, EXAMPLE)
    assert {module.training for module in rebuilt.modules()} == {mode == "train"}
