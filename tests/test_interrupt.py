"""SIGTERM/SIGINT at random points of a real ``gpu-cluster cluster`` process: each model's
result is in the database whole or not at all, and the log says where the run stopped."""

from __future__ import annotations

import json
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest
from helpers import raw

pytestmark = pytest.mark.slow  # kills a real run at random points

# The real CLI, with each membership chunk slowed down (in this test's child process
# only) so that a kill can land inside the write transaction: 15 chunks of 100 rows,
# 60 ms each, per model (the fit itself now takes ~0.05 s here, so the writes are what
# keeps the run long enough for every kill to land in it). A "chunk from row 100" line
# means rows were already inserted.
CHILD = """
import sys, time
import gpu_cluster.writer as writer
writer.WRITE_CHUNK = 100
real_rows = writer.membership_rows
def slow_rows(result, result_id, start, stop):
    time.sleep(0.06)
    print(f"harness: {result.model} chunk from row {start}", file=sys.stderr, flush=True)
    return real_rows(result, result_id, start, stop)
writer.membership_rows = slow_rows
from gpu_cluster.cli import main
main(sys.argv[1:], prog_name="gpu-cluster")
"""
ARGS = ["cluster", "-d", "2", "--model", "Nomic", "--model", "STSBMpnet", "--device", "cpu",
        "--heartbeat", "0.5"]
SEED = 20261129
# (log line that starts the timer, range of the random delay after it, s); 1,500 rows each.
TRIGGERS = [("survey: started", (0.0, 0.3)), ("Nomic: read: started", (0.0, 0.05)),
            ("Nomic: cluster: started", (0.1, 1.0)), ("Nomic: write: started", (0.1, 0.3)),
            ("STSBMpnet: medoids: started", (0.0, 0.05)),
            ("STSBMpnet: write: started", (0.1, 0.3))]
STOP_LINE = re.compile(r"interrupted during (?:(\w+): )?(\w+); (\d+) model\(s\) already stored")


@dataclass
class KillPoint:
    trigger: str | None  # log line to wait for; None: a delay from process start
    delay: float
    signum: int
    sigint_ignored: bool = False  # started as a background job under nohup is
    returncode: int = 0
    log: str = ""
    results: int = 0
    partial: int = 0
    stopped_at: tuple = field(default_factory=tuple)


def kill_points() -> list[KillPoint]:
    rng = random.Random(SEED)
    points = []
    for trigger, (low, high) in TRIGGERS:
        signum = rng.choice([signal.SIGTERM, signal.SIGINT])
        ignored = signum == signal.SIGINT and rng.random() < 0.5
        points.append(KillPoint(trigger, rng.uniform(low, high), signum, ignored))
    points += [KillPoint(None, rng.uniform(0.2, 1.5), signal.SIGTERM) for _ in range(2)]
    return points


def partial_results(path) -> int:
    """Results whose membership count differs from their parameters' n, plus orphans."""
    bad = 0
    for rid, params in raw(path, "SELECT id, parameters FROM clusteringresult"):
        members = raw(path, "SELECT count(*) FROM embeddingcluster "
                            "WHERE clustering_result_id = ?", rid)
        bad += members[0][0] != json.loads(params)["n"]
    orphans = raw(path, "SELECT count(DISTINCT c.clustering_result_id) FROM embeddingcluster c "
                        "LEFT JOIN clusteringresult r ON r.id = c.clustering_result_id "
                        "WHERE r.id IS NULL")[0][0]
    return bad + orphans


def run_and_kill(point: KillPoint, path) -> KillPoint:
    command = [sys.executable, "-c", CHILD, *ARGS, str(path)]
    if point.sigint_ignored:
        command = ["bash", "-c", 'trap "" INT; exec "$@"', "bash", *command]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    timer = threading.Timer(point.delay, proc.send_signal, [point.signum])
    if point.trigger is None:
        timer.start()
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if point.trigger and point.trigger in line:
            timer.start()
            point.trigger += " "  # seen: start the timer once
    point.returncode = proc.wait(timeout=120)
    timer.cancel()
    point.log = "".join(lines)
    point.results = raw(path, "SELECT count(*) FROM clusteringresult")[0][0]
    point.partial = partial_results(path)
    assert raw(path, "PRAGMA integrity_check") == [("ok",)]
    if m := STOP_LINE.search(point.log):
        point.stopped_at = (m.group(1), m.group(2), int(m.group(3)))
    return point


def test_kills_at_random_points_leave_no_partial_result(demo_template, tmp_path):
    points = kill_points()
    paths = [tmp_path / f"kill{i}.sqlite" for i in range(len(points))]
    for path in paths:
        shutil.copy(demo_template, path)
    with ThreadPoolExecutor(max_workers=3) as pool:
        done = list(pool.map(run_and_kill, points, paths))
    for p in done:
        name = signal.Signals(p.signum).name
        where = f"{p.trigger!r} + {p.delay:.2f}s {name}: rc {p.returncode}\n{p.log}"
        assert p.trigger is None or p.trigger.endswith(" "), f"trigger never logged: {where}"
        assert p.partial == 0, where
        assert p.returncode != 0, where
        if p.trigger is None and not p.stopped_at:  # killed while starting: nothing written
            assert p.results == 0, where
            continue
        assert p.returncode == 128 + p.signum, where
        assert f"gpu-cluster: interrupted by {name}" in p.log, where
        model, stage, stored = p.stopped_at
        # The model being written at the kill is stored whole or not at all.
        assert p.results == stored or (stage == "write" and p.results == stored + 1), where
        assert p.results < 2, where
    stages = [p.stopped_at[1] for p in done if p.stopped_at]
    assert len(set(stages)) >= 3, stages
    mid_write = [p for p in done if p.stopped_at and p.stopped_at[1] == "write"
                 and f"{p.stopped_at[0]} chunk from row 100" in p.log
                 and f"{p.stopped_at[0]}: write: finished" not in p.log]
    assert mid_write, "no kill landed inside a write transaction with rows inserted"
    signals = [signal.Signals(p.signum).name + (" (was ignored)" if p.sigint_ignored else "")
               for p in done]
    print(f"\n{len(done)} kill points {signals}; stopped at {stages}; {len(mid_write)} inside "
          f"a write transaction with rows inserted; {sum(p.partial for p in done)} partial "
          f"results; results stored {[p.results for p in done]}")
