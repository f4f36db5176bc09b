"""Dense checkpoints through the tracking server, for workers that share no disk (a Ray cluster).

On a local-cache miss, a point asks the server before it trains: each dense model is trained once, by the
first point that claims it, and logged as the artifact of a ``dense`` run keyed by its hash, with the file's
SHA-256 as a tag; every other point downloads it and verifies the hash. Dense runs live in their own
experiment (``<experiment>-dense``) with no parent, so a sweep's children are exactly its points.

The local cache (``prunesweep.cache``) stays the fast path; with a local (SQLite) store there is one machine
and this module only trains.
"""

from __future__ import annotations

import hashlib
import io
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from mlflow.entities import Run
from torch import nn

from prunesweep.tracking.store import Store, open_store

_log = logging.getLogger("prunesweep")

ROLE_TAG = "prunesweep_role"
KEY_TAG = "dense_key"
SHA_TAG = "sha256"
POLL_S = 2.0


def is_shared(uri: str) -> bool:
    """A tracking server is what workers on other machines can reach; a SQLite file is one machine's."""
    return uri.startswith(("http://", "https://"))


class SharedDense:
    """The ``train`` callable for :func:`prunesweep.cache.dense_or_train`: download, or train once and publish.

    After the call, ``trained`` says whether this process trained the model (False: it was downloaded).
    """

    def __init__(
        self,
        store: Store,
        key: str,
        model: nn.Module,
        train: Callable[[], None],
        log: Callable[[str], None] = _log.info,
        wait_s: float = 3 * 3600,
        what: str = "dense model",
    ) -> None:
        self.store, self.key, self.model, self._train, self.log, self.wait_s = store, key, model, train, log, wait_s
        self.what = what  # names the model in log lines (the sparse VD model is shared the same way)
        self.trained = False

    def __call__(self) -> None:
        if not is_shared(self.store.uri):
            self._train()
            self.trained = True
            return
        dense = open_store(self.store.uri, self._experiment_name())
        deadline = time.monotonic() + self.wait_s
        announced = False
        while time.monotonic() < deadline:
            published = self._find(dense, "FINISHED")
            if published and self._download(dense, published[0]):
                return
            claim = self._claim(dense)
            if claim is not None:
                self._train_and_publish(dense, claim)
                return
            if not announced:
                self.log(f"{self.what} {self.key}: another worker is training it; waiting for the server's copy")
                announced = True
            time.sleep(POLL_S)
        # Whoever claimed it never published (killed, or far slower): do not wait forever.
        self.log(f"{self.what} {self.key}: not published after {self.wait_s:.0f} s; training it here")
        self._train()
        self.trained = True

    def _experiment_name(self) -> str:
        return f"{self.store.client.get_experiment(self.store.experiment_id).name}-dense"

    def _find(self, dense: Store, status: str) -> list[Run]:
        return dense.client.search_runs(
            [dense.experiment_id],
            filter_string=f"tags.{KEY_TAG} = '{self.key}' and attributes.status = '{status}'",
            order_by=["attributes.start_time ASC"],
        )

    def _claim(self, dense: Store) -> str | None:
        """Open a claim run; keep it if it is the oldest live claim, else delete it. The run id when kept."""
        run = dense.client.create_run(
            dense.experiment_id, run_name=f"dense-{self.key}", tags={ROLE_TAG: "dense", KEY_TAG: self.key}
        )
        mine = run.info.run_id
        live = self._find(dense, "RUNNING") + self._find(dense, "FINISHED")
        # Every claimant sees the same runs and applies the same order, so exactly one keeps its claim.
        winner = min(live, key=lambda r: (r.info.start_time, r.info.run_id))
        if winner.info.run_id == mine:
            return mine
        dense.client.delete_run(mine)
        return None

    def _train_and_publish(self, dense: Store, run_id: str) -> None:
        self.log(f"{self.what} {self.key}: training it for every worker (dense run {run_id})")
        try:
            self._train()
            buffer = io.BytesIO()
            torch.save(self.model.state_dict(), buffer)
            payload = buffer.getvalue()
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / f"{self.key}.pt"
                path.write_bytes(payload)
                dense.client.log_artifact(run_id, str(path), "dense")
            dense.client.set_tag(run_id, SHA_TAG, hashlib.sha256(payload).hexdigest())
        except BaseException as err:
            dense.client.set_tag(run_id, "error", f"{type(err).__name__}: {err}"[:5000])
            dense.client.set_terminated(run_id, "FAILED")
            raise
        dense.client.set_terminated(run_id, "FINISHED")
        self.trained = True

    def _download(self, dense: Store, run: Run) -> bool:
        """Load the published weights if their SHA-256 matches; a bad copy is marked FAILED so it is redone."""
        run_id = run.info.run_id
        with tempfile.TemporaryDirectory() as tmp:
            local = dense.client.download_artifacts(run_id, f"dense/{self.key}.pt", tmp)
            payload = Path(local).read_bytes()
        digest = hashlib.sha256(payload).hexdigest()
        if digest != run.data.tags.get(SHA_TAG):
            self.log(f"{self.what} {self.key}: the server's copy (run {run_id}) failed its checksum; retraining")
            dense.client.set_tag(run_id, "error", f"sha256 mismatch: file {digest}, tag {run.data.tags.get(SHA_TAG)}")
            dense.client.set_terminated(run_id, "FAILED")
            return False
        self.model.load_state_dict(torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True))
        self.log(f"{self.what} {self.key}: downloaded from the server (dense run {run_id}), SHA-256 verified")
        return True
