"""Coarse units: whole layers, residual blocks and attention heads (``layer``, ``block``, ``head``).

A model declares them in ``model.structures = {granularity: {group: units}}`` (see :mod:`prunesweep.models`).
The *group* (a ResNet stage, a ViT encoder layer or attention module) plays the part a layer plays for
``channel``: ``layerwise`` cuts within each group, ``global`` across groups, ``pruning.layers`` lists groups,
and every group keeps at least one unit.

Masking semantics: a masked unit behaves exactly like the removed one, so fine-tuning and measuring the
masked model mean the same thing as the rebuilt one.

* ``block`` / ``layer`` units are modules replaced by ``nn.Identity`` when rebuilt. Every parameter of the unit
  is masked to zero (so it counts as removed and cannot grow back). For residual modules (``x + f(x)``,
  marked ``zeroed_is_identity``) zero parameters already make the contribution exactly 0; any other unit
  (a conv+BN inside a ResNet block: zeroing gives BN's shift, not the input) is also *bypassed*, a forward
  hook that returns the module's input (``MaskPlan.bypass``).
* ``head`` units are slices of an attention module's q/k/v rows (weights and biases) and of its output
  projection's input columns. Zeroing q/k alone would only make attention uniform; zero v and output
  columns make the head contribute exactly nothing. The rebuilt attention has smaller projections
  (:func:`prunesweep.pruning.reconstruct.rebuild_heads`).

>>> import torch
>>> from prunesweep.models import ViT
>>> from prunesweep.pruning import PruningSpec, apply_masks, compute_masks, rebuild
>>> model = ViT().eval()
>>> plan = compute_masks(model, PruningSpec(sparsity=0.5, granularity="head", threshold="layerwise"))
>>> apply_masks(model, plan)
>>> small = rebuild(model, plan)
>>> small.encoder[0].attn.fn.num_heads, small.encoder[0].attn.fn.q.out_features
(2, 32)
>>> x = torch.randn(4, 1, 28, 28)
>>> bool((small(x) - model(x)).abs().max() < 1e-5)
True
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from prunesweep.pruning._util import DEFAULT_INPUT_SHAPE, effective_param, eval_mode, model_device
from prunesweep.pruning.units import Granularity, register_granularity

Masks = dict[str, dict[str, torch.Tensor]]
#: ``record(unit_index, contribution)``: a unit's additive contribution to the residual stream, per sample.
Recorder = Callable[[int, torch.Tensor], None]


class Structures(Granularity):
    """Base class of the coarse granularities: units come from ``model.structures[self.name]``."""

    structured = True
    coarse = True
    label: str = "units"

    def _groups(self, model: nn.Module) -> dict[str, tuple[str, ...]]:
        return dict(getattr(model, "structures", {}).get(self.name, {}))

    def default_layers(self, model: nn.Module) -> tuple[str, ...]:
        return tuple(self._groups(model))

    def unavailable(self, model: nn.Module) -> str | None:
        if not self._groups(model):
            return f"{type(model).__name__} declares no {self.name} units (model.structures[{self.name!r}])"
        return None

    def unavailable_layer(self, model: nn.Module, layer: str) -> str | None:
        groups = self._groups(model)
        if layer not in groups:
            return f"not a group of {self.name} units of {type(model).__name__}; its groups are {sorted(groups)}"
        return None

    def supports(self, module: nn.Module) -> str | None:
        return None

    def units(self, model: nn.Module, layer: str) -> tuple[str, ...]:
        return self._groups(model)[layer]

    def count_units(self, model: nn.Module, layer: str) -> int:
        return len(self.units(model, layer))

    def unit_label(self, module: nn.Module) -> str:
        return self.label

    def layer_params(self, model: nn.Module, layer: str, masks: Masks) -> tuple[int, int]:
        """Every parameter entry under the group module, and how many of them ``masks`` removes."""
        total = pruned = 0
        for name, module in model.get_submodule(layer).named_modules(prefix=layer):
            for pname in _param_names(module):
                total += effective_param(module, pname).numel()
                mask = masks.get(name, {}).get(pname)
                pruned += int((~mask).sum()) if mask is not None else 0
        return total, pruned

    def unit_masks(self, model: nn.Module, layer: str, index: int) -> Masks:
        """Keep-masks that remove unit ``index`` of ``layer`` alone (False = removed)."""
        keep = torch.ones(self.count_units(model, layer), dtype=torch.bool)
        keep[index] = False
        return self.expand(model, layer, keep)

    def watch(self, model: nn.Module, layer: str, record: Recorder) -> list[torch.utils.hooks.RemovableHandle]:
        """Hooks that report each unit's contribution to the residual stream on every forward pass."""
        raise NotImplementedError


def _param_names(module: nn.Module) -> list[str]:
    """Plain names of the module's own parameters (``weight`` for a pruned ``weight_orig``)."""
    return [name.removesuffix("_orig") for name, p in module._parameters.items() if p is not None]


class ModuleUnits(Structures):
    """Units are modules with equal input and output shapes, removed by replacing them with identity."""

    def bind(self, model: nn.Module, example_inputs: torch.Tensor | None = None) -> ModuleUnits:
        # Replacing a unit by identity only works if it keeps the shape: check every declared unit once.
        example = example_inputs if example_inputs is not None else torch.zeros(DEFAULT_INPUT_SHAPE)
        units = [unit for group in self._groups(model) for unit in self.units(model, group)]
        shapes: dict[str, tuple[torch.Size, torch.Size]] = {}

        def hook(name: str):
            def record(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
                shapes[name] = (inputs[0].shape, output.shape)

            return record

        handles = [model.get_submodule(u).register_forward_hook(hook(u)) for u in units]
        try:
            with eval_mode(model), torch.inference_mode():
                model(example[:1].to(model_device(model)))
        finally:
            for handle in handles:
                handle.remove()
        for unit in units:
            if unit not in shapes:
                raise ValueError(f"{self.name} unit {unit} is never called by {type(model).__name__}.forward")
            before, after = shapes[unit]
            if before != after:
                raise ValueError(
                    f"{self.name} unit {unit} changes the shape {tuple(before[1:])} -> {tuple(after[1:])}: replacing "
                    "it with identity would break the network (e.g. a downsampling block); do not declare it"
                )
        return self

    def expand(self, model: nn.Module, layer: str, keep: torch.Tensor) -> Masks:
        masks: Masks = {}
        for unit, kept in zip(self.units(model, layer), keep.tolist(), strict=True):
            if kept:
                continue
            for name, module in model.get_submodule(unit).named_modules(prefix=unit):
                for pname in _param_names(module):
                    param = effective_param(module, pname)
                    masks.setdefault(name, {})[pname] = torch.zeros(param.shape, dtype=torch.bool)
        return masks

    def bypassed(self, model: nn.Module, layer: str, keep: torch.Tensor) -> list[str]:
        return [
            unit
            for unit, kept in zip(self.units(model, layer), keep.tolist(), strict=True)
            if not kept and not getattr(model.get_submodule(unit), "zeroed_is_identity", False)
        ]

    def watch(self, model, layer, record):
        def hook(index: int):
            def contribution(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
                record(index, output - inputs[0])  # what replacing the unit by identity takes away

            return contribution

        return [model.get_submodule(u).register_forward_hook(hook(i)) for i, u in enumerate(self.units(model, layer))]


@register_granularity("layer")
class Layer(ModuleUnits):
    """A single layer whose input and output shapes match (ResNet: a conv+BN of a same-shape block; ViT: the
    attention or MLP sub-layer of an encoder layer), replaced by identity."""

    label = "layers"


@register_granularity("block")
class Block(ModuleUnits):
    """A whole residual block (ResNet, same-shape blocks only) or encoder layer (ViT), replaced by its shortcut."""

    label = "blocks"


@register_granularity("head")
class Head(Structures):
    """Attention heads of a group's attention module (q/k/v/out ``nn.Linear`` and ``num_heads``)."""

    label = "heads"

    def unavailable_layer(self, model: nn.Module, layer: str) -> str | None:
        reason = super().unavailable_layer(model, layer)
        if reason is None and not all(hasattr(model.get_submodule(layer), a) for a in ("q", "k", "v", "out")):
            reason = "head units need an attention module with q, k, v and out projections"
        return reason

    def expand(self, model: nn.Module, layer: str, keep: torch.Tensor) -> Masks:
        attn = model.get_submodule(layer)
        head_dim = effective_param(attn.q, "weight").shape[0] // keep.numel()
        gone = torch.repeat_interleave(~keep.bool().cpu(), head_dim)  # per q/k/v row = per out column
        masks: Masks = {}
        for proj in ("q", "k", "v"):  # the head's rows (outputs), weights and biases
            module = attn.get_submodule(proj)
            masks[f"{layer}.{proj}"] = {"weight": (~gone)[:, None].expand_as(effective_param(module, "weight"))}
            if getattr(module, "bias", None) is not None or "bias_orig" in module._parameters:
                masks[f"{layer}.{proj}"]["bias"] = ~gone
        # ...and its input columns of the output projection (whose bias belongs to no head and stays)
        masks[f"{layer}.out"] = {"weight": (~gone)[None, :].expand_as(effective_param(attn.out, "weight"))}
        return {m: {p: v.clone() for p, v in ps.items()} for m, ps in masks.items()}

    def watch(self, model, layer, record):
        attn = model.get_submodule(layer)

        def contribution(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            context = inputs[0]  # (N, T, H*d): the heads' outputs, concatenated, before the output projection
            weight = effective_param(module, "weight")
            heads = attn.num_heads
            for h, (ctx, w) in enumerate(zip(context.chunk(heads, -1), weight.chunk(heads, 1), strict=True)):
                record(h, ctx @ w.T)

        return [attn.out.register_forward_pre_hook(contribution)]
