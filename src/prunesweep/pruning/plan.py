"""A pruning decision as data (:class:`MaskPlan`), and putting it on a model.

Masks are applied with :class:`HeldMask` (``torch.nn.utils.prune.custom_from_mask``) so they hold during
fine-tuning (``weight = weight_orig * weight_mask`` on every forward, whatever the optimizer does to
``weight_orig``).
Deciding the masks is :func:`prunesweep.pruning.planner.compute_masks`; this module only stores and applies them.

>>> import torch
>>> from prunesweep.models import LeNet5
>>> model = LeNet5()
>>> keep = torch.ones(20, 1, 5, 5, dtype=torch.bool); keep[0] = False     # conv1's first filter goes
>>> plan = MaskPlan(masks={"conv1": {"weight": keep}}, layers=[LayerReport("conv1", 500, 25, 520, 25, 25 / 520)])
>>> apply_masks(model, plan)
>>> int((model.conv1.weight[0] != 0).sum()), masked_nonzero(model), round(plan.unit_sparsity, 3)
(0, 0, 0.05)
>>> sorted(export_state_dict(model))[:2]
['conv1.bias', 'conv1.weight']
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from prunesweep.pruning._util import effective_param, is_reparametrized, pruned_tensor_names
from prunesweep.pruning.spec import PruningSpec


@dataclass
class LayerReport:
    """Per-layer outcome. ``units_*`` count units of this layer's own granularity (0 for a classifier under
    channel pruning); ``params_*`` and ``sparsity`` count this module's weight+bias entries masked by the
    plan, including those removed through couplings (e.g. fc1 columns fed by pruned conv2 channels)."""

    layer: str
    units_total: int
    units_pruned: int
    params_total: int
    params_pruned: int
    sparsity: float
    threshold: float | None = None
    score_mean: float | None = None
    score_std: float | None = None
    k: float | None = None
    mu: float | None = None
    sigma: float | None = None
    target: float | None = None

    @property
    def unit_sparsity(self) -> float:
        return self.units_pruned / self.units_total if self.units_total else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class MaskPlan:
    """Everything one pruning step decided. ``masks`` are bool keep-masks (True = keep)."""

    masks: dict[str, dict[str, torch.Tensor]]
    layers: list[LayerReport]
    notes: list[str] = field(default_factory=list)
    kept_units: dict[str, torch.Tensor] = field(default_factory=dict)
    spec: PruningSpec | None = None
    granularity: str = "unstructured"
    #: Modules whose output is replaced by their input (a removed unit that zero weights alone cannot turn
    #: into identity, e.g. a conv+BN inside a residual block); see :mod:`.structures`.
    bypass: tuple[str, ...] = ()

    @property
    def units_total(self) -> int:
        return sum(r.units_total for r in self.layers)

    @property
    def units_pruned(self) -> int:
        return sum(r.units_pruned for r in self.layers)

    @property
    def unit_sparsity(self) -> float:
        """Achieved fraction of units pruned over all pruned layers (weights for unstructured)."""
        return self.units_pruned / self.units_total if self.units_total else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (no tensors) for logging."""
        return {
            "granularity": self.granularity,
            "units_total": self.units_total,
            "units_pruned": self.units_pruned,
            "unit_sparsity": self.unit_sparsity,
            "layers": [r.to_dict() for r in self.layers],
            "notes": list(self.notes),
            "bypass": list(self.bypass),
        }


class Bypass:
    """Forward hook making a module an identity map; a class so it can be found, copied and removed."""

    def __call__(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        return inputs[0]


def is_bypassed(module: nn.Module) -> bool:
    return any(isinstance(hook, Bypass) for hook in module._forward_hooks.values())


def remove_bypasses(model: nn.Module) -> None:
    """Drop every :class:`Bypass` hook (before a rebuild replaces those modules by ``nn.Identity``)."""
    for module in model.modules():
        for key in [k for k, hook in module._forward_hooks.items() if isinstance(hook, Bypass)]:
            del module._forward_hooks[key]


def merge_masks(into: dict[str, dict[str, torch.Tensor]], masks: dict[str, dict[str, torch.Tensor]]) -> None:
    """AND ``masks`` into ``into`` (a module can be both a pruned layer and a coupled consumer)."""
    for module, params in masks.items():
        entry = into.setdefault(module, {})
        for pname, mask in params.items():
            mask = mask.detach().bool().cpu()
            entry[pname] = entry[pname] & mask if pname in entry else mask.clone()


def has_module(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
    except AttributeError:
        return False
    return True


class HeldMask(prune.CustomFromMask):
    """``prune.custom_from_mask`` whose masked tensor keeps the strides of ``weight_orig``.

    ``mask * orig`` lays a tensor with a size-1 dimension (a first convolution's single input channel) out as
    contiguous even when ``orig`` is channels-last; the convolution then takes its slower contiguous kernels and
    hands that layout on to the next layers.

    >>> conv = nn.Conv2d(1, 4, 3).to(memory_format=torch.channels_last)
    >>> _ = HeldMask.apply(conv, "weight", mask=torch.ones(4, 1, 3, 3))
    >>> conv(torch.zeros(1, 1, 8, 8)).is_contiguous(memory_format=torch.channels_last)
    True
    """

    def apply_mask(self, module: nn.Module) -> torch.Tensor:
        return _laid_out_like(super().apply_mask(module), getattr(module, self._tensor_name + "_orig"))


class SplicedMask(HeldMask):
    """A mask whose pruned weights keep learning: the forward uses ``weight_orig * mask`` exactly, but the gradient
    reaches every entry of ``weight_orig`` unmasked (straight-through), so a pruned weight that the pruned network
    needs grows and can be spliced back in by the next mask update (Guo et al. 2016's splicing, in the form of
    Lin et al. 2020's dynamic pruning with feedback). :func:`unsplice` takes it off before masks are revised.

    >>> fc = nn.Linear(2, 1, bias=False)
    >>> with torch.no_grad():
    ...     _ = fc.weight.copy_(torch.tensor([[1.0, 2.0]]))
    >>> _ = SplicedMask.apply(fc, "weight", mask=torch.tensor([[1.0, 0.0]]))
    >>> fc(torch.tensor([[3.0, 4.0]])).sum().backward()
    >>> fc.weight.tolist(), fc.weight_orig.grad.tolist()    # the forward is masked, the gradient is not
    ([[1.0, 0.0]], [[3.0, 4.0]])
    """

    def apply_mask(self, module: nn.Module) -> torch.Tensor:
        orig = getattr(module, self._tensor_name + "_orig")
        mask = getattr(module, self._tensor_name + "_mask")
        # ``orig * mask`` plus exact zeros (the held mask's values), laid out once per forward
        return _laid_out_like(orig * mask + (orig - orig.detach()) * (1 - mask), orig)


def _laid_out_like(tensor: torch.Tensor, orig: torch.Tensor) -> torch.Tensor:
    """``tensor`` with ``orig``'s strides (a copy that autograd sees through, when they differ)."""
    return tensor if tensor.stride() == orig.stride() else torch.empty_like(orig).copy_(tensor)


def unsplice(model: nn.Module) -> int:
    """Take every :class:`SplicedMask` off ``model``, leaving ``weight_orig``'s current values, pruned entries
    included, as the plain parameter (the same Parameter object, so an optimizer keeps training it), and the
    bypasses placed with them (the next update decides those again). Returns how many tensors it freed; masks of
    any other kind stay."""
    freed = 0
    for module in model.modules():
        for key, hook in list(module._forward_pre_hooks.items()):
            if isinstance(hook, SplicedMask):
                name = hook._tensor_name
                del module._forward_pre_hooks[key]
                delattr(module, name)
                orig = module._parameters.pop(name + "_orig")
                del module._buffers[name + "_mask"]
                module.register_parameter(name, orig)
                freed += 1
    if freed:
        remove_bypasses(model)
    return freed


def apply_masks(model: nn.Module, plan: MaskPlan, *, spliced: bool = False) -> None:
    """Attach every mask of ``plan`` as a :class:`HeldMask` (``prune.custom_from_mask``), or as a
    :class:`SplicedMask` when ``spliced`` (the pruned weights keep learning until the next update).

    A parameter that is already pruned first gets its old mask baked in (``prune.remove``) and then the new
    one: masks never stack into a ``PruningContainer``, whose amounts would be relative to the remainder.
    Parameter objects keep their identity (``weight`` becomes ``weight_orig``), so an optimizer created
    earlier keeps training the same tensors. Modules in ``plan.bypass`` get a :class:`Bypass` hook (once).
    """
    for module_name, params in plan.masks.items():
        module = model.get_submodule(module_name)
        for pname, mask in params.items():
            if is_reparametrized(module, pname):
                prune.remove(module, pname)
            param = getattr(module, pname)
            (SplicedMask if spliced else HeldMask).apply(module, pname, mask=mask.to(device=param.device))
    for module_name in plan.bypass:
        module = model.get_submodule(module_name)
        if not is_bypassed(module):
            module.register_forward_hook(Bypass())


def make_permanent(model: nn.Module) -> None:
    """``prune.remove`` everywhere: plain parameters with the zeros baked in, no hooks or mask buffers."""
    for module in model.modules():
        for tensor_name in pruned_tensor_names(module):
            prune.remove(module, tensor_name)


def export_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """A plain state dict (``weight``, not ``weight_orig``/``weight_mask``) that loads with ``strict=True``
    into a fresh model of the same class. The live model is not modified."""
    state = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        base = key.rsplit(".", 1)
        prefix, leaf = (base[0] + ".", base[1]) if len(base) == 2 else ("", base[0])
        if leaf.endswith("_mask") and f"{prefix}{leaf[:-5]}_orig" in state:
            continue
        if leaf.endswith("_orig") and f"{prefix}{leaf[:-5]}_mask" in state:
            out[f"{prefix}{leaf[:-5]}"] = (value * state[f"{prefix}{leaf[:-5]}_mask"]).detach().clone()
            continue
        out[key] = value.detach().clone()
    return out


def masked_nonzero(model: nn.Module, plan: MaskPlan | None = None) -> int:
    """How many masked-out entries of the effective weights are nonzero (0 unless something is broken).

    Without ``plan`` it checks the masks attached to the model (NaN/inf in ``weight_orig`` shows up here);
    with ``plan`` it checks the plan's masks, which also works after :func:`make_permanent`.
    """
    count = 0
    if plan is not None:
        for module_name, params in plan.masks.items():
            module = model.get_submodule(module_name)
            for pname, mask in params.items():
                value = effective_param(module, pname).detach()
                count += int((value[~mask.to(value.device)] != 0).sum())
        return count
    for module in model.modules():
        for pname in list(module._buffers):
            if pname.endswith("_mask") and is_reparametrized(module, pname[:-5]):
                value = effective_param(module, pname[:-5]).detach()
                count += int((value[module._buffers[pname] == 0] != 0).sum())
    return count
