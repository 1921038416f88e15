"""The demo database looks like panic-tda's data and is deterministic per seed."""

import sqlite3

import numpy as np

from gpu_cluster.demo import DemoSpec, make_demo_db
from helpers import raw


def dump(path):
    with sqlite3.connect(path) as conn:
        return list(conn.iterdump())


def test_deterministic_per_seed(tmp_path):
    spec = DemoSpec(text_invocations=120, dim=16, seed=5, max_length=20)
    make_demo_db(tmp_path / "a.sqlite", spec)
    make_demo_db(tmp_path / "b.sqlite", spec)
    make_demo_db(tmp_path / "c.sqlite", DemoSpec(text_invocations=120, dim=16, seed=6, max_length=20))
    assert dump(tmp_path / "a.sqlite") == dump(tmp_path / "b.sqlite")
    assert dump(tmp_path / "a.sqlite") != dump(tmp_path / "c.sqlite")


def test_layout_and_vectors(demo_template):
    p = demo_template
    assert raw(p, "PRAGMA journal_mode") == [("wal",)]
    assert raw(p, "SELECT DISTINCT type, sequence_number % 2 FROM invocation ORDER BY 1") == \
        [("IMAGE", 0), ("TEXT", 1)]
    assert raw(p, "SELECT count(*) FROM embedding e JOIN invocation i ON i.id = e.invocation_id "
                  "WHERE i.type != 'TEXT'") == [(0,)]
    assert all(b[:4] == b"RIFF" and b[8:16] == b"WEBPVP8L" for (b,) in raw(
        p, "SELECT output_image_data FROM invocation WHERE type = 'IMAGE' LIMIT 50"))
    assert raw(p, "SELECT count(*) FROM invocation WHERE sequence_number > 0 AND "
                  "input_invocation_id IS NULL") == [(0,)]
    for model, unit in (("Nomic", True), ("Dummy", False)):
        vecs = np.stack([np.frombuffer(v, "<f4") for (v,) in raw(
            p, "SELECT vector FROM embedding WHERE embedding_model = ?", model)])
        norms = np.linalg.norm(vecs, axis=1)
        assert np.allclose(norms, 1.0, atol=1e-5) == unit
    distinct = raw(p, "SELECT count(DISTINCT vector), count(*) FROM embedding WHERE embedding_model='Nomic'")[0]
    assert distinct[0] < 0.7 * distinct[1]  # identical texts embed identically
    ids = [i for (i,) in raw(p, "SELECT id FROM embedding LIMIT 100")]
    assert all(len(i) == 32 and i[12] == "7" and int(i[:9], 16) >= 1_743_589_800 for i in ids)
