"""What to prune, as one frozen value object, and its validation against a model.

Validation happens before any tensor work so a bad sweep point fails in milliseconds with a message that
names the config key, the bad value and what is allowed:

>>> from prunesweep.models import LeNet5
>>> validate_spec(PruningSpec(sparsity=0.5, granularity="channel", threshold="global"), LeNet5())
>>> try:
...     validate_spec(PruningSpec(sparsity=0.5, importance="entropy"), LeNet5())
... except PruningConfigError as err:
...     print(err)  # doctest: +ELLIPSIS
pruning.importance=entropy is not defined for pruning.granularity=unstructured: entropy scores a unit's...
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from torch import nn

from prunesweep.pruning._util import classifier_name
from prunesweep.pruning.importance import IMPORTANCES
from prunesweep.pruning.thresholds import DISTRIBUTIONS, NORMALIZERS, THRESHOLDS
from prunesweep.pruning.units import GRANULARITIES


class PruningConfigError(ValueError):
    """A pruning setting is invalid; the message names ``pruning.<key>``, its value and what is allowed."""


@dataclass(frozen=True)
class PruningSpec:
    """One pruning step. See the package docstring for the meaning of each field."""

    sparsity: float
    granularity: str = "unstructured"
    importance: str = "l1"
    threshold: str = "layerwise"
    layers: tuple[str, ...] = ()
    normalize: str = "auto"
    layer_sparsity: Mapping[str, float] = field(default_factory=dict)
    stat_distribution: str = "normal"
    stat_k: float | None = None
    calib_batches: int = 8
    seed: int = 0


def resolved_normalize(spec: PruningSpec) -> str:
    """The normaliser actually used by the global threshold.

    ``auto`` means ``none`` for unstructured (so global+l1 is *exactly* ``prune.global_unstructured``) and for
    coarse units (layer/block/head), and ``mean`` for channels. Raw per-channel norms are not comparable across
    layers: with PyTorch's default init a unit's L1 norm grows like sqrt(fan_in), so LeNet5's conv1 filters (fan_in
    25) would all go before any fc1 neuron (fan_in 800). Dividing by the layer mean makes scores scale-free per
    layer while keeping each layer's spread, is what Torch-Pruning's importances default to, and unlike ``max`` it
    is not driven by one outlier unit. LAMP stays available but was designed for per-weight scores.
    """
    if spec.normalize != "auto":
        return spec.normalize
    granularity = GRANULARITIES[spec.granularity]
    # Coarse scores are comparable across groups by construction (size-normalised magnitudes, loss deltas,
    # contribution norms), and a group of 2-4 units has no meaningful mean to divide by.
    return "mean" if granularity.structured and not granularity.coarse else "none"


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


def validate_spec(spec: PruningSpec, model: nn.Module) -> None:
    """Raise :class:`PruningConfigError` for anything :func:`compute_masks` could not honour on ``model``."""
    _check_choice("granularity", spec.granularity, GRANULARITIES)
    _check_choice("importance", spec.importance, IMPORTANCES)
    _check_choice("threshold", spec.threshold, THRESHOLDS)
    _check_choice("normalize", spec.normalize, ["auto", *NORMALIZERS])
    _check_choice("stat.distribution", spec.stat_distribution, DISTRIBUTIONS)
    _check_fraction("sparsity", spec.sparsity)

    importance = IMPORTANCES[spec.importance]
    granularity = GRANULARITIES[spec.granularity]()
    missing = granularity.unavailable(model)
    if missing is not None:
        raise PruningConfigError(
            f"pruning.granularity={spec.granularity} is not available for {type(model).__name__}: {missing}; "
            f"it has {_fmt(available_granularities(model))}"
        )
    if granularity.coarse and spec.threshold == "statistical":
        raise PruningConfigError(
            f"pruning.threshold=statistical is not defined for pruning.granularity={spec.granularity}: it fits a "
            "distribution to each group's scores, and a group has only a handful of units; use layerwise or global"
        )
    if granularity.coarse and spec.threshold == "sensitivity":
        raise PruningConfigError(
            f"pruning.threshold=sensitivity is not defined for pruning.granularity={spec.granularity}: its curves "
            "prune a growing fraction of one layer's units, and a group has only a handful; use layerwise or global"
        )
    if importance.granularities is not None and spec.granularity not in importance.granularities:
        others = [n for n, cls in IMPORTANCES.items() if cls.granularities is None]
        raise PruningConfigError(
            f"pruning.importance={spec.importance} is not defined for "
            f"pruning.granularity={spec.granularity}: "
            f"{importance.why_restricted}; use {' or '.join(sorted(importance.granularities))}, "
            f"or an importance in {_fmt(others)}"
        )
    if spec.stat_k is not None:
        k = spec.stat_k
        if isinstance(k, bool) or not isinstance(k, (int, float)) or not math.isfinite(k) or k < 0:
            raise PruningConfigError(
                f"pruning.stat.k={k} is invalid: use a finite number >= 0 (threshold = mean - k*std), "
                "or null to derive k from pruning.sparsity"
            )
    if importance.requires_calibration and (
        isinstance(spec.calib_batches, bool) or not isinstance(spec.calib_batches, int) or spec.calib_batches < 1
    ):
        raise PruningConfigError(
            f"pruning.calib_batches={spec.calib_batches} is invalid for "
            f"pruning.importance={spec.importance}: it needs an integer >= 1"
        )
    if isinstance(spec.seed, bool) or not isinstance(spec.seed, int):
        raise PruningConfigError(f"pruning.seed={spec.seed} is invalid: use an integer")

    layers = resolve_layers(spec, model)
    modules = dict(model.named_modules())
    seen: set[str] = set()
    for layer in layers:
        if layer in seen:
            raise PruningConfigError(f"pruning.layers={_fmt(layers)} lists {layer} twice")
        seen.add(layer)
        if granularity.coarse:
            reason = granularity.unavailable_layer(model, layer)
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
    if granularity.structured:
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
    for layer, value in spec.layer_sparsity.items():
        if layer not in layers:
            raise PruningConfigError(
                f"pruning.layer_sparsity has key {layer}, which is not in pruning.layers {_fmt(layers)}"
            )
        _check_fraction(f"layer_sparsity.{layer}", value)
