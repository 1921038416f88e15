"""Core table definitions reproduce panic-tda's DDL; the schema check names what is missing."""

import re
import sqlite3
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from gpu_cluster.database import open_database
from gpu_cluster.errors import DatabaseError, SchemaError
from gpu_cluster.schema import StoredTypes, check_schema, metadata

DDL_FILE = Path(__file__).parent / "data" / "panic_tda_ddl.sql"


def ddl_statements(text: str) -> set[str]:
    body = "\n".join(line for line in text.splitlines() if not line.startswith("--"))
    return {s.strip() for s in body.split(";") if s.strip()}


def test_create_all_matches_panic_tda_ddl(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'x.sqlite'}")
    metadata.create_all(engine)
    with engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT type, sql FROM sqlite_master").all()
    assert len(rows) == 21  # 7 tables, 7 autoindexes, 7 named indexes
    produced = {sql.strip() for _, sql in rows if sql}
    assert produced == ddl_statements(DDL_FILE.read_text())


def test_missing_table_is_named(tmp_path):
    path = tmp_path / "other.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE unrelated (x INTEGER)")
    with pytest.raises(SchemaError, match=r"not a panic-tda database: missing invocation, embedding"):
        open_database(str(path))


def test_missing_column_is_named(demo_db):
    with sqlite3.connect(demo_db) as conn:
        conn.execute("ALTER TABLE embedding DROP COLUMN vector")
    with pytest.raises(SchemaError, match=r"missing embedding\.vector$"):
        open_database(str(demo_db))


def test_schema_check_uses_columns_not_ddl_text(demo_db):
    """An alembic copy-and-rename leaves a quoted table name in sqlite_master; still fine."""
    with sqlite3.connect(demo_db) as conn:
        conn.executescript(
            'CREATE TABLE "_tmp" AS SELECT * FROM clusteringresult;'
            "DROP TABLE clusteringresult;"
            'ALTER TABLE "_tmp" RENAME TO "clusteringresult";'
        )
        sql = conn.execute("SELECT sql FROM sqlite_master WHERE name='clusteringresult'").fetchone()[0]
    assert re.search(r'"clusteringresult"', sql)
    open_database(str(demo_db)).dispose()


def test_sqlite_column_types_are_read_from_the_file(demo_db):
    """panic-tda's SQLite layout: 32-hex text ids, text type, JSON text, naive DATETIME."""
    engine = sa.create_engine(f"sqlite:///{demo_db}")
    assert check_schema(engine) == StoredTypes(native_uuid=False, type_enum=None, jsonb=False,
                                               tz_timestamps=False)


def test_a_vector_column_that_is_not_binary_is_refused(tmp_path):
    path = tmp_path / "text_vectors.sqlite"
    ddl = DDL_FILE.read_text().replace("\tvector BLOB, ", "\tvector VARCHAR, ")
    with sqlite3.connect(path) as conn:
        conn.executescript(ddl)
    with pytest.raises(SchemaError, match=r"embedding\.vector is VARCHAR, not a binary column"):
        open_database(str(path))


def test_missing_postgres_driver_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if not installed
    with pytest.raises(DatabaseError, match=r"install the PostgreSQL driver: pip install "
                                            r"'gpu_cluster\[postgres\]'$"):
        open_database("postgresql+psycopg://user@localhost/panic")
