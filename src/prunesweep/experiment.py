"""One sweep point, top to bottom: data → dense model → prune → fine-tune → measure → log.

``run(cfg)`` is what the ``prunesweep`` command calls once per point of a Hydra (multi)run.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytorch_lightning as pl
import torch
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
    variational_key,
    variational_lineage,
    variational_recipe,
)
from prunesweep.distillation import Distillation, distill_label, teacher_name
from prunesweep.lit import evaluate, fit, in_layout
from prunesweep.pruning import (
    GRANULARITIES,
    IMPORTANCES,
    MaskPlan,
    PruningSpec,
    SensitivityCurves,
    Threshold,
    Variational,
    VariationalFit,
    VariationalLayer,
    architecture,
    attach,
    check_rebuild,
    compute_masks,
    count_macs,
    count_params,
    count_weights,
    detach,
    export_state_dict,
    largest_layer,
    latency_ms,
    make_threshold,
    masked_nonzero,
    noise_share,
    rebuild,
    resolve_layers,
    size_bytes,
    sparse_export,
)
from prunesweep.schedules import SCHEDULES, Finetune, Rebuilt, ScheduleJob, ScheduleResult, masking_prune
from prunesweep.targets import build_datamodule, build_model, data_signature
from prunesweep.tracking import PointRun, open_store, run_name
from prunesweep.tracking.datasets import log_datasets
from prunesweep.tracking.dense_store import SharedDense
from prunesweep.tracking.models import log_point_model

log = logging.getLogger("prunesweep")

LATENCY_BATCHES = (1, 256)
#: Wall seconds one latency measurement (a model at a batch size) may take: a fixed cost per point, whatever the model.
LATENCY_BUDGET_S = 0.25
#: Bumped when the measured numbers would change for the same dense model (v2: LeNet-5's faster inference pooling),
#: so that no point compares its latency with a dense one cached by older code.
MEASURES_VERSION = 2


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

    name = _point_name(cfg)
    tags = _tags(cfg, point_hash, sweep)
    point = PointRun(store, name, tags, flatten(plain(cfg)), sweep.parent_run_id)
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


def _point_name(cfg: DictConfig) -> str:
    """The point's MLflow run name: its cut and seed, plus whatever differs from the defaults."""
    p = cfg.pruning
    return run_name(
        str(p.granularity),
        str(p.threshold),
        float(p.sparsity),
        int(cfg.seed),
        model=str(cfg.model.name),
        importance=str(p.importance),
        schedule=str(p.schedule),
        distill=distill_label(
            Distillation.from_recipe(cfg.finetune).weight, OmegaConf.select(cfg, "finetune.distill.teacher")
        ),
    )


def _tags(cfg: DictConfig, point_hash: str, sweep: SweepContext) -> dict[str, str]:
    """The run's tags: what the point is (the swept keys among them), for filtering in MLflow and the report."""
    p = cfg.pruning
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
    if p.get("rewind") is not None:
        tags["rewind"] = p.rewind  # "init", or the dense epoch the surviving weights go back to
    teacher = OmegaConf.select(cfg, "finetune.distill.teacher")
    if teacher is not None:
        tags["teacher"] = teacher_name(teacher)  # the model it distils from
    if sweep.sweep_id:
        tags["sweep_id"] = sweep.sweep_id
    return {k: str(v) for k, v in tags.items()}


def setup_data(cfg: DictConfig, log_fn: Callable[[str], None] = log.info) -> pl.LightningDataModule:
    """``cfg.data`` instantiated, its files fetched and verified, its tensors loaded and split."""
    datamodule = build_datamodule(cfg.data, log=log_fn)
    datamodule.prepare_data()
    datamodule.setup()
    return datamodule


def _pipeline(cfg: DictConfig, point: PointRun) -> dict[str, float]:
    """data → dense model → the schedule (prune, rewind, fine-tune) → measure → log."""
    started = time.perf_counter()
    pl.seed_everything(int(cfg.seed), workers=False, verbose=False)
    point.log_text(OmegaConf.to_yaml(OmegaConf.create(plain(cfg))), "config.yaml")
    datamodule = setup_data(cfg)
    log_datasets(point, datamodule, str(cfg.data.name))
    test_batches = datamodule.test_dataloader()

    model = _dense(cfg, datamodule, point, int(cfg.train.epochs))
    dense = copy.deepcopy(model)
    example = next(iter(test_batches))[0]
    dense_metrics = _dense_metrics(cfg, dense, test_batches, tuple(example.shape[1:]), point)
    acc = {"dense": dense_metrics["acc/dense"]}
    log.info("dense test accuracy %.4f", acc["dense"])

    spec = pruning_spec(cfg)
    result, threshold, timer = _run_schedule(cfg, spec, model, dense, datamodule, point)
    finetuned = model if result.model is None else result.model  # what was fine-tuned: rebuilt, or masked
    acc["pruned"] = result.acc_pruned
    acc["finetuned"] = evaluate(finetuned, test_batches)
    regrown = masked_nonzero(model, result.plan)
    if regrown:
        raise RuntimeError(f"{regrown} pruned weights grew back during fine-tuning")

    metrics, layers, compact = _measure(cfg, spec, dense_metrics, dense, model, result, example, point)
    metrics.update({f"acc/{k}": v for k, v in acc.items()})
    metrics["finetune/steps"] = result.finetune_steps
    metrics.update(result.metrics)
    metrics["time/finetune_s"] = timer["finetune_s"]
    # The rebuilt (structured) or zero-holding (unstructured) model, with every metric linked to it.
    exporting = time.perf_counter()
    model_id = log_point_model(point, compact, example, metrics, onnx=bool(cfg.tracking.get("onnx", True)))
    metrics["time/export_s"] = time.perf_counter() - exporting
    point.set_tags({"model_id": model_id})
    _log_artifacts(point, cfg, acc, layers, dense, finetuned)
    curves = getattr(threshold, "curves", None)
    if curves is not None:
        _log_sensitivity(point, pd.DataFrame(curves.rows()), result.plan)
    summary = _summary(acc, layers, metrics, result.plan)
    log.info("\n%s", summary)
    point.set_tags({"mlflow.note.content": summary})  # the run's description in the MLflow UI
    metrics["time/point_s"] = time.perf_counter() - started
    point.log_metrics({k: metrics[k] for k in ("time/point_s", "time/export_s")})
    return metrics


def _run_schedule(
    cfg: DictConfig,
    spec: PruningSpec,
    model: nn.Module,
    dense: nn.Module,
    datamodule: pl.LightningDataModule,
    point: PointRun,
) -> tuple[ScheduleResult, Threshold, dict[str, float]]:
    """``cfg.pruning.schedule`` run on ``model``: its result, the threshold it used, and its fine-tune time."""
    # One threshold object for every step of a schedule: one that measures the model (sensitivity) does so
    # once, on the validation split, before any weight is pruned.
    threshold = make_threshold(spec)
    timer: dict[str, float] = {"finetune_s": 0.0}
    teacher = _teacher(cfg, dense, datamodule, point)
    job = _schedule_job(cfg, spec, threshold, model, datamodule, point, timer, teacher)
    return SCHEDULES[str(cfg.pruning.schedule)](job), threshold, timer


def _teacher(
    cfg: DictConfig, dense: nn.Module, datamodule: pl.LightningDataModule, point: PointRun
) -> nn.Module | None:
    """Distillation's teacher, None when ``finetune.distill`` is off: the point's own dense model (a copy: the
    trainer may move it to the device), or, with ``finetune.distill.teacher`` set to a model config, that model
    trained by the same recipe and seed on the same data (cached like any dense model; its training is logged
    under ``teacher/``, its test accuracy as ``acc/teacher``)."""
    if not Distillation.from_recipe(cfg.finetune).enabled:
        return None
    teacher_model = cfg.finetune.distill.get("teacher")
    if teacher_model is None:
        return copy.deepcopy(dense)
    teacher_cfg = copy.deepcopy(cfg)
    teacher_cfg.model = teacher_model
    teacher = _dense(teacher_cfg, datamodule, point, int(cfg.train.epochs), role="teacher")
    accuracy = evaluate(teacher, datamodule.test_dataloader())
    log.info("teacher (%s) test accuracy %.4f", teacher_name(teacher_model), accuracy)
    point.log_metrics({"acc/teacher": accuracy})
    return teacher


def _schedule_job(
    cfg: DictConfig,
    spec: PruningSpec,
    threshold: Threshold,
    model: nn.Module,
    datamodule: pl.LightningDataModule,
    point: PointRun,
    timer: dict[str, float],
    teacher: nn.Module | None = None,
) -> ScheduleJob:
    """What a schedule works with: pruning, evaluating, fine-tuning, rewinding and rebuilding this point's model.

    ``timer["finetune_s"]`` accumulates the wall seconds of every fine-tuning fit (``time/finetune_s``); every fit
    distils from ``teacher`` when ``finetune.distill`` asks for it.
    """
    importance = _variational(cfg, spec, model, datamodule, point)  # before anything measures the model
    calib = _calibration_batches(spec, datamodule)
    if threshold.needs_calibration:
        _calibrate(cfg, spec, model, threshold, calib, list(datamodule.val_dataloader()), point)
    test_batches = datamodule.test_dataloader()
    steps_per_epoch = len(datamodule.train_dataloader())
    example = _example_input(datamodule)
    return ScheduleJob(
        model=model,
        sparsity=spec.sparsity,
        prune=masking_prune(model, spec, calib, threshold, example_inputs=example, importance=importance),
        evaluate=lambda other=None: evaluate(model if other is None else other, test_batches),
        finetune=_finetuner(cfg, model, datamodule, steps_per_epoch, point, timer, teacher),
        epochs=int(cfg.finetune.epochs),
        steps_per_epoch=steps_per_epoch,
        rounds=int(cfg.pruning.rounds),
        gradual_end_fraction=float(cfg.pruning.gradual.end_fraction),
        gradual_frequency=int(cfg.pruning.gradual.frequency),
        rewind=_rewinder(cfg, datamodule, point, model),
        rebuild=_rebuilder(cfg, spec, model, example, next(iter(test_batches))[0][:256]),
    )


def _finetuner(
    cfg: DictConfig,
    job_model: nn.Module,
    datamodule: pl.LightningDataModule,
    steps_per_epoch: int,
    point: PointRun,
    timer: dict[str, float],
    teacher: nn.Module | None,
) -> Finetune:
    """The job's ``finetune``: ``cfg.finetune``'s recipe on the training split, per-epoch metrics logged, its wall
    seconds added to ``timer["finetune_s"]``."""

    def finetune(
        callbacks: Sequence[pl.Callback], steps: int | None = None, prefix: str = "", model: nn.Module | None = None
    ) -> int:
        started = time.perf_counter()
        trainer = fit(
            job_model if model is None else model,
            datamodule.train_dataloader(),
            datamodule.val_dataloader(),
            cfg.finetune,
            cfg.trainer,
            epochs=None if steps is None else math.ceil(steps / steps_per_epoch),
            max_steps=steps,
            log_metrics=point.log_metrics,
            prefix=prefix,
            callbacks=callbacks,
            teacher=teacher,
        )
        timer["finetune_s"] += time.perf_counter() - started
        return trainer.global_step

    return finetune


def _rebuilder(
    cfg: DictConfig, spec: PruningSpec, model: nn.Module, example: torch.Tensor, probe: torch.Tensor
) -> Callable[[MaskPlan], Rebuilt] | None:
    """The job's ``rebuild``: structured points fine-tune the physically smaller model unless
    ``finetune.rebuilt=false``. It is checked against the masked model on ``probe`` when it is made, while both
    compute the same thing; the measurement reuses that check."""
    if not (GRANULARITIES[spec.granularity].structured and bool(cfg.finetune.get("rebuilt", True))):
        return None

    def rebuilt(plan: MaskPlan) -> Rebuilt:
        compact = _in_point_layout(cfg, rebuild(model, plan, example))
        return Rebuilt(compact, check_rebuild(model, compact, probe, name=str(cfg.model.name)))

    return rebuilt


def _example_input(datamodule: pl.LightningDataModule) -> torch.Tensor:
    """One zero image of the data's shape: what couplings are traced on (not always 1x28x28)."""
    return torch.zeros(1, *data_signature(datamodule)[0])


def _calibration_batches(
    spec: PruningSpec, datamodule: pl.LightningDataModule
) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """The training batches an importance that needs data scores with (None for the others)."""
    if not IMPORTANCES[spec.importance].requires_calibration:
        return None
    available = len(datamodule.train_dataloader())
    if spec.calib_batches > available:
        log.warning(
            "pruning.calib_batches=%d but the training set has %d batches; using %d",
            spec.calib_batches,
            available,
            available,
        )
    return datamodule.calibration_batches(min(spec.calib_batches, available))


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


def _in_point_layout(cfg: DictConfig, model: nn.Module) -> nn.Module:
    """``model`` in the layout the point runs in (``channels_last``; absent in configs recorded before it: false)."""
    return in_layout(model, bool(cfg.get("channels_last", False)))


def _dense(
    cfg: DictConfig, datamodule: pl.LightningDataModule, point: PointRun, epochs: int, role: str = "dense"
) -> nn.Module:
    """The dense model after ``epochs`` of the training recipe: from the cache, or trained (and cached) now.
    ``role`` names its training metrics and cache tag (``dense/``, ``teacher/``; ``rewind<k>/`` when shorter)."""
    pl.seed_everything(int(cfg.seed), workers=False, verbose=False)  # same init for every epochs
    # In the point's layout before it trains or loads: loading copies values into these tensors, keeping it.
    model = _in_point_layout(cfg, build_model(cfg.model, *data_signature(datamodule)))
    if epochs == 0:
        return model
    key_cfg = cfg
    if epochs != int(cfg.train.epochs):
        key_cfg = copy.deepcopy(cfg)
        key_cfg.train.epochs = epochs
    full = epochs == int(cfg.train.epochs)
    role = role if full else f"rewind{epochs}"
    prefix = f"{role}/"

    def train() -> None:
        train_batches, val_batches = datamodule.train_dataloader(), datamodule.val_dataloader()
        fit(
            model,
            train_batches,
            val_batches,
            cfg.train,
            cfg.trainer,
            epochs=epochs,
            log_metrics=point.log_metrics,
            prefix=prefix,
        )

    trained = _cached_or_trained(cfg, point, dense_key(key_cfg), model, train)
    point.set_tags({f"{role}_cached": not trained})
    return model


def _cached_or_trained(
    cfg: DictConfig, point: PointRun, key: str, model: nn.Module, train: Callable[[], None], what: str = "dense model"
) -> bool:
    """``model`` loaded from the local cache, else from the tracking server, else trained by ``train()`` (and
    published); True when this process trained it. Workers without a shared disk thus train each model once."""
    shared = SharedDense(point.store, key, model, train, log=log.info, what=what)
    cache.dense_or_train(cfg.paths.dense_cache, key, model, train=shared, log=log.info, what=what)
    return shared.trained


def _variational(
    cfg: DictConfig, spec: PruningSpec, model: nn.Module, datamodule: pl.LightningDataModule, point: PointRun
) -> Variational | None:
    """``pruning.importance=variational``: sparse variational dropout trained from the dense ``model`` (or loaded:
    cached beside it, or published on a tracking server; shared by every target of a sweep). Its weights θ
    replace the model's, and its noise levels score them. None for every other importance."""
    if not IMPORTANCES[spec.importance].trained_from_dense:
        return None
    recipe = variational_recipe(cfg)
    wrappers = attach(model, resolve_layers(spec, model), recipe.train_clip, recipe.clipped_noise)
    key = variational_key(cfg)
    train = _variational_trainer(cfg, key, model, wrappers, datamodule, point)
    trained = _cached_or_trained(cfg, point, key, model, train, what="sparse VD model")
    point.set_tags({"variational_cached": not trained})
    point.log_metrics({"variational/noise_share": noise_share(wrappers)})
    log_sigma2 = {name: wrapper.log_sigma2.detach().clone() for name, wrapper in wrappers.items()}
    # unclipped: nearly every weight a train_clip fit drops is past the training's clip, where they would tie
    fitted = {name: wrapper.log_alpha(clip=False).detach().clone() for name, wrapper in wrappers.items()}
    detach(model, wrappers)
    return Variational(log_sigma2, fitted)  # the fit's log α ranks the weights its detach zeroed


def _variational_trainer(
    cfg: DictConfig,
    key: str,
    model: nn.Module,
    wrappers: Mapping[str, VariationalLayer],
    datamodule: pl.LightningDataModule,
    point: PointRun,
) -> Callable[[], None]:
    """The sparse VD training as a function of no arguments: per-epoch metrics logged, and a checkpoint after
    every epoch beside the dense model, so a stopped run resumes where it was (bit for bit) instead of starting
    over. A finished continuable fit (constant lr) keeps its state as ``<lineage>-e<epochs>.fit.pt``: a longer fit
    of the same lineage starts from the longest such state (same numbers as training it from scratch, fewer
    epochs)."""
    recipe = variational_recipe(cfg)
    cache_dir = Path(cfg.paths.dense_cache)
    partial = cache_dir / f"{key}.partial.pt"
    lineage = variational_lineage(cfg)
    val_batches = datamodule.val_dataloader()

    def train() -> None:
        batches = datamodule.train_dataloader()
        fit = VariationalFit(model, wrappers, recipe, train_size=sum(len(y) for _, y in batches))
        _resume_variational(fit, partial, cache_dir, lineage, point)

        def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
            metrics["val_acc"] = evaluate(model, val_batches)  # the paper's network: log α ≥ 3 weights zeroed
            point.log_metrics({f"variational/{k}": v for k, v in metrics.items()}, step=epoch)
            log.info(
                "variational epoch %d/%d  loss %.4f  val/acc %.4f  log α ≥ 3: %.2f %% of weights",
                epoch + 1,
                recipe.epochs,
                metrics["loss"],
                metrics["val_acc"],
                100 * metrics["sparsity"],
            )
            cache.save_verified(fit.state_dict(), partial)

        fit.run(batches, on_epoch)
        if recipe.continuable:  # nothing else could start from it
            cache.save_verified(fit.state_dict(), cache_dir / f"{lineage}-e{recipe.epochs}.fit.pt")
        cache.discard(partial)

    return train


def _resume_variational(fit: VariationalFit, partial: Path, cache_dir: Path, lineage: str, point: PointRun) -> None:
    """Load into ``fit`` where it starts: its own checkpoint after a stop, else the end of the longest shorter
    finished fit of its lineage (tag ``variational_continued_from``: that fit's epochs), else nothing."""
    epochs = fit.recipe.epochs
    if (state := cache.load_verified(partial)) is not None:
        fit.load_state_dict(state)
        log.info("sparse VD fit: resuming after epoch %d of %d", fit.epoch, epochs)
        return
    finished = _finished_variational_fits(cache_dir, lineage)
    for done in sorted((e for e in finished if e < epochs), reverse=True):
        if (state := cache.load_verified(finished[done])) is not None:
            fit.load_state_dict(state)
            point.set_tags({"variational_continued_from": done})
            log.info("sparse VD fit: continuing the finished %d-epoch fit to %d epochs", done, epochs)
            return


def _finished_variational_fits(cache_dir: Path, lineage: str) -> dict[int, Path]:
    """The end states of the finished fits of ``lineage`` in ``cache_dir``, by their epochs."""
    prefix, suffix = f"{lineage}-e", ".fit.pt"
    found = {}
    for path in cache_dir.glob(f"{prefix}*{suffix}"):
        epochs = path.name[len(prefix) : -len(suffix)]
        if epochs.isdigit():
            found[int(epochs)] = path
    return found


def _rewinder(
    cfg: DictConfig, datamodule: pl.LightningDataModule, point: PointRun, model: nn.Module
) -> Callable[[], None] | None:
    """``pruning.rewind`` as a function of no arguments (None when not asked for). The state to rewind to is made
    or loaded on the first call, i.e. after the first pruning step, and reused by every later round."""
    if cfg.pruning.get("rewind") is None:
        return None
    state: dict[str, torch.Tensor] = {}

    def rewind() -> None:
        if not state:
            state.update(rewind_state(cfg, datamodule, point))
        _rewind(model, state)

    return rewind


def rewind_state(cfg: DictConfig, datamodule: pl.LightningDataModule, point: PointRun) -> dict[str, torch.Tensor]:
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


def _dense_metrics(
    cfg: DictConfig, dense: nn.Module, test_batches: Any, image_shape: tuple[int, ...], point: PointRun
) -> dict[str, float]:
    """The dense model's accuracy, counts, FLOPs and latency: measured once per dense model and cached beside it
    (every point of a sweep shares them). Latency depends on the thread count, so that is part of the key."""

    def measure() -> dict[str, float]:
        metrics = {
            "acc/dense": evaluate(dense, test_batches),
            "params/total": count_params(dense)[0],
            "flops/dense": count_macs(dense, (1, *image_shape), sparse=False),
            "size/dense_bytes": size_bytes(dense),
        }
        for batch in LATENCY_BATCHES:
            metrics[f"latency/dense_ms_b{batch}"] = latency_ms(
                dense, batch, input_shape=image_shape, budget_s=LATENCY_BUDGET_S
            )
        return metrics

    shape = "x".join(map(str, image_shape))
    key = f"{dense_key(cfg)}-measures-{shape}-t{torch.get_num_threads()}-v{MEASURES_VERSION}"
    metrics, measured = cache.json_or_compute(cfg.paths.dense_cache, key, measure, log=log.info, what="dense measures")
    point.set_tags({"dense_measures_cached": not measured})
    return metrics


def _measure(
    cfg: DictConfig,
    spec: PruningSpec,
    dense_metrics: Mapping[str, float],
    dense: nn.Module,
    model: nn.Module,
    result: ScheduleResult,
    example: torch.Tensor,
    point: PointRun,
) -> tuple[dict[str, float], pd.DataFrame, nn.Module]:
    """Counts, FLOPs, bytes and latency of the pruned vs the dense model, named alike for every method; also the
    model that was measured (rebuilt when structured, the dense one holding the zeros when not).

    A structured point that fine-tuned its rebuilt model is measured as it is (checked when it was rebuilt);
    one that fine-tuned the masked model is rebuilt and checked here.
    """
    plan = result.plan
    total = int(dense_metrics["params/total"])
    input_shape = (1, *example.shape[1:])
    metrics: dict[str, float] = {"sparsity/target": spec.sparsity}
    metrics.update({k: v for k, v in dense_metrics.items() if not k.startswith("acc/")})
    if GRANULARITIES[spec.granularity].structured:
        rebuilt = result.rebuilt
        if rebuilt is None:
            compact = _in_point_layout(cfg, rebuild(model, plan, example[:2]))
            rebuilt = Rebuilt(compact, check_rebuild(model, compact, example, name=str(cfg.model.name)))
        compact = rebuilt.model
        metrics.update(_rebuilt_metrics(rebuilt, example))
        point.set_tags({"arch/dense": architecture(dense), "arch/pruned": architecture(compact)})
    else:
        compact = copy.deepcopy(dense)
        compact.load_state_dict(export_state_dict(model))
        metrics.update(_sparse_metrics(compact, model, input_shape, point))
    metrics["sparsity/achieved"] = 1.0 - metrics["params/nonzero"] / total
    metrics.update(_weight_counts(dense, compact, structured=GRANULARITIES[spec.granularity].structured))
    for batch in LATENCY_BATCHES:
        metrics[f"latency/pruned_ms_b{batch}"] = latency_ms(
            compact, batch, input_shape=tuple(example.shape[1:]), budget_s=LATENCY_BUDGET_S
        )
    metrics["latency/dense_ms"] = metrics[f"latency/dense_ms_b{LATENCY_BATCHES[-1]}"]
    metrics["latency/pruned_ms"] = metrics[f"latency/pruned_ms_b{LATENCY_BATCHES[-1]}"]

    layers = pd.DataFrame([row.to_dict() for row in plan.layers])
    units = layers["units_total"].sum()
    if units:
        metrics["sparsity/units"] = float(layers["units_pruned"].sum() / units)
    for row in plan.layers:
        metrics[f"sparsity/{row.layer}"] = row.sparsity
    return metrics, layers, compact


def _sparse_metrics(
    compact: nn.Module, model: nn.Module, input_shape: tuple[int, ...], point: PointRun
) -> dict[str, float]:
    """Unstructured: the zeros stay in place, so what shrinks is the count of nonzeros, sparse MACs and storage.
    The CSR export that the storage is measured on is logged as ``model/sparse_state.pt`` (made once)."""
    _, nonzero = count_params(model)
    state, sizes = sparse_export(compact)
    _log_state(point, state, "model/sparse_state.pt")
    return {
        "params/nonzero": nonzero,
        "flops/remaining": count_macs(compact, input_shape, sparse=True),
        "size/pruned_bytes": sizes["csr_bytes"],
        "size/compressed_bytes": sizes["compressed_bytes"],
    }


def _weight_counts(dense: nn.Module, compact: nn.Module, structured: bool) -> dict[str, float]:
    """The papers' basis: weights only (biases excluded), kept = all of a rebuilt model's, else its nonzeros."""
    weights_total = count_weights(dense)[0]
    kept_total, kept_nonzero = count_weights(compact)
    kept = kept_total if structured else kept_nonzero
    return {
        "params/weights_total": weights_total,
        "params/weights_nonzero": kept,
        "sparsity/weights": 1.0 - kept / weights_total,
    }


def _rebuilt_metrics(rebuilt: Rebuilt, example: torch.Tensor) -> dict[str, float]:
    """Structured: the physically smaller model, refused (when rebuilt) unless it computed what the masked one did."""
    compact = rebuilt.model
    nonzero, _ = count_params(compact)
    return {
        "params/nonzero": nonzero,
        "rebuild/max_abs_diff": rebuilt.max_abs_diff,
        "flops/remaining": count_macs(compact, tuple((1, *example.shape[1:])), sparse=False),
        "size/pruned_bytes": size_bytes(compact),
    }


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
    layer = OmegaConf.select(cfg, "tracking.weights_figure_layer") or largest_layer(dense)  # LeNet-5: fc1
    after_state = export_state_dict(model)  # a rebuilt model may have lost the layer (layer/block units)
    if layer is not None and f"{layer}.weight" in after_state:
        before, after = dense.get_submodule(layer).weight, after_state[f"{layer}.weight"]
        figures.append((lambda: plots.weights_before_after(before, after, layer), f"{layer}_weights.png"))
    for make, name in figures:
        fig = make()
        point.log_figure(fig, f"figures/{name}")
        plt.close(fig)
    _log_state(point, after_state, "model/pruned_state_dict.pt")


def _log_state(point: PointRun, state: Mapping[str, torch.Tensor], artifact_file: str) -> None:
    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    point.log_bytes(buffer.getvalue(), artifact_file)


def _log_sensitivity(point: PointRun, curves: pd.DataFrame, plan: MaskPlan) -> None:
    """The sensitivity curves the allocation used: a CSV and a layer × sparsity accuracy heatmap."""
    point.log_csv(curves, "sensitivity.csv")
    allocated = {row.layer: row.unit_sparsity for row in plan.layers if row.units_total}
    fig = plots.sensitivity_heatmap(curves, allocated)
    point.log_figure(fig, "figures/sensitivity.png")
    plt.close(fig)


def _summary(acc: Mapping[str, float], layers: pd.DataFrame, metrics: Mapping[str, float], plan: MaskPlan) -> str:
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
    return "\n".join(lines)
