"""Which embeddings to cluster: the layout survey and the downsample rule.

panic-tda runs alternate IMAGE (even sequence numbers) and TEXT (odd) invocations, and
only TEXT invocations carry embeddings, so a naive ``sequence_number % N = 0`` selects
nothing. Nothing here assumes that parity. One grouped query (the *survey*) counts each
model's embeddings by invocation type, sequence number and blob length. From it:

* a model's *lattice* is the set of sequence numbers at which invocations of the types
  it embeds occur (pooled over every model, so a tiny model inherits the layout the big
  ones reveal): ``sequence_number = offset + stride * position``;
* downsample factor N keeps ``position % N == 0``. On panic-tda data (TEXT, offset 1,
  stride 2) that is exactly panic-tda's ``((sequence_number - 1) / 2) % N == 0``;
* the expected row count of any factor is known before a single vector is read.

Later reads must see the rows the survey counted and no others (rows keep arriving
while panic-tda runs). On PostgreSQL the survey and the reads share one exported
snapshot (``database.Snapshot``). On SQLite the survey also records the largest
``embedding.rowid`` in the same read transaction, and every read keeps to
``rowid <= that bound``: SQLite gives a new row a rowid above every existing one
(panic-tda's tables are not ``WITHOUT ROWID`` and never delete embeddings).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np
import sqlalchemy as sa

from .schema import embedding, invocation

FLOAT32_BYTES = 4
EMBEDDING_ROWID = sa.literal_column("embedding.rowid", sa.Integer)  # SQLite only


@dataclass(frozen=True)
class Layout:
    """Embedding-bearing sequence numbers: ``offset + stride * position``."""

    types: tuple[str, ...]
    offset: int
    stride: int

    def describe(self, factor: int) -> str:
        kinds = "/".join(self.types)
        pos = f"(sequence_number - {self.offset}) / {self.stride}"
        return f"{kinds} invocations, position = {pos}, keep position % {factor} == 0"

    def keeps(self, seq: np.ndarray, factor: int) -> np.ndarray:
        """Boolean mask over sequence numbers ``seq`` (int64) kept by ``factor``."""
        rel = seq - self.offset
        return (rel >= 0) & (rel % self.stride == 0) & ((rel // self.stride) % factor == 0)


@dataclass
class ModelSurvey:
    """Counts for one embedding model, from the survey query (no vectors read)."""

    model: str
    total: int = 0
    orphans: int = 0  # embedding rows whose invocation does not exist
    null_vectors: int = 0
    dim: int = 0
    layout: Layout | None = None
    # One entry per (sequence number, blob has the model's length?) -> rows.
    seq: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    length_ok: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    null_at: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    # SQLite: the largest embedding rowid at survey time; reads stay at or below it.
    rowid_bound: int | None = None

    def selection(self, factor: int) -> "Selection":
        """What downsample ``factor`` selects; counts only."""
        if self.layout is None:
            return Selection(self, factor, 0, 0, 0)
        kept = self.layout.keeps(self.seq, factor)
        ok = kept & self.length_ok & ~self.null_at
        nulls = int(self.rows[kept & self.null_at].sum())
        wrong = int(self.rows[kept & ~self.length_ok & ~self.null_at].sum())
        return Selection(self, factor, int(self.rows[ok].sum()), wrong, nulls)


@dataclass(frozen=True)
class Selection:
    """The rows downsample ``factor`` keeps for one model."""

    survey: ModelSurvey
    factor: int
    expected_rows: int  # rows at kept positions with a blob of 4*dim bytes
    wrong_length: int  # rows at kept positions skipped for their blob length
    null_vectors: int  # rows at kept positions with a NULL vector

    @property
    def model(self) -> str:
        return self.survey.model

    @property
    def dim(self) -> int:
        return self.survey.dim

    @property
    def rule(self) -> str:
        layout = self.survey.layout
        return layout.describe(self.factor) if layout else "no embeddings with an invocation"

    def where_clause(self) -> sa.ColumnElement[bool]:
        """SQL condition on ``embedding`` (joined to ``invocation`` when needed)."""
        nbytes = self.dim * FLOAT32_BYTES
        cond = sa.and_(
            embedding.c.embedding_model == sa.bindparam("model", self.model),
            sa.func.length(embedding.c.vector) == sa.bindparam("nbytes", nbytes),
        )
        if self.survey.rowid_bound is not None:
            cond = sa.and_(cond, EMBEDDING_ROWID <= sa.bindparam("rowid_bound",
                                                                  self.survey.rowid_bound))
        if not self.needs_join:
            return cond
        lay = self.survey.layout
        rel = invocation.c.sequence_number - sa.bindparam("offset", lay.offset)
        return sa.and_(
            cond,
            invocation.c.type.in_(lay.types),
            invocation.c.sequence_number >= sa.bindparam("offset2", lay.offset),
            rel % sa.bindparam("stride", lay.stride) == 0,
            (rel // sa.bindparam("stride2", lay.stride)) % sa.bindparam("factor", self.factor)
            == 0,
        )

    @property
    def needs_join(self) -> bool:
        """Factor 1 on a model without orphans keeps every row: no join, a plain scan."""
        return self.factor > 1 or self.survey.orphans > 0

    def from_clause(self) -> sa.FromClause:
        if self.needs_join:
            return embedding.join(invocation, invocation.c.id == embedding.c.invocation_id)
        return embedding


def survey_query(dialect: str = "sqlite") -> sa.Select:
    """Rows of (model, type, sequence_number, blob bytes, count) over all embeddings.

    On SQLite the per-row select is kept a separate co-routine (a LIMIT stops the
    optimiser flattening it into the grouping): flattened, the GROUP BY sorter stores
    each row's whole vector blob to take its length, which made the survey of a
    3.3M-embedding file 4.4x slower (46.6 s against 10.6 s with its pages cached).
    """
    per_row = sa.select(
        embedding.c.embedding_model,
        invocation.c.type,
        invocation.c.sequence_number,
        sa.func.length(embedding.c.vector).label("nbytes"),
    ).select_from(embedding.outerjoin(invocation, invocation.c.id == embedding.c.invocation_id))
    if dialect == "sqlite":
        per_row = per_row.limit(-1)  # SQLite: no limit; see above
    rows = per_row.subquery("per_row")
    keys = (rows.c.embedding_model, rows.c.type, rows.c.sequence_number, rows.c.nbytes)
    return sa.select(*keys, sa.func.count().label("rows")).group_by(*keys)


def lattice(seqs: set[int]) -> tuple[int, int]:
    """(offset, stride) of the coarsest arithmetic progression holding every seq."""
    ordered = sorted(seqs)
    stride = 0
    for s in ordered[1:]:
        stride = math.gcd(stride, s - ordered[0])
    return ordered[0], max(stride, 1)


def survey_embeddings(conn: sa.Connection, models: list[str] | None = None) -> dict[str, ModelSurvey]:
    """Run the survey query and build one ModelSurvey per model (sorted by name).

    ``conn`` should be inside a transaction (SQLite: the rowid bound and the counts
    must come from the same state; PostgreSQL: from ``Snapshot.reading``).
    """
    bound = None
    if conn.dialect.name == "sqlite":
        bound = conn.execute(sa.select(sa.func.max(EMBEDDING_ROWID)).select_from(embedding))
        bound = bound.scalar() or 0
    raw = conn.execute(survey_query(conn.dialect.name)).all()
    seqs_by_type: dict[str, set[int]] = defaultdict(set)
    for model, typ, seq, nbytes, rows in raw:
        if typ is not None and nbytes is not None:
            seqs_by_type[typ].add(int(seq))
    by_model: dict[str, list] = defaultdict(list)
    for row in raw:
        by_model[row[0]].append(row[1:])
    wanted = sorted(by_model) if models is None else models
    surveys = {m: _model_survey(m, by_model.get(m, []), seqs_by_type) for m in wanted}
    for s in surveys.values():
        s.rowid_bound = bound
    return surveys


def _model_survey(model: str, rows: list, seqs_by_type: dict[str, set[int]]) -> ModelSurvey:
    s = ModelSurvey(model)
    lengths: Counter[int] = Counter()
    types: set[str] = set()
    for typ, seq, nbytes, count in rows:
        s.total += count
        if typ is None:
            s.orphans += count
            continue
        if nbytes is None:
            s.null_vectors += count
        else:
            lengths[nbytes] += count
        types.add(typ)
    if not types:
        return s
    common = lengths.most_common(1)
    good = common[0][0] if common and common[0][0] % FLOAT32_BYTES == 0 else None
    s.dim = (good or 0) // FLOAT32_BYTES
    pooled = set().union(*(seqs_by_type[t] for t in types)) or {
        int(seq) for typ, seq, _, _ in rows if typ is not None
    }
    offset, stride = lattice(pooled)
    s.layout = Layout(tuple(sorted(types)), offset, stride)
    kept = [(seq, nbytes, count) for typ, seq, nbytes, count in rows if typ is not None]
    s.seq = np.array([k[0] for k in kept], np.int64)
    s.null_at = np.array([k[1] is None for k in kept], bool)
    s.length_ok = np.array([good is not None and k[1] == good for k in kept], bool)
    s.rows = np.array([k[2] for k in kept], np.int64)
    return s
