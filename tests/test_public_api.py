"""``import trioctl`` is lazy (PEP 562) and its public names stay whole.

The names type checkers see (the ``TYPE_CHECKING`` imports) and the names
``__getattr__`` loads at run time are the same, each from the same module,
and each resolves to the object its module defines.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import trioctl

INIT = Path(trioctl.__file__)


def _type_checking_imports() -> dict[str, str]:
    tree = ast.parse(INIT.read_text())
    (block,) = [
        node
        for node in tree.body
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name)
        if node.test.id == "TYPE_CHECKING"
    ]
    found = {}
    for node in block.body:
        assert isinstance(node, ast.ImportFrom) and node.level == 1 and node.module
        for alias in node.names:
            assert alias.asname == alias.name  # "X as X": a re-export
            found[alias.name] = node.module
    return found


def test_lazy_names_match_the_type_checking_imports() -> None:
    assert _type_checking_imports() == trioctl._WHERE


def test_every_public_name_resolves_to_its_module_object() -> None:
    for name, module in trioctl._WHERE.items():
        assert getattr(trioctl, name) is getattr(importlib.import_module(f"trioctl.{module}"), name)
        assert name in dir(trioctl)


@pytest.mark.slow
def test_import_trioctl_loads_no_submodule() -> None:
    code = "import sys, trioctl; print(sorted(m for m in sys.modules if m.startswith('trioctl')))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    assert out.strip() == "['trioctl', 'trioctl._version']"


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        getattr(trioctl, "no_such_name")  # noqa: B009
