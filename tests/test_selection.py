"""Layout-aware downsampling: exact counts against panic-tda's own rule."""

import sqlite3

import numpy as np
import pytest

from gpu_cluster.database import open_database
from gpu_cluster.ids import Uuid7
from gpu_cluster.selection import lattice, survey_embeddings

from helpers import raw

PANIC_RULE = """
SELECT count(*) FROM embedding e JOIN invocation i ON i.id = e.invocation_id
WHERE e.embedding_model = ? AND i.type = 'TEXT' AND ((i.sequence_number - 1) / 2) % ? = 0
"""


def surveys(path):
    engine = open_database(str(path))
    with engine.connect() as conn:
        return survey_embeddings(conn)


@pytest.mark.parametrize("factor", [1, 10, 100, 1000])
def test_selected_counts_equal_panic_tda_rule(demo_template, factor):
    found = surveys(demo_template)
    assert set(found) == {"Dummy", "Nomic", "STSBMpnet", "STSBRoberta"}
    for model, s in found.items():
        expected = raw(demo_template, PANIC_RULE, model, factor)[0][0]
        assert s.selection(factor).expected_rows == expected, model
    # The trap the original tool fell into: on this layout the naive rule selects nothing.
    naive = raw(demo_template, "SELECT count(*) FROM embedding e JOIN invocation i "
                "ON i.id = e.invocation_id WHERE i.sequence_number % 10 = 0")
    assert naive == [(0,)]


def test_layout_is_detected_not_assumed(demo_template):
    s = surveys(demo_template)["STSBMpnet"]
    assert (s.layout.types, s.layout.offset, s.layout.stride) == (("TEXT",), 1, 2)
    assert s.dim == 768 and s.total == 3000 and s.orphans == 0
    # A tiny model inherits the layout the large ones reveal (its 5 rows sit on 1..9).
    assert surveys(demo_template)["Dummy"].layout == s.layout


def test_model_embedding_both_types_gets_stride_one(demo_db):
    """A model that embeds IMAGE and TEXT invocations: every position carries one."""
    ids = Uuid7()
    with sqlite3.connect(demo_db) as conn:
        invs = conn.execute("SELECT id FROM invocation ORDER BY rowid LIMIT 40").fetchall()
        conn.executemany(
            "INSERT INTO embedding (id, invocation_id, embedding_model, vector) VALUES (?,?,?,?)",
            [(ids.hex(), i, "JinaClip", np.ones(8, np.float32).tobytes()) for (i,) in invs],
        )
    s = surveys(demo_db)["JinaClip"]
    assert s.layout.types == ("IMAGE", "TEXT") and s.layout.stride == 1 and s.layout.offset == 0
    assert s.selection(1).expected_rows == 40
    assert s.selection(2).expected_rows == 20  # every other position of each run


def test_bad_rows_are_counted_at_selection(demo_db):
    with sqlite3.connect(demo_db) as conn:
        first = conn.execute(
            "SELECT e.id FROM embedding e JOIN invocation i ON i.id = e.invocation_id "
            "WHERE e.embedding_model='Nomic' AND i.sequence_number = 1 LIMIT 3").fetchall()
        conn.execute("UPDATE embedding SET vector = x'0000' WHERE id = ?", first[0])
        conn.execute("UPDATE embedding SET vector = NULL WHERE id = ?", first[1])
        conn.execute("UPDATE embedding SET invocation_id = 'f' || substr(invocation_id, 2) "
                     "WHERE id = ?", first[2])
    s = surveys(demo_db)["Nomic"]
    assert (s.total, s.orphans, s.null_vectors) == (3000, 1, 1)
    sel = s.selection(10)
    assert (sel.wrong_length, sel.null_vectors) == (1, 1)
    assert sel.expected_rows == raw(demo_db, PANIC_RULE, "Nomic", 10)[0][0] - 2


@pytest.mark.parametrize(
    "seqs, expected",
    [({1, 3, 5, 9}, (1, 2)), ({4}, (4, 1)), ({0, 3, 6}, (0, 3)), ({2, 3}, (2, 1))],
)
def test_lattice(seqs, expected):
    assert lattice(seqs) == expected


def test_sqlite_survey_groups_lengths_not_vectors(demo_template):
    """Flattened into the GROUP BY, SQLite's sorter carried every row's vector blob to take
    its length (4.4x slower on a 3.3M-embedding file); the per-row select must stay a
    separate co-routine, whose rows hold the length only."""
    from sqlalchemy.dialects import sqlite as sqlite_dialect

    from gpu_cluster.selection import survey_query

    sql = str(survey_query("sqlite").compile(dialect=sqlite_dialect.dialect(),
                                             compile_kwargs={"literal_binds": True}))
    plan = raw(demo_template, "EXPLAIN QUERY PLAN " + sql)
    details = [row[-1] for row in plan]
    assert any(d.startswith("CO-ROUTINE") for d in details), details
    # ...and it counts the same as the plain grouping.
    plain = raw(demo_template, "SELECT e.embedding_model, i.type, i.sequence_number, "
                "length(e.vector), count(*) FROM embedding e LEFT JOIN invocation i "
                "ON i.id = e.invocation_id GROUP BY 1, 2, 3, 4")
    assert sorted(raw(demo_template, sql)) == sorted(plain)
