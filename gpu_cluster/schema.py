"""panic-tda's tables as SQLAlchemy Core objects, and the check that a database has them.

The column types reproduce panic-tda's SQLModel DDL on SQLite (``CHAR(32)`` hex ids,
``DATETIME`` text with six fractional digits, ``JSON`` text from ``json.dumps``) and map
to native ``UUID``/``JSON`` on PostgreSQL. Only the tables this tool reads or writes
matter for the check; ``demo.py`` creates all seven.
"""

from __future__ import annotations

import sqlalchemy as sa

from .errors import SchemaError

metadata = sa.MetaData()


def _id(name: str = "id", **kw) -> sa.Column:
    return sa.Column(name, sa.Uuid(as_uuid=False), nullable=False, **kw)


clusteringresult = sa.Table(
    "clusteringresult",
    metadata,
    _id(primary_key=True),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("embedding_model", sa.String, nullable=False),
    sa.Column("algorithm", sa.String, nullable=False),
    sa.Column("parameters", sa.JSON, nullable=False),
    sa.Column("clusters", sa.JSON, nullable=False),
)

experimentconfig = sa.Table(
    "experimentconfig",
    metadata,
    _id(primary_key=True),
    sa.Column("networks", sa.JSON, nullable=False),
    sa.Column("seeds", sa.JSON, nullable=False),
    sa.Column("prompts", sa.JSON, nullable=False),
    sa.Column("embedding_models", sa.JSON, nullable=False),
    sa.Column("max_length", sa.Integer, nullable=False),
    sa.Column("started_at", sa.DateTime),
    sa.Column("completed_at", sa.DateTime),
)

run = sa.Table(
    "run",
    metadata,
    _id(primary_key=True),
    sa.Column("network", sa.JSON, nullable=False),
    sa.Column("seed", sa.Integer, nullable=False),
    sa.Column("max_length", sa.Integer, nullable=False),
    sa.Column("initial_prompt", sa.String, nullable=False),
    sa.Column(
        "experiment_id",
        sa.Uuid(as_uuid=False),
        sa.ForeignKey("experimentconfig.id"),
        index=True,
    ),
)

invocation = sa.Table(
    "invocation",
    metadata,
    _id(primary_key=True),
    sa.Column("started_at", sa.DateTime),
    sa.Column("completed_at", sa.DateTime),
    sa.Column("model", sa.String, nullable=False),
    sa.Column("type", sa.String(5), nullable=False),
    sa.Column("seed", sa.Integer, nullable=False),
    sa.Column(
        "run_id", sa.Uuid(as_uuid=False), sa.ForeignKey("run.id"), nullable=False, index=True
    ),
    sa.Column("sequence_number", sa.Integer, nullable=False),
    sa.Column(
        "input_invocation_id",
        sa.Uuid(as_uuid=False),
        sa.ForeignKey("invocation.id"),
        index=True,
    ),
    sa.Column("output_text", sa.String),
    sa.Column("output_image_data", sa.LargeBinary),
)

persistencediagram = sa.Table(
    "persistencediagram",
    metadata,
    _id(primary_key=True),
    sa.Column("started_at", sa.DateTime),
    sa.Column("completed_at", sa.DateTime),
    sa.Column("diagram_data", sa.LargeBinary),
    sa.Column(
        "run_id", sa.Uuid(as_uuid=False), sa.ForeignKey("run.id"), nullable=False, index=True
    ),
    sa.Column("embedding_model", sa.String, nullable=False),
)

embedding = sa.Table(
    "embedding",
    metadata,
    _id(primary_key=True),
    sa.Column("started_at", sa.DateTime),
    sa.Column("completed_at", sa.DateTime),
    sa.Column(
        "invocation_id",
        sa.Uuid(as_uuid=False),
        sa.ForeignKey("invocation.id"),
        nullable=False,
        index=True,
    ),
    sa.Column("embedding_model", sa.String, nullable=False),
    sa.Column("vector", sa.LargeBinary),
)

embeddingcluster = sa.Table(
    "embeddingcluster",
    metadata,
    _id(primary_key=True),
    sa.Column(
        "embedding_id",
        sa.Uuid(as_uuid=False),
        sa.ForeignKey("embedding.id"),
        nullable=False,
        index=True,
    ),
    sa.Column(
        "clustering_result_id",
        sa.Uuid(as_uuid=False),
        sa.ForeignKey("clusteringresult.id"),
        nullable=False,
        index=True,
    ),
    sa.Column("cluster_id", sa.Integer, nullable=False),
)

# Columns this tool reads or writes, per table. Checked by name (PRAGMA table_info /
# the inspector), never by comparing DDL text: alembic may have rewritten it.
REQUIRED_COLUMNS = {
    "invocation": ("id", "type", "sequence_number", "output_text"),
    "embedding": ("id", "invocation_id", "embedding_model", "vector"),
    "clusteringresult": tuple(c.name for c in clusteringresult.columns),
    "embeddingcluster": tuple(c.name for c in embeddingcluster.columns),
}


def missing_columns(inspector: sa.Inspector) -> list[str]:
    """Names (``table`` or ``table.column``) this tool needs but the database lacks."""
    tables = set(inspector.get_table_names())
    missing: list[str] = []
    for table, columns in REQUIRED_COLUMNS.items():
        if table not in tables:
            missing.append(table)
            continue
        present = {c["name"] for c in inspector.get_columns(table)}
        missing.extend(f"{table}.{c}" for c in columns if c not in present)
    return missing


def check_schema(engine: sa.Engine) -> None:
    """Raise SchemaError naming every missing panic-tda table or column."""
    missing = missing_columns(sa.inspect(engine))
    if missing:
        raise SchemaError(
            f"{engine.url.render_as_string(hide_password=True)} is not a panic-tda "
            f"database: missing {', '.join(missing)}"
        )
