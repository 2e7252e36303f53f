"""The pools and the job queues are built on Trio's public API only (issue 13)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import trioctl

MODULES = ["_pools.py", "_jobs.py"]


@pytest.mark.parametrize("name", MODULES)
def test_no_trio_lowlevel_no_manual_scope_entry_no_foreign_privates(name: str) -> None:
    tree = ast.parse((Path(trioctl.__file__).parent / name).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            assert node.attr != "lowlevel", f"{name}:{node.lineno}: trio.lowlevel"
            assert node.attr not in {"__enter__", "__exit__"}, f"{name}:{node.lineno}"
            if node.attr.startswith("_") and not node.attr.startswith("__"):
                # Private attributes only of ``self``, and open_worker_pools
                # closing the pools it created (``pools._close()``).
                base = node.value
                assert isinstance(base, ast.Name) and base.id in {"self", "pools"}, (
                    f"{name}:{node.lineno}: reaches into {ast.unparse(node)}"
                )
        if isinstance(node, ast.ImportFrom):
            assert node.module != "trio.lowlevel"
