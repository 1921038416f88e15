"""The whole GPU branch of a run, on the CPU: a stand-in device and a stand-in cuML.

What a machine without a GPU can prove about ``--device gpu``: vectors stream through
the double-buffered staging sink (NumPy stand-in whose copies complete only at a stream
sync), min_samples is planned against the device's free memory, the cuML adapter's
translated parameters reach a class with cuML's documented signature (behaving like
scikit-learn at min_samples + 1), medoids run on the result, and the stored parameters
say GPU, device name, memory plan and cuML's min_samples.
"""

import json

import numpy as np
import pytest
from sklearn.cluster import HDBSCAN
from sklearn.metrics import adjusted_rand_score

from gpu_cluster import pipeline, staging
from gpu_cluster.backends import cuml_memory as gpu_memory
from gpu_cluster.budget import GIB
from gpu_cluster.device import Device
from gpu_cluster.pipeline import RunOptions, cluster_database
from helpers import raw
from test_cuml_adapter import sklearn_in_cuml_convention, stand_in  # noqa: F401 (fixture)
from test_staging import DeferredTransfer


@pytest.fixture
def simulated_gpu(monkeypatch, stand_in):  # noqa: F811
    stand_in(sklearn_in_cuml_convention)
    transfers = []

    def transfer():
        transfers.append(DeferredTransfer())
        return transfers[-1]

    monkeypatch.setattr(staging, "CupyTransfer", transfer)
    monkeypatch.setattr(pipeline, "resolve_device",
                        lambda requested: Device("gpu", "simulated for a test", "Stand-in GPU"))
    monkeypatch.setattr(gpu_memory, "free_device_memory", lambda: 8 * GIB)
    return transfers


def test_gpu_branch_end_to_end(demo_db, simulated_gpu):
    summary = cluster_database(str(demo_db), RunOptions(downsample=10, device="gpu",
                                                        models=("Nomic", "Dummy")))
    assert [(o.model, o.status) for o in summary.outcomes] == [("Nomic", "clustered"),
                                                               ("Dummy", "skipped")]
    assert len(simulated_gpu) == 1 and simulated_gpu[0].overwritten_in_flight == 0
    assert sum(e[0] == "copy" for e in simulated_gpu[0].events) >= 1
    rid, text = raw(demo_db, "SELECT id, parameters FROM clusteringresult")[0]
    p = json.loads(text)
    assert (p["backend"], p["device"], p["device_name"]) == ("cuml", "gpu", "Stand-in GPU")
    assert p["memory_plan"]["where"] == "GPU" and p["memory_plan"]["available_bytes"] == 8 * GIB
    assert p["backend_details"]["min_samples_cuml"] == p["min_samples"] - 1
    rows = raw(demo_db, "SELECT e.vector, c.cluster_id FROM embeddingcluster c JOIN embedding e "
                        "ON e.id = c.embedding_id WHERE c.clustering_result_id = ?", rid)
    x = np.stack([np.frombuffer(v, "<f4") for v, _ in rows]).astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ref = HDBSCAN(min_cluster_size=p["min_cluster_size"], min_samples=p["min_samples"],
                  cluster_selection_epsilon=0.4, allow_single_cluster=True, copy=True).fit(x)
    assert adjusted_rand_score(ref.labels_, [c for _, c in rows]) == 1.0


def test_gpu_memory_too_small_fails_the_model_not_the_run(demo_db, simulated_gpu, monkeypatch):
    monkeypatch.setattr(gpu_memory, "free_device_memory", lambda: 1024)
    summary = cluster_database(str(demo_db), RunOptions(downsample=10, device="gpu",
                                                        models=("Nomic", "STSBMpnet")))
    assert [o.status for o in summary.outcomes] == ["failed", "failed"]
    assert "nothing fits on the GPU for n=300" in summary.outcomes[0].reason
    assert not simulated_gpu  # known before reading: no vector was streamed
    assert raw(demo_db, "SELECT count(*) FROM clusteringresult") == [(0,)]
