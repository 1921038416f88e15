"""Time HDBSCAN's tree step (spanning tree -> labels) against n: ours vs scikit-learn's.

    python benchmarks/tree_time.py --sizes 10000,100000,1100000 --out out/tree_time

Two synthetic spanning-tree shapes, each with 8% exact repeats (zero-weight edges) and
the original tool's parameters (min_cluster_size = max(2, n // 1000), epsilon 0.4,
allow_single_cluster):

- ``single``: one diffuse blob with 15% background points; EOM keeps the root alone,
  the selection where scikit-learn's labelling scans the condensed tree once per point;
- ``many``: Zipf-sized topics (tight inside, far apart) with 15% background points.

"after" is ``hdbscan_tree.hdbscan_labels``; "before" is what the knn backend called
until now: stable sort, ``make_single_linkage``, ``tree_to_labels``. "before" is run only
up to ``--before-max-single`` / ``--before-max-many`` points: above them it is projected
from the two largest runs (log-log slope) and marked so. Writes results.json and
results.csv under ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gpu_cluster.backends import hdbscan_tree  # noqa: E402

REPEATS, BACKGROUND = 0.08, 0.15


def attach(rng, n_new: int, n_old: int) -> np.ndarray:
    """For each of n_new new points, a random earlier point among the first n_old + i."""
    return (rng.random(n_new) * (n_old + np.arange(n_new))).astype(np.int64)


def single_blob(n: int, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a, b, w): a growing blob (random recursive tree), background, repeats."""
    n_rep, n_bg = int(REPEATS * n), int(BACKGROUND * n)
    core = n - n_rep - n_bg
    a = np.concatenate([attach(rng, core - 1, 1),
                        rng.integers(0, core, n_bg),
                        rng.integers(0, core + n_bg, n_rep)])
    w = np.concatenate([0.05 + 0.3 * rng.random(core - 1) ** 2,
                        0.5 + 0.5 * rng.random(n_bg),
                        np.zeros(n_rep)])
    return shuffle(rng, a, np.arange(1, n), w)


def many_topics(n: int, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a, b, w): Zipf-sized topics joined by long edges, background, repeats."""
    n_rep, n_bg = int(REPEATS * n), int(BACKGROUND * n)
    topical = n - n_rep - n_bg
    sizes = 1.0 / np.arange(1, max(2, n // 2000) + 1)
    sizes = np.maximum(np.floor(sizes / sizes.sum() * topical).astype(np.int64), 2)
    sizes[0] += topical - sizes.sum()
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    topic = np.repeat(np.arange(sizes.size), sizes)
    local = np.arange(topical) - starts[topic]
    first = local == 0
    a = starts[topic] + (rng.random(topical) * local).astype(np.int64)  # within the topic
    a[first] = rng.integers(0, np.maximum(starts[topic[first]], 1))  # topic -> an earlier one
    w = np.where(first, 1.0 + rng.random(topical), 0.05 + 0.15 * rng.random(topical))
    a, w = a[1:], w[1:]
    a = np.concatenate([a, rng.integers(0, topical, n_bg), rng.integers(0, topical + n_bg, n_rep)])
    w = np.concatenate([w, 0.5 + 0.5 * rng.random(n_bg), np.zeros(n_rep)])
    return shuffle(rng, a, np.arange(1, n), w)


def shuffle(rng, a, b, w):
    """Random point ids and edge order (the tree code must not rely on either)."""
    perm = rng.permutation(a.size + 1)
    order = rng.permutation(a.size)
    return perm[a][order], perm[b][order], w[order]


def after(a, b, w, mcs):
    return hdbscan_tree.hdbscan_labels(a, b, w, mcs, 0.4, True)


def before(a, b, w, mcs):
    import warnings

    from sklearn.cluster._hdbscan._linkage import MST_edge_dtype, make_single_linkage
    from sklearn.cluster._hdbscan._tree import tree_to_labels

    edges = np.empty(w.size, MST_edge_dtype)
    edges["current_node"], edges["next_node"], edges["distance"] = a, b, w
    edges = edges[np.argsort(w, kind="stable")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        labels, probs = tree_to_labels(make_single_linkage(edges), mcs, "eom", True, 0.4, None)
    return np.asarray(labels, np.int64), np.asarray(probs)


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def project(rows: list[dict], n: int) -> tuple[float, float]:
    """(seconds, slope) at n from the two largest measured runs, on a log-log line."""
    (n1, s1), (n2, s2) = [(r["n"], r["before_s"]) for r in rows[-2:]]
    slope = math.log(s2 / s1) / math.log(n2 / n1)
    return s2 * (n / n2) ** slope, slope


def run_shape(shape: str, sizes: list[int], before_max: int, seed: int) -> list[dict]:
    make = single_blob if shape == "single" else many_topics
    rows: list[dict] = []
    for n in sizes:
        a, b, w = make(n, np.random.default_rng(seed))
        mcs = max(2, n // 1000)
        after_s, (labels, _) = timed(after, a, b, w, mcs)
        row = {"shape": shape, "n": n, "min_cluster_size": mcs, "after_s": round(after_s, 3),
               "clusters": int(labels.max()) + 1, "noise": int((labels == -1).sum())}
        if n <= before_max:
            before_s, (ref, _) = timed(before, a, b, w, mcs)
            row.update(before_s=round(before_s, 3), before="measured",
                       equal=bool(np.array_equal(ref, labels)))
        elif sum("before_s" in r for r in rows) >= 2:
            seconds, slope = project([r for r in rows if r.get("before") == "measured"], n)
            row.update(before_s=round(seconds, 1), before=f"projected (n^{slope:.2f})")
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,30000,100000,1100000")
    parser.add_argument("--shapes", default="single,many")
    parser.add_argument("--before-max-single", type=int, default=100_000,
                        help="largest n for scikit-learn on the single-cluster shape (O(n^2))")
    parser.add_argument("--before-max-many", type=int, default=1_100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("out/tree_time"))
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    warm = single_blob(1000, np.random.default_rng(0))  # imports out of the timings
    after(*warm, 2), before(*warm, 2)
    rows = []
    for shape in args.shapes.split(","):
        cap = args.before_max_single if shape == "single" else args.before_max_many
        rows += run_shape(shape, sizes, cap, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(rows, indent=1))
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(args.out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
