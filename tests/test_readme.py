"""The README's example block runs as written; the quick start scripts exist."""

import re
import shlex
from pathlib import Path

from click.testing import CliRunner

from gpu_cluster.cli import main

ROOT = Path(__file__).resolve().parents[1]


def example_lines() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- readme-example:start -->\s*```bash\n(.*?)```", text, re.S).group(1)
    return [shlex.split(line) for line in block.strip().splitlines()]


def test_readme_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lines = example_lines()
    assert [line[:2] for line in lines] == [["gpu-cluster", c] for c in
                                           ("demo-db", "plan", "cluster", "list", "status", "delete")]
    outputs = []
    for argv in lines:
        res = CliRunner().invoke(main, argv[1:])
        assert res.exit_code == 0, f"{argv}: {res.output}"
        outputs.append(res.output)
    assert "done: 3 clustered, 1 skipped, 0 failed" in outputs[2]
    assert "3 result(s)" in outputs[3]


def test_quick_start_commands_are_the_scripts():
    text = (ROOT / "README.md").read_text()
    assert "bash scripts/demo.sh" in text and "bash scripts/test.sh" in text
    assert "bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text()
