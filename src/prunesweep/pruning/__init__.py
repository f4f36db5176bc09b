"""Pruning engine: importance (scores) x granularity (units) x threshold (allocation), then surgery.

Plain PyTorch + Torch-Pruning; no Lightning, MLflow or Hydra here (except :mod:`.callback`), so every piece can
be unit-tested and reused. The modules form layers, each importing only from those above it (tests/test_imports.py
holds the order):

1. :mod:`.spec` — :class:`PruningSpec` (a frozen value) and :class:`PruningConfigError`; imports nothing from here.
2. :mod:`.units` — ``GRANULARITIES``: ``unstructured`` (single weights) and ``channel`` (filters/neurons, couplings
   traced once by Torch-Pruning's DependencyGraph); :mod:`.structures` adds ``layer``, ``block`` and ``head``
   (units the model declares in ``structures``); :mod:`.discover` finds those units for a model that declares
   nothing (channel groups from the DependencyGraph, identity-shortcut residual blocks).
3. :mod:`.plan` — :class:`MaskPlan` (a decision as data), :func:`apply_masks` (held or spliced masks), bypass
   hooks, exports;
   :mod:`.verify` — the rebuilt model must compute what the masked one does, or the rebuild is refused by name.
4. Strategies, each a small class whose capabilities are class attributes (``accepts``, ``requires_calibration``,
   ``needs_calibration``, ``uses_normalize``...): :mod:`.importance` — ``IMPORTANCES``: ``l1``, ``l2``, ``taylor``,
   ``entropy``, ``random``; ``activation`` and ``ablation`` for coarse units. :mod:`.thresholds` — ``THRESHOLDS``:
   ``global``, ``layerwise``, ``statistical``; :mod:`.sensitivity` adds ``sensitivity`` (per-layer rates from
   one-layer-at-a-time curves, equal loss increase per layer) and ``marginal`` (the same curves, equal loss
   increase per unit removed). ``variational`` scores with the noise levels that :mod:`.variational` (sparse
   variational dropout, plain PyTorch, imports nothing from here) trains from the dense model.
5. :mod:`.planner` — :func:`validate_spec` (reads the capabilities), :func:`make_threshold` and
   :func:`compute_masks` (score → pin previous → allocate and check → expand → report).
6. :mod:`.reconstruct` — physically smaller models and sparse exports; :mod:`.measure` — params/MACs/latency;
   :mod:`.schedule` — one-shot/iterative/gradual targets.
7. :mod:`.callback` — the only Lightning-aware module: masks held through fine-tuning, gradual updates.

A new importance, threshold or granularity is one registered class in one file.

Target semantics: for ``unstructured`` the sparsity is the fraction of the pruned layers' *weights* (biases
are never pruned); for ``channel`` and the coarse granularities it is the fraction of *units* (per layer or
group for layerwise, across all of them for global). Parameter sparsity over everything is measured separately
with :func:`count_params`.
"""

from prunesweep.pruning._util import classifier_name, clone_model
from prunesweep.pruning.discover import annotate, largest_layer
from prunesweep.pruning.importance import IMPORTANCES, Importance, Variational
from prunesweep.pruning.measure import (
    count_macs,
    count_params,
    count_weights,
    latency_ms,
    layer_sparsity,
    size_bytes,
)
from prunesweep.pruning.plan import (
    LayerReport,
    MaskPlan,
    SplicedMask,
    apply_masks,
    export_state_dict,
    make_permanent,
    masked_nonzero,
    unsplice,
)
from prunesweep.pruning.planner import (
    available_granularities,
    compute_masks,
    make_threshold,
    resolve_layers,
    validate_spec,
)
from prunesweep.pruning.reconstruct import (
    REBUILDERS,
    architecture,
    load_sparse_export,
    rebuild,
    rebuild_channels,
    rebuild_heads,
    rebuild_like,
    rebuild_modules,
    sparse_export,
)
from prunesweep.pruning.sensitivity import Marginal, Sensitivity, SensitivityCurves, measure_sensitivity
from prunesweep.pruning.spec import PruningConfigError, PruningSpec
from prunesweep.pruning.structures import Block, Head, Layer
from prunesweep.pruning.thresholds import DISTRIBUTIONS, NORMALIZERS, THRESHOLDS, Threshold
from prunesweep.pruning.units import GRANULARITIES, Channel, Granularity, Unstructured
from prunesweep.pruning.variational import (
    VariationalFit,
    VariationalLayer,
    VariationalRecipe,
    attach,
    detach,
    fit_variational,
    noise_share,
)
from prunesweep.pruning.verify import REBUILD_TOLERANCE, RebuildMismatch, check_rebuild

__all__ = [
    "DISTRIBUTIONS",
    "GRANULARITIES",
    "IMPORTANCES",
    "NORMALIZERS",
    "REBUILDERS",
    "REBUILD_TOLERANCE",
    "THRESHOLDS",
    "Block",
    "Channel",
    "Granularity",
    "Head",
    "Importance",
    "Layer",
    "LayerReport",
    "Marginal",
    "MaskPlan",
    "PruningConfigError",
    "PruningSpec",
    "RebuildMismatch",
    "Sensitivity",
    "SensitivityCurves",
    "SplicedMask",
    "Threshold",
    "Unstructured",
    "Variational",
    "VariationalFit",
    "VariationalLayer",
    "VariationalRecipe",
    "annotate",
    "apply_masks",
    "architecture",
    "attach",
    "available_granularities",
    "check_rebuild",
    "classifier_name",
    "clone_model",
    "compute_masks",
    "count_macs",
    "count_params",
    "count_weights",
    "detach",
    "export_state_dict",
    "fit_variational",
    "largest_layer",
    "latency_ms",
    "layer_sparsity",
    "load_sparse_export",
    "make_permanent",
    "make_threshold",
    "masked_nonzero",
    "measure_sensitivity",
    "noise_share",
    "rebuild",
    "rebuild_channels",
    "rebuild_heads",
    "rebuild_like",
    "rebuild_modules",
    "resolve_layers",
    "size_bytes",
    "sparse_export",
    "unsplice",
    "validate_spec",
]
