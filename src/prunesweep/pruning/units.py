"""Granularity: how a layer's weights group into prunable *units*.

A granularity answers four questions, so importance and threshold code never needs to know about shapes:

* which layers have units at all (``has_units``: a channel granularity never prunes the classifier's outputs),
* how many units a layer has (``unit_count``),
* how per-weight numbers fold into per-unit numbers (``unit_view`` / ``reduce``),
* which parameter entries disappear when a unit goes (``expand``), including coupled layers downstream.

Coarser granularities ("layer", "block", "head") live in :mod:`.structures`; any new one subclasses
:class:`Granularity` and registers a name:

>>> import torch
>>> from prunesweep.models import LeNet5
>>> model = LeNet5()
>>> g = Channel().bind(model, torch.zeros(1, 1, 28, 28))
>>> g.unit_count(model.conv2), g.has_units(model, "fc2")
(50, False)
>>> keep = torch.ones(50, dtype=torch.bool); keep[0] = False
>>> masks = g.expand(model, "conv2", keep)
>>> # one conv2 filter (20*5*5 weights) and, through flatten, 16 fc1 input columns
>>> int((~masks["conv2"]["weight"]).sum()), int((~masks["fc1"]["weight"]).sum()) // 500
(500, 16)
"""

from __future__ import annotations

import warnings
from typing import ClassVar

import torch
import torch_pruning as tp
from torch import nn

from prunesweep.pruning._util import (
    classifier_name,
    clone_model,
    effective_param,
    is_reparametrized,
    model_device,
    pruned_tensor_names,
    registrar,
)

GRANULARITIES: dict[str, type[Granularity]] = {}


register_granularity = registrar(GRANULARITIES, "pruning.granularity")


def dependency_graph(model: nn.Module, example_inputs: torch.Tensor) -> tp.DependencyGraph:
    """Torch-Pruning's coupling graph of ``model``, traced on ``example_inputs`` (moved to the model's device).

    The one place that traces, for the channel granularity and for the physical rebuild. Torch-Pruning traces
    through autograd (callers may be under ``no_grad``); free parameters (a ViT's cls/pos embeddings) are never
    pruned here, so its warning about them is noise.
    """
    with torch.enable_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
        return tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs.to(model_device(model)))


class Granularity:
    """Base class. Instances are cheap; :meth:`bind` attaches model state (e.g. a dependency graph)."""

    name: ClassVar[str] = ""
    #: Structured granularities remove whole units (and keep at least one per layer); unstructured ones
    #: zero single weights and may empty a layer, exactly like ``torch.nn.utils.prune``.
    structured: ClassVar[bool] = False
    #: Coarse granularities prune units the model declares in ``model.structures`` (see :mod:`.structures`).
    coarse: ClassVar[bool] = False

    def default_layers(self, model: nn.Module) -> tuple[str, ...]:
        """What ``pruning.layers=null`` means for this granularity on ``model`` (empty if it declares nothing)."""
        return tuple(getattr(model, "prunable_layers", None) or ())

    def unavailable(self, model: nn.Module) -> str | None:
        """``None`` if ``model`` has units of this granularity at all, else a short reason why not."""
        return None

    def count_units(self, model: nn.Module, layer: str) -> int:
        """How many units ``layer`` has (a coarse group's units are not one module's rows)."""
        return self.unit_count(model.get_submodule(layer))

    def layer_params(self, model: nn.Module, layer: str, masks: dict[str, dict[str, torch.Tensor]]) -> tuple[int, int]:
        """``(total, masked)`` weight+bias entries of ``layer`` itself, as a :class:`LayerReport` counts them."""
        module = model.get_submodule(layer)
        total = pruned = 0
        for pname in ("weight", "bias"):
            if getattr(module, pname, None) is None and not is_reparametrized(module, pname):
                continue
            total += effective_param(module, pname).numel()
            mask = masks.get(layer, {}).get(pname)
            pruned += int((~mask).sum()) if mask is not None else 0
        return total, pruned

    def bypassed(self, model: nn.Module, layer: str, keep: torch.Tensor) -> list[str]:
        """Modules that masking alone cannot remove and that must be bypassed (output := input)."""
        return []

    def bind(self, model: nn.Module, example_inputs: torch.Tensor | None = None) -> Granularity:
        """Attach whatever model-specific state :meth:`expand` needs. Returns ``self`` for chaining."""
        return self

    def supports(self, module: nn.Module) -> str | None:
        """``None`` if ``module`` can be pruned at this granularity, else a short reason why not."""
        if "weight" not in module._parameters and "weight_orig" not in module._parameters:
            return f"{type(module).__name__} has no weight parameter"
        return None

    def has_units(self, model: nn.Module, layer: str) -> bool:
        """Whether ``layer`` contributes units (False for layers that are only touched through couplings)."""
        return True

    def unit_count(self, module: nn.Module) -> int:
        raise NotImplementedError

    def unit_label(self, module: nn.Module) -> str:
        """Plural noun used in human-readable notes ("weights", "channels", "neurons")."""
        return "units"

    def unit_view(self, module: nn.Module, tensor: torch.Tensor) -> torch.Tensor:
        """Reshape a weight-shaped tensor so dim 0 indexes units (structured), or return it (unstructured)."""
        raise NotImplementedError

    def reduce(self, module: nn.Module, per_weight: torch.Tensor) -> torch.Tensor:
        """Fold a weight-shaped score into one score per unit (a sum: magnitudes and Taylor terms add up)."""
        return self.unit_view(module, per_weight).sum(dim=1) if self.structured else per_weight

    def units_alive(self, module: nn.Module, weight_mask: torch.Tensor) -> torch.Tensor:
        """Keep-vector of units implied by an existing weight keep-mask: a unit is alive if any weight is."""
        mask = weight_mask.bool()
        return self.unit_view(module, mask).any(dim=1) if self.structured else mask

    def expand(self, model: nn.Module, layer: str, keep: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
        """Turn a per-unit keep-vector of ``layer`` into bool keep-masks ``{module: {param: mask}}``."""
        raise NotImplementedError


@register_granularity("unstructured")
class Unstructured(Granularity):
    """One unit per element of ``weight``; biases are never pruned (as in Han et al. 2015)."""

    structured = False

    def unit_count(self, module: nn.Module) -> int:
        return effective_param(module, "weight").numel()

    def unit_label(self, module: nn.Module) -> str:
        return "weights"

    def unit_view(self, module: nn.Module, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def expand(self, model: nn.Module, layer: str, keep: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
        return {layer: {"weight": keep.bool().clone()}}


@register_granularity("channel")
class Channel(Granularity):
    """One unit per conv output filter / linear output neuron; the classifier's outputs are never units.

    Removing a unit masks its weight slice and bias entry *and* the input slices of every layer that consumes
    it. Couplings come from Torch-Pruning's ``DependencyGraph`` (so flatten, residual adds, concatenations and
    norms are handled for any traceable model), traced on a clean copy so the live model is never touched.
    """

    structured = True
    _SUPPORTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)

    def __init__(self) -> None:
        self._graph: tp.DependencyGraph | None = None
        self._clean: nn.Module | None = None
        self._names: dict[nn.Module, str] = {}
        self._classifier: str | None = None

    def bind(self, model: nn.Module, example_inputs: torch.Tensor | None = None) -> Channel:
        if example_inputs is None:
            raise ValueError("channel granularity needs example_inputs to trace layer couplings")
        self._classifier = classifier_name(model)
        # Trace a deep copy with prune hooks baked in: tracing the live model would see weight_orig*mask
        # products instead of parameters, and must never leave hooks or graph state on the caller's model.
        clean = clone_model(model)
        for module in clean.modules():
            for tensor_name in pruned_tensor_names(module):
                torch.nn.utils.prune.remove(module, tensor_name)
        clean.eval()
        self._graph = dependency_graph(clean, example_inputs)
        self._clean = clean
        self._names = {module: name for name, module in clean.named_modules()}
        return self

    def supports(self, module: nn.Module) -> str | None:
        if not isinstance(module, self._SUPPORTED):
            return f"{type(module).__name__} is not a Conv/Linear layer"
        if isinstance(module, nn.modules.conv._ConvNd) and module.groups != 1:
            return "grouped/depthwise convolutions are not supported yet"
        return None

    def default_layers(self, model: nn.Module) -> tuple[str, ...]:
        # A model may restrict channels to some layers (ViT: MLP hidden neurons, not the residual stream).
        return tuple(getattr(model, "channel_layers", None) or super().default_layers(model))

    def has_units(self, model: nn.Module, layer: str) -> bool:
        return layer != classifier_name(model)

    def unit_count(self, module: nn.Module) -> int:
        return effective_param(module, "weight").shape[0]

    def unit_label(self, module: nn.Module) -> str:
        return "channels" if isinstance(module, nn.modules.conv._ConvNd) else "neurons"

    def unit_view(self, module: nn.Module, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.reshape(tensor.shape[0], -1)

    def expand(self, model: nn.Module, layer: str, keep: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
        if self._graph is None or self._clean is None:
            raise RuntimeError("Channel.expand needs Channel.bind(model, example_inputs) first")
        if layer == self._classifier:
            raise ValueError(f"{layer} is the classifier: its outputs are never pruned")
        masks: dict[str, dict[str, torch.Tensor]] = {}
        root = model.get_submodule(layer)
        self._mask_dim(masks, layer, root, [], dim=0)  # all-True masks even when nothing is pruned
        pruned = (~keep.bool()).nonzero().flatten().tolist()
        if not pruned:
            return masks
        clean_root = self._clean.get_submodule(layer)
        pruner = self._graph.get_pruner_of_module(clean_root)
        group = self._graph.get_pruning_group(clean_root, pruner.prune_out_channels, idxs=pruned)
        for dep, idxs in group:
            name = self._names.get(dep.target.module)
            if name is None:  # Torch-Pruning's virtual nodes (relu, flatten, ...) own no parameters
                continue
            target = model.get_submodule(name)
            if not any(p is not None for p in target._parameters.values()):
                continue
            if self._graph.is_out_channel_pruning_fn(dep.handler):
                self._mask_dim(masks, name, target, idxs, dim=0)
            elif self._graph.is_in_channel_pruning_fn(dep.handler):
                self._mask_dim(masks, name, target, idxs, dim=1)
        return masks

    @staticmethod
    def _mask_dim(
        masks: dict[str, dict[str, torch.Tensor]], name: str, module: nn.Module, idxs: list[int], dim: int
    ) -> None:
        """Clear ``idxs`` along the output (dim=0) or input (dim=1) axis of every parameter of ``module``."""
        entry = masks.setdefault(name, {})
        is_layer = isinstance(module, (nn.modules.conv._ConvNd, nn.Linear))
        for pname in ("weight", "bias"):
            if pname not in module._parameters and f"{pname}_orig" not in module._parameters:
                continue
            param = effective_param(module, pname)
            if param is None:
                continue
            if is_layer and dim == 1 and pname == "bias":
                continue  # removing an input does not remove an output's bias
            if is_layer and isinstance(module, nn.modules.conv._ConvTransposeNd):
                raise NotImplementedError("transposed convolutions are not supported as coupled layers yet")
            if not is_layer and param.dim() != 1:
                raise NotImplementedError(f"cannot mask coupled {type(module).__name__}.{pname}")
            # Norm layers (1-D affine params) follow the channel on axis 0 whether coupled as in or out.
            axis = dim if is_layer else 0
            mask = entry.setdefault(pname, torch.ones(param.shape, dtype=torch.bool, device=param.device))
            if idxs:
                index = torch.as_tensor(idxs, dtype=torch.long, device=param.device)
                mask.index_fill_(axis, index, False)
