"""Every docstring example in ``src/`` runs: pytest collects them (``--doctest-modules`` over ``src``), and no
``>>>`` sits where doctest cannot find it (a comment, a plain string, a function defined inside a function)."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _prompts(text: str) -> int:
    return sum(1 for line in text.splitlines() if line.lstrip().startswith(">>>"))


def _docstring_prompts(tree: ast.Module) -> int:
    """``>>>`` lines in the docstrings doctest reads: the module's, and those of classes and functions reachable
    from it through class bodies only (doctest does not look inside function bodies)."""
    count = _prompts(ast.get_docstring(tree, clean=False) or "")
    pending: list[ast.AST] = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            count += _prompts(ast.get_docstring(node, clean=False) or "")
        if isinstance(node, ast.ClassDef):
            pending.extend(node.body)
    return count


def test_pytest_collects_the_doctests_of_src() -> None:
    options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert "--doctest-modules" in options["addopts"].split()
    assert "src" in options["testpaths"]


def test_every_example_is_where_doctest_finds_it() -> None:
    lost = {}
    files = sorted((ROOT / "src").rglob("*.py"))
    for path in files:
        text = path.read_text(encoding="utf-8")
        found, written = _docstring_prompts(ast.parse(text)), _prompts(text)
        if found != written:
            lost[str(path.relative_to(ROOT))] = written - found
    assert not lost, f"examples doctest never runs (file: count): {lost}"
    assert sum(_prompts(p.read_text(encoding="utf-8")) for p in files) > 20  # the scan does see the examples
