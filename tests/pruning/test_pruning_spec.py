"""Config validation: every bad spec fails fast with a message naming the key, the value and the options."""

from __future__ import annotations

import re

import pytest
import torch

from prunesweep.models import LeNet5, LeNet300, ResNet
from prunesweep.pruning import (
    IMPORTANCES,
    Granularity,
    Importance,
    PruningConfigError,
    PruningSpec,
    compute_masks,
    validate_spec,
)

BAD_SPECS = [
    # (spec kwargs, substrings the message must contain)
    (
        {"importance": "entropy"},
        ["pruning.importance=entropy", "pruning.granularity=unstructured", "channel", "l1"],
    ),
    ({"threshold": "statistical", "stat_k": -1.0}, ["pruning.stat.k=-1.0", ">= 0"]),
    ({"importance": "snip"}, ["pruning.importance=snip", "l1", "taylor", "entropy", "random"]),
    ({"threshold": "median"}, ["pruning.threshold=median", "global", "layerwise", "statistical"]),
    ({"granularity": "kernel"}, ["pruning.granularity=kernel", "unstructured", "channel"]),
    ({"normalize": "softmax"}, ["pruning.normalize=softmax", "auto", "lamp", "mean"]),
    ({"stat_distribution": "cauchy"}, ["pruning.stat.distribution=cauchy", "normal", "laplace"]),
    ({"layers": ("conv1", "conv9")}, ["pruning.layers", "conv9", "conv1", "conv2", "fc1", "fc2"]),
    ({"layers": ("conv1", "conv1")}, ["pruning.layers", "conv1 twice"]),
    ({"sparsity": 1.0}, ["pruning.sparsity=1.0", "0 <= sparsity < 1"]),
    ({"sparsity": -0.1}, ["pruning.sparsity=-0.1", "0 <= sparsity < 1"]),
    ({"sparsity": float("nan")}, ["pruning.sparsity=nan"]),
    ({"layer_sparsity": {"fc9": 0.5}}, ["pruning.layer_sparsity", "fc9", "conv1"]),
    ({"layer_sparsity": {"fc1": 1.5}}, ["pruning.layer_sparsity.fc1=1.5"]),
    ({"importance": "taylor", "calib_batches": 0}, ["pruning.calib_batches=0", "taylor", ">= 1"]),
    ({"granularity": "channel", "layers": ("fc2",)}, ["pruning.layers=[fc2]", "classifier"]),
    ({"layers": ("",)}, ["pruning.layers"]),
]


@pytest.mark.parametrize(("overrides", "expected"), BAD_SPECS, ids=[str(o) for o, _ in BAD_SPECS])
def test_bad_spec_raises_named_error(overrides: dict, expected: list[str]) -> None:
    spec = PruningSpec(**{"sparsity": 0.5, **overrides})
    with pytest.raises(PruningConfigError) as info:
        validate_spec(spec, LeNet5())
    for fragment in expected:
        assert fragment in str(info.value), str(info.value)
    # PruningConfigError is a ValueError so generic config handling catches it.
    assert isinstance(info.value, ValueError)


def test_compute_masks_validates_first() -> None:
    with pytest.raises(PruningConfigError, match=re.escape("pruning.sparsity=1.0")):
        compute_masks(LeNet5(), PruningSpec(sparsity=1.0))


@pytest.mark.parametrize("importance", ["taylor", "entropy"])
def test_missing_calibration_is_a_clear_error(importance: str) -> None:
    spec = PruningSpec(sparsity=0.5, granularity="channel", importance=importance)
    with pytest.raises(PruningConfigError, match=re.escape(f"pruning.importance={importance} needs calibration")):
        compute_masks(LeNet5(), spec, calib=None)


def test_model_without_prunable_layers_needs_explicit_layers() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    with pytest.raises(PruningConfigError, match=r"pruning.layers=\[\].*\[0\]"):
        validate_spec(PruningSpec(sparsity=0.5), model)
    validate_spec(PruningSpec(sparsity=0.5, layers=("0",)), model)


@pytest.mark.parametrize("model_cls", [LeNet5, LeNet300])
@pytest.mark.parametrize("granularity", ["unstructured", "channel"])
@pytest.mark.parametrize("threshold", ["global", "layerwise", "statistical"])
def test_good_specs_pass(model_cls, granularity: str, threshold: str) -> None:
    for k in (None, 0.0, 2.5):
        validate_spec(PruningSpec(sparsity=0.0, granularity=granularity, threshold=threshold, stat_k=k), model_cls())


@pytest.mark.parametrize(
    ("threshold", "why"), [("statistical", "fits a distribution"), ("sensitivity", "its curves prune")]
)
def test_thresholds_refuse_coarse_units_by_capability(threshold: str, why: str) -> None:
    spec = PruningSpec(sparsity=0.5, granularity="block", threshold=threshold)
    with pytest.raises(PruningConfigError) as info:
        validate_spec(spec, ResNet())
    message = str(info.value)
    for fragment in (f"pruning.threshold={threshold}", "pruning.granularity=block", why, "use global or layerwise"):
        assert fragment in message, message


def test_a_new_importance_is_one_class(monkeypatch: pytest.MonkeyPatch) -> None:
    """Validation reads the class's capabilities: registering it is all it takes to be accepted or refused."""

    class Fanout(Importance):
        why_restricted = "fanout scores whole output units"

        @classmethod
        def accepts(cls, granularity: type[Granularity]) -> bool:
            return granularity.structured

    monkeypatch.setitem(IMPORTANCES, "fanout", Fanout)
    validate_spec(PruningSpec(sparsity=0.5, granularity="channel", importance="fanout"), LeNet5())
    with pytest.raises(PruningConfigError) as info:
        validate_spec(PruningSpec(sparsity=0.5, importance="fanout"), LeNet5())
    assert "fanout scores whole output units; use block or channel or head or layer" in str(info.value)


@pytest.mark.parametrize(
    ("overrides", "note"),
    [
        ({"threshold": "layerwise", "normalize": "lamp"}, "pruning.normalize=lamp only applies to threshold=global"),
        ({"threshold": "global", "layer_sparsity": {"fc1": 0.9}}, "layer_sparsity only applies to threshold=layerwise"),
    ],
)
def test_settings_a_threshold_does_not_use_are_noted(overrides: dict, note: str) -> None:
    plan = compute_masks(LeNet300(), PruningSpec(sparsity=0.5, **overrides))
    assert any(note in line for line in plan.notes), plan.notes
    plain = compute_masks(LeNet300(), PruningSpec(sparsity=0.5, threshold=overrides["threshold"]))
    assert not any("only applies" in line for line in plain.notes)
