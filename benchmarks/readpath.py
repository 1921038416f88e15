"""The read path: the project's reader against a raw ``sqlite3`` scan of the same column.

Both read one model's vectors at factor 1 from the same file and decode them the same
way (one ``frombuffer`` per batch into a preallocated float32 array), so the ratio is
the cost of everything the library adds: SQLAlchemy, the ids, the length filter, the
finite/zero checks. Runs alternate (raw, library, raw, library, ...) and the best time
of each counts, so neither profits alone from a warm page cache.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from urllib.parse import quote

import numpy as np
import sqlalchemy as sa

from gpu_cluster.loading import load_vectors, selection_query
from gpu_cluster.progress import Reporter, Stage
from gpu_cluster.selection import ModelSurvey

RAW_QUERY = "SELECT vector FROM embedding WHERE embedding_model = ?"
DEFAULT_REPEATS = 2


def raw_scan(path: Path, model: str, n: int, dim: int, batch_size: int,
             stage: Stage | None = None) -> int:
    """Decode ``model``'s vectors with plain ``sqlite3`` into an (n, dim) float32 array.

    Blobs that are NULL or not ``4 * dim`` bytes long are passed over, as the library's
    length filter does. Returns the number of rows decoded.
    """
    nbytes = 4 * dim
    out = np.empty((n, dim), dtype=np.float32)
    pos = 0
    conn = sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro", uri=True)
    try:
        cur = conn.execute(RAW_QUERY, (model,))
        while rows := cur.fetchmany(batch_size):
            blobs = [r[0] for r in rows if r[0] is not None and len(r[0]) == nbytes]
            k = min(len(blobs), n - pos)
            out[pos : pos + k] = np.frombuffer(b"".join(blobs[:k]), "<f4").reshape(k, dim)
            pos += k
            if stage is not None:
                stage.advance(len(rows))
    finally:
        conn.close()
    return pos


def library_scan(engine: sa.Engine, survey: ModelSurvey, batch_size: int,
                 stage: Stage | None = None) -> int:
    """The project's reader at factor 1 (``load_vectors``); returns the rows kept."""
    with engine.connect() as conn, conn.begin():
        loaded = load_vectors(conn, survey.selection(1), batch_size=batch_size, device="cpu", stage=stage)
    return loaded.n


def rates(rows: int, dim: int, seconds: list[float]) -> dict:
    best = min(seconds)
    return {"rows": rows, "seconds": seconds, "best_s": best, "rows_per_s": rows / best,
            "mb_per_s": rows * dim * 4 / best / 1e6}


def compare_read_paths(path: Path, engine: sa.Engine, survey: ModelSurvey, *, batch_size: int,
                       reporter: Reporter, repeats: int = DEFAULT_REPEATS) -> dict:
    """Best-of-``repeats`` rows/s of the raw scan and of the library, and their ratio.

    ``ratio`` is library rows/s over raw rows/s: 1.0 means the library adds nothing,
    0.5 that it reads at half the raw speed.
    """
    sel = survey.selection(1)
    n, dim = sel.expected_rows, sel.dim
    raw_s, lib_s = [], []
    raw_rows = lib_rows = 0
    for i in range(repeats):
        with reporter.stage(f"read path: raw sqlite3 scan {i + 1}/{repeats}", total=n) as st:
            start = time.perf_counter()
            raw_rows = raw_scan(path, survey.model, n, dim, batch_size, st)
            raw_s.append(time.perf_counter() - start)
        with reporter.stage(f"read path: load_vectors {i + 1}/{repeats}", total=n) as st:
            start = time.perf_counter()
            lib_rows = library_scan(engine, survey, batch_size, st)
            lib_s.append(time.perf_counter() - start)
    raw, lib = rates(raw_rows, dim, raw_s), rates(lib_rows, dim, lib_s)
    return {
        "status": "ok", "model": survey.model, "factor": 1, "n": n, "dim": dim,
        "batch_size": batch_size, "repeats": repeats,
        "raw_query": RAW_QUERY, "library_query": str(selection_query(sel)).replace("\n", " "),
        "raw": raw, "library": lib, "ratio": lib["rows_per_s"] / raw["rows_per_s"],
    }
