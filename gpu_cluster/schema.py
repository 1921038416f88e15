"""panic-tda's tables as SQLAlchemy Core objects, and the check that a database has them.

The column types reproduce panic-tda's SQLModel DDL on SQLite (``CHAR(32)`` hex ids,
``DATETIME`` text with six fractional digits, ``JSON`` text from ``json.dumps``), which
is what ``demo.py`` creates. The columns whose storage differs between databases (ids,
``invocation.type``, JSON, timestamps) have types that take their form *from the
database*: ``check_schema`` reflects the real column types once per engine and records
them for its dialect (:class:`StoredTypes`), so on the PostgreSQL schema panic-tda
creates, ids bind as native ``uuid``, ``invocation.type`` compares as the native
``invocationtype`` ENUM, JSON binds as ``json``, while SQLite keeps its 32-hex ids and
text. Only the tables this tool reads or writes matter for the check.
"""

from __future__ import annotations

import datetime as dt
import weakref
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from .errors import SchemaError

metadata = sa.MetaData()


@dataclass(frozen=True)
class StoredTypes:
    """How one database stores the columns whose type differs between backends.

    native_uuid: ids are a native uuid type (else 32 hex digits in a text column);
    type_enum: (name, labels) of ``invocation.type``'s native ENUM, or None for text;
    jsonb: JSON columns are PostgreSQL ``jsonb`` (else ``json``, or text on SQLite);
    tz_timestamps: timestamp columns carry a time zone (naive UTC values get one).
    """

    native_uuid: bool = True  # SQLAlchemy's default: uuid where the database has one
    type_enum: tuple[str, tuple[str, ...]] | None = None
    jsonb: bool = False
    tz_timestamps: bool = False


# Reflected types per dialect instance (one per engine), read when a statement compiles.
_stored_types: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def stored_types(dialect: sa.Dialect) -> StoredTypes:
    return _stored_types.get(dialect, StoredTypes())


class PanicId(sa.types.TypeDecorator):
    """An id: native uuid, or ``CHAR(32)`` with 32 lowercase hex digits (SQLite).

    Binds either form of string; reads back a string (dashed from a native uuid).
    """

    impl = sa.Uuid(as_uuid=False)
    cache_ok = True

    def load_dialect_impl(self, dialect):
        native = stored_types(dialect).native_uuid
        return dialect.type_descriptor(sa.Uuid(as_uuid=False, native_uuid=native))


class InvocationType(sa.types.TypeDecorator):
    """``invocation.type``: the enum *name* ('TEXT', 'IMAGE') as text, or a native ENUM.

    Comparing a native ENUM column with a ``VARCHAR`` parameter fails on PostgreSQL
    (``operator does not exist: invocationtype = character varying``), so where the
    database has the ENUM, parameters are bound as that ENUM.
    """

    impl = sa.String(5)
    cache_ok = True

    def load_dialect_impl(self, dialect):
        enum = stored_types(dialect).type_enum
        if enum is None:
            return dialect.type_descriptor(sa.String(5))
        name, labels = enum
        return dialect.type_descriptor(postgresql.ENUM(*labels, name=name, create_type=False))


class PanicJson(sa.types.TypeDecorator):
    """A JSON column: text from ``json.dumps`` on SQLite, ``json`` (or ``jsonb``) on PostgreSQL."""

    impl = sa.JSON
    cache_ok = True

    def load_dialect_impl(self, dialect):
        if stored_types(dialect).jsonb:
            return dialect.type_descriptor(postgresql.JSONB())
        return dialect.type_descriptor(sa.JSON())


class PanicDateTime(sa.types.TypeDecorator):
    """A timestamp: naive UTC, as panic-tda's ``datetime.utcnow`` gives; marked UTC where
    the column has a time zone (so the server does not read it in its own zone)."""

    impl = sa.DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect):
        return dialect.type_descriptor(sa.DateTime(timezone=stored_types(dialect).tz_timestamps))

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is None and stored_types(dialect).tz_timestamps:
            return value.replace(tzinfo=dt.timezone.utc)
        return value


def _id(name: str = "id", **kw) -> sa.Column:
    return sa.Column(name, PanicId(), nullable=False, **kw)


clusteringresult = sa.Table(
    "clusteringresult",
    metadata,
    _id(primary_key=True),
    sa.Column("created_at", PanicDateTime, nullable=False),
    sa.Column("embedding_model", sa.String, nullable=False),
    sa.Column("algorithm", sa.String, nullable=False),
    sa.Column("parameters", PanicJson, nullable=False),
    sa.Column("clusters", PanicJson, nullable=False),
)

experimentconfig = sa.Table(
    "experimentconfig",
    metadata,
    _id(primary_key=True),
    sa.Column("networks", PanicJson, nullable=False),
    sa.Column("seeds", PanicJson, nullable=False),
    sa.Column("prompts", PanicJson, nullable=False),
    sa.Column("embedding_models", PanicJson, nullable=False),
    sa.Column("max_length", sa.Integer, nullable=False),
    sa.Column("started_at", PanicDateTime),
    sa.Column("completed_at", PanicDateTime),
)

run = sa.Table(
    "run",
    metadata,
    _id(primary_key=True),
    sa.Column("network", PanicJson, nullable=False),
    sa.Column("seed", sa.Integer, nullable=False),
    sa.Column("max_length", sa.Integer, nullable=False),
    sa.Column("initial_prompt", sa.String, nullable=False),
    sa.Column(
        "experiment_id",
        PanicId(),
        sa.ForeignKey("experimentconfig.id"),
        index=True,
    ),
)

invocation = sa.Table(
    "invocation",
    metadata,
    _id(primary_key=True),
    sa.Column("started_at", PanicDateTime),
    sa.Column("completed_at", PanicDateTime),
    sa.Column("model", sa.String, nullable=False),
    sa.Column("type", InvocationType(), nullable=False),
    sa.Column("seed", sa.Integer, nullable=False),
    sa.Column(
        "run_id", PanicId(), sa.ForeignKey("run.id"), nullable=False, index=True
    ),
    sa.Column("sequence_number", sa.Integer, nullable=False),
    sa.Column(
        "input_invocation_id",
        PanicId(),
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
    sa.Column("started_at", PanicDateTime),
    sa.Column("completed_at", PanicDateTime),
    sa.Column("diagram_data", sa.LargeBinary),
    sa.Column(
        "run_id", PanicId(), sa.ForeignKey("run.id"), nullable=False, index=True
    ),
    sa.Column("embedding_model", sa.String, nullable=False),
)

embedding = sa.Table(
    "embedding",
    metadata,
    _id(primary_key=True),
    sa.Column("started_at", PanicDateTime),
    sa.Column("completed_at", PanicDateTime),
    sa.Column(
        "invocation_id",
        PanicId(),
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
        PanicId(),
        sa.ForeignKey("embedding.id"),
        nullable=False,
        index=True,
    ),
    sa.Column(
        "clustering_result_id",
        PanicId(),
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


def missing_columns(columns: dict[str, dict[str, sa.types.TypeEngine]]) -> list[str]:
    """Names (``table`` or ``table.column``) this tool needs but the database lacks.

    ``columns`` maps each table present to its columns' reflected types.
    """
    missing: list[str] = []
    for table, needed in REQUIRED_COLUMNS.items():
        if table not in columns:
            missing.append(table)
            continue
        missing.extend(f"{table}.{c}" for c in needed if c not in columns[table])
    return missing


def reflect_columns(inspector: sa.Inspector) -> dict[str, dict[str, sa.types.TypeEngine]]:
    """table -> column -> reflected type, for the tables this tool uses that exist."""
    present = set(inspector.get_table_names())
    return {table: {c["name"]: c["type"] for c in inspector.get_columns(table)}
            for table in REQUIRED_COLUMNS if table in present}


def stored_types_of(columns: dict[str, dict[str, sa.types.TypeEngine]]) -> StoredTypes:
    """What the reflected types say about ids, ``invocation.type``, JSON and timestamps."""
    kind = columns["invocation"]["type"]
    created = columns["clusteringresult"]["created_at"]
    return StoredTypes(
        native_uuid=isinstance(columns["embedding"]["id"], sa.Uuid),
        type_enum=(kind.name, tuple(kind.enums)) if isinstance(kind, sa.Enum) else None,
        jsonb=isinstance(columns["clusteringresult"]["parameters"], postgresql.JSONB),
        tz_timestamps=isinstance(created, sa.DateTime) and bool(created.timezone),
    )


def check_schema(engine: sa.Engine) -> StoredTypes:
    """Raise SchemaError naming every missing panic-tda table or column; else record
    (and return) how this database stores the columns whose type varies."""
    columns = reflect_columns(sa.inspect(engine))
    where = engine.url.render_as_string(hide_password=True)
    missing = missing_columns(columns)
    if missing:
        raise SchemaError(f"{where} is not a panic-tda database: missing {', '.join(missing)}")
    vector = columns["embedding"]["vector"]
    if not isinstance(vector, (sa.LargeBinary, sa.types.NullType)):
        raise SchemaError(f"{where}: embedding.vector is {vector}, not a binary column "
                          f"(panic-tda stores float32 bytes: BLOB or bytea)")
    types = stored_types_of(columns)
    _stored_types[engine.dialect] = types
    return types
