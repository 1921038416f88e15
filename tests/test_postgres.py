"""PostgreSQL works too: the same pipeline on a throwaway server gives the same labels.

Uses ``GPU_CLUSTER_TEST_PG_URL`` when set; otherwise starts a private server with the
machine's ``initdb``/``pg_ctl`` on a Unix socket in a temp dir (skipped when PostgreSQL
or the psycopg driver is missing).
"""

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from sklearn.metrics import adjusted_rand_score

from gpu_cluster.pipeline import RunOptions, cluster_database
from gpu_cluster.results import latest_results
from gpu_cluster.database import open_database
from gpu_cluster.schema import clusteringresult, embeddingcluster, metadata

pytest.importorskip("psycopg")


def pg_bin(name):
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))), None)
    return found


def as_postgres_user(cmd):
    if os.geteuid() == 0:  # initdb refuses to run as root
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


@pytest.fixture(scope="module")
def pg_url():
    if os.environ.get("GPU_CLUSTER_TEST_PG_URL"):
        yield os.environ["GPU_CLUSTER_TEST_PG_URL"]
        return
    initdb, pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("PostgreSQL server binaries not found")
    # Not under pytest's tmp dir: the postgres user must be able to reach it.
    root = Path(tempfile.mkdtemp(prefix="gpu-cluster-pg-"))
    data, sock = root / "data", root / "sock"
    data.mkdir(), sock.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres"), shutil.chown(data, "postgres"), shutil.chown(sock, "postgres")
    subprocess.run(as_postgres_user([initdb, "-D", str(data), "-A", "trust", "-U", "postgres"]),
                   check=True, capture_output=True)
    port = "54329"
    opts = f"-k {sock} -p {port} -c listen_addresses=''"
    subprocess.run(as_postgres_user([pg_ctl, "-D", str(data), "-o", opts, "-l", str(root / "log"),
                                     "-w", "start"]), check=True, capture_output=True)
    try:
        admin = sa.create_engine(f"postgresql+psycopg://postgres@/postgres?host={sock}&port={port}",
                                 isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql("CREATE DATABASE gc")
        admin.dispose()
        yield f"postgresql+psycopg://postgres@/gc?host={sock}&port={port}"
    finally:
        subprocess.run(as_postgres_user([pg_ctl, "-D", str(data), "-m", "immediate", "stop"]),
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def copy_into(src_path, url):
    """Create panic-tda's tables on ``url`` and copy the demo rows (no results)."""
    dst = sa.create_engine(url)
    metadata.drop_all(dst)
    metadata.create_all(dst)
    src = sa.create_engine(f"sqlite:///{src_path}")
    with src.connect() as s, dst.begin() as d:
        for table in metadata.sorted_tables:
            if table.name in ("clusteringresult", "embeddingcluster"):
                continue
            rows = [dict(r._mapping) for r in s.execute(sa.select(table))]
            if rows:
                d.execute(table.insert(), rows)
    src.dispose(), dst.dispose()


def stored_labels(engine, model):
    q = (sa.select(embeddingcluster.c.embedding_id, embeddingcluster.c.cluster_id)
         .join(clusteringresult, clusteringresult.c.id == embeddingcluster.c.clustering_result_id)
         .where(clusteringresult.c.embedding_model == model))
    with engine.connect() as conn:
        return {str(e).replace("-", ""): c for e, c in conn.execute(q)}


def test_postgres_gives_the_same_results_as_sqlite(pg_url, demo_db):
    copy_into(demo_db, pg_url)
    opts = RunOptions(downsample=10, device="cpu", models=("Dummy", "Nomic"))
    on_pg = cluster_database(pg_url, opts)
    on_sqlite = cluster_database(str(demo_db), opts)
    assert [(o.model, o.status, o.n, o.n_clusters) for o in on_pg.outcomes] == \
        [(o.model, o.status, o.n, o.n_clusters) for o in on_sqlite.outcomes]
    pg_engine, lite_engine = open_database(pg_url), open_database(str(demo_db))
    a, b = stored_labels(pg_engine, "Nomic"), stored_labels(lite_engine, "Nomic")
    assert set(a) == set(b) and len(a) == 300
    keys = sorted(a)
    assert adjusted_rand_score([a[k] for k in keys], [b[k] for k in keys]) == 1.0
    latest = latest_results(pg_engine)
    assert set(latest) == {"Nomic"} and latest["Nomic"].n == 300
    assert latest["Nomic"].parameters["downsample"] == 10
