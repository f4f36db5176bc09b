"""The comparisons in the order they run, sharing one composed config, one loaded dataset and what earlier
sections measured (the training comparison's bare epoch is the pruning comparison's yardstick)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig

from prunesweep.bench.common import Result, timed
from prunesweep.bench.data import data_path
from prunesweep.bench.finetune import rebuilt_vs_masked
from prunesweep.bench.pruning import channel_speedup, pruning_overhead, unstructured_storage
from prunesweep.bench.settings import Settings, point_config
from prunesweep.bench.sweeps import SweepRun, end_to_end, end_to_end_result, sweep_cost
from prunesweep.bench.train import bare_loop, train_throughput
from prunesweep.data import InMemoryLoader
from prunesweep.experiment import setup_data


class Sections:
    """One method per section, each returning its :class:`Result`; :meth:`plan` lists them in running order."""

    def __init__(self, settings: Settings, workdir: Path, e2e_sweep: str, device: str = "cpu") -> None:
        self.settings = settings
        self.workdir = workdir
        self.e2e_sweep = e2e_sweep
        # Sections that run real points or sweeps run them on the GPU with trainer=gpu; the micro-benchmarks of
        # the training loop, data path, pruning and latency stay on the CPU they were designed for.
        self.point_overrides: tuple[str, ...] = ("trainer=gpu",) if device == "cuda" else ()
        self.cfg: DictConfig = point_config(
            "trainer.enable_progress_bar=false", f"paths.output_dir={workdir / 'outputs'}"
        )
        self.datamodule = setup_data(self.cfg, log_fn=lambda _msg: None)
        self.epoch_images = len(self.datamodule.x_train)  # one epoch of the sweep's training set
        self.epoch_s: float | None = None  # a bare training epoch, once the training comparison has run
        self.sweep_reuse: SweepRun | None = None  # the sweep comparison's reuse run, for --quick's e2e

    def plan(self) -> list[tuple[str, Callable[[], Result]]]:
        return [
            ("train", self.train),
            ("data", self.data),
            ("prune", self.prune),
            ("channel", self.channel),
            ("unstructured", self.unstructured),
            ("finetune", self.finetune),
            ("sweep", self.sweep),
            ("e2e", self.e2e),
        ]

    def train(self) -> Result:
        s, dm = self.settings, self.datamodule
        result = train_throughput(self.cfg, dm.x_train, dm.y_train, s.train_images, s.train_repeats, self.epoch_images)
        self.epoch_s = result.metrics["train/bare_epoch_s"]
        return result

    def data(self) -> Result:
        s = self.settings
        return data_path(self.datamodule, int(self.cfg.train.batch_size), s.data_repeats, s.data_images)

    def prune(self) -> Result:
        s = self.settings
        return pruning_overhead(self.datamodule.calibration_batches(s.calib_batches), self.yardstick(), s.prune_repeats)

    def channel(self) -> Result:
        s = self.settings
        return channel_speedup(s.channel_sparsities, s.latency_batches, s.latency_rounds, s.latency_inner)

    def unstructured(self) -> Result:
        s = self.settings
        return unstructured_storage(s.unstructured_sparsities, s.latency_rounds, s.latency_inner)

    def finetune(self) -> Result:
        s = self.settings
        return rebuilt_vs_masked(
            self.workdir / "finetune",
            s.finetune_train_subset,
            s.finetune_repeats,
            s.finetune_sweep_sparsities,
            extra=self.point_overrides,
        )

    def sweep(self) -> Result:
        s = self.settings
        base = (
            f"data.train_subset={s.sweep_train_subset}",
            "train.epochs=1",
            "finetune.epochs=1",
            "trainer.enable_progress_bar=false",
            *self.point_overrides,
        )
        result, self.sweep_reuse = sweep_cost(
            self.workdir / "sweep", point_config(*base), s.sweep_grid, base, s.sweep_timeout_s
        )
        return result

    def e2e(self) -> Result:
        s = self.settings
        if s.e2e_from_sweep_cost and self.e2e_sweep == "smoke" and self.sweep_reuse is not None:
            return end_to_end_result("+sweep=smoke, the sweep comparison's reuse run", self.sweep_reuse)
        timeout = s.e2e_timeout_s if self.e2e_sweep == "smoke" else max(s.e2e_timeout_s, 1800.0)
        return end_to_end(self.workdir / "e2e", self.e2e_sweep, (*s.e2e_overrides, *self.point_overrides), timeout)

    def yardstick(self) -> float:
        """One bare training epoch: from the training comparison, or timed on a few batches when it was skipped."""
        if self.epoch_s is not None:
            return self.epoch_s
        images = min(2_560, len(self.datamodule.x_train))
        x, y = self.datamodule.x_train[:images], self.datamodule.y_train[:images]
        model = instantiate(self.cfg.model)
        loader = InMemoryLoader(x, y, int(self.cfg.train.batch_size))
        seconds = timed(lambda: bare_loop(model, loader, self.cfg.train))
        return self.epoch_images * seconds / images
