"""Prunable units found automatically, for models that declare none (any ``nn.Module`` built from a config).

:func:`annotate` sets the same instance attributes a hand-written model declares (see :mod:`prunesweep.models`),
so the rest of the engine cannot tell the difference:

* ``prunable_layers`` (unstructured): every Conv and Linear that ``forward`` calls, in call order.
* ``classifier``: the Conv/Linear whose output *is* the model's output; its outputs are never removed. Where
  ``classifier`` is already a submodule (torchvision's MobileNet, VGG), the name goes to ``classifier_layer``.
* ``channel_layers`` (channel): one Conv/Linear per coupled group of output channels, traced by Torch-Pruning's
  ``DependencyGraph`` (residual adds, concatenation, depthwise/grouped convs and norms join a group). Pruning a
  group's first layer prunes the whole group, so listing one per group keeps cuts from compounding across
  the layers a residual stream ties together. Groups that reach the classifier's outputs are left out, and so
  are depthwise/grouped convs as roots (they follow the layer that feeds them).
* ``structures["block"]``: residual blocks whose shortcut is the identity (torchvision's ``BasicBlock`` and
  ``Bottleneck`` without ``downsample``, ``InvertedResidual`` with ``use_res_connect``), grouped by their
  parent module. A removed block is bypassed (output := input) when masked and replaced by ``nn.Identity`` when
  rebuilt, so both are the same function; shapes are checked again when the granularity binds.

Declarations win: a model that declares ``prunable_layers`` is left exactly as it is, and a model that declares
only some attributes keeps those. ``pruning.layers`` still overrides whatever is found here.

>>> import torch
>>> from torch import nn
>>> class Net(nn.Module):
...     def __init__(self):
...         super().__init__()
...         self.a, self.b = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
...         self.head = nn.Linear(8, 10)
...     def forward(self, x):
...         x = torch.relu(self.a(x))
...         x = x + self.b(x)  # a residual add couples a's and b's outputs
...         return self.head(x.mean((2, 3)))
>>> net = annotate(Net(), torch.zeros(1, 1, 28, 28))
>>> net.prunable_layers, net.classifier, net.channel_layers
(('a', 'b', 'head'), 'head', ('a',))
"""

from __future__ import annotations

import warnings

import torch
import torch_pruning as tp
from torch import nn

from prunesweep.pruning._util import classifier_name, eval_mode, model_device

_LAYER_TYPES = (nn.modules.conv._ConvNd, nn.Linear)
# Residual blocks whose identity shortcut makes "skip the block" a shape-preserving, well-defined removal.
_IDENTITY_SHORTCUT = {"BasicBlock": "downsample", "Bottleneck": "downsample"}


def annotate(model: nn.Module, example_inputs: torch.Tensor) -> nn.Module:
    """Set ``prunable_layers``, ``classifier``, ``channel_layers`` and ``structures`` on ``model`` where it
    declares none (see the module docstring). Returns ``model`` itself, for chaining."""
    if getattr(model, "prunable_layers", None):
        return model  # a declaring model (LeNet-5, the project's ResNet/ViT) knows its units best
    called = _called_layers(model, example_inputs)
    model.prunable_layers = tuple(called)
    classifier = classifier_name(model)
    if classifier is None:
        classifier = _classifier(model, called, example_inputs)
        # torchvision's MobileNet/VGG own a submodule called "classifier": name the layer beside it instead.
        taken = isinstance(getattr(model, "classifier", None), nn.Module)
        setattr(model, "classifier_layer" if taken else "classifier", classifier)
    if getattr(model, "channel_layers", None) is None:
        model.channel_layers = channel_groups(model, example_inputs, classifier, called)
    if getattr(model, "structures", None) is None:
        blocks = residual_blocks(model)
        model.structures = {"block": blocks} if blocks else {}
    return model


def _called_layers(model: nn.Module, example_inputs: torch.Tensor) -> list[str]:
    """Conv/Linear modules in the order ``forward`` first calls them (modules never called are not units)."""
    order: list[str] = []
    handles = [
        module.register_forward_hook(lambda m, i, o, name=name: order.append(name) if name not in order else None)
        for name, module in model.named_modules()
        if isinstance(module, _LAYER_TYPES)
    ]
    try:
        with eval_mode(model), torch.inference_mode():
            model(example_inputs[:1].to(model_device(model)))
    finally:
        for handle in handles:
            handle.remove()
    return order


def _classifier(model: nn.Module, called: list[str], example_inputs: torch.Tensor) -> str | None:
    """The layer whose output tensor is returned by ``forward`` (None if no single layer's is)."""
    outputs: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())
    handles = [
        modules[name].register_forward_hook(lambda m, i, o, name=name: outputs.__setitem__(name, o)) for name in called
    ]
    try:
        with eval_mode(model), torch.inference_mode():
            result = model(example_inputs[:1].to(model_device(model)))
    finally:
        for handle in handles:
            handle.remove()
    if not isinstance(result, torch.Tensor):
        return None
    for name in reversed(called):
        out = outputs[name]
        # The same storage and shape: returned as is, or through views/no-ops such as eval-mode dropout.
        if out.shape == result.shape and out.data_ptr() == result.data_ptr():
            return name
    return None


def _dependency_graph(model: nn.Module, example_inputs: torch.Tensor) -> tp.DependencyGraph:
    with eval_mode(model), torch.enable_grad(), warnings.catch_warnings():  # Torch-Pruning traces via autograd
        warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
        return tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs[:1].to(model_device(model)))


def channel_groups(
    model: nn.Module, example_inputs: torch.Tensor, classifier: str | None, called: list[str] | None = None
) -> tuple[str, ...]:
    """One Conv/Linear per coupled group of output channels, in forward order (see the module docstring).

    ``called`` (default: traced now) is the forward order of the layers. The graph is traced on the model
    itself and dropped afterwards: Torch-Pruning only reads it.
    """
    graph = _dependency_graph(model, example_inputs)
    names = {module: name for name, module in model.named_modules()}
    seen: set[str] = set()
    roots: list[str] = []
    for name in called if called is not None else _called_layers(model, example_inputs):
        module = model.get_submodule(name)
        if name in seen or (isinstance(module, nn.modules.conv._ConvNd) and module.groups != 1):
            continue
        pruner = graph.get_pruner_of_module(module)
        group = graph.get_pruning_group(module, pruner.prune_out_channels, idxs=[0])
        members = {
            names[dep.target.module]
            for dep, _ in group
            if dep.target.module in names and graph.is_out_channel_pruning_fn(dep.handler)
        }
        seen.update(members)
        if classifier not in members:
            roots.append(name)
    return tuple(roots)


def residual_blocks(model: nn.Module) -> dict[str, tuple[str, ...]]:
    """``{parent: blocks}`` of the identity-shortcut residual blocks found in ``model`` (see the docstring)."""
    groups: dict[str, list[str]] = {}
    for name, module in model.named_modules():
        kind = type(module).__name__
        identity = (kind in _IDENTITY_SHORTCUT and getattr(module, _IDENTITY_SHORTCUT[kind], 0) is None) or (
            kind == "InvertedResidual" and getattr(module, "use_res_connect", False) is True
        )
        if identity and name:
            parent = name.rpartition(".")[0]
            groups.setdefault(parent, []).append(name)
    return {parent: tuple(blocks) for parent, blocks in groups.items() if parent}


def largest_layer(model: nn.Module) -> str | None:
    """The prunable layer with the most weights (LeNet-5: ``fc1``), e.g. for the before/after weight figure."""
    layers = getattr(model, "prunable_layers", None) or ()
    sizes = {name: model.get_submodule(name).weight.numel() for name in layers}
    return max(sizes, key=sizes.__getitem__) if sizes else None
