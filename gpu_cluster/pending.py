"""Computed results that could not be stored yet, kept in a file beside the database.

A fit can take hours; the write that ends it can meet a lock held past ``--lock-timeout``,
an interruption while waiting, or a full disk. The computed result is then not thrown
away: it is saved, with the state it belongs to, in ``<db>.pending/`` beside a SQLite
file (``./gpu-cluster-pending/<database>/`` for a server URL), one ``.npz`` file per
model. A later ``cluster`` run with the same model, selection and parameters stores it
instead of fitting again, and ``gpu-cluster store-pending DB`` stores every kept result
whose rows are unchanged — both only after the selected rows' fingerprint is checked.

The fingerprint identifies the selected rows and their vectors as read (before
normalisation): SHA-256 over the ids and a 64-bit hash of each row's float32 vector, in
id order, so it does not depend on the order rows were read in nor on the device that
holds them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .device import to_host
from .distinct import row_hashes

FORMAT = 1


def fingerprint(ids: np.ndarray, vectors) -> str:
    """Hex SHA-256 of the rows ``ids`` (S32, (n,)) in id order, each with its vector's
    ``row_hashes`` ((n, d) float32, NumPy or CuPy, hashed where it lies): the same rows
    give the same value in any read order, on either device. Any one changed word of a
    vector changes it; several, but for a 2^-64 chance (a SHA-256 of all the vector
    bytes took 6.7 s at 1.1M rows, this takes ~1 s)."""
    order = np.argsort(ids, kind="stable")
    digest = hashlib.sha256(np.ascontiguousarray(ids[order]).tobytes())
    digest.update(str(tuple(vectors.shape)).encode())
    digest.update(np.ascontiguousarray(to_host(row_hashes(vectors))[order], "<u8").tobytes())
    return digest.hexdigest()


def pending_dir(target_label: str, sqlite_path: Path | None) -> Path:
    """Where a database's kept results live: beside the file, or under the working dir."""
    if sqlite_path is not None:
        return sqlite_path.with_name(sqlite_path.name + ".pending")
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", re.sub(r"//[^@/]*@", "//", target_label))
    return Path.cwd() / "gpu-cluster-pending" / slug.strip("_")


@dataclass
class PendingResult:
    """A computed result and the state it belongs to.

    ids: (n,) S32; labels: (n,) int64; probabilities: (n,) float64; medoid_rows: (k,)
    int64. ``key`` identifies what was computed: model, downsample, selection rule,
    fingerprint, backend and the HDBSCAN parameters; ``parameters`` is the JSON to store.
    """

    key: dict
    ids: np.ndarray
    labels: np.ndarray
    probabilities: np.ndarray
    medoid_rows: np.ndarray
    parameters: dict
    result_id: str
    computed_at: str = ""
    path: Path | None = None

    @property
    def model(self) -> str:
        return self.key["model"]


def result_key(model: str, downsample: int, rule: str, fprint: str, backend: str,
               params: dict) -> dict:
    """What a kept result must agree on with a run to be stored by it."""
    return {"model": model, "downsample": downsample, "selection_rule": rule,
            "fingerprint": fprint, "backend": backend, "params": params}


def save(directory: Path, result: PendingResult) -> Path:
    """Write ``result`` durably (temporary file, fsync, rename); returns its path."""
    directory.mkdir(parents=True, exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", result.model)[:60]
    path = directory / f"{safe}-{result.key['fingerprint'][:12]}.npz"
    meta = {"format": FORMAT, "key": result.key, "parameters": result.parameters,
            "result_id": result.result_id,
            "computed_at": result.computed_at or dt.datetime.now().isoformat(timespec="seconds")}
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, ids=result.ids, labels=result.labels,
                 probabilities=np.asarray(result.probabilities, np.float64),
                 medoid_rows=result.medoid_rows, meta=np.array(json.dumps(meta)))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    result.path = path
    return path


def load(path: Path) -> PendingResult:
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        return PendingResult(meta["key"], data["ids"], data["labels"], data["probabilities"],
                             data["medoid_rows"], meta["parameters"], meta["result_id"],
                             meta["computed_at"], path)


def kept_results(directory: Path, model: str | None = None) -> list[PendingResult]:
    """Every readable kept result in ``directory`` (optionally one model's), oldest first."""
    if not directory.is_dir():
        return []
    found = []
    for path in sorted(directory.glob("*.npz"), key=lambda p: p.stat().st_mtime):
        try:
            kept = load(path)
        except (OSError, ValueError, KeyError):  # a half-written or foreign file
            continue
        if model is None or kept.model == model:
            found.append(kept)
    return found


def discard(result: PendingResult) -> None:
    """Remove a kept result's file (once it is stored), and the folder when empty."""
    if result.path is not None and result.path.exists():
        result.path.unlink()
        try:
            result.path.parent.rmdir()
        except OSError:
            pass
