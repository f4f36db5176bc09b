"""Fine-tuning the rebuilt model vs the masked one, in this process, interleaved: the channel fine-tune epoch, the
per-point overhead, and a reduced default sweep with ``finetune.rebuilt`` on and off.

Every point is a real ``experiment.run`` on its own SQLite store, so the times are the ones a sweep logs
(``time/finetune_s``, ``time/point_s``). The dense model is trained by a warm-up point first and cached, so no
side pays for it. The old side is the path before issue 17 as far as settings reach: the masked fine-tune, the
dense model measured in every point (as before its measures were cached beside it), evaluation in batches of
1000 (before they were cut to 256, which stay in the CPU's caches and give the same outputs bit for bit), and
contiguous tensors (``channels_last=false``; channels-last runs oneDNN's faster kernels, equal to float rounding).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from prunesweep.bench.common import Result, median, spread
from prunesweep.bench.settings import point_config

#: Issue 17's goals: rebuilt/masked fine-tune time, seconds outside training per point, reduced-sweep time new/old.
FINETUNE_RATIO_GOAL = 0.4
POINT_OVERHEAD_GOAL_S = 2.0
SWEEP_RATIO_GOAL = 0.55
#: ``data.eval_batch_size`` before issue 17.
OLD_EVAL_BATCH_SIZE = 1000


def _point(workdir: Path, overrides: Sequence[str], rebuilt: bool) -> dict[str, float]:
    """One point; ``rebuilt=False`` is the path before issue 17: the masked fine-tune, the dense model's accuracy,
    counts and latency measured again by every point (its cached measures are removed first), evaluation in
    batches of ``OLD_EVAL_BATCH_SIZE``, and contiguous tensors (its own dense model, trained by the warm-up)."""
    from prunesweep import experiment  # heavy: only once the bench runs this section
    from prunesweep.config import dense_key

    old = () if rebuilt else (f"data.eval_batch_size={OLD_EVAL_BATCH_SIZE}", "channels_last=false")
    cfg = point_config(
        *overrides,
        *old,
        f"finetune.rebuilt={str(rebuilt).lower()}",
        f"paths.output_dir={workdir / ('rebuilt' if rebuilt else 'masked')}",
        f"paths.dense_cache={workdir / 'dense'}",
        f"tracking.uri=sqlite:///{workdir / ('rebuilt' if rebuilt else 'masked') / 'mlflow.db'}",
        "trainer.enable_progress_bar=false",
    )
    if not rebuilt:  # only its own dense model's: the new side's (another layout, another key) stay cached
        for measures in (workdir / "dense").glob(f"{dense_key(cfg)}-measures-*.json"):
            measures.unlink()
    return experiment.run(cfg)


def rebuilt_vs_masked(
    workdir: Path,
    train_subset: int,
    repeats: int,
    sweep_sparsities: Sequence[float],
    threshold: str = "global",
    extra: Sequence[str] = (),
) -> Result:
    """Channel s=0.75 fine-tune epoch and per-point overhead (``repeats`` interleaved rounds), then the reduced
    sweep (unstructured and channel at ``sweep_sparsities``) once per side, point by point in alternating order.
    ``extra`` overrides go to every point (``trainer=gpu`` on a GPU)."""
    result = Result("finetune")
    base = (
        f"data.train_subset={train_subset}",
        "train.epochs=1",
        "finetune.epochs=1",
        f"pruning.threshold={threshold}",
        *extra,
    )
    channel = (*base, "pruning.granularity=channel", "pruning.sparsity=0.75")
    for rebuilt in (True, False):  # warm-up: trains and caches each side's dense model (and the new side's measures)
        _point(workdir, channel, rebuilt)
    runs: dict[bool, list[dict[str, float]]] = {True: [], False: []}
    for round_ in range(repeats):
        for rebuilt in (True, False) if round_ % 2 == 0 else (False, True):
            runs[rebuilt].append(_point(workdir, channel, rebuilt))
    _finetune_rows(result, runs, train_subset)
    _reduced_sweep(result, workdir, base, sweep_sparsities)
    return result


def _finetune_rows(result: Result, runs: dict[bool, list[dict[str, float]]], train_subset: int) -> None:
    """The channel point's rows: fine-tune time rebuilt vs masked, per-point overhead, and export cost."""
    finetune = {side: [r["time/finetune_s"] for r in rs] for side, rs in runs.items()}
    export = [r["time/export_s"] for r in runs[True]]
    overhead = {side: [_overhead(r) for r in rs] for side, rs in runs.items()}
    ratio = median(finetune[True]) / median(finetune[False])
    result.metrics.update(
        {
            "finetune/channel75_rebuilt_s": median(finetune[True]),
            "finetune/channel75_masked_s": median(finetune[False]),
            "finetune/channel75_rebuilt_over_masked": ratio,
            "finetune/point_overhead_s": median(overhead[True]),
            "finetune/point_overhead_masked_s": median(overhead[False]),
            "finetune/point_export_s": median(export),
            "finetune/channel75_acc_diff": abs(runs[True][0]["acc/finetuned"] - runs[False][0]["acc/finetuned"]),
        }
    )
    result.add(
        f"channel s=0.75 fine-tune epoch ({train_subset} images), rebuilt vs masked",
        f"{median(finetune[True]):.2f} s vs {median(finetune[False]):.2f} s = {ratio:.2f}x "
        f"(spread {spread(finetune[True]):.0%} / {spread(finetune[False]):.0%})",
        f"<= {FINETUNE_RATIO_GOAL}",
        ratio <= FINETUNE_RATIO_GOAL,
    )
    result.add(
        "per-point overhead (point - fine-tune - export, dense cached), new | old path",
        f"{median(overhead[True]):.2f} s | {median(overhead[False]):.2f} s",
        f"<= {POINT_OVERHEAD_GOAL_S:g} s",
        median(overhead[True]) <= POINT_OVERHEAD_GOAL_S,
    )
    result.add(
        "per-point export: ONNX + checks + MLflow logged model (channel s=0.75)",
        f"{median(export):.2f} s (spread {spread(export):.0%})",
    )


def _overhead(point: dict[str, float]) -> float:
    """Seconds of a point outside fine-tuning and export (its dense model cached): evaluate, measure, log."""
    return point["time/point_s"] - point["time/finetune_s"] - point["time/export_s"]


def _reduced_sweep(result: Result, workdir: Path, base: Sequence[str], sparsities: Sequence[float]) -> None:
    """The same points with the rebuilt fine-tune and with the masked one: summed point times, paired accuracies."""
    points = [(g, s) for g in ("unstructured", "channel") for s in sparsities]
    total = {True: 0.0, False: 0.0}
    worst = 0.0
    for index, (granularity, sparsity) in enumerate(points):
        overrides = (*base, f"pruning.granularity={granularity}", f"pruning.sparsity={sparsity}")
        done = {}
        for rebuilt in (True, False) if index % 2 == 0 else (False, True):
            done[rebuilt] = _point(workdir, overrides, rebuilt)
            total[rebuilt] += done[rebuilt]["time/point_s"]
        worst = max(worst, abs(done[True]["acc/finetuned"] - done[False]["acc/finetuned"]))
    ratio = total[True] / total[False]
    result.metrics.update(
        {
            "finetune/sweep_points": len(points),
            "finetune/sweep_rebuilt_s": total[True],
            "finetune/sweep_masked_s": total[False],
            "finetune/sweep_rebuilt_over_masked": ratio,
            "finetune/sweep_max_acc_diff": worst,
        }
    )
    result.add(
        f"reduced sweep ({len(points)} points, dense cached), new vs old path (masked, dense measured per point, "
        f"eval batches of {OLD_EVAL_BATCH_SIZE}, contiguous)",
        f"{total[True]:.1f} s vs {total[False]:.1f} s = {ratio:.2f}x; accuracies within {100 * worst:.2f} points",
        f"<= {SWEEP_RATIO_GOAL}",
        ratio <= SWEEP_RATIO_GOAL,
    )
