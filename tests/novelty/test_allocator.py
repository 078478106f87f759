"""pdiff_hf.novelty.allocator: the malloc tuning is process-wide, so the library never calls it; entry points do."""

import inspect
import platform
import re
import sys
from pathlib import Path

import pytest

import pdiff_hf
from pdiff_hf import novelty
from pdiff_hf.novelty import allocator, analyze_novelty

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


class FakeLibc:
    def __init__(self):
        self.calls = []

    def mallopt(self, param, value):
        self.calls.append((param, value))
        return 1


class FakeCtypes:
    def __init__(self):
        self.libc = FakeLibc()

    def CDLL(self, name):  # noqa: N802 - the ctypes name
        assert name == "libc.so.6"
        return self.libc


def test_analyze_novelty_leaves_the_allocator_alone(task, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("library code changed the process's malloc settings")

    fake = FakeCtypes()
    monkeypatch.setattr(allocator, "ctypes", fake)
    monkeypatch.setattr(allocator, "tune_cpu_allocator", refuse)
    monkeypatch.setattr(novelty, "tune_cpu_allocator", refuse)
    before = allocator.allocator_tuned()
    model, layout, data, train, fresh, _ = task
    report = analyze_novelty(model, layout, train, fresh(3), data, num_baseline=2)
    assert report.verdict[-1].startswith("Verdict:")
    assert fake.libc.calls == [] and allocator.allocator_tuned() == before
    assert "tune_allocator" not in inspect.signature(analyze_novelty).parameters


def test_only_entry_points_call_the_tuning():
    """Library modules never call tune_cpu_allocator; the pdiff-hf commands do."""
    root = Path(pdiff_hf.__file__).parent
    call = re.compile(r"(?<!def )tune_cpu_allocator\(")
    callers = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.py") if call.search(p.read_text("utf-8")))
    assert callers == ["commands/demo.py", "commands/evaluate.py"]


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_tuning_raises_both_thresholds_once(monkeypatch):
    fake = FakeCtypes()
    monkeypatch.setattr(allocator, "ctypes", fake)
    monkeypatch.setattr(allocator, "_ALLOCATOR_TUNED", False)
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    assert allocator.tune_cpu_allocator() is True and allocator.allocator_tuned()
    assert fake.libc.calls == [(-3, 32 << 20), (-1, 256 << 20)]  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD
    assert allocator.tune_cpu_allocator() is True and len(fake.libc.calls) == 2  # once per process


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_tuning_defers_to_the_environment(monkeypatch):
    fake = FakeCtypes()
    monkeypatch.setattr(allocator, "ctypes", fake)
    monkeypatch.setattr(allocator, "_ALLOCATOR_TUNED", False)
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "1048576")
    assert allocator.tune_cpu_allocator() is False and fake.libc.calls == []
