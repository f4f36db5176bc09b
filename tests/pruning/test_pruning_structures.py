"""Coarse units (layer, block, head) and channels on ResNet and ViT: masking equals removing, counts match
Torch-Pruning's, and what cannot be pruned is refused."""

from __future__ import annotations

import pytest
import torch
import torch_pruning as tp
from torch import nn

from prunesweep.models import LeNet5, ResNet, ViT
from prunesweep.pruning import (
    GRANULARITIES,
    MaskPlan,
    PruningConfigError,
    PruningSpec,
    apply_masks,
    compute_masks,
    count_macs,
    count_params,
    masked_nonzero,
    rebuild,
    validate_spec,
)
from prunesweep.pruning.plan import is_bypassed

EXAMPLE = torch.zeros(1, 1, 28, 28)


def _batches(n: int = 2, size: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [(torch.randn(size, 1, 28, 28, generator=generator), torch.randint(0, 10, (size,), generator=generator))
            for _ in range(n)]  # fmt: skip


def _model(model_cls: type[nn.Module]) -> nn.Module:
    """Random init with non-trivial BatchNorm statistics and shifts, so 'zero' and 'identity' differ."""
    torch.manual_seed(0)
    model = model_cls().eval()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
            nn.init.normal_(module.weight)
            nn.init.normal_(module.bias)
        if isinstance(module, nn.LayerNorm):
            nn.init.normal_(module.bias)
    return model


CASES = [
    (ResNet, "layer"),
    (ResNet, "block"),
    (ResNet, "channel"),
    (ViT, "layer"),
    (ViT, "block"),
    (ViT, "head"),
    (ViT, "channel"),
]


def _bias_ops(model: nn.Module) -> int:
    """What Torch-Pruning counts on top of weight MACs: one add per bias per conv output element, but only
    ``out_features`` per linear layer, however many tokens it is applied to (its hook's convention)."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        if module.bias is not None:
            total += output[0].numel() if isinstance(module, nn.Conv2d) else output.shape[-1]

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    model(EXAMPLE)
    for handle in handles:
        handle.remove()
    return total


def _tp_conv_linear_ops(model: nn.Module) -> tuple[int, int]:
    """Torch-Pruning's ops of the conv/linear modules only (it also counts norms and activations), and params."""
    _, params, layer_ops, _ = tp.utils.count_ops_and_params(model, EXAMPLE, layer_wise=True)
    ops = sum(v or 0 for m, v in layer_ops.items() if isinstance(m, (nn.Conv2d, nn.Linear)))
    return int(ops), int(params)


@pytest.mark.parametrize(("model_cls", "granularity"), CASES)
@pytest.mark.parametrize("threshold", ["global", "layerwise"])
def test_removing_units_gives_the_masked_outputs(model_cls, granularity: str, threshold: str) -> None:
    model = _model(model_cls)
    dense = _model(model_cls)
    plan = compute_masks(model, PruningSpec(sparsity=0.5, granularity=granularity, threshold=threshold))
    apply_masks(model, plan)
    assert masked_nonzero(model) == 0
    x = torch.randn(6, 1, 28, 28)
    with torch.no_grad():
        assert (model(x) - dense(x)).abs().max() > 1e-3  # something was removed
        rebuilt = rebuild(model, plan, EXAMPLE).eval()
        assert (rebuilt(x) - model(x)).abs().max().item() <= 1e-5
    assert not any(is_bypassed(m) for m in rebuilt.modules())
    assert plan.units_pruned > 0 and 0 < plan.unit_sparsity < 0.6  # layerwise rounds per group: 4 of 7 blocks

    # parameters and FLOPs of the rebuilt model, counted independently by Torch-Pruning
    ops, params = _tp_conv_linear_ops(rebuilt)
    assert count_params(rebuilt) == (params, count_params(rebuilt)[1])
    assert count_macs(rebuilt, sparse=False) + _bias_ops(rebuilt) == ops
    assert count_params(rebuilt)[0] < count_params(dense)[0]
    assert count_macs(rebuilt, sparse=False) < count_macs(dense, sparse=False)


def _forced_plan(model: nn.Module, granularity: str, layer: str, keep: torch.Tensor) -> MaskPlan:
    """The plan that removes exactly the units ``~keep`` of ``layer``, whatever the scores say."""
    units = GRANULARITIES[granularity]().bind(model, EXAMPLE)
    return MaskPlan(
        masks=units.expand(model, layer, keep),
        layers=[],
        kept_units={layer: keep.nonzero().flatten()},
        granularity=granularity,
        bypass=tuple(units.bypassed(model, layer, keep)),
    )


def test_block_replaced_by_identity_equals_zeroing_its_branch() -> None:
    model = _model(ResNet)
    reference = _model(ResNet)
    with torch.no_grad():  # zero the residual branch by hand: the last BN's scale and shift
        reference.stages[0][1].conv2.bn.weight.zero_()
        reference.stages[0][1].conv2.bn.bias.zero_()
    plan = _forced_plan(model, "block", "stages.0", torch.tensor([True, False, True]))
    apply_masks(model, plan)
    rebuilt = rebuild(model, plan)
    assert isinstance(rebuilt.stages[0][1], nn.Identity)
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert (model(x) - reference(x)).abs().max().item() <= 1e-6
        assert (rebuilt(x) - reference(x)).abs().max().item() <= 1e-6


def test_vit_sublayer_replaced_by_identity_equals_zeroing_its_output_projection() -> None:
    model = _model(ViT)
    reference = _model(ViT)
    with torch.no_grad():
        reference.encoder[1].attn.fn.out.weight.zero_()
        reference.encoder[1].attn.fn.out.bias.zero_()
    plan = _forced_plan(model, "layer", "encoder.1", torch.tensor([False, True]))  # attention goes, MLP stays
    assert plan.bypass == ()  # a residual sub-layer with zero parameters adds exactly 0: no hook needed
    apply_masks(model, plan)
    rebuilt = rebuild(model, plan)
    assert isinstance(rebuilt.encoder[1].attn, nn.Identity) and not isinstance(rebuilt.encoder[1].mlp, nn.Identity)
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert (model(x) - reference(x)).abs().max().item() <= 1e-6
        assert (rebuilt(x) - reference(x)).abs().max().item() <= 1e-6


def test_resnet_layer_is_bypassed_not_zeroed() -> None:
    # Zeroing a conv+BN leaves BN's shift (and its running mean): only a bypass makes it an identity.
    model = _model(ResNet)
    plan = compute_masks(model, PruningSpec(sparsity=0.5, granularity="layer", threshold="layerwise"))
    assert plan.bypass and all(name.endswith(("conv1", "conv2")) for name in plan.bypass)
    apply_masks(model, plan)
    apply_masks(model, plan)  # re-applying (iterative rounds) adds no second hook
    block = model.get_submodule(plan.bypass[0])
    assert sum(1 for _ in block._forward_hooks.values()) == 1
    x = torch.randn(2, 16, 14, 14)
    assert torch.equal(block(x), x)


def test_head_masks_cover_v_and_the_output_columns() -> None:
    model = _model(ViT)
    keep = torch.tensor([True, False, True, True])
    masks = _forced_plan(model, "head", "encoder.0.attn.fn", keep).masks
    gone = slice(16, 32)  # head 1 of 4, head_dim 16
    for proj in ("q", "k", "v"):
        assert not masks[f"encoder.0.attn.fn.{proj}"]["weight"][gone].any()
        assert not masks[f"encoder.0.attn.fn.{proj}"]["bias"][gone].any()
        assert masks[f"encoder.0.attn.fn.{proj}"]["weight"][:16].all()
    assert not masks["encoder.0.attn.fn.out"]["weight"][:, gone].any()
    assert masks["encoder.0.attn.fn.out"]["weight"][:, 32:].all()


@pytest.mark.parametrize(("model_cls", "granularity"), [(ResNet, "block"), (ResNet, "layer"), (ViT, "head")])
@pytest.mark.parametrize("importance", ["l1", "l2", "taylor", "activation", "ablation", "random"])
def test_every_coarse_importance_scores_every_unit(model_cls, granularity: str, importance: str) -> None:
    model = _model(model_cls)
    spec = PruningSpec(sparsity=0.5, granularity=granularity, importance=importance, calib_batches=2)
    plan = compute_masks(model, spec, calib=_batches())
    assert all(r.score_mean is not None and r.score_std is not None for r in plan.layers)
    assert plan.units_pruned == sum(round(0.5 * r.units_total) for r in plan.layers)


def test_ablation_removes_the_unit_that_hurts_least() -> None:
    model = _model(ViT)
    calib = _batches()
    plan = compute_masks(model, PruningSpec(sparsity=0.25, granularity="block", importance="ablation"), calib=calib)
    (pruned,) = set(range(4)) - set(plan.kept_units["encoder"].tolist())
    losses = []
    for index in range(4):
        keep = torch.ones(4, dtype=torch.bool)
        keep[index] = False
        trial = _model(ViT)
        apply_masks(trial, _forced_plan(trial, "block", "encoder", keep))
        with torch.no_grad():
            losses.append(sum(float(nn.functional.cross_entropy(trial(x), y)) for x, y in calib))
    assert pruned == min(range(4), key=losses.__getitem__)


def test_parameter_and_unit_sparsity_are_both_reported() -> None:
    model = _model(ViT)
    plan = compute_masks(model, PruningSpec(sparsity=0.5, granularity="block", threshold="global"))
    (report,) = plan.layers
    assert (report.units_total, report.units_pruned) == (4, 2)
    per_layer = sum(p.numel() for p in model.encoder[0].parameters())
    assert report.params_total == 4 * per_layer and report.params_pruned == 2 * per_layer
    apply_masks(model, plan)
    rebuilt = rebuild(model, plan)
    assert count_params(model)[0] - count_params(rebuilt)[0] == 2 * per_layer


@pytest.mark.parametrize(("model_cls", "granularity"), [(ResNet, "block"), (ResNet, "layer"), (ViT, "head")])
def test_iterative_rounds_keep_removed_units_removed(model_cls, granularity: str) -> None:
    model = _model(model_cls)
    first = compute_masks(model, PruningSpec(sparsity=0.3, granularity=granularity, threshold="global"))
    apply_masks(model, first)
    spec = PruningSpec(sparsity=0.6, granularity=granularity, threshold="global", importance="random", seed=1)
    second = compute_masks(model, spec, previous=first)
    for layer, kept in second.kept_units.items():
        assert set(kept.tolist()) <= set(first.kept_units[layer].tolist())
    assert second.units_pruned > first.units_pruned
    assert set(first.bypass) <= set(second.bypass)
    apply_masks(model, second)
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert (rebuild(model, second, EXAMPLE)(x) - model(x)).abs().max().item() <= 1e-5


def test_removing_every_block_of_a_stage_keeps_one_and_says_so() -> None:
    model = _model(ResNet)
    plan = compute_masks(model, PruningSpec(sparsity=0.99, granularity="block", threshold="layerwise"))
    assert all(len(kept) == 1 for kept in plan.kept_units.values())
    assert "stages.1: kept 1 of 2 blocks (target would remove all)" in plan.notes
    apply_masks(model, plan)
    rebuilt = rebuild(model, plan)
    assert rebuilt(EXAMPLE).shape == (1, 10)  # the downsampling blocks are no units, so shapes hold


def test_a_declared_unit_that_changes_shape_is_refused() -> None:
    model = _model(ResNet)
    model.structures["block"]["stages.1"] = ("stages.1.0", "stages.1.1", "stages.1.2")  # stages.1.0 downsamples
    with pytest.raises(ValueError, match=r"stages\.1\.0 changes the shape \(16, 14, 14\) -> \(32, 7, 7\)"):
        compute_masks(model, PruningSpec(sparsity=0.5, granularity="block"))


@pytest.mark.parametrize("granularity", ["head", "block", "layer"])
def test_lenet5_has_no_coarse_units(granularity: str) -> None:
    with pytest.raises(PruningConfigError) as info:
        validate_spec(PruningSpec(sparsity=0.5, granularity=granularity), LeNet5())
    assert str(info.value) == (
        f"pruning.granularity={granularity} is not available for LeNet5: LeNet5 declares no {granularity} units "
        f"(model.structures['{granularity}']); it has [unstructured, channel]"
    )


def test_head_on_resnet_lists_what_it_has() -> None:
    with pytest.raises(PruningConfigError, match=r"it has \[unstructured, channel, layer, block\]"):
        validate_spec(PruningSpec(sparsity=0.5, granularity="head"), ResNet())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"threshold": "statistical"}, "pruning.threshold=statistical is not defined for pruning.granularity=block"),
        ({"importance": "entropy"}, "pruning.importance=entropy is not defined for pruning.granularity=block"),
        ({"layers": ("stages.9",)}, "pruning.layers contains stages.9: not a group of block units of ResNet"),
    ],
)
def test_meaningless_coarse_combinations_are_refused(change, message) -> None:
    with pytest.raises(PruningConfigError, match=message):
        validate_spec(PruningSpec(sparsity=0.5, granularity="block", **change), ResNet())


def test_activation_and_ablation_are_coarse_only() -> None:
    with pytest.raises(
        PruningConfigError, match=r"pruning.importance=activation is not defined for pruning.granularity=channel"
    ):
        validate_spec(PruningSpec(sparsity=0.5, granularity="channel", importance="activation"), ResNet())


def test_resnet_channels_through_the_residual_stream_are_pruned_together() -> None:
    # Pruning the stem and the blocks' outputs too: the adds couple them, and what goes from one goes from all.
    model = _model(ResNet)
    spec = PruningSpec(sparsity=0.1, granularity="channel", layers=model.prunable_layers, threshold="layerwise")
    plan = compute_masks(model, spec)
    assert any("removed through coupling" in note for note in plan.notes)
    stream = ["stem.conv", "stages.0.0.conv2.conv", "stages.0.2.conv2.conv"]
    assert len({tuple(plan.kept_units[layer].tolist()) for layer in stream}) == 1
    apply_masks(model, plan)
    rebuilt = rebuild(model, plan, EXAMPLE)
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert (rebuilt.eval()(x) - model(x)).abs().max().item() <= 1e-5
    assert rebuilt.stem.bn.num_features == len(plan.kept_units["stem.conv"]) < 16


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model", "granularity", "importance"), [("resnet", "block", "l1"), ("vit", "head", "activation")]
)
def test_end_to_end_point_on_real_mnist(make_cfg, tiny_overrides, store_uri, model, granularity, importance) -> None:
    from mlflow.tracking import MlflowClient

    from prunesweep import experiment

    cfg = make_cfg(
        *tiny_overrides,
        f"model={model}",
        f"pruning.granularity={granularity}",
        f"pruning.importance={importance}",
        "pruning.calib_batches=2",
    )
    result = experiment.run(cfg)
    assert result["status"] == "finished"
    client = MlflowClient(tracking_uri=store_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("prunesweep").experiment_id])
    metrics = run.data.metrics
    assert run.info.status == "FINISHED" and run.data.tags["granularity"] == granularity
    assert metrics["sparsity/units"] == pytest.approx(0.5, abs=0.1)  # units removed (per group, rounded)
    assert 0 < metrics["sparsity/achieved"] < metrics["sparsity/units"]  # parameters: stem, embeddings stay
    assert metrics["rebuild/max_abs_diff"] <= 1e-4
    assert metrics["flops/remaining"] < metrics["flops/dense"]
    assert metrics["params/nonzero"] < metrics["params/total"]
