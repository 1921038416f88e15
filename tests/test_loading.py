"""Blob codec, streaming load into a preallocated array, bad rows, normalisation."""

import sqlite3

import numpy as np
import pytest

from gpu_cluster.database import open_database
from gpu_cluster.loading import decode_blobs, hex_ids, load_vectors, normalise_rows, usable_rows
from gpu_cluster.selection import survey_embeddings


@pytest.mark.parametrize("seed", range(5))
def test_blob_round_trip(seed):
    rng = np.random.default_rng(seed)
    dim = int(rng.integers(1, 1025))
    vecs = rng.standard_normal((int(rng.integers(1, 50)), dim)).astype(np.float32)
    vecs[0, 0] = np.float32(0.1)
    blobs = [np.asarray(v, "<f4").tobytes() for v in vecs]  # panic-tda's encoding
    assert blobs[0][:4] == bytes.fromhex("cdcccc3d")  # 0.1 as stored by panic-tda
    np.testing.assert_array_equal(decode_blobs(blobs, dim), vecs)


def test_usable_rows_flags_nan_inf_and_zero():
    block = np.ones((5, 3), np.float32)
    block[1, 2] = np.nan
    block[2, 0] = np.inf
    block[3] = 0.0
    keep, bad = usable_rows(block)
    assert keep.tolist() == [True, False, False, False, True]
    assert bad == {"non_finite": 2, "zero_vector": 1}


def test_hex_ids_accepts_both_forms():
    out = hex_ids(["06b0516b-54c0-7abb-bf0c-3bfc984b3fff", "06b0516b54c07abbbf0c3bfc984b3fff"])
    assert out.dtype == np.dtype("S32") and out[0] == out[1] == b"06b0516b54c07abbbf0c3bfc984b3fff"


def load(path, model, factor, batch_size=7):
    engine = open_database(str(path))
    with engine.connect() as conn:
        sel = survey_embeddings(conn, [model])[model].selection(factor)
        return sel, load_vectors(conn, sel, batch_size=batch_size)


@pytest.mark.parametrize("factor", [1, 10])
def test_load_matches_raw_rows(demo_db, factor):
    sel, loaded = load(demo_db, "STSBRoberta", factor)
    assert loaded.n == sel.expected_rows and loaded.vectors.dtype == np.float32
    with sqlite3.connect(demo_db) as conn:
        ref = dict(conn.execute(
            "SELECT e.id, e.vector FROM embedding e JOIN invocation i ON i.id = e.invocation_id "
            "WHERE e.embedding_model='STSBRoberta' AND ((i.sequence_number-1)/2) % ? = 0",
            (factor,)))
    assert {i.decode() for i in loaded.ids} == set(ref)
    for k in (0, loaded.n // 2, loaded.n - 1):
        np.testing.assert_array_equal(loaded.vectors[k], np.frombuffer(ref[loaded.ids[k].decode()], "<f4"))


def test_bad_rows_are_skipped_and_counted(demo_db):
    with sqlite3.connect(demo_db) as conn:
        ids = [r[0] for r in conn.execute(
            "SELECT id FROM embedding WHERE embedding_model='Nomic' ORDER BY rowid LIMIT 3")]
        nan = np.ones(768, np.float32)
        nan[5] = np.nan
        conn.execute("UPDATE embedding SET vector=? WHERE id=?", (nan.tobytes(), ids[0]))
        conn.execute("UPDATE embedding SET vector=? WHERE id=?", (np.zeros(768, np.float32).tobytes(), ids[1]))
        conn.execute("UPDATE embedding SET vector=? WHERE id=?", (np.ones(10, np.float32).tobytes(), ids[2]))
    sel, loaded = load(demo_db, "Nomic", 1)
    assert sel.wrong_length == 1
    assert dict(loaded.skipped) == {"non_finite": 1, "zero_vector": 1}
    assert loaded.n == 3000 - 3
    assert not set(ids) & {i.decode() for i in loaded.ids}


def test_rows_beyond_the_survey_are_ignored_and_counted(demo_db):
    engine = open_database(str(demo_db))
    with engine.connect() as conn:
        sel = survey_embeddings(conn, ["Nomic"])["Nomic"].selection(10)
        shrunk = type(sel)(sel.survey, sel.factor, sel.expected_rows - 4, 0, 0)
        loaded = load_vectors(conn, shrunk, batch_size=64)
    assert loaded.n == sel.expected_rows - 4
    assert loaded.skipped["arrived_after_survey"] == 4


def test_rows_read_not_rows_kept_count_against_the_survey(demo_db):
    """Dropped rows still count as read: a view with more rows than the survey counted
    (here the survey is shrunk by 4) never lets a surplus row fill a dropped row's place."""
    with sqlite3.connect(demo_db) as conn:
        first = [r[0] for r in conn.execute(
            "SELECT id FROM embedding WHERE embedding_model='Nomic' ORDER BY rowid LIMIT 3")]
        conn.executemany("UPDATE embedding SET vector=? WHERE id=?",
                         [(np.zeros(768, np.float32).tobytes(), i) for i in first])
    engine = open_database(str(demo_db))
    with engine.connect() as conn:
        survey = survey_embeddings(conn, ["Nomic"])["Nomic"]
        survey.rowid_bound = None  # as if the view were not the survey's
        sel = survey.selection(1)
        shrunk = type(sel)(sel.survey, 1, sel.expected_rows - 4, 0, 0)
        loaded = load_vectors(conn, shrunk, batch_size=16)
    assert dict(loaded.skipped) == {"zero_vector": 3, "arrived_after_survey": 4}
    assert loaded.n == sel.expected_rows - 4 - 3


def test_normalise_rows_in_blocks():
    rng = np.random.default_rng(3)
    x = (rng.random((1000, 16)) * 10).astype(np.float32)
    expected = x / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    normalise_rows(x, block_rows=77)
    np.testing.assert_allclose(x, expected, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, rtol=1e-6)
