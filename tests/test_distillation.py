"""Distillation (finetune.distill): its loss on small tensors, its config, and a real fine-tune that uses it."""

from __future__ import annotations

import copy

import pytest
import torch
from omegaconf import OmegaConf
from torch.nn import functional as F

from prunesweep.config import ConfigError, config_hash, validate
from prunesweep.data.loaders import InMemoryLoader
from prunesweep.distillation import Distillation, distillation_loss
from prunesweep.lit import Classifier, fit


def _logits(seed: int, shape=(6, 10)) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_the_loss_mixes_cross_entropy_and_the_temperature_scaled_kl():
    student, teacher, labels = _logits(0), _logits(1), torch.tensor([0, 1, 2, 3, 4, 5])
    distill = Distillation(weight=0.3, temperature=2.5)
    p_teacher = F.softmax(teacher / 2.5, dim=1)
    kl = (p_teacher * (p_teacher.log() - F.log_softmax(student / 2.5, dim=1))).sum(dim=1).mean()
    expected = 0.7 * F.cross_entropy(student, labels) + 0.3 * 2.5**2 * kl
    assert distillation_loss(student, teacher, labels, distill) == pytest.approx(float(expected), rel=1e-6)


def test_its_gradient_pulls_the_student_towards_the_teacher_and_leaves_the_teacher_alone():
    student = _logits(2).requires_grad_()
    teacher = _logits(3).requires_grad_()
    t = 4.0
    distillation_loss(student, teacher, torch.zeros(6, dtype=torch.long), Distillation(1.0, t)).backward()
    # d/ds T²·KL(p_t ‖ p_s) = T·(p_s − p_t) / batch: the soft targets' pull, as large at any temperature
    expected = t * (F.softmax(student / t, dim=1) - F.softmax(teacher / t, dim=1)) / 6
    assert torch.allclose(student.grad, expected.detach(), atol=1e-6)
    assert teacher.grad is None


@pytest.mark.parametrize("weight, temperature", [(-0.1, 4.0), (1.5, 4.0), (0.5, 0.0), (0.5, -1.0)])
def test_out_of_range_settings_are_refused(weight, temperature):
    with pytest.raises(ValueError, match=r"finetune\.distill"):
        Distillation(weight, temperature)


def test_config_refuses_bad_settings_and_keeps_old_hashes_when_off(make_cfg):
    with pytest.raises(ConfigError, match=r"finetune\.distill"):
        validate(make_cfg("finetune.distill.weight=1.5"))
    with pytest.raises(ConfigError, match=r"finetune\.distill"):
        validate(make_cfg("finetune.distill.temperature=abc"))
    off, on = make_cfg(), make_cfg("finetune.distill.weight=0.5")
    without_key = copy.deepcopy(off)
    OmegaConf.set_struct(without_key, False)
    del without_key.finetune["distill"]  # a point finished before the key existed
    assert config_hash(off) == config_hash(without_key)
    assert config_hash(on) != config_hash(off)


def test_the_teacher_is_frozen_in_eval_mode_and_never_optimized():
    student = torch.nn.Sequential(torch.nn.Linear(4, 3))
    teacher = torch.nn.Sequential(torch.nn.Dropout(0.5), torch.nn.Linear(4, 3))
    module = Classifier(student, lr=0.1, teacher=teacher, distill=Distillation(0.5))
    module.train()
    assert module.model.training and not module.teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
    off = Classifier(student, lr=0.1, teacher=teacher, distill=Distillation(0.0))
    assert off.teacher is None  # weight 0: no teacher forward at all


def test_fit_with_a_teacher_trains_differently_from_labels_alone():
    """The recipe's distill settings reach the training loss: same init, same batches, different weights."""
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 1, 4, 4, generator=generator), torch.randint(0, 3, (64,), generator=generator)
    batches = InMemoryLoader(x, y, 32)
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    init = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    trained = {}
    for weight in (0.0, 0.9):
        model = copy.deepcopy(init)
        recipe = {"lr": 0.1, "optimizer": "sgd", "epochs": 3, "distill": {"weight": weight, "temperature": 2.0}}
        trainer_cfg = {"accelerator": "cpu", "enable_progress_bar": False, "enable_model_summary": False}
        fit(model, batches, None, recipe, trainer_cfg, teacher=copy.deepcopy(teacher))
        trained[weight] = model[1].weight.detach().clone()
    assert not torch.equal(trained[0.0], init[1].weight)
    assert not torch.allclose(trained[0.0], trained[0.9], atol=1e-4)


def test_another_teacher_is_a_model_config_that_needs_distillation_on_and_changes_the_hash(make_cfg):
    """finetune.distill.teacher composes from conf/model like the model itself; it is refused when nothing
    distils from it or when it is not a model config, and points with it hash apart from own-teacher ones."""
    own = make_cfg("model=lenet300", "finetune.distill.weight=0.7")
    other = make_cfg("model=lenet300", "finetune.distill.weight=0.7", "+model@finetune.distill.teacher=lenet5")
    validate(other)
    assert other.finetune.distill.teacher.name == "lenet5" and other.model.name == "lenet300"
    assert config_hash(other) != config_hash(own)
    with pytest.raises(ConfigError, match=r"teacher is set but finetune\.distill\.weight is 0"):
        validate(make_cfg("+model@finetune.distill.teacher=lenet5"))
    with pytest.raises(ConfigError, match=r"must be a model config with a _target_"):
        validate(make_cfg("finetune.distill.weight=0.7", "+finetune.distill.teacher=lenet5"))
