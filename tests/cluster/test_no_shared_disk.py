"""A worker that cannot read the launching machine's disk still finds its sweep (through the store)."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from prunesweep.cli import CONF_DIR, register_sweeps
from prunesweep.tracking.sweep import SweepCallback, find_sweep, sweep_file


def test_a_worker_without_the_sweep_file_finds_the_parent_in_the_store(tmp_path: Path):
    register_sweeps()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        config = compose(
            "config",
            overrides=["+sweep=smoke", f"tracking.uri={uri}", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
            return_hydra_config=True,
        )
        with open_dict(config):
            config.hydra.job.name = "prunesweep"
        HydraConfig.instance().set_config(config)
        SweepCallback()._start(config)  # what the launching machine does before any point starts
    written = find_sweep(tmp_path / "sweep", uri, "prunesweep")
    sweep_file(tmp_path / "sweep").unlink()  # the worker's disk: no sweep.json there

    found = find_sweep(str(tmp_path / "sweep"), uri, "prunesweep")
    assert found is not None
    assert (found["sweep_id"], found["parent_run_id"]) == (written["sweep_id"], written["parent_run_id"])
    assert find_sweep(str(tmp_path / "another-sweep"), uri, "prunesweep") is None
