"""Every matplotlib figure of prunesweep, in one place. Functions take plain data and return a Figure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # headless: jobs run on servers and in CI

import numpy as np
import pandas as pd
import torch
from matplotlib import pyplot as plt
from matplotlib.figure import Figure


def stage_accuracy(accuracies: Mapping[str, float]) -> Figure:
    """The seed's bar chart: accuracy before pruning, after pruning, after fine-tuning."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    names = list(accuracies)
    values = [100 * accuracies[n] for n in names]
    bars = ax.bar(names, values, color=["#4c72b0", "#dd8452", "#55a868"][: len(names)])
    ax.bar_label(bars, labels=[f"{v:.2f}%" for v in values])
    low = min(values)
    ax.set_ylim(max(0.0, low - 5), 100.5)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Accuracy by stage")
    fig.tight_layout()
    return fig


def parameter_counts(layers: pd.DataFrame) -> Figure:
    """The seed's parameter chart: per layer, dense vs remaining (nonzero) parameters."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = np.arange(len(layers))
    ax.bar(x - 0.2, layers["params_total"], width=0.4, label="dense")
    ax.bar(x + 0.2, layers["params_total"] - layers["params_pruned"], width=0.4, label="remaining")
    ax.set_xticks(x, layers["layer"])
    ax.set_yscale("log")
    ax.set_ylabel("parameters")
    ax.set_title("Parameters per layer")
    ax.legend()
    fig.tight_layout()
    return fig


def sensitivity_heatmap(curves: pd.DataFrame, allocated: Mapping[str, float] | None = None) -> Figure:
    """Layers × sparsity, coloured by accuracy with only that layer pruned (rows of ``SensitivityCurves.rows``).

    ``allocated`` (layer -> sparsity the allocation chose) is marked with a white outline in each row.
    """
    table = curves.pivot(index="layer", columns="sparsity", values="accuracy")
    table = table.reindex(list(dict.fromkeys(curves["layer"])))
    fig, ax = plt.subplots(figsize=(1.2 + 0.55 * table.shape[1], 0.9 + 0.5 * table.shape[0]))
    image = ax.imshow(table.to_numpy(), aspect="auto", cmap="viridis", vmin=max(0.0, float(table.min().min())), vmax=1)
    ax.set_xticks(range(table.shape[1]), [f"{100 * s:g}" for s in table.columns], rotation=90)
    ax.set_yticks(range(table.shape[0]), table.index)
    for i, row in enumerate(table.to_numpy()):
        for j, value in enumerate(row):
            ax.text(j, i, f"{100 * value:.1f}", ha="center", va="center", fontsize=6, color="w" if value < 0.9 else "k")
    if allocated:
        columns = np.asarray(table.columns, dtype=float)
        for i, layer in enumerate(table.index):
            if layer in allocated:
                j = int(np.abs(columns - allocated[layer]).argmin())
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="w", linewidth=2))
    ax.set_xlabel("sparsity of this layer alone, % (others dense)")
    ax.set_title("Sensitivity: held-out accuracy with one layer pruned")
    fig.colorbar(image, ax=ax, label="accuracy")
    fig.tight_layout()
    return fig


def weights_before_after(before: torch.Tensor, after: torch.Tensor, layer: str, columns: int = 100) -> Figure:
    """The seed's weight picture: the first ``columns`` columns of a layer, with pruned zeros in white."""
    b = before.detach().reshape(before.shape[0], -1)[:, :columns].numpy()
    a = after.detach().reshape(after.shape[0], -1)[:, :columns].numpy()
    limit = float(np.abs(b).max()) or 1.0
    fig, axes = plt.subplots(1, 2, figsize=(9, 4), sharey=True)
    for ax, data, title in ((axes[0], b, "before pruning"), (axes[1], a, "after pruning")):
        shown = np.ma.masked_where(data == 0, data)  # zeros drawn as blank: the pruned weights
        cmap = plt.get_cmap("coolwarm").with_extremes(bad="white")
        image = ax.imshow(shown, aspect="auto", cmap=cmap, vmin=-limit, vmax=limit, interpolation="nearest")
        ax.set_title(f"{layer} {title}")
        ax.set_xlabel("input column")
    axes[0].set_ylabel("output unit")
    fig.colorbar(image, ax=axes, shrink=0.8, label="weight")
    return fig


def _seed_means(group: pd.DataFrame, x: str) -> pd.DataFrame:
    """One row per target of one series: mean ``x``, fine-tuned accuracy (mean, std) and pruned accuracy."""
    stats = group.groupby("sparsity_target").agg(
        x=(x, "mean"),
        fine=("acc_finetuned", "mean"),
        fine_std=("acc_finetuned", "std"),
        pruned=("acc_pruned", "mean"),
    )
    return stats.sort_values("x")


def accuracy_vs(
    points: pd.DataFrame,
    x: str,
    series: Sequence[str] = ("granularity", "threshold"),
    dense_acc: float | None = None,
    xlabel: str | None = None,
) -> Figure:
    """Fine-tuned accuracy (solid, mean ± std band over seeds) and pruned accuracy (dashed) against ``x``.

    ``points`` has one row per run with columns ``x``, ``acc_finetuned``, ``acc_pruned``, the ``series``
    columns, and ``sparsity_target`` to group seeds of the same point. ``x`` is drawn on a log axis: pass a
    compression ratio (dense / remaining) so 90%, 99% and 99.9% sparsity sit evenly apart. The right panel
    zooms on the last few accuracy points below dense, where methods differ.
    """
    fig, (full, zoom) = plt.subplots(1, 2, figsize=(13, 5), sharex=True)
    colors = plt.get_cmap("tab10")
    for i, (key, group) in enumerate(points.groupby(list(series), sort=True)):
        label = "/".join(str(k) for k in (key if isinstance(key, tuple) else (key,)))
        stats = _seed_means(group, x)
        color = colors(i % 10)
        band = stats["fine_std"].fillna(0.0)
        for ax in (full, zoom):
            ax.plot(stats["x"], 100 * stats["fine"], "o-", color=color, label=label)
            ax.plot(stats["x"], 100 * stats["pruned"], "x--", color=color, alpha=0.45)
            if (band > 0).any():
                ax.fill_between(stats["x"], 100 * (stats["fine"] - band), 100 * (stats["fine"] + band),
                                color=color, alpha=0.15)  # fmt: skip
    for ax in (full, zoom):
        if dense_acc is not None:
            ax.axhline(100 * dense_acc, color="black", linestyle=":", label=f"dense {100 * dense_acc:.2f}%")
        ax.set_xscale("log")
        ax.set_xlabel(xlabel or x)
        ax.grid(alpha=0.3, which="both")
    full.set_ylabel("test accuracy (%)  —  solid: fine-tuned, dashed: pruned")
    full.set_ylim(0, 100.5)
    top = 100 * (dense_acc if dense_acc is not None else float(points["acc_finetuned"].max()))
    zoom.set_ylim(top - 3, min(100.0, top + 0.5))
    zoom.set_title("zoom: within 3 points of dense")
    full.set_title("Accuracy vs " + (xlabel or x))
    zoom.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return fig
