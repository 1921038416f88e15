"""k-NN search alternatives side by side on the same rows (issue 17, "Large runs").

    python benchmarks/knn_alternatives.py [--n 200000] [--dim 768] [--k 32]
        [--queries 2000] [--seed 0] [--methods a,b,...] [--out DIR]
        [--keep-neighbours] [--ari | --ari-only]

The rows are ``synthetic_embeddings(n, dim, seed)`` (benchmarks/synthetic.py), reduced to
their *distinct* rows as the knn backend searches them (``knn_search.distinct_rows``),
L2-normalised float32. For every method, each in a fresh subprocess (so the memory is the
method's own), the script measures:

* build seconds (index construction, training included);
* search seconds: the k nearest other rows of *every* distinct row (k+1 searched, the
  row itself dropped with ``knn_search.drop_self``, as ``nearest_neighbours`` does);
* the peak RSS increase over the subprocess's RSS once the rows are loaded
  (``benchmarks.memory.PeakSampler``: psutil sampled every 50 ms);
* recall@k on ``--queries`` sampled rows against exact search (blocked float32 GEMM,
  ``knn_search.exact_neighbours``; the sample's exact k-th cosine is also checked in
  float64): |approximate ∩ exact| / k, averaged; plus the rows whose list came back short.

Methods (all with 2 threads; the graph ones with M / connectivity 16, efConstruction /
expansion_add 64, and efSearch max(64, 2(k+1)), the rule the backend's HNSW used):

* ``current``: the knn backend's search, exact inside k-means cells (``knn_cells``; its
  build is the partition, its search is already done there); run before and after every
  other method (the machine is shared, and its load changed
  the current method's time 2.3x within one run): each other method's times are reported
  as ratios to the mean of the two ``current`` runs on either side of it;
* ``hnsw``: faiss ``IndexHNSWFlat`` inner product, the backend's search before the cells';
  ``hnsw_m<M>_efc<E>``: the same with other M / efConstruction;
* ``exact``: every row against every row (the reference for recall and the ARI);
* ``faiss_sq8`` / ``faiss_fp16``: faiss ``IndexHNSWSQ`` with ``QT_8bit`` / ``QT_fp16``;
* ``usearch_f16`` / ``usearch_i8``: usearch ``Index`` (metric cos), f16 / i8 storage;
* ``hnswlib``: hnswlib ``Index(space='ip')``;
* ``pca128`` / ``pca256``: PCA (numpy SVD on a 20k-row sample) to 128 / 256 dims, an
  ``IndexHNSWFlat`` (L2 on the projected rows) searched for 2k candidates, re-ranked
  exactly by full-dimension inner products, best k kept. Projection time counts as build.

``--ari`` (or ``--ari-only`` on an ``--out`` kept by ``--keep-neighbours``) then clusters
the n rows with the knn backend's own ``knn_graph.fit``, its k-NN lists taken from each
method (``clustering_ari``: nothing under gpu_cluster/ is changed; ``min_samples = k`` so
the graph's k is the searched k), and reports the ARI against ``current``'s labels, plus
each method's k-th-neighbour distance error on the sampled queries (``kth_distance_error``:
the core distance is what HDBSCAN sees, and recall@k alone hides searches that get stuck
in another cluster).

Writes ``results.json`` and ``results.csv`` under ``--out`` (default
``out/knn-alternatives-<UTC timestamp>``; ``out/`` is git-ignored) and prints a table.
Needs the ``knn-bench`` extra (usearch, hnswlib) for those methods; a method whose library
is missing or which fails is recorded as skipped with the reason.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.synthetic import synthetic_embeddings  # noqa: E402
from gpu_cluster.backends import knn_cells  # noqa: E402
from gpu_cluster.backends import knn_search as knn  # noqa: E402

THREADS = 2
M = 16  # faiss HNSW as the knn backend used it before the cells' search
EF_CONSTRUCTION = 64
EF_SEARCH_MIN = 64
BLOCK = 8192  # query rows per search call (as nearest_neighbours)
PCA_SAMPLE = 20_000
RERANK_BLOCK = 1024  # query rows per re-ranking gather (1024 x 2k x d float32: 200 MiB at k 32)
METHODS = ["current", "hnsw", "faiss_sq8", "faiss_fp16", "usearch_f16", "usearch_i8", "hnswlib",
           "pca128", "pca256"]


def ef_search(k: int) -> int:
    """The efSearch rule the backend's HNSW used: max(64, 2 (k + 1))."""
    return max(EF_SEARCH_MIN, 2 * (k + 1))


# ----------------------------------------------------------------------------- methods
# Each builder returns a search function: rows (int64 array) -> (ids (b, k+1) int64, -1 for
# none; cosines (b, k+1) float32, best first).


def _faiss_threads():
    import faiss

    faiss.omp_set_num_threads(THREADS)
    return faiss


def _build_faiss_hnsw(m_links: int, ef_construction: int, qtype_name: str | None = None):
    """faiss HNSW, inner product: ``IndexHNSWFlat``, or ``IndexHNSWSQ`` with the scalar
    quantiser ``qtype_name`` (trained on the rows)."""
    def build(x, k):
        faiss = _faiss_threads()
        if qtype_name is None:
            index = faiss.IndexHNSWFlat(x.shape[1], m_links, faiss.METRIC_INNER_PRODUCT)
            kind = "IndexHNSWFlat("
        else:
            qtype = getattr(faiss.ScalarQuantizer, qtype_name)
            index = faiss.IndexHNSWSQ(x.shape[1], qtype, m_links, faiss.METRIC_INNER_PRODUCT)
            kind = f"IndexHNSWSQ({qtype_name},"
        index.hnsw.efConstruction = ef_construction
        index.hnsw.efSearch = ef_search(k)
        index.train(x)  # a no-op for the flat store
        index.add(x)

        def search(rows, kk):
            sims, found = index.search(x[rows], kk)
            return found.astype(np.int64), sims
        return search, (f"faiss {faiss.__version__} {kind}M={m_links},"
                        f"efC={ef_construction},efS={ef_search(k)})")
    return build


def build_current(x, k):
    """The knn backend's own search above EXACT_MAX_ROWS: exact inside k-means cells."""
    found, sims = knn_cells.cell_neighbours(x, k, threads=THREADS)

    def search(rows, kk):
        assert kk == k + 1
        return found[rows], sims[rows]
    return search, f"cells {knn_cells.method_name(k)} (gpu_cluster.backends.knn_cells)"


def build_exact(x, k):
    """Exact search (blocked float32 GEMM over all rows): the reference graph, recall 1."""
    def search(rows, kk):
        ids = np.empty((rows.size, kk), np.int64)
        cos = np.empty((rows.size, kk), np.float32)
        for s0 in range(0, rows.size, RERANK_BLOCK):  # (1024, m) float32 at a time
            r = slice(s0, s0 + RERANK_BLOCK)
            ids[r], cos[r] = knn_cells.most_similar(x[rows[r]] @ x.T, kk)
        return ids, cos
    return search, "exact (blocked float32 GEMM, every row against every row)"


def _build_usearch(dtype):
    def build(x, k):
        import usearch
        from usearch.index import Index

        index = Index(ndim=x.shape[1], metric="cos", dtype=dtype, connectivity=M,
                      expansion_add=EF_CONSTRUCTION, expansion_search=ef_search(k))
        index.add(np.arange(x.shape[0], dtype=np.uint64), x, threads=THREADS)

        def search(rows, kk):
            res = index.search(x[rows], kk, threads=THREADS)
            ids = res.keys.astype(np.int64)
            counts = np.asarray(res.counts)
            missing = np.arange(kk)[None, :] >= counts[:, None]
            ids[missing] = -1
            sims = (1.0 - res.distances).astype(np.float32)  # cos distance = 1 - cosine
            sims[missing] = -np.inf
            return ids, sims
        return search, (f"usearch {usearch.__version__} Index(cos,{dtype},conn={M},"
                        f"add={EF_CONSTRUCTION},search={ef_search(k)})")
    return build


def build_hnswlib(x, k):
    import hnswlib

    index = hnswlib.Index(space="ip", dim=x.shape[1])
    index.init_index(max_elements=x.shape[0], M=M, ef_construction=EF_CONSTRUCTION,
                     random_seed=0)
    index.set_num_threads(THREADS)
    index.add_items(x, np.arange(x.shape[0]), num_threads=THREADS)
    index.set_ef(ef_search(k))

    def search(rows, kk):
        labels, dists = index.knn_query(x[rows], k=kk, num_threads=THREADS)
        return labels.astype(np.int64), (1.0 - dists).astype(np.float32)  # ip distance = 1 - ip
    version = getattr(hnswlib, "__version__", "?")
    return search, f"hnswlib {version} (ip,M={M},efC={EF_CONSTRUCTION},ef={ef_search(k)})"


def _build_pca(dims):
    def build(x, k):
        faiss = _faiss_threads()
        rng = np.random.default_rng(0)
        sample = x[rng.choice(x.shape[0], size=min(PCA_SAMPLE, x.shape[0]), replace=False)]
        mean = sample.mean(axis=0, dtype=np.float64)
        centred = (sample - mean).astype(np.float64)
        # SVD of the (d, d) scatter matrix: its singular vectors are the sample's principal
        # axes (those of an SVD of the centred sample), and it takes ~0.2 s where numpy's
        # SVD of the (20k, d) sample itself took 5-22 s on this loaded 2-core machine.
        _, s, vt = np.linalg.svd(centred.T @ centred)
        basis = np.ascontiguousarray(vt[:dims].T, dtype=np.float32)  # (d, dims)
        kept = float(s[:dims].sum() / s.sum())  # s: squared singular values of the sample
        mean = mean.astype(np.float32)
        y = np.empty((x.shape[0], dims), np.float32)
        for s0 in range(0, x.shape[0], BLOCK):
            y[s0:s0 + BLOCK] = (x[s0:s0 + BLOCK] - mean) @ basis
        index = faiss.IndexHNSWFlat(dims, M, faiss.METRIC_L2)  # L2: projections are not unit
        index.hnsw.efConstruction = EF_CONSTRUCTION
        cand = 2 * k
        index.hnsw.efSearch = max(ef_search(k), cand + 1)
        index.add(y)

        def search(rows, kk):
            _, found = index.search(y[rows], cand + 1)  # 2k candidates besides itself
            found = found.astype(np.int64)
            found[found == rows[:, None]] = -1  # re-ranking decides; self kept out below
            safe = np.maximum(found, 0)
            sims = np.empty(found.shape, np.float32)
            for s0 in range(0, rows.size, RERANK_BLOCK):  # exact, full dimension
                r = slice(s0, s0 + RERANK_BLOCK)
                sims[r] = np.matmul(x[safe[r]], x[rows[r], :, None])[:, :, 0]
            sims[found < 0] = -np.inf
            order = np.argsort(-sims, axis=1, kind="stable")[:, :kk]
            ids = np.take_along_axis(found, order, axis=1)
            top = np.take_along_axis(sims, order, axis=1)
            ids[~np.isfinite(top)] = -1
            return ids, top
        return search, (f"PCA {x.shape[1]}->{dims} (variance kept {kept:.3f}) + faiss "
                        f"IndexHNSWFlat(L2,M={M},efC={EF_CONSTRUCTION},"
                        f"efS={index.hnsw.efSearch}), {cand} candidates re-ranked exactly")
    return build


BUILDERS = {
    "current": build_current,
    "exact": build_exact,
    "hnsw": _build_faiss_hnsw(M, EF_CONSTRUCTION),
    "faiss_sq8": _build_faiss_hnsw(M, EF_CONSTRUCTION, "QT_8bit"),
    "faiss_fp16": _build_faiss_hnsw(M, EF_CONSTRUCTION, "QT_fp16"),
    "usearch_f16": _build_usearch("f16"),
    "usearch_i8": _build_usearch("i8"),
    "hnswlib": build_hnswlib,
    "pca128": _build_pca(128),
    "pca256": _build_pca(256),
}


def builder(method: str):
    """The builder of a named method; ``hnsw_m<M>_efc<E>`` is IndexHNSWFlat with those."""
    if method in BUILDERS:
        return BUILDERS[method]
    found = re.fullmatch(r"hnsw_m(\d+)_efc(\d+)", method)
    if not found:
        raise SystemExit(f"unknown method {method!r}: one of {sorted(BUILDERS)} or hnsw_m<M>_efc<E>")
    return _build_faiss_hnsw(int(found[1]), int(found[2]))


# ----------------------------------------------------------------------------- worker


def worker(method: str, workdir: Path, k: int) -> dict:
    """One method in this (fresh) process: build, search all rows, recall; returns a dict."""
    from benchmarks.memory import PeakSampler

    x = np.load(workdir / "rows.npy")
    queries = np.load(workdir / "queries.npy")
    exact = np.load(workdir / "exact_ids.npy")
    m = x.shape[0]
    # Import the method's libraries before measuring (import time and memory are not its cost).
    if method.startswith(("hnsw", "faiss", "pca")):
        import faiss  # noqa: F401
    if method.startswith("usearch"):
        import usearch.index  # noqa: F401
    if method == "hnswlib":
        import hnswlib  # noqa: F401
    with PeakSampler() as mem:
        t0 = time.perf_counter()
        search, desc = builder(method)(x, k)
        t1 = time.perf_counter()
        idx = np.empty((m, k), np.int64)
        dist = np.empty((m, k), np.float64)
        for s in range(0, m, BLOCK):
            rows = np.arange(s, min(s + BLOCK, m))
            found, sims = search(rows, k + 1)
            idx[rows], dist[rows] = knn.drop_self(found, np.asarray(sims, np.float32), rows, k)
        t2 = time.perf_counter()
    short = int((idx < 0).any(axis=1).sum())
    approx = idx[queries]
    hits = [np.intersect1d(a[a >= 0], e).size for a, e in zip(approx, exact)]
    recall = float(np.mean(hits) / k)
    np.save(workdir / f"nb_{method}_idx.npy", idx)
    np.save(workdir / f"nb_{method}_dist.npy", dist)
    return {"method": method, "description": desc, "build_s": t1 - t0, "search_s": t2 - t1,
            "total_s": t2 - t0, "recall": recall, "short_lists": short,
            "peak_rss_mib": mem.peak_rss / 2**20,
            "peak_rss_increase_mib": (mem.peak_rss - mem.start_rss) / 2**20,
            "loadavg_end": os.getloadavg()[0]}


# ----------------------------------------------------------------------------- ARI


def kth_distance_error(workdir: Path, dist: np.ndarray) -> dict:
    """How far the sampled queries' k-th (i.e. core-distance) neighbour is from the exact one.

    Missing a true neighbour costs little when a nearly as close one replaces it, which is
    common in 768 dimensions: the k-th distance is what the core distance (min_samples = k)
    sees. Returns the mean and the 99th percentile of (approximate / exact - 1), and the
    fraction of queries over 20%: those whose search got stuck in another cluster (their
    whole list is ~1.35 away where the exact k-th is ~0.5), which inflates core distances.
    """
    x = np.load(workdir / "rows.npy", mmap_mode="r")
    queries = np.load(workdir / "queries.npy")
    exact = np.load(workdir / "exact_ids.npy")
    cos = np.einsum("qd,qd->q", x[queries], x[exact[:, -1]], dtype=np.float64)
    exact_kth = knn.cosine_to_distance(cos)
    rel = dist[queries, -1] / exact_kth - 1.0
    return {"kth_distance_rel_error_mean": float(rel.mean()),
            "kth_distance_rel_error_p99": float(np.percentile(rel, 99)),
            # queries whose list landed in another part of the space (greedy search stuck)
            "kth_distance_over_20pct": float((rel > 0.2).mean())}


def clustering_ari(workdir: Path, n: int, dim: int, seed: int, k: int,
                   methods: list[str]) -> list[dict]:
    """Cluster the n rows with the knn backend's own fit, its k-NN lists from each method.

    ``knn_graph.fit`` runs unchanged (distinct rows, core distances, reachability graph,
    component bridges and joins, MST, tree); only ``knn_search.nearest_neighbours`` is
    swapped, for this call, for one that returns the method's saved lists after the same
    post-processing (``complete_short_lists``, ``refine_near_distances``). The parameters
    are the rule's (min_cluster_size = 0.1% n, epsilon 0.4, single cluster allowed) except
    ``min_samples = k``, so that the graph's k is the searched k. Returns, per method, the
    ARI against ``current``'s labels and, when ``exact`` ran, against the exact graph's
    labels; the clusters, the noise fraction and the fit seconds.
    """
    from sklearn.metrics import adjusted_rand_score

    from gpu_cluster.backends import knn_graph
    from gpu_cluster.params import HdbscanParams

    x = synthetic_embeddings(n, dim, seed=seed)
    params = HdbscanParams(min_cluster_size=max(2, int(0.001 * n)), min_samples=k,
                           cluster_selection_epsilon=0.4, allow_single_cluster=True)
    assert knn_graph.graph_k(params) == k
    original = knn.nearest_neighbours
    labels_of, out = {}, []
    references = [r for r in ("exact", "current") if (workdir / f"nb_{r}_idx.npy").exists()]
    for method in references + [m for m in methods if m not in references]:
        if not (workdir / f"nb_{method}_idx.npy").exists():
            continue
        idx = np.load(workdir / f"nb_{method}_idx.npy")
        dist = np.load(workdir / f"nb_{method}_dist.npy")
        kth = kth_distance_error(workdir, dist)

        def saved_lists(xd, kk, *, exact_max_rows=None, idx=idx, dist=dist, method=method):
            assert kk == idx.shape[1] and xd.shape[0] == idx.shape[0], (kk, xd.shape, idx.shape)
            xd = np.ascontiguousarray(xd, dtype=np.float32)
            i, d = idx.copy(), dist.copy()
            knn.complete_short_lists(xd, i, d)
            knn.refine_near_distances(xd, i, d)
            return knn.Neighbours(i, d, method), xd

        knn.nearest_neighbours = saved_lists
        try:
            t = time.perf_counter()
            fitted = knn_graph.fit(x, params)
            seconds = time.perf_counter() - t
        finally:
            knn.nearest_neighbours = original
        labels_of[method] = fitted.labels
        n_clusters = int(fitted.labels.max()) + 1
        out.append({"method": method,
                    **{f"ari_vs_{r}": float(adjusted_rand_score(labels_of[r], fitted.labels))
                       for r in references if r in labels_of},
                    **kth, "clusters": n_clusters, "noise": float((fitted.labels < 0).mean()),
                    "fit_s_after_knn": seconds,
                    "joins": fitted.details.get("joins"),
                    "components_joined": fitted.details.get("components_joined")})
        print(f"  ARI {method}: {out[-1]}", flush=True)
    return out


# ----------------------------------------------------------------------------- driver


def prepare(n: int, dim: int, k: int, n_queries: int, seed: int, workdir: Path) -> dict:
    """Write the distinct rows, the sampled queries and their exact neighbours."""
    t = time.perf_counter()
    x = synthetic_embeddings(n, dim, seed=seed)
    distinct = knn.distinct_rows(x)
    xd = np.ascontiguousarray(x[distinct.rep_rows], dtype=np.float32)
    del x
    xd /= np.sqrt(np.einsum("ij,ij->i", xd, xd, dtype=np.float64))[:, None].astype(np.float32)
    gen_s = time.perf_counter() - t
    m = xd.shape[0]
    rng = np.random.default_rng([seed, 17])
    queries = np.sort(rng.choice(m, size=min(n_queries, m), replace=False)).astype(np.int64)
    t = time.perf_counter()
    exact_ids, exact_dist = knn.exact_neighbours(xd, k, rows=queries)
    exact_s = time.perf_counter() - t
    # float64 check of the float32 exact lists: how often the k-th neighbour is a near tie.
    x64 = xd.astype(np.float64)
    hits = []
    for s in range(0, queries.size, 256):
        q = queries[s:s + 256]
        cos64 = x64[q] @ x64.T
        cos64[np.arange(q.size), q] = -np.inf
        top = np.argpartition(-cos64, k - 1, axis=1)[:, :k]
        hits += [np.intersect1d(t_, e).size for t_, e in zip(top, exact_ids[s:s + 256])]
    agree = float(np.mean(hits) / k)
    del x64, cos64
    np.save(workdir / "rows.npy", xd)
    np.save(workdir / "queries.npy", queries)
    np.save(workdir / "exact_ids.npy", exact_ids)
    return {"n": n, "dim": dim, "k": k, "n_distinct": m, "queries": int(queries.size),
            "seed": seed, "generate_s": gen_s, "exact_queries_s": exact_s,
            "exact_float32_vs_float64_recall": agree, "rows_mib": xd.nbytes / 2**20}


def run_method(method: str, workdir: Path, k: int, timeout: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", method,
           "--workdir", str(workdir), "--k", str(k)]
    env = dict(os.environ, OMP_NUM_THREADS=str(THREADS), OPENBLAS_NUM_THREADS=str(THREADS))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                              cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"method": method, "skipped": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"method": method, "skipped": f"exit {proc.returncode}: {tail}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    head = ("| method | build s | search s | total s | current's total s (runs either side) "
            "| total vs current | recall@k | short lists | peak RSS increase MiB |")
    lines = [head, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['method']} | skipped: {r['skipped']} | | | | | | | |")
            continue
        if "runs" in r:
            ref = (f"median of {r['runs']} runs ({r['total_s_min']:.1f} - "
                   f"{r['total_s_max']:.1f})")
        else:
            ref = f"{r.get('current_total_s', float('nan')):.1f}"
        lines.append(f"| {r['method']} | {r['build_s']:.1f} | {r['search_s']:.1f} | "
                     f"{r['total_s']:.1f} | {ref} | {r.get('ratio_vs_current', float('nan')):.2f} | "
                     f"{r['recall']:.4f} | {r['short_lists']} | {r['peak_rss_increase_mib']:.0f} |")
    return "\n".join(lines)


def ari_table(rows: list[dict]) -> str:
    lines = ["| method | k-th distance error mean / p99 | queries > 20% off | ARI vs current "
             "| ARI vs exact | clusters | noise | fit s after k-NN |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['kth_distance_rel_error_mean']:.2%} / "
                     f"{r['kth_distance_rel_error_p99']:.2%} | "
                     f"{r['kth_distance_over_20pct']:.2%} | {r.get('ari_vs_current', float('nan')):.4f} | "
                     f"{r.get('ari_vs_exact', float('nan')):.4f} | "
                     f"{r['clusters']} | "
                     f"{r['noise']:.3f} | {r['fit_s_after_knn']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per method")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--keep-neighbours", action="store_true",
                    help="keep each method's neighbour lists (nb_*.npy) in --out")
    ap.add_argument("--ari", action="store_true",
                    help="also cluster with each method's lists (knn backend fit, "
                         "min_samples = k) and report the ARI against current's")
    ap.add_argument("--ari-only", action="store_true",
                    help="only the ARI step, on an --out kept by --keep-neighbours; "
                         "adds it to that run's results.json")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(args.worker, args.workdir, args.k)))
        return 0

    methods = args.methods.split(",")
    if args.ari_only:
        ari = clustering_ari(args.out, args.n, args.dim, args.seed, args.k, methods)
        saved = args.out / "results.json"  # absent when the search step was interrupted
        doc = json.loads(saved.read_text()) if saved.exists() else {}
        doc["ari"] = {"params": {"min_cluster_size": max(2, int(0.001 * args.n)),
                                 "min_samples": args.k, "epsilon": 0.4}, "results": ari}
        (args.out / "results.json").write_text(json.dumps(doc, indent=2))
        print(ari_table(ari))
        return 0

    out = args.out or ROOT / "out" / f"knn-alternatives-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    out.mkdir(parents=True, exist_ok=True)
    info = prepare(args.n, args.dim, args.k, args.queries, args.seed, out)
    info["threads"] = THREADS
    info["ef_search"] = ef_search(args.k)
    print(f"{info['n_distinct']} distinct rows of {args.n} x {args.dim}; exact neighbours of "
          f"{info['queries']} queries in {info['exact_queries_s']:.1f} s "
          f"(float32 vs float64 exact lists agree {info['exact_float32_vs_float64_recall']:.4f})",
          flush=True)
    # current, A, current, B, ..., current: each method between two current runs.
    others = [m for m in methods if m != "current"]
    schedule = ["current"]
    for m in others:
        schedule += [m, "current"]
    results, currents = [], []
    for method in schedule:
        load = os.getloadavg()[0]
        r = run_method(method, out, args.k, args.timeout)
        r["load_before"] = load
        if method == "current":
            r["run"] = len(currents) + 1
            currents.append(r)
        else:
            results.append(r)
        msg = r.get("skipped") or (f"build {r['build_s']:.1f} s, search {r['search_s']:.1f} s, "
                                   f"recall {r['recall']:.4f}, +{r['peak_rss_increase_mib']:.0f} MiB")
        print(f"  {method}: {msg}", flush=True)
    for i, r in enumerate(results):
        around = [c for c in currents[i:i + 2] if "skipped" not in c]
        if around and "skipped" not in r:
            for key in ("total", "build", "search"):
                ref = float(np.mean([c[f"{key}_s"] for c in around]))
                r[f"current_{key}_s"] = ref
                r[f"{key}_ratio_vs_current" if key != "total" else "ratio_vs_current"] = (
                    r[f"{key}_s"] / ref)
    ok = [c for c in currents if "skipped" not in c]
    if ok:  # the summary row of current: medians over its runs, and their range
        summary = {key: float(np.median([c[key] for c in ok]))
                   for key in ("build_s", "search_s", "total_s", "recall",
                               "peak_rss_increase_mib", "peak_rss_mib")}
        summary.update(method="current", short_lists=max(c["short_lists"] for c in ok),
                       ratio_vs_current=1.0, description=ok[0]["description"],
                       runs=len(ok), total_s_min=min(c["total_s"] for c in ok),
                       total_s_max=max(c["total_s"] for c in ok))
        results.insert(0, summary)
    else:
        results.insert(0, currents[0])
    info["current_runs"] = currents
    ari = None
    if args.ari:
        ari = clustering_ari(out, args.n, args.dim, args.seed, args.k, methods)
    if not args.keep_neighbours:
        for f in out.glob("nb_*.npy"):
            f.unlink()
    for f in ("rows.npy", "queries.npy", "exact_ids.npy"):
        if not args.keep_neighbours:
            (out / f).unlink(missing_ok=True)
    doc = {"info": info, "results": results}
    if ari is not None:
        doc["ari"] = {"params": {"min_cluster_size": max(2, int(0.001 * args.n)),
                                 "min_samples": args.k, "epsilon": 0.4}, "results": ari}
    (out / "results.json").write_text(json.dumps(doc, indent=2))
    fields = ["method", "build_s", "search_s", "total_s", "ratio_vs_current",
              "build_ratio_vs_current", "search_ratio_vs_current", "recall", "short_lists",
              "current_total_s", "peak_rss_increase_mib", "peak_rss_mib", "load_before",
              "loadavg_end", "skipped", "description"]
    with open(out / "results.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(results)
    print(table(results))
    if ari is not None:
        print(ari_table(ari))
    print(f"written {out}/results.json, results.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
