"""What to prune, as one frozen value object, and the error every bad pruning setting raises.

This module is the bottom of the package: it imports nothing from it, so every other module can name a
:class:`PruningSpec` or raise a :class:`PruningConfigError` without an import cycle. Checking a spec against
the registries and a model is :func:`prunesweep.pruning.planner.validate_spec`.

>>> spec = PruningSpec(sparsity=0.5, granularity="channel")
>>> spec.threshold, spec.importance
('layerwise', 'l1')
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


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
