"""Splicing (``pruning.schedule=splicing``): pruned weights keep learning through a straight-through mask, a mask
update ranks every weight again so a pruned one can come back, and the last update's masks are held."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from prunesweep.lit import fit
from prunesweep.models import LeNet5, LeNet300
from prunesweep.pruning import MaskPlan, PruningSpec, SplicedMask, apply_masks, masked_nonzero, unsplice
from prunesweep.pruning.plan import HeldMask, is_bypassed
from prunesweep.schedules import SCHEDULES, ScheduleJob, masking_prune

GLOBAL_90 = PruningSpec(sparsity=0.9, granularity="unstructured", threshold="global")
EXAMPLE = torch.zeros(1, 1, 28, 28)


def _plan(model: nn.Module, keep: float = 0.3) -> MaskPlan:
    generator = torch.Generator().manual_seed(3)
    masks = {
        name: {"weight": torch.rand(module.weight.shape, generator=generator) < keep}
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear | nn.Conv2d)
    }
    return MaskPlan(masks=masks, layers=[])


def _loss(model: nn.Module) -> torch.Tensor:
    generator = torch.Generator().manual_seed(4)
    x, y = torch.randn(8, 1, 28, 28, generator=generator), torch.randint(0, 10, (8,), generator=generator)
    return nn.functional.cross_entropy(model(x), y)


@pytest.mark.parametrize("model_cls", [LeNet5, LeNet300])
def test_the_forward_is_the_held_masks_and_the_gradient_reaches_every_weight(model_cls):
    """The same masks, held or spliced: equal outputs and equal gradients where weights are kept; at pruned
    entries the held mask's gradient is 0, the spliced one's is the pruned network's gradient of that weight."""
    torch.manual_seed(0)
    held, spliced = model_cls(), model_cls()
    spliced.load_state_dict(held.state_dict())
    plan = _plan(held)
    apply_masks(held, plan)
    apply_masks(spliced, plan, spliced=True)
    for model in (held, spliced):
        _loss(model).backward()
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(held(x), spliced(x))
    for name, params in plan.masks.items():
        keep = params["weight"]
        held_grad = held.get_submodule(name).weight_orig.grad
        spliced_grad = spliced.get_submodule(name).weight_orig.grad
        assert torch.equal(held_grad[~keep], torch.zeros_like(held_grad[~keep]))
        assert torch.allclose(held_grad[keep], spliced_grad[keep])
        assert spliced_grad[~keep].abs().sum() > 0  # the pruned weights learn


def test_pruned_weights_move_but_stay_out_of_the_forward_until_unspliced():
    torch.manual_seed(0)
    model = LeNet300()
    plan = _plan(model)
    apply_masks(model, plan, spliced=True)
    orig = model.fc1.weight_orig
    before = orig.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    _loss(model).backward()
    optimizer.step()
    pruned = ~plan.masks["fc1"]["weight"]
    assert not torch.equal(orig.detach()[pruned], before[pruned])
    assert masked_nonzero(model, plan) == 0  # the forward's weights are still exactly zero there
    values = orig.detach().clone()
    assert unsplice(model) == 3
    assert model.fc1.weight is orig and torch.equal(model.fc1.weight.detach(), values)  # values kept, same Parameter
    assert not hasattr(model.fc1, "weight_mask") and not model.fc1._forward_pre_hooks
    apply_masks(model, plan)
    assert unsplice(model) == 0  # held masks are not its business
    assert isinstance(next(iter(model.fc1._forward_pre_hooks.values())), HeldMask)


def test_unsplicing_also_lifts_the_bypasses_of_a_spliced_update():
    model = LeNet5()
    plan = _plan(model)
    apply_masks(model, MaskPlan(masks=plan.masks, layers=[], bypass=("fc2",)), spliced=True)
    assert is_bypassed(model.fc2)
    unsplice(model)
    assert not is_bypassed(model.fc2)


def test_a_pruned_weight_that_grows_comes_back_only_when_spliced():
    """The same weight, pruned and then grown large: a spliced update brings it back; the gradual schedule's
    update (previous masks pinned, held masks baked in) keeps it out."""
    kept = {}
    for spliced in (True, False):
        torch.manual_seed(0)
        model = LeNet300()
        prune = masking_prune(model, GLOBAL_90, example_inputs=EXAMPLE)
        first = prune(0.9, None, spliced=spliced)
        row, col = (~first.masks["fc1"]["weight"]).nonzero()[0].tolist()
        with torch.no_grad():
            model.fc1.weight_orig[row, col] = 10.0  # what a pruned weight that the network needs grows into
        second = prune(0.9, None) if spliced else prune(0.9, first)
        kept[spliced] = (bool(second.masks["fc1"]["weight"][row, col]), float(model.fc1.weight.detach()[row, col]))
        assert int(sum(m["weight"].sum() for m in second.masks.values())) == int(
            sum(m["weight"].sum() for m in first.masks.values())
        )  # the target is met exactly either way
    assert kept == {True: (True, 10.0), False: (False, 0.0)}


def _job(model: nn.Module, spec: PruningSpec) -> ScheduleJob:
    """A job as the experiment builds it, on 8 batches of random images with an lr that moves pruned weights."""
    generator = torch.Generator().manual_seed(1)
    images, labels = torch.randn(128, 1, 28, 28, generator=generator), torch.randint(0, 10, (128,), generator=generator)
    batches = DataLoader(TensorDataset(images, labels), batch_size=16)
    recipe = {"epochs": 2, "lr": 0.01, "optimizer": "adam", "momentum": 0.9, "weight_decay": 0.0}
    trainer = {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False, "enable_model_summary": False}

    def finetune(callbacks: Sequence[pl.Callback], steps=None, prefix="", model: nn.Module | None = None) -> int:
        return fit(model or job_model, batches, None, recipe, trainer, max_steps=steps, callbacks=callbacks).global_step

    job_model = model
    return ScheduleJob(
        model=model,
        sparsity=spec.sparsity,
        prune=masking_prune(model, spec, example_inputs=EXAMPLE),
        evaluate=lambda model=None: 0.0,
        finetune=finetune,
        epochs=2,
        steps_per_epoch=len(batches),
        gradual_end_fraction=0.5,
        gradual_frequency=2,
    )


def test_the_splicing_schedule_brings_weights_back_and_ends_with_held_masks_at_the_target():
    torch.manual_seed(0)
    model = LeNet300()
    result = SCHEDULES["splicing"](_job(model, GLOBAL_90))
    assert result.finetune_steps == 16
    assert result.metrics["splicing/returned"] > 0
    hooks = [hook for module in model.modules() for hook in module._forward_pre_hooks.values()]
    assert hooks and all(type(hook) is HeldMask for hook in hooks)  # no straight-through mask left
    assert masked_nonzero(model, result.plan) == 0
    kept = sum(int(params["weight"].sum()) for params in result.plan.masks.values())
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    assert kept == weights - round(0.9 * weights)


def test_gradual_reports_no_returned_weights():
    torch.manual_seed(0)
    assert SCHEDULES["gradual"](_job(LeNet300(), GLOBAL_90)).metrics == {}


def test_spliced_masks_keep_a_channels_last_layout():
    conv = nn.Conv2d(1, 4, 3).to(memory_format=torch.channels_last)
    SplicedMask.apply(conv, "weight", mask=torch.ones(4, 1, 3, 3))
    assert conv(torch.zeros(1, 1, 8, 8)).is_contiguous(memory_format=torch.channels_last)
