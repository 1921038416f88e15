"""Opening a database: a SQLite path or any SQLAlchemy URL.

A missing SQLite file is an error, never silently created: files are opened through
``sqlite3``'s URI form with ``mode=rw`` (or ``mode=ro``). Transactions on SQLite are
begun explicitly so that a write transaction takes the write lock at BEGIN and is short.

Waiting for another process's lock (panic-tda writing, say): each attempt to take a
lock waits at most ``LOCK_POLL_S`` inside SQLite, then the attempt is repeated until
``LockWait.timeout_s`` has passed (``None``: for as long as it takes), with a log line
every ``heartbeat_s`` saying what it waits for and for how long. Short attempts keep
SIGTERM/Ctrl-C prompt while waiting (a signal is handled only between SQLite calls).
On PostgreSQL the server bounds every lock wait of the connection (``lock_timeout``),
and a wait cut short becomes the same DatabaseLocked.

A run sees one consistent state of the database (:class:`Snapshot`): on PostgreSQL
every read imports the snapshot the run exported before its survey; on SQLite the
survey records an upper bound on ``rowid`` that every later read applies.
"""

from __future__ import annotations

import logging
import math
import os
import re
import sqlite3
import threading
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import quote

import sqlalchemy as sa

from .errors import DatabaseError, DatabaseLocked
from .params import DEFAULT_LOCK_TIMEOUT_S
from .schema import check_schema

log = logging.getLogger("gpu_cluster")

SQLITE_MAGIC = b"SQLite format 3\x00"
DEFAULT_LOCK_HEARTBEAT_S = 10.0
LOCK_POLL_S = 0.2  # SQLite's own busy wait per attempt: bounds the delay of a signal
PG_DISK_FULL = "53100"  # PostgreSQL SQLSTATE disk_full
PG_LOCK_NOT_AVAILABLE = "55P03"  # lock_timeout expired (or NOWAIT)
# Execution option: fetch this statement's rows in the binary format (psycopg 3 only;
# other drivers ignore it). Used for the vector read.
BINARY_RESULTS = "gpu_cluster_binary_results"
PSYCOPG_BINARY = 1  # psycopg.pq.Format.BINARY


@dataclass(frozen=True)
class LockWait:
    """How long to wait for another process's lock, and how often to say so (seconds)."""

    timeout_s: float | None = DEFAULT_LOCK_TIMEOUT_S  # None: no limit
    heartbeat_s: float = DEFAULT_LOCK_HEARTBEAT_S
    path: Path | None = None  # the SQLite file, to name the process holding its lock

    def holder_text(self) -> str:
        from .lockinfo import lock_holder_text

        return (self.path and lock_holder_text(self.path)) or "held by another process"

    def limit_text(self, waited: float) -> str:
        if self.timeout_s is None:
            return f"{waited:.0f} s so far, no time limit (--lock-timeout sets one)"
        return f"{waited:.0f} s of {self.timeout_s:g} s (--lock-timeout)"


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
    except (sa.exc.ArgumentError, ValueError) as exc:  # ValueError: a port that is not a number
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


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    """SQLITE_BUSY (any extended form): another connection holds the lock we need."""
    return ((getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF) == sqlite3.SQLITE_BUSY


def _try_begin(dbapi: sqlite3.Connection, write: bool) -> bool:
    """One attempt to begin a transaction holding its lock; False if the file is busy.

    A write takes the write lock at BEGIN (``EXCLUSIVE``: the same as ``IMMEDIATE`` in
    WAL mode; in rollback-journal mode it also waits out readers here, so the COMMIT
    never has to). A read takes its read lock at once with a tiny query, so a busy
    file is met here, inside the bounded wait, and not by the first real query.
    """
    try:
        if write:
            dbapi.execute("BEGIN EXCLUSIVE")
        else:
            dbapi.execute("BEGIN")
            dbapi.execute("SELECT count(*) FROM sqlite_master").fetchall()
        return True
    except sqlite3.OperationalError as exc:
        if not _is_busy(exc):
            raise
        if dbapi.in_transaction:
            dbapi.execute("ROLLBACK")
        return False


def begin_when_unlocked(dbapi: sqlite3.Connection, write: bool, wait: LockWait,
                        purpose: str = "") -> None:
    """Begin a transaction, retrying while another process holds the lock.

    Logs a heartbeat every ``wait.heartbeat_s`` (saying ``purpose``, e.g. "to store
    Nomic's result") and raises DatabaseLocked after ``wait.timeout_s`` seconds
    (never, when it is None).
    """
    kind = "write" if write else "read"
    start = time.monotonic()
    next_beat = wait.heartbeat_s
    while not _try_begin(dbapi, write):
        waited = time.monotonic() - start
        if wait.timeout_s is not None and waited >= wait.timeout_s:
            raise DatabaseLocked(wait.timeout_s)
        if waited >= next_beat:
            log.warning("waiting for the database %s lock (%s)%s: %s", kind,
                        wait.holder_text(), f" {purpose}" if purpose else "",
                        wait.limit_text(waited))
            next_beat += wait.heartbeat_s
        time.sleep(0.05)  # SQLite waited LOCK_POLL_S already, unless it refused at once


def _sqlite_engine(path: Path, *, write: bool, wait: LockWait, immutable: bool = False) -> sa.Engine:
    mode = "rw" if write else "ro"
    uri = f"file:{quote(str(path.resolve()))}?mode={mode}" + ("&immutable=1" if immutable else "")

    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(uri, uri=True, timeout=LOCK_POLL_S, check_same_thread=False)
        conn.isolation_level = None  # we issue BEGIN ourselves (see _begin)
        return conn

    engine = sa.create_engine("sqlite://", creator=connect, poolclass=sa.pool.NullPool)

    @sa.event.listens_for(engine, "begin")
    def _begin(conn: sa.Connection) -> None:
        opts = conn.get_execution_options()
        begin_when_unlocked(conn.connection.dbapi_connection, opts.get("sqlite_write", False),
                            wait, opts.get("lock_purpose", ""))

    return engine


def _postgres_engine(target: Target, wait: LockWait) -> sa.Engine:
    """An engine whose connections bound lock waits by ``wait.timeout_s`` (server side).

    ``lock_timeout`` is set per session at connect (and committed: a ``SET`` inside a
    transaction that rolls back is undone). A wait cut short raises DatabaseLocked.
    Statements run with the ``BINARY_RESULTS`` execution option fetch binary rows.
    """
    engine = sa.create_engine(target.url)
    bounded = wait.timeout_s is not None and math.isfinite(wait.timeout_s)
    lock_ms = max(1, round(wait.timeout_s * 1000)) if bounded else 0  # 0: no bound

    @sa.event.listens_for(engine, "connect")
    def _set_lock_timeout(dbapi_conn, record) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("SELECT set_config('lock_timeout', %s, false)", (f"{lock_ms}ms",))
        cur.close()
        dbapi_conn.commit()

    @sa.event.listens_for(engine, "before_cursor_execute")
    def _binary_results(conn, cursor, statement, parameters, context, executemany) -> None:
        # psycopg 3 returns text by default: bytea travels hex-encoded, twice its size.
        if context.execution_options.get(BINARY_RESULTS) and hasattr(cursor, "format"):
            cursor.format = PSYCOPG_BINARY

    @sa.event.listens_for(engine, "handle_error")
    def _lock_wait_cut_short(context) -> None:
        if getattr(context.original_exception, "sqlstate", None) == PG_LOCK_NOT_AVAILABLE:
            raise DatabaseLocked(wait.timeout_s) from context.original_exception

    watch_lock_waits(engine, wait)
    return engine


def watch_lock_waits(engine: sa.Engine, wait: LockWait) -> None:
    """Heartbeat lines while a statement on ``engine`` waits for a PostgreSQL lock.

    The server waits for a lock by itself (up to ``lock_timeout``, or for ever), so the
    client would be silent. While a statement runs longer than ``wait.heartbeat_s``, a
    timer asks the server (``pg_blocking_pids``, on another pooled connection) whether
    that backend waits for a lock and, if so, logs who holds it and for how long.
    """
    @sa.event.listens_for(engine, "before_cursor_execute")
    def _start(conn, cursor, statement, parameters, context, executemany) -> None:
        pid = _backend_pid(conn.connection.dbapi_connection)
        if pid is not None:
            purpose = context.execution_options.get("lock_purpose", "")
            conn.info["lock_watch"] = _LockWatch(engine, wait, pid, purpose).start()

    @sa.event.listens_for(engine, "after_cursor_execute")
    def _stop(conn, cursor, statement, parameters, context, executemany) -> None:
        if (watch := conn.info.pop("lock_watch", None)) is not None:
            watch.stop()

    @sa.event.listens_for(engine, "handle_error")
    def _stop_on_error(context) -> None:
        if context.connection is not None:
            if (watch := context.connection.info.pop("lock_watch", None)) is not None:
                watch.stop()


def _backend_pid(dbapi_conn) -> int | None:
    info = getattr(dbapi_conn, "info", None)  # psycopg 3
    if info is not None and hasattr(info, "backend_pid"):
        return info.backend_pid
    getter = getattr(dbapi_conn, "get_backend_pid", None)  # psycopg2
    return getter() if getter else None


class _LockWatch:
    """One statement's lock-wait heartbeat (see watch_lock_waits)."""

    def __init__(self, engine: sa.Engine, wait: LockWait, pid: int, purpose: str):
        self.engine, self.wait, self.pid, self.purpose = engine, wait, pid, purpose
        self.started = time.monotonic()
        self.timer: threading.Timer | None = None
        self.stopped = threading.Event()

    def start(self) -> "_LockWatch":
        self._arm()
        return self

    def stop(self) -> None:
        self.stopped.set()
        if self.timer is not None:
            self.timer.cancel()

    def _arm(self) -> None:
        self.timer = threading.Timer(self.wait.heartbeat_s, self._beat)
        self.timer.daemon = True
        self.timer.start()

    def _beat(self) -> None:
        if self.stopped.is_set():
            return
        try:
            with self.engine.connect() as conn:
                blockers = conn.execute(sa.select(sa.func.pg_blocking_pids(self.pid))).scalar()
        except Exception:  # a heartbeat never breaks the statement it watches
            blockers = None
        if blockers and not self.stopped.is_set():
            waited = time.monotonic() - self.started
            log.warning("waiting for a database lock (held by PID %s)%s: %s",
                        ", ".join(map(str, blockers)),
                        f" {self.purpose}" if self.purpose else "", self.wait.limit_text(waited))
        if not self.stopped.is_set():
            self._arm()


def open_database(
    db: str, *, write: bool = False, lock_timeout_s: float | None = DEFAULT_LOCK_TIMEOUT_S,
    lock_heartbeat_s: float = DEFAULT_LOCK_HEARTBEAT_S,
) -> sa.Engine:
    """Open ``db`` and check it holds panic-tda's tables.

    Args:
        db: a SQLite file path or a SQLAlchemy URL.
        write: open for writing (the file must be writable).
        lock_timeout_s: how long to wait for another process's lock, seconds, before
            DatabaseLocked is raised; None waits as long as it takes (SQLite: retried
            attempts with a heartbeat; PostgreSQL: the session's ``lock_timeout``).
        lock_heartbeat_s: seconds between "waiting for the lock" log lines (SQLite).
    """
    target = parse_target(db)
    wait = LockWait(lock_timeout_s, lock_heartbeat_s)
    if target.sqlite_path is not None:
        check_sqlite_file(target.sqlite_path, write=write)
        wait = LockWait(lock_timeout_s, lock_heartbeat_s, target.sqlite_path)
        engine = _sqlite_engine(target.sqlite_path, write=write, wait=wait)
    else:
        try:
            if target.url.get_backend_name() == "postgresql":
                engine = _postgres_engine(target, wait)
            else:
                engine = sa.create_engine(target.url)
        except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as exc:
            hint = ""
            if isinstance(exc, ImportError) and target.url.get_backend_name() == "postgresql":
                hint = "; install the PostgreSQL driver: pip install 'gpu_cluster[postgres]'"
            raise DatabaseError(f"cannot use database URL {target.label}: {exc}{hint}") from None
    try:
        check_schema(engine)
    except (sa.exc.DBAPIError, sqlite3.Error) as exc:
        engine.dispose()
        if target.sqlite_path is not None and not write and _wal_folder_unwritable(target.sqlite_path):
            return _open_immutable(target.sqlite_path, wait)
        raise DatabaseError(f"cannot read {target.label}: {getattr(exc, 'orig', exc)}") from None
    return engine


def _wal_folder_unwritable(path: Path) -> bool:
    """A WAL-mode file in a folder we cannot write: SQLite cannot create its -shm there."""
    with open(path, "rb") as fh:
        header = fh.read(20)
    return header[18:20] == b"\x02\x02" and not os.access(path.parent or Path("."), os.W_OK)


def _open_immutable(path: Path, wait: LockWait) -> sa.Engine:
    """Read a WAL file in an unwritable folder as immutable, when that loses nothing.

    With no (non-empty) ``-wal`` file every committed change is in the main file, and
    no writer is active (it would need that folder too), so reading it as immutable
    is exact. Otherwise a clear error.
    """
    wal = path.with_name(path.name + "-wal")
    if wal.exists() and wal.stat().st_size > 0:
        raise DatabaseError(
            f"cannot read {path}: it is in WAL mode with changes still in {wal.name}, and its "
            f"folder is not writable, so SQLite cannot open it; ask its owner to checkpoint it "
            f"(sqlite3 {path} 'PRAGMA wal_checkpoint(TRUNCATE)') or copy it somewhere writable")
    engine = _sqlite_engine(path, write=False, wait=wait, immutable=True)
    try:
        check_schema(engine)
    except (sa.exc.DBAPIError, sqlite3.Error) as exc:
        engine.dispose()
        raise DatabaseError(f"cannot read {path}: {getattr(exc, 'orig', exc)}") from None
    log.warning("%s: its folder is not writable, so it is read as an immutable file (it is in "
             "WAL mode and has no pending -wal changes)", path)
    return engine


def write_connection(engine: sa.Engine, purpose: str = "") -> sa.Connection:
    """A connection whose transactions take the write lock at BEGIN (SQLite).

    ``purpose`` ("to store Nomic's result") is said by the lock-wait heartbeat.
    """
    return engine.connect().execution_options(sqlite_write=True, lock_purpose=purpose)


SNAPSHOT_ID = re.compile(r"^[0-9A-Fa-f-]+$")  # what pg_export_snapshot() returns
# A utility statement takes no parameters: the id is rendered as a quoted literal.
SET_SNAPSHOT = sa.text("SET TRANSACTION SNAPSHOT :snapshot_id").bindparams(
    sa.bindparam("snapshot_id", type_=sa.String, literal_execute=True))


class Snapshot:
    """One consistent state of the database for a run's survey and every later read.

    PostgreSQL: a connection of its own opens a REPEATABLE READ transaction, exports
    its snapshot (``pg_export_snapshot``) and stays open, idle and touching no table
    (so it holds no lock that could block panic-tda), until :meth:`close`; every
    :meth:`reading` transaction imports that snapshot, so no row committed after the
    survey is seen, however long the run. SQLite: each :meth:`reading` is one short
    read transaction (an open one would block writers in rollback-journal mode and
    stop checkpoints in WAL mode); the survey records the largest ``rowid`` it saw and
    every read stays below it (see selection.py). Other databases: plain transactions.
    """

    def __init__(self, engine: sa.Engine):
        self.engine = engine
        self._holder: sa.Connection | None = None
        self._id: str | None = None

    @property
    def exported(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    def _snapshot_id(self) -> str:
        if self._id is None:
            holder = self.engine.connect().execution_options(isolation_level="REPEATABLE READ")
            self._holder = holder
            self._release = weakref.finalize(self, holder.close)  # also if never closed
            holder.begin()
            # A server-wide idle timeout must not end the run's snapshot between reads.
            holder.execute(sa.select(sa.func.set_config("idle_in_transaction_session_timeout",
                                                        "0", False)))
            snapshot_id = holder.execute(sa.select(sa.func.pg_export_snapshot())).scalar_one()
            if not SNAPSHOT_ID.match(snapshot_id):
                raise DatabaseError(f"unexpected snapshot id from the server: {snapshot_id!r}")
            self._id = snapshot_id
        return self._id

    @contextmanager
    def reading(self) -> Iterator[sa.Connection]:
        """A connection inside a read transaction that sees the snapshot; the
        transaction ends (rolled back: it wrote nothing) when the block does."""
        if not self.exported:
            with self.engine.connect() as conn, conn.begin():
                yield conn
            return
        snapshot_id = self._snapshot_id()
        with self.engine.connect() as conn:
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin() as tx:
                conn.execute(SET_SNAPSHOT, {"snapshot_id": snapshot_id})
                yield conn
                tx.rollback()

    def close(self) -> None:
        """End the exporting transaction (PostgreSQL); the snapshot is gone after this."""
        if self._holder is not None:
            try:
                self._release()
            finally:
                self._holder, self._id = None, None

    def __enter__(self) -> "Snapshot":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def failure_reason(orig: BaseException) -> tuple[str, str]:
    """(what went wrong, what to do) for a driver error: full disk, lock, or other."""
    code = (getattr(orig, "sqlite_errorcode", None) or 0) & 0xFF  # primary result code
    if code == sqlite3.SQLITE_FULL or getattr(orig, "sqlstate", None) == PG_DISK_FULL:
        return "database or disk is full", "free some space (or raise the quota) and rerun"
    if code == sqlite3.SQLITE_BUSY or getattr(orig, "sqlstate", None) == PG_LOCK_NOT_AVAILABLE:
        return "the database stayed locked by another process", "rerun later"
    return f"{type(orig).__name__}: {orig}", "see the database's message"


@contextmanager
def database_errors(doing: str, consequence: str = "") -> Iterator[None]:
    """Turn a lock timeout or a driver error while ``doing`` into one clear DatabaseError.

    ``doing`` completes "while ...", e.g. "writing Nomic's results"; ``consequence``
    says what the failure left behind. Transactions opened inside roll back first.
    """
    try:
        yield
    except DatabaseLocked as exc:
        raise DatabaseLocked(exc.waited_s, f"while {doing}{consequence}") from None
    except (sa.exc.DBAPIError, sqlite3.Error) as exc:  # sqlite3's own: raised in our BEGIN
        why, todo = failure_reason(getattr(exc, "orig", exc))
        raise DatabaseError(f"{why} while {doing}{consequence}; {todo}") from None
