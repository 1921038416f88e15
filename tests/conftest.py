"""Shared fixtures: a small panic-tda-shaped demo database, copied per test; a
panic_like database on SQLite and, from the same rows, on a PostgreSQL server shared by
the session (see pg_support.py)."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import shutil
import sqlite3

import pytest

from gpu_cluster.demo import DemoSpec
from helpers import make_copyable_demo

# 3,000 TEXT invocations -> 3,000 vectors per real model; factor 10 -> 300 per model.
DEMO_SPEC = DemoSpec(text_invocations=3000, dim=768, seed=1, max_length=60)
PANIC_SEED = 20250301


@pytest.fixture(scope="session")
def demo_template(tmp_path_factory):
    return make_copyable_demo(tmp_path_factory.mktemp("demo") / "template.sqlite", DEMO_SPEC)


@pytest.fixture
def demo_db(demo_template, tmp_path):
    """A private copy of the demo database (tests may write to it)."""
    path = tmp_path / "demo.sqlite"
    shutil.copy(demo_template, path)
    return path


# --- PostgreSQL: one server per session, a fresh panic-tda database per test -------------

@pytest.fixture(scope="session")
def panic_sqlite_template(tmp_path_factory):
    """A panic_like SQLite file plus the extra models of pg_support (never written to)."""
    from panic_like import build_panic_like_db
    from pg_support import add_extra_models

    path = tmp_path_factory.mktemp("panic") / "panic.sqlite"
    build_panic_like_db(path, seed=PANIC_SEED)
    add_extra_models(path)
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # a file copy is then complete
    return path


@pytest.fixture
def panic_sqlite(panic_sqlite_template, tmp_path):
    """A private copy of ``panic_sqlite_template``: the rows every PostgreSQL test has."""
    path = tmp_path / "panic.sqlite"
    shutil.copy(panic_sqlite_template, path)
    return path


@pytest.fixture(scope="session")
def pg_server(panic_sqlite_template):
    """A PostgreSQL server with a template database ``panic_tmpl``: panic-tda's DDL (the
    pg_dump copy in tests/data) and the rows of ``panic_sqlite_template``.

    Skips when psycopg, pytest-postgresql or the server binaries are missing.
    """
    pytest.importorskip("psycopg", reason="the postgres extra (psycopg) is not installed")
    janitor_mod = pytest.importorskip("pytest_postgresql.janitor",
                                      reason="pytest-postgresql is not installed")
    from pytest_postgresql.executors import NoopExecutor

    import pg_support

    if os.environ.get("GPU_CLUSTER_TEST_PG_URL"):
        server = contextlib.nullcontext(pg_support.server_from_url(os.environ["GPU_CLUSTER_TEST_PG_URL"]))
    else:
        server = pg_support.throwaway_server()
    try:
        params = server.__enter__()
    except LookupError as exc:
        pytest.skip(str(exc))
    try:
        executor = NoopExecutor(host=params["host"], port=params["port"], user=params["user"],
                                password=params["password"], options="", dbname="panic")
        janitor = janitor_mod.DatabaseJanitor(
            user=executor.user, host=executor.host, port=executor.port,
            password=executor.password, dbname=executor.template_dbname, as_template=True)
        janitor.init()
        janitor.load(pg_support.PG_DDL)
        janitor.load(functools.partial(_copy_rows, panic_sqlite_template))
        yield executor
        janitor.drop()
    finally:
        server.__exit__(None, None, None)


def _copy_rows(sqlite_path, **connect_kw):
    """pytest-postgresql loader: panic_sqlite_template's rows into the template database."""
    import psycopg
    from pg_support import copy_sqlite_rows

    connect_kw.pop("autocommit", None)
    with psycopg.connect(**connect_kw) as conn:
        copy_sqlite_rows(sqlite_path, conn)


if importlib.util.find_spec("pytest_postgresql") is not None:
    from pytest_postgresql import factories

    # A fresh database "panic" cloned from the template for each test (dropped after).
    panic_pg_connection = factories.postgresql("pg_server")
else:
    @pytest.fixture
    def panic_pg_connection():
        pytest.skip("pytest-postgresql is not installed")


@pytest.fixture
def panic_pg(pg_server, panic_pg_connection):
    """SQLAlchemy URL (psycopg 3) of this test's fresh panic-tda database."""
    from pg_support import sqlalchemy_url

    panic_pg_connection.close()  # tests connect through the URL
    server = {"host": pg_server.host, "port": pg_server.port, "user": pg_server.user,
              "password": pg_server.password}
    return sqlalchemy_url(server, pg_server.dbname)
