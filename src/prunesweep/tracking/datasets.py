"""The train / validation / test splits as MLflow dataset inputs: the runs table's Datasets column and filter."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from mlflow.entities import Dataset, DatasetInput, InputTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from prunesweep.tracking.run import PointRun

#: How MLflow reports an insert that lost the race for a new dataset, per backend.
DUPLICATE_KEY_MARKERS = ("UniqueViolation", "duplicate key value", "UNIQUE constraint failed", "IntegrityError")
SPLITS = (("train", "x_train", "y_train"), ("validation", "x_val", "y_val"), ("test", "x_test", "y_test"))


def split_digest(datamodule: Any, split: str) -> str:
    """What a split's content depends on: the raw files' md5s and the split settings when the datamodule
    knows them (MNIST, Fashion-MNIST), else the bytes of the split's tensors."""
    x, y = getattr(datamodule, f"x_{_short(split)}"), getattr(datamodule, f"y_{_short(split)}")
    spec = getattr(datamodule, "spec", None)
    h = hashlib.md5(usedforsecurity=False)
    if spec is not None and getattr(spec, "md5", None):
        settings = {k: getattr(datamodule, k, None) for k in ("val_size", "train_subset", "split_seed", "normalize")}
        if split == "train" and getattr(datamodule, "train_on_val", False):  # only then: earlier digests stand
            settings["train_on_val"] = True
        h.update(json.dumps({"files": dict(spec.md5), "split": split, **settings}, sort_keys=True).encode())
    else:
        h.update(x.detach().cpu().contiguous().numpy().tobytes())
        h.update(y.detach().cpu().contiguous().numpy().tobytes())
    h.update(str((tuple(x.shape), tuple(y.shape))).encode())
    return h.hexdigest()[:16]


def _short(split: str) -> str:
    return {"train": "train", "validation": "val", "test": "test"}[split]


def dataset_inputs(datamodule: Any, name: str) -> list[DatasetInput]:
    """One dataset input per split: ``<name>-<split>``, its digest, source and sizes, context = the split."""
    source = str(getattr(datamodule, "root", None) or getattr(datamodule, "path", None) or name)
    inputs = []
    for split, x_attr, y_attr in SPLITS:
        x, y = getattr(datamodule, x_attr), getattr(datamodule, y_attr)
        profile = {"num_rows": len(x), "input_shape": list(x.shape[1:]), "classes": int(y.max()) + 1}
        dataset = Dataset(
            name=f"{name}-{split}",
            digest=split_digest(datamodule, split),
            source_type="local",
            source=json.dumps({"uri": source}),
            schema=json.dumps({"input": list(x.shape[1:]), "dtype": str(x.dtype)}),
            profile=json.dumps(profile),
        )
        inputs.append(DatasetInput(dataset, tags=[InputTag("mlflow.data.context", split)]))
    return inputs


def log_datasets(point: PointRun, datamodule: Any, name: str) -> dict[str, str]:
    """Log the splits as the run's inputs; returns ``{split: digest}`` (also set as ``data.digest.<split>`` tags,
    which ``prunesweep-reproduce`` compares)."""
    inputs = dataset_inputs(datamodule, name)
    log_inputs_racing(point.client, point.run_id, inputs)
    digests = {i.tags[0].value: i.dataset.digest for i in inputs}
    point.set_tags({f"data.digest.{split}": digest for split, digest in digests.items()})
    return digests


def log_inputs_racing(client: MlflowClient, run_id: str, inputs: list[DatasetInput], attempts: int = 4) -> None:
    """``client.log_inputs``, safe when parallel points log the same new dataset at the same moment.

    MLflow's store looks the dataset up and inserts it when missing, in one transaction; two points that both miss
    it both insert, and the second violates the datasets' key (PostgreSQL: ``UniqueViolation``, SQLite: ``UNIQUE
    constraint failed``). That transaction is rolled back whole, so trying again is safe, and the retry finds the
    winner's dataset and links it. Any other error is raised at once.
    """
    for attempt in range(attempts):
        try:
            client.log_inputs(run_id, datasets=inputs)
            return
        except MlflowException as err:
            if attempt == attempts - 1 or not any(marker in str(err) for marker in DUPLICATE_KEY_MARKERS):
                raise
            time.sleep(0.1 * (attempt + 1))
