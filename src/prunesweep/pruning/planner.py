"""Deciding what to prune: validation, factories, and :func:`compute_masks` (spec -> scores -> masks).

Validation happens before any tensor work so a bad sweep point fails in milliseconds with a message that
names the config key, the bad value and what is allowed. It reads the strategies' capabilities
(``accepts``, ``requires_calibration``, ``coarse``...), never their names:

>>> from prunesweep.models import LeNet5
>>> validate_spec(PruningSpec(sparsity=0.5, granularity="channel", threshold="global"), LeNet5())
>>> try:
...     validate_spec(PruningSpec(sparsity=0.5, importance="entropy"), LeNet5())
... except PruningConfigError as err:
...     print(err)  # doctest: +ELLIPSIS
pruning.importance=entropy is not defined for pruning.granularity=unstructured: entropy scores a unit's...

:func:`compute_masks` touches nothing on the model; :func:`.plan.apply_masks` does:

>>> from prunesweep.pruning.plan import apply_masks, masked_nonzero
>>> model = LeNet5()
>>> plan = compute_masks(model, PruningSpec(sparsity=0.9, threshold="global"))
>>> apply_masks(model, plan)
>>> round(plan.unit_sparsity, 3), masked_nonzero(model)
(0.9, 0)
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from prunesweep.pruning._util import DEFAULT_INPUT_SHAPE, classifier_name, model_device
from prunesweep.pruning.importance import IMPORTANCES, Importance
from prunesweep.pruning.plan import LayerReport, MaskPlan, has_module, merge_masks
from prunesweep.pruning.sensitivity import Sensitivity  # noqa: F401  (imported to register it)
from prunesweep.pruning.spec import PruningConfigError, PruningSpec
from prunesweep.pruning.structures import Block, Head, Layer  # noqa: F401  (imported to register them)
from prunesweep.pruning.thresholds import DISTRIBUTIONS, NORMALIZERS, THRESHOLDS, Allocation, Threshold
from prunesweep.pruning.units import GRANULARITIES, Granularity

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]
Masks = dict[str, dict[str, torch.Tensor]]


# ---------------------------------------------------------------------------------------------- validation
def resolve_layers(spec: PruningSpec, model: nn.Module) -> tuple[str, ...]:
    """``spec.layers`` or, when empty, what the granularity takes from the model's declarations
    (``prunable_layers``; ``channel_layers`` for channel; the groups of ``structures`` for coarse units)."""
    if spec.layers:
        return tuple(spec.layers)
    layers = GRANULARITIES[spec.granularity]().default_layers(model)
    if not layers:
        raise PruningConfigError(
            f"pruning.layers=[] but {type(model).__name__} declares no prunable_layers; "
            f"list module names explicitly, e.g. one of {_candidate_layers(model)}"
        )
    return tuple(layers)


def available_granularities(model: nn.Module) -> list[str]:
    """Granularity names ``model`` declares units for, e.g. ``['unstructured', 'channel']`` for LeNet-5."""
    return [name for name, cls in GRANULARITIES.items() if cls().unavailable(model) is None]


def _fmt(names: Iterable[object]) -> str:
    return "[" + ", ".join(str(n) for n in names) + "]"


def _candidate_layers(model: nn.Module) -> str:
    return _fmt(
        name
        for name, module in model.named_modules()
        if name and ("weight" in module._parameters or "weight_orig" in module._parameters)
    )


def _check_choice(key: str, value: object, allowed: Iterable[str]) -> None:
    allowed = list(allowed)
    if value not in allowed:
        raise PruningConfigError(f"pruning.{key}={value} is unknown; allowed: {_fmt(allowed)}")


def _check_fraction(key: str, value: object) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not 0.0 <= float(value) < 1.0:  # type: ignore[arg-type]
        raise PruningConfigError(
            f"pruning.{key}={value} is out of range: must be a number with 0 <= {key} < 1 (1 would remove every unit)"
        )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_spec(spec: PruningSpec, model: nn.Module) -> None:
    """Raise :class:`PruningConfigError` for anything :func:`compute_masks` could not honour on ``model``."""
    _check_choice("granularity", spec.granularity, GRANULARITIES)
    _check_choice("importance", spec.importance, IMPORTANCES)
    _check_choice("threshold", spec.threshold, THRESHOLDS)
    _check_choice("normalize", spec.normalize, ["auto", *NORMALIZERS])
    _check_choice("stat.distribution", spec.stat_distribution, DISTRIBUTIONS)
    _check_fraction("sparsity", spec.sparsity)
    _check_combination(spec, model)
    _check_numbers(spec)
    layers = resolve_layers(spec, model)
    _check_layers(spec, model, layers)
    _check_structured(spec, model, layers)
    for layer, value in spec.layer_sparsity.items():
        if layer not in layers:
            raise PruningConfigError(
                f"pruning.layer_sparsity has key {layer}, which is not in pruning.layers {_fmt(layers)}"
            )
        _check_fraction(f"layer_sparsity.{layer}", value)


def _check_combination(spec: PruningSpec, model: nn.Module) -> None:
    """The granularity exists on ``model``, and the threshold and importance accept it (their capabilities)."""
    granularity = GRANULARITIES[spec.granularity]
    missing = granularity().unavailable(model)
    if missing is not None:
        raise PruningConfigError(
            f"pruning.granularity={spec.granularity} is not available for {type(model).__name__}: {missing}; "
            f"it has {_fmt(available_granularities(model))}"
        )
    threshold = THRESHOLDS[spec.threshold]
    if not threshold.accepts(granularity):
        others = [name for name, cls in THRESHOLDS.items() if cls.accepts(granularity)]
        raise PruningConfigError(
            f"pruning.threshold={spec.threshold} is not defined for pruning.granularity={spec.granularity}: "
            f"{threshold.why_restricted}; use {' or '.join(others)}"
        )
    importance = IMPORTANCES[spec.importance]
    if not importance.accepts(granularity):
        accepted = [name for name, cls in GRANULARITIES.items() if importance.accepts(cls)]
        others = [name for name, cls in IMPORTANCES.items() if all(map(cls.accepts, GRANULARITIES.values()))]
        raise PruningConfigError(
            f"pruning.importance={spec.importance} is not defined for "
            f"pruning.granularity={spec.granularity}: "
            f"{importance.why_restricted}; use {' or '.join(sorted(accepted))}, "
            f"or an importance in {_fmt(others)}"
        )


def _check_numbers(spec: PruningSpec) -> None:
    """``stat_k``, ``calib_batches`` (when the importance reads data) and ``seed``."""
    k = spec.stat_k
    if k is not None and (isinstance(k, bool) or not isinstance(k, (int, float)) or not math.isfinite(k) or k < 0):
        raise PruningConfigError(
            f"pruning.stat.k={k} is invalid: use a finite number >= 0 (threshold = mean - k*std), "
            "or null to derive k from pruning.sparsity"
        )
    if IMPORTANCES[spec.importance].requires_calibration and not (
        _is_int(spec.calib_batches) and spec.calib_batches >= 1
    ):
        raise PruningConfigError(
            f"pruning.calib_batches={spec.calib_batches} is invalid for "
            f"pruning.importance={spec.importance}: it needs an integer >= 1"
        )
    if not _is_int(spec.seed):
        raise PruningConfigError(f"pruning.seed={spec.seed} is invalid: use an integer")


def _check_layers(spec: PruningSpec, model: nn.Module, layers: tuple[str, ...]) -> None:
    """Each listed layer (or coarse group) exists once and can be pruned at the granularity."""
    granularity = GRANULARITIES[spec.granularity]()
    modules = dict(model.named_modules())
    seen: set[str] = set()
    for layer in layers:
        if layer in seen:
            raise PruningConfigError(f"pruning.layers={_fmt(layers)} lists {layer} twice")
        seen.add(layer)
        if granularity.coarse:
            reason = granularity.unavailable_layer(model, layer)  # type: ignore[attr-defined]
            if reason is not None:
                raise PruningConfigError(f"pruning.layers contains {layer}: {reason}")
            continue
        if layer not in modules or not layer:
            raise PruningConfigError(
                f"pruning.layers contains {layer}, which {type(model).__name__} does not have; "
                f"its layers with weights are {_candidate_layers(model)}"
            )
        reason = granularity.supports(modules[layer])
        if reason is not None:
            raise PruningConfigError(
                f"pruning.layers contains {layer}, which pruning.granularity={spec.granularity} cannot prune: {reason}"
            )


def _check_structured(spec: PruningSpec, model: nn.Module, layers: tuple[str, ...]) -> None:
    """Structured pruning needs a declared classifier (never pruned) and at least one layer with units."""
    granularity = GRANULARITIES[spec.granularity]()
    if not granularity.structured:
        return
    if classifier_name(model) is None:
        raise PruningConfigError(
            f"pruning.granularity={spec.granularity} needs {type(model).__name__}.classifier (the layer "
            "whose outputs are never pruned); declare it on the model"
        )
    if not any(granularity.has_units(model, layer) for layer in layers):
        raise PruningConfigError(
            f"pruning.layers={_fmt(layers)} has nothing to prune at pruning.granularity="
            f"{spec.granularity}: the classifier {classifier_name(model)}'s outputs are never pruned"
        )


# ----------------------------------------------------------------------------------------------- factories
def make_threshold(spec: PruningSpec) -> Threshold:
    """The threshold object ``spec`` names, set up for its granularity (keep-one floor for structured units).

    Build it once and pass it to every :func:`compute_masks` call of a schedule when it ``needs_calibration``,
    so it measures the model once."""
    return THRESHOLDS[spec.threshold].from_spec(spec, GRANULARITIES[spec.granularity])


# ---------------------------------------------------------------------------------------------- the planner
@dataclass
class _Step:
    """What one :func:`compute_masks` call works on, passed between its named steps."""

    model: nn.Module
    spec: PruningSpec
    layers: tuple[str, ...]
    granularity: Granularity
    scored: list[str]
    modules: dict[str, nn.Module]
    notes: list[str]

    def label(self, layer: str) -> str:
        return self.granularity.unit_label(self.modules[layer])


def compute_masks(
    model: nn.Module,
    spec: PruningSpec,
    calib: Batches | None = None,
    previous: MaskPlan | None = None,
    *,
    example_inputs: torch.Tensor | None = None,
    threshold: Threshold | None = None,
    threshold_batches: Batches | None = None,
    importance: Importance | None = None,
) -> MaskPlan:
    """Decide what to prune; touches nothing on ``model`` (see :func:`.plan.apply_masks`).

    ``previous`` (iterative pruning): units already pruned by it get score ``-inf`` so they stay pruned, the
    target is cumulative, and the new masks are AND-ed with the old ones. ``example_inputs`` (default
    ``zeros(1, 1, 28, 28)``) is only used to trace couplings for structured granularities.

    ``threshold`` (default: a fresh one built from ``spec``) lets a schedule keep one threshold object across
    calls; one that ``needs_calibration`` (``sensitivity``) is calibrated on ``threshold_batches`` the first
    time, with the scores of the model as it is then. Pass held-out data there: without it the ``calib``
    (training) batches are used.

    ``importance`` (default: a fresh one built from ``spec``) is for scores that need a trained state of their
    own, such as ``variational``'s noise levels.
    """
    step = _prepare(model, spec, example_inputs)
    scores = _score(step, calib, importance)
    raw_stats = {layer: _stats(scores[layer]) for layer in step.scored}
    if previous is not None:
        _pin_previous(step, scores, previous)
    threshold = threshold if threshold is not None else make_threshold(spec)
    alloc = _allocate(step, scores, threshold, threshold_batches if threshold_batches is not None else calib)
    _check_promise(step, threshold, scores, alloc)
    masks, bypass, kept_units = _expand(step, alloc, previous)
    return MaskPlan(
        masks=masks,
        layers=_report(step, alloc, masks, raw_stats, threshold),
        notes=step.notes,
        kept_units=kept_units,
        spec=spec,
        granularity=spec.granularity,
        bypass=tuple(bypass),
    )


def _prepare(model: nn.Module, spec: PruningSpec, example_inputs: torch.Tensor | None) -> _Step:
    """Validate, resolve the layers, and bind the granularity (structured ones trace the couplings)."""
    validate_spec(spec, model)
    layers = resolve_layers(spec, model)
    granularity = GRANULARITIES[spec.granularity]()
    if granularity.structured:
        if example_inputs is None:
            example_inputs = torch.zeros(DEFAULT_INPUT_SHAPE, device=model_device(model))
        granularity.bind(model, example_inputs)
    scored = [layer for layer in layers if granularity.has_units(model, layer)]
    modules = {layer: model.get_submodule(layer) for layer in layers}
    return _Step(model, spec, layers, granularity, scored, modules, notes=[])


def _score(step: _Step, calib: Batches | None, importance: Importance | None) -> dict[str, torch.Tensor]:
    """Importance scores of the layers with units, as detached CPU float tensors."""
    importance = importance if importance is not None else IMPORTANCES[step.spec.importance].from_spec(step.spec)
    scores = importance.score(step.model, step.scored, step.granularity, calib)
    # Thresholds run on CPU copies: cheap for these models, and masks end up device-independent.
    return {k: v.detach().float().cpu() for k, v in scores.items()}


def _stats(score: torch.Tensor) -> tuple[float | None, float | None]:
    finite = score[torch.isfinite(score)].double()
    if finite.numel() == 0:
        return None, None
    return float(finite.mean()), float(finite.std(unbiased=False))


def _pin_previous(step: _Step, scores: dict[str, torch.Tensor], previous: MaskPlan) -> None:
    """Units ``previous`` already pruned get score ``-inf``: every threshold keeps them pruned."""
    for layer in step.scored:
        old = previous.masks.get(layer, {}).get("weight")
        if step.granularity.coarse and layer in previous.kept_units:
            alive = torch.zeros(scores[layer].shape, dtype=torch.bool)
            alive[previous.kept_units[layer].cpu()] = True
        elif old is not None:
            alive = step.granularity.units_alive(step.modules[layer], old).reshape(scores[layer].shape)
        else:
            continue
        scores[layer] = scores[layer].masked_fill(~alive, float("-inf"))


def _allocate(
    step: _Step, scores: dict[str, torch.Tensor], threshold: Threshold, batches: Batches | None
) -> Allocation:
    """Calibrate the threshold if it measures the model, then let it choose; note settings it ignores."""
    spec = step.spec
    if threshold.needs_calibration and not threshold.calibrated:
        if batches is None:
            raise ValueError(f"threshold={spec.threshold} measures the model: pass threshold_batches (held-out data)")
        threshold.calibrate(step.model, {layer: scores[layer] for layer in step.scored}, step.granularity, batches)
    if not threshold.uses_normalize and spec.normalize not in ("auto", "none"):
        users = " or ".join(name for name, cls in THRESHOLDS.items() if cls.uses_normalize)
        step.notes.append(f"pruning.normalize={spec.normalize} only applies to threshold={users}; ignored")
    if not threshold.uses_layer_sparsity and spec.layer_sparsity:
        users = " or ".join(name for name, cls in THRESHOLDS.items() if cls.uses_layer_sparsity)
        step.notes.append(f"pruning.layer_sparsity only applies to threshold={users}; ignored")
    alloc = threshold.select(scores, spec.sparsity)
    step.notes.extend(alloc.notes)
    for layer in alloc.floored:
        keep = alloc.keep[layer]
        step.notes.append(
            f"{layer}: kept {int(keep.sum())} of {keep.numel()} {step.label(layer)} (target would remove all)"
        )
    return alloc


def _check_promise(step: _Step, threshold: Threshold, scores: dict[str, torch.Tensor], alloc: Allocation) -> None:
    """Methods that promise a count must deliver it; anything else is a bug worth stopping a sweep for."""
    sizes = {layer: scores[layer].numel() for layer in step.scored}
    for group, expected in (threshold.promised(sizes, step.spec.sparsity) or {}).items():
        if alloc.adjusted.intersection(group):
            continue
        achieved = sum(int((~alloc.keep[layer]).sum()) for layer in group)
        if abs(achieved - expected) > len(group):
            raise RuntimeError(
                f"threshold={step.spec.threshold} promised to prune {expected} units of {list(group)} "
                f"but pruned {achieved}"
            )


def _expand(
    step: _Step, alloc: Allocation, previous: MaskPlan | None
) -> tuple[Masks, list[str], dict[str, torch.Tensor]]:
    """Keep-vectors -> parameter masks (couplings included), AND-ed with ``previous``; modules to bypass;
    and the kept unit indices of structured layers."""
    model, granularity = step.model, step.granularity
    masks: Masks = {}
    bypass: list[str] = []
    for layer in step.scored:
        merge_masks(masks, granularity.expand(model, layer, alloc.keep[layer]))
        bypass.extend(granularity.bypassed(model, layer, alloc.keep[layer]))
    if previous is not None:
        merge_masks(masks, {m: p for m, p in previous.masks.items() if m in masks or has_module(model, m)})
        bypass.extend(m for m in previous.bypass if m not in bypass)
    kept_units: dict[str, torch.Tensor] = {}
    if granularity.structured:
        kept_units = {layer: alloc.keep[layer].nonzero().flatten() for layer in step.scored}
    if granularity.structured and not granularity.coarse:
        _account_couplings(step, alloc, masks, kept_units)
    return masks, bypass, kept_units


def _account_couplings(step: _Step, alloc: Allocation, masks: Masks, kept_units: dict[str, torch.Tensor]) -> None:
    """Coupled outputs (a residual add joins the stem's and every block's channels) are removed together,
    so a layer can lose more units than its own target: report and rebuild what the masks removed."""
    for layer in step.scored:
        alive = step.granularity.units_alive(step.modules[layer], masks[layer]["weight"])
        alive = alive.reshape(alloc.keep[layer].shape)
        extra = int((alloc.keep[layer] & ~alive).sum())
        if not alive.any():
            raise ValueError(
                f"channel pruning removed every output of {layer}: its outputs are coupled (e.g. by residual "
                "adds) to other pruned layers whose cuts add up; prune fewer coupled layers (pruning.layers, "
                "or the model's channel_layers)"
            )
        if extra:
            step.notes.append(
                f"{layer}: {extra} more {step.label(layer)} removed through coupling "
                f"with other layers' outputs ({int((~alive).sum())} of {alive.numel()} in all)"
            )
            alloc.keep[layer] = alive
            kept_units[layer] = alive.nonzero().flatten()


def _report(
    step: _Step,
    alloc: Allocation,
    masks: Masks,
    raw_stats: dict[str, tuple[float | None, float | None]],
    threshold: Threshold,
) -> list[LayerReport]:
    """One :class:`LayerReport` per layer (units, parameters, the threshold's numbers); notes layer collapse."""
    reports = []
    for layer in step.layers:
        params_total, params_pruned = step.granularity.layer_params(step.model, layer, masks)
        info = alloc.info.get(layer, {})
        mean, std = raw_stats.get(layer, (None, None))
        keep = alloc.keep.get(layer)
        target = None
        if keep is not None:
            target = info.get("layer_target", threshold.layer_target(layer, step.spec.sparsity))
        report = LayerReport(
            layer=layer,
            units_total=keep.numel() if keep is not None else 0,
            units_pruned=int((~keep).sum()) if keep is not None else 0,
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
        reports.append(report)
        if keep is not None and not step.granularity.structured and report.units_pruned == report.units_total:
            step.notes.append(f"{layer}: all {report.units_total} weights pruned (layer collapse)")
    return reports
