"""The sdist and the wheel hold what they promise.

One build (``python -m build``: the sdist, then the wheel from the sdist, as
pip does) into a temporary directory: the sdist carries the tests, schemas,
docs and benchmark suite, and its own test suite collects; the wheel carries
the package and the JSON Schemas (as data files, ``share/trioctl/schemas``),
and no development tooling.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from trioctl._version import __version__

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_DIRS = ("tests", "schemas", "docs", "bench")


pytestmark = pytest.mark.slow  # one build of the sdist and the wheel


def _tree(top: str) -> Iterator[str]:
    """Files under ROOT/top, repository-relative, without caches or results."""
    for dirpath, dirnames, filenames in os.walk(ROOT / top):
        dirnames[:] = [d for d in dirnames if d != "__pycache__" and not d.startswith(".")]
        rel = Path(dirpath).relative_to(ROOT)
        if rel.parts[:2] == ("bench", "results"):
            continue
        for name in filenames:
            if not name.endswith((".pyc", ".pyo")):
                yield str(rel / name)


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return (out / f"trioctl-{__version__}.tar.gz", out / f"trioctl-{__version__}-py3-none-any.whl")


def test_sdist_holds_tests_schemas_docs_and_bench(dists: tuple[Path, Path]) -> None:
    sdist, _wheel = dists
    prefix = f"trioctl-{__version__}/"
    with tarfile.open(sdist) as tar:
        names = {n.removeprefix(prefix) for n in tar.getnames()}
    for top in SHIPPED_DIRS:
        expected = set(_tree(top))
        assert expected, top
        assert expected <= names, (top, sorted(expected - names)[:10])
    assert {"README.md", "pyproject.toml", "MANIFEST.in", "trioctl/_cli/_main.py"} <= names
    assert not [n for n in names if "__pycache__" in n or n.startswith("bench/results/")]


def test_unpacked_sdist_collects_its_tests(dists: tuple[Path, Path], tmp_path: Path) -> None:
    sdist, _wheel = dists
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp_path, filter="data")
    unpacked = tmp_path / f"trioctl-{__version__}"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=unpacked,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "tests/test_packaging.py" in result.stdout


def test_wheel_holds_the_package_and_the_schemas(dists: tuple[Path, Path]) -> None:
    _sdist, wheel = dists
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        data = f"trioctl-{__version__}.data/data/share/trioctl/schemas/"
        schemas = sorted(p.name for p in (ROOT / "schemas").iterdir())
        assert schemas
        for name in schemas:
            # The copy in the wheel is the generated file, byte for byte.
            assert zf.read(data + name) == (ROOT / "schemas" / name).read_bytes(), name
    assert {"trioctl/__init__.py", "trioctl/py.typed", "trioctl/_cli/_main.py"} <= names
    tops = {n.split("/", 1)[0] for n in names}
    assert tops == {"trioctl", f"trioctl-{__version__}.dist-info", f"trioctl-{__version__}.data"}
