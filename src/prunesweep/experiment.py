"""One sweep point, top to bottom: data → dense model → prune → fine-tune → measure → log.

``run(cfg)`` is what the ``prunesweep`` command calls once per point of a Hydra (multi)run.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from matplotlib import pyplot as plt
from omegaconf import DictConfig, OmegaConf
from torch import nn

from prunesweep import cache, plots
from prunesweep.config import (
    check_writable,
    config_hash,
    dense_key,
    flatten,
    plain,
    pruning_spec,
    sensitivity_key,
    validate,
)
from prunesweep.lit import Classifier, evaluate
from prunesweep.pruning import (
    MaskPlan,
    PruningSpec,
    SensitivityCurves,
    apply_masks,
    architecture,
    compute_masks,
    count_macs,
    count_params,
    export_state_dict,
    latency_ms,
    make_threshold,
    masked_nonzero,
    rebuild,
    size_bytes,
    sparse_export,
)
from prunesweep.pruning.callback import PruningCallback
from prunesweep.pruning.importance import IMPORTANCES
from prunesweep.pruning.schedule import GradualSchedule, iterative_targets
from prunesweep.pruning.thresholds import Threshold
from prunesweep.tracking import PointRun, open_store, run_name
from prunesweep.tracking.dense_store import SharedDense
from prunesweep.tracking.lightning import EpochMetrics

log = logging.getLogger("prunesweep")

LATENCY_BATCHES = (1, 256)


@dataclass(frozen=True)
class SweepContext:
    """Where a point sits in a multirun; None fields outside one."""

    parent_run_id: str | None = None
    sweep_id: str | None = None


def run(cfg: DictConfig, sweep: SweepContext | None = None) -> dict[str, Any]:
    """Run one point and return its metrics (or ``{"status": "skipped"}`` when a sweep resumes past it)."""
    validate(cfg)
    sweep = sweep or SweepContext()
    threads = cfg.get("threads")
    if threads:
        torch.set_num_threads(int(threads))

    check_writable(cfg.paths.dense_cache, "paths.dense_cache")
    store = open_store(str(cfg.tracking.uri), str(cfg.tracking.experiment), cfg.tracking.get("artifact_root"))
    point_hash = config_hash(cfg)
    if sweep.sweep_id is not None:
        done = store.finished_point(point_hash, sweep.sweep_id)
        if done is not None:
            log.info("point %s already finished as run %s; skipping", done.info.run_name, done.info.run_id)
            return {"status": "skipped", "run_id": done.info.run_id}

    p = cfg.pruning
    name = run_name(
        str(p.granularity),
        str(p.threshold),
        float(p.sparsity),
        int(cfg.seed),
        model=str(cfg.model.name),
        importance=str(p.importance),
        schedule=str(p.schedule),
    )
    tags = {
        "config_hash": point_hash,
        "model": cfg.model.name,
        "dataset": cfg.data.name,
        "granularity": p.granularity,
        "threshold": p.threshold,
        "importance": p.importance,
        "schedule": p.schedule,
        "sparsity_target": f"{float(p.sparsity):.4f}",
        "seed": cfg.seed,
    }
    if sweep.sweep_id:
        tags["sweep_id"] = sweep.sweep_id
    point = PointRun(store, name, {k: str(v) for k, v in tags.items()}, flatten(plain(cfg)), sweep.parent_run_id)
    log.info("MLflow run %s (%s) in %s", name, point.run_id, store.uri)
    try:
        result = _pipeline(cfg, point)
    except KeyboardInterrupt as err:
        point.end("KILLED", err)
        raise
    except BaseException as err:
        point.end("FAILED", err)
        raise
    point.end("FINISHED")
    return {"status": "finished", "run_id": point.run_id, **result}


def _pipeline(cfg: DictConfig, point: PointRun) -> dict[str, float]:
    pl.seed_everything(int(cfg.seed), workers=False, verbose=False)
    point.log_text(OmegaConf.to_yaml(OmegaConf.create(plain(cfg))), "config.yaml")

    datamodule = instantiate(cfg.data, log=log.info)
    datamodule.prepare_data()
    datamodule.setup()
    test_batches = datamodule.test_dataloader()

    model = _dense(cfg, datamodule, point, int(cfg.train.epochs))
    dense = copy.deepcopy(model)
    acc = {"dense": evaluate(model, test_batches)}
    log.info("dense test accuracy %.4f", acc["dense"])

    spec = pruning_spec(cfg)
    calib = None
    if IMPORTANCES[spec.importance].requires_calibration:
        available = len(datamodule.train_dataloader())
        if spec.calib_batches > available:
            log.warning(
                "pruning.calib_batches=%d but the training set has %d batches; using %d",
                spec.calib_batches,
                available,
                available,
            )
        calib = datamodule.calibration_batches(min(spec.calib_batches, available))

    # One threshold object for every step of a schedule: one that measures the model (sensitivity) does so
    # once, on the validation split, before any weight is pruned.
    threshold = make_threshold(spec)
    if threshold.needs_calibration:
        _calibrate(cfg, spec, model, threshold, calib, list(datamodule.val_dataloader()), point)

    def prune_to(target: float, previous: MaskPlan | None) -> MaskPlan:
        plan = compute_masks(
            model, dataclasses.replace(spec, sparsity=target), calib, previous=previous, threshold=threshold
        )
        apply_masks(model, plan)
        return plan

    schedule = str(cfg.pruning.schedule)
    fine = cfg.finetune
    if schedule == "oneshot":
        plan = prune_to(spec.sparsity, None)
        if cfg.pruning.get("rewind") is not None:
            _rewind(model, _rewind_state(cfg, datamodule, point))
        acc["pruned"] = evaluate(model, test_batches)
        _fit(
            model,
            datamodule,
            fine,
            fine.epochs,
            cfg.trainer,
            point,
            callbacks=[PruningCallback(model, plan=plan)],
        )
    elif schedule == "iterative":
        rounds = int(cfg.pruning.rounds)
        epochs = max(1, math.ceil(int(fine.epochs) / rounds))
        plan = None
        for index, target in enumerate(iterative_targets(spec.sparsity, rounds)):
            plan = prune_to(target, plan)
            acc["pruned"] = evaluate(model, test_batches)
            log.info(
                "round %d/%d: sparsity target %.4f, pruned accuracy %.4f",
                index + 1,
                rounds,
                target,
                acc["pruned"],
            )
            _fit(
                model,
                datamodule,
                fine,
                epochs,
                cfg.trainer,
                point,
                callbacks=[PruningCallback(model, plan=plan)],
                prefix=f"round{index + 1}/",
            )
    else:  # gradual
        total_steps = int(fine.epochs) * len(datamodule.train_dataloader())
        agp = GradualSchedule.over(
            spec.sparsity,
            total_steps,
            float(cfg.pruning.gradual.end_fraction),
            int(cfg.pruning.gradual.frequency),
        )
        final: dict[str, float] = {}
        callback = PruningCallback(
            model,
            prune=prune_to,
            schedule=agp,
            on_final=lambda _plan: final.setdefault("pruned", evaluate(model, test_batches)),
        )
        _fit(model, datamodule, fine, fine.epochs, cfg.trainer, point, callbacks=[callback])
        plan = callback.plan
        acc["pruned"] = final["pruned"]
    assert plan is not None
    acc["finetuned"] = evaluate(model, test_batches)
    regrown = masked_nonzero(model, plan)
    if regrown:
        raise RuntimeError(f"{regrown} pruned weights grew back during fine-tuning")

    metrics, layers = _measure(cfg, spec, dense, model, plan, next(iter(test_batches))[0], point)
    metrics.update({f"acc/{k}": v for k, v in acc.items()})
    point.log_metrics(metrics)
    _log_artifacts(point, cfg, acc, layers, dense, model)
    curves = getattr(threshold, "curves", None)
    if curves is not None:
        _log_sensitivity(point, pd.DataFrame(curves.rows()), plan)
    _print_summary(acc, layers, metrics, plan)
    return metrics


def _calibrate(
    cfg: DictConfig,
    spec: PruningSpec,
    model: nn.Module,
    threshold: Threshold,
    calib: list[tuple[torch.Tensor, torch.Tensor]] | None,
    held_out: list[tuple[torch.Tensor, torch.Tensor]],
    point: PointRun,
) -> None:
    """Sensitivity curves of the dense model on the validation split, measured once per dense model and
    pruning setup and cached beside it (every target of a sweep shares them)."""

    def measure() -> dict[str, Any]:
        compute_masks(model, spec, calib, threshold=threshold, threshold_batches=held_out)
        return dataclasses.asdict(threshold.curves)

    curves, measured = cache.json_or_compute(
        cfg.paths.dense_cache, sensitivity_key(cfg), measure, log=log.info, what="sensitivity curves"
    )
    if not measured:
        threshold.curves = SensitivityCurves(**{**curves, "sparsities": tuple(curves["sparsities"])})
    point.set_tags({"sensitivity_cached": not measured})


def _fit(
    model: nn.Module,
    datamodule: pl.LightningDataModule,
    stage: DictConfig,
    epochs: int,
    trainer_cfg: DictConfig,
    point: PointRun,
    callbacks: list[pl.Callback] | None = None,
    prefix: str = "",
) -> None:
    module = Classifier(
        model,
        lr=float(stage.lr),
        optimizer=str(stage.optimizer),
        momentum=float(stage.get("momentum", 0.9)),
        weight_decay=float(stage.get("weight_decay", 0.0)),
        lr_schedule=str(stage.get("lr_schedule", "constant")),
    )
    trainer = pl.Trainer(
        **OmegaConf.to_container(trainer_cfg, resolve=True),
        max_epochs=int(epochs),
        logger=False,
        enable_checkpointing=False,
        callbacks=[EpochMetrics(point.log_metrics, prefix=prefix), *(callbacks or [])],
    )
    trainer.fit(module, train_dataloaders=datamodule.train_dataloader(), val_dataloaders=datamodule.val_dataloader())


def _dense(cfg: DictConfig, datamodule: pl.LightningDataModule, point: PointRun, epochs: int) -> nn.Module:
    """The dense model after ``epochs`` of the training recipe: from the cache, or trained (and cached) now."""
    pl.seed_everything(int(cfg.seed), workers=False, verbose=False)  # same init for every epochs
    model: nn.Module = instantiate(cfg.model)
    if epochs == 0:
        return model
    key_cfg = cfg
    if epochs != int(cfg.train.epochs):
        key_cfg = copy.deepcopy(cfg)
        key_cfg.train.epochs = epochs
    full = epochs == int(cfg.train.epochs)
    prefix = "dense/" if full else f"rewind{epochs}/"

    def train() -> None:
        _fit(model, datamodule, cfg.train, epochs, cfg.trainer, point, prefix=prefix)

    # A local-cache miss asks the tracking server first: workers without a shared disk train each model once.
    shared = SharedDense(point.store, dense_key(key_cfg), model, train, log=log.info)
    cache.dense_or_train(cfg.paths.dense_cache, shared.key, model, train=shared, log=log.info)
    point.set_tags({"dense_cached" if full else f"rewind{epochs}_cached": not shared.trained})
    return model


def _rewind_state(cfg: DictConfig, datamodule: pl.LightningDataModule, point: PointRun) -> dict[str, torch.Tensor]:
    """Weights to rewind to: the initialisation, or the dense model after epoch k of the same run.

    With a constant learning rate, a fixed seed and deterministic data order, training k epochs replays the
    first k epochs of the full run exactly, so the snapshot is cached like any dense model.
    """
    rewind = cfg.pruning.rewind
    epochs = 0 if rewind == "init" else int(rewind)
    return _dense(cfg, datamodule, point, epochs).state_dict()


def _rewind(model: nn.Module, initial_state: Mapping[str, torch.Tensor]) -> None:
    """Lottery-ticket reset: surviving weights go back to their initial values; masks stay."""
    with torch.no_grad():
        for name, tensor in model.named_parameters():
            plain_name = name.removesuffix("_orig")
            if plain_name in initial_state:
                tensor.copy_(initial_state[plain_name])


def _measure(
    cfg: DictConfig,
    spec: PruningSpec,
    dense: nn.Module,
    model: nn.Module,
    plan: MaskPlan,
    example: torch.Tensor,
    point: PointRun,
) -> tuple[dict[str, float], pd.DataFrame]:
    """Counts, FLOPs, bytes and latency of the pruned vs the dense model, named alike for every method."""
    total, _ = count_params(dense)
    input_shape = (1, *example.shape[1:])
    metrics: dict[str, float] = {
        "sparsity/target": spec.sparsity,
        "params/total": total,
        "flops/dense": count_macs(dense, input_shape, sparse=False),
        "size/dense_bytes": size_bytes(dense),
    }
    if spec.granularity == "unstructured":
        _, nonzero = count_params(model)
        compact = copy.deepcopy(dense)
        compact.load_state_dict(export_state_dict(model))
        metrics["flops/remaining"] = count_macs(compact, input_shape, sparse=True)
        _, sizes = sparse_export(compact)
        metrics["size/pruned_bytes"] = sizes["csr_bytes"]
        metrics["size/compressed_bytes"] = sizes["compressed_bytes"]
    else:
        compact = rebuild(model, plan, example[:2])
        nonzero, _ = count_params(compact)
        with torch.inference_mode():
            diff = float((compact.eval()(example) - model.eval()(example)).abs().max())
        metrics["rebuild/max_abs_diff"] = diff
        if diff > 1e-4:
            raise RuntimeError(f"rebuilt model differs from the masked one by {diff:.3g} (max abs)")
        metrics["flops/remaining"] = count_macs(compact, input_shape, sparse=False)
        metrics["size/pruned_bytes"] = size_bytes(compact)
        point.set_tags({"arch/dense": architecture(dense), "arch/pruned": architecture(compact)})
    metrics["params/nonzero"] = nonzero
    metrics["sparsity/achieved"] = 1.0 - nonzero / total
    for batch in LATENCY_BATCHES:
        metrics[f"latency/dense_ms_b{batch}"] = latency_ms(dense, batch, input_shape=tuple(example.shape[1:]))
        metrics[f"latency/pruned_ms_b{batch}"] = latency_ms(compact, batch, input_shape=tuple(example.shape[1:]))
    metrics["latency/dense_ms"] = metrics[f"latency/dense_ms_b{LATENCY_BATCHES[-1]}"]
    metrics["latency/pruned_ms"] = metrics[f"latency/pruned_ms_b{LATENCY_BATCHES[-1]}"]

    layers = pd.DataFrame([row.to_dict() for row in plan.layers])
    units = layers["units_total"].sum()
    if units:
        metrics["sparsity/units"] = float(layers["units_pruned"].sum() / units)
    for row in plan.layers:
        metrics[f"sparsity/{row.layer}"] = row.sparsity
    return metrics, layers


def _log_artifacts(
    point: PointRun,
    cfg: DictConfig,
    acc: Mapping[str, float],
    layers: pd.DataFrame,
    dense: nn.Module,
    model: nn.Module,
) -> None:
    point.log_csv(layers, "layers.csv")
    figures: list[tuple[Callable[[], Any], str]] = [
        (
            lambda: plots.stage_accuracy(
                {"dense": acc["dense"], "pruned": acc["pruned"], "fine-tuned": acc["finetuned"]}
            ),
            "stage_accuracy.png",
        ),
        (lambda: plots.parameter_counts(layers), "parameter_counts.png"),
    ]
    if hasattr(dense, "fc1"):
        pruned_fc1 = export_state_dict(model)["fc1.weight"]
        figures.append((lambda: plots.weights_before_after(dense.fc1.weight, pruned_fc1, "fc1"), "fc1_weights.png"))
    for make, name in figures:
        fig = make()
        point.log_figure(fig, f"figures/{name}")
        plt.close(fig)
    buffer = io.BytesIO()
    torch.save(export_state_dict(model), buffer)
    point.log_bytes(buffer.getvalue(), "model/pruned_state_dict.pt")


def _log_sensitivity(point: PointRun, curves: pd.DataFrame, plan: MaskPlan) -> None:
    """The sensitivity curves the allocation used: a CSV and a layer × sparsity accuracy heatmap."""
    point.log_csv(curves, "sensitivity.csv")
    allocated = {row.layer: row.unit_sparsity for row in plan.layers if row.units_total}
    fig = plots.sensitivity_heatmap(curves, allocated)
    point.log_figure(fig, "figures/sensitivity.png")
    plt.close(fig)


def _print_summary(
    acc: Mapping[str, float], layers: pd.DataFrame, metrics: Mapping[str, float], plan: MaskPlan
) -> None:
    """The seed's printout: per layer original / remaining / pruned %, totals with biases, accuracies."""
    lines = [f"{'layer':<8}{'original':>10}{'remaining':>11}{'pruned %':>10}"]
    for row in layers.itertuples():
        remaining = row.params_total - row.params_pruned
        lines.append(f"{row.layer:<8}{row.params_total:>10}{remaining:>11}{100 * row.sparsity:>9.2f}%")
    total = int(metrics["params/total"])
    nonzero = int(metrics["params/nonzero"])
    lines.append(f"{'total':<8}{total:>10}{nonzero:>11}{100 * metrics['sparsity/achieved']:>9.2f}%  (biases counted)")
    lines.append(
        f"accuracy: dense {100 * acc['dense']:.2f}%  pruned {100 * acc['pruned']:.2f}%  "
        f"fine-tuned {100 * acc['finetuned']:.2f}%"
    )
    lines.extend(plan.notes)
    log.info("\n%s", "\n".join(lines))
