"""docs/design.md's module lists name every module of trioctl/, and only those."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "trioctl"


def _listed() -> set[str]:
    """Paths at the start of a line in design.md's code blocks (``trioctl/...``)."""
    text = (ROOT / "docs" / "design.md").read_text()
    listed: set[str] = set()
    for block in re.findall(r"^```\n(.*?)^```$", text, re.MULTILINE | re.DOTALL):
        listed.update(re.findall(r"^(trioctl/\S+)\s", block, re.MULTILINE))
    return listed


def test_every_listed_path_exists() -> None:
    listed = _listed()
    assert listed, "no module list found in docs/design.md"
    missing = sorted(p for p in listed if not (ROOT / p).exists())
    assert missing == []


def test_every_module_is_listed() -> None:
    """A top-level module by its file; a subpackage by its folder, or by each
    of its modules other than ``__init__.py``."""
    listed = _listed()
    unlisted = []
    for path in sorted(PACKAGE.iterdir()):
        rel = f"trioctl/{path.name}"
        if path.suffix == ".py" and rel not in listed:
            unlisted.append(rel)
        elif path.is_dir() and (path / "__init__.py").exists() and f"{rel}/" not in listed:
            modules = [f"{rel}/{m.name}" for m in path.glob("*.py") if m.name != "__init__.py"]
            unlisted += sorted(m for m in modules if m not in listed)
    assert unlisted == []
