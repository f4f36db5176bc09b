"""The best pruned model of each series of a sweep, in the MLflow Model Registry under one name.

"Best" is the highest achieved sparsity whose fine-tuned accuracy is within ``tolerance`` accuracy points of
its own dense model. Each series gets an alias (``unstructured-global``), and registering again adds no
version: a model already registered under the name is found by its model id and reused.
"""

from __future__ import annotations

import re

import pandas as pd
from mlflow.tracking import MlflowClient


def alias_of(series: str) -> str:
    """A registry alias for a series label.

    >>> alias_of("channel/global")
    'channel-global'
    >>> alias_of("unstructured/layerwise/taylor")
    'unstructured-layerwise-taylor'
    """
    return re.sub(r"[^A-Za-z0-9_-]+", "-", series).strip("-").lower()


def best_per_series(points: pd.DataFrame, series: list[str], tolerance: float) -> pd.DataFrame:
    """One row per series: the FINISHED point with a logged model and the highest achieved sparsity whose
    accuracy is at most ``tolerance`` points below its dense model's (series with none are left out)."""
    ok = points[(points["status"] == "FINISHED") & points["model_id"].notna()]
    ok = ok[ok["acc_finetuned"] >= ok["acc_dense"] - tolerance / 100]
    if not len(ok):
        return ok
    ranked = ok.sort_values(["sparsity_achieved", "acc_finetuned"], ascending=False)
    best = ranked.groupby(series, sort=True).head(1).copy()
    best["series"] = ["/".join(str(v) for v in row) for row in best[series].itertuples(index=False)]
    return best.reset_index(drop=True)


def register_best(client: MlflowClient, name: str, best: pd.DataFrame) -> list[dict[str, str]]:
    """Register each row's model under ``name`` (once) and point the series' alias at it."""
    if not client.search_registered_models(filter_string=f"name = '{name}'"):
        client.create_registered_model(name, description="prunesweep: best pruned model per series (alias)")
    known = {v.tags.get("prunesweep.model_id"): v for v in client.search_model_versions(f"name = '{name}'")}
    done = []
    for row in best.itertuples(index=False):
        version = known.get(row.model_id)
        created = version is None
        if created:
            version = client.create_model_version(
                name,
                source=f"models:/{row.model_id}",
                run_id=row.run_id,
                model_id=row.model_id,
                tags={"prunesweep.model_id": row.model_id, "series": row.series, "run_name": row.run_name},
            )
        alias = alias_of(row.series)
        client.set_registered_model_alias(name, alias, version.version)
        done.append({"series": row.series, "alias": alias, "version": str(version.version), "new": str(created)})
    return done
