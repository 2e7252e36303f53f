"""The embedding example of docs/dispatch.md runs and prints what the page says.

The page's first ``python`` block is executed as a module and its ``main()``
is awaited; what it prints must equal the page's first ``text`` block after
it. Editing either the code or the page without the other fails here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import trio

DOC = Path(__file__).resolve().parent.parent / "docs" / "dispatch.md"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def example_and_output() -> tuple[str, str]:
    blocks = [(m.group(1), m.group(2)) for m in FENCE.finditer(DOC.read_text())]
    code_at = next(i for i, (lang, _) in enumerate(blocks) if lang == "python")
    output = next(body for lang, body in blocks[code_at + 1 :] if lang == "text")
    return blocks[code_at][1], output


def test_the_page_has_an_example_and_its_output() -> None:
    code, output = example_and_output()
    assert "async def main() -> None:" in code
    assert 'if __name__ == "__main__":' in code
    assert output.strip()


async def test_embedding_example_prints_what_the_docs_say(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, expected = example_and_output()
    namespace: dict[str, Any] = {"__name__": "dispatch_example"}
    exec(compile(code, str(DOC), "exec"), namespace)
    with trio.fail_after(10):
        await namespace["main"]()
    assert capsys.readouterr().out == expected
