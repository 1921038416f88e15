"""The read path on PostgreSQL: the project's reader against raw scans of the same column.

Creates a database on the server of ``--url`` (which must allow CREATE DATABASE) with
panic-tda's own PostgreSQL schema (the pg_dump copy in tests/data), fills one model with
``--rows`` random 768-d float32 vectors (one TEXT invocation each), and reads them back
at factor 1 three ways, each decoding into one preallocated float32 array:

* ``library``: a run's read stage, ``load_vectors`` in the snapshot its survey was
  taken in (SQLAlchemy, ids, the length filter, the finite/zero checks; binary rows);
  opening the database and the survey are timed apart;
* ``cursor`` / ``cursor_binary``: a psycopg server-side cursor over ``SELECT vector``,
  ``fetchmany``, rows in the text format (psycopg's default: bytea hex-encoded) or the
  binary one (what the library asks for);
* ``copy``: ``COPY (SELECT vector ...) TO STDOUT (FORMAT binary)``, rows read with
  psycopg's binary COPY reader.

Runs alternate and the best of ``--repeats`` counts. Writes ``OUT/pg_readpath.json``
(default ``out/``, git-ignored) and prints one line per path; drops the database after.

    python benchmarks/pg_readpath.py --url 'postgresql+psycopg://postgres@/postgres?host=/tmp/sock&port=5432'
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from pathlib import Path

import numpy as np
import psycopg
import sqlalchemy as sa

from gpu_cluster.database import Snapshot, open_database
from gpu_cluster.loading import load_vectors
from gpu_cluster.selection import survey_embeddings

DDL = Path(__file__).resolve().parents[1] / "tests" / "data" / "panic_tda_postgres_ddl.sql"
MODEL, DIM, DBNAME = "Bench", 768, "gpu_cluster_pg_readpath"
RAW_SQL = "SELECT vector FROM embedding WHERE embedding_model = 'Bench'"


def connect_kw(url: sa.URL, dbname: str) -> dict:
    host = url.query.get("host") or url.host
    return {"host": host, "port": int(url.query.get("port") or url.port or 5432),
            "user": url.username, "password": url.password, "dbname": dbname}


def create_and_fill(url: sa.URL, rows: int, seed: int = 0) -> None:
    """A fresh database with panic-tda's schema and ``rows`` embeddings of MODEL."""
    with psycopg.connect(**connect_kw(url, url.database or "postgres"), autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {DBNAME}")
        admin.execute(f"CREATE DATABASE {DBNAME}")
    rng = np.random.default_rng(seed)
    with psycopg.connect(**connect_kw(url, DBNAME)) as conn:
        conn.execute(DDL.read_text())
        run_id = uuid.uuid4()
        conn.execute("INSERT INTO run VALUES (%s, %s, -1, %s, 'bench', NULL)",
                     (run_id, '["SDXLTurbo", "Moondream"]', 2 * rows))
        inv_ids = [uuid.uuid4() for _ in range(rows)]
        with conn.cursor().copy("COPY invocation (id, model, type, seed, run_id, "
                                "sequence_number, output_text) FROM STDIN") as copy:
            for k, inv in enumerate(inv_ids):
                copy.write_row((inv, "Moondream", "TEXT", -1, run_id, 2 * k + 1, f"text {k}"))
        with conn.cursor().copy("COPY embedding (id, invocation_id, embedding_model, vector) "
                                "FROM STDIN") as copy:
            for start in range(0, rows, 10_000):
                block = rng.standard_normal((min(10_000, rows - start), DIM)).astype("<f4")
                for k, vec in enumerate(block):
                    copy.write_row((uuid.uuid4(), inv_ids[start + k], MODEL, vec.tobytes()))
        conn.commit()
    with psycopg.connect(**connect_kw(url, DBNAME), autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE embedding")


def library_read(db_url: str, batch_size: int, survey_s: list[float]) -> int:
    """The read stage of a run: ``load_vectors`` in the run's snapshot. Opening the
    database and the survey come before it (their seconds go to ``survey_s``)."""
    start = time.perf_counter()
    engine = open_database(db_url)
    try:
        with Snapshot(engine) as snap:
            with snap.reading() as conn:
                sel = survey_embeddings(conn, [MODEL])[MODEL].selection(1)
            survey_s.append(time.perf_counter() - start)
            with snap.reading() as conn:
                return load_vectors(conn, sel, batch_size=batch_size).n
    finally:
        engine.dispose()


def cursor_read(kw: dict, n: int, batch_size: int, binary: bool = False) -> int:
    out, pos = np.empty((n, DIM), np.float32), 0
    with psycopg.connect(**kw) as conn, conn.cursor(name="scan", binary=binary) as cur:
        cur.itersize = batch_size
        cur.execute(RAW_SQL)
        while rows := cur.fetchmany(batch_size):
            out[pos : pos + len(rows)] = np.frombuffer(b"".join(r[0] for r in rows), "<f4").reshape(-1, DIM)
            pos += len(rows)
    return pos


def copy_read(kw: dict, n: int, batch_size: int) -> int:
    out, pos, blobs = np.empty((n, DIM), np.float32), 0, []
    with psycopg.connect(**kw) as conn, conn.cursor() as cur:
        with cur.copy(f"COPY ({RAW_SQL}) TO STDOUT (FORMAT binary)") as copy:
            copy.set_types(["bytea"])
            for (blob,) in copy.rows():
                blobs.append(blob)
                if len(blobs) == batch_size:
                    out[pos : pos + len(blobs)] = np.frombuffer(b"".join(blobs), "<f4").reshape(-1, DIM)
                    pos, blobs = pos + len(blobs), []
    if blobs:
        out[pos : pos + len(blobs)] = np.frombuffer(b"".join(blobs), "<f4").reshape(-1, DIM)
        pos += len(blobs)
    return pos


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", required=True, help="SQLAlchemy URL of a database on the server")
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--batch-size", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="out")
    args = ap.parse_args()
    url = sa.make_url(args.url)
    create_and_fill(url, args.rows)
    kw = connect_kw(url, DBNAME)
    db_url = url.set(database=DBNAME).render_as_string(hide_password=False)
    survey_s: list[float] = []  # open + survey, taken out of the library's time
    paths = {"library": lambda: library_read(db_url, args.batch_size, survey_s),
             "cursor": lambda: cursor_read(kw, args.rows, args.batch_size),
             "cursor_binary": lambda: cursor_read(kw, args.rows, args.batch_size, binary=True),
             "copy": lambda: copy_read(kw, args.rows, args.batch_size)}
    seconds: dict[str, list[float]] = {name: [] for name in paths}
    try:
        for _ in range(args.repeats):
            for name, read in paths.items():
                start, before = time.perf_counter(), sum(survey_s)
                assert read() == args.rows, name
                seconds[name].append(time.perf_counter() - start - (sum(survey_s) - before))
    finally:
        with psycopg.connect(**connect_kw(url, url.database or "postgres"), autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {DBNAME}")
    with psycopg.connect(**connect_kw(url, url.database or "postgres")) as conn:
        server = conn.execute("SHOW server_version").fetchone()[0]
    result = {"server": server, "psycopg": psycopg.__version__, "rows": args.rows, "dim": DIM,
              "batch_size": args.batch_size, "raw_sql": RAW_SQL, "paths": {},
              "library_open_and_survey_s": survey_s}
    for name, secs in seconds.items():
        best = min(secs)
        result["paths"][name] = {"seconds": secs, "best_s": best, "rows_per_s": args.rows / best,
                                 "mb_per_s": args.rows * DIM * 4 / best / 1e6}
        print(f"{name:13s} best {best:6.2f} s  {args.rows / best:10,.0f} rows/s  "
              f"{args.rows * DIM * 4 / best / 1e6:7.1f} MB/s")
    lib = result["paths"]["library"]["rows_per_s"]
    result["ratio_library_vs_copy"] = lib / result["paths"]["copy"]["rows_per_s"]
    result["ratio_library_vs_cursor"] = lib / result["paths"]["cursor"]["rows_per_s"]
    result["ratio_library_vs_cursor_binary"] = lib / result["paths"]["cursor_binary"]["rows_per_s"]
    print(f"library / copy = {result['ratio_library_vs_copy']:.2f}, library / cursor = "
          f"{result['ratio_library_vs_cursor']:.2f}, library / binary cursor = "
          f"{result['ratio_library_vs_cursor_binary']:.2f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pg_readpath.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
