"""The schedule registry: fine-tune budgets shared exactly, capabilities that validation reads; and every schedule
lands on the same model whether it fine-tunes the masked model or the rebuilt one."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from prunesweep.lit import fit
from prunesweep.models import LeNet5
from prunesweep.pruning import PruningSpec, check_rebuild, rebuild
from prunesweep.schedules import SCHEDULES, Rebuilt, ScheduleJob, masking_prune, split_steps


@pytest.mark.parametrize("rounds", range(1, 8))
def test_split_steps_shares_the_total_exactly_and_evenly(rounds):
    for total in range(0, 60):
        shares = split_steps(total, rounds)
        assert len(shares) == rounds
        assert sum(shares) == total
        assert max(shares) - min(shares) <= 1
        assert shares == sorted(shares, reverse=True)  # earlier rounds take the remainder


def test_split_steps_refuses_zero_rounds():
    with pytest.raises(ValueError, match="rounds=0"):
        split_steps(10, 0)


def test_only_schedules_that_prune_between_training_phases_rewind():
    assert {name for name, schedule in SCHEDULES.items() if schedule.rewinds} == {"oneshot", "iterative"}


EXAMPLE = torch.zeros(1, 1, 28, 28)
TRAINER = {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False, "enable_model_summary": False,
           "deterministic": True, "num_sanity_val_steps": 0}  # fmt: skip
RECIPES = {
    "sgd": {"epochs": 2, "lr": 0.05, "optimizer": "sgd", "momentum": 0.9, "weight_decay": 5e-3},
    "adam-cosine": {"epochs": 2, "lr": 1e-3, "optimizer": "adam", "weight_decay": 5e-3, "lr_schedule": "cosine"},
}


def _job(model: nn.Module, schedule: str, recipe: dict, rebuilds: bool) -> ScheduleJob:
    """A job as the experiment builds it, on 6 batches of random images (3 steps per epoch)."""
    generator = torch.Generator().manual_seed(1)
    images, labels = torch.randn(48, 1, 28, 28, generator=generator), torch.randint(0, 10, (48,), generator=generator)
    batches = DataLoader(TensorDataset(images, labels), batch_size=16)

    def finetune(callbacks: Sequence[pl.Callback], steps=None, prefix="", model: nn.Module | None = None) -> int:
        target = job_model if model is None else model
        return fit(target, batches, None, recipe, TRAINER, max_steps=steps, callbacks=callbacks).global_step

    def rebuilt(plan) -> Rebuilt:
        compact = rebuild(job_model, plan, EXAMPLE)
        return Rebuilt(compact, check_rebuild(job_model, compact, images[:8], name="LeNet5"))

    job_model = model
    spec = PruningSpec(sparsity=0.75, granularity="channel", threshold="global")
    return ScheduleJob(
        model=model,
        sparsity=spec.sparsity,
        prune=masking_prune(model, spec, example_inputs=EXAMPLE),
        evaluate=lambda model=None: 0.0,
        finetune=finetune,
        epochs=int(recipe["epochs"]),
        steps_per_epoch=len(batches),
        rounds=2,
        gradual_end_fraction=0.5,
        gradual_frequency=1,
        rebuild=rebuilt if rebuilds else None,
    )


@pytest.mark.parametrize("recipe", sorted(RECIPES))
@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_fine_tuning_the_rebuilt_model_lands_where_the_masked_one_does(schedule: str, recipe: str) -> None:
    """Gradual switches models in the middle of a fit: its optimizer state and lr schedule must carry over."""
    results = {}
    for rebuilds in (False, True):
        torch.manual_seed(0)
        model = LeNet5()
        result = SCHEDULES[schedule](_job(model, schedule, RECIPES[recipe], rebuilds))
        results[rebuilds] = (model, result)
    (masked, masked_result), (_, rebuilt_result) = results[False], results[True]
    assert masked_result.rebuilt is None and rebuilt_result.rebuilt is not None
    assert masked_result.finetune_steps == rebuilt_result.finetune_steps == 6
    x = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    assert rebuilt_result.model is not None
    assert check_rebuild(masked, rebuilt_result.model, x, name="LeNet5") <= 1e-5
