"""The clustering's output, shared by every stage after the fit: ``Labels`` and ``NOISE``.

Below every stage (it imports nothing of this package), so that the fit child, medoids,
the writer and the stored-results reader name the same sentinel without importing the
backends.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NOISE = -1


@dataclass
class Labels:
    """HDBSCAN output for n points.

    labels: (n,) int64, cluster ids 0..k-1, ``NOISE`` (-1) for outliers.
    probabilities: (n,) float64 membership strengths in [0, 1] (0 for noise).
    details: the backend's facts about the fit (library, method, seconds), stored as JSON.
    """

    labels: np.ndarray
    probabilities: np.ndarray
    details: dict

    @property
    def n_clusters(self) -> int:
        return int(self.labels.max()) + 1 if self.labels.size else 0

    @property
    def n_noise(self) -> int:
        return int((self.labels == NOISE).sum())
