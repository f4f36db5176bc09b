"""Remake the README's MLflow UI pictures: runs table, curve chart, Models tab (headless Chromium).

    python .github/readme/screenshots.py                     # runs a smoke sweep first (~5 min on 2 cores)
    python .github/readme/screenshots.py --store sqlite:///outputs/mlflow.db --artifacts outputs/mlartifacts

Needs Debian's ``chromium`` (``apt-get install chromium``). The store is served by a real ``mlflow server`` on
127.0.0.1 for the duration of the shots, then stopped.

Known gaps (MLflow 3.17.2, headless Chromium): the runs table shows the points folded under their parent run,
and the metric charts are still loading when the shot is taken; only ``mlflow_models.png`` is kept in the repo.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

from mlflow.tracking import MlflowClient

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
ASSISTANT_PX = 560  # MLflow 3.17 may open its Assistant side panel on a local server: cropped off the right
BUDGET = ["data.train_subset=2000", "train.epochs=1", "finetune.epochs=1", "trainer.enable_progress_bar=false"]


def smoke_sweep(root: Path) -> str:
    store = f"sqlite:///{root / 'mlflow.db'}"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    subprocess.run(
        [sys.executable, "-m", "prunesweep.cli", "+sweep=smoke", f"tracking.uri={store}",
         f"paths.output_dir={root}", f"hydra.sweep.dir={root / 'sweep'}", *BUDGET],
        check=True, env=env, cwd=REPO,
    )  # fmt: skip
    return store


def serve(store: str, log: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mlflow = Path(sys.executable).parent / "mlflow"
    proc = subprocess.Popen(
        [str(mlflow), "server", "--backend-store-uri", store, "--host", "127.0.0.1", "--port", str(port)],
        stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    for _ in range(180):
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2):
                return proc, uri
        except OSError:
            time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    raise SystemExit(f"mlflow server did not start: {log.read_text()[-2000:]}")


def shoot(url: str, out: Path, size: str = "2000,1000") -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("chromium not found: apt-get install chromium")
    subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--window-size={size}",
         "--virtual-time-budget=45000", f"--screenshot={out}", url],
        check=True, capture_output=True, timeout=180,
    )  # fmt: skip
    from PIL import Image

    with Image.open(out) as image:
        image.crop((0, 0, image.width - ASSISTANT_PX, image.height)).save(out)
    print(f"{out} ({out.stat().st_size} bytes) <- {url}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", help="an existing store with a sweep (default: run a smoke sweep first)")
    parser.add_argument("--out", default=str(HERE))
    parser.add_argument("--keep", help="run the smoke sweep in this folder and keep it (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = args.store or smoke_sweep(Path(args.keep or tmp))
        client = MlflowClient(tracking_uri=store)
        experiment = client.get_experiment_by_name("prunesweep")
        parent = client.search_runs(
            [experiment.experiment_id], "tags.prunesweep_role = 'parent'", order_by=["attributes.start_time DESC"]
        )[0]
        proc, uri = serve(store, Path(tmp) / "server.log")
        try:
            base = f"{uri}/#/experiments/{experiment.experiment_id}"
            ml = "workflowType=machine_learning"  # the UI's model-training view, not its GenAI one
            points = urllib.parse.quote("attributes.run_name LIKE '%seed%'")  # the points, not nested under the parent
            out = Path(args.out)
            shoot(f"{base}/runs?{ml}&searchFilter={points}", out / "mlflow_runs.png")
            shoot(f"{base}/runs/{parent.info.run_id}/model-metrics?{ml}", out / "mlflow_curves.png")
            shoot(f"{base}/models?{ml}", out / "mlflow_models.png")
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
