"""Opening a database: a SQLite path or any SQLAlchemy URL.

A missing SQLite file is an error, never silently created: files are opened through
``sqlite3``'s URI form with ``mode=rw`` (or ``mode=ro``). Transactions on SQLite are
begun explicitly so that a write transaction can be ``BEGIN IMMEDIATE`` and short.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import sqlalchemy as sa

from .errors import DatabaseError
from .schema import check_schema

SQLITE_MAGIC = b"SQLite format 3\x00"
DEFAULT_BUSY_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Target:
    """Where the data is: a SQLite file path, or another database's URL."""

    url: sa.URL
    sqlite_path: Path | None

    @property
    def label(self) -> str:
        return str(self.sqlite_path) if self.sqlite_path else self.url.render_as_string()


def parse_target(db: str) -> Target:
    """Interpret ``db`` as a SQLAlchemy URL when it has ``://``, else as a file path."""
    if "://" not in db:
        return Target(sa.make_url("sqlite://"), Path(db))
    try:
        url = sa.make_url(db)
    except sa.exc.ArgumentError as exc:
        raise DatabaseError(f"cannot parse database URL {db!r}: {exc}") from None
    if url.get_backend_name() == "sqlite":
        if not url.database or url.database == ":memory:":
            raise DatabaseError("an in-memory SQLite database holds no embeddings")
        return Target(url, Path(url.database))
    return Target(url, None)


def check_sqlite_file(path: Path, *, write: bool) -> None:
    """Raise DatabaseError unless ``path`` is an existing, accessible SQLite file."""
    if not path.exists():
        raise DatabaseError(f"database file not found: {path} (nothing was created)")
    if path.is_dir():
        raise DatabaseError(f"{path} is a directory, not a SQLite database file")
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(SQLITE_MAGIC))
    except OSError as exc:
        raise DatabaseError(f"cannot read {path}: {exc.strerror}") from None
    if head != SQLITE_MAGIC:
        raise DatabaseError(f"{path} is not a SQLite database (wrong file header)")
    if write and not os.access(path, os.W_OK):
        raise DatabaseError(f"{path} is read-only; results cannot be written")
    if write and not os.access(path.parent or Path("."), os.W_OK):
        raise DatabaseError(
            f"directory {path.parent} is not writable; SQLite needs it for its journal"
        )


def _sqlite_engine(path: Path, *, write: bool, busy_timeout_s: float) -> sa.Engine:
    mode = "rw" if write else "ro"
    uri = f"file:{quote(str(path.resolve()))}?mode={mode}"

    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(uri, uri=True, timeout=busy_timeout_s, check_same_thread=False)
        conn.isolation_level = None  # we issue BEGIN ourselves (see _begin)
        return conn

    engine = sa.create_engine("sqlite://", creator=connect, poolclass=sa.pool.NullPool)

    @sa.event.listens_for(engine, "begin")
    def _begin(conn: sa.Connection) -> None:
        immediate = conn.get_execution_options().get("sqlite_immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def open_database(
    db: str, *, write: bool = False, busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S
) -> sa.Engine:
    """Open ``db`` and check it holds panic-tda's tables.

    Args:
        db: a SQLite file path or a SQLAlchemy URL.
        write: open for writing (the file must be writable).
        busy_timeout_s: how long a statement waits for another writer's lock, seconds.
    """
    target = parse_target(db)
    if target.sqlite_path is not None:
        check_sqlite_file(target.sqlite_path, write=write)
        engine = _sqlite_engine(target.sqlite_path, write=write, busy_timeout_s=busy_timeout_s)
    else:
        try:
            engine = sa.create_engine(target.url)
        except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as exc:
            raise DatabaseError(f"cannot use database URL {target.label}: {exc}") from None
    try:
        check_schema(engine)
    except sa.exc.DBAPIError as exc:
        engine.dispose()
        raise DatabaseError(f"cannot read {target.label}: {exc.orig}") from None
    return engine


def write_connection(engine: sa.Engine) -> sa.Connection:
    """A connection whose transactions take the write lock at BEGIN (SQLite)."""
    return engine.connect().execution_options(sqlite_immediate=True)
