"""Remake the README's MLflow UI pictures: runs table, curve chart, Models tab (headless Chromium).

    python .github/readme/screenshots.py                     # runs a smoke sweep first (~5 min on 2 cores)
    python .github/readme/screenshots.py --store sqlite:///outputs/mlflow.db --artifacts outputs/mlartifacts

Needs Debian's ``chromium`` (``apt-get install chromium``) and Playwright (``pip install playwright``), which
drives that Chromium (no browser download): it waits for what each page must show (the points, the curves, the
models) instead of a fixed delay. The store is served by a real ``mlflow server`` on 127.0.0.1 for the duration
of the shots, then stopped.
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
import urllib.request
from pathlib import Path

from mlflow.tracking import MlflowClient
from playwright.sync_api import Page, sync_playwright

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
WIDTH, HEIGHT = 1600, 1000
#: The runs table's columns toggled: off the wide ones that say little here, on what the points are compared by.
COLUMNS = ("Dataset", "Source", "acc/finetuned", "sparsity/achieved", "flops/remaining", "Description")
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


def shoot(page: Page, url: str, out: Path, ready: str, settle_s: float = 6.0) -> None:
    """Open ``url`` (unless the page is there already), wait until the text ``ready`` shows, give the charts a
    few seconds (the UI keeps polling, so the network never goes idle), then shoot."""
    if page.url != url:
        page.goto(url)
    page.get_by_text(ready, exact=False).first.wait_for(timeout=120_000)
    page.mouse.move(0, 0)  # no hover toolbar over a chart
    time.sleep(settle_s)  # charts animate in after their data arrives
    page.screenshot(path=str(out))
    print(f"{out} ({out.stat().st_size} bytes) <- {url}")


def close_assistant(page: Page) -> None:
    """MLflow 3.17 opens its Assistant side panel on a local server; it would cover a third of every shot."""
    close = page.locator("button[aria-label='Close']")
    if close.count():
        close.first.click()


def runs_table(page: Page, parent_name: str) -> None:
    """The runs table with the sweep's points unfolded under their parent and the columns a reader compares."""
    page.get_by_text(parent_name).first.wait_for(timeout=120_000)
    close_assistant(page)
    page.locator("button[data-component-id*='runnamecellrenderer']").first.click()  # the parent's + toggle
    page.get_by_text("seed0").first.wait_for(timeout=60_000)
    page.get_by_text("Columns", exact=True).first.click()
    search = page.get_by_placeholder("Search columns")
    for column in COLUMNS:
        search.fill(column)
        page.get_by_text(column, exact=True).last.click()
    page.keyboard.press("Escape")


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
            shots(uri, experiment.experiment_id, parent.info.run_id, parent.info.run_name, Path(args.out))
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)


def shots(uri: str, experiment_id: str, parent_id: str, parent_name: str, out: Path) -> None:
    """The runs table (points unfolded), the parent run's accuracy-vs-sparsity curves, the Models tab."""
    base = f"{uri}/#/experiments/{experiment_id}"
    ml = "workflowType=machine_learning"  # the UI's model-training view, not its GenAI one
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=_chromium(), args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
        page.goto(f"{base}/runs?{ml}")
        runs_table(page, parent_name)
        shoot(page, page.url, out / "mlflow_runs.png", ready="seed0")
        shoot(page, f"{base}/runs/{parent_id}/model-metrics?{ml}", out / "mlflow_curves.png", ready="curve")
        close_assistant(page)
        shoot(page, f"{base}/models?{ml}", out / "mlflow_models.png", ready="pruned_model")
        browser.close()


def _chromium() -> str:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("chromium not found: apt-get install chromium")
    return browser


if __name__ == "__main__":
    main()
