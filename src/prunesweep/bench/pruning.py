"""Pruning costs and payoffs: mask computation vs an epoch, real channel-pruning speedups, sparse storage and kernels.

Latency does not depend on the weights' values, so these use a seeded, untrained LeNet-5; only the calibration
batches (taylor, entropy) are real MNIST.
"""

from __future__ import annotations

import copy
import itertools
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from functools import partial

import matplotlib

matplotlib.use("Agg")  # headless, like prunesweep.plots

import torch
from matplotlib import pyplot as plt
from matplotlib.figure import Figure
from torch import nn

from prunesweep.bench.common import Result, interleaved, median
from prunesweep.models import LeNet5
from prunesweep.pruning import (
    GRANULARITIES,
    IMPORTANCES,
    PruningConfigError,
    PruningSpec,
    apply_masks,
    clone_model,
    compute_masks,
    count_macs,
    export_state_dict,
    latency_ms,
    rebuild_channels,
    sparse_export,
    validate_spec,
)

Batches = Sequence[tuple[torch.Tensor, torch.Tensor]]

MAGNITUDE = ("l1", "l2")  # the methods held to the < 1 % of an epoch goal
CALIBRATION_FREE = "l1"  # the yardstick a calibrating importance's extra cost is measured against
OVERHEAD_GOAL = 0.01
SPEEDUP_GOAL = 0.6  # measured / theoretical ...
SPEEDUP_FROM = 4.0  # ... wherever the theoretical speedup is at least this
EXAMPLE = torch.zeros(2, 1, 28, 28)


def seeded_lenet5(seed: int = 0) -> LeNet5:
    torch.manual_seed(seed)
    return LeNet5().eval()


def _prune_once(model: nn.Module, spec: PruningSpec, calib: Batches) -> float:
    """Seconds of importance + threshold + masks on a fresh copy (copying is not the method's cost)."""
    work = clone_model(model)
    start = time.perf_counter()
    plan = compute_masks(work, spec, calib)
    apply_masks(work, plan)
    return time.perf_counter() - start


def pruning_overhead(
    calib: Batches, epoch_s: float, repeats: int, sparsity: float = 0.5, threshold: str = "global"
) -> Result:
    """Every importance × granularity (where defined): pruning time as a fraction of one bare training epoch.
    Importances trained from the dense model first (``variational``) are left out: their cost is epochs."""
    model = seeded_lenet5()
    cases: dict[str, Callable[[], float]] = {}
    for granularity in GRANULARITIES:
        for importance, cls in IMPORTANCES.items():
            if cls.trained_from_dense:  # its cost is training epochs (README Results), not a pruning step
                continue
            spec = PruningSpec(sparsity, granularity, importance, threshold, calib_batches=len(calib))
            try:
                validate_spec(spec, model)
            except PruningConfigError:  # e.g. entropy is defined for channels only
                continue
            cases[f"{granularity}/{importance}"] = partial(_prune_once, model, spec, calib)
    times = interleaved(cases, repeats=repeats, warmup=1)

    result = Result("prune")
    result.metrics["prune/epoch_s"] = epoch_s
    result.add(
        f"one bare epoch (the yardstick); sparsity {sparsity}, threshold {threshold}, {len(calib)} calib batches",
        f"{epoch_s:.1f} s",
    )
    for name, seconds in times.items():
        granularity, importance = name.split("/")
        total = median(seconds)
        fraction = total / epoch_s
        result.metrics[f"prune/{name}/ms"] = 1e3 * total
        result.metrics[f"prune/{name}/over_epoch"] = fraction
        value = f"{1e3 * total:.1f} ms = {100 * fraction:.3f}% of an epoch"
        baseline = f"{granularity}/{CALIBRATION_FREE}"
        if IMPORTANCES[importance].requires_calibration and baseline in times:
            # The calibration passes, measured as the difference to l1 on the same units: l1 scores in
            # microseconds and the rest of compute_masks (allocation, masks) is the same code for both.
            rest = median(times[baseline])
            calib_s = max(total - rest, 0.0)
            result.metrics[f"prune/{name}/calib_ms"] = 1e3 * calib_s
            result.metrics[f"prune/{name}/without_calib_over_epoch"] = rest / epoch_s
            value += f" (calibration {1e3 * calib_s:.0f} ms, rest {1e3 * rest:.1f} ms = {100 * rest / epoch_s:.3f}%)"
        if importance in MAGNITUDE:
            result.add(f"{name}", value, f"< {100 * OVERHEAD_GOAL:.0f}% of an epoch", fraction < OVERHEAD_GOAL)
        else:
            result.add(f"{name}", value)
    return result


def _rebuilt_lenet5s(
    sparsities: Sequence[float],
) -> tuple[dict[str, nn.Module], dict[float, float], dict[float, str]]:
    """The dense LeNet-5 and its channel-pruned rebuilds by name, their MACs ratios and widths by sparsity."""
    dense = seeded_lenet5()
    models: dict[str, nn.Module] = {"dense": dense}
    theoretical: dict[float, float] = {}
    archs: dict[float, str] = {}
    dense_macs = count_macs(dense, sparse=False)
    for sparsity in sparsities:
        plan = compute_masks(dense, PruningSpec(sparsity, "channel", "l1", "layerwise"))
        compact = rebuild_channels(dense, plan, EXAMPLE).eval()
        models[f"s{sparsity:.2f}"] = compact
        theoretical[sparsity] = dense_macs / count_macs(compact, sparse=False)
        archs[sparsity] = "-".join(
            str(m.out_channels if isinstance(m, nn.Conv2d) else m.out_features)
            for m in compact.modules()
            if isinstance(m, (nn.Conv2d, nn.Linear))
        )
    return models, theoretical, archs


def channel_speedup(sparsities: Sequence[float], batch_sizes: Sequence[int], rounds: int, inner: int = 10) -> Result:
    """CPU latency of the rebuilt (physically smaller) LeNet-5 vs dense, next to flops_dense / flops_remaining."""
    models, theoretical, archs = _rebuilt_lenet5s(sparsities)
    result = Result("channel")
    measured: dict[int, dict[float, float]] = {}
    for batch in batch_sizes:
        cases = {name: partial(latency_ms, model, batch, inner, 1) for name, model in models.items()}
        times = interleaved(cases, repeats=rounds, warmup=1)  # milliseconds here, not seconds
        dense_ms = median(times["dense"])
        result.metrics[f"channel/dense_ms_b{batch}"] = dense_ms
        result.add(f"dense 20-50-500-10, batch {batch}", f"{dense_ms:.3f} ms")
        measured[batch] = {}
        for sparsity in sparsities:
            key = f"s{sparsity:.2f}"
            # Paired per round, like the training ratio: dense and pruned ran back to back.
            speedup = median([d / p for d, p in zip(times["dense"], times[key], strict=True)])
            measured[batch][sparsity] = speedup
            efficiency = speedup / theoretical[sparsity]
            result.metrics[f"channel/{key}/ms_b{batch}"] = median(times[key])
            result.metrics[f"channel/{key}/speedup_b{batch}"] = speedup
            result.metrics[f"channel/{key}/efficiency_b{batch}"] = efficiency
            goal, ok = "", None
            if theoretical[sparsity] >= SPEEDUP_FROM:
                goal, ok = f">= {SPEEDUP_GOAL}x theoretical", efficiency >= SPEEDUP_GOAL
            result.add(
                f"s={sparsity:.2f} {archs[sparsity]}, batch {batch}",
                f"{speedup:.2f}x of {theoretical[sparsity]:.1f}x theoretical ({efficiency:.2f})",
                goal,
                ok,
            )
    for sparsity in sparsities:
        result.metrics[f"channel/s{sparsity:.2f}/theoretical"] = theoretical[sparsity]
    result.figures["channel_speedup.png"] = speedup_figure(theoretical, measured)
    result.notes.append(
        "MACs of conv2/fc1 shrink like (1-s)^2 (inputs and outputs pruned), but pooling, ReLU and reading the "
        "input shrink like (1-s) or not at all; with max_pool2d's kernel (about half of LeNet-5's CPU forward "
        "until its inference pooling became two elementwise maxima) the speedup at batch 256 followed ~1/(1-s) "
        "(dotted line), and now lies between that and the MAC ratio; at batch 1 the per-op dispatch cost (~0.1 ms "
        "for the forward's dozen ops) caps it near 2x."
    )
    return result


def speedup_figure(theoretical: dict[float, float], measured: dict[int, dict[float, float]]) -> Figure:
    """Measured vs theoretical speedup, log-log, with y = x (ideal) and y = 0.6 x (the goal)."""
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    xs = [theoretical[s] for s in sorted(theoretical)]
    for batch, points in sorted(measured.items()):
        ys = [points[s] for s in sorted(theoretical)]
        ax.plot(xs, ys, "o-", label=f"measured, batch {batch}")
        for s, x, y in zip(sorted(theoretical), xs, ys, strict=True):
            ax.annotate(f"{s:.2f}", (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
    top = max([*xs, *(v for p in measured.values() for v in p.values())]) * 1.3
    line = [0.8, top]
    ax.plot(line, line, "k--", linewidth=1, label="y = x (ideal)")
    ax.plot(line, [SPEEDUP_GOAL * v for v in line], ":", color="grey", linewidth=1, label=f"y = {SPEEDUP_GOAL} x")
    # What ops that scale with the kept channels (pooling, activations) allow: 1 / (1 - s).
    ax.plot(xs, [1 / (1 - s) for s in sorted(theoretical)], ":", color="tab:red", label="1 / (1 - s) (kept units)")
    ax.axvline(SPEEDUP_FROM, color="grey", linewidth=0.5)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(0.8, top)
    ax.set_ylim(0.8, top)
    ax.set_xlabel("theoretical speedup (MACs dense / MACs rebuilt)")
    ax.set_ylabel("measured CPU speedup (latency dense / rebuilt)")
    ax.set_title("Channel pruning, LeNet-5 (labels: unit sparsity)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


class CSRLinear(nn.Module):
    """``nn.Linear`` whose weight is a CSR tensor: ``bias + W @ x.T`` runs one sparse × dense kernel (MKL on CPU).

    Not ``F.linear(x, W_csr, b)``: that works under ``no_grad`` but raises "Cannot set version_counter for inference
    tensor" under ``inference_mode`` (torch 2.14), which is how latency is measured.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            self.weight = linear.weight.detach().to_sparse_csr()  # a plain attribute: never trained
        out_features = linear.out_features
        bias = torch.zeros(out_features) if linear.bias is None else linear.bias.detach().clone()
        self.bias = bias.unsqueeze(1)  # a column, broadcast over the batch in addmm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, self.weight, x.t()).t()


def csr_model(model: nn.Module) -> nn.Module:
    """A copy with every top-level ``nn.Linear`` on CSR weights; convolutions stay dense (no CSR conv kernel)."""
    out = copy.deepcopy(model)
    for name, module in model.named_children():
        if isinstance(module, nn.Linear):
            setattr(out, name, CSRLinear(module))
    return out.eval()


def _call_ms(fn: Callable[[], object], inner: int) -> float:
    """Median milliseconds of one call over ``inner`` calls (after one warm-up call)."""
    times = []
    with torch.inference_mode():
        fn()
        for _ in range(inner):
            start = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times)


def _pruned_and_csr(base: nn.Module, sparsity: float, result: Result) -> tuple[nn.Module, nn.Module]:
    """``base`` magnitude-pruned to ``sparsity`` (zeros in place) and its CSR copy; their sizes go to ``result``."""
    key = f"s{sparsity:.2f}"
    masked = clone_model(base)
    apply_masks(masked, compute_masks(masked, PruningSpec(sparsity, "unstructured", "l1", "layerwise")))
    plain = LeNet5().eval()
    plain.load_state_dict(export_state_dict(masked))  # zeros in place, no mask hooks
    _, sizes = sparse_export(plain)
    for name in ("dense_bytes", "csr_bytes", "compressed_bytes"):
        result.metrics[f"unstructured/{key}/{name}"] = sizes[name]
    result.add(
        f"s={sparsity:.2f} bytes: dense | CSR | gzip file",
        f"{sizes['dense_bytes']:,} | {sizes['csr_bytes']:,} | {sizes['compressed_bytes']:,}",
    )
    sparse = csr_model(plain)
    with torch.inference_mode():
        probe = torch.randn(8, 1, 28, 28)
        diff = float((sparse(probe) - plain(probe)).abs().max())
    result.metrics[f"unstructured/{key}/csr_max_abs_diff"] = diff
    return plain, sparse


def unstructured_storage(sparsities: Sequence[float], rounds: int, inner: int = 10) -> Result:
    """Bytes (dense float32, CSR, gzip'd file) and dense vs CSR latency of magnitude-pruned LeNet-5 weights."""
    base = seeded_lenet5()
    result = Result("unstructured")
    cases: dict[str, Callable[[], float]] = {}
    x1, x256 = torch.randn(1, 800), torch.randn(256, 800)
    for sparsity in sparsities:
        key = f"s{sparsity:.2f}"
        plain, sparse = _pruned_and_csr(base, sparsity, result)
        fc1 = plain.fc1
        fc1_csr = sparse.fc1
        cases[f"{key}/fc1_dense_b1"] = partial(_call_ms, partial(fc1, x1), inner)
        cases[f"{key}/fc1_csr_b1"] = partial(_call_ms, partial(fc1_csr, x1), inner)
        cases[f"{key}/fc1_dense_b256"] = partial(_call_ms, partial(fc1, x256), inner)
        cases[f"{key}/fc1_csr_b256"] = partial(_call_ms, partial(fc1_csr, x256), inner)
        cases[f"{key}/model_dense_b256"] = partial(latency_ms, plain, 256, inner, 1)
        cases[f"{key}/model_csr_b256"] = partial(latency_ms, sparse, 256, inner, 1)
    times = interleaved(cases, repeats=rounds, warmup=1)
    for sparsity in sparsities:
        key = f"s{sparsity:.2f}"
        parts = []
        for what in ("fc1_{}_b1", "fc1_{}_b256", "model_{}_b256"):
            dense_ms = median(times[f"{key}/{what.format('dense')}"])
            csr_ms = median(times[f"{key}/{what.format('csr')}"])
            name = what.format("csr").replace("_csr", "")
            result.metrics[f"unstructured/{key}/{what.format('dense')}_ms"] = dense_ms
            result.metrics[f"unstructured/{key}/{what.format('csr')}_ms"] = csr_ms
            result.metrics[f"unstructured/{key}/{name}_csr_speedup"] = dense_ms / csr_ms
            parts.append(f"{name} {dense_ms:.3f}/{csr_ms:.3f} ({dense_ms / csr_ms:.2f}x)")
        result.add(f"s={sparsity:.2f} ms dense/CSR (speedup)", "  ".join(parts))
    csr_sizes = [result.metrics[f"unstructured/s{sparsity:.2f}/csr_bytes"] for sparsity in sparsities]
    shrinking = all(b < a for a, b in itertools.pairwise(csr_sizes))
    result.add("CSR bytes shrink as sparsity grows", "yes" if shrinking else "NO")
    result.notes.append(
        "CSR = fc1/fc2 on torch CSR weights (addmm, MKL sparse); convolutions stay dense, so the model "
        "forward can gain at most the fc share of the MACs (~18%). CSR stores 8 bytes per nonzero (value + int32 "
        "column) plus row pointers: it only beats dense float32 below 50% density."
    )
    return result
