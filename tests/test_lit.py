"""lit.fit and lit.evaluate on real MNIST batches: steps taken, per-epoch metrics, modes restored."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate

from prunesweep.bench.settings import point_config
from prunesweep.experiment import setup_data
from prunesweep.lit import evaluate, fit, select_device
from prunesweep.models import LeNet5

IMAGES = 1024  # 4 batches of 256


@pytest.fixture(scope="module")
def mnist():
    """The default data config on the first 1024 training images (real MNIST, from the local cache)."""
    cfg = point_config(f"data.train_subset={IMAGES}", "data.val_size=500", "trainer.enable_progress_bar=false")
    return cfg, setup_data(cfg, log_fn=lambda _msg: None)


class Validations(pl.Callback):
    def __init__(self) -> None:
        self.count = 0

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.count += 1


def test_fit_trains_in_place_and_reports_its_steps(mnist):
    cfg, dm = mnist
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    before = evaluate(model, dm.test_dataloader())
    logged: list[tuple[dict, int]] = []
    trainer = fit(
        model,
        dm.train_dataloader(),
        dm.val_dataloader(),
        cfg.train,
        cfg.trainer,
        epochs=2,
        log_metrics=lambda metrics, step: logged.append((dict(metrics), step)),
        prefix="dense/",
    )
    assert trainer.global_step == 2 * IMAGES // 256
    assert [step for _, step in logged] == [0, 1]
    assert set(logged[0][0]) == {"dense/train/loss", "dense/val/acc"}
    after = evaluate(model, dm.test_dataloader())
    assert after > max(0.3, before + 0.15), (before, after)  # the model passed in is the one trained


def test_max_steps_stops_mid_epoch_and_still_validates_the_partial_epoch(mnist):
    cfg, dm = mnist
    torch.manual_seed(0)
    validations = Validations()
    logged: list[tuple[dict, int]] = []
    trainer = fit(
        instantiate(cfg.model),
        dm.train_dataloader(),
        dm.val_dataloader(),
        cfg.finetune,
        cfg.trainer,
        epochs=2,
        max_steps=6,  # one full epoch of 4 steps, then 2 steps of the next
        log_metrics=lambda metrics, step: logged.append((dict(metrics), step)),
        callbacks=[validations],
    )
    assert trainer.global_step == 6
    assert validations.count == 2  # max_steps alone would skip the second one
    assert [step for _, step in logged] == [0, 1]


def test_evaluate_restores_the_mode_even_when_a_batch_fails():
    model = LeNet5().train()
    x, y = torch.zeros(4, 1, 28, 28), torch.zeros(4, dtype=torch.long)

    def batches():
        yield x, y
        raise RuntimeError("a broken batch")

    with pytest.raises(RuntimeError, match="a broken batch"):
        evaluate(model, batches())
    assert model.training
    model.eval()
    assert 0.0 <= evaluate(model, [(x, y)]) <= 1.0
    assert not model.training  # and an eval-mode model stays in eval mode
    with pytest.raises(ValueError, match="no batches"):
        evaluate(model, [])


@pytest.mark.parametrize(
    ("accelerator", "cuda", "expected"),
    [("cpu", True, "cpu"), ("auto", False, "cpu"), ("auto", True, "cuda"), ("gpu", True, "cuda")],
)
def test_select_device_follows_the_trainer_config(accelerator, cuda, expected):
    assert select_device({"accelerator": accelerator}, cuda_available=cuda).type == expected


def test_select_device_refuses_a_gpu_that_is_not_there(make_cfg):
    with pytest.raises(RuntimeError, match="no CUDA device is visible; use trainer=cpu"):
        select_device({"accelerator": "gpu"}, cuda_available=False)
    with pytest.raises(ValueError, match=r"trainer\.accelerator='tpu' is not supported"):
        select_device({"accelerator": "tpu"}, cuda_available=True)
    gpu = make_cfg("trainer=gpu").trainer
    assert gpu.accelerator == "auto" and gpu.precision == "32-true"
    assert select_device(gpu, cuda_available=False).type == "cpu"  # trainer=gpu still runs on a CPU-only machine
