"""Glue: spec -> scores -> keep-vectors -> parameter masks (:func:`compute_masks`), and applying them.

Masks are applied with ``torch.nn.utils.prune.custom_from_mask`` so they hold during fine-tuning
(``weight = weight_orig * weight_mask`` on every forward, whatever the optimizer does to ``weight_orig``).

>>> import torch
>>> from prunesweep.models import LeNet5
>>> model = LeNet5()
>>> plan = compute_masks(model, PruningSpec(sparsity=0.9, threshold="global"))
>>> apply_masks(model, plan)
>>> round(plan.unit_sparsity, 3), masked_nonzero(model)
(0.9, 0)
>>> sorted(export_state_dict(model))[:2]
['conv1.bias', 'conv1.weight']
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from prunesweep.pruning._util import (
    DEFAULT_INPUT_SHAPE,
    effective_param,
    is_reparametrized,
    model_device,
    pruned_tensor_names,
)
from prunesweep.pruning.importance import IMPORTANCES
from prunesweep.pruning.spec import PruningSpec, resolve_layers, validate_spec
from prunesweep.pruning.thresholds import THRESHOLDS, Threshold
from prunesweep.pruning.units import GRANULARITIES, Granularity


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


def _merge(into: dict[str, dict[str, torch.Tensor]], masks: dict[str, dict[str, torch.Tensor]]) -> None:
    """AND ``masks`` into ``into`` (a module can be both a pruned layer and a coupled consumer)."""
    for module, params in masks.items():
        entry = into.setdefault(module, {})
        for pname, mask in params.items():
            mask = mask.detach().bool().cpu()
            entry[pname] = entry[pname] & mask if pname in entry else mask.clone()


def _stats(score: torch.Tensor) -> tuple[float | None, float | None]:
    finite = score[torch.isfinite(score)].double()
    if finite.numel() == 0:
        return None, None
    return float(finite.mean()), float(finite.std(unbiased=False))


def make_threshold(spec: PruningSpec) -> Threshold:
    """The threshold object ``spec`` names, set up for its granularity (keep-one floor for structured units).

    Build it once and pass it to every :func:`compute_masks` call of a schedule when it ``needs_calibration``,
    so it measures the model once."""
    return THRESHOLDS[spec.threshold].from_spec(spec, structured=GRANULARITIES[spec.granularity].structured)


def compute_masks(
    model: nn.Module,
    spec: PruningSpec,
    calib: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
    previous: MaskPlan | None = None,
    *,
    example_inputs: torch.Tensor | None = None,
    threshold: Threshold | None = None,
    threshold_batches: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> MaskPlan:
    """Decide what to prune; touches nothing on ``model`` (see :func:`apply_masks`).

    ``previous`` (iterative pruning): units already pruned by it get score ``-inf`` so they stay pruned, the
    target is cumulative, and the new masks are AND-ed with the old ones. ``example_inputs`` (default
    ``zeros(1, 1, 28, 28)``) is only used to trace couplings for structured granularities.

    ``threshold`` (default: a fresh one built from ``spec``) lets a schedule keep one threshold object across
    calls; one that ``needs_calibration`` (``sensitivity``) is calibrated on ``threshold_batches`` the first
    time, with the scores of the model as it is then. Pass held-out data there: without it the ``calib``
    (training) batches are used.
    """
    validate_spec(spec, model)
    layers = resolve_layers(spec, model)
    granularity: Granularity = GRANULARITIES[spec.granularity]()
    if granularity.structured:
        if example_inputs is None:
            example_inputs = torch.zeros(DEFAULT_INPUT_SHAPE, device=model_device(model))
        granularity.bind(model, example_inputs)
    scored = [layer for layer in layers if granularity.has_units(model, layer)]
    modules = {layer: model.get_submodule(layer) for layer in layers}
    notes: list[str] = []

    importance = IMPORTANCES[spec.importance].from_spec(spec)
    # Thresholds run on CPU copies: cheap for these models, and masks end up device-independent.
    scores = {k: v.detach().float().cpu() for k, v in importance.score(model, scored, granularity, calib).items()}
    raw_stats = {layer: _stats(scores[layer]) for layer in scored}

    if previous is not None:
        for layer in scored:
            old = previous.masks.get(layer, {}).get("weight")
            if granularity.coarse and layer in previous.kept_units:
                alive = torch.zeros(scores[layer].shape, dtype=torch.bool)
                alive[previous.kept_units[layer].cpu()] = True
                scores[layer] = scores[layer].masked_fill(~alive, float("-inf"))
            elif old is not None:
                alive = granularity.units_alive(modules[layer], old).reshape(scores[layer].shape)
                scores[layer] = scores[layer].masked_fill(~alive, float("-inf"))

    if threshold is None:
        threshold = make_threshold(spec)
    if threshold.needs_calibration and not threshold.calibrated:
        batches = threshold_batches if threshold_batches is not None else calib
        if batches is None:
            raise ValueError(f"threshold={spec.threshold} measures the model: pass threshold_batches (held-out data)")
        threshold.calibrate(model, {layer: scores[layer] for layer in scored}, granularity, batches)
    if spec.threshold != "global" and spec.normalize not in ("auto", "none"):
        notes.append(f"pruning.normalize={spec.normalize} only applies to threshold=global; ignored")
    if spec.threshold != "layerwise" and spec.layer_sparsity:
        notes.append("pruning.layer_sparsity only applies to threshold=layerwise; ignored")
    alloc = threshold.select(scores, spec.sparsity)
    notes.extend(alloc.notes)
    for layer in alloc.floored:
        keep = alloc.keep[layer]
        notes.append(
            f"{layer}: kept {int(keep.sum())} of {keep.numel()} {granularity.unit_label(modules[layer])} "
            "(target would remove all)"
        )

    # Methods that promise a count must deliver it; anything else is a bug worth stopping a sweep for.
    sizes = {layer: scores[layer].numel() for layer in scored}
    for group, expected in (threshold.promised(sizes, spec.sparsity) or {}).items():
        if alloc.adjusted.intersection(group):
            continue
        achieved = sum(int((~alloc.keep[layer]).sum()) for layer in group)
        if abs(achieved - expected) > len(group):
            raise RuntimeError(
                f"threshold={spec.threshold} promised to prune {expected} units of {list(group)} but pruned {achieved}"
            )

    masks: dict[str, dict[str, torch.Tensor]] = {}
    bypass: list[str] = []
    for layer in scored:
        _merge(masks, granularity.expand(model, layer, alloc.keep[layer]))
        bypass.extend(granularity.bypassed(model, layer, alloc.keep[layer]))
    if previous is not None:
        _merge(masks, {m: p for m, p in previous.masks.items() if m in masks or _has_module(model, m)})
        bypass.extend(m for m in previous.bypass if m not in bypass)

    kept_units: dict[str, torch.Tensor] = {}
    if granularity.structured:
        kept_units = {layer: alloc.keep[layer].nonzero().flatten() for layer in scored}
    if granularity.structured and not granularity.coarse:
        # Coupled outputs (a residual add joins the stem's and every block's channels) are removed together,
        # so a layer can lose more units than its own target: report and rebuild what the masks removed.
        for layer in scored:
            alive = granularity.units_alive(modules[layer], masks[layer]["weight"]).reshape(alloc.keep[layer].shape)
            extra = int((alloc.keep[layer] & ~alive).sum())
            if not alive.any():
                raise ValueError(
                    f"channel pruning removed every output of {layer}: its outputs are coupled (e.g. by residual "
                    "adds) to other pruned layers whose cuts add up; prune fewer coupled layers (pruning.layers, "
                    "or the model's channel_layers)"
                )
            if extra:
                notes.append(
                    f"{layer}: {extra} more {granularity.unit_label(modules[layer])} removed through coupling "
                    f"with other layers' outputs ({int((~alive).sum())} of {alive.numel()} in all)"
                )
                alloc.keep[layer] = alive
                kept_units[layer] = alive.nonzero().flatten()

    reports = []
    for layer in layers:
        params_total, params_pruned = granularity.layer_params(model, layer, masks)
        info = alloc.info.get(layer, {})
        mean, std = raw_stats.get(layer, (None, None))
        has_units = layer in alloc.keep
        target = None
        if has_units:
            target = (
                float(spec.layer_sparsity.get(layer, spec.sparsity)) if spec.threshold == "layerwise" else spec.sparsity
            )
            target = info.get("layer_target", target)
        reports.append(
            LayerReport(
                layer=layer,
                units_total=alloc.keep[layer].numel() if has_units else 0,
                units_pruned=int((~alloc.keep[layer]).sum()) if has_units else 0,
                params_total=params_total,
                params_pruned=params_pruned,
                sparsity=params_pruned / params_total if params_total else 0.0,
                threshold=info.get("threshold"),
                score_mean=mean,
                score_std=std,
                k=info.get("k"),
                mu=info.get("mu"),
                sigma=info.get("sigma"),
                target=target,
            )
        )
        if has_units and not granularity.structured and reports[-1].units_pruned == reports[-1].units_total:
            notes.append(f"{layer}: all {reports[-1].units_total} weights pruned (layer collapse)")
    return MaskPlan(
        masks=masks,
        layers=reports,
        notes=notes,
        kept_units=kept_units,
        spec=spec,
        granularity=spec.granularity,
        bypass=tuple(bypass),
    )


def _has_module(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
    except AttributeError:
        return False
    return True


def apply_masks(model: nn.Module, plan: MaskPlan) -> None:
    """Attach every mask of ``plan`` with ``prune.custom_from_mask``.

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
            prune.custom_from_mask(module, pname, mask.to(device=param.device))
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
