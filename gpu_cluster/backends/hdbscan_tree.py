"""HDBSCAN's tree: minimum spanning tree -> labels and probabilities, in NumPy.

Given the n-1 edges of a (mutual-reachability) minimum spanning tree over n points,
this module gives exactly what scikit-learn's private tree code gives for
``tree_to_labels(make_single_linkage(edges sorted stably by distance), min_cluster_size,
"eom", allow_single_cluster, cluster_selection_epsilon, None)``: the same labels, the
same cluster numbering, the same probabilities. Five steps, one function each:

1. :func:`single_linkage` — the dendrogram, by union-find over the edges in order;
2. :func:`condense` — the condensed tree for ``min_cluster_size``;
3. :func:`stabilities` — each condensed cluster's excess of mass;
4. :func:`select_clusters` — EOM, then ``cluster_selection_epsilon``, with
   ``allow_single_cluster``;
5. :func:`labels_and_probabilities`.

scikit-learn walks the dendrogram breadth first and, in the single-cluster case, scans
the whole condensed tree once per point (O(n²): hours at 1.1M rows). Here every step is
O(n log n) or better with memory linear in n: whole-array NumPy operations, scipy's
connected components, and Python loops over the edges (union-find) and over the
condensed clusters, never nested.

Semantics kept on purpose, scikit-learn's (1.3 - 1.9) to the bit:

- condensed clusters are numbered as scikit-learn numbers them (breadth first over the
  dendrogram, left before right), and labels follow that order;
- a cluster's stability is summed in scikit-learn's row order (float addition is not
  associative; ties in EOM can hang on the last bit);
- epsilon: a leaf born at a distance < epsilon is replaced by its lowest ancestor born
  at a distance > epsilon (the root, or the root's child, when none is); comparisons
  are made on ``1 / lambda`` exactly as there;
- when EOM keeps only the root (``allow_single_cluster``), a point is in the cluster if
  its lambda reaches ``1 / epsilon`` (epsilon > 0) or the root's largest lambda;
- if epsilon promotes a leaf to the root while other clusters stay selected, the root
  takes label 0 but its points are noise (label 0 is then unused), as in scikit-learn.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.sparse import csgraph

NOISE = -1


@dataclass(frozen=True)
class SingleLinkage:
    """The dendrogram of n points; internal node ``n + i`` is the i-th merge.

    left, right: (n-1,) int64 node ids merged (< n: a point, else ``n + j``, j < i).
    distance: (n-1,) float64 merge distances, non-decreasing.
    size: (n-1,) int64 points under each merge.
    """

    left: np.ndarray
    right: np.ndarray
    distance: np.ndarray
    size: np.ndarray

    @property
    def n_points(self) -> int:
        return self.size.size + 1


@dataclass(frozen=True)
class CondensedTree:
    """The condensed tree: k clusters numbered as scikit-learn does (id - n_points).

    Cluster 0 is the root; a cluster's parent has a smaller index than the cluster.
    point_cluster: (n,) int64 cluster each point falls out of; point_lambda: (n,)
    float64 the lambda (1 / distance, inf at 0) at which it does.
    parent: (k,) int64 (-1 for the root); children: (k, 2) int64 left and right child
    clusters of a cluster that splits, else -1; size: (k,) int64 points;
    birth: (k,) float64 lambda at which the cluster appears (0 for the root);
    death: (k,) float64 largest lambda of the cluster's own rows (where it splits or
    vanishes).
    """

    point_cluster: np.ndarray
    point_lambda: np.ndarray
    parent: np.ndarray
    children: np.ndarray
    size: np.ndarray
    birth: np.ndarray
    death: np.ndarray

    @property
    def n_clusters(self) -> int:
        return self.parent.size


def hdbscan_labels(
    a: np.ndarray, b: np.ndarray, w: np.ndarray, min_cluster_size: int,
    cluster_selection_epsilon: float = 0.0, allow_single_cluster: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """HDBSCAN (EOM) labels and probabilities from the spanning tree's edges.

    Args:
        a, b: (n-1,) integer endpoints of the edges (a tree over points 0..n-1).
        w: (n-1,) float64 finite, non-negative edge weights (mutual reachability).
        min_cluster_size: >= 2.
    Returns:
        labels (n,) int64 (``NOISE`` = -1) and probabilities (n,) float64 in [0, 1].
        n = len(w) + 1; a single point (no edges) is noise.
    """
    if min_cluster_size < 2:
        raise ValueError(f"min_cluster_size must be >= 2, got {min_cluster_size}")
    w = np.asarray(w, dtype=np.float64)
    if w.size == 0:
        return np.full(1, NOISE, np.int64), np.zeros(1)
    tree = condense(single_linkage(a, b, w), min_cluster_size)
    selected = select_clusters(tree, stabilities(tree), cluster_selection_epsilon,
                               allow_single_cluster)
    return labels_and_probabilities(tree, selected, cluster_selection_epsilon,
                                    allow_single_cluster)


def single_linkage(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> SingleLinkage:
    """Step 1: merge the edges in order of weight (stable: equal weights keep their order).

    Node ids as scikit-learn's ``make_single_linkage``: each merge's left child is the
    component holding ``a``, its right child the one holding ``b``. Raises ValueError if
    the edges are not a spanning tree with finite, non-negative weights.
    """
    w = np.asarray(w, dtype=np.float64)
    n = w.size + 1
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    if a.shape != w.shape or b.shape != w.shape:
        raise ValueError(f"edge arrays differ in shape: {a.shape}, {b.shape}, {w.shape}")
    if not (np.isfinite(w).all() and (w >= 0).all()):
        raise ValueError("edge weights must be finite and >= 0")
    if w.size and (min(a.min(), b.min()) < 0 or max(a.max(), b.max()) >= n):
        raise ValueError(f"edge endpoints must be in 0..{n - 1}")
    order = np.argsort(w, kind="stable")
    left, right, size = _union_find_merges(a[order].tolist(), b[order].tolist(), n)
    return SingleLinkage(np.array(left, np.int64), np.array(right, np.int64),
                         w[order], np.array(size, np.int64))


def _union_find_merges(a: list, b: list, n: int) -> tuple[list, list, list]:
    """(left, right, size) lists of the n-1 merges; union by size, path halving."""
    parent, top, count = list(range(n)), list(range(n)), [1] * n
    left, right, size = [0] * (n - 1), [0] * (n - 1), [0] * (n - 1)
    for j, x, y in zip(range(n - 1), a, b):
        while parent[x] != x:
            parent[x] = x = parent[parent[x]]
        while parent[y] != y:
            parent[y] = y = parent[parent[y]]
        if x == y:
            raise ValueError("the edges contain a cycle: not a spanning tree")
        left[j], right[j] = top[x], top[y]
        s = size[j] = count[x] + count[y]
        if count[x] < count[y]:
            x, y = y, x
        parent[y], count[x], top[x] = x, s, n + j
    return left, right, size


def condense(tree: SingleLinkage, min_cluster_size: int) -> CondensedTree:
    """Step 2: the condensed tree (scikit-learn's ``_condense_tree``), without its BFS.

    A dendrogram node is *big* when it holds >= ``min_cluster_size`` points (the root
    always counts as big). A point falls out of its lowest big ancestor, at that
    node's lambda. Big nodes form chains, one per condensed cluster: a chain goes on
    while a node has one big child, and ends where it has two (a split: both start new
    clusters) or none. Shed subtrees and chains are the connected components of the
    dendrogram's links that are kept (scipy, O(n)).
    """
    n = tree.n_points
    ids = np.arange(2 * n - 1)
    node_size = np.concatenate([np.ones(n, np.int64), tree.size])
    big = node_size >= min_cluster_size
    big[-1] = True
    parent = np.full(2 * n - 1, -1, np.int64)
    parent[tree.left], parent[tree.right] = ids[n:], ids[n:]
    split = np.concatenate([np.zeros(n, bool), big[tree.left] & big[tree.right] & big[n:]])
    child = ids[:-1]
    up = parent[child]
    kept = ~big[up] | (big[child] & ~split[up])  # inside a shed subtree, or along a chain
    links = sparse.coo_matrix((np.ones(int(kept.sum()), np.int8), (child[kept], up[kept])),
                              shape=(2 * n - 1, 2 * n - 1))
    _, comp = csgraph.connected_components(links, directed=False)
    top_of = np.empty(comp.max() + 1, np.int64)
    is_top = np.append(~kept, True)  # the root, and every node whose upward link is cut
    top_of[comp[is_top]] = ids[is_top]
    with np.errstate(divide="ignore"):
        lam = np.concatenate([np.full(n, np.inf), 1.0 / tree.distance])  # 1/0 -> inf
    tops = ids[is_top & big]  # one per condensed cluster, ascending; the root is last
    cluster_of = np.full(comp.max() + 1, -1, np.int64)
    order = cluster_order(tree, node_size, big, split, parent, comp, tops)
    cluster_of[comp[tops[order]]] = np.arange(tops.size)
    fall = parent[top_of[comp[:n]]]  # each point's lowest big ancestor
    return _condensed_arrays(tree, tops[order], cluster_of[comp], node_size, big, split,
                             parent, lam, fall)


def _condensed_arrays(tree, tops, cluster_of_node, node_size, big, split, parent, lam, fall):
    """The CondensedTree of clusters whose first nodes are ``tops`` (in final order)."""
    n, k = tree.n_points, tops.size
    is_root = tops == 2 * n - 2
    up = parent[tops]
    cluster_parent = np.where(is_root, -1, cluster_of_node[np.maximum(up, 0)])
    birth = np.where(is_root, 0.0, lam[np.maximum(up, 0)])
    chain = np.flatnonzero(big)  # every big node is on one cluster's chain
    bottom = np.empty(k, np.int64)
    ends = chain[split[chain] | ~(big[_left(tree, chain)] | big[_right(tree, chain)])]
    bottom[cluster_of_node[ends]] = ends
    children = np.full((k, 2), -1, np.int64)
    splits = split[bottom]
    children[splits, 0] = cluster_of_node[_left(tree, bottom[splits])]
    children[splits, 1] = cluster_of_node[_right(tree, bottom[splits])]
    return CondensedTree(point_cluster=cluster_of_node[fall], point_lambda=lam[fall],
                         parent=cluster_parent, children=children, size=node_size[tops],
                         birth=birth, death=lam[bottom])


def _left(tree: SingleLinkage, nodes: np.ndarray) -> np.ndarray:
    return tree.left[nodes - tree.n_points]


def _right(tree: SingleLinkage, nodes: np.ndarray) -> np.ndarray:
    return tree.right[nodes - tree.n_points]


def cluster_order(tree, node_size, big, split, parent, comp, tops) -> np.ndarray:
    """Permutation of ``tops`` (clusters' first nodes) into scikit-learn's numbering.

    scikit-learn labels clusters in breadth-first order of the dendrogram, left child
    before right: that is the order of (depth, preorder position) of each cluster's
    first node. Both are sums along the path from the root; along a chain they are
    added up per cluster (bincount), then carried down the k clusters (one loop).
    Preorder over the full dendrogram: a left child is 1 after its parent, a right
    child 1 + (2 * points in the left subtree - 1) after.
    """
    k = tops.size
    local = np.full(comp.max() + 1, -1, np.int64)
    local[comp[tops]] = np.arange(k)
    nodes = np.flatnonzero(big)[:-1]  # big nodes but the root; all have big parents
    up = parent[nodes]
    step = np.where(_left(tree, up) == nodes, 1, 2 * node_size[_left(tree, up)])
    own, in_chain = local[comp[nodes]], ~np.isin(nodes, tops)
    length = np.bincount(local[comp[np.flatnonzero(big)]], minlength=k)  # nodes per chain
    # float64 sums of integers below 2n: exact
    shift = np.bincount(own[in_chain], weights=step[in_chain], minlength=k).astype(np.int64)
    entry = np.zeros(k, np.int64)  # step from the parent's split into the first node
    entry[own[~in_chain]] = step[~in_chain]
    first_parent = np.full(k, -1, np.int64)
    first_parent[own[~in_chain]] = local[comp[up[~in_chain]]]
    depth, pre = [0] * k, [0] * k
    length, shift, entry, first_parent = (v.tolist() for v in (length, shift, entry, first_parent))
    for c in range(k - 2, -1, -1):  # tops ascend, so parents (higher ids) come first
        p = first_parent[c]
        depth[c] = depth[p] + length[p]
        pre[c] = pre[p] + shift[p] + entry[c]
    return np.lexsort((np.array(pre), np.array(depth)))


def stabilities(tree: CondensedTree) -> np.ndarray:
    """Step 3: (k,) float64 stability, sum over a cluster's rows of (lambda - birth) * size.

    Summed in scikit-learn's row order (bincount adds sequentially): a cluster's points
    by increasing lambda (equal lambdas add equal terms, so their order is moot), then
    its left child, then its right child. 0 - 0 at distance 0 gives nan, as there.
    """
    by_lambda = np.argsort(tree.point_lambda, kind="stable")
    splits = np.flatnonzero(tree.children[:, 0] >= 0)
    rows = np.concatenate([tree.point_cluster[by_lambda], splits, splits])
    value = np.concatenate([tree.point_lambda[by_lambda], tree.death[splits], tree.death[splits]])
    size = np.concatenate([np.ones(tree.point_lambda.size), tree.size[tree.children[splits, 0]],
                           tree.size[tree.children[splits, 1]]])
    with np.errstate(invalid="ignore"):  # inf - inf
        terms = (value - tree.birth[rows]) * size
    return np.bincount(rows, weights=terms, minlength=tree.n_clusters)


def select_clusters(tree: CondensedTree, stability: np.ndarray, epsilon: float,
                    allow_single_cluster: bool) -> np.ndarray:
    """Step 4: (k,) bool selected clusters: EOM, then the epsilon search.

    EOM, children before parents: a cluster keeps itself unless its children's (best)
    stabilities sum to more; a kept cluster drops everything below it. The root takes
    part only with ``allow_single_cluster``.
    """
    k = tree.n_clusters
    stab = stability.tolist()
    kids = tree.children.tolist()
    keeps = [False] * k
    for c in range(k - 1, -1 if allow_single_cluster else 0, -1):
        left, right = kids[c]
        below = stab[left] + stab[right] if left >= 0 else 0.0
        if below > stab[c]:
            stab[c] = below
        else:
            keeps[c] = True
    parent = tree.parent.tolist()
    covered = [False] * k  # a strict ancestor keeps itself
    for c in range(1, k):
        covered[c] = covered[parent[c]] or keeps[parent[c]]
    selected = np.array(keeps) & ~np.array(covered)
    if epsilon != 0.0 and k > 1 and not (selected[0] and allow_single_cluster):
        selected = epsilon_search(tree, selected, epsilon, allow_single_cluster)
    return selected


def epsilon_search(tree: CondensedTree, leaves: np.ndarray, epsilon: float,
                   allow_single_cluster: bool) -> np.ndarray:
    """(k,) bool: each selected leaf born below ``epsilon`` replaced by an ancestor.

    The ancestor is the lowest one born at a distance > epsilon; if the path reaches the
    root first, the root (``allow_single_cluster``) or the root's child on the path.
    Distances are ``1 / lambda``, compared exactly as scikit-learn compares them.
    """
    k = tree.n_clusters
    with np.errstate(divide="ignore"):
        born_at = (1.0 / tree.birth).tolist()
    parent = tree.parent.tolist()
    target = list(range(k))
    for c in range(1, k):
        p = parent[c]
        if p == 0:
            target[c] = 0 if allow_single_cluster else c
        elif born_at[p] > epsilon:
            target[c] = p
        else:
            target[c] = target[p]
    selected = np.zeros(k, bool)
    for c in np.flatnonzero(leaves).tolist():
        selected[target[c] if born_at[c] < epsilon else c] = True
    return selected


def labels_and_probabilities(tree: CondensedTree, selected: np.ndarray, epsilon: float,
                             allow_single_cluster: bool) -> tuple[np.ndarray, np.ndarray]:
    """Step 5: (n,) int64 labels and (n,) float64 probabilities.

    A point belongs to its nearest selected ancestor cluster; labels number the selected
    clusters in order. Points whose nearest selected ancestor is the root are noise,
    unless the root is the one selected cluster (``allow_single_cluster``): then a point
    is in it when its lambda reaches ``1 / epsilon`` (epsilon > 0) or the root's
    largest lambda. Probability: lambda / (the cluster's largest lambda), capped at 1;
    1 at lambda = inf; 0 for noise.
    """
    k = tree.n_clusters
    parent, chosen = tree.parent.tolist(), selected.tolist()
    owner = [0] * k  # nearest selected ancestor-or-self, else the root
    for c in range(1, k):
        owner[c] = c if chosen[c] else owner[parent[c]]
    label_of = np.full(k, NOISE, np.int64)
    label_of[selected] = np.arange(int(selected.sum()))
    owner_of_point = np.array(owner, np.int64)[tree.point_cluster]
    labels = label_of[owner_of_point]
    at_root = owner_of_point == 0
    if allow_single_cluster and selected.sum() == 1:
        with np.errstate(divide="ignore"):
            threshold = 1.0 / epsilon if epsilon != 0.0 else tree.death[0]
        labels[at_root & (tree.point_lambda < threshold)] = NOISE
    else:
        labels[at_root] = NOISE
    return labels, probabilities(tree, labels, owner_of_point)


def probabilities(tree: CondensedTree, labels: np.ndarray, owner: np.ndarray) -> np.ndarray:
    """(n,) float64: each clustered point's lambda over its cluster's largest lambda."""
    death = tree.death[owner]
    lam = tree.point_lambda
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.minimum(lam, death) / death
    prob = np.where((death == 0.0) | np.isinf(lam), 1.0, ratio)
    return np.where(labels == NOISE, 0.0, prob)
