"""PostgreSQL for the tests: a throwaway server, and panic-tda's schema filled with rows.

The server: ``GPU_CLUSTER_TEST_PG_URL`` when set (a server the tests may create
databases on); otherwise a private one started with the machine's ``initdb``/``pg_ctl``
on a Unix socket in a temp dir, as the ``postgres`` user when the tests run as root
(initdb refuses root). pytest-postgresql's own process fixture cannot do that part
here: it runs ``pg_ctl initdb`` as the calling user and keeps the data directory under
pytest's private (0700) temp dir, out of the ``postgres`` user's reach. Its database
janitor does the rest: a template database built from panic-tda's DDL
(``tests/data/panic_tda_postgres_ddl.sql``, a copy of the pg_dump of what panic-tda's
``create_all`` makes) plus rows, cloned into a fresh database for each test.

The rows are copied from a SQLite file built by ``panic_like.py`` and converted as
panic-tda's ORM would store them on PostgreSQL: 32-hex ids become ``uuid``, DATETIME
text becomes ``timestamp``, ``invocation.type`` the ``invocationtype`` ENUM.
"""

from __future__ import annotations

import datetime as dt
import glob
import os
import shutil
import sqlite3
import subprocess
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import sqlalchemy as sa

PG_DDL = Path(__file__).parent / "data" / "panic_tda_postgres_ddl.sql"
TABLES = ("experimentconfig", "run", "invocation", "embedding", "clusteringresult",
          "embeddingcluster")  # in foreign-key order
TIMESTAMPS = {"created_at", "started_at", "completed_at"}


def pg_bin(name: str) -> str | None:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))), None)
    return found


def as_postgres_user(cmd: list[str]) -> list[str]:
    if os.geteuid() == 0:  # initdb refuses to run as root
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


@contextmanager
def throwaway_server(port: int = 54329) -> Iterator[dict]:
    """Start a private PostgreSQL server; yields libpq connection parameters.

    Raises LookupError when no server binaries (or, as root, no ``postgres`` user) are
    found. Durability is off (fsync, full-page writes): the data dies with the session.
    """
    initdb, pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        raise LookupError("PostgreSQL server binaries (initdb, pg_ctl) not found")
    # Not under pytest's tmp dir: the postgres user must be able to reach it.
    root = Path(tempfile.mkdtemp(prefix="gpu-cluster-pg-"))
    data, sock = root / "data", root / "sock"
    data.mkdir(), sock.mkdir()
    try:
        if os.geteuid() == 0:  # LookupError without a postgres user: the tests skip
            for d in (root, data, sock):
                shutil.chown(d, "postgres")
        subprocess.run(as_postgres_user([initdb, "-D", str(data), "-A", "trust", "-U", "postgres",
                                         "-E", "UTF8", "--locale", "C.UTF-8"]),
                       check=True, capture_output=True)
        opts = (f"-k {sock} -p {port} -c listen_addresses='' -c fsync=off "
                f"-c full_page_writes=off -c synchronous_commit=off")
        subprocess.run(as_postgres_user([pg_ctl, "-D", str(data), "-o", opts, "-l",
                                         str(root / "log"), "-w", "start"]),
                       check=True, capture_output=True)
        yield {"host": str(sock), "port": port, "user": "postgres", "password": None}
    finally:
        subprocess.run(as_postgres_user([pg_ctl, "-D", str(data), "-m", "immediate", "stop"]),
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def server_from_url(url: str) -> dict:
    """libpq parameters of ``GPU_CLUSTER_TEST_PG_URL`` (host may be a socket directory)."""
    u = sa.make_url(url)
    return {"host": u.query.get("host") or u.host or "localhost", "port": u.port or 5432,
            "user": u.username or "postgres", "password": u.password}


def sqlalchemy_url(server: dict, dbname: str, driver: str = "psycopg") -> str:
    """A ``postgresql+DRIVER://`` URL for ``dbname`` on ``server``."""
    url = sa.URL.create(f"postgresql+{driver}", username=server["user"],
                        password=server["password"], database=dbname,
                        query={"host": server["host"], "port": str(server["port"])})
    return url.render_as_string(hide_password=False)


def other_types_ddl() -> str:
    """panic-tda's PostgreSQL DDL with the other column types a database may have:
    ``character(32)`` hex ids, a ``varchar`` type, ``jsonb``, ``timestamptz``."""
    ddl = PG_DDL.read_text()
    ddl = ddl[ddl.index("CREATE TABLE"):]  # no CREATE TYPE
    return (ddl.replace(" uuid", " character(32)").replace("public.invocationtype",
                                                           "character varying(5)")
            .replace(" json ", " jsonb ").replace("timestamp without time zone",
                                                  "timestamp with time zone"))


def _convert(column: str, value, hex_ids: bool = False):
    """A SQLite value as panic-tda's ORM stores it on PostgreSQL."""
    if value is None:
        return None
    if column == "id" or column.endswith("_id") and column != "cluster_id":
        return value if hex_ids else uuid.UUID(hex=value)
    if column in TIMESTAMPS:
        return dt.datetime.fromisoformat(value)
    return value


def copy_sqlite_rows(sqlite_path, pg_conn, *, hex_ids: bool = False) -> dict[str, int]:
    """Copy every panic-tda table's rows from a SQLite file into ``pg_conn`` (psycopg 3).

    ``hex_ids`` keeps ids as 32 hex digits (for ``character(32)`` columns). Returns rows
    copied per table. The caller commits.
    """
    counts = {}
    src = sqlite3.connect(str(sqlite_path))
    try:
        for table in TABLES:
            cur = src.execute(f"SELECT * FROM {table}")
            columns = [d[0] for d in cur.description]
            with pg_conn.cursor() as pg, pg.copy(
                    f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                n = 0
                for row in cur:
                    copy.write_row([_convert(c, v, hex_ids) for c, v in zip(columns, row)])
                    n += 1
            counts[table] = n
    finally:
        src.close()
    return counts


# --- extra rows on top of panic_like's, and a panic-tda-like writer ---------------------

UNICODE_MODEL = "Modèle Œuvre ünïcode 2"  # spaces and non-ASCII letters
SNAPSHOT_MODEL = "Snapshot"
SNAPSHOT_ROWS, SNAPSHOT_ZERO = 580, 50  # the numbers: n must be 530


def add_extra_models(sqlite_path) -> None:
    """Add two models to a panic_like SQLite file (raw sqlite3, uuid4 ids).

    * ``UNICODE_MODEL``: a copy of every Nomic vector under new ids;
    * ``SNAPSHOT_MODEL``: 580 rows on the first 580 TEXT invocations (by id), copies
      of Nomic's vectors except 50 all-zero ones spread evenly over them.
    """
    with sqlite3.connect(str(sqlite_path)) as conn:
        nomic = conn.execute(
            "SELECT e.invocation_id, e.vector, e.started_at, e.completed_at FROM embedding e "
            "JOIN invocation i ON i.id = e.invocation_id WHERE e.embedding_model = 'Nomic' "
            "ORDER BY i.id").fetchall()
        rows = [(uuid.uuid4().hex, s, c, inv, UNICODE_MODEL, v) for inv, v, s, c in nomic]
        zero_at = set(range(5, SNAPSHOT_ROWS, SNAPSHOT_ROWS // SNAPSHOT_ZERO)[:SNAPSHOT_ZERO])
        assert len(zero_at) == SNAPSHOT_ZERO
        zero = bytes(len(nomic[0][1]))
        rows += [(uuid.uuid4().hex, s, c, inv, SNAPSHOT_MODEL, zero if k in zero_at else v)
                 for k, (inv, v, s, c) in enumerate(nomic[:SNAPSHOT_ROWS])]
        conn.executemany("INSERT INTO embedding VALUES (?, ?, ?, ?, ?, ?)", rows)


class PanicWriter:
    """Inserts whole runs as panic-tda does (run, IMAGE/TEXT invocations, embeddings of
    the TEXT ones for ``model``), each committed at once, on SQLite or PostgreSQL.

    Every other embedding is all-zero, so a reader that took them would also miscount.
    """

    def __init__(self, conn, *, postgres: bool, model: str = SNAPSHOT_MODEL, dim: int = 768):
        self.conn, self.postgres, self.model, self.dim = conn, postgres, model, dim
        self.runs = self.embeddings = 0

    def _id(self):
        return uuid.uuid4() if self.postgres else uuid.uuid4().hex

    def _when(self):
        now = dt.datetime(2025, 3, 2, 12, 0, 0)
        return now if self.postgres else now.strftime("%Y-%m-%d %H:%M:%S.%f")

    def add_run(self, max_length: int = 6) -> None:
        mark = "%s" if self.postgres else "?"
        values = lambda k: ", ".join([mark] * k)  # noqa: E731
        cur = self.conn.cursor()
        run_id, previous = self._id(), None
        cur.execute(f"INSERT INTO run VALUES ({values(6)})",
                    (run_id, '["SDXLTurbo", "Moondream"]', -1, max_length, "a late prompt", None))
        for seq in range(max_length):
            inv_id, text = self._id(), seq % 2 == 1
            cur.execute(f"INSERT INTO invocation VALUES ({values(11)})",
                        (inv_id, self._when(), self._when(), "Moondream" if text else "SDXLTurbo",
                         "TEXT" if text else "IMAGE", -1, run_id, seq, previous,
                         f"late caption {self.runs}-{seq}" if text else None,
                         None if text else b"RIFF\x0c\x00\x00\x00WEBPVP8L"))
            previous = inv_id
            if text:
                vec = np.zeros(self.dim, "<f4") if self.embeddings % 2 else np.ones(self.dim, "<f4")
                cur.execute(f"INSERT INTO embedding VALUES ({values(6)})",
                            (self._id(), self._when(), self._when(), inv_id, self.model,
                             vec.tobytes()))
                self.embeddings += 1
        self.conn.commit()
        self.runs += 1
