"""The model registry: every model builds, runs on MNIST-shaped input, and declares units that exist."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunesweep.models import MODELS, LeNet5, ResNet, ViT, build_model
from prunesweep.models.lenet5 import max_pool_2x2
from prunesweep.pruning import available_granularities


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_builds_and_declares_real_modules(name: str) -> None:
    model = build_model(name)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    modules = dict(model.named_modules())
    assert model.classifier in model.prunable_layers
    for layer in (*model.prunable_layers, *getattr(model, "channel_layers", ())):
        assert isinstance(modules[layer], (nn.Conv2d, nn.Linear))
    for granularity, groups in getattr(model, "structures", {}).items():
        for group, units in groups.items():
            assert group in modules and units, (granularity, group)
            if granularity != "head":
                assert all(unit in modules for unit in units)


def test_unknown_model_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match=r"model.name='alexnet' is unknown; choose one of \[.*'resnet'.*'vit'"):
        build_model("alexnet")


@pytest.mark.parametrize(
    ("model_cls", "expected"),
    [
        (ResNet, ["unstructured", "channel", "layer", "block"]),
        (ViT, ["unstructured", "channel", "layer", "block", "head"]),
    ],
)
def test_models_declare_their_granularities(model_cls, expected) -> None:
    assert available_granularities(model_cls()) == expected


def test_resnet_units_are_same_shape_only() -> None:
    model = ResNet()
    # stage 0 keeps its shape in all 3 blocks; stages 1 and 2 open with a downsampling block that is no unit
    assert model.structures["block"] == {
        "stages.0": ("stages.0.0", "stages.0.1", "stages.0.2"),
        "stages.1": ("stages.1.1", "stages.1.2"),
        "stages.2": ("stages.2.1", "stages.2.2"),
    }
    assert model.structures["layer"]["stages.1"] == (
        "stages.1.1.conv1",
        "stages.1.1.conv2",
        "stages.1.2.conv1",
        "stages.1.2.conv2",
    )


def test_vit_heads_are_per_encoder_layer() -> None:
    model = ViT()
    assert model.structures["head"]["encoder.2.attn.fn"] == ("0", "1", "2", "3")
    assert model.structures["block"] == {"encoder": ("encoder.0", "encoder.1", "encoder.2", "encoder.3")}
    assert model.channel_layers == tuple(f"encoder.{i}.mlp.fn.fc1" for i in range(4))


def test_lenet5_computes_the_same_outputs_with_and_without_autograd():
    """Its inference pooling (no autograd) is a different kernel from training's max_pool2d: same values, bit for bit
    (ties included: the all-zero image makes them in every 2x2 window)."""
    model = LeNet5().eval()
    x = torch.randn(64, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fast = model(x)
    assert torch.equal(fast, model(x).detach())
    zeros = torch.zeros(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(zeros), model(zeros.clone()).detach())
    odd = torch.randn(2, 3, 7, 5)
    with torch.no_grad():  # odd sizes: max_pool2d's floor, via max_pool2d itself
        assert torch.equal(max_pool_2x2(odd), torch.nn.functional.max_pool2d(odd, 2))


def test_lenet5_pooling_before_relu_is_the_textbook_order_bit_for_bit():
    """Its forward pools, then applies ReLU (cheaper); they commute, so outputs and every gradient equal the textbook
    conv → ReLU → pool order exactly, ReLU's zeros and ties included."""
    torch.manual_seed(0)
    model = LeNet5()
    x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))

    def textbook(images: torch.Tensor) -> torch.Tensor:
        h = nn.functional.max_pool2d(torch.relu(model.conv1(images)), 2)
        h = nn.functional.max_pool2d(torch.relu(model.conv2(h)), 2)
        return model.fc2(torch.relu(model.fc1(torch.flatten(h, 1))))

    grads = []
    for forward in (model, textbook):
        model.zero_grad()
        out = forward(x)
        nn.functional.cross_entropy(out, y).backward()
        grads.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
    (out_a, grads_a), (out_b, grads_b) = grads
    assert torch.equal(out_a, out_b)
    assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b, strict=True))
