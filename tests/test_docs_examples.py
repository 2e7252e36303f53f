"""The embedding examples in the docs run, so they cannot rot."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import trio

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


async def test_readme_embedding_example(
    sock_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (block,) = python_blocks("README.md")
    # The example uses the default state directory: point it at a temp one.
    monkeypatch.setenv("XDG_STATE_HOME", str(sock_dir))
    monkeypatch.setenv("HOME", str(sock_dir))
    code = block.replace(
        'overrides={"server.listen": "127.0.0.1:0"}',
        (f'overrides={{"server.listen": "127.0.0.1:0", "driver.state_dir": "{sock_dir}"}}'),
    )
    assert code != block
    namespace: dict[str, object] = {}
    exec(compile(code.replace("trio.run(main)", ""), "README.md", "exec"), namespace)
    with trio.fail_after(30):
        await namespace["main"]()  # type: ignore[operator]
    assert "vm1" in capsys.readouterr().out
