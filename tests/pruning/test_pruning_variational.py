"""Sparse variational dropout: its math on small tensors, its layer in both modes, its training on a problem whose
useless weights are known, and its scores as an importance."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from prunesweep.data.loaders import InMemoryLoader
from prunesweep.models import LeNet5
from prunesweep.pruning import (
    PruningConfigError,
    PruningSpec,
    Unstructured,
    Variational,
    VariationalFit,
    VariationalLayer,
    VariationalRecipe,
    attach,
    compute_masks,
    detach,
    fit_variational,
    noise_share,
    validate_spec,
)
from prunesweep.pruning.variational import KL_K1, KL_K2, KL_K3, kl_divergence, kl_weight, log_alpha


def test_log_alpha_is_the_noise_to_signal_ratio_clipped():
    weight, log_sigma2 = torch.tensor([2.0, 0.5, 1e-6, 1e3]), torch.tensor([0.0, -1.0, 0.0, 0.0])
    expected = [math.log(1 / 4), -1 - math.log(0.25), 8.0, -8.0]  # the last two at the clip
    assert log_alpha(weight, log_sigma2).tolist() == pytest.approx(expected, abs=1e-6)


def test_kl_is_the_papers_approximation_and_vanishes_for_pure_noise():
    values = torch.tensor([-4.0, 0.0, 3.0])
    by_hand = sum(
        -(KL_K1 * (1 / (1 + math.exp(-(KL_K2 + KL_K3 * a)))) - 0.5 * math.log1p(math.exp(-a)) - KL_K1)
        for a in values.tolist()
    )
    assert float(kl_divergence(values)) == pytest.approx(by_hand, rel=1e-6)
    grid = torch.linspace(-8, 8, 33)
    per_weight = torch.stack([kl_divergence(a.reshape(1)) for a in grid])
    assert bool((per_weight[1:] < per_weight[:-1]).all())  # more noise always costs less: the prior's pull
    assert 0 <= float(kl_divergence(torch.tensor([8.0]))) < 1e-3


def test_kl_weight_rises_linearly_then_holds():
    assert [kl_weight(step, 10) for step in (0, 5, 10, 50)] == [0.0, 0.5, 1.0, 1.0]
    assert kl_weight(0, 0) == 1.0


@pytest.mark.parametrize("layer", [nn.Linear(6, 4), nn.Conv2d(3, 4, 3, padding=1, stride=2)], ids=["linear", "conv"])
def test_layer_samples_the_local_reparameterisation_and_zeroes_noise_in_eval(layer):
    torch.manual_seed(0)
    x = torch.randn(4, 6) if isinstance(layer, nn.Linear) else torch.randn(4, 3, 6, 6)
    wrapped = VariationalLayer(layer)
    with torch.no_grad():
        fresh_std = wrapped._apply_op(x * x, torch.exp(wrapped.log_sigma2), None).sqrt()
        assert bool(((wrapped(x) - layer(x)).abs() <= 5 * fresh_std).all())  # fresh: the dense layer, little noise
        wrapped.log_sigma2.fill_(-2.0)
        draws = torch.stack([wrapped(x) for _ in range(4000)])
        variance = wrapped._apply_op(x * x, torch.exp(wrapped.log_sigma2), None)
        standard_error = (variance / len(draws)).sqrt()
        assert bool(((draws.mean(0) - layer(x)).abs() <= 5 * standard_error).all())  # unbiased around θ's output
        assert torch.allclose(draws.var(0), variance, rtol=0.15)  # sd of a 4000-draw variance: 2.2 %
        noisy = log_alpha(layer.weight, wrapped.log_sigma2) >= 3
        wrapped.eval()
        kept = (layer.weight * ~noisy, layer.bias)
        expected = F.linear(x, *kept) if isinstance(layer, nn.Linear) else layer._conv_forward(x, *kept)
        assert torch.equal(wrapped(x), expected)


def test_attach_and_detach_keep_the_models_own_parameters():
    model = LeNet5()
    before = {name: p for name, p in model.named_parameters()}
    wrappers = attach(model, ["conv2", "fc1"])
    assert isinstance(model.fc1, VariationalLayer) and model.fc1.layer.weight is before["fc1.weight"]
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    detach(model, wrappers)
    assert dict(model.named_parameters()) == before
    with pytest.raises(TypeError, match="Conv2d or Linear"):
        VariationalLayer(nn.ReLU())


def test_training_finds_the_weights_that_carry_nothing():
    """Two informative inputs and six of pure noise: every noise input's weight ends far noisier (log α) than every
    informative one, most of them past the paper's log α ≥ 3, and the paper's sparse network still classifies."""
    torch.manual_seed(0)
    x = torch.randn(512, 8)
    y = (x[:, 0] + x[:, 1] > 0).long()
    batches = [(x[i : i + 128], y[i : i + 128]) for i in range(0, 512, 128)]
    model = nn.Sequential(nn.Linear(8, 2))
    wrappers = attach(model, ["0"])
    seen = []
    recipe = VariationalRecipe(epochs=40, lr=0.05, anneal_epochs=5)
    fit_variational(model, wrappers, batches, recipe, on_epoch=lambda epoch, metrics: seen.append(metrics))
    alphas = wrappers["0"].log_alpha().detach()
    assert len(seen) == 40 and seen[-1]["sparsity"] == noise_share(wrappers)
    assert float(alphas[:, 2:].min()) > float(alphas[:, :2].max()) + 8, alphas
    assert noise_share(wrappers) >= 0.5 * 12 / 16, alphas  # at least half of the 12 noise weights
    model.eval()
    with torch.no_grad():
        assert float((model(x).argmax(1) == y).float().mean()) > 0.95


def _fresh_fit(recipe: VariationalRecipe) -> tuple[nn.Module, VariationalFit]:
    """The same 8-to-2 linear model each call, wrapped, with a fit of ``recipe`` on 256 examples."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 2))
    return model, VariationalFit(model, attach(model, ["0"]), recipe, train_size=256)


def test_a_fit_stopped_and_resumed_ends_where_an_uninterrupted_one_does():
    """Weights, noise, optimizer, epoch and random state in the checkpoint; the loader replays each epoch's order."""
    x, y = torch.randn(256, 8, generator=torch.Generator().manual_seed(1)), torch.randint(0, 2, (256,))
    recipe = VariationalRecipe(epochs=4, lr=0.01, anneal_epochs=1)

    model, straight = _fresh_fit(recipe)
    straight.run(InMemoryLoader(x, y, 64, shuffle=True, seed=3))
    _, first = _fresh_fit(recipe)
    stopped = []

    def stop_after_two(epoch: int, metrics: dict[str, float]) -> None:
        stopped.append(epoch)
        if epoch == 1:
            raise KeyboardInterrupt  # Ctrl-C, a pre-empted node: after the checkpoint of epoch 2 was taken

    with pytest.raises(KeyboardInterrupt):
        first.run(InMemoryLoader(x, y, 64, shuffle=True, seed=3), stop_after_two)
    checkpoint = copy.deepcopy(first.state_dict())
    torch.manual_seed(123)  # whatever ran in between
    model_c, resumed = _fresh_fit(recipe)
    resumed.load_state_dict(checkpoint)
    resumed.run(InMemoryLoader(x, y, 64, shuffle=True, seed=3))
    assert stopped == [0, 1] and resumed.epoch == straight.epoch == 4 and resumed.step == straight.step
    for a, b in zip(model.state_dict().values(), model_c.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_a_longer_fit_continued_from_a_shorter_ones_end_equals_training_it_from_scratch():
    """Nothing in a fit depends on its total epochs (constant lr, KL annealed by steps): a 4-epoch fit started
    from a finished 2-epoch fit's state is the 4-epoch fit, bit for bit."""
    x, y = torch.randn(256, 8, generator=torch.Generator().manual_seed(1)), torch.randint(0, 2, (256,))

    def fresh(epochs: int) -> tuple[nn.Module, VariationalFit]:
        return _fresh_fit(VariationalRecipe(epochs=epochs, lr=0.01, anneal_epochs=3))  # annealing spans both fits

    model, straight = fresh(4)
    straight.run(InMemoryLoader(x, y, 64, shuffle=True, seed=3))
    _, short = fresh(2)
    short.run(InMemoryLoader(x, y, 64, shuffle=True, seed=3))
    finished = copy.deepcopy(short.state_dict())
    model_c, longer = fresh(4)
    longer.load_state_dict(finished)
    longer.run(InMemoryLoader(x, y, 64, shuffle=True, seed=3))
    assert short.epoch == 2 and longer.epoch == straight.epoch == 4 and longer.step == straight.step
    for a, b in zip(model.state_dict().values(), model_c.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_train_clip_leaves_the_noisy_weights_out_of_the_training_forward():
    """With train_clip the sampled output is that of the layer without its log α ≥ 3 weights, noise included, and
    the data loss gives those weights no gradient; without it they still count."""
    torch.manual_seed(0)
    layer, x = nn.Linear(6, 3), torch.randn(16, 6)
    noisy = torch.zeros_like(layer.weight, dtype=torch.bool)
    noisy[:, :2] = True
    clipped = VariationalLayer(copy.deepcopy(layer), train_clip=True)
    with torch.no_grad():
        signal_level = torch.full_like(layer.weight, -9.0)
        clipped.log_sigma2.copy_(torch.where(noisy, 5 + torch.log(layer.weight**2), signal_level))  # log α = 5
    without = copy.deepcopy(clipped)
    with torch.no_grad():
        without.layer.weight[noisy] = 0.0  # log α = 8 now: still cut
    plain = copy.deepcopy(clipped)
    plain.train_clip = False
    outputs = []
    for wrapper in (clipped, without, plain):
        torch.manual_seed(1)
        outputs.append(wrapper.train()(x))
    assert torch.equal(outputs[0], outputs[1]) and not torch.allclose(outputs[0], outputs[2])
    outputs[0].square().sum().backward()
    assert torch.all(clipped.layer.weight.grad[noisy] == 0) and torch.all(clipped.layer.weight.grad[~noisy] != 0)
    model, kept = nn.Sequential(clipped), clipped.layer.weight[~noisy].clone()
    detach(model, {"0": clipped})  # the network the fit trained: without its noisy weights
    assert torch.all(model[0].weight[noisy] == 0) and torch.equal(model[0].weight[~noisy], kept)


def test_clipped_noise_keeps_the_clipped_weights_noise_so_the_data_can_bring_them_back():
    """With clipped_noise a clipped weight is still out of the mean (the loss below is the sampled noise alone),
    but its noise α θ² = σ² is sampled, so the data loss pulls its σ² down (it can fall back below log α = 3);
    without it that σ² gets no gradient at all."""
    torch.manual_seed(0)
    layer, x = nn.Linear(6, 3), torch.randn(16, 6)
    noisy = torch.zeros_like(layer.weight, dtype=torch.bool)
    noisy[:, :2] = True
    log_sigma2 = torch.where(noisy, 5 + torch.log(layer.weight.detach() ** 2), torch.full_like(layer.weight, -9.0))
    grads = {}
    for clipped_noise in (False, True):
        wrapper = VariationalLayer(copy.deepcopy(layer), train_clip=True, clipped_noise=clipped_noise)
        with torch.no_grad():
            wrapper.log_sigma2.copy_(log_sigma2)
        torch.manual_seed(1)
        out = wrapper.train()(x)
        mean = F.linear(x, layer.weight * ~noisy, layer.bias)
        variance = F.linear(x * x, torch.exp(log_alpha(layer.weight, log_sigma2)) * layer.weight**2 * noisy)
        assert (variance.mean() > 0) and ((out - mean).abs().mean() > 0)  # noise is sampled either way
        (out - mean).square().sum().backward()  # a loss that only the noise moves: out's mean is `mean`
        grads[clipped_noise] = wrapper.log_sigma2.grad[noisy]
    assert torch.all(grads[False] == 0) and torch.all(grads[True] > 0)


def test_a_linear_lr_decay_sets_each_epochs_lr_and_reaches_its_last_step():
    x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
    model = nn.Sequential(nn.Linear(4, 2))
    recipe = VariationalRecipe(epochs=4, lr=0.01, lr_decay="linear")
    fit = VariationalFit(model, attach(model, ["0"]), recipe, train_size=64)
    seen = []
    fit.run([(x, y)], on_epoch=lambda epoch, _: seen.append(fit.optimizer.param_groups[0]["lr"]))
    assert seen == pytest.approx([0.01, 0.0075, 0.005, 0.0025])


def test_recipe_refuses_bad_settings_by_name():
    for bad, message in (
        ({"epochs": 0}, "epochs"),
        ({"lr": 0.0}, "lr"),
        ({"anneal_epochs": -1}, "anneal_epochs"),
        ({"train_clip": "yes"}, "train_clip"),
        ({"clipped_noise": True}, "clipped_noise needs train_clip"),
        ({"lr_decay": "cosine"}, "lr_decay"),
    ):
        with pytest.raises(ValueError, match=message):
            VariationalRecipe.from_mapping(bad)
    with pytest.raises(ValueError, match=r"unknown keys \['epoch'\]"):
        VariationalRecipe.from_mapping({"epoch": 3})


def test_importance_prunes_the_noisiest_weights_to_the_exact_target():
    torch.manual_seed(0)
    model = LeNet5()
    layers = ["conv1", "conv2", "fc1", "fc2"]
    noise = {name: torch.randn_like(model.get_submodule(name).weight) for name in layers}
    spec = PruningSpec(sparsity=0.9, importance="variational", threshold="global")
    plan = compute_masks(model, spec, importance=Variational(noise))
    kept = sum(int(plan.masks[name]["weight"].sum()) for name in layers)
    total = sum(noise[name].numel() for name in layers)
    assert kept == round(0.1 * total)
    scores = torch.cat([-log_alpha(model.get_submodule(n).weight, noise[n]).flatten() for n in layers])
    cut = scores.sort(descending=True).values[kept - 1]
    for name in layers:
        mask = plan.masks[name]["weight"].bool()
        assert bool((-log_alpha(model.get_submodule(name).weight, noise[name])[mask] >= cut).all())
    with pytest.raises(PruningConfigError, match="has no trained noise"):
        compute_masks(model, spec)  # built from the spec alone: nothing trained
    with pytest.raises(PruningConfigError, match="one noise level per weight"):
        validate_spec(PruningSpec(sparsity=0.5, importance="variational", granularity="channel"), model)
    assert Variational.accepts(Unstructured)


def test_a_cut_looser_than_the_train_clip_network_keeps_the_zeros_its_fit_found_least_noisy():
    # A train_clip network sparser than the target: the cut must keep some of the weights detach zeroed. Scored
    # as they are now, every zero ties at the clip and the first in memory order would be kept; ranked by the
    # log α their fit ended with, the least noisy are.
    torch.manual_seed(0)
    layer = nn.Linear(50, 4)
    wrappers = attach(nn.Sequential(layer), ["0"], train_clip=True)
    with torch.no_grad():
        wrappers["0"].log_sigma2.copy_(torch.log(layer.weight.pow(2)) + torch.linspace(-4.0, 20.0, 200).view(4, 50))
    fitted = wrappers["0"].log_alpha(clip=False).detach().clone()
    model = nn.Sequential(wrappers["0"])
    noise = {"0": wrappers["0"].log_sigma2.detach().clone()}
    detach(model, wrappers)
    zeroed = layer.weight == 0
    assert int(zeroed.sum()) == int((fitted >= 3).sum()) > 0
    assert int(((fitted >= 3) & (fitted < 8)).sum()) < 60  # most zeros lie past the training clip (log α 8)
    keep = int((~zeroed).sum()) + 60
    spec = PruningSpec(sparsity=1 - keep / 200, importance="variational", threshold="global", layers=("0",))
    mask = compute_masks(model, spec, importance=Variational(noise, {"0": fitted})).masks["0"]["weight"].bool()
    assert int(mask.sum()) == keep and bool(mask[~zeroed].all())
    kept_zeros = fitted[mask & zeroed]
    assert kept_zeros.max() < fitted[~mask].min()  # the least noisy zeros, none noisier than one left out
    tied = compute_masks(model, spec, importance=Variational(noise)).masks["0"]["weight"].bool()
    assert not torch.equal(tied, mask)  # without the fit's log α, the ties choose others
