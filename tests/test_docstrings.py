"""The docstring examples outside the pruning engine (whose own are run in tests/pruning) stay true."""

from __future__ import annotations

import doctest
import importlib

import pytest


@pytest.mark.parametrize("module", ["prunesweep.tracking.run", "prunesweep.report", "prunesweep.config"])
def test_docstring_examples_run(module: str) -> None:
    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0
