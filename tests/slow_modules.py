"""Test modules that are slow as a whole, found without importing them.

A module whose every test is slow (its ``pytestmark`` is ``pytest.mark.slow``, or uses a fixture
that makes a test slow) still costs its imports at collection when ``-m "not slow"`` deselects all
of its tests: torch, diffusers or transformers, seconds of CPU for nothing. When the ``-m``
expression cannot select a slow test whatever the test's other marks are, such a module is not
collected at all; in any other run (``make test``, ``-m slow``, no ``-m``) it is collected as usual.
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterable
from pathlib import Path

from _pytest.mark.expression import Expression

#: more names than this in a ``-m`` expression: too many combinations to try, collect as usual
_MAX_NAMES = 10


def _mark_names(node: ast.expr) -> Iterable[str]:
    """``slow`` for ``pytest.mark.slow``, the fixture names of ``pytest.mark.usefixtures(...)``,
    for each mark in a ``pytestmark`` value (one mark, or a list or tuple of them)."""
    items = node.elts if isinstance(node, ast.List | ast.Tuple) else [node]
    for item in items:
        if isinstance(item, ast.Attribute) and item.attr == "slow":
            yield "slow"
        elif (
            isinstance(item, ast.Call)
            and isinstance(item.func, ast.Attribute)
            and item.func.attr == "usefixtures"
        ):
            yield from (
                a.value for a in item.args if isinstance(a, ast.Constant) and isinstance(a.value, str)
            )


def slow_as_a_whole(source: str, slow_fixtures: frozenset[str]) -> bool:
    """Whether a test module's top-level ``pytestmark`` makes each of its tests slow."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return False  # collected as usual, so that pytest reports it
    for statement in tree.body:
        if isinstance(statement, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "pytestmark" for t in statement.targets
        ):
            names = set(_mark_names(statement.value))
            if "slow" in names or names & slow_fixtures:
                return True
    return False


def never_selects_slow(markexpr: str) -> bool:
    """Whether the ``-m`` expression is false for every test marked ``slow``, whatever its other
    marks (each other name in the expression is tried both ways)."""
    if not markexpr.strip():
        return False
    try:
        expression = Expression.compile(markexpr)
    except Exception:
        return False  # pytest itself reports a bad expression
    names: list[str] = []

    def evaluate(on: set[str]) -> bool:
        def matcher(name: str, /, **_kwargs: str | int | bool | None) -> bool:
            if name != "slow" and name not in names:
                names.append(name)
            return name == "slow" or name in on

        return expression.evaluate(matcher)

    tried = -1
    while tried != len(names):  # until no assignment meets a name not yet tried
        tried = len(names)
        if tried > _MAX_NAMES:
            return False
        for bits in itertools.product((False, True), repeat=tried):
            if evaluate({n for n, b in zip(names[:tried], bits, strict=True) if b}):
                return False
    return True


def skip_module(path: Path, markexpr: str, slow_fixtures: frozenset[str]) -> bool:
    """Whether collection can leave out this file: a test module, slow as a whole, and a ``-m``
    expression that would deselect each of its tests anyway."""
    if not (path.name.startswith("test_") and path.suffix == ".py"):
        return False
    if not never_selects_slow(markexpr):
        return False
    return slow_as_a_whole(path.read_text(encoding="utf-8"), slow_fixtures)
