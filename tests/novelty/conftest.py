"""Fixtures of the novelty tests: the synthetic task of :mod:`.helpers` and one analysis of novel models."""

import pytest

from pdiff_hf.novelty import analyze_novelty

from .helpers import NUM_GEN, make_task


@pytest.fixture(scope="module")
def task():
    return make_task()


@pytest.fixture(scope="module")
def novel_report(task):
    model, layout, data, train, fresh, _ = task
    return analyze_novelty(model, layout, train, fresh(NUM_GEN), data)
