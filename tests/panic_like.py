"""An independent panic-tda-shaped SQLite builder, for cross-checking ``gpu_cluster``.

Written against the documented panic-tda storage layout only: it uses nothing but
``sqlite3`` and NumPy and imports nothing from ``gpu_cluster`` (whose own generator,
``gpu_cluster/demo.py``, this deliberately does not share code or conventions with).
Ids are ``uuid4().hex`` rather than the project's uuid7, rows are inserted in a
shuffled order so that ``rowid`` order differs from sequence order, and the schema is
panic-tda's DDL text exactly as SQLAlchemy emitted it (tabs and trailing spaces kept).

Layout of what :func:`build_panic_like_db` writes:

* one ``experimentconfig``; runs of several ``max_length`` values, odd and even,
  including runs of length 1 (no TEXT invocation at all) and 2 (exactly one);
* per run, invocations 0..max_length-1 alternating IMAGE (even sequence numbers, a
  small ``RIFF....WEBPVP8L`` blob) and TEXT (odd, a caption; captions repeat on
  purpose, some contain non-ASCII characters);
* embeddings for TEXT invocations only: 768-d float32 unit vectors with cluster
  structure (Gaussian blobs around a few centres, then L2-normalised, plus scattered
  outliers) for the big models; identical texts get bit-identical vectors;
* a tiny model (``Dummy``) with three unnormalised uniform [0, 1) vectors, placed at
  text positions 0, 1 and 3 of one run, so downsample 2 keeps exactly one of them.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import uuid
from pathlib import Path

import numpy as np

# Verbatim `SELECT sql FROM sqlite_master` of panic-tda's create_all (SQLAlchemy's
# output), copied from the schema facts into tests/data (TAB-indented column lines,
# each ending ", " before the newline). Read as text: nothing of gpu_cluster is used.
PANIC_TDA_DDL = "\n".join(
    line for line in (Path(__file__).parent / "data" / "panic_tda_ddl.sql").read_text().splitlines()
    if not line.startswith("--")
)

DIM = 768
NETWORK = ["SDXLTurbo", "Moondream"]  # T2I on even sequence numbers, I2T on odd ones
FULL_MODELS = ("STSBMpnet", "Nomic")  # embed every TEXT invocation
PARTIAL_MODEL = "STSBRoberta"  # embeds every other run, with a few gaps
TINY_MODEL = "Dummy"
DEFAULT_MAX_LENGTHS = (1, 2, 7, 8, 33, 50, 64, 65, 99, 100, 128, 131, 160, 161, 200, 201,
                       250, 251, 300, 301)
EPOCH = dt.datetime(2025, 3, 1, 12, 0, 0)

SUBJECTS = ["a lighthouse", "a red fox", "an old tram", "a café terrace", "a glass teapot",
            "a paper crane", "a snowy ridge", "a brass telescope", "a koi pond",
            "a neon arcade", "a wheat field", "a crumbling arch", "a sleeping dog"]
SETTINGS = ["at dusk", "in heavy rain", "under the stars", "on a foggy morning",
            "in soft light", "seen from above", "in winter", "near the sea"]
PROMPTS = ["a lantern left on a pier", "a crowded night market", "a tiny greenhouse",
           "a whale in the sky", "a piano in the forest", "a crêpe stand in Paris"]
# Fixed captions that trajectories fall into: the source of exact duplicates.
ATTRACTOR_TEXTS = ["a photo of a lighthouse at dusk", "a painting of a red fox in winter",
                   "a close-up of a café terrace in soft light",
                   "a blurry photo of a koi pond", "an image of a neon arcade at night"]


def sqlite_datetime(value: dt.datetime) -> str:
    """panic-tda's DATETIME text: 'YYYY-MM-DD HH:MM:SS.ffffff' (always 6 digits)."""
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")


def fake_webp(rng: np.random.Generator) -> bytes:
    """A small blob shaped like a lossless WEBP file header plus payload."""
    payload = rng.integers(0, 256, size=int(rng.integers(24, 64)), dtype=np.uint8).tobytes()
    body = b"WEBPVP8L" + payload
    return b"RIFF" + len(body).to_bytes(4, "little") + body


def caption(rng: np.random.Generator, history: list[str]) -> str:
    """A TEXT invocation's output; about a third of them repeat an earlier caption."""
    roll = rng.random()
    if history and roll < 0.15:
        return history[int(rng.integers(len(history)))]
    if roll < 0.35:
        return ATTRACTOR_TEXTS[int(rng.integers(len(ATTRACTOR_TEXTS)))]
    subject = SUBJECTS[int(rng.integers(len(SUBJECTS)))]
    setting = SETTINGS[int(rng.integers(len(SETTINGS)))]
    return f"a picture of {subject} {setting}, variant {int(rng.integers(10_000))}"


class VectorMaker:
    """Unit vectors with cluster structure for one model; a text always maps to one vector.

    Each new text is assigned a blob (or, with probability ``outlier_rate``, no blob: a
    uniformly random direction). Points are ``centre + sigma * N(0, I)``, then
    L2-normalised, stored as float32.
    """

    def __init__(self, rng: np.random.Generator, n_centres: int, outlier_rate: float = 0.08):
        centres = rng.standard_normal((n_centres, DIM))
        self.centres = centres / np.linalg.norm(centres, axis=1, keepdims=True)
        self.sigmas = rng.uniform(0.004, 0.014, size=n_centres)
        self.weights = rng.dirichlet(np.full(n_centres, 2.0))
        self.outlier_rate = outlier_rate
        self.rng = rng
        self.by_text: dict[str, np.ndarray] = {}

    def vector(self, text: str) -> np.ndarray:
        if text not in self.by_text:
            if self.rng.random() < self.outlier_rate:
                v = self.rng.standard_normal(DIM)
            else:
                c = int(self.rng.choice(len(self.centres), p=self.weights))
                v = self.centres[c] + self.sigmas[c] * self.rng.standard_normal(DIM)
            self.by_text[text] = (v / np.linalg.norm(v)).astype("<f4")
        return self.by_text[text]


def _insert_shuffled(conn: sqlite3.Connection, rng: np.random.Generator, table: str,
                     rows: list[tuple]) -> None:
    order = rng.permutation(len(rows))
    marks = ", ".join("?" * len(rows[0]))
    conn.executemany(f"INSERT INTO {table} VALUES ({marks})", [rows[i] for i in order])


def build_panic_like_db(path, *, seed: int, runs=DEFAULT_MAX_LENGTHS, n_centres: int = 6,
                        partial_missing: float = 0.05) -> dict:
    """Write a panic-tda-shaped SQLite file at ``path`` (which must not exist).

    Args:
        path: file to create.
        seed: seeds every random choice; the same seed gives the same content (ids aside).
        runs: one ``max_length`` per run.
        n_centres: Gaussian blobs per embedding model.
        partial_missing: fraction of STSBRoberta's eligible TEXT invocations left
            without an embedding.
    Returns:
        {"runs", "invocations", "text_invocations", "embeddings": {model: rows},
         "models": the big models, "tiny_model": name, "max_lengths": list}.
    """
    rng = np.random.default_rng(seed)
    conn = sqlite3.connect(str(path))
    try:
        conn.executescript(PANIC_TDA_DDL)
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        assert mode == "wal", mode
        counts = _fill(conn, rng, list(runs), n_centres, partial_missing)
        conn.commit()
    finally:
        conn.close()
    return counts


def _fill(conn, rng, max_lengths, n_centres, partial_missing) -> dict:
    experiment_id = uuid.uuid4().hex
    models = [*FULL_MODELS, PARTIAL_MODEL]
    conn.execute(
        "INSERT INTO experimentconfig VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (experiment_id, json.dumps([NETWORK]), json.dumps([-1] * len(max_lengths)),
         json.dumps(PROMPTS), json.dumps([*models, TINY_MODEL]), max(max_lengths),
         sqlite_datetime(EPOCH), sqlite_datetime(EPOCH + dt.timedelta(hours=5))),
    )
    makers = {m: VectorMaker(rng, n_centres) for m in models}
    run_rows, inv_rows, emb_rows = [], [], []
    emb_counts = dict.fromkeys([*models, TINY_MODEL], 0)
    clock = EPOCH
    tiny_run = int(np.argmax(max_lengths))  # the longest run carries the tiny model
    for r, max_length in enumerate(max_lengths):
        run_id = uuid.uuid4().hex
        prompt = PROMPTS[r % len(PROMPTS)]
        run_rows.append((run_id, json.dumps(NETWORK), -1, max_length, prompt, experiment_id))
        history: list[str] = []
        previous = None
        for seq in range(max_length):
            inv_id = uuid.uuid4().hex
            start, clock = clock, clock + dt.timedelta(microseconds=int(rng.integers(1, 3_000_000)))
            is_text = seq % 2 == 1
            text = caption(rng, history) if is_text else None
            if text is not None:
                history.append(text)
            inv_rows.append((inv_id, sqlite_datetime(start), sqlite_datetime(clock),
                             NETWORK[seq % 2], "TEXT" if is_text else "IMAGE", -1, run_id, seq,
                             previous, text, None if is_text else fake_webp(rng)))
            previous = inv_id
            if not is_text:
                continue
            for m in models:
                if m == PARTIAL_MODEL and (r % 2 == 1 or rng.random() < partial_missing):
                    continue
                emb_rows.append(_embedding_row(inv_id, m, makers[m].vector(text), clock))
                emb_counts[m] += 1
            if r == tiny_run and (seq - 1) // 2 in (0, 1, 3):
                vec = rng.random(DIM).astype("<f4")  # Dummy: uniform [0, 1), not normalised
                emb_rows.append(_embedding_row(inv_id, TINY_MODEL, vec, clock))
                emb_counts[TINY_MODEL] += 1
    _insert_shuffled(conn, rng, "run", run_rows)
    _insert_shuffled(conn, rng, "invocation", inv_rows)
    _insert_shuffled(conn, rng, "embedding", emb_rows)
    return {
        "runs": len(run_rows),
        "invocations": len(inv_rows),
        "text_invocations": sum(row[4] == "TEXT" for row in inv_rows),
        "embeddings": emb_counts,
        "models": models,
        "tiny_model": TINY_MODEL,
        "max_lengths": list(max_lengths),
    }


def _embedding_row(invocation_id: str, model: str, vector: np.ndarray, when: dt.datetime) -> tuple:
    done = when + dt.timedelta(milliseconds=40)
    return (uuid.uuid4().hex, sqlite_datetime(when), sqlite_datetime(done), invocation_id,
            model, np.asarray(vector, dtype="<f4").tobytes())
