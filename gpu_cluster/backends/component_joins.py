"""Exact lightest edges between parts of a k-NN graph: component joins and bridges.

A k-NN graph over well-separated groups falls apart into components. The spanning tree
needs, for each component, its lightest mutual-reachability edge to any other component;
the weight of that edge decides where groups merge in the HDBSCAN tree. Here it is found
exactly (or certified within a stated gap), never sampled, and never taken from a
filtered ANN search (which returns nothing when the excluded component is large and far
away). The same search bridges dense fragments that the k-NN graph links only through
sparse points (``bridge_dense_fragments``).

* Lower bounds: for components A and B, with centroids c, radii r (largest member
  distance from the centroid) and smallest core distances κ, every edge weighs at least
  ``max(min_{a∈A} |a - c_B| - r_B, min_{b∈B} |b - c_A| - r_A, κ_A, κ_B)``, and at least
  the gap between the two groups' projections on the line between their centroids
  (nearly the centroids' distance in high dimension, where the radii are loose). Candidates
  are visited in order of that bound, in batches of doubling size, and the search stops
  once the bound reaches the best edge found: the edge is then exact.
* Bounds are kept per *part*: the k-NN graph's components before the dense-fragment
  bridges linked some of them. A bridged component (two compact groups and the edge
  between them) has its centroid between its groups and a radius as wide as both, so
  its own bounds rule out nothing; its parts' bounds do (100k rows in 2,000 tight 768-d
  blobs, 1,249 bridged components: joins 169 s -> 11 s, every exit but 12 exact).
* Rows are searched by blocked float32 GEMM. Large pairs are first pruned by projecting
  rows on the line between the centroids: a projection never lengthens a distance.
* A budget of row pairs per exit (and for all bridges) bounds the cost where bounds
  cannot help (all candidates about equally far, as groups ~1.4 apart in 768-d are): the
  edge is then certified within the relative gap between its weight and the smallest
  bound not searched, which the details record (``max_relative_gap``).
* Small components whose bound cannot rule out a very large component are searched
  against that component's rows at once (one pass over them, gathered block by block:
  RAFT's cross-component 1-NN idea), which avoids gathering them once per query.

Distances come from float32 cosines (error ~1e-7 in d²); every edge kept has its distance
recomputed in float64 from the vectors.
"""

from __future__ import annotations

import time

import numpy as np
import scipy.sparse as sp
from scipy.sparse import csgraph

EDGE_FLOOR = 1e-12  # scipy's MST treats a stored 0 as "no edge"
QUERY_BLOCK = 1024  # query rows per GEMM block
COLUMN_BLOCK = 32_768  # candidate rows per GEMM block
PROJECT_ABOVE_PAIRS = 1_000_000  # pairs above which a pair search prunes by projection first
FACING_ROWS = 64  # rows per side searched first, for an initial bound
# Row pairs searched for one exit before the bound gap certifies it instead (~3e10 flops
# at 768-d, ~0.3 s here): reached only when all candidate pairs are about equally far.
EXIT_BUDGET_PAIRS = 20_000_000
FRAGMENT_RATIO = 1.5  # an edge of even density weighs at most this times its ends' smaller core distance
MAX_FRAGMENTS = 1000  # the largest dense fragments bridged
BRIDGE_BUDGET_PAIRS = 500_000_000  # row pairs for all bridges (~8e11 flops at 768-d; 150k synthetic rows: 56 s at 2e9) ...
BRIDGE_MIN_EXIT_PAIRS = 1_000_000  # ... but at least this many per fragment
PROJECTION_SLACK = 2e-4  # two float32 dot products of a 768-d unit row with centroids: error < 5e-5 each
PROJECTION_MIN_GAP = 1e-3  # centroids closer than this: no projection bound
GATHER_MAX_ROWS = 65_536  # query rows gathered once per search (~200 MB at 768-d)
FIRST_CHUNK = 8  # outside components searched in the first batch (doubling after)
FULL_PASS_MAX_ROWS = 4096  # components up to this size may be searched in one pass ...
LARGE_FRACTION = 0.25  # ... against a component holding at least this share of the rows
PREFETCH_BUDGET_PAIRS = 2_000_000_000  # row pairs of that one pass, at most
MAX_PARTS = 8192  # more parts than this: search from the components (0.8 GB of pair bounds)
BOUND_BLOCK_ENTRIES = 1 << 22  # rows x parts per block of the pair bounds (32 MB of float64)


class Exit:
    """The lightest exit edge found so far: (i, j, weight), weight inf when none."""

    __slots__ = ("i", "j", "w")

    def __init__(self, i: int = -1, j: int = -1, w: float = np.inf):
        self.i, self.j, self.w = i, j, w

    def offer(self, i: int, j: int, w: float) -> None:
        if w < self.w:
            self.i, self.j, self.w = int(i), int(j), float(w)


def join_components(x: np.ndarray, core: np.ndarray, parts: np.ndarray, links: list = ()):
    """Exact lightest exit edges that connect a k-NN graph (Borůvka rounds).

    x: (m, d) float32 unit rows; core: (m,) float64 core distances; parts: (m,) int
    labels of the graph's connected components; links: exits already joining some parts
    (the dense fragments' bridges), so the components to join are the parts they link.
    Each component's exit is searched from its parts: two compact groups linked by a
    bridge make one long component whose centroid lies between them, and the bounds of
    the parts are much tighter than its own. Returns (exits, details) where details
    counts components, parts, rounds, pair searches, rows scanned and seconds; the graph
    with ``links`` and the exits added (``with_edges``) is connected.
    """
    start = time.perf_counter()
    parts = np.unique(parts, return_inverse=True)[1].ravel()
    n_parts = int(parts.max()) + 1 if parts.size else 0
    n_comp, linked = linked_parts(parts, n_parts, links)
    comp = linked[parts]
    details = {"components": int(n_comp), "rounds": 0, "pair_searches": 0, "full_pass_rows": 0}
    exits = []
    if n_comp > 1:
        if n_parts > MAX_PARTS > n_comp:  # the pair bounds are parts² x 12 bytes
            parts, n_parts, linked = comp, n_comp, np.arange(n_comp)
        details["parts"] = n_parts
        pairs = PairSearch(x, core, parts, n_parts, details)
        exits = boruvka(pairs, linked, details)
    details["seconds"] = round(time.perf_counter() - start, 3)
    return exits, details


def linked_parts(parts: np.ndarray, n_parts: int, links: list) -> tuple[int, np.ndarray]:
    """(number of components, (n_parts,) int64 component of each part) once the edges
    ``links`` (exits between rows) join parts, ``parts`` (m,) labelling each row's part."""
    if not links:
        return n_parts, np.arange(n_parts)
    ends = np.array([(parts[e.i], parts[e.j]) for e in links], np.int64)
    joined = sp.csr_matrix((np.ones(len(links)), (ends[:, 0], ends[:, 1])), shape=(n_parts, n_parts))
    n_comp, comp = csgraph.connected_components(joined, directed=False)
    return int(n_comp), comp.astype(np.int64)


def bridge_dense_fragments(x, graph, core, min_size: int):
    """Add the exact lightest edge from each dense fragment to another, to ``graph``.

    A k-NN graph links two dense clusters that sit close together only through sparse
    points around them when each cluster's k nearest neighbours all lie inside itself:
    the spanning tree then merges them at the sparse points' distance, not at the gap
    between them. Fragments are the components of the edges no heavier than
    ``FRAGMENT_RATIO`` times the smaller core distance of their ends (regions of even
    density); each fragment of at least ``min_size`` rows gets its exact lightest edge to
    another such fragment. Returns (exits, details): the edges, weights in float64.
    """
    start = time.perf_counter()
    coo = graph.tocoo()
    even = coo.data <= FRAGMENT_RATIO * np.minimum(core[coo.row], core[coo.col]) + 1e-12
    m = graph.shape[0]
    dense = sp.csr_matrix((np.ones(int(even.sum())), (coo.row[even], coo.col[even])), shape=(m, m))
    _, frag = csgraph.connected_components(dense, directed=False)
    sizes = np.bincount(frag)
    big = np.flatnonzero(sizes >= min_size)
    big = big[np.argsort(-sizes[big], kind="stable")][:MAX_FRAGMENTS]
    details = {"fragments": int(big.size), "pair_searches": 0, "full_pass_rows": 0}
    exits = []
    if big.size >= 2:
        relabel = np.full(sizes.size, -1)
        relabel[big] = np.arange(big.size)
        pairs = PairSearch(x, core, relabel[frag], big.size, details)
        owner = np.arange(big.size)
        budget = max(BRIDGE_MIN_EXIT_PAIRS, min(EXIT_BUDGET_PAIRS, BRIDGE_BUDGET_PAIRS // big.size))
        found = [lightest_exit(pairs, owner, s, budget) for s in range(big.size)]
        exits = [refine(x, core, e) for e in found if e.i >= 0]
    details["seconds"] = round(time.perf_counter() - start, 3)
    return exits, details


def with_edges(graph: sp.csr_matrix, exits: list) -> sp.csr_matrix:
    """``graph`` (read as undirected) with the exits' edges added, each once, where the
    graph has no edge between their ends in either direction (one it has keeps its
    weight; a sparse matrix would sum repeats)."""
    if not exits:
        return graph
    edges = {(min(e.i, e.j), max(e.i, e.j)): max(e.w, EDGE_FLOOR) for e in exits}
    i, j = (np.array(v, np.int64) for v in zip(*edges.keys()))
    w = np.array(list(edges.values()))
    new = (np.asarray(graph[i, j]).ravel() == 0) & (np.asarray(graph[j, i]).ravel() == 0)
    if not new.any():
        return graph
    extra = sp.csr_matrix((w[new], (i[new], j[new])), shape=graph.shape)
    return (graph + extra).tocsr()


def boruvka(pairs: "PairSearch", owner: np.ndarray, details: dict) -> list:
    """Exact lightest exit edges joining the components into one tree.

    ``owner``: (parts,) int64, the component (0..c-1) of each of the searched parts. Each
    round, every super-component but the one with most rows takes its lightest edge
    to any other: candidate part pairs are visited in order of their lower bound and
    the search stops once the bound reaches the best edge found. Pair results are cached,
    so a pair is searched at most once over all rounds.
    """
    owner = owner.copy()  # super-component of each part
    exits = []
    n_super = int(owner.max()) + 1
    while n_super > 1:
        rows = np.bincount(owner, weights=pairs.sizes, minlength=n_super)
        biggest = int(np.argmax(rows))
        found = [lightest_exit(pairs, owner, s) for s in range(n_super) if s != biggest]
        exits += [refine(pairs.x, pairs.core, e) for e in found]
        links = sp.csr_matrix((np.ones(len(found)), (owner[[pairs.comp[e.i] for e in found]],
                                                     owner[[pairs.comp[e.j] for e in found]])),
                              shape=(n_super, n_super))
        n_super, relabel = csgraph.connected_components(links, directed=False)
        owner = relabel[owner]
        details["rounds"] += 1
    return exits


def lightest_exit(pairs: "PairSearch", owner: np.ndarray, s: int,
                  budget_pairs: int | None = None) -> Exit:
    """The lightest edge from super-component s to any other, exact within a budget.

    Pairs searched before (cached) are offered first. Then the rows of s are searched
    against the rows of the outside components whose bound is below the best edge,
    nearest bound first, in batches of doubling size. Where every pair is about as far as
    every other, bounds cannot stop the search early: after ``budget_pairs`` row pairs
    (default ``EXIT_BUDGET_PAIRS``) it
    stops, and the edge is then certified within the gap between its weight and the
    smallest bound not searched (the largest relative gap is kept in the details). If
    even the nearest candidate is too large for the budget, the rows of both that face
    each other (by projection on the line between the centroids) are searched.
    """
    budget_pairs = EXIT_BUDGET_PAIRS if budget_pairs is None else budget_pairs
    inside = np.flatnonzero(owner == s)
    cols = np.flatnonzero(owner != s)
    bound = pairs.lower[np.ix_(inside, cols)].min(axis=0)
    order = np.argsort(bound, kind="stable")
    best = Exit()
    for a in inside:
        for key in pairs.cached_from(a):
            if owner[key[0]] != owner[key[1]]:
                e = pairs.cache[key]
                best.offer(e.i, e.j, e.w)
    rows_in = np.concatenate([pairs.groups[a] for a in inside])
    rows_in = rows_in[pairs.core[rows_in] < best.w]
    budget = budget_pairs // max(rows_in.size, 1)  # outside rows we may search
    start, chunk = 0, FIRST_CHUNK
    while start < order.size:
        batch = order[start:start + chunk]
        batch = batch[bound[batch] < best.w]
        if batch.size == 0:
            break
        batch = batch[np.cumsum(pairs.sizes[cols[batch]]) <= budget]
        if batch.size == 0:
            break
        rows_out = np.concatenate([pairs.groups[b] for b in cols[batch]])
        brute_search(pairs.x, pairs.core, rows_in, rows_out, best)
        pairs.details["pair_searches"] += int(batch.size)
        budget -= rows_out.size
        start, chunk = start + batch.size, chunk * 2
    if best.i < 0:  # the nearest candidate alone is over the budget
        facing_search(pairs, rows_in, cols[order[0]], budget_pairs, best)
    rest = order[start:]
    rest = rest[bound[rest] < best.w]
    if rest.size:
        gap = (best.w - float(bound[rest[0]])) / best.w
        pairs.details["max_relative_gap"] = round(max(pairs.details.get("max_relative_gap", 0.0), gap), 6)
        pairs.details["exits_within_gap"] = pairs.details.get("exits_within_gap", 0) + 1
    return best


def facing_search(pairs: "PairSearch", rows_in: np.ndarray, b: int, budget_pairs: int,
                  best: Exit) -> None:
    """Search the ~sqrt(budget) rows of each side nearest the other side along the line
    between their centroids (an upper bound on the lightest edge between them)."""
    rows_b = pairs.groups[b]
    u = pairs.cent[b] - centroid(pairs.x, rows_in)
    u /= max(np.linalg.norm(u), 1e-30)
    side = max(1, int(np.sqrt(budget_pairs)))
    near_in = rows_in[np.argsort(-project(pairs.x, rows_in, u), kind="stable")[:side]]
    near_b = rows_b[np.argsort(project(pairs.x, rows_b, u), kind="stable")[:side]]
    brute_search(pairs.x, pairs.core, near_in, near_b, best)
    pairs.details["pair_searches"] += 1


class PairSearch:
    """Components of a k-NN graph: their rows, summaries, pair lower bounds, cached pairs.

    ``lower[a, b]``: (c, c) float32 lower bound on any edge between components a and b.
    """

    def __init__(self, x, core, comp, n_comp, details):
        self.x, self.core, self.comp, self.details = x, core, comp, details
        order = np.argsort(comp, kind="stable")
        bounds = np.searchsorted(comp[order], np.arange(n_comp + 1))
        self.groups = [order[bounds[c]:bounds[c + 1]] for c in range(n_comp)]
        self.sizes = np.diff(bounds)
        self.cent, radius, kappa = summaries(x, self.groups, core)
        self.lower = pair_lower_bounds(x, self.groups, self.cent, radius, kappa)
        self.cache: dict[tuple[int, int], Exit] = {}
        self.by_component: dict[int, list] = {}
        self.prefetch_largest()

    def cached_from(self, a: int) -> list:
        """Keys of the cached pairs that involve component a."""
        return self.by_component.get(int(a), [])

    def remember(self, a: int, b: int, e: Exit) -> None:
        key = (min(a, b), max(a, b))
        self.cache[key] = e
        self.by_component.setdefault(int(a), []).append(key)
        self.by_component.setdefault(int(b), []).append(key)

    def pair(self, a: int, b: int) -> Exit:
        """The lightest edge between components a and b (searched once, then cached)."""
        key = (min(a, b), max(a, b))
        if key not in self.cache:
            e = Exit()
            pair_search(self.x, self.core, self.groups[a], self.groups[b],
                        self.cent[a], self.cent[b], e)
            self.remember(a, b, e)
            self.details["pair_searches"] += 1
        return self.cache[key]

    def prefetch_largest(self) -> None:
        """Search small components against a very large one in one pass over all rows.

        A pair search would gather the large component's rows once per small component;
        one pass over them, gathered block by block, serves them all. Only components whose bound
        to it is below the edge to their nearest other candidate need it.
        """
        big = int(np.argmax(self.sizes))
        if self.sizes[big] < LARGE_FRACTION * self.comp.size or len(self.groups) < 3:
            return
        need = []
        for a in np.flatnonzero(self.sizes <= FULL_PASS_MAX_ROWS):
            row = self.lower[a].copy()
            row[big] = np.inf
            b = int(np.argmin(row))
            nearest = np.inf
            if np.isfinite(row[b]) and self.sizes[a] * self.sizes[b] <= EXIT_BUDGET_PAIRS:
                nearest = self.pair(a, b).w
            if self.lower[a, big] < nearest:
                need.append(a)
        need = sorted(need, key=lambda a: self.sizes[a])  # the smallest first, within budget
        rows = np.cumsum([self.sizes[a] for a in need])
        need = [a for a, r in zip(need, rows) if r * self.sizes[big] <= PREFETCH_BUDGET_PAIRS]
        if not need:
            return
        queries = np.concatenate([self.groups[a] for a in need])
        self.details["full_pass_rows"] += int(queries.size)
        j, w = nearest_among(self.x, self.core, self.groups[big], queries)
        start = 0
        for a in need:
            stop = start + self.sizes[a]
            e = Exit()
            k = start + int(np.argmin(w[start:stop]))
            e.offer(queries[k], j[k], w[k])
            self.remember(a, big, e)
            start = stop


def centroid(x, rows) -> np.ndarray:
    """(d,) float64 mean of x[rows]: each block of rows summed by a float32 GEMV (no copy
    of all the rows), the blocks' sums added in float64."""
    total = np.zeros(x.shape[1])
    for s in range(0, rows.size, COLUMN_BLOCK):
        block = x[rows[s:s + COLUMN_BLOCK]]
        total += np.ones(block.shape[0], x.dtype) @ block
    return total / rows.size


def summaries(x, groups, core):
    """Per component: centre (c, d) float64, radius (c,) and smallest core distance (c,).

    The centre is the centroid rounded to float32, and the radius (the largest member
    distance from it) is computed in float32 from the members' differences with it,
    exactly representable there: relative error ~1e-6 (768 squares summed), which the
    slack covers. 770k 768-d rows in 300 components: 2.6 s -> 1.4 s against float64."""
    cent = np.empty((len(groups), x.shape[1]))
    radius = np.empty(len(groups))
    for c, g in enumerate(groups):
        centre = centroid(x, g).astype(np.float32)
        cent[c] = centre
        radius[c] = max(float(np.sqrt(np.einsum("ij,ij->i", diff, diff).max()))
                        for diff in (x[g[s:s + COLUMN_BLOCK]] - centre
                                     for s in range(0, g.size, COLUMN_BLOCK)))
    kappa = np.array([core[g].min() for g in groups])
    return cent, radius * (1 + 1e-5) + 1e-7, kappa  # slack for float32 rounding


def project(x, rows, u) -> np.ndarray:
    """(len(rows),) float32 projections of x[rows] on the unit vector u, in blocks."""
    u = u.astype(np.float32)
    return np.concatenate([x[rows[s:s + COLUMN_BLOCK]] @ u
                           for s in range(0, rows.size, COLUMN_BLOCK)] or [np.empty(0, np.float32)])


def pair_lower_bounds(x, groups, cent, radius, kappa) -> np.ndarray:
    """(c, c) float32 lower bounds on any edge weight between two components.

    Three bounds on the distance |a - b| between a member a of A and b of B, the largest
    kept, and every mutual-reachability weight is also at least either side's smallest
    core distance:

    * ``near[a, b] - r_b``: a's nearest member's distance to b's centroid, less b's
      radius (and the same from B's side). Taking a's members one by one (not a's
      radius) keeps one stray member of a component from spoiling all its bounds.
    * projection on the line between the centroids, u = (c_B - c_A) / |c_B - c_A|:
      ``|a - b| >= <b, u> - <a, u> >= min_B <., u> - max_A <., u>``. In high dimension a
      group's members barely spread along any one direction, so this is nearly the
      centroids' distance where the radius bound is loose by two radii (768-d groups
      0.8 wide, 1.4 apart: ~1.2 against ~0.)

    Both come from the members' dot products with every centroid (one GEMM per block).
    """
    c = len(groups)
    near = np.full((c, c), np.inf, np.float32)
    ahead = np.full((c, c), np.inf, np.float32)  # min over A's members of <x, c_A - c_B>
    csq = (cent ** 2).sum(axis=1)
    cent32 = cent.T.astype(np.float32)
    block = max(1, min(COLUMN_BLOCK, BOUND_BLOCK_ENTRIES // c))
    for a, g in enumerate(groups):
        nearest_dot = np.full(c, -np.inf, np.float32)  # max over A's members of <x, c_B>
        norm2 = np.inf  # smallest |x|² over A's members
        for s in range(0, g.size, block):
            xa = x[g[s:s + block]]
            dots = xa @ cent32  # float32 (rows, c): one pass for each bound, no float64 copy
            norm2 = min(norm2, float(np.einsum("ij,ij->i", xa, xa, dtype=np.float64).min()))
            np.maximum(nearest_dot, dots.max(axis=0), out=nearest_dot)
            dots -= dots[:, a:a + 1].copy()
            np.minimum(ahead[a], -dots.max(axis=0), out=ahead[a])
        # |x - c_B|² = |x|² + |c_B|² - 2 <x, c_B> >= min |x|² + |c_B|² - 2 max <x, c_B>
        near[a] = np.sqrt(np.maximum(norm2 + csq - 2.0 * nearest_dot, 0.0))
    lower = np.empty((c, c), np.float32)
    rows = max(1, BOUND_BLOCK_ENTRIES // c)
    for r in range(0, c, rows):
        blk = slice(r, r + rows)
        gap = np.sqrt(np.maximum(csq[blk, None] + csq[None, :] - 2.0 * (cent[blk] @ cent.T), 0.0))
        with np.errstate(divide="ignore", invalid="ignore"):
            along = np.where(gap > PROJECTION_MIN_GAP,
                             (ahead[blk].astype(np.float64) + ahead[:, blk].T - PROJECTION_SLACK) / gap,
                             -np.inf)
        low = np.maximum(np.maximum(near[blk] - radius[None, :], near[:, blk].T - radius[blk, None]), along)
        low = np.maximum(np.maximum(low, kappa[blk, None]), kappa[None, :])
        lower[blk] = low * (1 - 1e-5) - 1e-6
    np.fill_diagonal(lower, np.inf)
    return lower


def pair_search(x, core, ia, ib, ca, cb, best: Exit) -> None:
    """Offer to ``best`` the lightest edge between rows ``ia`` and rows ``ib``."""
    ia = ia[core[ia] < best.w]
    ib = ib[core[ib] < best.w]
    if ia.size == 0 or ib.size == 0:
        return
    if ia.size * ib.size > PROJECT_ABOVE_PAIRS:
        u = (cb - ca) / max(np.linalg.norm(cb - ca), 1e-30)
        pa, pb = project(x, ia, u), project(x, ib, u)
        facing_a = ia[np.argsort(-pa)[:FACING_ROWS]]
        facing_b = ib[np.argsort(pb)[:FACING_ROWS]]
        brute_search(x, core, facing_a, facing_b, best)
        slack = 1e-5  # float32 projections
        keep_a = pa > pb.min() - best.w - slack
        keep_b = pb < pa.max() + best.w + slack
        ia, ib = ia[keep_a], ib[keep_b]
    brute_search(x, core, ia, ib, best)


def brute_search(x, core, ia, ib, best: Exit) -> None:
    """Blocked exhaustive search of the lightest edge between rows ia and ib."""
    ca2, cb2 = squared32(core[ia]), squared32(core[ib])
    xa = x[ia] if ia.size <= GATHER_MAX_ROWS else None
    for t in range(0, ib.size, COLUMN_BLOCK):
        xb = x[ib[t:t + COLUMN_BLOCK]]
        for s in range(0, ia.size, QUERY_BLOCK):
            qa = xa[s:s + QUERY_BLOCK] if xa is not None else x[ia[s:s + QUERY_BLOCK]]
            w2 = reachability2_block(qa @ xb.T, ca2[s:s + QUERY_BLOCK], cb2[t:t + COLUMN_BLOCK])
            r, c = divmod(int(np.argmin(w2)), w2.shape[1])
            w = float(np.sqrt(max(w2[r, c], 0.0)))
            best.offer(ia[s + r], ib[t + c], w)


def squared32(v: np.ndarray) -> np.ndarray:
    return (v.astype(np.float64) ** 2).astype(np.float32)


def reachability2_block(cos: np.ndarray, ca2: np.ndarray, cb2: np.ndarray) -> np.ndarray:
    """Squared mutual reachability, float32, in place of a block of float32 cosines.

    Only used to find the lightest pair (four in-place passes; a float64 block took four
    times as long as its GEMM); its weight is recomputed in float64 afterwards.
    """
    cos *= -2.0
    cos += 2.0
    np.maximum(cos, ca2[:, None], out=cos)
    np.maximum(cos, cb2[None, :], out=cos)
    return cos


def nearest_among(x, core, cols: np.ndarray, queries: np.ndarray):
    """Lightest edge from each query row to any of the rows ``cols``.

    The columns are gathered once, block by block, and every query is searched against
    each block, so a large ``cols`` is copied once for all the queries (not once per
    query's component) and no other row is searched. Returns ((q,) int64 row, (q,)
    float64 weight).
    """
    best_j = np.full(queries.size, -1, np.int64)
    best_w2 = np.full(queries.size, np.inf, np.float32)
    xq_all = x[queries] if queries.size <= GATHER_MAX_ROWS else None
    cq2 = squared32(core[queries])
    for t in range(0, cols.size, COLUMN_BLOCK):
        c = cols[t:t + COLUMN_BLOCK]
        xc, cc2 = x[c], squared32(core[c])
        for s in range(0, queries.size, QUERY_BLOCK):
            q = slice(s, s + QUERY_BLOCK)
            xq = xq_all[q] if xq_all is not None else x[queries[q]]
            w2 = reachability2_block(xq @ xc.T, cq2[q], cc2)
            j = np.argmin(w2, axis=1)
            wj = w2[np.arange(j.size), j]
            better = wj < best_w2[q]
            best_w2[q][better] = wj[better]
            best_j[q][better] = c[j[better]]
    return best_j, np.sqrt(np.maximum(best_w2.astype(np.float64), 0.0))


def refine(x, core, e: Exit) -> Exit:
    """The same edge with its distance recomputed in float64 from the vectors."""
    if e.i < 0:
        raise RuntimeError("component join found no exit edge")  # cannot happen: all rows searched
    diff = x[e.i].astype(np.float64) - x[e.j].astype(np.float64)
    d = float(np.sqrt(diff @ diff))
    return Exit(e.i, e.j, max(d, core[e.i], core[e.j]))
