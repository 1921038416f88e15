"""The terminal shows the truth: run ``gpu-cluster cluster`` under a pseudo-terminal,
replay every byte it wrote through a terminal emulator (pyte), and check that the
final screen still shows every log and summary line, and no leftover bar."""

from __future__ import annotations

import os
import re
import select
import struct
import subprocess
import sys
import termios
import fcntl

import pytest

pytestmark = pytest.mark.slow  # a real run on a pseudo-terminal

pyte = pytest.importorskip("pyte")

COLS, ROWS = 250, 300
STAGES = ("read", "cluster", "medoids", "write")


def run_in_pty(*args: str) -> bytes:
    """Everything the CLI wrote to its terminal (stdout and stderr share it)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLS, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "COLUMNS", "LINES")}
    env["TERM"] = "xterm-256color"
    proc = subprocess.Popen([sys.executable, "-c", "from gpu_cluster.cli import main; main()",
                             *args], stdin=slave, stdout=slave, stderr=slave, env=env,
                            start_new_session=True)
    os.close(slave)
    out = bytearray()
    while True:
        ready, _, _ = select.select([master], [], [], 120)
        assert ready, "no output for 120 s"
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert proc.wait(timeout=60) == 0, out.decode(errors="replace")[-3000:]
    return bytes(out)


def final_screen(data: bytes) -> list[str]:
    screen = pyte.Screen(COLS, ROWS)
    pyte.ByteStream(screen).feed(data)
    return [line.rstrip() for line in screen.display]


def test_every_line_of_the_run_stays_on_the_final_screen(demo_db):
    data = run_in_pty("cluster", str(demo_db), "-d", "10", "--device", "cpu")
    assert b"\x1b[" in data  # a live display really drew (and moved the cursor)
    lines = [line for line in final_screen(data) if line]
    text = "\n".join(lines)
    models = ("Nomic", "STSBMpnet", "STSBRoberta")
    expected = ["survey: started", "survey: finished in",
                "Dummy: SKIPPED: only 1 usable vector(s) selected"]
    for m in models:
        for stage in STAGES:
            expected += [f"{m}: {stage}: started", f"{m}: {stage}: finished in"]
        expected.append(f"{m}: clustered n=300 into")
    expected.append("Dummy: skipped: only 1 usable vector(s) selected")  # the summary (stdout)
    expected += [f"{m}: clustered n=300 clusters=" for m in models]
    expected.append("done: 3 clustered, 1 skipped, 0 failed")
    found = [next((i for i, line in enumerate(lines) if e in line), None) for e in expected]
    missing = [e for e, i in zip(expected, found) if i is None]
    assert not missing, f"missing from the final screen: {missing}\n{text}"
    assert "━" not in text, text  # no bar is left behind
    ordered = [i for i in found if i is not None]
    assert ordered == sorted(ordered), text  # in the order they happened
    assert lines[-1] == "done: 3 clustered, 1 skipped, 0 failed"
    records = [line for line in lines if re.search(r"\b(INFO|WARNING|ERROR)\b", line)]
    print(f"\n{len(data):,} bytes replayed; final screen: {len(lines)} lines, {len(records)} "
          f"log records, {len(expected)} expected lines all present in order, no bar left")
