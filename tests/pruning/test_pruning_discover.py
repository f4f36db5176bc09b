"""Units found automatically for models that declare none: a test-tree model and torchvision's ResNet-18 and
MobileNetV2, pruned, rebuilt, and measured against Torch-Pruning's own counts."""

from __future__ import annotations

import copy

import pytest
import torch
import torch_pruning as tp
from own_model.tiny import TinyNet
from torch import nn

from prunesweep.models import LeNet5
from prunesweep.models.torchvision import mobilenet_v2, resnet18
from prunesweep.pruning import PruningSpec, apply_masks, compute_masks, count_macs, count_params, rebuild
from prunesweep.pruning.discover import annotate, largest_layer
from prunesweep.pruning.verify import RebuildMismatch, check_rebuild

EXAMPLE = torch.zeros(1, 1, 28, 28)


def _warmed(model: nn.Module) -> nn.Module:
    """Untrained, but with BatchNorm statistics away from (0, 1), so masked outputs are far from trivial."""
    torch.manual_seed(0)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 1, 28, 28) * 2 + 0.5)
    return model.eval()


def _prune_and_rebuild(model: nn.Module, granularity: str, sparsity: float = 0.5) -> tuple[nn.Module, nn.Module]:
    plan = compute_masks(model, PruningSpec(sparsity=sparsity, granularity=granularity), example_inputs=EXAMPLE)
    masked = copy.deepcopy(model)
    apply_masks(masked, plan)
    return masked.eval(), rebuild(masked, plan, EXAMPLE).eval()


def test_a_model_that_declares_nothing_gets_every_unit_and_the_couplings():
    model = annotate(TinyNet(), EXAMPLE)
    assert model.prunable_layers == ("stem", "conv1", "conv2", "hidden", "out")
    assert model.classifier == "out"
    # conv2's outputs are added to the stem's: one coupled group, listed once, by its first layer
    assert model.channel_layers == ("stem", "conv1", "hidden")
    assert model.structures == {}
    assert largest_layer(model) == "hidden"


def test_declarations_win():
    model = LeNet5()
    annotate(model, EXAMPLE)
    assert "channel_layers" not in vars(model) and model.prunable_layers == ("conv1", "conv2", "fc1", "fc2")

    class Declares(TinyNet):
        classifier = "out"
        channel_layers = ("conv1",)

    partly = annotate(Declares(), EXAMPLE)
    assert partly.channel_layers == ("conv1",) and len(partly.prunable_layers) == 5


@pytest.mark.parametrize("granularity", ["unstructured", "channel"])
def test_tiny_model_prunes_and_channel_rebuild_equals_masked(granularity: str):
    model = annotate(_warmed(TinyNet()), EXAMPLE)
    plan = compute_masks(model, PruningSpec(sparsity=0.5, granularity=granularity), example_inputs=EXAMPLE)
    assert 0.45 < plan.unit_sparsity <= 0.55
    if granularity == "channel":
        masked, small = _prune_and_rebuild(model, "channel")
        x = torch.randn(8, 1, 28, 28)
        assert check_rebuild(masked, small, x, "TinyNet") <= 1e-4
        assert masked(x).abs().max() > 1e-2  # the comparison is not between two near-zero outputs
        assert count_macs(small, sparse=False) < count_macs(model, sparse=False)
        assert small.out.out_features == 10


def test_torchvision_resnet18_channel_rebuild_matches_masked_and_torch_pruning_counts():
    model = annotate(_warmed(resnet18()), EXAMPLE)
    assert model.classifier == "fc" and "layer1.0.conv2" not in model.channel_layers  # coupled to the stem
    masked, small = _prune_and_rebuild(model, "channel", 0.5)
    x = torch.randn(4, 1, 28, 28)
    assert check_rebuild(masked, small, x, "resnet18") <= 1e-4
    assert masked(x).abs().max() > 1e-2

    _, params_tp, layer_ops, _ = tp.utils.count_ops_and_params(small, EXAMPLE, layer_wise=True)
    assert count_params(small)[0] == params_tp < count_params(model)[0] / 2
    # Torch-Pruning also counts BN, activations, pooling and one op per bias per output element; drop those
    # and its conv/linear multiply-accumulates equal the project's counter (the one that logs flops/*).
    positions = {}
    hooks = [
        m.register_forward_hook(lambda m, i, o: positions.__setitem__(m, o[0].numel()))
        for m in small.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    small(EXAMPLE)
    for hook in hooks:
        hook.remove()
    layer_macs = {m: layer_ops[m] - (positions[m] if m.bias is not None else 0) for m in positions}
    assert sum(layer_macs.values()) == count_macs(small, sparse=False) < count_macs(model, sparse=False)
    assert layer_macs[small.fc] == small.fc.weight.numel()


def test_torchvision_resnet18_blocks_are_identity_shortcut_blocks():
    model = annotate(resnet18(), EXAMPLE)
    assert model.structures["block"] == {
        "layer1": ("layer1.0", "layer1.1"),
        "layer2": ("layer2.1",),
        "layer3": ("layer3.1",),
        "layer4": ("layer4.1",),
    }


def test_mobilenet_v2_depthwise_couplings_rebuild_equal_to_masked():
    model = annotate(_warmed(mobilenet_v2()), EXAMPLE)
    assert model.classifier_layer == "classifier.1"  # MobileNet's own "classifier" is a Sequential
    assert not any(model.get_submodule(n).groups > 1 for n in model.channel_layers if "classifier" not in n)
    masked, small = _prune_and_rebuild(model, "channel", 0.5)
    x = torch.randn(4, 1, 28, 28)
    assert check_rebuild(masked, small, x, "mobilenet_v2") <= 1e-4
    assert masked(x).abs().max() > 1e-3
    assert count_params(small)[0] < count_params(model)[0]


def test_a_rebuild_that_changes_the_outputs_is_refused_by_name():
    model = TinyNet().eval()
    other = TinyNet().eval()
    with pytest.raises(RebuildMismatch, match="refusing to rebuild TinyNet: its rebuilt outputs differ"):
        check_rebuild(model, other, torch.randn(2, 1, 28, 28), "TinyNet")


def test_pruning_layers_overrides_what_was_found():
    model = annotate(_warmed(TinyNet()), EXAMPLE)
    spec = PruningSpec(sparsity=0.5, granularity="channel", layers=("conv2",))  # found: stem stands for the group
    plan = compute_masks(model, spec, example_inputs=EXAMPLE)
    assert [row.layer for row in plan.layers] == ["conv2"]
    masked = copy.deepcopy(model)
    apply_masks(masked, plan)
    small = rebuild(masked, plan, EXAMPLE)
    assert small.stem.out_channels == small.conv2.out_channels == 4  # the add keeps them coupled
    assert check_rebuild(masked, small, torch.randn(4, 1, 28, 28), "TinyNet") <= 1e-4
