"""Training throughput: the Lightning loop the sweep uses vs a bare PyTorch loop over the same batches."""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Iterable, Iterator

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.nn import functional as F

from prunesweep.bench.common import Result, interleaved, median, spread
from prunesweep.data import InMemoryLoader
from prunesweep.lit import fit

GOAL = 0.90  # Lightning must keep at least this fraction of the bare loop's images/s


class EpochClock(pl.Callback):
    """Seconds inside the epoch loop, so ``fit()``'s fixed start/stop cost can be told apart from per-step cost."""

    def __init__(self) -> None:
        self.start = self.seconds = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.seconds = time.perf_counter() - self.start


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Silence the trainer's INFO lines and the known warnings of a loader-less validation step."""
    names = ("lightning.pytorch", "pytorch_lightning", "lightning_fabric", "lightning")
    levels = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*val_dataloader.*")
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", message=".*LeafSpec.*")
            yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


@contextlib.contextmanager
def restored_determinism() -> Iterator[None]:
    """``Trainer(deterministic=True)`` switches ``torch.use_deterministic_algorithms`` on for the whole process and
    never back; restore it so the bare loop, which runs next, is not silently measured in that mode."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def bare_loop(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], stage: DictConfig) -> None:
    """What ``Classifier`` + ``Trainer`` do per step, written out: SGD with momentum, cross-entropy, nothing else."""
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=float(stage.lr),
        momentum=float(stage.momentum),
        weight_decay=float(stage.weight_decay),
    )
    model.train()
    for x, y in batches:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()


def lightning_loop(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], cfg: DictConfig
) -> tuple[float, float]:
    """One epoch through :func:`prunesweep.lit.fit` exactly as a sweep point trains (its trainer config, its
    recipe), with the progress bar off and no validation loader, so both sides do the same work. Returns
    (seconds of the whole ``fit``, seconds of the epoch loop)."""
    trainer_cfg = OmegaConf.merge(cfg.trainer, {"enable_progress_bar": False})
    clock = EpochClock()
    with quiet_lightning(), restored_determinism():
        start = time.perf_counter()
        fit(model, batches, None, cfg.train, trainer_cfg, epochs=1, callbacks=[clock])
        return time.perf_counter() - start, clock.seconds


def train_throughput(
    cfg: DictConfig, x: torch.Tensor, y: torch.Tensor, images: int, repeats: int, epoch_images: int
) -> Result:
    """Images/s of Lightning vs bare over the same ``images`` (first of ``x``), interleaved, median of ``repeats``."""
    x, y = x[:images], y[:images]
    batch_size = int(cfg.train.batch_size)

    def batches() -> InMemoryLoader:
        return InMemoryLoader(x, y, batch_size, shuffle=True, seed=int(cfg.seed))

    def fresh() -> nn.Module:
        torch.manual_seed(int(cfg.seed))
        return instantiate(cfg.model)

    epoch_seconds: list[float] = []

    def bare() -> float:
        model, loader = fresh(), batches()
        start = time.perf_counter()
        bare_loop(model, loader, cfg.train)
        return time.perf_counter() - start

    def lightning() -> float:
        fit_s, epoch_s = lightning_loop(fresh(), batches(), cfg)
        epoch_seconds.append(epoch_s)
        return fit_s

    times = interleaved({"bare": bare, "lightning": lightning}, repeats=repeats, warmup=1)
    epoch_seconds = epoch_seconds[-repeats:]  # drop the warm-up round's
    return _throughput_result(times, epoch_seconds, len(x), len(batches()), batch_size, epoch_images)


def _throughput_result(
    times: dict[str, list[float]],
    epoch_seconds: list[float],
    n: int,
    batches_n: int,
    batch_size: int,
    epoch_images: int,
) -> Result:
    bare_s, fit_s = median(times["bare"]), median(times["lightning"])
    # Ratio of adjacent pairs, then the median: a burst of load hits one pair, not the whole ratio.
    ratio = median([b / light for b, light in zip(times["bare"], times["lightning"], strict=True)])
    steady = median([b / e for b, e in zip(times["bare"], epoch_seconds, strict=True)])
    overhead = median([f - e for f, e in zip(times["lightning"], epoch_seconds, strict=True)])

    result = Result("train")
    result.metrics = {
        "train/images": n,
        "train/bare_img_s": n / bare_s,
        "train/lightning_img_s": n / fit_s,
        "train/lightning_over_bare": ratio,
        "train/lightning_over_bare_steady": steady,
        "train/lightning_fit_overhead_s": overhead,
        "train/bare_epoch_s": epoch_images * bare_s / n,
        "train/spread_bare": spread(times["bare"]),
        "train/spread_lightning": spread(times["lightning"]),
    }
    result.add(f"bare loop, {n} images ({batches_n} batches of {batch_size})", f"{n / bare_s:,.0f} img/s")
    result.add("lightning, prunesweep.lit.fit (bar off, no val)", f"{n / fit_s:,.0f} img/s")
    result.add("lightning / bare (whole fit)", f"{ratio:.3f}x", f">= {GOAL:.2f}x", ratio >= GOAL)
    result.add("lightning / bare (epoch loop only)", f"{steady:.3f}x")
    result.add("fit() fixed cost (outside the epoch loop)", f"{1e3 * overhead:.0f} ms")
    result.add(f"bare epoch of {epoch_images} images (estimate)", f"{epoch_images * bare_s / n:.1f} s")
    result.add(
        "repeat spread (max-min)/median, bare | lightning",
        f"{spread(times['bare']):.2f} | {spread(times['lightning']):.2f}",
    )
    return result
