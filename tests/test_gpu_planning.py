"""GPU memory planning: the measured formula, capping, refusals, sizes (no GPU needed)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gpu_cluster.errors import ParameterError
from gpu_cluster.backends.cuml_memory import (
    GIB,
    GpuMemoryError,
    index_limit,
    parse_bytes,
    peak_bytes,
    plan_min_samples,
)

N, DIM = 1_100_000, 768  # the production-sized model of cuml_facts


@pytest.mark.parametrize("cuml_min_samples, gib", [(100, 17.7), (500, 75.0), (1023, 150.0)])
def test_formula_reproduces_the_measured_numbers(cuml_min_samples, gib):
    # cuml_facts' numbers are in cuML's convention; the API takes scikit-learn's (+1).
    assert peak_bytes(N, DIM, cuml_min_samples + 1) / GIB == pytest.approx(gib, abs=0.1)


def test_index_limit_matches_the_suspected_overflow():
    # Overflow suspected from cuML min_samples 976 at n = 1.1M: sklearn 977 is the first bad.
    assert index_limit(N) == 976
    assert 2 * N * 976 < 2**31 <= 2 * N * 977


def test_default_fits_as_requested():
    plan = plan_min_samples(10_000, DIM, 10, 80 * GIB, explicit=False)
    assert (plan.min_samples, plan.capped) == (10, False)
    assert plan.planned_bytes == peak_bytes(10_000, DIM, 10)
    assert plan.reason.startswith("min_samples=10 as defaulted; planned")


def test_default_capped_by_memory_on_an_80_gib_card():
    # The original default 0.1% of n = 1,100: over cuML's cap and over the card.
    plan = plan_min_samples(N, DIM, 1100, 80 * GIB, explicit=False)
    assert plan.capped and plan.min_samples == 452
    assert plan.planned_bytes <= plan.budget_bytes == int(0.85 * 80 * GIB)
    assert peak_bytes(N, DIM, 453) > plan.budget_bytes
    assert "capped from 1100 to 452 because the fit must fit in 68.0 GiB" in plan.reason
    assert plan.as_dict()["requested_min_samples"] == 1100


def test_default_capped_by_the_index_limit_on_a_huge_card():
    plan = plan_min_samples(N, DIM, 1100, 1024 * GIB, explicit=False)
    assert plan.min_samples == 976
    assert "2**31" in plan.reason


def test_default_capped_by_cumls_range():
    plan = plan_min_samples(10_000, DIM, 2000, 80 * GIB, explicit=False)
    assert plan.min_samples == 1024
    assert "cuML accepts min_samples <= 1023" in plan.reason


def test_safety_margin_is_applied():
    free = peak_bytes(N, DIM, 100)
    assert plan_min_samples(N, DIM, 100, free, explicit=False, safety=1.0).min_samples == 100
    assert plan_min_samples(N, DIM, 100, free, explicit=False).min_samples < 100


def test_nothing_fits_is_refused_clearly():
    with pytest.raises(GpuMemoryError, match=r"nothing fits on the GPU for n=1,100,000, "
                       r"dim=768: even min_samples=2 needs 3\.4 GiB, free 1\.0 GiB") as info:
        plan_min_samples(N, DIM, 1100, 1 * GIB, explicit=False)
    # One line for the CLI, and a failed model (not a fatal run) for the pipeline.
    assert isinstance(info.value, ParameterError) and isinstance(info.value, MemoryError)


def test_explicit_value_that_does_not_fit_is_refused():
    with pytest.raises(GpuMemoryError, match=r"--min-samples 600 does not fit on the GPU .* "
                       r"the largest that fits is 452"):
        plan_min_samples(N, DIM, 600, 80 * GIB, explicit=True)


def test_explicit_value_that_fits_is_kept():
    plan = plan_min_samples(N, DIM, 300, 80 * GIB, explicit=True)
    assert (plan.min_samples, plan.capped) == (300, False)
    assert "as given" in plan.reason


@pytest.mark.parametrize("value", [1, 1025, 5000])
def test_explicit_value_outside_cumls_range_is_a_parameter_error(value):
    with pytest.raises(ParameterError, match=rf"min_samples={value} cannot run on the GPU: it must be "
                       r"from 2 to 1024 \(cuML's 1\.\.1023"):
        plan_min_samples(1000, DIM, value, 80 * GIB, explicit=True)


@pytest.mark.parametrize("text, expected", [
    ("80GiB", 80 * 2**30), ("80 GiB", 80 * 2**30), ("80gib", 80 * 2**30),
    ("40GB", 40 * 10**9), ("512MiB", 512 * 2**20), ("512MB", 512 * 10**6),
    ("1.5TiB", int(1.5 * 2**40)), ("2KiB", 2048), ("123456", 123456), ("100B", 100),
])
def test_parse_bytes(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["", "GiB", "80 GiBs", "-1GiB", "eighty", "0", "1e9"])
def test_parse_bytes_refuses_garbage(text):
    with pytest.raises(ParameterError, match=r"expected a size such as 80GiB|must be more than 0 bytes"):
        parse_bytes(text)


def test_gpu_modules_import_without_cupy_or_cuml():
    code = ("import sys, gpu_cluster.backends.cuml_memory, gpu_cluster.staging, "
            "gpu_cluster.backends.cuml_gpu; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('cupy', 'cuml')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
