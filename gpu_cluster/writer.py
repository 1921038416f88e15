"""Write one model's clustering back into panic-tda's tables, in one short transaction.

A ``clusteringresult`` row (JSON ``parameters`` and ``clusters`` exactly as panic-tda
stores them) plus one ``embeddingcluster`` row per clustered embedding, inserted with
``executemany`` in chunks. Nothing is written until clustering is over; the
transaction either commits whole or leaves nothing: an interruption, a full disk or a
lock held past the timeout rolls it back (the last two become one DatabaseError).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import sqlalchemy as sa

from .labels import NOISE
from .database import database_errors, write_connection
from .ids import dashed, new_ids
from .progress import Stage
from .schema import clusteringresult, embedding, embeddingcluster, invocation

WRITE_CHUNK = 20_000
LOOKUP_CHUNK = 500


def utcnow_naive() -> dt.datetime:
    """Naive UTC timestamp, as panic-tda's ``datetime.utcnow`` default stores it."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


@dataclass
class ResultToWrite:
    """Everything one model's result row and membership rows need.

    ids: (n,) S32 embedding ids; labels: (n,) int64 aligned with ids;
    medoid_rows: (k,) int64 row of each cluster's medoid.
    """

    model: str
    ids: np.ndarray
    labels: np.ndarray
    medoid_rows: np.ndarray
    parameters: dict


def medoid_texts(conn: sa.Connection, medoid_ids: list[str]) -> dict[str, str | None]:
    """Map 32-hex embedding id -> its invocation's output_text."""
    texts: dict[str, str | None] = {}
    join = embedding.join(invocation, invocation.c.id == embedding.c.invocation_id)
    for start in range(0, len(medoid_ids), LOOKUP_CHUNK):
        chunk = medoid_ids[start : start + LOOKUP_CHUNK]
        query = sa.select(embedding.c.id, invocation.c.output_text).select_from(join)
        for eid, text in conn.execute(query.where(embedding.c.id.in_(chunk))):
            texts[eid.replace("-", "")] = text
    return texts


def clusters_json(result: ResultToWrite, texts: dict[str, str | None]) -> list[dict]:
    """panic-tda's ``clusters`` list: one entry per cluster (noise has no medoid)."""
    entries = []
    for label, row in enumerate(result.medoid_rows):
        eid = result.ids[row].decode()
        entries.append(
            {"id": label, "medoid_text": texts.get(eid), "medoid_embedding_id": dashed(eid)}
        )
    return entries


def delete_model_results(conn: sa.Connection, model: str) -> int:
    """Delete a model's clusteringresult rows and their memberships; returns results deleted."""
    return len(delete_model_results_listed(conn, model))


def delete_model_results_listed(conn: sa.Connection, model: str) -> list[str]:
    """Delete a model's results with their memberships; returns the deleted ids (hex)."""
    ids = sa.select(clusteringresult.c.id).where(clusteringresult.c.embedding_model == model)
    deleted = [str(rid).replace("-", "") for rid in conn.execute(ids).scalars()]
    conn.execute(sa.delete(embeddingcluster).where(embeddingcluster.c.clustering_result_id.in_(ids)))
    conn.execute(sa.delete(clusteringresult).where(clusteringresult.c.embedding_model == model))
    return deleted


def membership_rows(result: ResultToWrite, result_id: str, start: int, stop: int) -> list[dict]:
    return [
        {"id": new_ids.hex(), "embedding_id": eid.decode(), "clustering_result_id": result_id,
         "cluster_id": int(label)}
        for eid, label in zip(result.ids[start:stop], result.labels[start:stop])
    ]


def write_result(
    engine: sa.Engine, result: ResultToWrite, *, replace: bool = False, stage: Stage | None = None,
    result_id: str | None = None,
) -> str:
    """Insert ``result`` in one transaction; returns the new clusteringresult id (hex).

    With ``replace``, the model's earlier results are deleted in the same transaction
    (their ids land in ``parameters["replaced_result_ids"]``). ``result_id`` (hex) is
    the id to use, when the caller chose it already. Raises DatabaseError (nothing of
    this result written) on a full disk, a lock held past the lock timeout, or any
    other driver error.
    """
    if result.labels.min(initial=0) < NOISE:
        raise ValueError(f"{result.model}: labels below NOISE ({NOISE}) cannot be stored")
    result_id = result_id or new_ids.hex()
    medoid_ids = [result.ids[r].decode() for r in result.medoid_rows]
    doing = f"writing {result.model}'s results"
    with database_errors(doing, "; nothing of them was written (results stored before stay)"):
        with engine.connect() as conn:  # a read: no write lock while looking up texts
            texts = medoid_texts(conn, medoid_ids)
        insert_result(engine, result, result_id, texts, replace=replace, stage=stage)
    return result_id


def insert_result(
    engine: sa.Engine, result: ResultToWrite, result_id: str, texts: dict[str, str | None],
    *, replace: bool, stage: Stage | None,
) -> None:
    """The write transaction itself: optional delete, the result row, the memberships."""
    purpose = f"to store {result.model}'s result ({result.ids.shape[0]:,} rows)"
    if stage is not None:
        stage.waiting = "waiting for the write lock"
    with write_connection(engine, purpose) as conn, conn.begin():
        if stage is not None:
            stage.waiting = ""
        if replace:
            replaced = delete_model_results_listed(conn, result.model)
            result.parameters["replaced_results"] = len(replaced)
            result.parameters["replaced_result_ids"] = replaced
        conn.execute(
            clusteringresult.insert(),
            {
                "id": result_id, "created_at": utcnow_naive(), "embedding_model": result.model,
                "algorithm": "hdbscan", "parameters": result.parameters,
                "clusters": clusters_json(result, texts),
            },
        )
        for start in range(0, result.ids.shape[0], WRITE_CHUNK):
            stop = min(start + WRITE_CHUNK, result.ids.shape[0])
            conn.execute(embeddingcluster.insert(), membership_rows(result, result_id, start, stop))
            if stage is not None:
                stage.advance(stop - start)
