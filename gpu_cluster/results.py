"""Reading and deleting stored clustering results (``list``, ``status``, ``delete``)."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

import sqlalchemy as sa

from .labels import NOISE
from .database import database_errors, write_connection
from .errors import ParameterError, UnknownName
from .schema import clusteringresult, embeddingcluster
from .writer import delete_model_results


@dataclass(frozen=True)
class StoredResult:
    """One clusteringresult row with its membership counts."""

    id: str
    model: str
    created_at: dt.datetime
    algorithm: str
    n: int
    noise: int
    n_clusters: int
    parameters: dict

    @property
    def noise_fraction(self) -> float:
        return self.noise / self.n if self.n else 0.0


def membership_counts(conn: sa.Connection) -> dict[str, tuple[int, int]]:
    """clustering_result_id (hex) -> (members, noise members)."""
    noise = sa.func.sum(sa.case((embeddingcluster.c.cluster_id == NOISE, 1), else_=0))
    query = sa.select(
        embeddingcluster.c.clustering_result_id, sa.func.count(), noise
    ).group_by(embeddingcluster.c.clustering_result_id)
    return {rid.replace("-", ""): (n, int(z or 0)) for rid, n, z in conn.execute(query)}


def json_column(name: str) -> sa.ColumnElement:
    """A JSON column read as it is stored, so that a malformed value cannot stop a read."""
    return sa.type_coerce(clusteringresult.c[name], sa.String).label(name)


def json_value(value, default):
    """Decode a JSON column's value (text on SQLite, already decoded by some drivers);
    ``default`` for a value that is not JSON of the default's type (a foreign row)."""
    if isinstance(value, (str, bytes)):
        try:
            value = json.loads(value)
        except ValueError:
            return default
    return value if isinstance(value, type(default)) else default


def list_results(engine: sa.Engine, model: str | None = None) -> list[StoredResult]:
    """Every stored result (optionally one model's), oldest first."""
    c = clusteringresult.c
    query = sa.select(c.id, c.created_at, c.embedding_model, c.algorithm,
                      json_column("parameters"), json_column("clusters")).order_by(c.created_at)
    if model is not None:
        query = query.where(clusteringresult.c.embedding_model == model)
    with database_errors("reading the stored results"), engine.connect() as conn:
        counts = membership_counts(conn)
        rows = conn.execute(query).mappings().all()
    out = []
    for row in rows:
        rid = row["id"].replace("-", "")
        n, noise = counts.get(rid, (0, 0))
        clusters = json_value(row["clusters"], [])
        out.append(StoredResult(rid, row["embedding_model"], row["created_at"],
                                row["algorithm"], n, noise, len(clusters),
                                json_value(row["parameters"], {})))
    return out


def latest_results(engine: sa.Engine) -> dict[str, StoredResult]:
    """The newest result of each model, keyed by model name."""
    latest: dict[str, StoredResult] = {}
    for res in list_results(engine):
        latest[res.model] = res  # ordered oldest first: the last one wins
    return latest


def delete_results(engine: sa.Engine, *, model: str | None = None, result_id: str | None = None) -> int:
    """Delete one result (by id) or all of a model's, with their memberships; returns count."""
    if (model is None) == (result_id is None):
        raise ParameterError("delete needs exactly one of --model or --result")
    with database_errors("deleting results", "; nothing was deleted"), \
            write_connection(engine, "to delete results") as conn, conn.begin():
        if model is not None:
            deleted = delete_model_results(conn, model)
        else:
            rid = result_id.replace("-", "").lower()
            conn.execute(sa.delete(embeddingcluster).where(embeddingcluster.c.clustering_result_id == rid))
            deleted = conn.execute(sa.delete(clusteringresult).where(clusteringresult.c.id == rid)).rowcount
    if not deleted:  # an unknown name is an error, whichever option named it
        if model is None:
            raise UnknownName(f"no clustering result with id {result_id}")
        query = sa.select(clusteringresult.c.embedding_model).distinct().order_by(
            clusteringresult.c.embedding_model)
        with database_errors("reading the stored results"), engine.connect() as conn:
            having = ", ".join(conn.execute(query).scalars()) or "none"
        raise UnknownName(f"no clustering results of model {model!r} (models with results: "
                          f"{having})")
    return deleted


def model_result_parameters(engine: sa.Engine, model: str) -> list[tuple[str, dt.datetime, dict]]:
    """(id, created_at, parameters) of each stored result of ``model``, oldest first."""
    query = (sa.select(clusteringresult.c.id, clusteringresult.c.created_at,
                       json_column("parameters"))
             .where(clusteringresult.c.embedding_model == model)
             .order_by(clusteringresult.c.created_at))
    with database_errors("reading the stored results"), engine.connect() as conn:
        return [(str(rid).replace("-", ""), created, json_value(params, {}))
                for rid, created, params in conn.execute(query)]


def result_exists(engine: sa.Engine, result_id: str) -> bool:
    """Whether a clusteringresult with this id (hex) is stored."""
    query = sa.select(sa.func.count()).where(clusteringresult.c.id == result_id)
    with database_errors("reading the stored results"), engine.connect() as conn:
        return bool(conn.execute(query).scalar())
