"""Shared fixtures: a small panic-tda-shaped demo database, copied per test."""

from __future__ import annotations

import shutil

import pytest

from gpu_cluster.demo import DemoSpec
from helpers import make_copyable_demo

# 3,000 TEXT invocations -> 3,000 vectors per real model; factor 10 -> 300 per model.
DEMO_SPEC = DemoSpec(text_invocations=3000, dim=768, seed=1, max_length=60)


@pytest.fixture(scope="session")
def demo_template(tmp_path_factory):
    return make_copyable_demo(tmp_path_factory.mktemp("demo") / "template.sqlite", DEMO_SPEC)


@pytest.fixture
def demo_db(demo_template, tmp_path):
    """A private copy of the demo database (tests may write to it)."""
    path = tmp_path / "demo.sqlite"
    shutil.copy(demo_template, path)
    return path
