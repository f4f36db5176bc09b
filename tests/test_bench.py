"""`prunesweep-bench --quick` end to end: one FINISHED MLflow run with every comparison's metrics.

No timing assertions: the bench measures a noisy machine; only presence, finiteness and consistency are checked.
"""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
from mlflow.tracking import MlflowClient

from prunesweep.bench import main
from prunesweep.bench.common import Result, format_table, interleaved

SPARSITIES = (0.5, 0.75, 0.9, 0.95, 0.99)
EXPECTED = [
    "train/bare_img_s",
    "train/lightning_img_s",
    "train/lightning_over_bare",
    "train/lightning_over_bare_steady",
    "data/inmemory_img_s",
    "data/torchvision_img_s",
    "data/inmemory_over_torchvision",
    "prune/epoch_s",
    "prune/unstructured/l1/over_epoch",
    "prune/channel/l1/over_epoch",
    "prune/channel/entropy/calib_ms",
    "prune/unstructured/taylor/calib_ms",
    "channel/s0.50/theoretical",
    "channel/s0.90/speedup_b1",
    "channel/s0.90/speedup_b256",
    "finetune/channel75_rebuilt_over_masked",
    "finetune/point_overhead_s",
    "finetune/point_export_s",
    "finetune/sweep_rebuilt_over_masked",
    "finetune/sweep_max_acc_diff",
    "sweep/reuse_over_naive",
    "sweep/model_ratio",
    "sweep/model_ratio_with_overhead",
    "sweep/dense_train_s",
    "sweep/finetune_s",
    "e2e/wall_s",
    "e2e/peak_rss_mb",
    "bench/wall_s",
    *(f"unstructured/s{s:.2f}/{name}" for s in SPARSITIES for name in ("dense_bytes", "csr_bytes", "compressed_bytes")),
    "unstructured/s0.90/fc1_b256_csr_speedup",
    "unstructured/s0.90/model_b256_csr_speedup",
]


@pytest.mark.slow
def test_quick_bench_logs_a_finished_run_with_every_comparison(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "out"
    main(["--quick", "--tracking-uri", uri, "--out", str(out), "--workdir", str(tmp_path / "work")])

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("benchmarks")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    metrics = run.data.metrics
    missing = [k for k in EXPECTED if k not in metrics]
    assert not missing, f"missing metrics: {missing}"
    assert all(math.isfinite(v) for v in metrics.values())
    for key, value in metrics.items():
        if key.endswith(("_over_bare", "_over_torchvision", "reuse_over_naive", "model_ratio", "_img_s")) or (
            "speedup" in key or key.endswith("theoretical")
        ):
            assert value > 0, key
    assert 0 < metrics["sweep/model_ratio"] < 1
    assert metrics["e2e/points"] >= 2 and metrics["sweep/points"] >= 2

    # storage: CSR shrinks as sparsity grows; the gzip'd file beats dense float32 at 90 %
    csr = [metrics[f"unstructured/s{s:.2f}/csr_bytes"] for s in SPARSITIES]
    assert all(b < a for a, b in itertools.pairwise(csr)), csr
    assert metrics["unstructured/s0.90/compressed_bytes"] < metrics["unstructured/s0.90/dense_bytes"]
    assert metrics["unstructured/s0.90/csr_max_abs_diff"] < 1e-4  # the CSR model computes the same function

    tags = run.data.tags
    for key in ("host.torch", "host.threads", "host.cpu_model", "host.date", "host.device_name"):
        assert tags.get(key), key
    assert tags["bench.device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert run.data.params["quick"] == "True"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"bench_table.txt", "bench_metrics.json", "figures"} <= artifacts
    assert [a.path for a in client.list_artifacts(run.info.run_id, "figures")] == ["figures/channel_speedup.png"]

    assert (out / "channel_speedup.png").stat().st_size > 0
    assert json.loads((out / "bench_metrics.json").read_text())["train/lightning_over_bare"] > 0
    printed = capsys.readouterr().out
    assert "lightning / bare" in printed and "reuse / naive" in printed
    assert "device (points and sweeps run here)" in printed  # the table names what it ran on


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_bench_refuses_a_gpu_it_does_not_have(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--device", "cuda", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"])
    assert exit_info.value.code == 2
    assert "no CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists()  # refused before anything was opened or run


def test_interleaved_alternates_and_drops_warmup():
    calls: list[str] = []

    def case(name: str):
        def run() -> float:
            calls.append(name)
            return float(len(calls))

        return run

    times = interleaved({"a": case("a"), "b": case("b")}, repeats=2, warmup=1)
    assert calls == ["a", "b", "b", "a", "a", "b"]  # the order flips every round
    assert times == {"a": [4.0, 5.0], "b": [3.0, 6.0]}


def test_table_marks_goals():
    result = Result("train")
    result.add("ratio", "0.95x", ">= 0.90x", True)
    result.add("info", "1 s")
    table = format_table([result])
    assert "yes" in table.splitlines()[2] and "NO" not in table
