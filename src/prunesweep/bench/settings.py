"""Sizes of every comparison (full and ``--quick``), and the composed config they start from."""

from __future__ import annotations

from dataclasses import dataclass

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from prunesweep.cli import CONF_DIR, register_sweeps


@dataclass(frozen=True)
class Settings:
    """Sizes of every comparison; ``QUICK`` shrinks them so the whole bench takes about a minute."""

    train_images: int = 20_480  # 80 batches of 256 per repeat
    train_repeats: int = 5
    data_images: int | None = None  # None: the whole 60k epoch
    data_repeats: int = 3
    calib_batches: int = 8  # pruning.calib_batches' default
    prune_repeats: int = 5
    channel_sparsities: tuple[float, ...] = (0.25, 0.5, 0.75, 0.9)
    latency_batches: tuple[int, ...] = (1, 256)
    latency_rounds: int = 7
    latency_inner: int = 10  # forwards per round; the round's median is one sample
    unstructured_sparsities: tuple[float, ...] = (0.5, 0.75, 0.9, 0.95, 0.99)
    sweep_grid: tuple[str, ...] = (
        "pruning.granularity=unstructured,channel",
        "pruning.sparsity=0.5,0.9",
        "pruning.threshold=global",
    )
    sweep_train_subset: int = 20_000
    e2e_overrides: tuple[str, ...] = ()
    e2e_from_sweep_cost: bool = False  # report the reuse sweep of the sweep comparison instead of running another
    sweep_timeout_s: float = 400.0
    e2e_timeout_s: float = 600.0
    finetune_train_subset: int = 10_000  # the reduced default sweep's training images
    finetune_repeats: int = 3
    finetune_sweep_sparsities: tuple[float, ...] = (0.5, 0.75, 0.9, 0.95, 0.98, 0.99)  # x unstructured, channel


QUICK = Settings(
    train_images=1_024,
    train_repeats=2,
    data_images=10_240,
    data_repeats=2,
    calib_batches=2,
    prune_repeats=2,
    channel_sparsities=(0.5, 0.9),
    latency_rounds=2,
    latency_inner=3,
    sweep_grid=("pruning.granularity=unstructured,channel", "pruning.sparsity=0.9", "pruning.threshold=global"),
    sweep_train_subset=256,
    e2e_overrides=("data.train_subset=256", "pruning.threshold=global", "pruning.sparsity=0.9"),  # with --only e2e
    e2e_from_sweep_cost=True,
    sweep_timeout_s=300.0,
    e2e_timeout_s=300.0,
    finetune_train_subset=512,
    finetune_repeats=1,
    finetune_sweep_sparsities=(0.9,),
)


def point_config(*overrides: str, return_hydra_config: bool = False) -> DictConfig:
    """conf/config.yaml composed as the ``prunesweep`` command would, without running it (the tests' too)."""
    register_sweeps()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=return_hydra_config)
