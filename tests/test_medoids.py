"""Blocked medoids equal scikit-learn's HDBSCAN(store_centers='medoid')."""

import numpy as np
import pytest
from sklearn.cluster import HDBSCAN

from gpu_cluster import medoids
from gpu_cluster.medoids import medoid_indices, member_indices, weighted_distance_sums
from helpers import blobs


def brute_sums(x, w):
    d = np.sqrt(((x[:, None, :].astype(np.float64) - x[None, :, :]) ** 2).sum(-1))
    return d @ w


@pytest.mark.parametrize("block", [1, 7, 64, 4096])
def test_blocked_sums_equal_brute_force(block):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((150, 12)).astype(np.float32)
    w = rng.random(150)
    members = np.arange(150)
    got = weighted_distance_sums(x, members, members, w, block=block)
    np.testing.assert_allclose(got, brute_sums(x, w), rtol=1e-9, atol=1e-9)


def test_member_indices_groups_by_label():
    labels = np.array([1, -1, 0, 1, 0, 2])
    assert [m.tolist() for m in member_indices(labels, 3)] == [[2, 4], [0, 3], [5]]


@pytest.mark.parametrize("seed", [0, 1])
def test_medoids_equal_sklearn_store_centers(seed):
    x = blobs(600, 64, seed=seed, centres=5)
    x[300:400] = x[200:300]  # duplicates: identical texts embed identically
    ref = HDBSCAN(min_cluster_size=10, min_samples=5, store_centers="medoid", copy=True).fit(x)
    rows = medoid_indices(x, ref.labels_.astype(np.int64), ref.probabilities_, block=50)
    assert len(rows) == ref.medoids_.shape[0] > 1
    for c, row in enumerate(rows):
        assert ref.labels_[row] == c
        if not np.array_equal(x[row], ref.medoids_[c]):
            # Only a floating-point tie may pick a different member: equal objective.
            members = np.flatnonzero(ref.labels_ == c)
            w = ref.probabilities_[members]
            s = brute_sums(x[members], w)
            theirs = members[np.flatnonzero((x[members] == ref.medoids_[c]).all(1))[0]]
            assert s[members.tolist().index(row)] == pytest.approx(s[members.tolist().index(theirs)], rel=1e-9)


def test_no_clusters_gives_empty_medoids():
    x = blobs(10, 8)
    assert medoid_indices(x, np.full(10, -1), np.zeros(10)).shape == (0,)


def test_rows_and_columns_may_differ():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((80, 6)).astype(np.float32)
    w = rng.random(80)
    rows = np.array([5, 17, 60])
    got = weighted_distance_sums(x, rows, np.arange(80), w, block=16)
    np.testing.assert_allclose(got, brute_sums(x, w)[rows], rtol=1e-9)


def test_approximate_medoid_is_close_to_exact(monkeypatch):
    """Large clusters are approximated: the objective stays within 1% of the exact one."""
    monkeypatch.setattr(medoids, "SAMPLE_SIZE", 256)  # a sample far smaller than the cluster
    monkeypatch.setattr(medoids, "CANDIDATES", 16)
    x = blobs(6000, 32, seed=4, centres=2, spread=0.4)
    labels = (x[:, 0] > np.median(x[:, 0])).astype(np.int64)  # two big "clusters"
    probs = np.random.default_rng(2).uniform(0.2, 1.0, 6000)
    exact = medoid_indices(x, labels, probs)
    approx = medoid_indices(x, labels, probs, exact_max_members=1000)
    for c in (0, 1):
        members = np.flatnonzero(labels == c)
        s = weighted_distance_sums(x, members, members, probs[members])
        objective = dict(zip(members.tolist(), s))
        assert objective[int(approx[c])] <= 1.01 * objective[int(exact[c])]
        assert objective[int(approx[c])] >= objective[int(exact[c])]


def brute_medoid(x, members, w):
    """argmin_i sum_j w_j ||x_i - x_j|| over every member (float64), first on ties."""
    a = x[members].astype(np.float64)
    d = np.sqrt(np.maximum(((a[:, None, :] - a[None, :, :]) ** 2).sum(-1), 0.0))
    return members[int(np.argmin(d @ w))]


def test_repeated_rows_count_once_with_their_summed_weights():
    rng = np.random.default_rng(4)
    base = blobs(120, 16, seed=4, centres=2)
    x = base[rng.integers(0, 120, size=900)]  # 900 rows, ~120 distinct, repeats everywhere
    labels = (x[:, 0] > np.median(x[:, 0])).astype(np.int64)
    probs = rng.uniform(0.2, 1.0, size=900)
    got = medoid_indices(x, labels, probs, block=64)
    for c, members in enumerate(member_indices(labels, 2)):
        assert got[c] == brute_medoid(x, members, probs[members])
    # the approximate path scores the distinct rows too: with as many distinct members as
    # the exact limit allows, a cluster of 450 rows is exact
    exact = medoid_indices(x, labels, probs, exact_max_members=130)
    assert np.array_equal(exact, got)


def test_distinct_members_keeps_first_occurrences_in_row_order():
    x = np.array([[1, 0], [0, 1], [1, 0], [0, 1], [1, 1]], np.float32)
    members = np.arange(5)
    rows, w = medoids.distinct_members(x, members, np.array([1., 2., 3., 4., 5.]),
                                       medoids.row_hashes(x))
    assert rows.tolist() == [0, 1, 4] and w.tolist() == [4.0, 6.0, 5.0]


@pytest.mark.parametrize("spread", [0.3, 1e-5])
def test_exact_medoid_is_the_float64_argmin_even_for_a_tight_cluster(spread):
    """The float32 ranking must not lose the medoid: at a spread of 1e-5 (distances ~4e-4)
    float32 cosine-scale rounding (~1e-7 of |x|²) would scramble an uncentred ranking."""
    rng = np.random.default_rng(7)
    for _ in range(3):
        centre = rng.standard_normal(768)
        x = (centre / np.linalg.norm(centre) + spread * rng.standard_normal((1500, 768))).astype(np.float32)
        w = rng.uniform(0.2, 1.0, x.shape[0])
        members = np.arange(x.shape[0])
        truth = int(np.argmin(weighted_distance_sums(x, members, members, w)))  # one float64 pass
        assert medoids.exact_medoid(x, members, w, block=512) == truth


def test_tiles_of_disjoint_index_ranges_skip_the_self_mask():
    assert not medoids.may_share_rows(np.array([0, 3]), np.array([4, 9]))
    assert medoids.may_share_rows(np.array([0, 5]), np.array([4, 9]))
    assert medoids.may_share_rows(np.array([9, 2]), np.array([7]))  # unsorted: by range
