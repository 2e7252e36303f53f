"""The embedding examples in the docs run, so they cannot rot."""

from __future__ import annotations

import os
import re
import signal
import sys
from pathlib import Path

import pytest
import trio

from trioctl._config import default_state_dir

ROOT = Path(__file__).resolve().parents[1]


def python_blocks(doc: str) -> list[str]:
    text = (ROOT / doc).read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def test_readme_has_its_commands_first() -> None:
    lines = [ln for ln in (ROOT / "README.md").read_text().splitlines() if ln.startswith("    ")]
    assert lines[:3] == [
        "    pip install -e '.[test]'",
        "    trioctl daemon --backend sim",
        "    python -m pytest",
    ]


def _processes_naming(mark: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if mark.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.append(int(entry))
            except OSError:
                pass
    return found


@pytest.mark.slow
async def test_readme_embedding_example(sock_dir: Path) -> None:
    """The README's block runs as it is, as a script, and leaves nothing
    behind: no file in the temporary or home directories, nothing in the
    default state directory, no process."""
    (block,) = python_blocks("README.md")
    home, tmp = sock_dir / "home", sock_dir / "tmp"
    home.mkdir()
    tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRIOCTL_", "XDG_"))}
    env.update(HOME=str(home), TMPDIR=str(tmp))
    default_state = default_state_dir(env)
    before = sorted(default_state.rglob("*")) if default_state.exists() else None
    try:
        with trio.fail_after(60):
            result = await trio.run_process(
                [sys.executable, "-c", block],
                cwd=str(sock_dir),
                env=env,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
        assert result.returncode == 0, result.stderr.decode()
        assert b"name='vm1'" in result.stdout, result.stdout
        assert list(tmp.iterdir()) == []
        assert list(home.iterdir()) == []
        after = sorted(default_state.rglob("*")) if default_state.exists() else None
        assert after == before
        assert _processes_naming(str(tmp)) == []
    finally:
        for pid in _processes_naming(str(tmp)):
            os.kill(pid, signal.SIGKILL)
