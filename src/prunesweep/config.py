"""Validation of a composed config, and the pieces of it that identify a run.

Everything here runs before any data is fetched or any MLflow run is opened, so a typo costs
seconds, not a training. Errors name the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn

from prunesweep import schedules
from prunesweep.data import DATASETS
from prunesweep.distillation import Distillation
from prunesweep.lit import LR_SCHEDULES
from prunesweep.models import MODELS
from prunesweep.pruning import PruningConfigError, PruningSpec, VariationalRecipe, validate_spec
from prunesweep.storage import SQLITE_PREFIX, ensure_writable
from prunesweep.targets import DEFAULT_INPUT_SHAPE, TargetError, build_model, locate

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = tuple(schedules.SCHEDULES)  # the names; the functions live in prunesweep.schedules
REWINDING_SCHEDULES = tuple(name for name, schedule in schedules.SCHEDULES.items() if schedule.rewinds)

# Keys that change how a run is executed or where it is stored, not what it computes.
# They are left out of the config hash, so a resumed sweep recognises its finished points.
_NOT_IN_HASH = ("tracking", "paths", "trainer", "threads", "hydra")
# ... except the trainer's float precision: 16-mixed computes other numbers, not the same ones elsewhere.
# (trainer.deterministic only makes a GPU repeat bit for bit; the device itself is where a run executes.)
_PRECISION = "trainer_precision"
_FULL_PRECISION = "32-true"
_PRECISION_ALIASES = {"32": "32-true", "64": "64-true", "16": "16-mixed", "bf16": "bf16-mixed"}  # Lightning's
_DATA_KEYS_NOT_IN_HASH = ("root", "sources", "eval_batch_size", "_target_")
# pruning.variational's keys added after its first results, at the values those results computed with: left out
# of its identity (the point's hash, the trained model's key) while they hold them.
_VARIATIONAL_LEGACY = {"train_clip": False, "clipped_noise": False, "lr_decay": "constant"}


def _variational_identity(recipe: dict[str, Any]) -> dict[str, Any]:
    """``recipe`` less the keys of ``_VARIATIONAL_LEGACY`` at their legacy values."""
    return {k: v for k, v in recipe.items() if k not in _VARIATIONAL_LEGACY or _VARIATIONAL_LEGACY[k] != v}


# Keys left out of the hash while they hold the value that points before them computed with: added after sweeps
# had finished points, and at that value they compute what those points computed (the rebuilt model fine-tunes
# exactly like the masked one, as tests/pruning/test_pruning_rebuilt_training.py shows). Mostly the default.
_HASHED_UNLESS_LEGACY = {
    ("finetune", "rebuilt"): True,
    # Not the default (true), but what every point before it computed: contiguous tensors.
    (None, "channels_last"): False,
    ("finetune", "distill"): dataclasses.asdict(Distillation()),
    ("pruning", "variational"): _variational_identity(dataclasses.asdict(VariationalRecipe())),
    (None, _PRECISION): _FULL_PRECISION,
    ("data", "train_on_val"): False,
}


class ConfigError(ValueError):
    """A config value is out of range, of the wrong type, or makes no sense with another."""


def validate(cfg: DictConfig) -> None:
    """Check the whole composed config; raise ConfigError naming the first bad key.

    >>> from omegaconf import OmegaConf
    >>> validate(OmegaConf.create({"seed": 0}))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    prunesweep.config.ConfigError: data is missing from the config ...
    """
    for group in ("data", "model", "train", "finetune", "pruning", "tracking"):
        if OmegaConf.select(cfg, group) is None:
            raise ConfigError(f"{group} is missing from the config (is the conf/ directory complete?)")
    _integer(cfg, "seed", low=0)
    if cfg.get("threads") is not None:
        _integer(cfg, "threads", low=1)
    _boolean(cfg, "channels_last", absent=False)
    _check_data(cfg)
    model = _built_model(cfg)
    _check_recipes(cfg)
    _check_schedule(cfg)
    _number(cfg, "pruning.sparsity", low=0.0, high=1.0, high_inclusive=False)
    try:
        validate_spec(pruning_spec(cfg), model)
    except PruningConfigError as err:
        raise ConfigError(str(err)) from None
    _check_tracking(cfg)


def _check_data(cfg: DictConfig) -> None:
    _boolean(cfg, "data.train_on_val", absent=False)
    if cfg.data.get("_target_") == "prunesweep.data.MNISTDataModule":  # sizes known before any file is read
        _choice(cfg, "data.name", tuple(DATASETS))
        images = DATASETS[str(cfg.data.name)].train_images
        _integer(cfg, "data.val_size", low=1, high=None if images is None else images - 1)
        if cfg.data.get("train_subset") is not None:
            held_out = 0 if cfg.data.get("train_on_val", False) else int(cfg.data.val_size)
            high = None if images is None else images - held_out
            _integer(cfg, "data.train_subset", low=1, high=high)
    root = Path(str(cfg.data.get("root", "."))).expanduser()
    if root.exists() and not root.is_dir():
        raise ConfigError(f"data.root={cfg.data.root!r} is a file; it must be a directory (or not exist yet)")


def _check_teacher(cfg: DictConfig) -> None:
    """``finetune.distill.teacher``: absent/null (the point's own dense model) or a model config to distil from."""
    teacher = _get(cfg, "finetune.distill.teacher")
    if teacher is None:
        return
    if not isinstance(teacher, DictConfig) or "_target_" not in teacher:
        raise ConfigError(
            f"finetune.distill.teacher={teacher!r} must be a model config with a _target_, e.g. "
            "+model@finetune.distill.teacher=lenet5 (or null: the point's own dense model)"
        )
    if not Distillation.from_recipe(cfg.finetune).enabled:
        raise ConfigError("finetune.distill.teacher is set but finetune.distill.weight is 0: nothing distils from it")


def _check_recipes(cfg: DictConfig) -> None:
    for stage in ("train", "finetune"):
        _integer(cfg, f"{stage}.epochs", low=1)
        _number(cfg, f"{stage}.lr", low=0.0, low_inclusive=False)
        _choice(cfg, f"{stage}.optimizer", OPTIMIZERS)
        _number(cfg, f"{stage}.momentum", low=0.0, high=1.0, high_inclusive=False)
        _number(cfg, f"{stage}.weight_decay", low=0.0)
        if cfg[stage].get("lr_schedule") is not None:  # optional key: absent = constant (keeps old hashes)
            _choice(cfg, f"{stage}.lr_schedule", LR_SCHEDULES)
    _integer(cfg, "train.batch_size", low=1)
    _boolean(cfg, "finetune.rebuilt", absent=True)
    try:
        Distillation.from_recipe(cfg.finetune)
    except (TypeError, ValueError, AttributeError) as err:
        raise ConfigError(f"finetune.distill={cfg.finetune.get('distill')!r}: {err}") from None
    _check_teacher(cfg)
    try:
        variational_recipe(cfg)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"pruning.variational={cfg.pruning.get('variational')!r}: {err}") from None


def variational_recipe(cfg: DictConfig) -> VariationalRecipe:
    """``pruning.variational`` as the engine's recipe (absent: the defaults)."""
    node = cfg.pruning.get("variational")
    return VariationalRecipe.from_mapping(None if node is None else OmegaConf.to_container(node, resolve=True))


def _check_schedule(cfg: DictConfig) -> None:
    _choice(cfg, "pruning.schedule", SCHEDULES)
    _integer(cfg, "pruning.rounds", low=1)
    _integer(cfg, "pruning.gradual.frequency", low=1)
    _number(cfg, "pruning.gradual.end_fraction", low=0.0, high=1.0, low_inclusive=False)
    rewind = cfg.pruning.get("rewind")
    epoch_ok = isinstance(rewind, int) and not isinstance(rewind, bool) and 0 <= rewind < int(cfg.train.epochs)
    if rewind not in (None, "init") and not epoch_ok:
        raise ConfigError(
            f"pruning.rewind={rewind!r} is not allowed; use null, init, or an epoch 0..{int(cfg.train.epochs) - 1} "
            "of dense training to rewind the surviving weights to"
        )
    schedule = str(cfg.pruning.schedule)
    if rewind is not None and not schedules.SCHEDULES[schedule].rewinds:
        # Refused rather than ignored: the run would otherwise differ in config hash from an identical one.
        raise ConfigError(
            f"pruning.rewind={rewind!r} does not apply to pruning.schedule={schedule}: it prunes during "
            "training, so there is no point between pruning and training to rewind at; use pruning.rewind=null, "
            f"or one of the schedules that rewind: {', '.join(REWINDING_SCHEDULES)}"
        )
    lr_schedule = cfg.train.get("lr_schedule") or "constant"
    if epoch_ok and rewind > 0 and lr_schedule != "constant":
        # The epoch-k snapshot is made by training k epochs, which replays the full run only at a constant lr.
        raise ConfigError(
            f"pruning.rewind={rewind} needs train.lr_schedule=constant (it is {lr_schedule!r}): a {lr_schedule} "
            "schedule over k epochs is not the first k epochs of the full run; use pruning.rewind=init"
        )


def _check_tracking(cfg: DictConfig) -> None:
    uri = str(cfg.tracking.uri)
    if not uri.startswith((SQLITE_PREFIX, "http://", "https://", "postgresql", "mysql")):
        raise ConfigError(
            f"tracking.uri={uri!r} is not a supported MLflow store; use {SQLITE_PREFIX}path/to/mlflow.db "
            "or the http://127.0.0.1:PORT of an `mlflow server` (MLflow refuses the old ./mlruns file store)"
        )
    if not str(cfg.tracking.experiment).strip():
        raise ConfigError("tracking.experiment is empty; give the MLflow experiment a name")


def _built_model(cfg: DictConfig) -> nn.Module:
    """The model ``cfg.model`` names, built and checked on the data's image shape; its data target importable.

    Any importable callable may be named, as in every Hydra app: configs are code (see prunesweep.targets).
    """
    for group in ("data", "model"):  # ``???`` in model=custom / data=image_folder: the user's class or folder
        missing = [str(key) for key in cfg[group] if OmegaConf.is_missing(cfg[group], key)]
        if missing:
            raise ConfigError(f"{group}.{missing[0]} has no value (???); set it, e.g. {group}.{missing[0]}=...")
    if cfg.model.get("_target_") == "prunesweep.models.build_model":  # the registry; any other target is code
        _choice(cfg, "model.name", tuple(MODELS))
    try:
        locate(str(cfg.data.get("_target_", "")), "data._target_")
        shape = tuple(cfg.data.get("input_shape") or DEFAULT_INPUT_SHAPE)
        return build_model(cfg.model, shape, cfg.model.get("num_classes"), classes_from="model.num_classes={}")
    except TargetError as err:
        raise ConfigError(str(err)) from None


def check_writable(path: str | Path, key: str) -> None:
    """Create ``path`` and write a probe file: a read-only or full disk fails now, not after training."""
    try:
        ensure_writable(path)
    except OSError as err:
        raise ConfigError(f"{key}={str(path)!r} is not a writable folder: {err.strerror or err}") from None


def pruning_spec(cfg: DictConfig) -> PruningSpec:
    """The engine's plain-Python view of ``cfg.pruning`` (no OmegaConf inside the engine)."""
    p = cfg.pruning
    layers = tuple(p.layers) if p.get("layers") else ()
    stat = p.get("stat") or {}
    return PruningSpec(
        sparsity=float(p.sparsity),
        granularity=str(p.granularity),
        importance=str(p.importance),
        threshold=str(p.threshold),
        layers=layers,
        normalize=str(p.get("normalize", "auto")),
        layer_sparsity={str(k): float(v) for k, v in (p.get("layer_sparsity") or {}).items()},
        stat_distribution=str(stat.get("distribution", "normal")),
        stat_k=None if stat.get("k") is None else float(stat.get("k")),
        calib_batches=int(p.get("calib_batches", 8)),
        seed=int(cfg.seed),
    )


def plain(cfg: DictConfig) -> dict[str, Any]:
    """Resolved config as plain containers, without Hydra's own node."""
    data = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(data, dict)
    data.pop("hydra", None)
    return data


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def config_hash(cfg: DictConfig) -> str:
    """Identity of a sweep point: everything that determines its numbers, nothing that only places it."""
    data = {k: v for k, v in plain(cfg).items() if k not in _NOT_IN_HASH}
    data["data"] = {k: v for k, v in data.get("data", {}).items() if k not in _DATA_KEYS_NOT_IN_HASH}
    data[_PRECISION] = _precision(cfg)
    if isinstance(variational := data.get("pruning", {}).get("variational"), dict):
        data["pruning"]["variational"] = _variational_identity(variational)
    return _digest(_without_legacy_values(data))


def _precision(cfg: DictConfig) -> str:
    """The trainer's float precision, as Lightning names it (absent: full precision)."""
    name = str(OmegaConf.select(cfg, "trainer.precision", default=None) or _FULL_PRECISION)
    return _PRECISION_ALIASES.get(name, name)


def _without_legacy_values(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` without the keys of ``_HASHED_UNLESS_LEGACY`` that hold the value older points computed with
    (group None: a top-level key)."""
    for (group, key), default in _HASHED_UNLESS_LEGACY.items():
        if group is None:
            if data.get(key, default) == default:
                data = {k: v for k, v in data.items() if k != key}
        elif isinstance(data.get(group), dict) and data[group].get(key, default) == default:
            data[group] = {k: v for k, v in data[group].items() if k != key}
    return data


def dense_key(cfg: DictConfig) -> str:
    """Identity of the dense model: model, data, training recipe and seed. Pruning is not part of it."""
    data = plain(cfg)
    identity = {
        "model": data["model"],
        "data": {k: v for k, v in data["data"].items() if k not in _DATA_KEYS_NOT_IN_HASH},
        "train": data["train"],
        "seed": data["seed"],
        "channels_last": data.get("channels_last", False),  # the layout it trained in: float-equal, not bit-equal
        _PRECISION: _precision(cfg),
    }
    return _digest(_without_legacy_values(identity))


def variational_key(cfg: DictConfig) -> str:
    """Identity of the sparse-variational-dropout model trained from a dense one: the dense model, the layers
    it wraps and the recipe."""
    return "variational-" + _variational_digest(cfg, with_epochs=True)


def variational_lineage(cfg: DictConfig) -> str:
    """Identity of a sparse VD fit *up to its length*: the dense model, the layers and the recipe less ``epochs``.
    With a constant lr nothing in a fit depends on how many epochs it will run, so fits of one lineage are prefixes
    of each other, and a longer one continues the end state of a shorter one (bit for bit); an lr decayed to 0 at
    the last epoch depends on them, and keeps them in its lineage."""
    return "variational-lineage-" + _variational_digest(cfg, with_epochs=not variational_recipe(cfg).continuable)


def _variational_digest(cfg: DictConfig, with_epochs: bool) -> str:
    """The dense model, the wrapped layers and the recipe (``epochs`` only when asked)."""
    recipe = _variational_identity(dataclasses.asdict(variational_recipe(cfg)))
    if not with_epochs:
        del recipe["epochs"]
    return _digest({"dense": dense_key(cfg), "layers": sorted(cfg.pruning.get("layers") or ()), **recipe})


def sensitivity_key(cfg: DictConfig) -> str:
    """Identity of a model's sensitivity curves: the dense model (its key covers the validation split they
    are measured on), what scores and groups its units, and the measuring grid."""
    from prunesweep.pruning.importance import IMPORTANCES  # local: keeps config importable without torch work
    from prunesweep.pruning.sensitivity import DEFAULT_GRID

    p = plain(cfg)["pruning"]
    layers = p.get("layers")
    scoring = {
        "granularity": p.get("granularity"),
        "importance": p.get("importance"),
        "layers": sorted(layers) if layers else None,
        "seed": cfg.seed,  # random importance
    }
    if IMPORTANCES[str(p.get("importance"))].requires_calibration:
        scoring["calib_batches"] = p.get("calib_batches")
    if IMPORTANCES[str(p.get("importance"))].trained_from_dense:  # the curves are of the model trained for them
        scoring["variational"] = variational_key(cfg)
    return "sensitivity-" + _digest({"dense": dense_key(cfg), "grid": list(DEFAULT_GRID), **scoring})


def flatten(obj: Mapping[str, Any] | Iterable[Any], prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": "1"}``; the form MLflow params take.

    >>> flatten({"pruning": {"sparsity": 0.5, "layers": ["fc1", "fc2"]}})
    {'pruning.sparsity': '0.5', 'pruning.layers': "['fc1', 'fc2']"}
    """
    out: dict[str, str] = {}
    items = obj.items() if isinstance(obj, Mapping) else []
    for key, value in items:
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, prefix=f"{name}."))
        else:
            out[name] = str(value)
    return out


# --- small typed checks: each names the key, the value and the allowed range ---------------------


def _get(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key, throw_on_missing=False)


def _choice(cfg: DictConfig, key: str, allowed: tuple[Any, ...]) -> None:
    value = _get(cfg, key)
    if value not in allowed:
        shown = ", ".join("null" if a is None else str(a) for a in allowed)
        raise ConfigError(f"{key}={value!r} is not allowed; choose one of: {shown}")


def _number(
    cfg: DictConfig,
    key: str,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> float:
    value = _get(cfg, key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{key}={value!r} must be a number")
    too_low = low is not None and (value < low or (value == low and not low_inclusive))
    too_high = high is not None and (value > high or (value == high and not high_inclusive))
    if too_low or too_high:
        left = "[" if low_inclusive else "("
        right = "]" if high_inclusive else ")"
        span = f"{left}{'-inf' if low is None else low}, {'inf' if high is None else high}{right}"
        raise ConfigError(f"{key}={value!r} is out of range; it must lie in {span}")
    return float(value)


def _boolean(cfg: DictConfig, key: str, absent: bool) -> None:
    """``key`` is true or false; ``absent`` stands in for a key older configs lack (null is refused)."""
    value = OmegaConf.select(cfg, key, default=absent, throw_on_missing=False)
    if not isinstance(value, bool):
        raise ConfigError(f"{key}={value!r} must be true or false")


def _integer(cfg: DictConfig, key: str, low: int | None = None, high: int | None = None) -> int:
    value = _get(cfg, key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key}={value!r} must be a whole number")
    _number(cfg, key, low=low, high=high)
    return int(value)
