"""Stream the selected vectors from SQL into one preallocated float32 array.

Rows arrive in batches (server-side streaming where the driver has it); each batch is
decoded with one ``frombuffer`` call, checked, and copied into its slot of the output.
Only the embedding id and the vector are selected, so image blobs are never read, and
no per-row Python object outlives its batch.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
import numpy as np
import sqlalchemy as sa

from .database import BINARY_RESULTS
from .progress import Stage
from .schema import embedding
from .selection import Selection
from .staging import open_sink

log = logging.getLogger("gpu_cluster")

ID_DTYPE = "S32"  # 32 lowercase hex digits: panic-tda's id storage form
MAX_UNUSABLE_FRACTION = 0.5  # above this, a model's rows are mostly bad: skip it
# Counted while reading, but not bad rows: the database changed between survey and read.
NOT_UNUSABLE = ("arrived_after_survey", "gone_after_survey")


@dataclass
class LoadedVectors:
    """The usable rows of one selection.

    vectors: (n, d) float32, NumPy or CuPy, rows in read order.
    ids: (n,) ``S32`` embedding ids (hex, no dashes), aligned with ``vectors``.
    skipped: rows dropped while reading, by reason.
    """

    model: str
    vectors: object
    ids: np.ndarray
    skipped: Counter = field(default_factory=Counter)

    @property
    def n(self) -> int:
        return int(self.ids.shape[0])


def decode_blobs(blobs: list[bytes], dim: int) -> np.ndarray:
    """(k, dim) float32 view of k little-endian float32 blobs of ``4*dim`` bytes each."""
    return np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(blobs), dim)


def usable_rows(block: np.ndarray) -> tuple[np.ndarray, Counter]:
    """Mask of rows that are finite and not all-zero, with counts of the others.

    A zero vector cannot be L2-normalised; NaN/inf poison every distance.
    """
    finite = np.isfinite(block).all(axis=1)
    nonzero = np.any(block != 0, axis=1)
    bad = Counter({"non_finite": int((~finite).sum()), "zero_vector": int((finite & ~nonzero).sum())})
    return finite & nonzero, +bad


def mostly_unusable_reason(sel: Selection, skipped: Counter | None = None) -> str | None:
    """Why a model is skipped when most of its selected rows are unusable, else None.

    Counts the rows at the selected positions: a wrong blob length (a different dim
    included) or a NULL vector (known from the survey), and, once read, NaN/inf or
    all-zero vectors (``skipped``). More than ``MAX_UNUSABLE_FRACTION`` unusable means
    the model's embeddings were written wrongly, and clustering the rest would mislead.
    """
    read = sorted((skipped or {}).items())  # a fixed order, whatever batch met a kind first
    bad = {"wrong_length": sel.wrong_length, "null_vector": sel.null_vectors,
           **{kind: count for kind, count in read if kind not in NOT_UNUSABLE}}
    bad = {kind: count for kind, count in bad.items() if count}
    selected = sel.expected_rows + sel.wrong_length + sel.null_vectors
    unusable = sum(bad.values())
    if unusable <= MAX_UNUSABLE_FRACTION * selected:
        return None
    kinds = ", ".join(f"{kind}={count}" for kind, count in bad.items())
    return (f"{unusable} of {selected} selected rows are unusable ({kinds}); check how this "
            f"model's embeddings were computed and stored")


def hex_ids(ids: list) -> np.ndarray:
    """``S32`` array of ids given as dashed or plain hex strings (or ``uuid.UUID``)."""
    return np.array([str(i).replace("-", "") for i in ids], dtype=ID_DTYPE)


def selection_query(sel: Selection) -> sa.Select:
    """id and vector of the selected rows. The id is read raw (no UUID processing per
    row: SQLite gives the stored hex, PostgreSQL a UUID), which ``hex_ids`` normalises."""
    raw_id = sa.type_coerce(embedding.c.id, sa.String)
    return sa.select(raw_id, embedding.c.vector).select_from(sel.from_clause()).where(
        sel.where_clause()
    )


def load_vectors(
    conn: sa.Connection, sel: Selection, *, batch_size: int, device: str = "cpu",
    stage: Stage | None = None,
) -> LoadedVectors:
    """Read ``sel`` into one preallocated ``(expected_rows, dim)`` float32 array.

    ``conn`` must see the state the survey counted (``database.Snapshot.reading``), so
    the rows read are exactly the ``expected_rows`` the survey counted. Rows that are
    non-finite or all-zero are dropped and counted, so ``n`` = rows read - rows
    dropped. Every row read counts against ``expected_rows``, kept or not: should the
    database show more rows than the survey did, the surplus is not kept (counted as
    ``arrived_after_survey``); rows the survey counted that are gone by the read are
    counted as ``gone_after_survey``.

    ``device`` 'cpu' fills a NumPy array; 'gpu' a CuPy array, through two pinned
    staging buffers so the next batch is read while the last one is copied.
    """
    n, dim = sel.expected_rows, sel.dim
    sink = open_sink(device, n, dim, batch_size)
    ids = np.empty(n, dtype=ID_DTYPE)
    skipped: Counter = Counter()
    read = kept = 0
    options = {"stream_results": True, "yield_per": batch_size, BINARY_RESULTS: True}
    result = conn.execution_options(**options).execute(selection_query(sel))
    for part in result.partitions(batch_size):
        if read + len(part) > n:
            skipped["arrived_after_survey"] += read + len(part) - n
            part = part[: n - read]
        read += len(part)
        block = decode_blobs([row[1] for row in part], dim)
        keep, bad = usable_rows(block)
        skipped.update(bad)
        good = sink.put(block, keep)
        ids[kept : kept + good] = hex_ids([row[0] for row, k in zip(part, keep) if k])
        kept += good
        if stage is not None:
            stage.advance(len(part))
    result.close()
    if read < n:
        skipped["gone_after_survey"] += n - read
    if skipped:
        log.warning("%s: skipped rows while reading: %s", sel.model, dict(skipped))
    return LoadedVectors(sel.model, sink.finish(), ids[:kept], skipped)


def normalise_rows(x, *, block_rows: int = 65_536) -> None:
    """L2-normalise the rows of a float32 ``(n, d)`` NumPy/CuPy array in place, in blocks.

    Rows must be non-zero (``load_vectors`` drops zero rows).
    """
    from .device import array_module

    xp = array_module(x)
    for start in range(0, x.shape[0], block_rows):
        blk = x[start : start + block_rows]
        norms = xp.sqrt(xp.einsum("ij,ij->i", blk, blk, dtype=xp.float64))
        blk /= norms[:, None].astype(xp.float32)
