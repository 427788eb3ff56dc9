"""The entry points' glibc malloc thresholds (cliptrase_d2/engine/allocator.py)."""

import os
import platform
import subprocess
import sys

import pytest

from conftest import REPO
from cliptrase_d2.engine import allocator

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")


def _tune_in_fresh_process(**env) -> str:
    """What tune_cpu_allocator() answers twice in a new interpreter with ``env`` added."""
    clean = {k: v for k, v in os.environ.items() if k not in allocator.USER_SETTINGS}
    clean.pop(allocator.OPT_OUT, None)
    code = "from cliptrase_d2.engine.allocator import tune_cpu_allocator as t; print(t(), t())"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**clean, **env, "PYTHONPATH": REPO},
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


@glibc
def test_glibc_accepts_the_thresholds():
    # mallopt answers 0 for a value out of its range: True means glibc took both values
    assert _tune_in_fresh_process() == "True True"


@glibc
@pytest.mark.parametrize(
    "setting",
    [
        {"MALLOC_MMAP_THRESHOLD_": "131072"},
        {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"},
        {"CLIPTRASE_MALLOC": "default"},
    ],
)
def test_a_process_with_its_own_malloc_settings_is_left_alone(setting):
    assert _tune_in_fresh_process(**setting) == "False False"


@pytest.fixture
def untuned(monkeypatch):
    """This process as if tune_cpu_allocator() had never run and no malloc setting were set."""
    monkeypatch.setattr(allocator, "_applied", None)
    for name in (*allocator.USER_SETTINGS, allocator.OPT_OUT):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_mallopt_gets_the_two_thresholds_once(untuned):
    calls = []
    untuned.setattr(
        allocator, "_glibc_mallopt", lambda: lambda param, value: calls.append((param, value)) or 1
    )
    assert allocator.tune_cpu_allocator() and allocator.tune_cpu_allocator()
    assert calls == [(-3, 32 * 2**20), (-1, 64 * 2**20)]  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD


def test_a_refused_value_is_reported_not_assumed(untuned, caplog):
    untuned.setattr(allocator, "_glibc_mallopt", lambda: lambda param, value: 0)
    assert allocator.tune_cpu_allocator() is False
    assert "glibc refused the malloc thresholds" in caplog.text


def test_without_glibc_nothing_is_called(untuned):
    untuned.setattr(platform, "libc_ver", lambda *a, **k: ("", ""))
    assert allocator._glibc_mallopt() is None
    assert allocator.tune_cpu_allocator() is False
